"""A container's environment, argv and working directory, computed the way the kubelet does.

Pure logic over the apiserver's JSON dicts (camelCase keys); nothing here talks to Kubernetes or
starts a process. The only file-system access is read-only: :func:`build_argv` lists the volume
that holds a container's script (original JIRIAF convention) and :func:`working_dir` checks
whether an absolute ``workingDir`` exists on the host.

Order of use by the pod controller::

    env = resolve_env(pod, container, configmaps=..., secrets=..., ...)   # raw values
    argv = build_argv(pod, container, env, mounts)     # expand $(VAR) with raw env, then rewrite
    process_env = rewrite_env(env, mounts)             # mountPaths -> materialised paths
    cwd = working_dir(container, container_dir, mounts)

Always pass the *raw* environment from :func:`resolve_env` to :func:`build_argv`; rewriting is
idempotent (an already materialised path is left alone), so passing a rewritten one is harmless.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "ContainerConfigError",
    "build_argv",
    "expand",
    "field_ref_value",
    "find_container",
    "is_env_var_name",
    "parse_quantity",
    "resolve_env",
    "resource_field_value",
    "rewrite_env",
    "rewrite_paths",
    "working_dir",
]


class ContainerConfigError(Exception):
    """The container cannot be configured; the pod controller reports CreateContainerConfigError.

    ``str(error)`` is the message shown in the container's waiting state and in the Event.
    """

    reason = "CreateContainerConfigError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------------------------------------
# $(VAR) expansion


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand Kubernetes ``$(VAR)`` references in ``text`` using ``env``.

    Rules (as the kubelet's expansion package): ``$(NAME)`` is replaced by ``env[NAME]`` when
    NAME is defined and left as written otherwise; ``$$`` is an escaped ``$`` (so ``$$(X)``
    yields the literal ``$(X)``); an unterminated ``$(`` and a ``$`` followed by anything else
    are kept literally. Shell-style ``$VAR``/``${VAR}`` is never expanded.
    """
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# quantities


_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<num>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?\d+))?$"
)
_SUFFIX: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def parse_quantity(text: str | int | float) -> Fraction:
    """Parse a Kubernetes resource quantity (``500m``, ``1Gi``, ``2``, ``1e3``, ``128974848``).

    Returns the exact value as a Fraction. Raises ValueError for a malformed quantity.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid quantity {text!r}")
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(str(text))
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"invalid quantity {text!r}")
    value = Fraction(match["num"])
    if match["exp"] is not None:
        exponent = int(match["exp"])
        if abs(exponent) > 100:
            raise ValueError(f"quantity {text!r} is out of range")
        value *= Fraction(10) ** exponent
    else:
        value *= _SUFFIX[match["suffix"] or ""]
    return -value if match["sign"] == "-" else value


# ------------------------------------------------------------------------------------------------
# helpers over the pod dict


def find_container(pod: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """Return the container (app or init) named ``name`` in the pod spec, or None."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if c.get("name") == name:
                return dict(c)
    return None


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _format_map(values: Mapping[str, str]) -> str:
    """Format labels/annotations as the downward API does: sorted ``key="value"`` lines."""
    return "\n".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(values.items()))


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\[(?:'([^']*)'|\"([^\"]*)\")\]$")


def field_ref_value(
    pod: Mapping[str, Any],
    field_path: str,
    *,
    pod_ip: str | None,
    host_ip: str | None,
    node_name: str | None,
) -> str:
    """Value of a downward-API ``fieldRef`` (env var or downwardAPI volume item).

    Supported: metadata.name/namespace/uid, metadata.labels and metadata.annotations (whole map
    or ``['key']``), spec.nodeName, spec.serviceAccountName, status.hostIP(s), status.podIP(s).
    A missing label/annotation key gives an empty string, as in Kubernetes. Raises
    ContainerConfigError for an unsupported path.
    """
    meta = _meta(pod)
    spec = pod.get("spec") or {}
    match = _SUBSCRIPT.match(field_path)
    if match is not None:
        mapping = meta.get(match.group(1)) or {}
        key = match.group(2) if match.group(2) is not None else match.group(3)
        return str(mapping.get(key, ""))
    simple: dict[str, str | None] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace") or "default",
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": node_name or spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or spec.get("serviceAccount"),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if field_path in simple:
        return simple[field_path] or ""
    if field_path in ("metadata.labels", "metadata.annotations"):
        return _format_map(meta.get(field_path.split(".", 1)[1]) or {})
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


