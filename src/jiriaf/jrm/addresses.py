"""Pod addresses: which IP a pod of this node gets (``status.podIP`` and the ``POD_IP`` variable).

Two modes:

``shared`` (the default, as the original JIRIAF)
    Every pod gets the node's address (``VKUBELET_POD_IP``). Pods share one network namespace, so
    two replicas that listen on the same port collide, and a Service lists one endpoint per pod
    but all with the same address (the paper's section 4.6.3).

``per-pod``
    Each pod gets its own address from ``pod_cidr``, kept for the pod's lifetime and across JRM
    restarts (allocations are stored in ``<workdir>/.addresses.json``). The workload binds to
    ``$POD_IP``, so replicas use the same port without colliding. The addresses must be local to
    the host so that the workload can bind them:

    - ``127.0.0.0/8`` is local on Linux without root, so a per-node slice of it works out of the
      box on one machine (the default CIDR is a /16 in 127/8 derived from the node name). But the
      apiserver rejects loopback addresses in EndpointSlices (and Endpoints): a Service that
      selects such pods gets no endpoints (the EndpointSlice controller reports
      ``FailedToUpdateEndpointSlices``). Pod IPs themselves are accepted, so Prometheus' pod
      discovery, probes and pod-to-pod traffic on the node work.
    - For Services, use a routable range that the administrator made local once, for example
      ``ip route add local 10.44.3.0/24 dev lo`` (every address of the range becomes bindable) or
      addresses on a dummy interface; then every pod is its own endpoint.

Allocation is pure (:class:`AddressPool`); :class:`PodAddresses` adds the file and the mode.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

AddressMode = Literal["shared", "per-pod"]
ADDRESS_MODES: tuple[AddressMode, ...] = ("shared", "per-pod")
STATE_FILE = ".addresses.json"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressesExhausted(Exception):
    """Every address of the pod CIDR is taken by a live pod."""


def default_pod_cidr(node_name: str) -> str:
    """A /16 inside 127.0.0.0/8 chosen from the node name (127.1.0.0/16 ... 127.254.0.0/16).

    Several JRMs on one machine thus get different ranges unless their names collide in the hash;
    set ``pod_cidr`` explicitly when that matters.
    """
    return f"127.{1 + zlib.crc32(node_name.encode()) % 254}.0.0/16"


def parse_cidr(text: str) -> Network:
    """``10.44.3.0/24`` as a network (host bits are ignored); ValueError with a readable message."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR such as 127.20.0.0/16 or 10.44.3.0/24") from None


def usable_count(network: Network) -> int:
    """How many pod addresses the network holds (without its network and broadcast addresses)."""
    small = network.prefixlen >= network.max_prefixlen - 1  # /31 and /32 have no network address
    return network.num_addresses if small else network.num_addresses - 2


def is_loopback(network: Network) -> bool:
    """True when the network lies in 127.0.0.0/8 or is ::1 (the apiserver rejects such endpoints)."""
    return network.is_loopback


