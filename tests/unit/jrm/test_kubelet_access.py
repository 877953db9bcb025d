"""jiriaf.jrm.auth and jiriaf.jrm.tls: the kubelet's request attributes, identities, caches of
token and access reviews, anonymous access, and the self-signed serving certificate."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from jiriaf.devcluster import pki
from jiriaf.devcluster.kubeconfig import write_kubeconfig
from jiriaf.jrm.auth import (
    Attributes,
    AuthenticationError,
    Authenticator,
    Identity,
    bearer_token,
    identity_from_peer_cert,
    request_attributes,
)
from jiriaf.jrm.tls import ensure_serving_cert, kubeconfig_client_ca, server_ssl_context

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("method", "path", "verb", "subresource"),
    [
        ("GET", "/containerLogs/ns/p/c", "get", "proxy"),
        ("GET", "/pods", "get", "proxy"),
        ("HEAD", "/pods", "get", "proxy"),
        ("POST", "/exec/ns/p/c", "create", "proxy"),
        ("POST", "/run/ns/p/c", "create", "proxy"),
        ("PUT", "/pods", "update", "proxy"),
        ("PATCH", "/pods", "patch", "proxy"),
        ("DELETE", "/pods", "delete", "proxy"),
        ("GET", "/stats/summary", "get", "stats"),
        ("GET", "/stats", "get", "stats"),
        ("GET", "/statsx", "get", "proxy"),  # a sub-path, not a prefix, as in the kubelet
        ("GET", "/metrics", "get", "metrics"),
        ("GET", "/metrics/resource", "get", "metrics"),
        ("GET", "/logs/syslog", "get", "log"),
        ("GET", "/spec/", "get", "spec"),
        ("POST", "/checkpoint/ns/p/c", "create", "checkpoint"),
        ("OPTIONS", "/pods", "", "proxy"),
    ],
)
def test_request_attributes(method: str, path: str, verb: str, subresource: str) -> None:
    assert request_attributes("n1", method, path) == Attributes(verb=verb, name="n1", subresource=subresource)


def test_identity_from_verified_peer_cert() -> None:
    cert = {
        "subject": (
            (("organizationName", "system:masters"),),
            (("organizationName", "ops"),),
            (("commonName", "kube-apiserver-kubelet-client"),),
        )
    }
    assert identity_from_peer_cert(cert) == Identity(
        "kube-apiserver-kubelet-client", ("system:masters", "ops")
    )
    assert identity_from_peer_cert({}) is None  # what ssl returns for an unverified certificate
    assert identity_from_peer_cert(None) is None
    assert identity_from_peer_cert({"subject": ((("organizationName", "o"),),)}) is None  # no CN


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer abc  ", "abc"),
        ("Bearer abc extra", "abc"),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingReviews:
    """Isolation test doubles for TokenReview and SubjectAccessReview (no apiserver in the unit tier;
    the real reviews run in tests/integration/test_kubelet_auth.py). They count calls so the tests
    can see what the caches save."""

    def __init__(self) -> None:
        self.token_calls: list[str] = []
        self.access_calls: list[tuple[Identity, Attributes]] = []
        self.allowed_users = {"alice"}
        self.fail_tokens = False

    async def review_token(self, token: str) -> Identity | None:
        self.token_calls.append(token)
        if self.fail_tokens:
            raise AuthenticationError("apiserver unreachable")
        if token.startswith("good-"):
            return Identity.of(token.removeprefix("good-"), ["team"], uid="u1", extra={"scopes": ["a", "b"]})
        return None

    async def authorize(self, identity: Identity, attrs: Attributes) -> bool:
        self.access_calls.append((identity, attrs))
        return identity.user in self.allowed_users


def _authenticator(reviews: CountingReviews, clock: FakeClock, **kwargs: object) -> Authenticator:
    return Authenticator(
        review_token=reviews.review_token,
        authorize=reviews.authorize,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_token_results_are_cached_for_their_ttl() -> None:
    reviews, clock = CountingReviews(), FakeClock()
    auth = _authenticator(reviews, clock)
    alice = await auth.authenticate(peer_cert=None, authorization="Bearer good-alice")
    assert alice == Identity("alice", ("team", "system:authenticated"), "u1", (("scopes", ("a", "b")),))
    assert await auth.authenticate(peer_cert=None, authorization="Bearer good-alice") == alice
    assert await auth.authenticate(peer_cert=None, authorization="Bearer bad") is None
    assert await auth.authenticate(peer_cert=None, authorization="Bearer bad") is None
    assert reviews.token_calls == ["good-alice", "bad"]
    clock.now += 11  # past the negative TTL (10 s), within the positive one (60 s)
    await auth.authenticate(peer_cert=None, authorization="Bearer good-alice")
    await auth.authenticate(peer_cert=None, authorization="Bearer bad")
    assert reviews.token_calls == ["good-alice", "bad", "bad"]
    clock.now += 50
    await auth.authenticate(peer_cert=None, authorization="Bearer good-alice")
    assert reviews.token_calls == ["good-alice", "bad", "bad", "good-alice"]


async def test_token_cache_is_bounded_and_errors_are_not_cached() -> None:
    reviews, clock = CountingReviews(), FakeClock()
    auth = _authenticator(reviews, clock, cache_entries=2)
    for name in ("a", "b", "c"):
        await auth.authenticate(peer_cert=None, authorization=f"Bearer good-{name}")
    await auth.authenticate(peer_cert=None, authorization="Bearer good-a")  # evicted: reviewed again
    assert reviews.token_calls == ["good-a", "good-b", "good-c", "good-a"]
    reviews.fail_tokens = True
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(peer_cert=None, authorization="Bearer good-z")
    assert reviews.token_calls[-2:] == ["good-z", "good-z"]


async def test_only_allowed_decisions_are_cached() -> None:
    reviews, clock = CountingReviews(), FakeClock()
    auth = _authenticator(reviews, clock)
    attrs = Attributes(verb="get", name="n1", subresource="proxy")
    alice, bob = Identity("alice"), Identity("bob")
    assert await auth.authorize(alice, attrs)
    assert await auth.authorize(alice, attrs)
    assert not await auth.authorize(bob, attrs)
    reviews.allowed_users.add("bob")  # a role is granted: the next request sees it
    assert await auth.authorize(bob, attrs)
    assert [i.user for i, _ in reviews.access_calls] == ["alice", "bob", "bob"]
    clock.now += 31
    await auth.authorize(alice, attrs)
    assert len(reviews.access_calls) == 4


async def test_anonymous_only_when_enabled_and_never_over_a_bad_token() -> None:
    reviews, clock = CountingReviews(), FakeClock()
    closed = _authenticator(reviews, clock)
    assert await closed.authenticate(peer_cert=None, authorization=None) is None
    assert await closed.authenticate(peer_cert=None, authorization="Basic eDp5") is None
    opened = _authenticator(reviews, clock, allow_anonymous=True)
    anonymous = await opened.authenticate(peer_cert=None, authorization=None)
    assert anonymous == Identity("system:anonymous", ("system:unauthenticated",))
    assert await opened.authenticate(peer_cert=None, authorization="Bearer bad") is None
    # a verified certificate wins over a token
    cert = {"subject": ((("commonName", "carol"),),)}
    by_cert = await opened.authenticate(peer_cert=cert, authorization="Bearer good-alice")
    assert by_cert == Identity("carol", ("system:authenticated",))


def test_authenticator_needs_a_way_to_authorize() -> None:
    with pytest.raises(ValueError):
        Authenticator()


# ---------------------------------------------------------------------------------- TLS


def _sans(cert_path: Path) -> list[object]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*ext.get_values_for_type(x509.DNSName), *ext.get_values_for_type(x509.IPAddress)]


def test_serving_cert_is_created_reused_and_replaced(tmp_path: Path) -> None:
    cert, key = ensure_serving_cert(tmp_path, "node-a", ["127.0.0.1", "10.1.2.3", "node-a.example"])
    assert (key.stat().st_mode & 0o777) == 0o600
    assert _sans(cert) == [
        "node-a",
        "node-a.example",
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
    ]
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert parsed.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    first = cert.read_bytes()
    # same or fewer SANs: reused
    assert ensure_serving_cert(tmp_path, "node-a", ["10.1.2.3"]) == (cert, key)
    assert cert.read_bytes() == first
    # a new address: replaced
    ensure_serving_cert(tmp_path, "node-a", ["10.9.9.9"])
    assert cert.read_bytes() != first
    assert ipaddress.ip_address("10.9.9.9") in _sans(cert)
    # a damaged key: replaced
    key.write_bytes(b"garbage")
    ensure_serving_cert(tmp_path, "node-a", ["10.9.9.9"])
    assert b"PRIVATE KEY" in key.read_bytes()
    # the pair loads into a server context that clients verify by IP and by node name
    server_ssl_context(cert, key, None)
    client = ssl.create_default_context(cafile=str(cert))
    assert client.verify_mode == ssl.CERT_REQUIRED


def test_serving_cert_rejects_bad_node_names(tmp_path: Path) -> None:
    from jiriaf.errors import UserError

    with pytest.raises(UserError):
        ensure_serving_cert(tmp_path, "../etc", [])


def test_client_ca_from_kubeconfig(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, "ca", "test-ca")
    admin = pki.issue_cert(ca, tmp_path, "admin", "admin", client=True)
    embedded = write_kubeconfig(
        tmp_path / "embedded.kubeconfig", server="https://127.0.0.1:1", ca=ca.cert, client=admin
    )
    assert kubeconfig_client_ca(embedded) == ca.cert.read_bytes()
    config = yaml.safe_load(embedded.read_text())
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["certificate-authority"] = "ca.crt"  # relative to the kubeconfig's directory
    by_path = tmp_path / "by-path.kubeconfig"
    by_path.write_text(yaml.safe_dump(config))
    assert kubeconfig_client_ca(by_path) == ca.cert.read_bytes()
    del cluster["certificate-authority"]
    none = tmp_path / "none.kubeconfig"
    none.write_text(yaml.safe_dump(config))
    assert kubeconfig_client_ca(none) is None
    assert base64.b64encode(ca.cert.read_bytes())  # keeps the embedded form honest


def test_server_context_requests_client_certs_only_with_a_ca(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, "ca", "test-ca")
    cert, key = ensure_serving_cert(tmp_path, "node-a", ["127.0.0.1"])
    assert server_ssl_context(cert, key, ca.cert).verify_mode == ssl.CERT_OPTIONAL
    assert server_ssl_context(cert, key, ca.cert.read_bytes()).verify_mode == ssl.CERT_OPTIONAL
    assert server_ssl_context(cert, key, None).verify_mode == ssl.CERT_NONE
    # only the given CA is trusted for clients: no system store
    ctx = server_ssl_context(cert, key, ca.cert)
    assert len(ctx.get_ca_certs()) == 1
