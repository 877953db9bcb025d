"""Build the upstream control-plane binaries once, from the Go module proxy, and cache them.

Kubernetes publishes every staging module (k8s.io/api, k8s.io/client-go, ...) with a ``v0.Y.Z`` tag
matching ``v1.Y.Z``, but ``k8s.io/kubernetes`` itself maps them with local ``replace`` directives,
so ``go install`` refuses it. A small wrapper module that requires ``k8s.io/kubernetes`` and
replaces each staging module by its published tag builds the real binaries. etcd's server module
has the same problem and gets the same kind of wrapper. Binaries are cached outside the repository,
under the user's cache directory, keyed by version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jiriaf.errors import UserError

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
# metrics-server v0.8.x is not served by the module proxy (v0.8.1: 403, v0.8.0: no checksum);
# v0.9.0 is the release that is, and it builds with Go >= 1.26.4.
METRICS_SERVER_VERSION = "v0.9.0"
KWOK_VERSION = "v0.7.0"
# Prometheus publishes its Go module as v0.3XX.Y for release v3.XX.Y; this is Prometheus v3.5.0 (LTS).
# Debian's package is built without Kubernetes service discovery, so this build (with only that
# discovery compiled in) is what runs the Kubernetes-discovery configuration in the tests.
PROMETHEUS_VERSION = "v0.305.0"

ProgressFn = Callable[[str], None]


def cache_root() -> Path:
    """Where jiriaf keeps built binaries: ``$JIRIAF_CACHE_DIR`` or ``$XDG_CACHE_HOME/jiriaf``."""
    explicit = os.environ.get("JIRIAF_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jiriaf"


@dataclass(frozen=True)
class BuildUnit:
    """One wrapper module that builds one or more binaries of one upstream version."""

    name: str
    module: str
    version: str
    packages: dict[str, str]  # binary name -> Go package path
    replace_staging: bool = False
    ldflags: str = "-s -w"
    go_directive: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    tags: str = ""  # Go build tags

    @property
    def directory(self) -> Path:
        return cache_root() / "controlplane" / f"{self.name}-{self.version}"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def is_built(self) -> bool:
        return (self.directory / ".complete").exists() and all(self.binary(b).exists() for b in self.packages)


def _k8s_ldflags(version: str) -> str:
    minor = version.split(".")[1]
    return (
        f"-s -w -X k8s.io/component-base/version.gitVersion={version} "
        f"-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor={minor} "
        f"-X k8s.io/component-base/version.gitTreeState=clean"
    )


UNITS: dict[str, BuildUnit] = {
    "etcd": BuildUnit(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        version=ETCD_VERSION,
        packages={"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    "kubernetes": BuildUnit(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=KUBERNETES_VERSION,
        packages={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
        replace_staging=True,
        ldflags=_k8s_ldflags(KUBERNETES_VERSION),
    ),
    "metrics-server": BuildUnit(
        name="metrics-server",
        module="sigs.k8s.io/metrics-server",
        version=METRICS_SERVER_VERSION,
        packages={"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
    ),
    "kwok": BuildUnit(
        name="kwok",
        module="sigs.k8s.io/kwok",
        version=KWOK_VERSION,
        packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ),
    "prometheus": BuildUnit(
        name="prometheus",
        module="github.com/prometheus/prometheus",
        version=PROMETHEUS_VERSION,
        packages={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
        # every service discovery but Kubernetes' left out (its plugins' build tags), so the build
        # compiles no cloud SDKs; the web UI is not embedded (the HTTP API is what jiriaf uses)
        tags="remove_all_sd,enable_kubernetes_sd",
        ldflags=(
            "-s -w -X github.com/prometheus/common/version.Version=3.5.0 "
            "-X github.com/prometheus/common/version.Branch=jiriaf-build"
        ),
    ),
}

BINARY_UNIT = {binary: unit for unit in UNITS.values() for binary in unit.packages}


def binary_path(name: str) -> Path:
    """The cached path of a control-plane binary (it may not be built yet)."""
    return BINARY_UNIT[name].binary(name)


def kubectl() -> str:
    """kubectl of the control plane's own version when built, else the one on PATH."""
    built = binary_path("kubectl")
    if built.exists():
        return str(built)
    found = shutil.which("kubectl")
    if found is None:
        raise UserError("kubectl not found: run 'jiriaf dev build' or install kubectl")
    return found


