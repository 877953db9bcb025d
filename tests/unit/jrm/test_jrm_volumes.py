"""jiriaf.jrm.volumes: planning, hostile specs, materialising, modes, sharing, idempotence."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from jiriaf.jrm.environment import ContainerConfigError, build_argv
from jiriaf.jrm.volumes import (
    VolumeError,
    VolumePlan,
    container_directory,
    materialise,
    mount_map,
    plan_volumes,
    pod_directory,
)

pytestmark = pytest.mark.unit


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


CONFIGMAPS: dict[str, dict[str, Any]] = {
    "cfg": {
        "data": {"app.yaml": "a: 1\n", "run.sh": "echo run\n"},
        "binaryData": {"blob.bin": b64(b"\x00\x01")},
    },
    "direct-stress": {"data": {"stress.sh": "stress --cpu $1\n"}},
    "kube-root-ca.crt": {"data": {"ca.crt": "CERT"}},
    "evil-key": {"data": {"../../x": "pwned"}},
    "dotdot-key": {"data": {"..": "pwned"}},
    "empty-key": {"data": {"": "pwned"}},
    "slash-key": {"data": {"a/b": "pwned"}},
    "bad-binary": {"binaryData": {"k": "%%%"}},
    "both": {"data": {"k": "1"}, "binaryData": {"k": b64("2")}},
}
SECRETS: dict[str, dict[str, Any]] = {
    "creds": {"data": {"user": b64("alice"), "pass": b64("s3cret")}},
    "bad": {"data": {"k": "not base64!"}},
}


def make_pod(
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    *,
    more_containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "main", "command": ["true"], "volumeMounts": mounts}]
        + (more_containers or []),
        "volumes": volumes,
    }
    if init:
        spec["initContainers"] = init
    return {
        "metadata": {"name": "pod", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
        "spec": spec,
    }


@dataclass
class World:
    """A temp tree: work/ns/pod (the pod dir), outside/ (must never change), hostok/ (allowed)."""

    root: Path
    pod_dir: Path
    outside: Path
    hostok: Path

    def plan(self, pod: dict[str, Any], **kw: Any) -> VolumePlan:
        kw.setdefault("configmaps", CONFIGMAPS)
        kw.setdefault("secrets", SECRETS)
        kw.setdefault("allowed_host_prefixes", [self.hostok])
        return plan_volumes(pod, pod_dir=self.pod_dir, **kw)

    def apply(self, pod: dict[str, Any], **kw: Any) -> VolumePlan:
        plan = self.plan(pod, **kw)
        materialise(plan)
        return plan


@pytest.fixture
def world(tmp_path: Path) -> World:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("do not touch")
    (outside / "dir" / "file").write_text("nor this")
    hostok = tmp_path / "hostok"
    (hostok / "data").mkdir(parents=True)
    (hostok / "data" / "input.txt").write_text("input")
    return World(root=tmp_path, pod_dir=tmp_path / "work" / "ns" / "pod", outside=outside, hostok=hostok)


def snapshot(root: Path, exclude: Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every path under root (not following symlinks) with its type, content/target and mode."""
    out: dict[str, tuple[Any, ...]] = {}

    def excluded(p: Path) -> bool:
        return exclude is not None and (p == exclude or exclude in p.parents)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not excluded(here / d)]
        for name in [*dirnames, *filenames]:
            p = here / name
            if excluded(p):
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", str(p.readlink()))
            elif stat.S_ISREG(st.st_mode):
                out[str(p)] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
            else:
                out[str(p)] = ("dir", stat.S_IMODE(st.st_mode))
    return out


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ------------------------------------------------------------------------------------------------
# hostile specs: every one is refused with VolumeError and nothing changes outside the pod dir


@dataclass
class Hostile:
    id: str
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    match: str
    setup: Callable[[World], None] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    containers: list[dict[str, Any]] | None = None


def _symlink_volume_dir_outside(w: World) -> None:
    target = w.pod_dir / "volumes" / "configmap"
    target.mkdir(parents=True)
    (target / "cfg").symlink_to(w.outside / "dir")


def _symlink_file_outside(w: World) -> None:
    d = w.pod_dir / "volumes" / "configmap" / "cfg"
    d.mkdir(parents=True)
    (d / "app.yaml").symlink_to(w.outside / "secret.txt")


def _symlink_container_dir_outside(w: World) -> None:
    (w.pod_dir / "containers").mkdir(parents=True)
    (w.pod_dir / "containers" / "main").symlink_to(w.outside)


def _symlink_volumes_outside(w: World) -> None:
    w.pod_dir.mkdir(parents=True)
    (w.pod_dir / "volumes").symlink_to(w.outside)


def _symlink_mount_parent_outside(w: World) -> None:
    cdir = w.pod_dir / "containers" / "main"
    cdir.mkdir(parents=True)
    (cdir / "etc").symlink_to(w.outside / "dir")


def _symlink_in_empty_dir(w: World) -> None:
    d = w.pod_dir / "volumes" / "emptydir" / "scratch"
    d.mkdir(parents=True)
    (d / "sub").symlink_to(w.outside)


def _pod_dir_is_symlink(w: World) -> None:
    w.pod_dir.parent.mkdir(parents=True)
    w.pod_dir.symlink_to(w.outside)