def _container_resources(container: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return (container.get("resources") or {}).get(kind) or {}


def resource_field_value(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    ref: Mapping[str, Any],
    node_allocatable: Mapping[str, str],
) -> str:
    """Value of a ``resourceFieldRef`` for ``container`` (or ``ref['containerName']``).

    ``resource`` is ``requests.X`` or ``limits.X``; unset limits default to the node's
    allocatable (as the kubelet does); unset requests of a resource default to its limit
    (apiserver defaulting) and otherwise to 0. The value is divided by ``divisor`` (default 1)
    and rounded up: CPU in millicores, other resources in units.
    """
    name = ref.get("containerName")
    if name:
        found = find_container(pod, str(name))
        if found is None:
            raise ContainerConfigError(f"resourceFieldRef refers to unknown container {name!r}")
        container = found
    resource = str(ref.get("resource") or "")
    kind, _, res_name = resource.partition(".")
    if kind not in ("requests", "limits") or not res_name:
        raise ContainerConfigError(f"unsupported container resource : {resource}")
    if res_name not in ("cpu", "memory", "ephemeral-storage") and not res_name.startswith("hugepages-"):
        raise ContainerConfigError(f"unsupported container resource : {resource}")
    limits = _container_resources(container, "limits")
    requests = _container_resources(container, "requests")
    try:
        if kind == "limits":
            raw = limits.get(res_name)
            if raw is None:
                raw = node_allocatable.get(res_name, 0)
        else:
            raw = requests.get(res_name)
            if raw is None:
                raw = limits.get(res_name, 0)
        amount = parse_quantity(str(raw))
        divisor = parse_quantity(str(ref.get("divisor") or "1"))
    except ValueError as exc:
        raise ContainerConfigError(f"resourceFieldRef {resource}: {exc}") from exc
    if divisor == 0:
        divisor = Fraction(1)
    if res_name == "cpu":
        return str(math.ceil(math.ceil(amount * 1000) / math.ceil(divisor * 1000)))
    return str(math.ceil(math.ceil(amount) / math.ceil(divisor)))


def _decode_secret_value(secret_name: str, key: str, value: Any) -> str:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ContainerConfigError(f"secret {secret_name!r} key {key!r} is not valid base64") from exc
    return raw.decode("utf-8", "surrogateescape")


def _secret_items(secret: Mapping[str, Any], name: str) -> dict[str, str]:
    """All key -> decoded string values of a Secret (``data`` base64; ``stringData`` if present)."""
    items = {k: _decode_secret_value(name, k, v) for k, v in (secret.get("data") or {}).items()}
    items.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return items


def is_env_var_name(name: str) -> bool:
    """True if ``name`` is a valid environment variable name (Kubernetes' relaxed rule, GA in 1.34):
    non-empty, printable ASCII, no ``=``."""
    return bool(name) and all(" " <= ch <= "~" for ch in name) and "=" not in name


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    configmaps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, Any]],
    pod_ip: str | None,
    host_ip: str | None,
    node_name: str | None,
    node_allocatable: Mapping[str, str],
    on_skipped: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it (without service variables).

    First ``envFrom`` in order (ConfigMap ``data`` / Secret ``data``, with ``prefix``; later
    sources win; keys that are not valid variable names are skipped and reported through
    ``on_skipped`` with a kubelet-like event message), then ``env`` in order: ``value`` with
    ``$(VAR)`` expanded against what is defined so far, or ``valueFrom`` (fieldRef,
    resourceFieldRef, configMapKeyRef, secretKeyRef). ``configmaps``/``secrets`` are the pod
    namespace's objects by name. A missing required object or key raises ContainerConfigError
    with the kubelet's message; an ``optional`` one is skipped (the variable stays unset).
    """
    namespace = _meta(pod).get("namespace") or "default"
    env: dict[str, str] = {}

    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        if source.get("configMapRef") is not None:
            ref = source["configMapRef"]
            kind, store, label = "configMap", configmaps, "configmap"
        elif source.get("secretRef") is not None:
            ref = source["secretRef"]
            kind, store, label = "secret", secrets, "secret"
        else:
            continue
        name = str(ref.get("name") or "")
        obj = store.get(name)
        if obj is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{label} "{name}" not found')
        values = (
            {k: str(v) for k, v in (obj.get("data") or {}).items()}
            if kind == "configMap"
            else _secret_items(obj, name)
        )
        invalid: list[str] = []
        for key in sorted(values):
            var = prefix + key
            if not is_env_var_name(var):
                invalid.append(var)
                continue
            env[var] = values[key]
        if invalid and on_skipped is not None:
            on_skipped(
                f"Keys [{', '.join(invalid)}] from the EnvFrom {kind} {namespace}/{name} were skipped "
                "since they are considered invalid environment variable names."
            )

    for var in container.get("env") or []:
        var_name = str(var.get("name") or "")
        value = var.get("value")
        source = var.get("valueFrom")
        if value:
            env[var_name] = expand(str(value), env)
            continue
        if not source:
            env[var_name] = ""
            continue
        resolved = _value_from(
            pod,
            container,
            source,
            namespace=namespace,
            configmaps=configmaps,
            secrets=secrets,
            pod_ip=pod_ip,
            host_ip=host_ip,
            node_name=node_name,
            node_allocatable=node_allocatable,
        )
        if resolved is not None:
            env[var_name] = resolved
    return env


def _value_from(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    source: Mapping[str, Any],
    *,
    namespace: str,
    configmaps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, Any]],
    pod_ip: str | None,
    host_ip: str | None,
    node_name: str | None,
    node_allocatable: Mapping[str, str],
) -> str | None:
    """Resolve one ``valueFrom``; None means an optional reference was absent (skip the var)."""
    if source.get("fieldRef") is not None:
        path = str(source["fieldRef"].get("fieldPath") or "")
        return field_ref_value(pod, path, pod_ip=pod_ip, host_ip=host_ip, node_name=node_name)
    if source.get("resourceFieldRef") is not None:
        return resource_field_value(pod, container, source["resourceFieldRef"], node_allocatable)
    if source.get("configMapKeyRef") is not None:
        ref = source["configMapKeyRef"]
        name, key, optional = str(ref.get("name") or ""), str(ref.get("key") or ""), bool(ref.get("optional"))
        cm = configmaps.get(name)
        if cm is None:
            if optional:
                return None
            raise ContainerConfigError(f'configmap "{name}" not found')
        data = cm.get("data") or {}
        if key not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in ConfigMap {namespace}/{name}")
        return str(data[key])
    if source.get("secretKeyRef") is not None:
        ref = source["secretKeyRef"]
        name, key, optional = str(ref.get("name") or ""), str(ref.get("key") or ""), bool(ref.get("optional"))
        secret = secrets.get(name)
        if secret is None:
            if optional:
                return None
            raise ContainerConfigError(f'secret "{name}" not found')
        values = _secret_items(secret, name)
        if key not in values:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in Secret {namespace}/{name}")
        return values[key]
    raise ContainerConfigError(f"unsupported valueFrom source {sorted(source)}")


# ------------------------------------------------------------------------------------------------
# mountPath rewriting

# Characters that continue a path name: a mountPath occurrence is rewritten only when it is not
# preceded by one of these (nor by "/" or "$") and not followed by one of these.
_NAME_CHARS = r"\w.\-~+@%"


def _normal_mount_key(mount_path: str) -> str:
    parts = [p for p in mount_path.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def rewrite_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Replace every mountPath occurrence in ``text`` at a path boundary by its materialised path.

    ``/stress/stress.sh``, ``/stress`` and ``--cfg=/stress/a`` are rewritten for mountPath
    ``/stress``; ``/stressful``, ``/stress.sh``, ``/data/stress`` and ``~/stress`` are not.
    The longest mountPath wins, and a materialised path already in the text is left unchanged,
    so rewriting is idempotent. One pass: replaced text is never rescanned.
    """
    table: dict[str, str] = {}
    for mount_path, target in mounts.items():
        key = _normal_mount_key(mount_path)
        if key == "/":
            continue
        table[key] = str(target)
    for materialised in list(table.values()):
        table.setdefault(materialised, materialised)
    if not table or "/" not in text:
        return text
    alternatives = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    pattern = re.compile(rf"(?<![{_NAME_CHARS}/$])(?:{alternatives})(?![{_NAME_CHARS}$])")
    return pattern.sub(lambda m: table[m.group(0)], text)


