"""jiriaf.jrm.environment: $(VAR) expansion, env resolution, quantities, argv, path rewriting."""

from __future__ import annotations

import base64
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from jiriaf.jrm.environment import (
    ContainerConfigError,
    build_argv,
    expand,
    field_ref_value,
    is_env_var_name,
    parse_quantity,
    resolve_env,
    rewrite_env,
    rewrite_paths,
    working_dir,
)

pytestmark = pytest.mark.unit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ------------------------------------------------------------------------------------------------
# expand

EXPAND_ENV = {"A": "alpha", "B": "beta", "EMPTY": "", "X": "$(A)"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("plain", "plain"),
        ("$(A)", "alpha"),
        ("x$(A)y", "xalphay"),
        ("$(A)$(B)", "alphabeta"),
        ("$(A) $(B)", "alpha beta"),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("pre-$(UNKNOWN)-post", "pre-$(UNKNOWN)-post"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$alpha"),
        ("$$$$(A)", "$$(A)"),
        ("$$", "$"),
        ("a$$b", "a$b"),
        ("$A", "$A"),
        ("${A}", "${A}"),
        ("$", "$"),
        ("abc$", "abc$"),
        ("$(", "$("),
        ("$(A", "$(A"),
        ("$(A $(B)", "$(A $(B)"),  # the first reference swallows up to the first ')': name "A $(B"
        ("$()", "$()"),
        ("$(EMPTY)", ""),
        ("$(X)", "$(A)"),  # no recursive expansion
        ("$(A))", "alpha)"),
        ("100$", "100$"),
        ("$1 $HOME", "$1 $HOME"),
        ("~/x", "~/x"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, EXPAND_ENV) == expected


# ------------------------------------------------------------------------------------------------
# quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("1", Fraction(1)),
        ("2", Fraction(2)),
        ("0", Fraction(0)),
        ("1Gi", Fraction(2**30)),
        ("1Mi", Fraction(2**20)),
        ("1Ki", Fraction(1024)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1E", Fraction(10**18)),
        ("1Ei", Fraction(2**60)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("128974848", Fraction(128974848)),
        ("129e6", Fraction(129 * 10**6)),
        ("123Mi", Fraction(123 * 2**20)),
        ("0.5", Fraction(1, 2)),
        ("1.5Gi", Fraction(3 * 2**29)),
        (".5", Fraction(1, 2)),
        ("100n", Fraction(1, 10**7)),
        ("10u", Fraction(1, 10**5)),
        ("+1", Fraction(1)),
        ("-1", Fraction(-1)),
        (" 2 ", Fraction(2)),
    ],
)
def test_parse_quantity(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1Q", "1.2.3", "Gi", "1 Gi", "1e", "--1", "1e1000"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_parse_quantity_numbers() -> None:
    assert parse_quantity(3) == 3
    assert parse_quantity(0.25) == Fraction(1, 4)


# ------------------------------------------------------------------------------------------------
# resolve_env

POD: dict[str, Any] = {
    "metadata": {
        "name": "web-1",
        "namespace": "science",
        "uid": "1234-abcd",
        "labels": {"app": "web", "tier": "front"},
        "annotations": {"note": 'say "hi"'},
    },
    "spec": {
        "nodeName": "vk-node",
        "serviceAccountName": "runner",
        "containers": [
            {
                "name": "main",
                "image": "main",
                "resources": {
                    "requests": {"cpu": "250m", "memory": "64Mi", "ephemeral-storage": "1Gi"},
                    "limits": {"cpu": "1500m", "memory": "128Mi"},
                },
            },
            {"name": "side", "image": "side", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}},
            {"name": "bare", "image": "bare"},
        ],
    },
}
ALLOCATABLE = {"cpu": "8", "memory": "16Gi", "ephemeral-storage": "100Gi"}
CONFIGMAPS: dict[str, dict[str, Any]] = {
    "cfg": {"data": {"MODE": "fast", "LEVEL": "3", "bad key": "x", "a=b": "y", "": "z"}},
    "other": {"data": {"MODE": "slow"}, "binaryData": {"BIN": b64("bin")}},
}
SECRETS: dict[str, dict[str, Any]] = {
    "creds": {"data": {"user": b64("alice"), "pass": b64("s3cret")}},
    "broken": {"data": {"k": "!!!notbase64"}},
}


def env_for(container: dict[str, Any], pod: dict[str, Any] | None = None, **kw: Any) -> dict[str, str]:
    return resolve_env(
        pod or POD,
        container,
        configmaps=kw.pop("configmaps", CONFIGMAPS),
        secrets=kw.pop("secrets", SECRETS),
        pod_ip=kw.pop("pod_ip", "10.0.0.5"),
        host_ip=kw.pop("host_ip", "192.168.1.2"),
        node_name=kw.pop("node_name", "vk-node"),
        node_allocatable=kw.pop("node_allocatable", ALLOCATABLE),
        **kw,
    )


def main_with(**fields: Any) -> dict[str, Any]:
    return {**POD["spec"]["containers"][0], **fields}


def field(path: str) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path}}}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", "web-1"),
        ("metadata.namespace", "science"),
        ("metadata.uid", "1234-abcd"),
        ("metadata.labels['app']", "web"),
        ('metadata.labels["tier"]', "front"),
        ("metadata.labels['missing']", ""),
        ("metadata.annotations['note']", 'say "hi"'),
        ("spec.nodeName", "vk-node"),
        ("spec.serviceAccountName", "runner"),
        ("status.hostIP", "192.168.1.2"),
        ("status.hostIPs", "192.168.1.2"),
        ("status.podIP", "10.0.0.5"),
        ("status.podIPs", "10.0.0.5"),
        ("metadata.labels", 'app="web"\ntier="front"'),
        ("metadata.annotations", 'note="say \\"hi\\""'),
    ],
)
def test_field_ref(path: str, expected: str) -> None:
    assert env_for(main_with(env=[field(path)]))["V"] == expected


