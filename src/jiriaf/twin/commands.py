"""``jiriaf twin``: the digital twin's commands (reproduce, fit, live).

numpy and matplotlib are imported inside the commands so that ``jiriaf --help`` stays fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jiriaf.errors import UserError

if TYPE_CHECKING:
    from jiriaf.twin.live import LiveStep

app = typer.Typer(help="Digital twin of a streaming queue: reproduce, fit, live.", no_args_is_help=True)


@app.command("reproduce")
def reproduce_cmd(
    out: Annotated[Path, typer.Option(help="Directory for the tables, figures and CSV files.")] = Path(
        "twin-output"
    ),
    steps: Annotated[int, typer.Option(min=12, help="Steps of the paper scenario to run.")] = 80,
    model: Annotated[
        Path | None,
        typer.Option(help="A fitted model (from 'jiriaf twin fit') to compare instead of fitting one here."),
    ] = None,
    training_runs: Annotated[int, typer.Option(min=1, help="Recorded runs to fit the twin on.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the recorded training runs.")] = 7,
) -> None:
    """Reproduce the paper's twin (tables 8/9, figures 8/9) and compare it with a fitted twin."""
    from jiriaf.twin.model import load_model
    from jiriaf.twin.reproduction import reproduce

    fitted = load_model(model) if model is not None else None
    try:
        res = reproduce(out, steps=steps, fitted_model=fitted, training_runs=training_runs, seed=seed)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
    typer.echo(res.tables_text)
    typer.echo("")
    ref = res.reference
    switches = [(t, int(ref.threads[t])) for t in range(1, ref.steps) if ref.threads[t] != ref.threads[t - 1]]
    typer.echo(
        "Reference twin on the paper scenario: switches at "
        + ", ".join(f"step {t} -> {n}c" for t, n in switches)
    )
    if res.fit is not None:
        typer.echo(
            f"Fitted twin: EM on {res.fit.steps} recorded steps ({res.fit.runs} runs), "
            f"{res.fit.iterations} iterations, log-likelihood {res.fit.log_likelihood[0]:.1f} -> "
            f"{res.fit.log_likelihood[-1]:.1f}"
        )
    typer.echo("")
    typer.echo(res.lag_text)
    typer.echo("")
    typer.echo(f"wrote {len(res.files)} files to {out}:")
    for f in res.files:
        typer.echo(f"  {f}")


