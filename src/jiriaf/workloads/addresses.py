"""Addresses of workloads: where a server binds, how ``host:port`` is read, and which targets are local.

A pod on a JRM learns its address from ``POD_IP`` (the downward API ``status.podIP``, set by the
manifests in ``deploy/``); outside a pod, servers bind 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from jiriaf.errors import UserError

Resolver = Callable[[str], list[str]]


def default_host() -> str:
    """``$POD_IP`` when set (a pod), else 127.0.0.1."""
    return os.environ.get("POD_IP", "").strip() or "127.0.0.1"


def url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with ``default_port``) a bare host, as ``(host, port)``."""
    value = text.strip()
    if not value:
        raise UserError("empty address (expected HOST:PORT)")
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise UserError(f"address {text!r} has an unclosed '['")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UserError(f"address {text!r} is not [HOST]:PORT")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    if not host:
        raise UserError(f"address {text!r} has no host")
    if not port_text:
        if default_port is None:
            raise UserError(f"address {text!r} has no port (expected HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UserError(f"address {text!r} has an invalid port (1-65535)")
    return host, int(port_text)


def _resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def is_loopback_host(host: str, resolve: Resolver = _resolve) -> bool:
    """True when ``host`` is a loopback address, or a name all of whose addresses are loopback.

    A name that does not resolve is not loopback.
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = resolve(host)
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def require_local_target(url: str, allow_remote: bool, resolve: Resolver = _resolve) -> None:
    """Refuse an http(s) URL whose host is not loopback unless ``allow_remote`` is set."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"target {url!r} is not an http:// or https:// URL with a host")
    if not allow_remote and not is_loopback_host(parts.hostname, resolve):
        raise UserError(
            f"target host {parts.hostname} is not a loopback address; pass --allow-remote to load a "
            "server you are responsible for"
        )
