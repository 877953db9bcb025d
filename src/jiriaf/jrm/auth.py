"""Authentication and authorization of kubelet API requests, done the way the kubelet does it.

Authentication, first match wins (the kubelet's order):

1. a client certificate that the TLS layer verified against the configured client CA: user = the
   subject's CN, groups = its O values (a certificate without CN authenticates nobody);
2. ``Authorization: Bearer <token>``: a ``TokenReview`` (authentication.k8s.io/v1) posted to the
   apiserver; results are cached by the token's SHA-256 (60 s when valid, 10 s when not, bounded);
   a token that is presented but invalid is refused even when anonymous access is allowed;
3. otherwise anonymous (``system:anonymous``, group ``system:unauthenticated``) if, and only if,
   ``allow_anonymous`` is set; else the request is unauthenticated (401).

Every authenticated identity except the anonymous one also gets the group ``system:authenticated``.

Authorization: a ``SubjectAccessReview`` (authorization.k8s.io/v1) for the verb of the HTTP method
on ``nodes/<subresource>`` named after the node (see :func:`request_attributes`). Allowed decisions
are cached for 30 s; denials are not cached, so a newly granted role takes effect on the next
request while a revoked one may keep working for up to 30 s.

The JRM's own credentials must be allowed to create tokenreviews and subjectaccessreviews (the
``system:auth-delegator`` ClusterRole grants exactly that).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx2

from jiriaf.kube.raw import async_raw_client

__all__ = [
    "ANONYMOUS_GROUP",
    "ANONYMOUS_USER",
    "AUTHENTICATED_GROUP",
    "Attributes",
    "AuthenticationError",
    "Authenticator",
    "AuthorizationError",
    "Authorize",
    "Identity",
    "ReviewToken",
    "SubjectAccessReviewer",
    "TokenReviewer",
    "authorization_error_message",
    "bearer_token",
    "forbidden_message",
    "identity_from_peer_cert",
    "request_attributes",
]

log = logging.getLogger(__name__)

ANONYMOUS_USER = "system:anonymous"
ANONYMOUS_GROUP = "system:unauthenticated"
AUTHENTICATED_GROUP = "system:authenticated"

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECT_ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclass(frozen=True)
class Identity:
    """Who made a request. ``extra`` is sorted (key, values) pairs so that identities are hashable."""

    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(
        cls,
        user: str,
        groups: Iterable[str] = (),
        uid: str = "",
        extra: Mapping[str, Iterable[str]] | None = None,
    ) -> Identity:
        """An identity from plain values (``extra`` as the API's map of string lists)."""
        pairs = tuple(sorted((k, tuple(v)) for k, v in (extra or {}).items()))
        return cls(user=user, groups=tuple(groups), uid=uid, extra=pairs)

    @property
    def anonymous(self) -> bool:
        return self.user == ANONYMOUS_USER

    def with_authenticated_group(self) -> Identity:
        """This identity with ``system:authenticated`` added (as the apiserver's group adder does)."""
        if self.anonymous or AUTHENTICATED_GROUP in self.groups:
            return self
        return Identity(self.user, (*self.groups, AUTHENTICATED_GROUP), self.uid, self.extra)


ANONYMOUS = Identity(ANONYMOUS_USER, (ANONYMOUS_GROUP,))


@dataclass(frozen=True)
class Attributes:
    """What a request asks for, as resource attributes of the Node object (API version v1, core group)."""

    verb: str
    name: str
    subresource: str
    resource: str = "nodes"


_VERBS = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_SUBRESOURCES = (
    ("/stats", "stats"),
    ("/metrics", "metrics"),
    ("/logs", "log"),
    ("/checkpoint", "checkpoint"),
    ("/spec", "spec"),
)


def _is_subpath(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it (``/stats`` and ``/stats/summary``, not ``/statsx``)."""
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


def request_attributes(node_name: str, method: str, path: str) -> Attributes:
    """The kubelet's mapping of an HTTP request to resource attributes of ``nodes/<node_name>``.

    Verb: GET/HEAD -> get, POST -> create, PUT -> update, PATCH -> patch, DELETE -> delete, anything
    else -> "" (no verb; callers refuse such requests). Subresource: /stats* -> stats,
    /metrics* -> metrics, /logs* -> log, /checkpoint* -> checkpoint, /spec* -> spec, everything
    else (/containerLogs, /pods, /run, /exec, ...) -> proxy.
    """
    subresource = "proxy"
    for prefix, name in _SUBRESOURCES:
        if _is_subpath(path, prefix):
            subresource = name
            break
    return Attributes(verb=_VERBS.get(method.upper(), ""), name=node_name, subresource=subresource)


def forbidden_message(identity: Identity, attrs: Attributes) -> str:
    """The kubelet's 403 body."""
    return (
        f"Forbidden (user={identity.user}, verb={attrs.verb}, resource={attrs.resource}, "
        f"subresource={attrs.subresource})"
    )


def authorization_error_message(identity: Identity, attrs: Attributes) -> str:
    """The kubelet's 500 body when the authorizer could not decide."""
    return (
        f"Authorization error (user={identity.user}, verb={attrs.verb}, resource={attrs.resource}, "
        f"subresource={attrs.subresource})"
    )


def identity_from_peer_cert(peer_cert: Mapping[str, Any] | None) -> Identity | None:
    """User and groups of a verified client certificate, in ``ssl.SSLSocket.getpeercert()`` form.

    The ``ssl`` module returns an empty dict for a certificate it did not verify, so only verified
    certificates can authenticate. CN -> user (the last CN, as Go's ``pkix.Name`` does), O -> groups.
    """
    if not peer_cert:
        return None
    common_name = ""
    groups: list[str] = []
    for rdn in peer_cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = str(value)
            elif key == "organizationName":
                groups.append(str(value))
    if not common_name:
        return None
    return Identity(common_name, tuple(groups))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    if not authorization:
        return None
    parts = authorization.strip().split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


class AuthenticationError(Exception):
    """Credentials could not be checked (the apiserver did not answer a TokenReview usably)."""


class AuthorizationError(Exception):
    """A decision could not be made (the apiserver did not answer a SubjectAccessReview usably)."""


#: checks a bearer token: the identity it belongs to, None when invalid; raises AuthenticationError
ReviewToken = Callable[[str], Awaitable[Identity | None]]
#: decides whether ``identity`` may do ``attributes``; raises AuthorizationError when it cannot decide
Authorize = Callable[[Identity, Attributes], Awaitable[bool]]


class TokenReviewer:
    """Checks bearer tokens with the apiserver's TokenReview API."""

    def __init__(self, api: httpx2.AsyncClient, audiences: Iterable[str] = ()) -> None:
        self._api = api
        self._audiences = list(audiences)

    async def __call__(self, token: str) -> Identity | None:
        spec: dict[str, Any] = {"token": token}
        if self._audiences:
            spec["audiences"] = self._audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            resp = await self._api.post(TOKEN_REVIEW_PATH, json=body)
        except httpx2.HTTPError as exc:
            raise AuthenticationError(f"TokenReview failed: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AuthenticationError(f"TokenReview failed: HTTP {resp.status_code}: {resp.text[:200]}")
        status = _json_dict(resp).get("status") or {}
        if not status.get("authenticated"):
            if status.get("error"):
                log.debug("token rejected: %s", status["error"])
            return None
        user = status.get("user") or {}
        if not user.get("username"):
            return None
        return Identity.of(
            str(user["username"]),
            (str(g) for g in user.get("groups") or ()),
            str(user.get("uid") or ""),
            {str(k): [str(x) for x in v or ()] for k, v in (user.get("extra") or {}).items()},
        )


class SubjectAccessReviewer:
    """Decides with the apiserver's SubjectAccessReview API."""

    def __init__(self, api: httpx2.AsyncClient) -> None:
        self._api = api

    async def __call__(self, identity: Identity, attrs: Attributes) -> bool:
        spec: dict[str, Any] = {
            "resourceAttributes": {
                "namespace": "",
                "verb": attrs.verb,
                "group": "",
                "version": "v1",
                "resource": attrs.resource,
                "subresource": attrs.subresource,
                "name": attrs.name,
            },
            "user": identity.user,
            "groups": list(identity.groups),
        }
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {k: list(v) for k, v in identity.extra}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        try:
            resp = await self._api.post(SUBJECT_ACCESS_REVIEW_PATH, json=body)
        except httpx2.HTTPError as exc:
            raise AuthorizationError(f"SubjectAccessReview failed: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AuthorizationError(
                f"SubjectAccessReview failed: HTTP {resp.status_code}: {resp.text[:200]}"
            )
        status = _json_dict(resp).get("status") or {}
        allowed = bool(status.get("allowed")) and not status.get("denied")
        if not allowed:
            log.info(
                "kubelet API access denied: user=%s verb=%s subresource=%s reason=%r",
                identity.user,
                attrs.verb,
                attrs.subresource,
                status.get("reason") or status.get("evaluationError") or "",
            )
        return allowed


def _json_dict(resp: httpx2.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


K = TypeVar("K")
V = TypeVar("V")


class _Missing(enum.Enum):
    MISSING = enum.auto()


class _TTLCache(Generic[K, V]):
    """A small cache whose entries expire; the least recently stored entry goes first when full."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max(1, max_entries)
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | _Missing:
        entry = self._data.get(key)
        if entry is None:
            return _Missing.MISSING
        expires, value = entry
        if expires <= self._clock():
            del self._data[key]
            return _Missing.MISSING
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self._data[key] = (self._clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Authenticator:
    """Authenticates (client certificate, bearer token, optional anonymous) and authorizes requests.

    ``api`` is an httpx2 client of the apiserver (see :func:`jiriaf.kube.raw.async_raw_client`);
    it backs the default ``review_token`` (TokenReview) and ``authorize`` (SubjectAccessReview).
    Either may be replaced by a callable; without ``api`` and without ``review_token`` bearer
    tokens are refused, and without ``api`` an ``authorize`` callable is required. Token results
    are cached ``token_ttl`` (valid) or ``token_negative_ttl`` (invalid) seconds, allowed decisions
    ``authorization_ttl`` seconds, at most ``cache_entries`` of each; ``clock`` times the caches.
    With ``close_api``, :meth:`aclose` closes ``api``.
    """

    def __init__(
        self,
        *,
        api: httpx2.AsyncClient | None = None,
        allow_anonymous: bool = False,
        review_token: ReviewToken | None = None,
        authorize: Authorize | None = None,
        token_ttl: float = 60.0,
        token_negative_ttl: float = 10.0,
        authorization_ttl: float = 30.0,
        cache_entries: int = 1024,
        close_api: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if authorize is None:
            if api is None:
                raise ValueError("Authenticator needs an apiserver client or an authorize callable")
            authorize = SubjectAccessReviewer(api)
        if review_token is None and api is not None:
            review_token = TokenReviewer(api)
        self.allow_anonymous = allow_anonymous
        self._api = api
        self._close_api = close_api
        self._review_token = review_token
        self._authorize = authorize
        self._token_ttl = token_ttl
        self._token_negative_ttl = token_negative_ttl
        self._authorization_ttl = authorization_ttl
        self._tokens: _TTLCache[bytes, Identity | None] = _TTLCache(cache_entries, clock)
        self._decisions: _TTLCache[tuple[Identity, Attributes], bool] = _TTLCache(cache_entries, clock)

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | Path | None = None, *, allow_anonymous: bool = False, timeout: float = 10.0
    ) -> Authenticator:
        """An authenticator that reviews tokens and access with the kubeconfig's apiserver."""
        return cls(api=async_raw_client(kubeconfig, timeout), allow_anonymous=allow_anonymous, close_api=True)

    async def aclose(self) -> None:
        """Close the apiserver client if this authenticator created it."""
        if self._api is not None and self._close_api:
            await self._api.aclose()

    async def authenticate(
        self, *, peer_cert: Mapping[str, Any] | None, authorization: str | None
    ) -> Identity | None:
        """The identity of a request, or None when it is not authenticated.

        ``peer_cert`` is the verified client certificate (``getpeercert()`` form) and
        ``authorization`` the Authorization header. Raises :class:`AuthenticationError` when a
        token could not be checked (the request must then be refused too).
        """
        identity = identity_from_peer_cert(peer_cert)
        if identity is not None:
            return identity.with_authenticated_group()
        token = bearer_token(authorization)
        if token is not None:
            found = await self._check_token(token)
            return found.with_authenticated_group() if found is not None else None
        return ANONYMOUS if self.allow_anonymous else None

    async def _check_token(self, token: str) -> Identity | None:
        if self._review_token is None:
            return None
        key = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(key)
        if cached is not _Missing.MISSING:
            return cached
        identity = await self._review_token(token)
        ttl = self._token_ttl if identity is not None else self._token_negative_ttl
        self._tokens.put(key, identity, ttl)
        return identity

    async def authorize(self, identity: Identity, attrs: Attributes) -> bool:
        """Whether ``identity`` may do ``attrs``; raises :class:`AuthorizationError` when undecided."""
        key = (identity, attrs)
        if self._decisions.get(key) is True:
            return True
        allowed = await self._authorize(identity, attrs)
        if allowed:
            self._decisions.put(key, True, self._authorization_ttl)
        return allowed