def _host_symlink_outside(w: World) -> None:
    (w.hostok / "escape").symlink_to(w.outside)


def _host_sub_symlink_outside(w: World) -> None:
    (w.hostok / "data" / "escape").symlink_to(w.outside / "dir")


def _file_location_is_a_dir(w: World) -> None:
    (w.pod_dir / "volumes" / "configmap" / "cfg" / "run.sh").mkdir(parents=True)


def _mount_point_is_a_dir(w: World) -> None:
    (w.pod_dir / "containers" / "main" / "cfg").mkdir(parents=True)


CM = {"name": "cfg", "configMap": {"name": "cfg"}}
MOUNT_CFG = [{"name": "cfg", "mountPath": "/etc/cfg"}]

HOSTILE: list[Hostile] = [
    Hostile("configmap key ../../x", [{"name": "cfg", "configMap": {"name": "evil-key"}}], MOUNT_CFG, "'..'"),
    Hostile("configmap key ..", [{"name": "cfg", "configMap": {"name": "dotdot-key"}}], MOUNT_CFG, "'..'"),
    Hostile(
        "configmap empty key", [{"name": "cfg", "configMap": {"name": "empty-key"}}], MOUNT_CFG, "non-empty"
    ),
    Hostile(
        "configmap key with slash",
        [{"name": "cfg", "configMap": {"name": "slash-key"}}],
        MOUNT_CFG,
        "not a valid file name",
    ),
    Hostile(
        "item path /etc/passwd",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "/etc/passwd"}]}}],
        MOUNT_CFG,
        "must be a relative path",
    ),
    Hostile(
        "item path a/../../b",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "a/../../b"}]}}],
        MOUNT_CFG,
        "'..'",
    ),
    Hostile(
        "item path ..",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": ".."}]}}],
        MOUNT_CFG,
        "'..'",
    ),
    Hostile(
        "item path empty",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": ""}]}}],
        MOUNT_CFG,
        "non-empty",
    ),
    Hostile(
        "item path .",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "./"}]}}],
        MOUNT_CFG,
        "does not name a file",
    ),
    Hostile(
        "item path NUL",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "a\x00b"}]}}],
        MOUNT_CFG,
        "NUL",
    ),
    Hostile(
        "item path too long",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "x" * 300}]}}],
        MOUNT_CFG,
        "longer than 255",
    ),
    Hostile(
        "secret item ../../../../tmp/evil",
        [
            {
                "name": "s",
                "secret": {"secretName": "creds", "items": [{"key": "user", "path": "../../../../tmp/evil"}]},
            }
        ],
        [{"name": "s", "mountPath": "/s"}],
        "'..'",
    ),
    Hostile(
        "downwardAPI item ../labels",
        [
            {
                "name": "d",
                "downwardAPI": {
                    "items": [{"path": "../labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                },
            }
        ],
        [{"name": "d", "mountPath": "/d"}],
        "'..'",
    ),
    Hostile(
        "projected configMap item /abs",
        [
            {
                "name": "p",
                "projected": {
                    "sources": [{"configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "/abs"}]}}]
                },
            }
        ],
        [{"name": "p", "mountPath": "/p"}],
        "relative path",
    ),
    Hostile(
        "projected token path ../t",
        [{"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "../t"}}]}}],
        [{"name": "p", "mountPath": "/p"}],
        "'..'",
    ),
    Hostile("mountPath ../../", [CM], [{"name": "cfg", "mountPath": "../../"}], "'..'"),
    Hostile("mountPath /a/../../b", [CM], [{"name": "cfg", "mountPath": "/a/../../b"}], "'..'"),
    Hostile(
        "mountPath / is the container dir",
        [CM],
        [{"name": "cfg", "mountPath": "/"}],
        "container directory itself",
    ),
    Hostile(
        "mountPath /./ is the container dir",
        [CM],
        [{"name": "cfg", "mountPath": "/./"}],
        "container directory itself",
    ),
    Hostile("mountPath NUL", [CM], [{"name": "cfg", "mountPath": "/a\x00"}], "NUL"),
    Hostile("subPath ../x", [CM], [{"name": "cfg", "mountPath": "/c", "subPath": "../x"}], "'..'"),
    Hostile("subPath a/../../x", [CM], [{"name": "cfg", "mountPath": "/c", "subPath": "a/../../x"}], "'..'"),
    Hostile(
        "subPath absolute",
        [CM],
        [{"name": "cfg", "mountPath": "/c", "subPath": "/etc/passwd"}],
        "relative path",
    ),
    Hostile(
        "subPath through a file",
        [CM],
        [{"name": "cfg", "mountPath": "/c", "subPath": "run.sh/x"}],
        "goes through a file",
    ),
    Hostile(
        "duplicate mountPaths",
        [CM, {"name": "e", "emptyDir": {}}],
        [{"name": "cfg", "mountPath": "/data"}, {"name": "e", "mountPath": "/data/"}],
        "used twice",
    ),
    Hostile(
        "nested mountPaths",
        [CM, {"name": "e", "emptyDir": {}}],
        [{"name": "e", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/data/cfg"}],
        "nested",
    ),
    Hostile("invalid volume name", [{"name": "../x", "emptyDir": {}}], [], "invalid volume name"),
    Hostile("duplicate volume name", [CM, {"name": "cfg", "emptyDir": {}}], [], "duplicate volume"),
    Hostile(
        "invalid container name", [], [], "invalid container name", containers=[{"name": "..", "image": "x"}]
    ),
    Hostile("mount of an unknown volume", [], [{"name": "ghost", "mountPath": "/g"}], "no volume named"),
    Hostile(
        "unsupported volume type",
        [{"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}],
        [],
        "not supported",
    ),
    Hostile(
        "volume with two sources",
        [{"name": "v", "emptyDir": {}, "configMap": {"name": "cfg"}}],
        [],
        "exactly one source",
    ),
    Hostile(
        "subPathExpr", [CM], [{"name": "cfg", "mountPath": "/c", "subPathExpr": "$(POD)"}], "subPathExpr"
    ),
    Hostile(
        "reserved mount name",
        [CM],
        [{"name": "cfg", "mountPath": "/logs/x"}],
        "reserved",
        kwargs={"reserved_names": {"logs"}},
    ),
    Hostile(
        "missing configmap",
        [{"name": "cfg", "configMap": {"name": "nope"}}],
        MOUNT_CFG,
        'configmap "nope" not found',
    ),
    Hostile(
        "missing configmap key",
        [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "nope", "path": "n"}]}}],
        MOUNT_CFG,
        "non-existent key: nope",
    ),
    Hostile(
        "missing secret", [{"name": "s", "secret": {"secretName": "nope"}}], [], 'secret "nope" not found'
    ),
    Hostile("secret bad base64", [{"name": "s", "secret": {"secretName": "bad"}}], [], "not valid base64"),
    Hostile(
        "binaryData bad base64",
        [{"name": "cfg", "configMap": {"name": "bad-binary"}}],
        [],
        "not valid base64",
    ),
    Hostile(
        "key in data and binaryData", [{"name": "cfg", "configMap": {"name": "both"}}], [], "both data and"
    ),
    Hostile(
        "two items, same path",
        [
            {
                "name": "cfg",
                "configMap": {
                    "name": "cfg",
                    "items": [{"key": "run.sh", "path": "x"}, {"key": "app.yaml", "path": "x"}],
                },
            }
        ],
        [],
        "same path",
    ),
    Hostile(
        "file and directory clash",
        [
            {
                "name": "cfg",
                "configMap": {
                    "name": "cfg",
                    "items": [{"key": "run.sh", "path": "x"}, {"key": "app.yaml", "path": "x/y"}],
                },
            }
        ],
        [],
        "conflict",
    ),
    Hostile(
        "bad mode", [{"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o7777}}], [], "invalid mode"
    ),
    Hostile(
        "hostPath outside allowed prefixes",
        [{"name": "h", "hostPath": {"path": "/etc"}}],
        [{"name": "h", "mountPath": "/h"}],
        "outside the allowed prefixes",
    ),
    Hostile(
        "hostPath with .. leaving the prefix",
        [{"name": "h", "hostPath": {"path": "HOSTOK/../outside"}}],
        [{"name": "h", "mountPath": "/h"}],
        "outside the allowed prefixes",
    ),
    Hostile(
        "hostPath with no prefixes configured",
        [{"name": "h", "hostPath": {"path": "HOSTOK"}}],
        [{"name": "h", "mountPath": "/h"}],
        "allows no host paths",
        kwargs={"allowed_host_prefixes": []},
    ),
    Hostile("hostPath relative", [{"name": "h", "hostPath": {"path": "data"}}], [], "absolute path"),
    Hostile(
        "hostPath unknown type",
        [{"name": "h", "hostPath": {"path": "HOSTOK", "type": "Weird"}}],
        [],
        "unknown hostPath type",
    ),
    Hostile(
        "hostPath via a symlink leading outside",
        [{"name": "h", "hostPath": {"path": "HOSTOK/escape"}}],
        [{"name": "h", "mountPath": "/h"}],
        "outside the allowed prefixes",
        setup=_host_symlink_outside,
    ),
    Hostile(
        "hostPath subPath via a symlink leading outside",
        [{"name": "h", "hostPath": {"path": "HOSTOK/data"}}],
        [{"name": "h", "mountPath": "/h", "subPath": "escape"}],
        "outside the allowed prefixes",
        setup=_host_sub_symlink_outside,
    ),
    Hostile(
        "hostPath type Directory but missing",
        [{"name": "h", "hostPath": {"path": "HOSTOK/none", "type": "Directory"}}],
        [{"name": "h", "mountPath": "/h"}],
        "is not a Directory",
    ),
    Hostile(
        "hostPath type File but a directory",
        [{"name": "h", "hostPath": {"path": "HOSTOK/data", "type": "File"}}],
        [{"name": "h", "mountPath": "/h"}],
        "is not a File",
    ),
    Hostile(
        "pre-existing symlink: volume dir -> outside",
        [CM],
        MOUNT_CFG,
        "refusing to follow symlink",
        setup=_symlink_volume_dir_outside,
    ),
    Hostile(
        "pre-existing symlink: file -> outside file",
        [CM],
        MOUNT_CFG,
        "refusing to follow symlink",
        setup=_symlink_file_outside,
    ),
    Hostile(
        "pre-existing symlink: container dir -> outside",
        [CM],
        MOUNT_CFG,
        "refusing to follow symlink",
        setup=_symlink_container_dir_outside,
    ),
    Hostile(
        "pre-existing symlink: volumes -> outside",
        [CM],
        MOUNT_CFG,
        "refusing to follow symlink",
        setup=_symlink_volumes_outside,
    ),
    Hostile(
        "pre-existing symlink: mount parent -> outside",
        [CM],
        MOUNT_CFG,
        "refusing to follow symlink",
        setup=_symlink_mount_parent_outside,
    ),
    Hostile(
        "emptyDir subPath symlink made by a workload",
        [{"name": "scratch", "emptyDir": {}}],
        [{"name": "scratch", "mountPath": "/s", "subPath": "sub"}],
        "refusing to follow symlink",
        setup=_symlink_in_empty_dir,
    ),
    Hostile(
        "pod dir is a symlink", [CM], MOUNT_CFG, "pod directory .* is a symlink", setup=_pod_dir_is_symlink
    ),
    Hostile(
        "file location exists as a directory",
        [CM],
        MOUNT_CFG,
        "exists and is not a regular file",
        setup=_file_location_is_a_dir,
    ),
    Hostile(
        "mount point exists as a directory",
        [CM],
        [{"name": "cfg", "mountPath": "/cfg"}],
        "exists and is not a symlink",
        setup=_mount_point_is_a_dir,
    ),
]


def _substitute(value: Any, w: World) -> Any:
    if isinstance(value, str):
        return value.replace("HOSTOK", str(w.hostok))
    if isinstance(value, list):
        return [_substitute(v, w) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, w) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", HOSTILE, ids=[h.id for h in HOSTILE])
def test_hostile_spec_is_refused_and_writes_nothing(world: World, case: Hostile) -> None:
    if case.setup is not None:
        case.setup(world)
    pod = make_pod(_substitute(case.volumes, world), _substitute(case.mounts, world))
    if case.containers is not None:
        pod["spec"]["containers"] = case.containers
    outside_before = snapshot(world.root, exclude=world.pod_dir)
    pod_before = (
        snapshot(world.pod_dir) if world.pod_dir.is_dir() and not world.pod_dir.is_symlink() else None
    )
    with pytest.raises(VolumeError, match=case.match) as err:
        world.apply(pod, **case.kwargs)
    assert isinstance(err.value, ContainerConfigError)
    assert err.value.reason == "CreateContainerConfigError"
    assert snapshot(world.root, exclude=world.pod_dir) == outside_before
    if pod_before is not None:
        assert snapshot(world.pod_dir) == pod_before  # validated before writing: nothing at all
    assert (world.outside / "secret.txt").read_text() == "do not touch"
    assert sorted(p.name for p in world.outside.iterdir()) == ["dir", "secret.txt"]


def test_hostile_specs_are_many() -> None:
    assert len(HOSTILE) >= 10


def test_verify_removes_a_link_that_escapes(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # a symlink swapped in between the check and the write is caught by the final realpath check
    plan = world.plan(
        make_pod([{"name": "e", "emptyDir": {}}], [{"name": "e", "mountPath": "/e", "subPath": "s"}])
    )
    import jiriaf.jrm.volumes as volumes

    real_write = volumes._write

    def racing_write(root: int, p: VolumePlan) -> None:
        real_write(root, p)
        sub = world.pod_dir / "volumes" / "emptydir" / "e" / "s"
        sub.rmdir()
        sub.symlink_to(world.outside)

    monkeypatch.setattr(volumes, "_write", racing_write)
    with pytest.raises(VolumeError, match="lead outside the pod directory"):
        materialise(plan)
    assert not (world.pod_dir / "containers" / "main" / "e").is_symlink()
    assert sorted(p.name for p in world.outside.iterdir()) == ["dir", "secret.txt"]


# ------------------------------------------------------------------------------------------------
# the paper's example and the layout


def test_paper_example(world: World) -> None:
    pod = make_pod([{"name": "direct-stress", "configMap": {"name": "direct-stress"}}], [])
    pod["spec"]["containers"] = [
        {
            "name": "direct-stress",
            "image": "direct-stress",
            "command": ["bash", "/stress/stress.sh"],
            "args": ["300", "2"],
            "volumeMounts": [{"name": "direct-stress", "mountPath": "/stress"}],
        }
    ]
    plan = world.apply(pod)
    cdir = container_directory(world.pod_dir, "direct-stress")
    mounts = mount_map(plan, "direct-stress")
    assert mounts == {"/stress": cdir / "stress"}
    argv = build_argv(pod, pod["spec"]["containers"][0], {}, mounts)
    assert argv == ["bash", f"{cdir}/stress/stress.sh", "300", "2"]
    assert Path(argv[1]).read_text() == "stress --cpu $1\n"
    assert str((cdir / "stress").readlink()) == "../../volumes/configmap/direct-stress"
    # without a command: the original convention finds the same script
    bare = {k: v for k, v in pod["spec"]["containers"][0].items() if k != "command"}
    assert build_argv(pod, bare, {}, mounts) == ["bash", f"{cdir}/stress/stress.sh", "300", "2"]


def test_layout_and_default_modes(world: World) -> None:
    pod = make_pod(
        [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "creds"}},
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
        ],
        [
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "sec", "mountPath": "/secrets"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "info", "mountPath": "/info"},
        ],
    )
    world.apply(pod)
    v = world.pod_dir / "volumes"
    c = world.pod_dir / "containers" / "main"
    assert (v / "configmap" / "cfg" / "app.yaml").read_text() == "a: 1\n"
    assert (v / "configmap" / "cfg" / "blob.bin").read_bytes() == b"\x00\x01"
    assert mode_of(v / "configmap" / "cfg" / "run.sh") == 0o644
    assert (v / "secret" / "sec" / "pass").read_bytes() == b"s3cret"
    assert mode_of(v / "secret" / "sec" / "user") == 0o600
    assert (v / "downwardapi" / "info" / "labels").read_text() == 'app="x"'
    assert mode_of(v / "downwardapi" / "info" / "labels") == 0o644
    assert (v / "emptydir" / "scratch").is_dir()
    for d in (v, v / "configmap", v / "configmap" / "cfg", v / "emptydir" / "scratch", c, c / "etc"):
        assert mode_of(d) == 0o750, d
    assert (c / "etc" / "cfg").is_symlink()
    assert (c / "etc" / "cfg" / "run.sh").read_text() == "echo run\n"
    assert (c / "secrets" / "user").read_text() == "alice"
    assert (c / "info" / "labels").exists()
    assert not [p for p in snapshot(world.pod_dir) if p.endswith(".jiriaf-tmp")]


@pytest.mark.parametrize(
    ("volume", "path", "mode"),
    [
        ({"configMap": {"name": "cfg", "defaultMode": 0o400}}, "run.sh", 0o400),
        ({"configMap": {"name": "cfg", "defaultMode": 0o755}}, "run.sh", 0o755),
        ({"configMap": {"name": "cfg", "defaultMode": 420}}, "run.sh", 0o644),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "bin/run", "mode": 0o700}]}},
            "bin/run",
            0o700,
        ),
        (
            {"configMap": {"name": "cfg", "defaultMode": 0o600, "items": [{"key": "run.sh", "path": "r"}]}},
            "r",
            0o600,
        ),
        ({"secret": {"secretName": "creds"}}, "user", 0o600),
        ({"secret": {"secretName": "creds", "defaultMode": None}}, "user", 0o600),
        ({"secret": {"secretName": "creds", "defaultMode": 0o640}}, "user", 0o640),
        (
            {"secret": {"secretName": "creds", "items": [{"key": "pass", "path": "p", "mode": 0o400}]}},
            "p",
            0o400,
        ),
        ({"secret": {"secretName": "creds", "defaultMode": 0}}, "user", 0o000),
        (
            {
                "downwardAPI": {
                    "defaultMode": 0o444,
                    "items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}],
                }
            },
            "n",
            0o444,
        ),
        (
            {
                "downwardAPI": {
                    "items": [{"path": "n", "mode": 0o600, "fieldRef": {"fieldPath": "metadata.name"}}]
                }
            },
            "n",
            0o600,
        ),
        ({"projected": {"sources": [{"configMap": {"name": "cfg"}}]}}, "run.sh", 0o644),
        ({"projected": {"sources": [{"secret": {"name": "creds"}}]}}, "user", 0o600),
        ({"projected": {"defaultMode": 0o440, "sources": [{"secret": {"name": "creds"}}]}}, "user", 0o440),
        ({"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}, "token", 0o600),
    ],
)
def test_modes(world: World, volume: dict[str, Any], path: str, mode: int) -> None:
    plan = world.apply(make_pod([{"name": "v", **volume}], [{"name": "v", "mountPath": "/v"}]), token="TOKEN")
    kind = next(iter(volume))
    f = world.pod_dir / "volumes" / kind.lower() / "v" / path
    assert mode_of(f) == mode
    planned = {str(p.path): p.mode for p in plan.files}
    assert planned[f"volumes/{kind.lower()}/v/{path}"] == mode


def test_read_only_mounts(world: World) -> None:
    pod = make_pod(
        [
            {
                "name": "cfg",
                "configMap": {"name": "cfg", "items": [{"key": "run.sh", "path": "bin/run", "mode": 0o755}]},
            },
            {"name": "sec", "secret": {"secretName": "creds"}},
            {"name": "rw", "configMap": {"name": "cfg"}},
        ],
        [
            {"name": "cfg", "mountPath": "/cfg", "readOnly": True},
            {"name": "sec", "mountPath": "/sec", "readOnly": True},
            {"name": "rw", "mountPath": "/rw", "readOnly": True},
        ],
        more_containers=[
            {"name": "other", "image": "o", "volumeMounts": [{"name": "rw", "mountPath": "/rw"}]}
        ],
    )
    world.apply(pod)
    v = world.pod_dir / "volumes"
    assert mode_of(v / "configmap" / "cfg" / "bin" / "run") == 0o555
    assert mode_of(v / "configmap" / "cfg" / "bin") == 0o550
    assert mode_of(v / "configmap" / "cfg") == 0o550
    assert mode_of(v / "secret" / "sec" / "user") == 0o400  # never widened to 0444
    # mounted read-write by another container: a shared symlinked volume stays writable
    assert mode_of(v / "configmap" / "rw" / "run.sh") == 0o644
    assert mode_of(v / "configmap" / "rw") == 0o750
    world.apply(pod)  # a second run works through the read-only directories
    assert mode_of(v / "configmap" / "cfg") == 0o550


def test_empty_dir_is_shared_between_containers(world: World) -> None:
    pod = make_pod(
        [{"name": "shared", "emptyDir": {"medium": "Memory"}}],
        [{"name": "shared", "mountPath": "/out"}],
        more_containers=[
            {"name": "reader", "image": "r", "volumeMounts": [{"name": "shared", "mountPath": "/in/data"}]}
        ],
        init=[{"name": "prep", "image": "p", "volumeMounts": [{"name": "shared", "mountPath": "/work"}]}],
    )
    plan = world.apply(pod)
    writer = mount_map(plan, "main")["/out"]
    reader = mount_map(plan, "reader")["/in/data"]
    init = mount_map(plan, "prep")["/work"]
    (writer / "result.txt").write_text("42")
    assert (reader / "result.txt").read_text() == "42"
    assert (init / "result.txt").read_text() == "42"
    assert os.path.realpath(writer) == os.path.realpath(world.pod_dir / "volumes" / "emptydir" / "shared")
    world.apply(pod)  # emptyDir content survives a re-run (JRM restart)
    assert (reader / "result.txt").read_text() == "42"


def test_sub_path(world: World) -> None:
    pod = make_pod(
        [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}],
        [
            {"name": "cfg", "mountPath": "/etc/app.yaml", "subPath": "app.yaml"},
            {"name": "scratch", "mountPath": "/cache", "subPath": "main/cache"},
            {"name": "cfg", "mountPath": "/whole", "subPath": "."},
            {"name": "cfg", "mountPath": "/new", "subPath": "not-a-key"},
        ],
        more_containers=[
            {"name": "b", "image": "b", "volumeMounts": [{"name": "scratch", "mountPath": "/all"}]}
        ],
    )
    plan = world.apply(pod)
    m = mount_map(plan, "main")
    assert m["/etc/app.yaml"].read_text() == "a: 1\n"
    assert m["/etc/app.yaml"].is_file()
    assert m["/cache"].is_dir()
    (m["/cache"] / "x").write_text("cached")
    assert (mount_map(plan, "b")["/all"] / "main" / "cache" / "x").read_text() == "cached"
    assert (m["/whole"] / "run.sh").is_file()
    assert m["/new"].is_dir()
    assert {mt.mount_path: mt.sub_path for mt in plan.mounts if mt.container == "main"} == {
        "/etc/app.yaml": "app.yaml",
        "/cache": "main/cache",
        "/whole": "",
        "/new": "not-a-key",
    }
    world.apply(pod)
    assert (m["/cache"] / "x").read_text() == "cached"


def test_sub_path_existing_file_in_empty_dir(world: World) -> None:
    pod = make_pod([{"name": "e", "emptyDir": {}}], [{"name": "e", "mountPath": "/f", "subPath": "file"}])
    world.apply(pod)
    link = world.pod_dir / "containers" / "main" / "f"
    target = world.pod_dir / "volumes" / "emptydir" / "e" / "file"
    target.rmdir()
    target.write_text("made by the workload")
    world.apply(pod)  # a file there is accepted (it is what the workload made)
    assert link.read_text() == "made by the workload"


def test_items_subset_and_nested_paths(world: World) -> None:
    pod = make_pod(
        [
            {
                "name": "cfg",
                "configMap": {
                    "name": "cfg",
                    "items": [
                        {"key": "run.sh", "path": "bin/deep/run"},
                        {"key": "app.yaml", "path": "./conf//app.yaml"},
                    ],
                },
            }
        ],
        [{"name": "cfg", "mountPath": "/c"}],
    )
    plan = world.apply(pod)
    root = world.pod_dir / "volumes" / "configmap" / "cfg"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "bin/deep/run",
        "conf/app.yaml",
    ]
    assert mount_map(plan, "main")["/c"].joinpath("conf/app.yaml").read_text() == "a: 1\n"


@pytest.mark.parametrize(
    "volume",
    [
        {"configMap": {"name": "nope", "optional": True}},
        {"secret": {"secretName": "nope", "optional": True}},
        {"configMap": {"name": "cfg", "optional": True, "items": [{"key": "nope", "path": "n"}]}},
        {
            "projected": {
                "sources": [
                    {"configMap": {"name": "nope", "optional": True}},
                    {"secret": {"name": "nope", "optional": True}},
                    {"serviceAccountToken": {"path": "token"}},
                ]
            }
        },
    ],
)
def test_optional_sources_give_an_empty_volume(world: World, volume: dict[str, Any]) -> None:
    plan = world.apply(make_pod([{"name": "v", **volume}], [{"name": "v", "mountPath": "/v"}]))
    assert plan.files == ()
    assert list(mount_map(plan, "main")["/v"].iterdir()) == []


def test_service_account_volume_as_injected_by_the_apiserver(world: World) -> None:
    volume = {
        "name": "kube-api-access-abcde",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }
    mount = {
        "name": "kube-api-access-abcde",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": True,
    }
    plan = world.apply(make_pod([volume], [mount]), token="eyJ.token")
    sa = mount_map(plan, "main")["/var/run/secrets/kubernetes.io/serviceaccount"]
    assert (sa / "token").read_text() == "eyJ.token"
    assert (sa / "ca.crt").read_text() == "CERT"
    assert (sa / "namespace").read_text() == "ns"
    assert mode_of(sa / "token") == 0o444  # 0644 (defaultMode 420) minus write bits: readOnly mount
    plan2 = world.plan(make_pod([volume], [mount]))
    assert [str(f.path.name) for f in plan2.files] == ["ca.crt", "namespace"]  # no token supplied


def test_downward_api_items(world: World) -> None:
    pod = make_pod(
        [
            {
                "name": "d",
                "downwardAPI": {
                    "items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                        {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
                        {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
                        {
                            "path": "cpu",
                            "resourceFieldRef": {
                                "containerName": "main",
                                "resource": "limits.cpu",
                                "divisor": "1m",
                            },
                        },
                    ]
                },
            }
        ],
        [{"name": "d", "mountPath": "/d"}],
    )
    plan = world.apply(pod, node_name="vk-1", node_allocatable={"cpu": "4"})
    d = mount_map(plan, "main")["/d"]
    got = {p.name: p.read_text() for p in d.iterdir()}
    assert got == {"name": "pod", "uid": "u-1", "app": "x", "node": "vk-1", "cpu": "4000"}


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"path": "c", "resourceFieldRef": {"resource": "limits.cpu"}}, "needs containerName"),
        (
            {"path": "c", "resourceFieldRef": {"containerName": "main", "resource": "limits.gpu"}},
            "unsupported",
        ),
        ({"path": "c", "fieldRef": {"fieldPath": "spec.bogus"}}, "unsupported fieldRef"),
        ({"path": "c"}, "neither fieldRef nor resourceFieldRef"),
    ],
)
def test_downward_api_errors(world: World, item: dict[str, Any], match: str) -> None:
    with pytest.raises(VolumeError, match=match):
        world.plan(make_pod([{"name": "d", "downwardAPI": {"items": [item]}}], []))


