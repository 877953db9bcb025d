"""The twin connected to a running system: read the queue length, estimate, recommend, act.

Sources of the queue length:

* :class:`SimulatorSource` - the discrete-event simulator, one measurement interval per step, with a
  sender-rate schedule (or any function of the step) so that the load can be driven up and down;
* :class:`PrometheusSource` - an instant query ``GET {url}/api/v1/query?query=...`` returning one series.

Ways to apply a recommended thread count:

* :class:`SimulatorActuator` - change the simulated receiver's threads;
* :class:`JcsActuator` - ask the central service (JCS) to do it (see :func:`post_jcs_action`);
* :class:`DeploymentActuator` - patch the receiver's Deployment directly (the container env variable
  holding the thread count), for when no central service runs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from jiriaf.errors import UserError
from jiriaf.twin.digital_twin import DigitalTwin, StepEstimate
from jiriaf.twin.model import TwinModel, banded_transition
from jiriaf.twin.queueing import mm1_lq, mmc_lq, receiver_rate
from jiriaf.twin.simulator import QueueSimulator
from jiriaf.twin.stabilize import Stabilizer

DEFAULT_LEVELS: tuple[float, ...] = (100.0, 130.0, 150.0, 162.0, 166.0)
DEFAULT_SCHEDULE = "100x8,166x12,100x12"


# ----------------------------------------------------------------------------- a model for the simulator


def queueing_model(
    levels: Sequence[float] = DEFAULT_LEVELS,
    controls: Sequence[int] = (16, 32),
    mode: str = "threads",
    sigma: float = 0.8,
    stay: float = 0.8,
    lq_floor: float = 1e-2,
) -> TwinModel:
    """A twin whose states are sender-rate levels, with queueing-theory observation means.

    The observation is log(Lq) with mean log(theoretical Lq) for each (rate, threads) pair (M/M/N for
    ``threads`` mode, M/M/1 for ``pooled``), both floored at ``lq_floor``, and a wide ``sigma`` that
    covers the sampling noise of a measurement interval and the slow approach to the mean near
    saturation. The transition stays with probability ``stay`` and jumps anywhere otherwise.
    """
    if len(levels) < 2:
        raise UserError("need at least two rate levels")
    means = np.zeros((len(controls), len(levels)))
    for c, threads in enumerate(controls):
        mu = receiver_rate(threads)
        for s, lam in enumerate(levels):
            lq = mmc_lq(lam, mu, threads) if mode == "threads" else mm1_lq(lam, mu)
            if not math.isfinite(lq):
                raise UserError(f"rate {lam} Hz saturates a receiver with {threads} threads ({mu:.1f} Hz)")
            means[c, s] = math.log(max(lq, lq_floor))
    t = banded_transition(len(levels), stay)
    prior = np.full(len(levels), 1.0 / len(levels))
    return TwinModel(
        name=f"queueing-{mode}",
        state_labels=tuple(f"{lam:g}Hz" for lam in levels),
        controls=tuple(int(c) for c in controls),
        prior=prior,
        transition=np.stack([t] * len(controls)),
        obs_mean=means,
        obs_sigma=np.full(means.shape, sigma),
        log_space=True,
        lq_floor=lq_floor,
        notes={"levels_hz": list(levels), "mode": mode},
    )


def parse_schedule(text: str) -> list[float]:
    """``"100x8,166x12"`` -> eight steps at 100 Hz then twelve at 166 Hz."""
    rates: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        rate_s, _, count_s = part.partition("x")
        try:
            rate = float(rate_s)
            count = int(count_s) if count_s else 1
        except ValueError:
            raise UserError(
                f"bad rate schedule segment {part!r} (expected RATExSTEPS, e.g. 166x10)"
            ) from None
        if rate < 0 or count < 1:
            raise UserError(f"bad rate schedule segment {part!r}")
        rates.extend([rate] * count)
    if not rates:
        raise UserError("empty rate schedule")
    return rates


# ----------------------------------------------------------------------------- sources


class QueueSource(Protocol):
    async def read(self, step: int) -> float:
        """The queue length measured over the step that just ran."""
        ...

    def describe(self, step: int) -> str:
        """Extra context for the step's log line."""
        ...


class SimulatorSource:
    """Queue lengths from the discrete-event simulator; the sender rate follows ``rate(step)``."""

    def __init__(
        self,
        rate: Callable[[int], float] | Sequence[float],
        seconds_per_step: float = 30.0,
        threads: int = 16,
        mode: str = "threads",
        seed: int | None = 0,
    ) -> None:
        if isinstance(rate, Sequence):
            rates = list(rate)
            self._rate: Callable[[int], float] = lambda step: rates[min(step, len(rates) - 1)]
        else:
            self._rate = rate
        self.seconds_per_step = seconds_per_step
        self.simulator = QueueSimulator(self._rate(0), threads, mode=mode, seed=seed)

    async def read(self, step: int) -> float:
        lam = self._rate(step)
        if lam != self.simulator.lam:
            self.simulator.set_rate(lam)
        return self.simulator.run_for(self.seconds_per_step).mean_queue

    def describe(self, step: int) -> str:
        return f"rate {self.simulator.lam:6.1f} Hz"


def parse_prometheus_value(doc: Any, query: str) -> float:
    """The single numeric value of an instant-query response."""
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error", "unexpected response") if isinstance(doc, dict) else "unexpected response"
        raise UserError(f"Prometheus query {query!r} failed: {err}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise UserError(f"Prometheus query {query!r} returned no data")
    kind = data.get("resultType")
    result: Any = data.get("result")
    try:
        if kind == "scalar":
            value = float(result[1])
        elif kind == "vector":
            if not result:
                raise UserError(f"Prometheus query {query!r} returned no series")
            if len(result) > 1:
                raise UserError(
                    f"Prometheus query {query!r} returned {len(result)} series; aggregate it, e.g. sum(...)"
                )
            value = float(result[0]["value"][1])
        else:
            raise UserError(f"Prometheus query {query!r} returned a {kind} result; need a scalar or vector")
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(f"Prometheus query {query!r} returned a malformed result") from None
    if not math.isfinite(value):
        raise UserError(f"Prometheus query {query!r} returned {value}")
    return value


class PrometheusSource:
    """Queue lengths from a Prometheus instant query."""

    def __init__(self, url: str, query: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.query = query
        self.timeout = timeout

    async def read(self, step: int) -> float:
        import aiohttp

        endpoint = f"{self.url}/api/v1/query"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.get(endpoint, params={"query": self.query}) as resp,
            ):
                if resp.status >= 500 or resp.content_type != "application/json":
                    raise UserError(f"Prometheus at {self.url} answered HTTP {resp.status}")
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UserError(f"cannot reach Prometheus at {self.url}: {exc or type(exc).__name__}") from None
        except ValueError:
            raise UserError(f"Prometheus at {self.url} did not answer with JSON") from None
        return parse_prometheus_value(doc, self.query)

    def describe(self, step: int) -> str:
        return "prometheus"


# ----------------------------------------------------------------------------- actuators


class Actuator(Protocol):
    async def apply(self, threads: int, reason: str) -> str:
        """Enact the thread count; return a short description of what was done."""
        ...


class SimulatorActuator:
    def __init__(self, source: SimulatorSource) -> None:
        self.source = source

    async def apply(self, threads: int, reason: str) -> str:
        self.source.simulator.set_threads(threads)
        return f"simulator receiver now runs {threads} threads"


async def post_jcs_action(
    jcs_url: str,
    workflow_id: str,
    action: dict[str, Any],
    token: str | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Ask the central service to apply a control action to a workflow.

    ``POST {jcs_url}/api/v1/workflows/{workflow_id}/actions`` with a JSON body such as
    ``{"action": "set-threads", "threads": 32, "target": {...}, "source": "jiriaf-twin",
    "reason": "..."}`` and, when a token is given, ``Authorization: Bearer <token>``. Any 2xx answer is
    success; its JSON body (or ``{}``) is returned. Anything else is a :class:`UserError`.
    """
    import aiohttp

    url = f"{jcs_url.rstrip('/')}/api/v1/workflows/{workflow_id}/actions"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, json=action, headers=headers) as resp,
        ):
            if resp.status // 100 != 2:
                text = (await resp.text())[:200]
                raise UserError(f"central service refused the action (HTTP {resp.status}): {text}")
            if resp.content_type == "application/json":
                body = await resp.json()
                return body if isinstance(body, dict) else {"result": body}
            return {}
    except aiohttp.ClientError as exc:
        raise UserError(f"cannot reach the central service at {jcs_url}: {exc}") from None
    except TimeoutError:
        raise UserError(f"the central service at {jcs_url} did not answer in {timeout_s:g} s") from None


class JcsActuator:
    """Apply thread counts through the central service's control action."""

    def __init__(
        self,
        jcs_url: str,
        workflow_id: str,
        token: str | None,
        namespace: str,
        deployment: str | None,
        threads_env: str,
    ) -> None:
        self.jcs_url = jcs_url
        self.workflow_id = workflow_id
        self.token = token
        self.target = {"namespace": namespace, "deployment": deployment, "env": threads_env}

    async def apply(self, threads: int, reason: str) -> str:
        action = {
            "action": "set-threads",
            "threads": threads,
            "target": self.target,
            "source": "jiriaf-twin",
            "reason": reason,
        }
        await post_jcs_action(self.jcs_url, self.workflow_id, action, self.token)
        return f"asked the central service to run {threads} threads (workflow {self.workflow_id})"


def threads_env_patch(container: str, env_name: str, threads: int) -> dict[str, Any]:
    """Strategic-merge patch that sets one env variable of one container of a Deployment's pods."""
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": container, "env": [{"name": env_name, "value": str(threads)}]}]
                }
            }
        }
    }


class DeploymentActuator:
    """Patch the receiver's Deployment (its thread-count env variable); the pods roll over."""

    def __init__(
        self,
        namespace: str,
        deployment: str,
        env_name: str,
        container: str | None = None,
        client: Any = None,
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.env_name = env_name
        self.container = container
        self._client = client

    def _get_client(self) -> Any:
        if self._client is None:
            from lightkube import AsyncClient
            from lightkube.core.exceptions import ConfigError

            try:
                self._client = AsyncClient()
            except ConfigError as exc:
                raise UserError(f"no Kubernetes configuration to patch the Deployment: {exc}") from None
        return self._client

    async def _read(self) -> Any:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.apps_v1 import Deployment

        try:
            return await self._get_client().get(Deployment, self.deployment, namespace=self.namespace)
        except ApiError as exc:
            raise UserError(
                f"cannot read Deployment {self.namespace}/{self.deployment}: {exc.status.message}"
            ) from None

    def _container(self, dep: Any) -> Any:
        containers = dep.spec.template.spec.containers
        if self.container is None:
            return containers[0]
        for c in containers:
            if c.name == self.container:
                return c
        raise UserError(f"Deployment {self.namespace}/{self.deployment} has no container {self.container!r}")

    async def current(self) -> int | None:
        """The thread count currently in the Deployment's env, if it is set to a number."""
        c = self._container(await self._read())
        for e in c.env or []:
            if e.name == self.env_name and e.value is not None:
                try:
                    return int(e.value)
                except ValueError:
                    return None
        return None

    async def apply(self, threads: int, reason: str) -> str:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.apps_v1 import Deployment
        from lightkube.types import PatchType

        name = self._container(await self._read()).name
        patch = threads_env_patch(name, self.env_name, threads)
        try:
            await self._get_client().patch(
                Deployment, self.deployment, patch, namespace=self.namespace, patch_type=PatchType.STRATEGIC
            )
        except ApiError as exc:
            raise UserError(
                f"cannot patch Deployment {self.namespace}/{self.deployment}: {exc.status.message}"
            ) from None
        return f"patched {self.namespace}/{self.deployment} {name}.{self.env_name}={threads}"


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LiveStep:
    estimate: StepEstimate
    context: str
    threshold_state: int
    applied: str | None

    @property
    def recommended(self) -> int:
        return self.estimate.recommended_threads

    def format(self, labels: Sequence[str]) -> str:
        e = self.estimate
        p_high = e.p_at_least(self.threshold_state)
        line = (
            f"step {e.step:4d}  {self.context}  threads {e.threads:3d}  Lq {e.lq:9.3f}  "
            f"state {labels[e.map_state]:>6} (E={e.mean_state:4.2f})  "
            f"P(state>={labels[self.threshold_state]})={p_high:5.3f}  -> {e.recommended_threads} threads"
        )
        if self.applied:
            line += f"  [{self.applied}]"
        return line


async def run_live(
    twin: DigitalTwin,
    source: QueueSource,
    *,
    steps: int,
    interval: float = 0.0,
    initial_threads: int = 16,
    actuator: Actuator | None = None,
    threshold_state: int = 2,
    emit: Callable[[LiveStep], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    stabilizer: Stabilizer | None = None,
) -> list[LiveStep]:
    """Run ``steps`` measurement/estimate/act cycles.

    The thread count the twin assumes for a measurement is the one actually in force: without an
    actuator a recommendation is only printed and the enacted count stays as it was. With a
    ``stabilizer`` a recommendation is applied only after it has held for its window.
    """
    gate = stabilizer or Stabilizer()
    current = initial_threads
    out: list[LiveStep] = []
    for step in range(steps):
        if step > 0 and interval > 0:
            await sleep(interval)
        lq = await source.read(step)
        est = twin.observe(lq, current)
        applied: str | None = None
        rec = est.recommended_threads
        if actuator is not None and gate.offer(rec, current):
            applied = await actuator.apply(rec, reason=f"twin step {step}: estimated state {est.map_state}")
            current = rec
        item = LiveStep(
            estimate=est, context=source.describe(step), threshold_state=threshold_state, applied=applied
        )
        out.append(item)
        if emit is not None:
            emit(item)
    return out
