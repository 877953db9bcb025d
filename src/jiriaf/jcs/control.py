"""Control actions on workflows and pilots, each recorded as an event (done or refused).

Workflow actions, on the workflow's own objects only (those its request applied):

* ``scale``: ``replicas`` (and ``deployment`` when the workflow has several) -> ``spec.replicas``;
* ``resources``: set a container's ``cpu``/``memory`` requests and limits, never above what one
  leased node offers;
* ``stop``: end the workflow (the reconcile loop deletes it and releases its leases);
* a workflow-specific action declared in the request: ``env`` (set a variable, the pods roll),
  ``args`` (replace a container's args) or ``http`` (call the workflow's pods or Service; any other
  host is refused);
* ``set-threads``: the digital twin's call (``jiriaf.twin.live.post_jcs_action``): the declared
  action of that name if there is one, else an ``env`` change of ``target.deployment``'s
  ``target.env`` to ``threads``.

Pilot actions (admins): ``drain`` cordons the pilot's nodes and deletes the pods on them; ``stop``
cancels the pilot through the launcher (the loop then queues its request again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2
from sqlalchemy.ext.asyncio import AsyncSession

from jiriaf.jcs import trail, workflows
from jiriaf.jcs.auth import Principal
from jiriaf.jcs.launching import PilotPort
from jiriaf.jcs.models import Pilot, PilotState, Request, RequestState
from jiriaf.jcs.monitor import summarize_pods
from jiriaf.jcs.schemas import ActionCall, ArgsAction, EnvAction, HttpAction
from jiriaf.jrm.environment import parse_quantity
from jiriaf.kube.patching import MERGE, STRATEGIC, ApiError, check, patch

SCALABLE = ("Deployment", "StatefulSet")
MAX_REPLICAS = 10_000


class ActionError(Exception):
    """An action that cannot be done; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.event_id: int | None = None  # the event recording the refusal


@dataclass(frozen=True)
class Outcome:
    message: str
    data: dict[str, Any]


def _target(req: Request, kinds: tuple[str, ...], name: str | None, what: str) -> dict[str, str]:
    """One of the workflow's applied objects of ``kinds``: the one named, or the only one."""
    candidates = [r for r in req.applied_objects if r["kind"] in kinds]
    if name is not None:
        for r in candidates:
            if r["name"] == name:
                return dict(r)
        raise ActionError(f"{name!r} is not a {'/'.join(kinds)} of workflow {req.id}", 404)
    if len(candidates) == 1:
        return dict(candidates[0])
    if not candidates:
        raise ActionError(f"workflow {req.id} has no {'/'.join(kinds)} to {what}", 409)
    names = ", ".join(r["name"] for r in candidates)
    raise ActionError(f"workflow {req.id} has several ({names}): say which with 'deployment'", 422)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ActionError(f"{name} must be an integer", 422)
    try:
        number = int(value)
    except ValueError:
        raise ActionError(f"{name} must be an integer, not {value!r}", 422) from None
    if not lo <= number <= hi:
        raise ActionError(f"{name} must be between {lo} and {hi}", 422)
    return number


def _scalar(value: Any, name: str) -> str:
    if value is None:
        raise ActionError(f"the action needs a value in {name!r}", 422)
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, int | float | str) or len(str(value)) > 1000:
        raise ActionError(f"{name} must be a number or a short string", 422)
    return str(value)


def _container(obj: dict[str, Any], name: str | None) -> str:
    containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    if name is None:
        if not containers:
            raise ActionError("the deployment has no containers", 409)
        return str(containers[0]["name"])
    if not any(c.get("name") == name for c in containers):
        raise ActionError(f"the deployment has no container {name!r}", 404)
    return name


def _named_port(pod: dict[str, Any], name: str) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == name and p.get("containerPort"):
                return int(p["containerPort"])
    return None


def _value(call: ActionCall, param: str) -> Any:
    """The call's value: under the action's parameter name, else under ``value``."""
    value = call.param(param)
    return call.param("value") if value is None else value


def _container_patch(container: str, **fields: Any) -> dict[str, Any]:
    """A strategic-merge patch setting ``fields`` of one container of a pod template."""
    return {"spec": {"template": {"spec": {"containers": [{"name": container, **fields}]}}}}