def test_unsupported_projected_source(world: World) -> None:
    volume = {
        "name": "p",
        "projected": {"sources": [{"clusterTrustBundle": {"signerName": "x", "path": "b"}}]},
    }
    with pytest.raises(VolumeError, match="not supported"):
        world.plan(make_pod([volume], []))


def test_host_path_allowed(world: World) -> None:
    host_mode = mode_of(world.hostok / "data")
    pod = make_pod(
        [
            {"name": "h", "hostPath": {"path": str(world.hostok / "data"), "type": "Directory"}},
            {"name": "f", "hostPath": {"path": str(world.hostok / "data" / "input.txt"), "type": "File"}},
            {
                "name": "new",
                "hostPath": {"path": str(world.hostok / "made" / "here"), "type": "DirectoryOrCreate"},
            },
            {
                "name": "newf",
                "hostPath": {"path": str(world.hostok / "made" / "f.txt"), "type": "FileOrCreate"},
            },
            {"name": "plain", "hostPath": {"path": str(world.hostok / "later")}},
        ],
        [
            {"name": "h", "mountPath": "/h", "readOnly": True},
            {"name": "f", "mountPath": "/in.txt"},
            {"name": "h", "mountPath": "/sub", "subPath": "input.txt"},
            {"name": "new", "mountPath": "/new"},
            {"name": "newf", "mountPath": "/newf"},
            {"name": "plain", "mountPath": "/plain"},
        ],
    )
    plan = world.apply(pod)
    m = mount_map(plan, "main")
    assert (m["/h"] / "input.txt").read_text() == "input"
    assert m["/in.txt"].read_text() == "input"
    assert m["/sub"].read_text() == "input"
    assert (world.hostok / "made" / "here").is_dir()
    assert (world.hostok / "made" / "f.txt").is_file()
    assert str(m["/h"].readlink()) == str(world.hostok / "data")
    assert m["/plain"].is_symlink() and not m["/plain"].exists()  # type "": no checks, dangling is fine
    assert mode_of(world.hostok / "data") == host_mode  # readOnly never chmods host paths
    world.apply(pod)


