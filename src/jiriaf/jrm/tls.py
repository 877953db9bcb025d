"""TLS for the JRM's kubelet API: the serving certificate and the server's ``ssl.SSLContext``.

The JRM runs without access to the cluster CA's private key, so its serving certificate is
self-signed by default (the apiserver and metrics-server reach it with ``--kubelet-insecure-tls``
or without ``--kubelet-certificate-authority``, as for any kubelet with a self-signed certificate).
A user-supplied certificate and key (``--tls-cert-file``/``--tls-private-key-file``) replace it.

Client certificates are verified against one CA bundle only (by default the CA of the JRM's
kubeconfig, which in a kubeadm-style cluster also signs the apiserver's kubelet-client
certificate); the system trust store is never loaded into the server context, because every
certificate it verifies becomes a user of the kubelet API.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jiriaf.errors import UserError
from jiriaf.kube.config import load_single_config

__all__ = [
    "RENEW_BEFORE",
    "VALIDITY",
    "ensure_serving_cert",
    "kubeconfig_client_ca",
    "server_ssl_context",
]

VALIDITY = dt.timedelta(days=365)
# a certificate closer than this to its end is replaced (a JRM lives for one allocation: hours, days)
RENEW_BEFORE = dt.timedelta(days=7)

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _san_names(node_name: str, addresses: Sequence[str]) -> list[x509.GeneralName]:
    """The node name as a DNS name, and each address as an IP (or DNS name if it is not an IP)."""
    names: list[x509.GeneralName] = [x509.DNSName(node_name)]
    for address in addresses:
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(address))
        except ValueError:
            general = x509.DNSName(address)
        if general not in names:
            names.append(general)
    return names


def _reusable(cert_path: Path, key_path: Path, wanted: list[x509.GeneralName]) -> bool:
    """True when the pair exists, matches, is valid well beyond now and covers every wanted SAN."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    if cert.public_key() != key.public_key():
        return False
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in present for name in wanted)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def ensure_serving_cert(directory: Path, node_name: str, addresses: Sequence[str]) -> tuple[Path, Path]:
    """Create (or reuse) a self-signed serving certificate for ``node_name``; return (cert, key) paths.

    The key is EC P-256; the SANs are the node name (DNS) and every entry of ``addresses`` (IP
    addresses as IP SANs, anything else as a DNS name). An existing pair in ``directory`` is kept
    while it is valid for more than :data:`RENEW_BEFORE` and covers all those SANs; otherwise a new
    pair replaces it. Files are ``kubelet-<node>.crt``/``.key``; the key is readable by the owner only.
    """
    if len(node_name) > 253 or not _DNS1123_SUBDOMAIN.match(node_name):
        raise UserError(f"node name {node_name!r} is not a valid DNS-1123 subdomain")
    cert_path = directory / f"kubelet-{node_name}.crt"
    key_path = directory / f"kubelet-{node_name}.key"
    wanted = _san_names(node_name, addresses)
    if _reusable(cert_path, key_path, wanted):
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # like the kubelet's self-signed certificate: "<hostname>@<unix time>"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name}@{int(now.timestamp())}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # key first: a reader that sees the new certificate with the old key finds them mismatched and
    # regenerates rather than serving a broken pair
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def kubeconfig_client_ca(kubeconfig: str | Path | None = None, context: str | None = None) -> bytes | None:
    """The PEM CA bundle of a kubeconfig's cluster (``certificate-authority-data`` or
    ``certificate-authority``), or None when the kubeconfig names no CA."""
    config = load_single_config(kubeconfig, context)
    cluster = config.cluster
    if cluster.certificate_auth_data:
        try:
            return base64.b64decode(cluster.certificate_auth_data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UserError(f"kubeconfig {kubeconfig}: certificate-authority-data is not base64") from exc
    if cluster.certificate_auth:
        path = Path(config.abs_file(cluster.certificate_auth))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UserError(
                f"kubeconfig {kubeconfig}: cannot read certificate-authority {path}: {exc}"
            ) from exc
    return None


def server_ssl_context(cert_file: Path, key_file: Path, client_ca: bytes | Path | None) -> ssl.SSLContext:
    """A TLS >= 1.2 server context serving ``cert_file``; client certificates are requested and
    verified against ``client_ca`` (PEM bytes or a file) when it is given (``CERT_OPTIONAL``: a
    client without a certificate may still present a bearer token), and not requested otherwise.

    A client certificate that does not verify makes the TLS handshake fail (Python's ``ssl`` cannot
    request a certificate without verifying it).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot load TLS certificate {cert_file} with key {key_file}: {exc}") from exc
    if client_ca is None:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        if isinstance(client_ca, Path):
            ctx.load_verify_locations(cafile=str(client_ca))
        else:
            ctx.load_verify_locations(cadata=client_ca.decode("ascii", errors="replace"))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise UserError(f"cannot load the client CA bundle: {exc}") from exc
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
