"""The workload programs as local processes on 127.0.0.1: the load generator against the CPU-burning
server, the stream sender into the receiver, their control endpoints, one-line errors and SIGTERM.

Every process is started with ``python -m`` on free loopback ports and stopped by pid at the end;
load runs are bounded by request or event counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jiriaf.devcluster.cluster import free_port
from support import eventually

pytestmark = pytest.mark.unit

Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture()
def start(tmp_path: Path) -> Iterator[Start]:
    """Start ``python -m jiriaf.workloads.<module> args...``; every process is stopped by pid afterwards."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{module}-{len(procs)}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"jiriaf.workloads.{module}", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        procs.append((proc, log))
        return proc

    yield run
    for proc, log in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"[{log.stem}] log {log}:\n{log.read_text()[-2000:]}")


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def get_json(url: str) -> Any:
    return json.loads(get(url))


def post_json(url: str, body: Any) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` (or the sum of its labelled samples)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            total += float(value)
            found = True
    if not found:
        raise KeyError(name)
    return total


def up(url: str) -> bool:
    return get(url) == b"ok\n"


def run_cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"jiriaf.workloads.{module}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


# ---------------------------------------------------------------------------------- http + loadgen


def test_loadgen_against_the_cpu_burning_server(start: Start) -> None:
    port = free_port()
    server = start(
        "httpserver", "--host", "127.0.0.1", "--port", str(port), "--work-ms", "5", "--name", "web-1"
    )
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: up(base + "/healthz"), timeout=60, what="httpserver up")
    assert get(base + "/").decode().startswith("web-1 ")
    out = run_cli("loadgen", base + "/", "--requests", "120", "--concurrency", "4", "--rate", "400", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["requests"] == 120 and summary["answered"] == 120 and summary["errors"] == 0
    assert summary["status_codes"] == {"200": 120}
    assert 0 < summary["p50_s"] <= summary["p90_s"] <= summary["p99_s"] <= summary["max_s"]
    metrics = get(base + "/metrics").decode()
    assert metric(metrics, 'jiriaf_http_requests_total{code="200"}') == 121
    # each request burns at least its CPU time, measured with the thread's CPU clock
    assert metric(metrics, "jiriaf_http_cpu_seconds_total") >= 121 * 0.005
    assert stop(server) == 0


def test_loadgen_text_summary_and_bad_requests(start: Start) -> None:
    port = free_port()
    start("httpserver", "--host", "127.0.0.1", "--port", str(port), "--work-ms", "1", "--max-work-ms", "50")
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: up(base + "/healthz"), timeout=60, what="httpserver up")
    out = run_cli("loadgen", base + "/?ms=500", "-n", "3", "-c", "1")
    assert out.returncode == 0, out.stderr
    assert "Requests:     3 (3 answered, 3 errors)" in out.stdout
    assert "[400]  3 responses" in out.stdout
    for q in ("p50", "p90", "p99", "max"):
        assert q in out.stdout


def test_loadgen_counts_connection_failures() -> None:
    out = run_cli("loadgen", f"http://127.0.0.1:{free_port()}/", "-n", "5", "-c", "1", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["requests"] == 5 and summary["errors"] == 5 and summary["failures"] == {"connect": 5}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://192.0.2.1/", "-n", "1"], "not a loopback address; pass --allow-remote"),
        (["http://127.0.0.1:1/", "-c", "5000"], "concurrency: 5000 is out of range"),
        (["http://127.0.0.1:1/", "-z", "0"], "duration: 0 is out of range"),
        (["ftp://127.0.0.1/"], "not an http:// or https:// URL"),
        ([], "required: url"),
    ],
)
def test_loadgen_bad_input_is_one_line(args: list[str], message: str) -> None:
    out = run_cli("loadgen", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr


def test_server_bad_input_is_one_line() -> None:
    out = run_cli("httpserver", "--work-ms", "fast")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not a number" in out.stderr


def test_busy_port_is_one_line(start: Start) -> None:
    port = free_port()
    start("httpserver", "--host", "127.0.0.1", "--port", str(port))
    eventually(lambda: up(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="httpserver up")
    out = run_cli("httpserver", "--host", "127.0.0.1", "--port", str(port))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


# ---------------------------------------------------------------------------------- stream


def receiver_args(port: int, http_port: int, *extra: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port), *extra]


def test_sender_to_receiver_events_flow_and_are_measured(start: Start, tmp_path: Path) -> None:
    port, http_port, sender_http = free_port(), free_port(), free_port()
    receiver = start(
        "stream.receiver", *receiver_args(port, http_port, "--fixed-service-times"), env={"THREADS": "16"}
    )
    status_url = f"http://127.0.0.1:{http_port}/status"
    eventually(lambda: get_json(status_url)["threads"] == 16, timeout=60, what="receiver up with THREADS=16")
    sender = start(
        "stream.sender",
        "--target", f"127.0.0.1:{port}",
        "--rate", "400",
        "--count", "300",
        "--seed", "1",
        "--http-host", "127.0.0.1",
        "--http-port", str(sender_http),
    )  # fmt: skip
    assert sender.wait(120) == 0
    status = eventually(
        lambda: (s := get_json(status_url))["processed"] == 300 and s, timeout=60, what="300 events processed"
    )
    assert status["arrivals"] == 300 and status["dropped"] == 0 and status["bad_lines"] == 0
    assert status["queue_length"] == 0
    # 400 Hz offered to a 166.7 Hz receiver: the FIFO must have held events, so waits exceed service
    metrics = get(f"http://127.0.0.1:{http_port}/metrics").decode()
    assert metric(metrics, "jiriaf_stream_arrivals_total") == 300
    assert metric(metrics, "jiriaf_stream_processed_total") == 300
    assert metric(metrics, "jiriaf_stream_event_latency_seconds_count") == 300
    assert metric(metrics, "jiriaf_stream_queue_length") == 0
    assert metric(metrics, "jiriaf_stream_threads") == 16
    assert metric(metrics, "jiriaf_stream_service_capacity_hz") == pytest.approx(500 / 3)
    # with fixed service times every event costs 48 ms + 16 x 3 ms: the latency sum is at least 300 x 96 ms
    assert metric(metrics, "jiriaf_stream_event_latency_seconds_sum") >= 300 * 0.096 * 0.999
    assert metric(metrics, "jiriaf_stream_queue_wait_seconds_sum") > 0
    assert stop(receiver) == 0


def test_receiver_threads_switch_at_runtime_through_the_control_endpoint(start: Start) -> None:
    port, http_port = free_port(), free_port()
    start("stream.receiver", *receiver_args(port, http_port, "--threads", "16"))
    base = f"http://127.0.0.1:{http_port}"
    eventually(lambda: get_json(base + "/status")["alive_threads"] == 16, timeout=60, what="16 workers")
    code, body = post_json(base + "/control", {"threads": 32})
    assert code == 200 and json.loads(body)["threads"] == 32
    eventually(lambda: get_json(base + "/status")["alive_threads"] == 32, timeout=30, what="32 workers")
    metrics = get(base + "/metrics").decode()
    assert metric(metrics, "jiriaf_stream_threads") == 32
    assert metric(metrics, "jiriaf_stream_service_capacity_hz") == pytest.approx(2000 / 9)
    code, _ = post_json(base + "/control", {"threads": 16})
    assert code == 200
    eventually(lambda: get_json(base + "/status")["alive_threads"] == 16, timeout=30, what="back to 16")
    for bad, message in [
        ({"threads": "many"}, "threads must be an integer"),
        ({"threads": 99999}, "threads must be an integer"),
        ({"threads": True}, "threads must be an integer"),
        ({"paused": "yes"}, "paused must be true or false"),
        ({"colour": 1}, "unknown field"),
        ([1, 2], "JSON object"),
    ]:
        code, body = post_json(base + "/control", bad)
        assert code == 400 and message in body, (bad, body)
    assert get_json(base + "/status")["threads"] == 16


def test_paused_receiver_queues_and_sender_waits_for_a_late_receiver(start: Start) -> None:
    port, http_port, sender_http = free_port(), free_port(), free_port()
    sender = start(
        "stream.sender",
        "--target", f"127.0.0.1:{port}",
        "--rate", "500",
        "--regular",
        "--count", "50",
        "--http-host", "127.0.0.1",
        "--http-port", str(sender_http),
    )  # fmt: skip
    sender_status = f"http://127.0.0.1:{sender_http}/status"
    eventually(
        lambda: get_json(sender_status)["connected"] is False, timeout=60, what="sender up, unconnected"
    )
    assert get_json(sender_status)["emitted"] == 0  # its clock has not started: nothing dropped
    start("stream.receiver", *receiver_args(port, http_port, "--paused", "--threads", "4"))
    base = f"http://127.0.0.1:{http_port}"
    assert sender.wait(120) == 0
    status = eventually(
        lambda: (s := get_json(base + "/status"))["arrivals"] == 50 and s, timeout=60, what="50 arrivals"
    )
    assert status["processed"] == 0 and status["queue_length"] == 50 and status["paused"] is True
    code, _ = post_json(base + "/control", {"paused": False})
    assert code == 200
    eventually(lambda: get_json(base + "/status")["processed"] == 50, timeout=60, what="50 processed")


def test_sender_rate_changes_at_runtime(start: Start) -> None:
    port, http_port, sender_http = free_port(), free_port(), free_port()
    start("stream.receiver", *receiver_args(port, http_port, "--own-ms", "1", "--contention-ms", "0"))
    eventually(lambda: up(f"http://127.0.0.1:{http_port}/healthz"), timeout=60, what="receiver up")
    start(
        "stream.sender",
        "--target", f"127.0.0.1:{port}",
        "--rate", "0",
        "--http-host", "127.0.0.1",
        "--http-port", str(sender_http),
    )  # fmt: skip
    base = f"http://127.0.0.1:{sender_http}"
    eventually(lambda: get_json(base + "/status")["connected"], timeout=60, what="sender connected")
    assert get_json(base + "/status")["emitted"] == 0  # rate 0: nothing is sent
    code, body = post_json(base + "/control", {"rate": 200})
    assert code == 200 and json.loads(body)["rate_hz"] == 200
    eventually(lambda: get_json(base + "/status")["sent"] >= 50, timeout=60, what="events at the new rate")
    metrics = get(base + "/metrics").decode()
    assert metric(metrics, "jiriaf_stream_sender_rate_hz") == 200
    code, body = post_json(base + "/control", {"schedule": "0:0"})
    assert code == 200 and json.loads(body)["rate_hz"] == 0
    for bad, message in [
        ({"rate": -1}, "between 0"),
        ({"rate": "fast"}, "rate must be a number"),
        ({"schedule": "0:1,0:2"}, "increase"),
        ({"rate": 1, "schedule": "0:1"}, "exactly one"),
        ({}, "exactly one"),
    ]:
        code, body = post_json(base + "/control", bad)
        assert code == 400 and message in body, (bad, body)


@pytest.mark.parametrize(
    ("module", "args", "env", "message"),
    [
        ("stream.receiver", [], {"THREADS": "lots"}, "THREADS='lots' is not an integer"),
        ("stream.receiver", ["--threads", "-1"], {}, "out of range"),
        ("stream.sender", ["--rate", "5"], {}, "one of the arguments --target --service is required"),
        ("stream.sender", ["--target", "nohost"], {}, "has no port"),
        ("stream.sender", ["--target", "127.0.0.1:1", "--schedule", "0:5,x"], {}, "is not TIME:RATE"),
        ("stream.sender", ["--target", "127.0.0.1:1", "--rate", "1", "--schedule", "5"], {}, "not allowed"),
    ],
)
def test_stream_bad_input_is_one_line(
    module: str, args: list[str], env: dict[str, str], message: str
) -> None:
    out = run_cli(module, *args, env=env)
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr
