"""Plan and materialise a pod's volumes inside its directory, safely.

Layout (everything below ``<workdir>/<namespace>/<pod>/``, the *pod dir*)::

    volumes/<type>/<volume>/...            contents: configmap, secret, downwardapi, projected,
                                           emptydir (shared by every container of the pod)
    containers/<container>/<mountPath>     a symlink to the volume dir (or to its subPath), or
                                           to an allowed host path for hostPath volumes

:func:`plan_volumes` is pure: it validates everything (names, keys, item paths, mountPaths,
subPaths, hostPath prefixes, referenced objects) and computes every directory, file and symlink.
:func:`materialise` does the I/O: it first checks the existing tree and the host paths without
writing anything, then writes through directory file descriptors opened with ``O_NOFOLLOW`` (so
it never follows a symlink it did not create), and finally verifies with ``realpath`` that every
symlink stays inside the pod dir (or inside an allowed host prefix). Both raise
:class:`VolumeError`, a ContainerConfigError, so the pod controller reports
CreateContainerConfigError with the message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets as _secrets
import stat
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from jiriaf.jrm.environment import ContainerConfigError, field_ref_value, resource_field_value

__all__ = [
    "DIR_MODE",
    "PlannedDir",
    "PlannedFile",
    "PlannedLink",
    "PlannedMount",
    "VolumeError",
    "VolumePlan",
    "container_directory",
    "materialise",
    "mount_map",
    "plan_volumes",
    "pod_directory",
]

DIR_MODE = 0o750
READ_ONLY_DIR_MODE = 0o550
CONFIGMAP_MODE = 0o644
SECRET_MODE = 0o600
DOWNWARD_MODE = 0o644
TOKEN_MODE = 0o600
# The apiserver fills in defaultMode 0644 on every Secret volume, so that value cannot be told apart
# from "not set". On a shared host, Secret files stay owner-only (0600) in that case; any other
# defaultMode (or an item's mode) is honoured as written.
API_DEFAULT_MODE = 0o644

_TYPE_DIRS = {
    "configMap": "configmap",
    "secret": "secret",
    "emptyDir": "emptydir",
    "downwardAPI": "downwardapi",
    "projected": "projected",
}
_UNSUPPORTED_HINT = "supported: configMap, secret, emptyDir, downwardAPI, projected, hostPath"
_HOST_TYPES = {
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_NAME_BYTES = 255


class VolumeError(ContainerConfigError):
    """A volume cannot be planned or materialised safely; nothing unsafe was written."""


@dataclass(frozen=True)
class PlannedDir:
    """A directory relative to the pod dir.

    ``owned`` directories are the JRM's (created, chmod-ed, must be real directories);
    not-owned ones (subPath directories) are created if missing and otherwise left alone.
    """

    path: PurePosixPath
    mode: int
    owned: bool = True


@dataclass(frozen=True)
class PlannedFile:
    """A file relative to the pod dir, with its exact content and mode."""

    path: PurePosixPath
    data: bytes
    mode: int


@dataclass(frozen=True)
class PlannedLink:
    """A mount symlink at ``path`` (relative to the pod dir).

    ``target`` is relative to the pod dir, or an absolute host path when ``host_root`` is set
    (then ``host_root`` is the hostPath volume's path and ``host_type`` its type).
    """

    path: PurePosixPath
    target: PurePosixPath
    host_root: PurePosixPath | None = None
    host_type: str = ""


@dataclass(frozen=True)
class PlannedMount:
    """One volumeMount of one container: mountPath (normalised, ``/a/b``) and its symlink."""

    container: str
    mount_path: str
    volume: str
    link: PurePosixPath
    read_only: bool
    sub_path: str = ""


@dataclass(frozen=True)
class VolumePlan:
    """Everything :func:`materialise` writes for a pod, already validated."""

    pod_dir: Path
    dirs: tuple[PlannedDir, ...]
    files: tuple[PlannedFile, ...]
    links: tuple[PlannedLink, ...]
    mounts: tuple[PlannedMount, ...]
    allowed_host_prefixes: tuple[PurePosixPath, ...] = ()
    # data-volume roots whose entries not in the plan are removed (stale keys after a restart)
    prune_roots: tuple[PurePosixPath, ...] = ()


# ------------------------------------------------------------------------------------------------
# names and paths


def pod_directory(workdir: Path, namespace: str, pod_name: str) -> Path:
    """``<workdir>/<namespace>/<pod>`` after checking both are valid Kubernetes names."""
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise VolumeError(f"invalid namespace name {namespace!r}")
    if not _DNS_SUBDOMAIN.match(pod_name) or len(pod_name) > 253:
        raise VolumeError(f"invalid pod name {pod_name!r}")
    return Path(workdir) / namespace / pod_name


def container_directory(pod_dir: Path, container_name: str) -> Path:
    """``<pod dir>/containers/<container>`` (the container name must be a DNS label)."""
    _check_label(container_name, "container name")
    return Path(pod_dir) / "containers" / container_name


def _check_label(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
        raise VolumeError(f"invalid {what} {name!r}: must be a DNS-1123 label")
    return name


def _relative_path(raw: Any, what: str, *, single: bool = False) -> PurePosixPath:
    """Validate a path that must stay inside its directory; return it normalised.

    Rejects non-strings, empty paths, NUL bytes, absolute paths, any ``..`` component, paths
    that normalise to nothing, over-long components and (``single``) anything with a ``/``.
    """
    if not isinstance(raw, str) or raw == "":
        raise VolumeError(f"{what} must be a non-empty path, got {raw!r}")
    if "\x00" in raw:
        raise VolumeError(f"{what} {raw!r} contains a NUL byte")
    if raw.startswith("/"):
        raise VolumeError(f"{what} {raw!r} must be a relative path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in raw.split("/"):
        raise VolumeError(f"{what} {raw!r} must not contain '..'")
    if not parts:
        raise VolumeError(f"{what} {raw!r} does not name a file")
    if single and len(parts) != 1:
        raise VolumeError(f"{what} {raw!r} is not a valid file name")
    if any(len(p.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES for p in parts):
        raise VolumeError(f"{what} {raw!r} has a component longer than {_MAX_NAME_BYTES} bytes")
    return PurePosixPath(*parts)


def _mode(raw: Any, default: int, what: str) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 0o777:
        raise VolumeError(f"{what}: invalid mode {raw!r} (must be 0..0777)")
    return raw


def _under(path: PurePosixPath, prefix: PurePosixPath) -> bool:
    return path == prefix or prefix in path.parents


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VolumeError(f"{what} is not valid base64") from exc


# ------------------------------------------------------------------------------------------------
# planning


class _Files:
    """The files of one volume being planned (relative to the volume dir), checked for clashes."""

    def __init__(self, volume: str) -> None:
        self.volume = volume
        self.files: dict[PurePosixPath, tuple[bytes, int]] = {}

    def add(self, path: PurePosixPath, data: bytes, mode: int) -> None:
        if path in self.files:
            raise VolumeError(f"volume {self.volume!r}: two items write the same path {str(path)!r}")
        for other in self.files:
            if other in path.parents or path in other.parents:
                raise VolumeError(
                    f"volume {self.volume!r}: item paths {str(other)!r} and {str(path)!r} conflict"
                )
        self.files[path] = (data, mode)


def _project_keys(
    out: _Files,
    values: Mapping[str, bytes],
    items: Sequence[Mapping[str, Any]] | None,
    *,
    default_mode: int,
    optional: bool,
    what: str,
) -> None:
    """Project ConfigMap/Secret ``values`` into ``out``: all keys, or only ``items``."""
    if not items:
        for key in sorted(values):
            out.add(_relative_path(key, f"{what} key", single=True), values[key], default_mode)
        return
    for item in items:
        item_key = item.get("key")
        path = _relative_path(item.get("path"), f"{what} item path")
        if not isinstance(item_key, str) or item_key not in values:
            if optional:
                continue
            raise VolumeError(f"{what} references non-existent key: {item_key}")
        out.add(path, values[item_key], _mode(item.get("mode"), default_mode, f"{what} item {item_key!r}"))


def _configmap_values(cm: Mapping[str, Any], what: str) -> dict[str, bytes]:
    values = {str(k): str(v).encode() for k, v in (cm.get("data") or {}).items()}
    for k, v in (cm.get("binaryData") or {}).items():
        if k in values:
            raise VolumeError(f"{what}: key {k!r} is in both data and binaryData")
        values[str(k)] = _b64(v, f"{what} binaryData key {k!r}")
    return values


def _secret_values(secret: Mapping[str, Any], what: str) -> dict[str, bytes]:
    values = {str(k): _b64(v, f"{what} key {k!r}") for k, v in (secret.get("data") or {}).items()}
    values.update({str(k): str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return values


def _downward_items(
    out: _Files,
    pod: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    *,
    default_mode: int,
    what: str,
    pod_ip: str | None,
    host_ip: str | None,
    node_name: str | None,
    node_allocatable: Mapping[str, str],
) -> None:
    for item in items:
        path = _relative_path(item.get("path"), f"{what} item path")
        try:
            if item.get("fieldRef") is not None:
                value = field_ref_value(
                    pod,
                    str(item["fieldRef"].get("fieldPath") or ""),
                    pod_ip=pod_ip,
                    host_ip=host_ip,
                    node_name=node_name,
                )
            elif item.get("resourceFieldRef") is not None:
                ref = item["resourceFieldRef"]
                if not ref.get("containerName"):
                    raise VolumeError(f"{what} item {str(path)!r}: resourceFieldRef needs containerName")
                value = resource_field_value(pod, {}, ref, node_allocatable)
            else:
                raise VolumeError(f"{what} item {str(path)!r} has neither fieldRef nor resourceFieldRef")
        except VolumeError:
            raise
        except ContainerConfigError as exc:
            raise VolumeError(f"{what} item {str(path)!r}: {exc}") from exc
        out.add(path, value.encode("utf-8", "surrogateescape"), _mode(item.get("mode"), default_mode, what))


def _volume_type(volume: Mapping[str, Any], name: str) -> str:
    present = [k for k, v in volume.items() if k != "name" and v is not None]
    if len(present) != 1:
        raise VolumeError(f"volume {name!r} must have exactly one source, has {sorted(present)}")
    kind = present[0]
    if kind not in _TYPE_DIRS and kind != "hostPath":
        raise VolumeError(f"volume {name!r}: type {kind} is not supported by the JRM ({_UNSUPPORTED_HINT})")
    return kind


def plan_volumes(
    pod: Mapping[str, Any],
    *,
    configmaps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, Any]],
    pod_dir: Path,
    allowed_host_prefixes: Iterable[str | os.PathLike[str]] = (),
    pod_ip: str | None = None,
    host_ip: str | None = None,
    node_name: str | None = None,
    node_allocatable: Mapping[str, str] | None = None,
    token: str | None = None,
    reserved_names: Collection[str] = (),
) -> VolumePlan:
    """Validate the pod's volumes and mounts and compute everything to write. Pure (no I/O).

    ``configmaps``/``secrets`` are the pod namespace's objects by name (Secret ``data`` base64).
    Modes: ConfigMap and downwardAPI files 0644, Secret files and projected tokens 0600, unless
    ``defaultMode`` or an item's ``mode`` says otherwise; a volume whose every mount is
    ``readOnly`` gets its write bits removed (files ``mode & ~0222``, dirs 0550). A projected
    ``serviceAccountToken`` is written only when ``token`` is given. ``reserved_names`` are
    first components of a container dir that a mountPath may not take (the runtime's files).
    Raises VolumeError (a ContainerConfigError) with a clear message on anything unsafe or missing.
    """
    pod_dir = Path(pod_dir)
    if not pod_dir.is_absolute():
        raise VolumeError(f"pod directory {str(pod_dir)!r} must be absolute")
    allocatable = dict(node_allocatable or {})
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    volumes = spec.get("volumes") or []
    prefixes = tuple(PurePosixPath(os.path.normpath(os.fspath(p))) for p in allowed_host_prefixes)
    for prefix in prefixes:
        if not prefix.is_absolute():
            raise VolumeError(f"allowed host prefix {str(prefix)!r} must be absolute")

    container_names: set[str] = set()
    for c in containers:
        name = _check_label(c.get("name"), "container name")
        if name in container_names:
            raise VolumeError(f"duplicate container name {name!r}")
        container_names.add(name)

    # which volumes are mounted, and whether every mount of each is readOnly
    mounted: dict[str, list[bool]] = {}
    for c in containers:
        for m in c.get("volumeMounts") or []:
            mounted.setdefault(str(m.get("name")), []).append(bool(m.get("readOnly")))
    read_only = {name: all(flags) for name, flags in mounted.items()}

    dirs: dict[PurePosixPath, PlannedDir] = {}
    files: list[PlannedFile] = []
    prune_roots: list[PurePosixPath] = []
    volume_dirs: dict[str, PurePosixPath] = {}
    volume_files: dict[str, dict[PurePosixPath, tuple[bytes, int]]] = {}
    host_volumes: dict[str, tuple[PurePosixPath, str]] = {}

    def add_dir(path: PurePosixPath, mode: int, *, owned: bool = True) -> None:
        for parent in reversed(path.parents):
            if parent != PurePosixPath(".") and parent not in dirs:
                dirs[parent] = PlannedDir(parent, DIR_MODE)
        if path not in dirs or (owned and not dirs[path].owned):
            dirs[path] = PlannedDir(path, mode, owned)

    for volume in volumes:
        vname = _check_label(volume.get("name"), "volume name")
        if vname in volume_dirs or vname in host_volumes:
            raise VolumeError(f"duplicate volume name {vname!r}")
        kind = _volume_type(volume, vname)
        source = volume[kind]
        what = f"volume {vname!r}"
        ro = read_only.get(vname, False)

        if kind == "hostPath":
            host_volumes[vname] = _plan_host_path(source, what, prefixes)
            continue

        out = _Files(vname)
        raw_mode = source.get("defaultMode")
        default_mode = None if raw_mode is None else _mode(raw_mode, 0, what)
        if kind == "configMap":
            mode = CONFIGMAP_MODE if default_mode is None else default_mode
            _project_object(
                out,
                source,
                str(source.get("name") or ""),
                configmaps,
                "configmap",
                _configmap_values,
                mode,
                what,
            )
        elif kind == "secret":
            # 0644 is the API's default: it cannot be told from "unset", so Secret files stay 0600
            mode = SECRET_MODE if default_mode in (None, API_DEFAULT_MODE) else default_mode
            _project_object(
                out,
                source,
                str(source.get("secretName") or ""),
                secrets,
                "secret",
                _secret_values,
                mode,
                what,
            )
        elif kind == "downwardAPI":
            _downward_items(
                out,
                pod,
                source.get("items") or [],
                default_mode=DOWNWARD_MODE if default_mode is None else default_mode,
                what=what,
                pod_ip=pod_ip,
                host_ip=host_ip,
                node_name=node_name,
                node_allocatable=allocatable,
            )
        elif kind == "projected":
            _plan_projected(
                out,
                pod,
                source,
                default_mode,
                what=what,
                configmaps=configmaps,
                secrets=secrets,
                token=token,
                pod_ip=pod_ip,
                host_ip=host_ip,
                node_name=node_name,
                node_allocatable=allocatable,
            )

        vdir = PurePosixPath("volumes", _TYPE_DIRS[kind], vname)
        volume_dirs[vname] = vdir
        volume_files[vname] = out.files
        dir_mode = READ_ONLY_DIR_MODE if ro else DIR_MODE
        add_dir(vdir, dir_mode)
        if kind != "emptyDir":
            prune_roots.append(vdir)
        for rel, (data, mode) in sorted(out.files.items()):
            for parent in reversed(rel.parents):
                if parent != PurePosixPath("."):
                    add_dir(vdir / parent, dir_mode)
            files.append(PlannedFile(vdir / rel, data, (mode & ~0o222) if ro else mode))

    links: list[PlannedLink] = []
    mounts: list[PlannedMount] = []
    for c in containers:
        cname = str(c["name"])
        cdir = PurePosixPath("containers", cname)
        add_dir(cdir, DIR_MODE)
        seen: dict[PurePosixPath, str] = {}
        for m in c.get("volumeMounts") or []:
            vname = str(m.get("name") or "")
            mwhat = f"container {cname!r} volumeMount {vname!r}"
            rel_mount = _mount_path(m.get("mountPath"), mwhat)
            if rel_mount.parts[0] in reserved_names:
                raise VolumeError(f"{mwhat}: mountPath {m.get('mountPath')!r} is reserved by the JRM")
            if rel_mount in seen:
                raise VolumeError(f"container {cname!r}: mountPath /{rel_mount} is used twice")
            for other in seen:
                if other in rel_mount.parents or rel_mount in other.parents:
                    raise VolumeError(
                        f"container {cname!r}: nested mountPaths /{other} and /{rel_mount} "
                        "are not supported by the JRM"
                    )
            seen[rel_mount] = vname
            if m.get("subPathExpr"):
                raise VolumeError(f"{mwhat}: subPathExpr is not supported by the JRM")
            sub_raw = m.get("subPath") or ""
            sub = _sub_path(sub_raw, mwhat) if sub_raw else None
            link_path = cdir / rel_mount
            for parent in reversed(link_path.parents):
                if parent != PurePosixPath(".") and _under(parent, cdir) and parent != cdir:
                    add_dir(parent, DIR_MODE)

            if vname in host_volumes:
                root, host_type = host_volumes[vname]
                target = root / sub if sub is not None else root
                if not any(_under(target, p) for p in prefixes):
                    raise VolumeError(f"{mwhat}: subPath leaves the allowed host paths")
                links.append(PlannedLink(link_path, target, host_root=root, host_type=host_type))
            elif vname in volume_dirs:
                vdir = volume_dirs[vname]
                target = vdir
                if sub is not None:
                    target = vdir / sub
                    planned = volume_files[vname]
                    for parent in sub.parents:
                        if parent in planned:
                            raise VolumeError(f"{mwhat}: subPath {sub_raw!r} goes through a file")
                    if sub not in planned:
                        for parent in reversed(sub.parents):
                            if parent != PurePosixPath("."):
                                add_dir(vdir / parent, DIR_MODE, owned=False)
                        add_dir(target, DIR_MODE, owned=False)
                links.append(PlannedLink(link_path, target))
            else:
                raise VolumeError(f"{mwhat}: the pod has no volume named {vname!r}")
            mounts.append(
                PlannedMount(
                    container=cname,
                    mount_path="/" + str(rel_mount),
                    volume=vname,
                    link=link_path,
                    read_only=bool(m.get("readOnly")),
                    sub_path=str(sub) if sub is not None else "",
                )
            )

    ordered_dirs = tuple(sorted(dirs.values(), key=lambda d: (len(d.path.parts), str(d.path))))
    return VolumePlan(
        pod_dir=pod_dir,
        dirs=ordered_dirs,
        files=tuple(files),
        links=tuple(links),
        mounts=tuple(mounts),
        allowed_host_prefixes=prefixes,
        prune_roots=tuple(prune_roots),
    )


def _mount_path(raw: Any, what: str) -> PurePosixPath:
    """A mountPath as a path relative to the container dir (``/stress/`` -> ``stress``)."""
    if not isinstance(raw, str):
        raise VolumeError(f"{what}: mountPath {raw!r} must be a string")
    if ".." in raw.split("/"):
        raise VolumeError(f"{what}: mountPath {raw!r} must not contain '..'")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        raise VolumeError(f"{what}: mountPath {raw!r} is the container directory itself")
    return _relative_path("/".join(parts), f"{what}: mountPath")


def _sub_path(raw: Any, what: str) -> PurePosixPath | None:
    """A validated subPath relative to the volume, or None when it names the volume itself."""
    if not isinstance(raw, str):
        raise VolumeError(f"{what}: subPath {raw!r} must be a string")
    if raw.startswith("/"):
        raise VolumeError(f"{what}: subPath {raw!r} must be a relative path")
    if ".." in raw.split("/"):
        raise VolumeError(f"{what}: subPath {raw!r} must not contain '..'")
    if not [p for p in raw.split("/") if p not in ("", ".")]:
        return None
    return _relative_path(raw, f"{what}: subPath")


def _plan_host_path(
    source: Mapping[str, Any], what: str, prefixes: Sequence[PurePosixPath]
) -> tuple[PurePosixPath, str]:
    raw = source.get("path")
    host_type = str(source.get("type") or "")
    if host_type not in _HOST_TYPES:
        raise VolumeError(f"{what}: unknown hostPath type {host_type!r}")
    if not isinstance(raw, str) or not raw.startswith("/") or "\x00" in raw:
        raise VolumeError(f"{what}: hostPath path {raw!r} must be an absolute path")
    path = PurePosixPath(os.path.normpath(raw))
    if not prefixes:
        raise VolumeError(
            f"{what}: hostPath {raw} is not allowed: this node allows no host paths "
            "(configure the allowed host path prefixes)"
        )
    if not any(_under(path, p) for p in prefixes):
        allowed = ", ".join(str(p) for p in prefixes)
        raise VolumeError(f"{what}: hostPath {raw} is outside the allowed prefixes ({allowed})")
    return path, host_type


def _project_object(
    out: _Files,
    ref: Mapping[str, Any],
    name: str,
    store: Mapping[str, Mapping[str, Any]],
    kind: str,
    values: Callable[[Mapping[str, Any], str], dict[str, bytes]],
    mode: int,
    what: str,
) -> None:
    """Project the keys of one ConfigMap or Secret (skipped when missing and optional)."""
    obj = store.get(name)
    if obj is None:
        if ref.get("optional"):
            return
        raise VolumeError(f'{what}: {kind} "{name}" not found')
    _project_keys(
        out,
        values(obj, f'{kind} "{name}"'),
        ref.get("items"),
        default_mode=mode,
        optional=bool(ref.get("optional")),
        what=f'{what}: {kind} "{name}"',
    )


def _plan_projected(
    out: _Files,
    pod: Mapping[str, Any],
    source: Mapping[str, Any],
    default_mode: int | None,
    *,
    what: str,
    configmaps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, Any]],
    token: str | None,
    pod_ip: str | None,
    host_ip: str | None,
    node_name: str | None,
    node_allocatable: Mapping[str, str],
) -> None:
    for index, src in enumerate(source.get("sources") or []):
        swhat = f"{what} source {index}"
        if src.get("configMap") is not None:
            ref = src["configMap"]
            mode = CONFIGMAP_MODE if default_mode is None else default_mode
            _project_object(
                out, ref, str(ref.get("name") or ""), configmaps, "configmap", _configmap_values, mode, swhat
            )
        elif src.get("secret") is not None:
            ref = src["secret"]
            mode = SECRET_MODE if default_mode is None else default_mode
            _project_object(
                out, ref, str(ref.get("name") or ""), secrets, "secret", _secret_values, mode, swhat
            )
        elif src.get("downwardAPI") is not None:
            _downward_items(
                out,
                pod,
                src["downwardAPI"].get("items") or [],
                default_mode=DOWNWARD_MODE if default_mode is None else default_mode,
                what=swhat,
                pod_ip=pod_ip,
                host_ip=host_ip,
                node_name=node_name,
                node_allocatable=node_allocatable,
            )
        elif src.get("serviceAccountToken") is not None:
            path = _relative_path(src["serviceAccountToken"].get("path"), f"{swhat}: token path")
            if token is not None:
                out.add(path, token.encode(), TOKEN_MODE if default_mode is None else default_mode)
        else:
            kinds = sorted(k for k, v in src.items() if v is not None)
            raise VolumeError(f"{swhat}: projected source {kinds} is not supported by the JRM")


def mount_map(plan: VolumePlan, container_name: str) -> dict[str, Path]:
    """mountPath (normalised, e.g. ``/stress``) -> materialised path, for one container."""
    return {m.mount_path: plan.pod_dir / m.link for m in plan.mounts if m.container == container_name}


# ------------------------------------------------------------------------------------------------
# materialising

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def materialise(plan: VolumePlan) -> None:
    """Create the plan's directories, files and symlinks under the pod dir. Idempotent.

    1. Check without writing: the pod dir is not a symlink; no existing component on any
       planned path is a symlink other than a planned mount link or has the wrong type;
       hostPath targets resolve (realpath) under an allowed prefix and match their ``type``.
    2. Write through directory fds opened with ``O_NOFOLLOW``: dirs (0750), files via a temp
       file created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` then renamed in the same directory,
       stale entries of data volumes removed, symlinks replaced atomically; final modes last.
    3. Verify with ``realpath`` that each symlink stays in the pod dir (or an allowed host
       prefix); a link that does not is removed and VolumeError raised.
    Raises VolumeError; anything refused in step 1 leaves the file system untouched.
    """
    pod_dir = Path(plan.pod_dir)
    _check_host_links(plan)
    try:
        st = os.lstat(pod_dir)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise VolumeError(f"cannot inspect pod directory {pod_dir}: {exc}") from exc
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise VolumeError(f"pod directory {pod_dir} is a symlink; refusing to follow it")
        if not stat.S_ISDIR(st.st_mode):
            raise VolumeError(f"pod directory {pod_dir} is not a directory")
        _check_tree(plan)
    try:
        if st is None:
            pod_dir.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            try:
                pod_dir.mkdir(mode=DIR_MODE)
            except FileExistsError:
                pass
        root = os.open(pod_dir, _DIR_FLAGS)
    except OSError as exc:
        raise VolumeError(f"cannot open pod directory {pod_dir}: {exc}") from exc
    try:
        _write(root, plan)
    except OSError as exc:
        raise VolumeError(f"cannot materialise volumes in {pod_dir}: {exc}") from exc
    finally:
        os.close(root)
    _verify_links(plan)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _check_tree(plan: VolumePlan) -> None:
    """Step 1 inside the pod dir: lstat every existing component of every planned path."""
    pod_dir = Path(plan.pod_dir)
    links = {link.path for link in plan.links}
    expected: dict[PurePosixPath, str] = {}
    for d in plan.dirs:
        expected[d.path] = "dir" if d.owned else "dir-or-file"
    for f in plan.files:
        expected[f.path] = "file"
    for link in plan.links:
        expected[link.path] = "link"
        if link.host_root is None:
            expected.setdefault(link.target, "dir-or-file")
    for rel, kind in expected.items():
        parts = rel.parts
        for i in range(1, len(parts) + 1):
            sub = PurePosixPath(*parts[:i])
            st = _lstat(pod_dir / sub)
            if st is None:
                break
            last = i == len(parts)
            if stat.S_ISLNK(st.st_mode):
                if last and kind == "link" and sub in links:
                    continue
                raise VolumeError(
                    f"refusing to follow symlink {pod_dir / sub} inside the pod directory "
                    "(it was not created by the JRM)"
                )
            if not last:
                if not stat.S_ISDIR(st.st_mode):
                    raise VolumeError(f"{pod_dir / sub} is not a directory")
                continue
            if kind == "dir" and not stat.S_ISDIR(st.st_mode):
                raise VolumeError(f"{pod_dir / sub} exists and is not a directory")
            if kind == "file" and not stat.S_ISREG(st.st_mode):
                raise VolumeError(f"{pod_dir / sub} exists and is not a regular file")
            if kind == "link":
                raise VolumeError(f"mount point {pod_dir / sub} exists and is not a symlink")


def _host_allowed(real: str, prefixes: Sequence[str]) -> bool:
    return any(real == p or real.startswith(p.rstrip("/") + "/") for p in prefixes)


def _check_host_links(plan: VolumePlan) -> None:
    """Step 1 for hostPath mounts: realpaths under an allowed prefix, types as declared."""
    prefixes = [os.path.realpath(p) for p in plan.allowed_host_prefixes]
    for link in plan.links:
        if link.host_root is None:
            continue
        root = os.fspath(link.host_root)
        real_root = os.path.realpath(root)
        if not _host_allowed(real_root, prefixes):
            raise VolumeError(f"hostPath {root} resolves to {real_root}, outside the allowed prefixes")
        real_target = os.path.realpath(os.fspath(link.target))
        if not _host_allowed(real_target, prefixes):
            raise VolumeError(
                f"hostPath {link.target} resolves to {real_target}, outside the allowed prefixes"
            )
        try:
            st: os.stat_result | None = Path(root).stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise VolumeError(f"hostPath {root}: {exc}") from exc
        kind = link.host_type
        checks = {
            "Directory": stat.S_ISDIR,
            "File": stat.S_ISREG,
            "Socket": stat.S_ISSOCK,
            "CharDevice": stat.S_ISCHR,
            "BlockDevice": stat.S_ISBLK,
            "DirectoryOrCreate": stat.S_ISDIR,
            "FileOrCreate": stat.S_ISREG,
        }
        if kind in checks:
            if st is None and kind.endswith("OrCreate"):
                continue
            if st is None or not checks[kind](st.st_mode):
                raise VolumeError(f"hostPath {root} is not a {kind.removesuffix('OrCreate')}")


def _open_dir(root: int, rel: PurePosixPath) -> int:
    """Open the directory ``rel`` under ``root`` without following any symlink."""
    fd = os.dup(root)
    try:
        for part in rel.parts:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create_host_paths(plan: VolumePlan) -> None:
    for link in plan.links:
        if link.host_root is None or not link.host_type.endswith("OrCreate"):
            continue
        root = Path(link.host_root)
        if root.exists():
            continue
        if link.host_type == "DirectoryOrCreate":
            root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        else:
            root.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(root, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            os.close(fd)
        real = os.path.realpath(root)
        if not _host_allowed(real, [os.path.realpath(p) for p in plan.allowed_host_prefixes]):
            raise VolumeError(f"hostPath {root} resolves to {real}, outside the allowed prefixes")


def _write(root: int, plan: VolumePlan) -> None:
    # directories, parents first; owned ones writable while we work
    for d in plan.dirs:
        parent = _open_dir(root, d.path.parent)
        try:
            try:
                os.mkdir(d.path.name, DIR_MODE, dir_fd=parent)
            except FileExistsError:
                pass
            if d.owned:
                fd = os.open(d.path.name, _DIR_FLAGS, dir_fd=parent)
                try:
                    os.fchmod(fd, DIR_MODE)
                finally:
                    os.close(fd)
        finally:
            os.close(parent)

    for f in plan.files:
        parent = _open_dir(root, f.path.parent)
        try:
            _write_file(parent, f.path.name, f.data, f.mode)
        finally:
            os.close(parent)

    for prune_root in plan.prune_roots:
        keep = {p.path for p in plan.files} | {d.path for d in plan.dirs}
        fd = _open_dir(root, prune_root)
        try:
            _prune(fd, prune_root, keep)
        finally:
            os.close(fd)

    _create_host_paths(plan)

    for link in plan.links:
        target = (
            os.fspath(link.target)
            if link.host_root is not None
            else os.path.relpath(os.fspath(link.target), os.fspath(link.path.parent))
        )
        parent = _open_dir(root, link.path.parent)
        try:
            _write_link(parent, link.path.name, target)
        finally:
            os.close(parent)

    # final modes, deepest first (a read-only dir can no longer be written into)
    for d in sorted(plan.dirs, key=lambda d: len(d.path.parts), reverse=True):
        if not d.owned:
            continue
        fd = _open_dir(root, d.path)
        try:
            os.fchmod(fd, d.mode)
        finally:
            os.close(fd)


def _write_file(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Write ``name`` in ``dir_fd`` atomically: exclusive temp file, then rename over it."""
    tmp = f".{name[:200]}.{_secrets.token_hex(6)}.jiriaf-tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
    )
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _write_link(dir_fd: int, name: str, target: str) -> None:
    """Make ``name`` in ``dir_fd`` a symlink to ``target``, replacing a different symlink atomically."""
    try:
        if os.readlink(name, dir_fd=dir_fd) == target:
            return
    except FileNotFoundError:
        pass
    except OSError as exc:  # EINVAL: exists and is not a symlink
        raise VolumeError(f"mount point {name!r} exists and is not a symlink") from exc
    tmp = f".{name[:200]}.{_secrets.token_hex(6)}.jiriaf-tmp"
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _prune(dir_fd: int, rel: PurePosixPath, keep: set[PurePosixPath]) -> None:
    """Remove entries under ``rel`` that the plan does not keep, never following symlinks."""
    for entry in os.listdir(dir_fd):
        path = rel / entry
        if path not in keep:
            _remove(dir_fd, entry)
            continue
        if stat.S_ISDIR(os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            sub = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _prune(sub, path, keep)
            finally:
                os.close(sub)


def _remove(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(sub, DIR_MODE)
            for entry in os.listdir(sub):  # noqa: PTH208 (fd-relative, no pathlib equivalent)
                _remove(sub, entry)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _verify_links(plan: VolumePlan) -> None:
    """Step 3: every symlink resolves inside the pod dir (or an allowed host prefix)."""
    pod_dir = Path(plan.pod_dir)
    real_pod = os.path.realpath(pod_dir)
    prefixes = [os.path.realpath(p) for p in plan.allowed_host_prefixes]
    bad: list[str] = []
    for link in plan.links:
        real = os.path.realpath(pod_dir / link.path)
        allowed = [*prefixes] if link.host_root is not None else [real_pod]
        if not _host_allowed(real, allowed):
            bad.append(f"{pod_dir / link.path} -> {real}")
            try:
                (pod_dir / link.path).unlink()
            except OSError:
                pass
    if bad:
        raise VolumeError("mount symlinks lead outside the pod directory: " + "; ".join(bad))
