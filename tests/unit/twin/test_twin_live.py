"""The live twin: simulator and Prometheus sources, JCS and Deployment actuators."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from jiriaf.errors import UserError
from jiriaf.twin import live as lv
from jiriaf.twin.digital_twin import DigitalTwin
from jiriaf.twin.policy import ThresholdPolicy

pytestmark = pytest.mark.unit


class Driver:
    """Drives the sender rate from the test: low, then high, then low again once the twin reacted."""

    def __init__(self) -> None:
        self.lam = 100.0
        self.log: list[tuple[int, float, int, int]] = []

    def rate(self, step: int) -> float:
        return self.lam

    def on_step(self, item: lv.LiveStep) -> None:
        e = item.estimate
        self.log.append((e.step, self.lam, e.threads, item.recommended))
        if e.step == 5:
            self.lam = 166.0  # load rises
        high_steps = sum(1 for _, lam, threads, _ in self.log if lam == 166.0 and threads == 32)
        if self.lam == 166.0 and high_steps >= 5:
            self.lam = 100.0  # load falls after the twin has run 32 threads for a while


async def test_live_twin_on_the_simulator_switches_to_32_and_back() -> None:
    model = lv.queueing_model()
    driver = Driver()
    src = lv.SimulatorSource(driver.rate, seconds_per_step=30.0, threads=16, seed=3)
    twin = DigitalTwin(model, ThresholdPolicy(model))
    steps = await lv.run_live(twin, src, steps=24, actuator=lv.SimulatorActuator(src), emit=driver.on_step)
    switches = [(s.estimate.step, s.recommended) for s in steps if s.applied]
    assert [n for _, n in switches] == [32, 16]
    rise_step = next(step for step, lam, _, _ in driver.log if lam == 166.0)
    fall_step = next(step for step, lam, _, _ in driver.log if step > rise_step and lam == 100.0)
    assert switches[0][0] - rise_step <= 1  # switched on the first or second high-load measurement
    assert switches[1][0] - fall_step <= 1
    assert src.simulator.threads == 16
    assert all(threads == 16 for _, lam, threads, _ in driver.log[: rise_step + 1])


async def test_without_an_actuator_the_enacted_threads_stay() -> None:
    model = lv.queueing_model()
    src = lv.SimulatorSource([166.0] * 4, seconds_per_step=30.0, threads=16, seed=1)
    twin = DigitalTwin(model, ThresholdPolicy(model))
    steps = await lv.run_live(twin, src, steps=4, actuator=None)
    assert steps[-1].recommended == 32
    assert all(s.estimate.threads == 16 and s.applied is None for s in steps)
    assert src.simulator.threads == 16


def test_rate_schedule_parsing() -> None:
    assert lv.parse_schedule("100x2, 166x3,120") == [100.0, 100.0, 166.0, 166.0, 166.0, 120.0]
    for bad in ("", "abc", "100x0", "-5x2"):
        with pytest.raises(UserError):
            lv.parse_schedule(bad)


def test_queueing_model_rejects_saturating_rates() -> None:
    with pytest.raises(UserError, match="saturates"):
        lv.queueing_model(levels=(100.0, 170.0))


async def _serve(handler: Any, path: str, method: str = "GET") -> TestServer:
    app = web.Application()
    app.router.add_route(method, path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_prometheus_source_reads_one_series() -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        seen["query"] = request.query["query"]
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "42.5"]}]},
            }
        )

    server = await _serve(handler, "/api/v1/query")
    try:
        src = lv.PrometheusSource(str(server.make_url("")), "sum(queue_len)")
        assert await src.read(0) == 42.5
        assert seen["query"] == "sum(queue_len)"
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"status": "error", "error": "parse error"}, "parse error"),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, "no series"),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]},
            },
            "2 series",
        ),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "matrix"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1]}]}}, "malformed"),
    ],
)
def test_bad_prometheus_answers_are_user_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        lv.parse_prometheus_value(doc, "q")


def test_prometheus_scalar_result() -> None:
    doc = {"status": "success", "data": {"resultType": "scalar", "result": [1, "3.25"]}}
    assert lv.parse_prometheus_value(doc, "q") == 3.25


async def test_unreachable_prometheus_is_a_user_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    server = await _serve(handler, "/x")
    url = str(server.make_url(""))
    await server.close()  # nothing listens there any more
    with pytest.raises(UserError, match="cannot reach Prometheus"):
        await lv.PrometheusSource(url, "q", timeout=5).read(0)


async def test_jcs_actuator_posts_the_action() -> None:
    got: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        got["path"] = request.path
        got["auth"] = request.headers.get("Authorization")
        got["body"] = await request.json()
        return web.json_response({"accepted": True}, status=202)

    server = await _serve(handler, "/api/v1/workflows/{wf}/actions", method="POST")
    try:
        act = lv.JcsActuator(str(server.make_url("")), "wf-7", "tok", "ns", "receiver", "THREADS")
        msg = await act.apply(32, reason="load up")
    finally:
        await server.close()
    assert got["path"] == "/api/v1/workflows/wf-7/actions"
    assert got["auth"] == "Bearer tok"
    assert got["body"]["action"] == "set-threads" and got["body"]["threads"] == 32
    assert got["body"]["target"] == {"namespace": "ns", "deployment": "receiver", "env": "THREADS"}
    assert "32 threads" in msg


async def test_jcs_refusal_is_a_user_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=403, text="forbidden")

    server = await _serve(handler, "/api/v1/workflows/{wf}/actions", method="POST")
    try:
        with pytest.raises(UserError, match="HTTP 403"):
            await lv.post_jcs_action(str(server.make_url("")), "wf", {"action": "set-threads"})
    finally:
        await server.close()


class FakeKube:
    """Stands in for lightkube.AsyncClient: serves one Deployment and records patches."""

    def __init__(self, env_value: str = "16", fail: bool = False) -> None:
        from lightkube.resources.apps_v1 import Deployment

        self.dep = Deployment.from_dict(
            {
                "metadata": {"name": "receiver", "namespace": "stream"},
                "spec": {
                    "selector": {},
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "sidecar", "image": "s"},
                                {
                                    "name": "recv",
                                    "image": "r",
                                    "env": [{"name": "THREADS", "value": env_value}],
                                },
                            ]
                        }
                    },
                },
            }
        )
        self.fail = fail
        self.patches: list[tuple[Any, ...]] = []

    async def get(self, res: Any, name: str, *, namespace: str | None = None) -> Any:
        assert (name, namespace) == ("receiver", "stream")
        return self.dep

    async def patch(
        self, res: Any, name: str, obj: Any, *, namespace: str | None = None, patch_type: Any = None
    ) -> Any:
        if self.fail:
            from lightkube.core.exceptions import ApiError
            from lightkube.models.meta_v1 import Status

            raise ApiError(status=Status(message="forbidden", code=403))
        self.patches.append((res, name, obj, namespace, patch_type))
        return self.dep


async def test_deployment_actuator_patches_the_thread_env() -> None:
    from lightkube.resources.apps_v1 import Deployment
    from lightkube.types import PatchType

    kube = FakeKube()
    act = lv.DeploymentActuator("stream", "receiver", "THREADS", container="recv", client=kube)
    assert await act.current() == 16
    msg = await act.apply(32, reason="test")
    res, name, obj, ns, ptype = kube.patches[0]
    assert (res, name, ns, ptype) == (Deployment, "receiver", "stream", PatchType.STRATEGIC)
    assert obj == {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "recv", "env": [{"name": "THREADS", "value": "32"}]}]}
            }
        }
    }
    assert "THREADS=32" in msg


async def test_deployment_actuator_errors_are_user_errors() -> None:
    act = lv.DeploymentActuator("stream", "receiver", "THREADS", container="missing", client=FakeKube())
    with pytest.raises(UserError, match="no container"):
        await act.apply(32, reason="test")
    act = lv.DeploymentActuator("stream", "receiver", "THREADS", client=FakeKube(fail=True))
    with pytest.raises(UserError, match="forbidden"):
        await act.apply(32, reason="test")
    # without --container the first container is used, and a non-numeric env value reads as unknown
    first = lv.DeploymentActuator("stream", "receiver", "THREADS", client=FakeKube(env_value="auto"))
    assert await first.current() is None