def test_host_path_prefix_is_component_wise(world: World) -> None:
    sibling = world.root / "hostok2"
    sibling.mkdir()
    with pytest.raises(VolumeError, match="outside the allowed prefixes"):
        world.plan(make_pod([{"name": "h", "hostPath": {"path": str(sibling)}}], []))


def test_host_prefix_must_be_absolute(world: World) -> None:
    with pytest.raises(VolumeError, match="must be absolute"):
        world.plan(make_pod([], []), allowed_host_prefixes=["relative"])


def test_pod_dir_must_be_absolute() -> None:
    with pytest.raises(VolumeError, match="must be absolute"):
        plan_volumes(make_pod([], []), configmaps={}, secrets={}, pod_dir=Path("rel"))


# ------------------------------------------------------------------------------------------------
# idempotence and updates


def test_materialise_twice_is_harmless(world: World) -> None:
    pod = make_pod(
        [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "s", "secret": {"secretName": "creds"}}],
        [{"name": "cfg", "mountPath": "/c"}, {"name": "s", "mountPath": "/s", "readOnly": True}],
    )
    plan = world.apply(pod)
    first = snapshot(world.pod_dir)
    materialise(plan)
    assert snapshot(world.pod_dir) == first
    # a fresh plan of the same pod (JRM restart) is harmless too
    world.apply(pod)
    assert snapshot(world.pod_dir) == first