def test_field_ref_unsupported() -> None:
    with pytest.raises(ContainerConfigError, match="unsupported fieldRef"):
        env_for(main_with(env=[field("spec.hostname")]))


def test_field_ref_value_defaults() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {}}
    assert field_ref_value(pod, "metadata.namespace", pod_ip=None, host_ip=None, node_name=None) == "default"
    assert field_ref_value(pod, "status.podIP", pod_ip=None, host_ip=None, node_name=None) == ""
    assert field_ref_value(pod, "metadata.labels", pod_ip=None, host_ip=None, node_name=None) == ""


def resource(res: str, divisor: str | None = None, container: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"resource": res}
    if divisor is not None:
        ref["divisor"] = divisor
    if container is not None:
        ref["containerName"] = container
    return {"name": "R", "valueFrom": {"resourceFieldRef": ref}}


@pytest.mark.parametrize(
    ("res", "divisor", "container", "expected"),
    [
        ("requests.cpu", None, None, "1"),  # 250m rounded up to whole cores
        ("requests.cpu", "1m", None, "250"),
        ("limits.cpu", None, None, "2"),  # 1.5 -> 2 (ceiling)
        ("limits.cpu", "1m", None, "1500"),
        ("limits.cpu", "100m", None, "15"),
        ("requests.memory", None, None, str(64 * 2**20)),
        ("requests.memory", "1Mi", None, "64"),
        ("limits.memory", "1Mi", None, "128"),
        ("limits.memory", "1M", None, "135"),  # 134.2 MB -> 135
        ("limits.memory", "1Gi", None, "1"),
        ("requests.ephemeral-storage", "1Gi", None, "1"),
        ("limits.ephemeral-storage", "1Gi", None, "100"),  # node allocatable
        ("limits.cpu", None, "bare", "8"),  # no limit: node allocatable
        ("limits.memory", "1Gi", "bare", "16"),
        ("requests.cpu", None, "bare", "0"),  # no request, no limit
        ("requests.cpu", "1m", "side", "2000"),  # request defaults to the limit
        ("requests.memory", "1Mi", "side", "1024"),
        ("limits.cpu", "0", None, "2"),  # divisor 0 treated as 1
    ],
)
def test_resource_field_ref(res: str, divisor: str | None, container: str | None, expected: str) -> None:
    assert env_for(main_with(env=[resource(res, divisor, container)]))["R"] == expected


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (resource("limits.gpu"), "unsupported container resource"),
        (resource("cpu"), "unsupported container resource"),
        (resource("limits.cpu", container="nope"), "unknown container"),
        (resource("limits.cpu", divisor="bogus"), "invalid quantity"),
    ],
)
def test_resource_field_ref_errors(ref: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerConfigError, match=message):
        env_for(main_with(env=[ref]))


