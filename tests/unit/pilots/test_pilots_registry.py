"""The pilot registry: records survive a round trip, damage is a clear error, the lock excludes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from jiriaf.errors import UserError
from jiriaf.pilots.registry import PilotRecord, PilotRegistry, default_root

pytestmark = pytest.mark.unit


def record(pilot_id: str = "p1", **kw: object) -> PilotRecord:
    base: dict[str, object] = {
        "id": pilot_id,
        "site": "ci",
        "executor": "slurm",
        "job_name": f"jiriaf-pilot-{pilot_id}",
        "nodes": 1,
        "jrms_per_node": 2,
        "walltime": 180,
        "margin": 60,
    }
    base.update(kw)
    return PilotRecord.model_validate(base)


def test_round_trip(tmp_path: Path) -> None:
    reg = PilotRegistry(tmp_path)
    rec = record(native_id="42", state="active", node_names=["a", "b"])
    rec.note("submitted")
    reg.save(rec)
    again = reg.get("p1")
    assert again == rec
    assert again is not None and again.events[0].what == "submitted"
    assert not again.final
    assert reg.get("nope") is None
    assert (tmp_path / "p1" / "record.json").is_file()


def test_require_and_damage(tmp_path: Path) -> None:
    reg = PilotRegistry(tmp_path)
    with pytest.raises(UserError, match="no pilot 'p9'"):
        reg.require("p9")
    (tmp_path / "p2").mkdir()
    (tmp_path / "p2" / "record.json").write_text("{broken")
    with pytest.raises(UserError, match="is damaged"):
        reg.get("p2")
    assert reg.all() == []  # damaged records are skipped by the listing


def test_all_is_oldest_first(tmp_path: Path) -> None:
    reg = PilotRegistry(tmp_path)
    reg.save(record("b", created_at=2.0))
    reg.save(record("a", created_at=3.0, state="completed"))
    reg.save(record("c", created_at=1.0))
    assert [r.id for r in reg.all()] == ["c", "b", "a"]
    assert reg.get("a") is not None and reg.get("a").final  # type: ignore[union-attr]
    assert PilotRegistry(tmp_path / "none").all() == []


def _hold(root: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with PilotRegistry(Path(root)).locked("p1"):
        ready.set()
        time.sleep(seconds)


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), 30.0, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(UserError, match="busy"), PilotRegistry(tmp_path).locked("p1", timeout=0.5):
            pass
    finally:
        holder.terminate()
        holder.join(30)
    with PilotRegistry(tmp_path).locked("p1", timeout=5):  # released when the holder died
        pass


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JIRIAF_PILOT_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("JIRIAF_PILOT_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_root() == tmp_path / "jiriaf" / "pilots"