def test_update_prunes_stale_keys_and_repoints_links(world: World) -> None:
    pod = make_pod([{"name": "cfg", "configMap": {"name": "cfg"}}], [{"name": "cfg", "mountPath": "/c"}])
    world.apply(pod)
    root = world.pod_dir / "volumes" / "configmap" / "cfg"
    (root / ".half-written.jiriaf-tmp").write_text("leftover")
    (root / "junk-dir").mkdir()
    (root / "junk-dir" / "x").write_text("x")
    (root / "junk-link").symlink_to(world.outside / "secret.txt")
    changed = {**CONFIGMAPS, "cfg": {"data": {"app.yaml": "a: 2\n"}}}
    world.apply(pod, configmaps=changed)
    assert sorted(p.name for p in root.iterdir()) == ["app.yaml"]
    assert (root / "app.yaml").read_text() == "a: 2\n"
    assert (world.outside / "secret.txt").read_text() == "do not touch"
    # the mount now points at a subPath: the link is replaced atomically
    pod2 = make_pod(
        [{"name": "cfg", "configMap": {"name": "cfg"}}],
        [{"name": "cfg", "mountPath": "/c", "subPath": "app.yaml"}],
    )
    world.apply(pod2, configmaps=changed)
    assert (
        str((world.pod_dir / "containers" / "main" / "c").readlink())
        == "../../volumes/configmap/cfg/app.yaml"
    )