def test_resource_field_ref_hugepages() -> None:
    c = main_with(
        resources={"limits": {"hugepages-2Mi": "4Mi"}}, env=[resource("limits.hugepages-2Mi", "1Mi")]
    )
    assert env_for(c)["R"] == "4"


def cm_key(name: str, key: str, optional: bool | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "key": key}
    if optional is not None:
        ref["optional"] = optional
    return {"name": "C", "valueFrom": {"configMapKeyRef": ref}}


def secret_key(name: str, key: str, optional: bool | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "key": key}
    if optional is not None:
        ref["optional"] = optional
    return {"name": "S", "valueFrom": {"secretKeyRef": ref}}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (cm_key("cfg", "MODE"), {"C": "fast"}),
        (cm_key("cfg", "NOPE", optional=True), {}),
        (cm_key("missing", "MODE", optional=True), {}),
        (secret_key("creds", "user"), {"S": "alice"}),
        (secret_key("creds", "NOPE", optional=True), {}),
        (secret_key("missing", "x", optional=True), {}),
    ],
)
def test_key_refs(entry: dict[str, Any], expected: dict[str, str]) -> None:
    assert env_for(main_with(env=[entry])) == expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (cm_key("missing", "MODE"), 'configmap "missing" not found'),
        (cm_key("missing", "MODE", optional=False), 'configmap "missing" not found'),
        (cm_key("cfg", "NOPE"), "couldn't find key NOPE in ConfigMap science/cfg"),
        (cm_key("other", "BIN"), "couldn't find key BIN in ConfigMap science/other"),  # binaryData unused
        (secret_key("missing", "x"), 'secret "missing" not found'),
        (secret_key("creds", "NOPE"), "couldn't find key NOPE in Secret science/creds"),
        (secret_key("broken", "k"), "not valid base64"),
        ({"name": "Z", "valueFrom": {"weird": {}}}, "unsupported valueFrom"),
    ],
)
def test_key_ref_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerConfigError) as err:
        env_for(main_with(env=[entry]))
    assert message in str(err.value)
    assert err.value.message == str(err.value)
    assert err.value.reason == "CreateContainerConfigError"


def test_secret_non_utf8_value_survives() -> None:
    secrets = {"bin": {"data": {"k": base64.b64encode(b"\xff\xfe").decode()}}}
    value = env_for(main_with(env=[secret_key("bin", "k")]), secrets=secrets)["S"]
    assert value.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_env_values_and_order() -> None:
    c = main_with(
        env=[
            {"name": "A", "value": "one"},
            {"name": "B", "value": "$(A)-two"},
            {"name": "C", "value": "$(D)"},  # D defined later: left as written
            {"name": "D", "value": "four"},
            {"name": "E", "value": "$$(A)"},
            {"name": "A", "value": "$(A)+again"},  # redefinition sees the earlier value
            {"name": "EMPTY"},
            {"name": "EMPTY2", "value": ""},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "F", "value": "$(POD).$(MODE)"},
        ],
        envFrom=[{"configMapRef": {"name": "other"}}],
    )
    assert env_for(c) == {
        "MODE": "slow",
        "A": "one+again",
        "B": "one-two",
        "C": "$(D)",
        "D": "four",
        "E": "$(A)",
        "EMPTY": "",
        "EMPTY2": "",
        "POD": "web-1",
        "F": "web-1.slow",
    }


def test_value_wins_over_value_from_only_when_non_empty() -> None:
    c = main_with(env=[{"name": "V", "value": "", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}])
    assert env_for(c) == {"V": "1234-abcd"}


def test_env_from() -> None:
    skipped: list[str] = []
    c = main_with(
        envFrom=[
            {"configMapRef": {"name": "cfg"}},
            {"configMapRef": {"name": "other"}, "prefix": "O_"},
            {"secretRef": {"name": "creds"}, "prefix": "DB_"},
            {"configMapRef": {"name": "absent", "optional": True}},
            {"secretRef": {"name": "absent", "optional": True}},
            {"configMapRef": {"name": "other"}},  # later source overrides MODE
            {},  # neither ref: ignored
        ],
        env=[{"name": "MODE", "value": "env-wins-$(MODE)"}],
    )
    env = env_for(c, on_skipped=skipped.append)
    assert env == {
        "MODE": "env-wins-slow",
        "LEVEL": "3",
        "bad key": "x",  # relaxed rule: printable ASCII without '=' is a valid name
        "O_MODE": "slow",
        "DB_user": "alice",
        "DB_pass": "s3cret",
    }
    assert len(skipped) == 1
    assert "Keys [, a=b] from the EnvFrom configMap science/cfg were skipped" in skipped[0]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"configMapRef": {"name": "absent"}}, 'configmap "absent" not found'),
        ({"secretRef": {"name": "absent"}}, 'secret "absent" not found'),
        ({"secretRef": {"name": "broken"}}, "not valid base64"),
    ],
)
def test_env_from_errors(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerConfigError, match=message):
        env_for(main_with(envFrom=[source]))


def test_env_from_skips_without_callback() -> None:
    assert "a=b" not in env_for(main_with(envFrom=[{"configMapRef": {"name": "cfg"}}]))


def test_secret_string_data_is_honoured() -> None:
    secrets = {"s": {"data": {"a": b64("1")}, "stringData": {"b": "2"}}}
    assert env_for(main_with(envFrom=[{"secretRef": {"name": "s"}}]), secrets=secrets) == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("A", True),
        ("a.b-c_d", True),
        ("1ABC", True),
        ("with space", True),
        ("", False),
        ("a=b", False),
        ("tab\tx", False),
        ("é", False),
    ],
)
def test_is_env_var_name(name: str, valid: bool) -> None:
    assert is_env_var_name(name) is valid


# ------------------------------------------------------------------------------------------------
# rewrite_paths

MOUNTS = {
    "/stress": Path("/w/ns/p/containers/c/stress"),
    "/stress/data": Path("/w/ns/p/containers/c/stress/data"),
    "/etc/app/": Path("/w/ns/p/containers/c/etc/app"),
    "/tmp": Path("/w/ns/p/containers/c/tmp"),
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/stress/stress.sh", "/w/ns/p/containers/c/stress/stress.sh"),
        ("/stress", "/w/ns/p/containers/c/stress"),
        ("/stress/", "/w/ns/p/containers/c/stress/"),
        ("--cfg=/stress/a", "--cfg=/w/ns/p/containers/c/stress/a"),
        ("/stress/data/x.bin", "/w/ns/p/containers/c/stress/data/x.bin"),
        ("/stress/datafile", "/w/ns/p/containers/c/stress/datafile"),
        ("/stressful", "/stressful"),
        ("/stress.sh", "/stress.sh"),
        ("/stress-test", "/stress-test"),
        ("/stress_2", "/stress_2"),
        ("/data/stress", "/data/stress"),
        ("~/stress", "~/stress"),
        ("./stress", "./stress"),
        ("$HOME/stress", "$HOME/stress"),
        ("stress", "stress"),
        ("//stress", "//stress"),
        ("a:/stress:b", "a:/w/ns/p/containers/c/stress:b"),
        ("cat /stress/a /stress/b", "cat /w/ns/p/containers/c/stress/a /w/ns/p/containers/c/stress/b"),
        ('"/stress"', '"/w/ns/p/containers/c/stress"'),
        ("'/stress/x'", "'/w/ns/p/containers/c/stress/x'"),
        ("(/stress)", "(/w/ns/p/containers/c/stress)"),
        ("/stress,/tmp", "/w/ns/p/containers/c/stress,/w/ns/p/containers/c/tmp"),
        ("/etc/app/conf.yaml", "/w/ns/p/containers/c/etc/app/conf.yaml"),
        ("/etc/apple", "/etc/apple"),
        ("/etc", "/etc"),
        ("/tmp/x", "/w/ns/p/containers/c/tmp/x"),
        # idempotent: an already materialised path is not rewritten again
        ("/w/ns/p/containers/c/stress/a", "/w/ns/p/containers/c/stress/a"),
        ("", ""),
        ("no slashes", "no slashes"),
    ],
)
def test_rewrite_paths(text: str, expected: str) -> None:
    assert rewrite_paths(text, MOUNTS) == expected


def test_rewrite_paths_workdir_under_a_mount_path_is_not_rewritten_twice() -> None:
    mounts = {"/tmp": Path("/tmp/jrm/ns/p/containers/c/tmp")}
    once = rewrite_paths("/tmp/x", mounts)
    assert once == "/tmp/jrm/ns/p/containers/c/tmp/x"
    assert rewrite_paths(once, mounts) == once


def test_rewrite_paths_ignores_root_and_no_mounts() -> None:
    assert rewrite_paths("/x", {"/": Path("/w")}) == "/x"
    assert rewrite_paths("/x", {}) == "/x"


def test_rewrite_env() -> None:
    env = {"CFG": "/stress/cfg", "OTHER": "/stressful", "LIST": "/tmp:/stress"}
    assert rewrite_env(env, MOUNTS) == {
        "CFG": "/w/ns/p/containers/c/stress/cfg",
        "OTHER": "/stressful",
        "LIST": "/w/ns/p/containers/c/tmp:/w/ns/p/containers/c/stress",
    }


# ------------------------------------------------------------------------------------------------
# build_argv

PAPER_POD: dict[str, Any] = {
    "metadata": {"name": "direct-stress", "namespace": "default"},
    "spec": {
        "containers": [
            {
                "name": "direct-stress",
                "image": "direct-stress",
                "command": ["bash", "/stress/stress.sh"],
                "args": ["300", "2"],
                "volumeMounts": [{"name": "direct-stress", "mountPath": "/stress"}],
            }
        ],
        "volumes": [{"name": "direct-stress", "configMap": {"name": "direct-stress"}}],
    },
}


def test_build_argv_paper_example() -> None:
    cdir = Path("/w/default/direct-stress/containers/direct-stress")
    mounts = {"/stress": cdir / "stress"}
    c = PAPER_POD["spec"]["containers"][0]
    assert build_argv(PAPER_POD, c, {}, mounts) == ["bash", f"{cdir}/stress/stress.sh", "300", "2"]


def test_build_argv_expands_then_rewrites() -> None:
    c = {
        "name": "c",
        "image": "x",
        "command": ["/stress/run", "$(MODE)"],
        "args": ["--in=$(IN)", "$$(LIT)", "$(UNSET)", "$HOME"],
    }
    env = {"MODE": "fast", "IN": "/stress/in.txt"}
    mounts = {"/stress": Path("/tmp/jrm/ns/p/containers/c/stress")}
    assert build_argv({}, c, env, mounts) == [
        "/tmp/jrm/ns/p/containers/c/stress/run",
        "fast",
        "--in=/tmp/jrm/ns/p/containers/c/stress/in.txt",
        "$(LIT)",
        "$(UNSET)",
        "$HOME",
    ]


