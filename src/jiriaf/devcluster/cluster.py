"""A real local Kubernetes control plane: etcd, kube-apiserver, kube-scheduler,
kube-controller-manager and metrics-server, all on 127.0.0.1, started as processes we own.

The same :class:`LocalCluster` serves ``jiriaf dev cluster up|down|status|env`` and the pytest
fixture of the integration and system tiers. Everything it starts is recorded (pid and process
start time) in ``state.json`` of its directory, and ``down`` stops exactly those processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from jiriaf.datadirs import data_directory
from jiriaf.devcluster import build, pki
from jiriaf.devcluster.kubeconfig import write_kubeconfig
from jiriaf.errors import UserError

ProgressFn = Callable[[str], None]

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "metrics-server")
SERVICE_CIDR = "10.96.0.0/16"
METRICS_SERVICE_HOST = "metrics-server.kube-system.svc"
READY_TIMEOUT = 180.0


def default_directory() -> Path:
    """``$JIRIAF_DEVCLUSTER_DIR`` or ``$XDG_DATA_HOME/jiriaf/devcluster``."""
    return data_directory("JIRIAF_DEVCLUSTER_DIR", "devcluster")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class ProcessRecord:
    """A process the cluster started: enough to recognise it again and stop it by pid."""

    component: str
    pid: int
    create_time: float
    binary: str
    log: str

    def alive(self) -> bool:
        """True while this very process (same pid and start time, not a zombie) runs."""
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    @classmethod
    def spawn(
        cls, component: str, argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> ProcessRecord:
        """Start ``argv`` in its own session, output appended to ``log``; record it by pid.

        The child is not waited for by this process: it is stopped later by its recorded pid.
        """
        with log.open("ab") as fh:
            fh.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=cwd,
                env=env,
            )
        proc.returncode = 0  # recorded by pid; Popen must not warn that it was never waited for
        return cls(component, proc.pid, psutil.Process(proc.pid).create_time(), argv[0], str(log))


@dataclass
class ClusterState:
    """What ``state.json`` holds."""

    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls(
                ports={k: int(v) for k, v in raw.get("ports", {}).items()},
                processes={k: ProcessRecord(**v) for k, v in raw.get("processes", {}).items()},
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(
                f"cluster state file {path} is damaged ({exc}); remove it and run up again"
            ) from exc

    def save(self, path: Path) -> None:
        data = {"ports": self.ports, "processes": {k: vars(v) for k, v in self.processes.items()}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)


@dataclass(frozen=True)
class ComponentStatus:
    """One row of ``jiriaf dev cluster status``."""

    component: str
    pid: int | None
    running: bool
    endpoint: str
    log: Path


class LocalCluster:
    """A local control plane rooted at ``directory`` (certificates, data, logs, kubeconfigs, state)."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        extra_args: Mapping[str, Sequence[str]] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.directory = (directory or default_directory()).absolute()
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self.progress: ProgressFn = progress or (lambda _m: None)
        self.pki_dir = self.directory / "pki"
        self.log_dir = self.directory / "logs"
        self.state_path = self.directory / "state.json"

    # ------------------------------------------------------------------ paths and endpoints
    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters); only for the owner of the cluster."""
        return self.directory / "admin.kubeconfig"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    def state(self) -> ClusterState:
        return ClusterState.load(self.state_path)

    def server_url(self) -> str:
        port = self.state().ports.get("kube-apiserver")
        if port is None:
            raise UserError(f"no local cluster in {self.directory}; run 'jiriaf dev cluster up'")
        return f"https://127.0.0.1:{port}"

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    # ------------------------------------------------------------------ status
    def status(self) -> list[ComponentStatus]:
        state = self.state()
        rows = []
        for comp in COMPONENTS:
            rec = state.processes.get(comp)
            port = state.ports.get(comp)
            scheme = "http" if comp == "etcd" else "https"
            rows.append(
                ComponentStatus(
                    component=comp,
                    pid=rec.pid if rec else None,
                    running=bool(rec and rec.alive()),
                    endpoint=f"{scheme}://127.0.0.1:{port}" if port else "-",
                    log=self.log_path(comp),
                )
            )
        return rows

    def is_running(self) -> bool:
        return all(row.running for row in self.status())

    # ------------------------------------------------------------------ up
    def up(self) -> Path:
        """Start every component that is not running, wait until each is ready; return the kubeconfig.

        Running ``up`` on a running cluster changes nothing. If a component fails to start, the
        components this call started are stopped again and the error names the component and its log.
        """
        binaries = build.ensure_built(list(COMPONENTS), progress=self.progress)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(exist_ok=True)
        state = self.state()
        if all(state.processes.get(c) and state.processes[c].alive() for c in COMPONENTS):
            self.progress("cluster already running")
            return self.kubeconfig
        # Partially running: stop the survivors, so every component starts with the same ports and certs.
        if any(rec.alive() for rec in state.processes.values()):
            self.progress("cluster partially running: restarting it")
            self.down()
            state = self.state()
        self._assign_ports(state)
        creds = self._credentials(state)
        started: list[str] = []
        try:
            for comp in COMPONENTS:
                argv = [str(binaries[comp]), *self._args(comp, state, creds), *self.extra_args.get(comp, [])]
                self.progress(f"starting {comp}")
                state.processes[comp] = self._spawn(comp, argv)
                started.append(comp)
                state.save(self.state_path)
                self._wait_ready(comp, state, creds)
                if comp == "kube-apiserver":
                    self._bootstrap_objects()
        except BaseException:
            self._stop(state, started)
            state.save(self.state_path)
            raise
        self.progress(f"cluster ready; kubeconfig: {self.kubeconfig}")
        return self.kubeconfig

    def _assign_ports(self, state: ClusterState) -> None:
        names = [
            "etcd",
            "etcd-peer",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "metrics-server",
        ]
        taken = set()
        for name in names:
            port = state.ports.get(name)
            if port is None or port in taken or _port_in_use(port):
                port = free_port()
                while port in taken:
                    port = free_port()
                state.ports[name] = port
            taken.add(port)
        state.save(self.state_path)

    def _credentials(self, state: ClusterState) -> dict[str, Path]:
        d = self.pki_dir
        d.mkdir(exist_ok=True, mode=0o700)
        ca = pki.ensure_ca(d, "ca", "jiriaf-dev-ca")
        proxy_ca = pki.ensure_ca(d, "front-proxy-ca", "jiriaf-dev-front-proxy-ca")
        serving = pki.issue_cert(
            ca,
            d,
            "apiserver",
            "kube-apiserver",
            server=True,
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ),
        )
        admin = pki.issue_cert(ca, d, "admin", "jiriaf-admin", orgs=("system:masters",), client=True)
        kubelet_client = pki.issue_cert(
            ca,
            d,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            orgs=("system:masters",),
            client=True,
        )
        proxy_client = pki.issue_cert(proxy_ca, d, "front-proxy-client", "front-proxy-client", client=True)
        kcm = pki.issue_cert(ca, d, "controller-manager", "system:kube-controller-manager", client=True)
        sched = pki.issue_cert(ca, d, "scheduler", "system:kube-scheduler", client=True)
        ms_client = pki.issue_cert(ca, d, "metrics-server-client", "system:metrics-server", client=True)
        ms_serving = pki.issue_cert(
            ca,
            d,
            "metrics-server",
            "metrics-server",
            server=True,
            hosts=("127.0.0.1", "localhost", METRICS_SERVICE_HOST),
        )
        sa_key, sa_pub = pki.ensure_service_account_keys(d)
        server = f"https://127.0.0.1:{state.ports['kube-apiserver']}"
        write_kubeconfig(self.kubeconfig, server=server, ca=ca.cert, client=admin)
        kubeconfigs = {
            name: write_kubeconfig(
                self.directory / f"{name}.kubeconfig", server=server, ca=ca.cert, client=pair, user=name
            )
            for name, pair in (
                ("controller-manager", kcm),
                ("scheduler", sched),
                ("metrics-server", ms_client),
            )
        }
        return {
            "ca.crt": ca.cert,
            "ca.key": ca.key,
            "serving.crt": serving.cert,
            "serving.key": serving.key,
            "kubelet-client.crt": kubelet_client.cert,
            "kubelet-client.key": kubelet_client.key,
            "proxy-ca.crt": proxy_ca.cert,
            "proxy-client.crt": proxy_client.cert,
            "proxy-client.key": proxy_client.key,
            "sa.key": sa_key,
            "sa.pub": sa_pub,
            "admin.crt": admin.cert,
            "admin.key": admin.key,
            "ms-serving.crt": ms_serving.cert,
            "ms-serving.key": ms_serving.key,
            "kcm.kubeconfig": kubeconfigs["controller-manager"],
            "scheduler.kubeconfig": kubeconfigs["scheduler"],
            "ms.kubeconfig": kubeconfigs["metrics-server"],
        }

    def _args(self, comp: str, state: ClusterState, c: dict[str, Path]) -> list[str]:
        p = state.ports
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        health_paths = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        if comp == "etcd":
            peer = f"http://127.0.0.1:{p['etcd-peer']}"
            return [
                "--name=jiriaf",
                f"--data-dir={self.directory / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=jiriaf={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]
        if comp == "kube-apiserver":
            server = f"https://127.0.0.1:{p['kube-apiserver']}"
            return [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['kube-apiserver']}",
                f"--tls-cert-file={c['serving.crt']}",
                f"--tls-private-key-file={c['serving.key']}",
                f"--client-ca-file={c['ca.crt']}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={server}",
                f"--service-account-key-file={c['sa.pub']}",
                f"--service-account-signing-key-file={c['sa.key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={c['kubelet-client.crt']}",
                f"--kubelet-client-key={c['kubelet-client.key']}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--requestheader-client-ca-file={c['proxy-ca.crt']}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={c['proxy-client.crt']}",
                f"--proxy-client-key-file={c['proxy-client.key']}",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ]
        if comp == "kube-controller-manager":
            kc = c["kcm.kubeconfig"]
            return [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kube-controller-manager']}",
                health_paths,
                f"--service-account-private-key-file={c['sa.key']}",
                f"--root-ca-file={c['ca.crt']}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={c['ca.crt']}",
                f"--cluster-signing-key-file={c['ca.key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ]
        if comp == "kube-scheduler":
            kc = c["scheduler.kubeconfig"]
            return [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kube-scheduler']}",
                health_paths,
                "--profiling=false",
                "--v=1",
            ]
        if comp == "metrics-server":
            kc = c["ms.kubeconfig"]
            return [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--tls-cert-file={c['ms-serving.crt']}",
                f"--tls-private-key-file={c['ms-serving.key']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['metrics-server']}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--kubelet-use-node-status-port",
                # JRM nodes serve self-signed certificates (they run without access to the cluster CA key).
                "--kubelet-insecure-tls",
                "--metric-resolution=15s",
                health_paths,
            ]
        raise ValueError(comp)

    def _spawn(self, comp: str, argv: list[str]) -> ProcessRecord:
        return ProcessRecord.spawn(comp, argv, self.log_path(comp), self.directory)

    def _probe(self, comp: str, state: ClusterState, creds: dict[str, Path]) -> bool:
        port = state.ports[comp]
        if comp == "etcd":
            url, ctx = f"http://127.0.0.1:{port}/health", None
        else:
            path = {"kube-apiserver": "/readyz", "metrics-server": "/livez"}.get(comp, "/healthz")
            url = f"https://127.0.0.1:{port}{path}"
            ctx = ssl.create_default_context(cafile=str(creds["ca.crt"]))
            if comp == "kube-apiserver":
                ctx.load_cert_chain(str(creds["admin.crt"]), str(creds["admin.key"]))
            else:  # scheduler/controller-manager serve self-signed certificates of their own
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:
                body = resp.read().decode(errors="replace")
                return resp.status == 200 and ("true" in body if comp == "etcd" else True)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _wait_ready(self, comp: str, state: ClusterState, creds: dict[str, Path]) -> None:
        rec = state.processes[comp]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not rec.alive():
                raise UserError(f"{comp} exited during start-up; log: {self.log_path(comp)}")
            if self._probe(comp, state, creds):
                return
            time.sleep(0.3)
        raise UserError(
            f"{comp} did not become ready within {READY_TIMEOUT:.0f}s; log: {self.log_path(comp)}"
        )

    def _bootstrap_objects(self) -> None:
        """RBAC for metrics-server and the APIService that makes ``kubectl top`` work."""
        from jiriaf.devcluster.bootstrap import apply_bootstrap_objects

        self.progress("registering metrics-server APIService and RBAC")
        apply_bootstrap_objects(self.kubeconfig, self.state().ports["metrics-server"], self.ca_cert)

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        """Stop every process this cluster started (by pid), newest first; return their names."""
        state = self.state()
        stopped = self._stop(state, list(state.processes))
        state.save(self.state_path) if self.state_path.exists() else None
        return stopped

    def _stop(self, state: ClusterState, components: Sequence[str], grace: float = 10.0) -> list[str]:
        order = [c for c in reversed(COMPONENTS) if c in components]
        live = [state.processes[c] for c in order if c in state.processes and state.processes[c].alive()]
        for rec in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(r.alive() for r in live):
            _reap(live)
            time.sleep(0.1)
        for rec in live:
            if rec.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)
        _reap(live)
        for c in order:
            state.processes.pop(c, None)
        return [r.component for r in live]


def _reap(records: Sequence[ProcessRecord]) -> None:
    """Collect exit statuses of our own children (when the cluster was started by this process)."""
    for rec in records:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(rec.pid, os.WNOHANG)
