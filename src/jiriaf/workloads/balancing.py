"""Which backends a Service has, and which one gets the next request. Pure logic, no I/O.

:func:`ready_backends` reads ``discovery.k8s.io/v1`` EndpointSlices (as JSON dicts) the way
kube-proxy does: an endpoint counts when its ``ready`` condition is true or unset; each of its
addresses with the slice's port (chosen by name) is one backend. :func:`backends_from_pods` computes
the same set from a Service and its pods, for loopback pod addresses, which the apiserver refuses in
EndpointSlices. :class:`Balancer` hands out backends round-robin or to the one with the fewest
requests in flight, and keeps its counts across changes of the backend set, so a scale-up or
scale-down never resets what is in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jiriaf.workloads.addresses import url_host

Policy = Literal["round-robin", "least-connections"]
POLICIES: tuple[Policy, ...] = ("round-robin", "least-connections")


@dataclass(frozen=True, order=True)
class Backend:
    """One address and port that serves the Service."""

    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{url_host(self.address)}:{self.port}"

    def __str__(self) -> str:
        return f"{url_host(self.address)}:{self.port}"


def _slice_port(ports: Sequence[Mapping[str, Any]], port_name: str | None) -> int | None:
    """The port number of the slice's port called ``port_name`` (any name when None and only one)."""
    candidates = [p for p in ports if isinstance(p, Mapping) and isinstance(p.get("port"), int)]
    if port_name is not None:
        candidates = [p for p in candidates if (p.get("name") or "") == port_name]
    elif len(candidates) > 1:
        unnamed = [p for p in candidates if not p.get("name")]
        candidates = unnamed or candidates[:1]
    if not candidates:
        return None
    port = candidates[0]["port"]
    return port if isinstance(port, int) and 1 <= port <= 65535 else None


def endpoint_ready(endpoint: Mapping[str, Any]) -> bool:
    """The endpoint's ``ready`` condition; unset means ready (EndpointSlice API semantics)."""
    conditions = endpoint.get("conditions") or {}
    ready = conditions.get("ready") if isinstance(conditions, Mapping) else None
    return ready is None or ready is True


def ready_backends(slices: Iterable[Mapping[str, Any]], port_name: str | None = None) -> list[Backend]:
    """The sorted, de-duplicated ready backends of a Service's EndpointSlices.

    ``port_name`` selects the Service port by name; with None, a slice's only port (or its unnamed
    port) is used. Slices of type FQDN, and slices without the port, contribute nothing.
    """
    found: set[Backend] = set()
    for sl in slices:
        if sl.get("addressType") not in ("IPv4", "IPv6"):
            continue
        port = _slice_port(sl.get("ports") or [], port_name)
        if port is None:
            continue
        for endpoint in sl.get("endpoints") or []:
            if not isinstance(endpoint, Mapping) or not endpoint_ready(endpoint):
                continue
            for address in endpoint.get("addresses") or []:
                if isinstance(address, str) and address:
                    found.add(Backend(address, port))
    return sorted(found)


class Balancer:
    """Picks a backend per request and counts requests in flight per backend."""

    def __init__(self, policy: Policy = "round-robin", backends: Sequence[Backend] = ()) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
        self.policy: Policy = policy
        self._backends: list[Backend] = []
        self._next = 0
        self.in_flight: dict[Backend, int] = {}
        self.picked: dict[Backend, int] = {}
        self.update(backends)

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    def update(self, backends: Sequence[Backend]) -> bool:
        """Replace the backend set; return True when it changed.

        Counts of backends that stay are kept; a removed backend keeps its in-flight count until its
        requests are released, but is never picked again.
        """
        fresh = sorted(set(backends))
        if fresh == self._backends:
            return False
        current = self._backends[self._next % len(self._backends)] if self._backends else None
        self._backends = fresh
        # round-robin continues from the backend that was due next (or the first one after it)
        self._next = 0
        if current is not None and fresh:
            later = [i for i, b in enumerate(fresh) if b >= current]
            self._next = later[0] if later else 0
        for b in fresh:
            self.in_flight.setdefault(b, 0)
            self.picked.setdefault(b, 0)
        for b in list(self.in_flight):
            if b not in fresh and self.in_flight[b] <= 0:
                del self.in_flight[b]
        for b in list(self.picked):
            if b not in fresh:
                del self.picked[b]
        return True

    def acquire(self, exclude: Iterable[Backend] = ()) -> Backend | None:
        """The backend for the next request (None when there is none), counted as in flight."""
        skip = set(exclude)
        n = len(self._backends)
        order = [self._backends[(self._next + k) % n] for k in range(n)] if n else []
        order = [b for b in order if b not in skip]
        if not order:
            return None
        if self.policy == "least-connections":
            fewest = min(self.in_flight.get(b, 0) for b in order)
            choice = next(b for b in order if self.in_flight.get(b, 0) == fewest)
        else:
            choice = order[0]
        self._next = (self._backends.index(choice) + 1) % n
        self.in_flight[choice] = self.in_flight.get(choice, 0) + 1
        self.picked[choice] = self.picked.get(choice, 0) + 1
        return choice

    def release(self, backend: Backend) -> None:
        """A request to ``backend`` has finished."""
        left = self.in_flight.get(backend, 0) - 1
        if left > 0 or backend in self._backends:
            self.in_flight[backend] = max(0, left)
        else:
            self.in_flight.pop(backend, None)


# ------------------------------------------------------------------------------------------------
# endpoints computed from the Service's pods (as the EndpointSlice controller does)


def _service_port(service: Mapping[str, Any], port_name: str | None) -> Mapping[str, Any] | None:
    ports = [p for p in (service.get("spec") or {}).get("ports") or [] if isinstance(p, Mapping)]
    if port_name is not None:
        ports = [p for p in ports if (p.get("name") or "") == port_name]
    elif len(ports) > 1:
        ports = [p for p in ports if not p.get("name")] or ports[:1]
    return ports[0] if ports else None


def _target_port(pod: Mapping[str, Any], service_port: Mapping[str, Any]) -> int | None:
    """The pod's port for a Service port: a number, or a named container port of the pod."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target if 1 <= target <= 65535 else None
    if isinstance(target, str) and target.isdigit():
        return int(target) if 1 <= int(target) <= 65535 else None
    protocol = service_port.get("protocol") or "TCP"
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                number = port.get("containerPort")
                return number if isinstance(number, int) and 1 <= number <= 65535 else None
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def backends_from_pods(
    service: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]], port_name: str | None = None
) -> list[Backend]:
    """The Service's ready backends computed from its pods, by the EndpointSlice controller's rules.

    A pod counts when the Service's selector matches its labels, it is not terminating or finished,
    it has an address, and it is Ready (or the Service publishes not-ready addresses). The port is
    the Service port's ``targetPort``: a number, or the name of one of the pod's container ports.
    Used where the apiserver refuses the pods' addresses in EndpointSlices (loopback pod addresses
    on a single machine); a Service without a selector has no pod-based backends.
    """
    if service is None:
        return []
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    service_port = _service_port(service, port_name)
    if not selector or service_port is None:
        return []
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    found: set[Backend] = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        address = status.get("podIP")
        if not isinstance(address, str) or not address:
            continue
        if not (publish_not_ready or pod_ready(pod)):
            continue
        port = _target_port(pod, service_port)
        if port is not None:
            found.add(Backend(address, port))
    return sorted(found)