class AddressPool:
    """Allocates addresses of ``network`` to pod uids; never hands out ``reserved`` addresses.

    New allocations continue after the last one (wrapping around), as CNI's host-local IPAM does,
    so the address of a pod that just ended is not handed to the next pod at once.
    """

    def __init__(self, network: Network, reserved: Collection[str] = ()) -> None:
        self.network = network
        self.reserved = {str(ipaddress.ip_address(r)) for r in reserved}
        self.allocations: dict[str, str] = {}
        self._first = 0 if network.prefixlen >= network.max_prefixlen - 1 else 1
        self._last = network.num_addresses - 1 - self._first  # inclusive offset
        self.cursor = self._last  # offset of the last allocation: the next one wraps to the first

    def _address(self, offset: int) -> str:
        return str(self.network.network_address + offset)

    def first_address(self) -> str:
        """The first address pods can get."""
        return self._address(self._first)

    def contains(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version != self.network.version or ip not in self.network:
            return False
        offset = int(ip) - int(self.network.network_address)
        return self._first <= offset <= self._last

    def allocate(self, uid: str, live: Collection[str] | None = None, prefer: str | None = None) -> str:
        """The address of ``uid``: the one it has, else ``prefer`` if free, else the next free one.

        With ``live`` (the uids of pods that still exist), allocations of other uids are released
        before a new address is chosen. Raises :class:`AddressesExhausted`.
        """
        have = self.allocations.get(uid)
        if have is not None:
            return have
        if live is not None:
            for other in [u for u in self.allocations if u not in live]:
                del self.allocations[other]
        taken = set(self.allocations.values()) | self.reserved
        if prefer and prefer not in taken and self.contains(prefer):
            self.allocations[uid] = prefer
            return prefer
        span = self._last - self._first + 1
        used = len(self.allocations) + sum(1 for r in self.reserved if self.contains(r))
        if used >= span:
            raise AddressesExhausted(f"all {span} addresses of {self.network} are in use")
        offset = self.cursor
        for _ in range(span):
            offset = offset + 1 if offset < self._last else self._first
            candidate = self._address(offset)
            if candidate not in taken:
                self.allocations[uid] = candidate
                self.cursor = offset
                return candidate
        raise AddressesExhausted(f"all {span} addresses of {self.network} are in use")

    def release(self, uid: str) -> None:
        self.allocations.pop(uid, None)

    # ----------------------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        return {"cidr": str(self.network), "cursor": self.cursor, "allocations": dict(self.allocations)}

    def load_json(self, data: Mapping[str, Any]) -> None:
        """Take over stored allocations that still fit this network (a changed CIDR drops the rest)."""
        allocations = data.get("allocations")
        if not isinstance(allocations, dict):
            return
        seen: set[str] = set()
        for uid, address in allocations.items():
            if (
                isinstance(uid, str)
                and isinstance(address, str)
                and self.contains(address)
                and address not in self.reserved
                and address not in seen
            ):
                self.allocations[uid] = address
                seen.add(address)
        cursor = data.get("cursor")
        if data.get("cidr") == str(self.network) and isinstance(cursor, int):
            self.cursor = cursor if self._first <= cursor <= self._last else self._last


def is_bindable(address: str) -> bool:
    """True when a socket can be bound to ``address`` on this host (no traffic is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


class PodAddresses:
    """The address of each pod of one node, in the configured mode (see the module documentation)."""

    def __init__(
        self,
        mode: AddressMode,
        node_ip: str,
        pod_cidr: str | None = None,
        state_dir: Path | None = None,
        node_name: str = "",
    ) -> None:
        self.mode = mode
        self.node_ip = node_ip
        self.pool: AddressPool | None = None
        self.state_path = state_dir / STATE_FILE if state_dir is not None else None
        self._fallback_logged = False
        if mode == "per-pod":
            network = parse_cidr(pod_cidr or default_pod_cidr(node_name))
            self.pool = AddressPool(network, reserved=[node_ip] if _same_family(node_ip, network) else [])
            self._load()
            for note in self.startup_report():
                log.warning("%s", note)

    @property
    def cidr(self) -> str | None:
        return str(self.pool.network) if self.pool is not None else None

    def _load(self) -> None:
        if self.pool is None or self.state_path is None:
            return
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable pod address file %s: %s", self.state_path, exc)
            return
        if isinstance(data, dict):
            self.pool.load_json(data)

    def _save(self) -> None:
        if self.pool is None or self.state_path is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.pool.to_json()))
            tmp.replace(self.state_path)
        except OSError as exc:
            log.warning("could not store pod addresses in %s: %s", self.state_path, exc)

    def address_for(self, pod: Mapping[str, Any], live: Collection[str] | None = None) -> str:
        """The pod's address; in per-pod mode allocated on first use (``live``: uids still present)."""
        if self.pool is None:
            return self.node_ip
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return self.node_ip
        have = self.pool.allocations.get(uid)
        if have is not None:
            return have
        prefer = (pod.get("status") or {}).get("podIP")
        try:
            address = self.pool.allocate(uid, live=live, prefer=prefer if isinstance(prefer, str) else None)
        except AddressesExhausted as exc:
            if not self._fallback_logged:
                log.error("%s: pod %s gets the node address", exc, meta.get("name"))
                self._fallback_logged = True
            return self.node_ip
        self._save()
        return address

    def release(self, uid: str) -> None:
        if self.pool is not None and uid in self.pool.allocations:
            self.pool.release(uid)
            self._save()

    def startup_report(self) -> list[str]:
        """Warnings about the configured range, for the log at start-up."""
        if self.pool is None:
            return []
        notes = []
        probe = self.pool.first_address()
        if not is_bindable(probe):
            notes.append(
                f"pod addresses in {self.pool.network} are not local to this host ({probe} cannot be "
                f"bound): workloads cannot listen on $POD_IP; make the range local (as root: "
                f"'ip route add local {self.pool.network} dev lo') or choose a range in 127.0.0.0/8"
            )
        if is_loopback(self.pool.network):
            notes.append(
                f"pod addresses in {self.pool.network} are loopback addresses: the apiserver accepts "
                "them as pod IPs but not in EndpointSlices, so Services selecting these pods get no "
                "endpoints (see docs/metrics.md, 'Pod addresses')"
            )
        return notes


def _same_family(address: str, network: Network) -> bool:
    try:
        return ipaddress.ip_address(address).version == network.version
    except ValueError:
        return False