def test_stale_mount_link_to_outside_is_replaced_not_followed(world: World) -> None:
    link = world.pod_dir / "containers" / "main" / "c"
    link.parent.mkdir(parents=True)
    link.symlink_to(world.outside / "dir")
    pod = make_pod([{"name": "cfg", "configMap": {"name": "cfg"}}], [{"name": "cfg", "mountPath": "/c"}])
    world.apply(pod)
    assert str(link.readlink()) == "../../volumes/configmap/cfg"
    assert sorted(p.name for p in (world.outside / "dir").iterdir()) == ["file"]


# ------------------------------------------------------------------------------------------------
# plan contents and helpers


def test_plan_is_pure_and_ordered(world: World) -> None:
    plan = world.plan(
        make_pod([{"name": "cfg", "configMap": {"name": "cfg"}}], [{"name": "cfg", "mountPath": "/a/b/c"}])
    )
    assert not world.pod_dir.exists()
    depths = [len(d.path.parts) for d in plan.dirs]
    assert depths == sorted(depths)
    paths = {str(d.path) for d in plan.dirs}
    assert {"containers/main/a", "containers/main/a/b"} <= paths
    assert plan.links[0].path == PurePosixPath("containers/main/a/b/c")
    assert plan.links[0].target == PurePosixPath("volumes/configmap/cfg")
    assert mount_map(plan, "main") == {"/a/b/c": world.pod_dir / "containers/main/a/b/c"}
    assert mount_map(plan, "other") == {}