def missing_binaries(names: Sequence[str] | None = None) -> list[str]:
    """Names of binaries not built yet."""
    wanted = names if names is not None else list(BINARY_UNIT)
    return [n for n in wanted if not BINARY_UNIT[n].is_built()]


class _Step:
    """Runs the commands of one build unit, logging everything to one file."""

    def __init__(self, unit: BuildUnit, log: Path, progress: ProgressFn) -> None:
        self.unit = unit
        self.log = log
        self.progress = progress
        self.env = {
            **os.environ,
            "GOFLAGS": "-mod=mod",
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "auto"),
            **unit.extra_env,
        }

    def run(self, title: str, argv: list[str], cwd: Path) -> str:
        self.progress(f"{self.unit.name}: {title}")
        with self.log.open("a") as fh:
            fh.write(f"\n$ {' '.join(argv)}\n")
            fh.flush()
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            )
            fh.write(proc.stdout)
        if proc.returncode != 0:
            raise UserError(
                f"building {self.unit.name} {self.unit.version}: step '{title}' failed "
                f"(exit {proc.returncode}); log: {self.log}"
            )
        return proc.stdout


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise UserError(
            "the Go toolchain ('go') is not on PATH; install Go >= 1.24 to build the "
            "local control plane (.ci/run installs it)"
        )
    return go


def _staging_modules(go_mod_text: str) -> list[str]:
    """Staging modules are the ``k8s.io/*`` requirements pinned at the placeholder ``v0.0.0``."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+v0\.0\.0\s*$", go_mod_text, re.M)))


def build_unit(unit: BuildUnit, progress: ProgressFn) -> None:
    """Build one unit into its cache directory (a partial earlier build is redone)."""
    go = _go()
    work = unit.directory / "wrapper"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    unit.bin_dir.mkdir(parents=True, exist_ok=True)
    log = unit.directory / "build.log"
    log.write_text(f"# build of {unit.name} {unit.version}\n")
    step = _Step(unit, log, progress)
    step.run("init wrapper module", [go, "mod", "init", f"jiriaf.local/build/{unit.name}"], work)
    if unit.replace_staging:
        out = step.run(
            "download module", [go, "mod", "download", "-json", f"{unit.module}@{unit.version}"], work
        )
        info = json.loads(out[out.index("{") :])
        gomod_text = Path(info["GoMod"]).read_text()
        go_line = re.search(r"^go\s+(\S+)", gomod_text, re.M)
        if go_line:
            step.run("set go version", [go, "mod", "edit", f"-go={go_line.group(1)}"], work)
        staging_version = "v0." + unit.version.split(".", 1)[1]
        replaces = [f"-replace={m}={m}@{staging_version}" for m in _staging_modules(gomod_text)]
        if not replaces:
            raise UserError(f"building {unit.name}: found no staging modules in {info['GoMod']}")
        step.run(f"pin {len(replaces)} staging modules", [go, "mod", "edit", *replaces], work)
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in unit.packages.values())
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    step.run("resolve dependencies", [go, "get", f"{unit.module}@{unit.version}"], work)
    step.run("tidy", [go, "mod", "tidy"], work)
    tags = ["-tags", unit.tags] if unit.tags else []
    for binary, pkg in unit.packages.items():
        step.run(
            f"compile {binary} (takes minutes the first time)",
            [go, "build", "-trimpath", *tags, "-ldflags", unit.ldflags, "-o", str(unit.binary(binary)), pkg],
            work,
        )
    (unit.directory / ".complete").write_text(unit.version + "\n")


def ensure_built(names: Sequence[str] | None = None, progress: ProgressFn | None = None) -> dict[str, Path]:
    """Build every missing binary among ``names`` (default: all) and return name -> path."""
    report = progress or (lambda _msg: None)
    wanted = list(names) if names is not None else list(BINARY_UNIT)
    units = {BINARY_UNIT[n].name: BINARY_UNIT[n] for n in wanted}
    for unit in units.values():
        if not unit.is_built():
            build_unit(unit, report)
    return {n: binary_path(n) for n in wanted}