def test_build_argv_with_rewritten_env_is_still_correct() -> None:
    mounts = {"/tmp": Path("/tmp/jrm/ns/p/containers/c/tmp")}
    env = rewrite_env({"OUT": "/tmp/out"}, mounts)
    c = {"name": "c", "image": "x", "command": ["echo", "$(OUT)"]}
    assert build_argv({}, c, env, mounts) == ["echo", "/tmp/jrm/ns/p/containers/c/tmp/out"]


def _script_container(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "job",
        "image": "scripts",
        "args": ["a", "$(X)"],
        "volumeMounts": [{"name": "scripts", "mountPath": "/opt/scripts"}],
    }
    base.update(fields)
    return base


def test_build_argv_convention_single_file(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("echo\n")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "subdir").mkdir()
    argv = build_argv({}, _script_container(), {"X": "y"}, {"/opt/scripts": tmp_path})
    assert argv == ["bash", str(tmp_path / "run.sh"), "a", "y"]


def test_build_argv_convention_prefers_image_sh(tmp_path: Path) -> None:
    (tmp_path / "scripts.sh").write_text("")
    (tmp_path / "helper.sh").write_text("")
    argv = build_argv({}, _script_container(args=None), {}, {"/opt/scripts/": tmp_path})
    assert argv == ["bash", str(tmp_path / "scripts.sh")]


def test_build_argv_convention_subpath_file(tmp_path: Path) -> None:
    script = tmp_path / "one.sh"
    script.write_text("")
    c = _script_container(
        args=[], volumeMounts=[{"name": "scripts", "mountPath": "/run.sh", "subPath": "one.sh"}]
    )
    assert build_argv({}, c, {}, {"/run.sh": script}) == ["bash", str(script)]


def test_build_argv_convention_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "a.sh").write_text("")
    (tmp_path / "b.sh").write_text("")
    with pytest.raises(ContainerConfigError, match=r"holds a\.sh, b\.sh; expected exactly one file"):
        build_argv({}, _script_container(), {}, {"/opt/scripts": tmp_path})


def test_build_argv_convention_empty_volume(tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError, match="holds no files"):
        build_argv({}, _script_container(), {}, {"/opt/scripts": tmp_path})


def test_build_argv_convention_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError, match="cannot be read"):
        build_argv({}, _script_container(), {}, {"/opt/scripts": tmp_path / "missing"})


def test_build_argv_no_command_no_volume() -> None:
    c = {"name": "job", "image": "busybox", "args": ["x"]}
    with pytest.raises(ContainerConfigError) as err:
        build_argv({}, c, {}, {})
    assert "container job has no command and no volume named like its image 'busybox'" in str(err.value)


def test_build_argv_convention_mount_not_materialised() -> None:
    with pytest.raises(ContainerConfigError, match="not materialised"):
        build_argv({}, _script_container(), {}, {})


# ------------------------------------------------------------------------------------------------
# working_dir


def test_working_dir(tmp_path: Path) -> None:
    cdir = tmp_path / "containers" / "c"
    mounts = {"/data": cdir / "data"}
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    assert working_dir({}, cdir, mounts) == cdir
    assert working_dir({"workingDir": ""}, cdir, mounts) == cdir
    assert working_dir({"workingDir": "/data"}, cdir, mounts) == cdir / "data"
    assert working_dir({"workingDir": "/data/sub/"}, cdir, mounts) == cdir / "data" / "sub"
    assert working_dir({"workingDir": str(host_dir)}, cdir, mounts) == host_dir
    assert working_dir({"workingDir": "/nonexistent/app"}, cdir, mounts) == cdir / "nonexistent" / "app"
    assert working_dir({"workingDir": "/nonexistent/../app"}, cdir, mounts) == cdir / "app"
    assert working_dir({"workingDir": "rel/dir"}, cdir, mounts) == cdir / "rel" / "dir"
    assert working_dir({"workingDir": "rel/.."}, cdir, mounts) == cdir


def test_working_dir_relative_escape(tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError, match="leaves the container directory"):
        working_dir({"workingDir": "../../x"}, tmp_path / "c", {})