class Controller:
    """Runs control actions against the apiserver, the workflow's pods and the pilot launcher."""

    def __init__(
        self, kube: httpx2.AsyncClient | None, launcher: PilotPort | None, http_timeout: float = 10.0
    ):
        self.kube = kube
        self.launcher = launcher
        self.http_timeout = http_timeout
        self.instance = ""  # the database's instance id (set when the service starts)

    def _client(self) -> httpx2.AsyncClient:
        if self.kube is None:
            raise ActionError("the central service has no Kubernetes connection (--kubeconfig)", 503)
        return self.kube

    # ------------------------------------------------------------------------- workflows

    async def workflow_action(
        self, s: AsyncSession, who: Principal, req: Request, call: ActionCall
    ) -> tuple[str, int]:
        """Do ``call`` on ``req``'s workflow; the message and the event id (refusals are recorded too)."""
        data: dict[str, Any] = {
            "params": {k: v for k, v in (call.model_extra or {}).items()},
            "source": call.source,
            "reason": call.reason,
        }
        try:
            outcome = await self._dispatch(s, who, req, call)
        except ActionError as exc:
            ev = trail.record(
                s,
                who.user,
                f"workflow.{call.action}.refused",
                "request",
                req.id,
                str(exc),
                request_id=req.id,
                data={**data, "status": exc.status},
            )
            await s.commit()
            exc.event_id = ev.id
            raise
        why = f" ({call.reason})" if call.reason else ""
        via = f" via {call.source}" if call.source else ""
        ev = trail.record(
            s,
            who.user,
            f"workflow.{call.action}",
            "request",
            req.id,
            outcome.message + why + via,
            request_id=req.id,
            data={**data, **outcome.data},
        )
        await s.commit()
        return outcome.message, ev.id

    async def _dispatch(self, s: AsyncSession, who: Principal, req: Request, call: ActionCall) -> Outcome:
        if call.action == "stop":
            return self._stop(req, who, call.reason)
        if req.state != RequestState.RUNNING.value:
            raise ActionError(f"workflow {req.id} is {req.state}, not running", 409)
        declared = {a["name"]: a for a in req.actions}
        if call.action in declared:
            spec = declared[call.action]
            if spec["kind"] == "env":
                return await self._env(req, EnvAction.model_validate(spec), call)
            if spec["kind"] == "args":
                return await self._args(req, ArgsAction.model_validate(spec), call)
            return await self._http(req, HttpAction.model_validate(spec), call)
        if call.action == "scale":
            return await self._scale(req, call)
        if call.action == "resources":
            return await self._resources(req, call)
        if call.action == "set-threads":
            target = call.param("target") or {}
            if not isinstance(target, dict) or not target.get("deployment") or not target.get("env"):
                raise ActionError(
                    "set-threads needs target.deployment and target.env (or a declared action)", 422
                )
            if target.get("namespace") not in (None, req.namespace):
                raise ActionError(f"workflow {req.id} runs in namespace {req.namespace}", 403)
            spec = EnvAction(
                name="set-threads",
                kind="env",
                deployment=str(target["deployment"]),
                env=str(target["env"]),
                param="threads",
                container=target.get("container"),
            )
            return await self._env(req, spec, call)
        known = ", ".join(["scale", "resources", "stop", "set-threads", *declared])
        raise ActionError(f"unknown action {call.action!r} for workflow {req.id} (known: {known})", 404)

    def _stop(self, req: Request, who: Principal, reason: str) -> Outcome:
        if req.state not in (RequestState.LEASED.value, RequestState.RUNNING.value):
            raise ActionError(f"workflow {req.id} is {req.state}: nothing to stop", 409)
        req.state = RequestState.STOPPING.value
        req.outcome = RequestState.COMPLETED.value
        req.reason = f"stopped by {who.user}" + (f": {reason}" if reason else "")
        return Outcome(f"workflow {req.id} stopping", {})

    async def _scale(self, req: Request, call: ActionCall) -> Outcome:
        replicas = _int(call.param("replicas"), "replicas", 0, MAX_REPLICAS)
        ref = _target(req, SCALABLE, call.param("deployment"), "scale")
        await patch(self._client(), workflows.object_path(ref), {"spec": {"replicas": replicas}}, MERGE)
        return Outcome(
            f"{ref['kind']} {ref['name']} scaled to {replicas}", {"replicas": replicas, "object": ref}
        )

    async def _resources(self, req: Request, call: ActionCall) -> Outcome:
        ref = _target(req, SCALABLE, call.param("deployment"), "change")
        obj = check(await self._client().get(workflows.object_path(ref)))
        container = _container(obj, call.param("container"))
        values: dict[str, str] = {}
        for key, cap in (("cpu", req.cpus_per_node), ("memory", req.memory_mb_per_node * 2**20)):
            raw = call.param(key)
            if raw is None:
                continue
            try:
                quantity = parse_quantity(raw)
            except ValueError:
                raise ActionError(f"{key} {raw!r} is not a Kubernetes quantity", 422) from None
            if quantity <= 0 or quantity > cap:
                raise ActionError(f"{key} {raw} is outside (0, {cap}] that one leased node offers", 422)
            values[key] = str(raw)
        if not values:
            raise ActionError("resources needs cpu and/or memory", 422)
        body = {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": container, "resources": {"requests": values, "limits": values}}
                        ]
                    }
                }
            }
        }
        await patch(self._client(), workflows.object_path(ref), body, STRATEGIC)
        text = ", ".join(f"{k}={v}" for k, v in values.items())
        return Outcome(
            f"{ref['kind']} {ref['name']} container {container}: {text}", {"resources": values, "object": ref}
        )

    async def _env(self, req: Request, spec: EnvAction, call: ActionCall) -> Outcome:
        value = _scalar(_value(call, spec.param), spec.param)
        ref = _target(req, ("Deployment",), spec.deployment, "change")
        obj = check(await self._client().get(workflows.object_path(ref)))
        container = _container(obj, spec.container)
        body = _container_patch(container, env=[{"name": spec.env, "value": value}])
        await patch(self._client(), workflows.object_path(ref), body, STRATEGIC)
        return Outcome(
            f"Deployment {ref['name']} container {container}: {spec.env}={value}",
            {"env": spec.env, "value": value, "object": ref},
        )

    async def _args(self, req: Request, spec: ArgsAction, call: ActionCall) -> Outcome:
        value = _scalar(_value(call, spec.param), spec.param)
        ref = _target(req, ("Deployment",), spec.deployment, "change")
        obj = check(await self._client().get(workflows.object_path(ref)))
        container = _container(obj, spec.container)
        args = [a.replace("{value}", value) for a in spec.args]
        await patch(
            self._client(), workflows.object_path(ref), _container_patch(container, args=args), STRATEGIC
        )
        return Outcome(
            f"Deployment {ref['name']} container {container}: args {args}", {"args": args, "object": ref}
        )

    async def _service_targets(
        self, req: Request, pods: list[dict[str, Any]], service: str, port: int | None
    ) -> list[tuple[str, int]]:
        """Addresses behind one of the workflow's Services: its running pods that the Service's
        selector picks, at the target port (read from the pods, so it works where EndpointSlices
        cannot list them, e.g. pods on loopback addresses)."""
        ref = _target(req, ("Service",), service, "call")
        svc = check(await self._client().get(workflows.object_path(ref)))
        spec = svc.get("spec") or {}
        chosen = next((p for p in spec.get("ports") or [] if port is None or p.get("port") == port), None)
        if chosen is None:
            raise ActionError(f"Service {service} has no port {port}", 404)
        selector = spec.get("selector") or {}
        if not selector:
            raise ActionError(f"Service {service} has no selector", 409)
        target = chosen.get("targetPort", chosen.get("port"))
        out: list[tuple[str, int]] = []
        for pod in pods:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            status = pod.get("status") or {}
            if status.get("phase") != "Running" or not status.get("podIP"):
                continue
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            number = target if isinstance(target, int) else _named_port(pod, str(target))
            if number is not None:
                out.append((status["podIP"], int(number)))
        if not out:
            raise ActionError(f"Service {service} selects no running pod of workflow {req.id}", 409)
        return sorted(set(out))

    async def _http_targets(self, req: Request, spec: HttpAction) -> list[str]:
        owner = workflows.workflow_owner(self.instance, req.id)
        raw_pods = await workflows.list_pods(self._client(), req.namespace, owner)
        pods = summarize_pods(raw_pods)
        if spec.url is not None:
            parts = urlsplit(spec.url)
            host = parts.hostname or ""
            if host in pods.addresses:
                return [spec.url]
            services = {r["name"] for r in req.applied_objects if r["kind"] == "Service"}
            names = re.fullmatch(
                rf"([a-z0-9-]+)(\.{re.escape(req.namespace)}(\.svc(\.cluster\.local)?)?)?", host
            )
            if names and names.group(1) in services:
                found = await self._service_targets(req, raw_pods, names.group(1), parts.port)
                return [
                    urlunsplit((parts.scheme, f"{addr}:{p}", parts.path or "/", parts.query, ""))
                    for addr, p in found
                ]
            raise ActionError(f"host {host!r} is not one of workflow {req.id}'s pods or Services", 403)
        if spec.service is not None:
            found = await self._service_targets(req, raw_pods, spec.service, spec.port)
            return [f"http://{addr}:{p}{spec.path}" for addr, p in found]
        if not pods.addresses:
            raise ActionError(f"workflow {req.id} has no running pods to call", 409)
        return [f"http://{addr}:{spec.port}{spec.path}" for addr in sorted(set(pods.addresses))]

    async def _http(self, req: Request, spec: HttpAction, call: ActionCall) -> Outcome:
        raw = _value(call, spec.param)
        targets = await self._http_targets(req, spec)
        results: list[dict[str, Any]] = []
        async with httpx2.AsyncClient(timeout=self.http_timeout, trust_env=False) as client:
            for url in targets:
                try:
                    if spec.method in ("GET", "DELETE"):
                        params = {spec.param: _scalar(raw, spec.param)} if raw is not None else None
                        resp = await client.request(spec.method, url, params=params)
                    else:
                        resp = await client.request(
                            spec.method, url, json={spec.param: raw} if raw is not None else {}
                        )
                    results.append({"url": url, "status": resp.status_code, "body": resp.text[:200]})
                except httpx2.HTTPError as exc:
                    results.append({"url": url, "error": f"{type(exc).__name__}: {exc}"[:200]})
        failed = [r for r in results if r.get("error") or not 200 <= int(r.get("status", 0)) < 300]
        if failed:
            first = failed[0]
            raise ActionError(
                f"{spec.method} {first['url']} failed: {first.get('error') or 'HTTP ' + str(first['status'])}"
                f" ({len(failed)} of {len(results)} calls failed)",
                502,
            )
        path = spec.path if spec.url is None else urlsplit(spec.url).path or "/"
        return Outcome(
            f"{spec.method} {path} on {len(results)} target(s) of workflow {req.id}: all answered 2xx",
            {"calls": results},
        )

    # ------------------------------------------------------------------------- pilots

    async def drain_pilot(
        self, s: AsyncSession, who: Principal, pilot: Pilot, reason: str
    ) -> tuple[str, int]:
        """Cordon the pilot's nodes and delete the pods on them."""
        client = self._client()
        deleted: list[str] = []
        for node in pilot.node_names:
            try:
                await patch(client, f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}}, MERGE)
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            selector = quote(f"spec.nodeName={node}")
            pods = check(await client.get(f"/api/v1/pods?fieldSelector={selector}"))
            for pod in pods.get("items") or []:
                meta = pod["metadata"]
                resp = await client.request(
                    "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                )
                if resp.status_code < 300:
                    deleted.append(f"{meta['namespace']}/{meta['name']}")
        message = (
            f"pilot {pilot.id} drained: {len(pilot.node_names)} node(s) cordoned, "
            f"{len(deleted)} pod(s) deleted" + (f" ({reason})" if reason else "")
        )
        ev = trail.record(s, who.user, "pilot.drained", "pilot", pilot.id, message, data={"pods": deleted})
        await s.commit()
        return message, ev.id

    async def stop_pilot(self, s: AsyncSession, who: Principal, pilot: Pilot, reason: str) -> tuple[str, int]:
        if self.launcher is None:
            raise ActionError("the central service has no pilot launcher", 503)
        if pilot.state in (PilotState.STOPPED.value, PilotState.FAILED.value):
            raise ActionError(f"pilot {pilot.id} has already ended ({pilot.state})", 409)
        await self.launcher.cancel(pilot.id, reason or f"stopped by {who.user}")
        pilot.state = PilotState.STOPPING.value  # the reconcile loop sees it end and requeues its request
        message = f"pilot {pilot.id} stopping" + (f" ({reason})" if reason else "")
        ev = trail.record(s, who.user, "pilot.stopping", "pilot", pilot.id, message)
        await s.commit()
        return message, ev.id