def test_unmounted_volumes_are_still_materialised(world: World) -> None:
    world.apply(make_pod([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "e", "emptyDir": {}}], []))
    assert (world.pod_dir / "volumes" / "configmap" / "cfg" / "run.sh").is_file()
    assert (world.pod_dir / "volumes" / "emptydir" / "e").is_dir()


def test_same_mount_path_in_two_containers_is_fine(world: World) -> None:
    pod = make_pod(
        [{"name": "cfg", "configMap": {"name": "cfg"}}],
        [{"name": "cfg", "mountPath": "/c"}],
        more_containers=[{"name": "two", "image": "t", "volumeMounts": [{"name": "cfg", "mountPath": "/c"}]}],
    )
    plan = world.apply(pod)
    assert mount_map(plan, "main")["/c"] != mount_map(plan, "two")["/c"]


def test_duplicate_container_names(world: World) -> None:
    pod = make_pod([], [], init=[{"name": "main", "image": "x"}])
    with pytest.raises(VolumeError, match="duplicate container name"):
        world.plan(pod)


@pytest.mark.parametrize(
    ("namespace", "name", "ok"),
    [
        ("ns", "pod", True),
        ("ns", "web-1.abc", True),
        ("..", "pod", False),
        ("ns", "..", False),
        ("ns", "a/b", False),
        ("NS", "pod", False),
        ("ns", "", False),
        ("ns", "x" * 254, False),
    ],
)
def test_pod_directory(tmp_path: Path, namespace: str, name: str, ok: bool) -> None:
    if ok:
        assert pod_directory(tmp_path, namespace, name) == tmp_path / namespace / name
    else:
        with pytest.raises(VolumeError):
            pod_directory(tmp_path, namespace, name)


def test_container_directory(tmp_path: Path) -> None:
    assert container_directory(tmp_path, "c-1") == tmp_path / "containers" / "c-1"
    with pytest.raises(VolumeError):
        container_directory(tmp_path, "../x")