@app.command("fit")
def fit_cmd(
    data: Annotated[Path, typer.Argument(help="CSV with columns lq, threads and optionally run, state.")],
    out: Annotated[Path, typer.Option(help="Where to write the fitted model (JSON).")] = Path(
        "fitted_model.json"
    ),
    supervised: Annotated[
        bool, typer.Option(help="Use the 'state' column (known true states) instead of EM.")
    ] = False,
    linear: Annotated[bool, typer.Option(help="Gaussian on Lq instead of log(Lq).")] = False,
    init: Annotated[
        Path | None, typer.Option(help="Model to start from (default: the reference tables).")
    ] = None,
    max_iter: Annotated[int, typer.Option(min=1, help="EM iterations at most.")] = 60,
) -> None:
    """Fit the twin's transition and observation tables from recorded data."""
    from jiriaf.twin.fitting import fit_recording, format_model, initial_model, read_recording
    from jiriaf.twin.model import load_model, save_model

    rec = read_recording(data)
    start = load_model(init) if init is not None else initial_model(log_space=not linear)
    report = fit_recording(rec, supervised=supervised, init=start, max_iter=max_iter)
    try:
        save_model(report.model, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    typer.echo(f"read {report.steps} steps in {report.runs} run(s) from {data}")
    if report.method == "em":
        typer.echo(
            f"EM: {report.iterations} iterations ({'converged' if report.converged else 'not converged'}), "
            f"log-likelihood {report.log_likelihood[0]:.2f} -> {report.log_likelihood[-1]:.2f}"
        )
    else:
        typer.echo(f"supervised fit, log-likelihood {report.log_likelihood[-1]:.2f}")
    typer.echo(format_model(report.model))
    typer.echo(f"wrote {out}")


@app.command("live")
def live_cmd(
    source: Annotated[
        str, typer.Option(help="Where the queue length comes from: simulator or prometheus.")
    ] = "simulator",
    prometheus_url: Annotated[str, typer.Option(help="Prometheus base URL.")] = "http://127.0.0.1:9090",
    query: Annotated[str, typer.Option(help="PromQL instant query giving the queue length (one series).")] = (
        "sum(jiriaf_stream_queue_length)"
    ),
    steps: Annotated[int, typer.Option(min=1, help="Number of measure/estimate/act cycles.")] = 32,
    interval: Annotated[
        float | None,
        typer.Option(min=0.0, help="Seconds to wait between steps (default: 0 simulator, 5 prometheus)."),
    ] = None,
    apply: Annotated[
        bool | None,
        typer.Option(
            "--apply/--no-apply",
            help="Enact recommendations (default: yes for the simulator, no for prometheus).",
        ),
    ] = None,
    namespace: Annotated[str, typer.Option(help="Namespace of the receiver's Deployment.")] = "default",
    deployment: Annotated[str | None, typer.Option(help="The receiver's Deployment to patch.")] = None,
    container: Annotated[
        str | None, typer.Option(help="Container holding the env (default: the first).")
    ] = None,
    threads_env: Annotated[str, typer.Option(help="Env variable holding the thread count.")] = "THREADS",
    jcs_url: Annotated[
        str | None, typer.Option(help="Central service URL; actions go through it if set.")
    ] = None,
    jcs_token: Annotated[
        str | None, typer.Option(envvar="JIRIAF_JCS_TOKEN", help="Bearer token for the central service.")
    ] = None,
    workflow_id: Annotated[
        str | None, typer.Option(help="Workflow id for the central service (default: the deployment name).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Twin model JSON (from 'jiriaf twin fit').")] = None,
    policy: Annotated[str, typer.Option(help="threshold or planner (value iteration).")] = "threshold",
    initial_threads: Annotated[int, typer.Option(help="Thread count in force at the start.")] = 16,
    up_after: Annotated[
        int, typer.Option(min=1, help="Apply more threads after this many consecutive recommendations.")
    ] = 1,
    down_after: Annotated[
        int, typer.Option(min=1, help="Apply fewer threads after this many consecutive recommendations.")
    ] = 1,
    sim_rates: Annotated[
        str, typer.Option(help="Simulator sender-rate schedule, RATExSTEPS segments, e.g. 100x8,166x12.")
    ] = "100x8,166x12,100x12",
    sim_seconds: Annotated[float, typer.Option(min=0.1, help="Simulated seconds per step.")] = 30.0,
    sim_mode: Annotated[str, typer.Option(help="threads (M/M/N) or pooled (M/M/1) receiver.")] = "threads",
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    record: Annotated[
        Path | None, typer.Option(help="Write the measurements as a CSV that 'jiriaf twin fit' reads.")
    ] = None,
) -> None:
    """Run the twin against the simulator or Prometheus, printing its estimate and recommendation."""
    from jiriaf.twin import live as lv
    from jiriaf.twin import reference
    from jiriaf.twin.digital_twin import DigitalTwin
    from jiriaf.twin.model import load_model, save_model
    from jiriaf.twin.policy import make_policy
    from jiriaf.twin.stabilize import Stabilizer

    if source not in ("simulator", "prometheus"):
        raise UserError(f"unknown source {source!r} (simulator or prometheus)")
    if sim_mode not in ("threads", "pooled"):
        raise UserError(f"unknown simulator mode {sim_mode!r} (threads or pooled)")
    if policy not in ("threshold", "planner"):
        raise UserError(f"unknown policy {policy!r} (threshold or planner)")
    if model is not None:
        twin_model = load_model(model)
    elif source == "simulator":
        twin_model = lv.queueing_model(mode=sim_mode)
    else:
        twin_model = reference.reference_model()
    twin_model.control_index(initial_threads)
    pol = make_policy(policy, twin_model)
    twin = DigitalTwin(twin_model, pol, horizon=reference.HORIZON)
    do_apply = apply if apply is not None else source == "simulator"

    src: lv.QueueSource
    actuator: lv.Actuator | None = None
    if source == "simulator":
        sim_src = lv.SimulatorSource(
            lv.parse_schedule(sim_rates), sim_seconds, initial_threads, mode=sim_mode, seed=seed
        )
        src = sim_src
        if do_apply:
            actuator = lv.SimulatorActuator(sim_src)
        wait = 0.0 if interval is None else interval
    else:
        src = lv.PrometheusSource(prometheus_url, query)
        wait = 5.0 if interval is None else interval
        if do_apply:
            if jcs_url:
                wf = workflow_id or deployment
                if not wf:
                    raise UserError("--jcs-url needs --workflow-id (or --deployment)")
                actuator = lv.JcsActuator(jcs_url, wf, jcs_token, namespace, deployment, threads_env)
            elif deployment:
                actuator = lv.DeploymentActuator(namespace, deployment, threads_env, container)
            else:
                raise UserError("--apply with prometheus needs --deployment or --jcs-url")

    typer.echo(
        f"twin: model {twin_model.name}, {policy} policy, source {source}, "
        f"{'applying' if actuator else 'not applying'} recommendations"
    )

    def emit(item: lv.LiveStep) -> None:
        typer.echo(item.format(twin_model.state_labels))

    async def main() -> list[lv.LiveStep]:
        start = initial_threads
        if isinstance(actuator, lv.DeploymentActuator):
            current = await actuator.current()
            if current is not None and current in twin_model.controls:
                start = current
        return await lv.run_live(
            twin,
            src,
            steps=steps,
            interval=wait,
            initial_threads=start,
            actuator=actuator,
            emit=emit,
            stabilizer=Stabilizer(up=up_after, down=down_after),
        )

    try:
        result = asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Abort() from None
    switches = [(s.estimate.step, s.recommended) for s in result if s.applied]
    typer.echo(
        "switches: "
        + (", ".join(f"after step {t} -> {n} threads" for t, n in switches) if switches else "none")
    )
    if record is not None:
        _write_live_record(record, result)
        model_path = record.with_suffix(".model.json")
        try:
            save_model(twin_model, model_path)
        except OSError as exc:
            raise UserError(f"cannot write {model_path}: {exc.strerror or exc}") from None
        typer.echo(f"wrote {record} and the model used, {model_path} (for 'jiriaf twin fit --init')")


def _write_live_record(path: Path, result: list[LiveStep]) -> None:
    import csv

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["run", "step", "threads", "lq"])
            for item in result:
                e = item.estimate
                w.writerow(["live", e.step, e.threads, f"{e.lq:.6g}"])
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