def rewrite_env(env: Mapping[str, str], mounts: Mapping[str, Path]) -> dict[str, str]:
    """The process environment: every value with mountPaths rewritten (see rewrite_paths)."""
    return {name: rewrite_paths(value, mounts) for name, value in env.items()}


# ------------------------------------------------------------------------------------------------
# argv


def _script_in(mount: Path, image: str, container_name: str) -> Path:
    """The script a command-less container runs from the volume mounted at ``mount``."""
    if mount.is_file():
        return mount
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(mount)
            if not entry.name.startswith(".") and entry.is_file(follow_symlinks=True)
        )
    except OSError as exc:
        raise ContainerConfigError(
            f"container {container_name} has no command and its volume {image!r} cannot be read: {exc}"
        ) from exc
    preferred = f"{image}.sh"
    if preferred in names:
        return mount / preferred
    if len(names) == 1:
        return mount / names[0]
    found = ", ".join(names) if names else "no files"
    raise ContainerConfigError(
        f"container {container_name} has no command and the volume named like its image {image!r} "
        f"holds {found}; expected exactly one file or {preferred!r}: set command"
    )


def build_argv(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    mounts: Mapping[str, Path],
) -> list[str]:
    """The argv the runtime executes for ``container``.

    With ``command``: ``command + args``, each word ``$(VAR)``-expanded with ``env`` (the raw
    environment from resolve_env), then mountPath-rewritten. Without ``command`` (original JIRIAF
    convention): the volumeMount whose ``name`` equals the container ``image`` holds the script;
    it is ``<image>.sh`` if present, else the only (non-hidden) file of that volume, else the
    mounted file itself for a subPath mount; the argv is ``["bash", <script>] + args``. Lists that
    volume's materialised directory (so it must be called after volumes are materialised).
    Raises ContainerConfigError when no script can be chosen.
    """
    del pod  # kept in the signature for symmetry with resolve_env; the container has all we need
    name = str(container.get("name") or "")

    def words(key: str) -> list[str]:
        return [rewrite_paths(expand(str(w), env), mounts) for w in container.get(key) or []]

    command = words("command")
    args = words("args")
    if command:
        return command + args
    image = str(container.get("image") or "")
    mount_path = next(
        (
            str(m.get("mountPath") or "")
            for m in container.get("volumeMounts") or []
            if m.get("name") == image
        ),
        None,
    )
    if mount_path is None:
        raise ContainerConfigError(
            f"container {name} has no command and no volume named like its image {image!r} "
            "to take a script from (original JIRIAF convention); set command"
        )
    key = _normal_mount_key(mount_path)
    target = mounts.get(key)
    if target is None:
        target = next((p for m, p in mounts.items() if _normal_mount_key(m) == key), None)
    if target is None:
        raise ContainerConfigError(
            f"container {name}: volume {image!r} mounted at {mount_path} is not materialised"
        )
    return ["bash", str(_script_in(target, image, name)), *args]


def working_dir(container: Mapping[str, Any], container_dir: Path, mounts: Mapping[str, Path]) -> Path:
    """The directory the container's processes start in.

    No ``workingDir``: the container directory. A ``workingDir`` at or under a mountPath: the
    materialised path. An absolute ``workingDir`` that exists on the host as a directory: used
    as is. Any other absolute path: the same path inside the container directory (the runtime
    creates it). A relative ``workingDir`` is taken inside the container directory; one that
    escapes it raises ContainerConfigError.
    """
    raw = str(container.get("workingDir") or "")
    if not raw:
        return container_dir
    if raw.startswith("/"):
        normal = os.path.normpath(raw)
        rewritten = rewrite_paths(normal, mounts)
        if rewritten != normal:
            return Path(rewritten)
        if Path(normal).is_dir():
            return Path(normal)
        return container_dir / normal.lstrip("/")
    joined = os.path.normpath(container_dir / raw)
    base = os.path.normpath(container_dir)
    if joined != base and not joined.startswith(base + os.sep):
        raise ContainerConfigError(f"workingDir {raw!r} leaves the container directory")
    return Path(joined)
