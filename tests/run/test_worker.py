"""Worker robustness: atomic publication, records, restart, signals, disk full, duplicates, scratch.

Each test drives the real worker (real scratch, real signals, real files); only
the extractor is a test one (tests/kit/workerkit.py), so failures are the framework's.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rxte_hpc.core.config import load_config
from rxte_hpc.fits.lcfile import read_lightcurve
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.scratch import LOCK_NAME, PREFIX, reap_stale, task_workspace
from rxte_hpc.core.status import RunSummary, StatusRecord, read_record
from rxte_hpc.run.worker import run_task
from workerkit import factory, fake_curve, write_run
from where import KIT

WORKERKIT = KIT / "workerkit.py"


def load(cfg_path):
    cfg = load_config(cfg_path)
    return cfg, read_manifest(RunPaths(cfg.run_dir).manifest), RunPaths(cfg.run_dir)


def all_files(directory: Path) -> list[Path]:
    """Every file under `directory` (its shard folders included)."""
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def visible_files(directory: Path) -> list[Path]:
    return [p for p in all_files(directory) if not p.name.startswith(".")]


def assert_all_valid(paths: RunPaths) -> None:
    """Every visible file under lc/ and status/ is complete (FITS readable, JSON parseable)."""
    for p in visible_files(paths.lc_dir):
        lc = read_lightcurve(p)
        assert lc.n_rows == 50
    for p in visible_files(paths.status_dir):
        StatusRecord.from_json(p.read_text())


def test_records_have_every_design_field(tmp_path):
    cfg, manifest, paths = load(write_run(tmp_path))
    records = run_task(cfg, manifest, 0, extractor_factory=factory("ok"))
    assert [r.state for r in records] == ["done"] * 4
    data = json.loads(paths.status(records[0].obsid).read_text())
    for key in ("obsid", "task", "state", "backend", "config_hash", "started", "finished", "seconds", "host",
                "slurm_job", "rank", "output", "n_rows", "error", "error_kind"):
        assert key in data
    assert data["n_rows"] == 50 and data["output"] == str(paths.lc(records[0].obsid).relative_to(paths.root))
    lc = read_lightcurve(paths.lc(records[0].obsid))
    assert (lc.rate == fake_curve(records[0].obsid).rate).all()
    assert paths.log(records[0].obsid).read_text().count("extracting") == 1
    task_log = paths.task_log("task00000").read_text()
    assert all(f"{r.obsid} done in" in task_log for r in records)


def test_restart_skips_done_and_force_redoes(tmp_path):
    cfg, manifest, paths = load(write_run(tmp_path))
    first = run_task(cfg, manifest, 1, extractor_factory=factory("ok"))
    again = run_task(cfg, manifest, 1, extractor_factory=factory("ok"))
    assert [a.started for a in again] == [f.started for f in first]  # records untouched: skipped
    paths.lc(first[0].obsid).unlink()  # done record without its output is not done
    third = run_task(cfg, manifest, 1, extractor_factory=factory("ok"))
    assert third[0].finished != first[0].finished or third[0].started != first[0].started
    assert paths.lc(first[0].obsid).is_file()
    forced = run_task(cfg, manifest, 1, force=True, extractor_factory=factory("ok"))
    assert all(paths.log(r.obsid).read_text().count("extracting") == 1 for r in forced)


def test_changed_config_makes_old_records_not_done(tmp_path):
    cfg_path = write_run(tmp_path)
    cfg, manifest, paths = load(cfg_path)
    run_task(cfg, manifest, 0, extractor_factory=factory("ok"))
    assert RunSummary.collect(manifest, paths, cfg.hash()).counts()["done"] == 4
    cfg_path.write_text(cfg_path.read_text().replace("backend: stdprod", "backend: stdprod, stdprod_band: c"))
    cfg2 = load_config(cfg_path)
    summary = RunSummary.collect(manifest, paths, cfg2.hash())
    assert summary.counts()["done"] == 0 and summary.counts()["missing"] == 12
    records = run_task(cfg2, manifest, 0, extractor_factory=factory("ok"))
    assert all(r.config_hash == cfg2.hash() for r in records)


def test_failing_obsid_is_a_record_and_others_finish(tmp_path):
    cfg, manifest, paths = load(write_run(tmp_path))
    rows = manifest.rows_for_task(2)
    bad = rows[1].obsid.text
    records = run_task(cfg, manifest, 2, extractor_factory=factory(f"fail-{bad}"))
    states = {r.obsid: r.state for r in records}
    assert states.pop(bad) == "failed" and set(states.values()) == {"done"}
    rec = read_record(paths, bad)
    assert rec.error_kind == "data" and "corrupt" in rec.error and "\n" not in rec.error
    assert not paths.lc(bad).exists()


def _run_kit(cfg, task, mode, seconds=0.0, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, str(WORKERKIT), str(cfg), str(task), mode, str(seconds)],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def _wait_for_running(paths: RunPaths, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in visible_files(paths.status_dir):
            rec = StatusRecord.from_json(p.read_text())
            if rec.state == "running":
                return rec.obsid
        time.sleep(0.02)
    raise AssertionError("no ObsID started")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_records_interrupted_and_cleans_scratch(tmp_path, signum):
    cfg_path = write_run(tmp_path)
    cfg, manifest, paths = load(cfg_path)
    proc = _run_kit(cfg_path, 0, "slow", 30)
    obsid = _wait_for_running(paths)
    time.sleep(0.2)
    assert any(p.name.startswith(PREFIX) for p in cfg.scratch.root.iterdir())
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signum, err
    rec = read_record(paths, obsid)
    assert rec.state == "interrupted" and rec.error_kind == "site" and str(int(signum)) in rec.error
    assert list(cfg.scratch.root.iterdir()) == []
    assert not paths.lc(obsid).exists()
    assert "Traceback" not in err
    summary = RunSummary.collect(manifest, paths, cfg.hash())
    assert 0 in summary.tasks_to_rerun()


def test_disk_full_is_a_site_record_with_nothing_half_written(tmp_path):
    """Records fit, light curves do not: the ObsID in flight is failed (site) and the task stops."""
    cfg_path = write_run(tmp_path)
    cfg, manifest, paths = load(cfg_path)
    proc = _run_kit(cfg_path, 0, "ok", env={"WORKERKIT_FSIZE": "4096"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "disk full" in err
    first, *rest = manifest.rows_for_task(0)
    rec = read_record(paths, first.obsid.text)
    assert rec.state == "failed" and rec.error_kind == "site" and "disk full" in rec.error
    assert all(read_record(paths, r.obsid.text) is None for r in rest)  # not started: `rerun` takes them
    assert 0 in RunSummary.collect(manifest, paths, cfg.hash()).tasks_to_rerun()
    assert visible_files(paths.lc_dir) == []
    assert all_files(paths.lc_dir) == []  # no temporary left behind either
    assert list(cfg.scratch.root.iterdir()) == []


def test_two_workers_on_the_same_task(tmp_path):
    cfg_path = write_run(tmp_path)
    cfg, manifest, paths = load(cfg_path)
    procs = [_run_kit(cfg_path, 1, "slow", 0.3) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for row in manifest.rows_for_task(1):
        rec = read_record(paths, row.obsid.text)
        assert rec.state == "done"
        lc = read_lightcurve(paths.lc(row.obsid))
        assert (lc.rate == fake_curve(row.obsid.text).rate).all()
    assert_all_valid(paths)
    assert list(cfg.scratch.root.iterdir()) == []


def test_sigkill_then_rerun_completes_with_valid_files(tmp_path):
    cfg_path = write_run(tmp_path)
    cfg, manifest, paths = load(cfg_path)
    for delay in (0.05, 0.4, 0.9):
        proc = _run_kit(cfg_path, 2, "slow", 0.8)
        time.sleep(delay + 1.0)  # interpreter start-up, then part-way through the task
        proc.kill()
        proc.communicate()
        assert_all_valid(paths)
    # the killed worker's scratch is stale now; the next task reaps it
    assert any(p.name.startswith(PREFIX) for p in cfg.scratch.root.iterdir())
    records = run_task(cfg, manifest, 2, extractor_factory=factory("ok"))
    assert all(r.state == "done" for r in records)
    assert list(cfg.scratch.root.iterdir()) == []
    assert_all_valid(paths)


def test_stale_scratch_reaped_live_and_foreign_kept(tmp_path):
    root = tmp_path / "shm"
    root.mkdir()
    stale = root / f"{PREFIX}someone-1-task00001-999-abc"
    stale.mkdir()
    (stale / LOCK_NAME).write_text("")
    (stale / "junk").write_bytes(b"x")
    foreign = root / "other-tool-dir"
    foreign.mkdir()
    (root / f"{PREFIX}file-not-dir").write_text("keep")
    # a live owner in another process holds its lock
    live = root / f"{PREFIX}someone-2-task00002-998-def"
    live.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,sys,time,os; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX);"
         "print('locked', flush=True); time.sleep(60)", str(live / LOCK_NAME)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = reap_stale(root)
        assert removed == [stale]
        assert live.is_dir() and foreign.is_dir() and (root / f"{PREFIX}file-not-dir").is_file()
    finally:
        holder.kill()
        holder.communicate()
    assert reap_stale(root) == [live]


def test_workspace_is_private_locked_and_removed(tmp_path):
    with task_workspace(tmp_path / "shm", 0, "task00007", "123_7") as ws:
        assert ws.root.parent == tmp_path / "shm" and ws.root.name.startswith(PREFIX)
        assert "123_7" in ws.root.name and "task00007" in ws.root.name
        assert ws.pfiles.is_dir() and ws.work.is_dir()
        fd = os.open(ws.root / LOCK_NAME, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not ws.root.exists()


def test_scratch_falls_back_to_tmpdir(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "fallback"))
    (tmp_path / "fallback").mkdir()
    with task_workspace(blocker / "shm", 0, "t") as ws:
        assert ws.root.parent == tmp_path / "fallback"
    assert "unusable" in caplog.text


def test_default_dev_shm_scratch(tmp_path):
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("/dev/shm is not writable on this machine")
    with task_workspace(Path("/dev/shm"), 1, "t", "pytest") as ws:
        assert ws.root.parent == Path("/dev/shm")
    assert not ws.root.exists()


def test_a_neighbours_reaper_between_creating_and_locking_a_workspace_leaves_it_alone(tmp_path, monkeypatch):
    """Another array element on the node reaps at the worst moment: just before the new workspace's lock is taken."""
    real = fcntl.flock
    reaped: list[list[Path]] = []

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX and not reaped:
            reaped.append(reap_stale(tmp_path))  # a neighbour's reaper, run at exactly this moment
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with task_workspace(tmp_path, 0, "t") as ws:
        assert reaped == [[]] and ws.pfiles.is_dir() and ws.work.is_dir()
        assert reap_stale(tmp_path) == [] and ws.root.is_dir()
