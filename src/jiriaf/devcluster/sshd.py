"""A real OpenSSH server on 127.0.0.1 with throw-away keys, for SSH tunnels in tests and the demo.

:class:`LocalSshd` creates a host key and a user key in its directory, authorises only that user
key for the current user, runs ``sshd -D`` on a free port of 127.0.0.1 (no password, no PAM, TCP
forwarding allowed, remote forwards bound to loopback only) and stops it by pid.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncssh
import psutil

from jiriaf.devcluster.cluster import free_port
from jiriaf.devcluster.slurm import find_daemon
from jiriaf.errors import UserError

DEBIAN_PACKAGES = ("openssh-server",)
READY_TIMEOUT = 30.0
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; needed when it starts as root


def _write_key(path: Path) -> str:
    """Write a new ed25519 private key (0600) and its ``.pub``; return the public key line."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    public = key.export_public_key().decode().strip()
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return public


class LocalSshd:
    """An ``sshd`` owned by this object, listening on ``127.0.0.1:<port>``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory.absolute()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = getpass.getuser()
        self.host_key = self.directory / "ssh_host_ed25519_key"
        self.client_key = self.directory / "id_ed25519"
        self.known_hosts = self.directory / "known_hosts"
        self.config = self.directory / "sshd_config"
        self.log = self.directory / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalSshd:
        """Write keys and config, start sshd and wait until it accepts connections."""
        binary = find_daemon("sshd")
        if binary is None:
            raise UserError("sshd is not installed; install the Debian package openssh-server")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        host_public = _write_key(self.host_key)
        user_public = _write_key(self.client_key)
        authorized = self.directory / "authorized_keys"
        authorized.write_text(user_public + "\n")
        authorized.chmod(0o600)
        # the host key as a client must see it: "[host]:port keytype base64"
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_public}\n")
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    f"AllowUsers {self.user}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "GatewayPorts no",
                    "X11Forwarding no",
                    "PermitTTY no",
                    "ClientAliveInterval 5",
                    "ClientAliveCountMax 3",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [binary, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"sshd exited with {self.proc.returncode}; log: {self.log}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                return self
            time.sleep(0.1)
        self.stop()
        raise UserError(f"sshd did not accept connections within {READY_TIMEOUT:.0f}s; log: {self.log}")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("sshd is not started")
        return self.proc.pid

    def session_pids(self) -> list[int]:
        """Pids of the per-connection sshd processes (children of the listener)."""
        try:
            return [p.pid for p in psutil.Process(self.pid).children()]
        except psutil.Error:
            return []

    def stop(self, grace: float = 5.0) -> None:
        """Stop sshd and its session processes by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        sessions = self.session_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def __enter__(self) -> LocalSshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
