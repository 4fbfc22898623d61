"""Signals and killed workers in a real `rxte-hpc run`: real processes, real signals, a real HEADAS tree.

The HEADAS tree (tests/kit/slowtools.py) has a pcaprepobsid that hangs in a
grandchild `sleep`, so every ObsID is caught in the middle of a tool: what a
Ctrl-C, Slurm's SIGTERM or the OOM killer meets with real HEASoft.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from rxte_hpc.core.config import load_config
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import RunSummary
from slowtools import alive, env_for, kill_leftovers, make_headas, parent_of, tool_pids, wait_for, write_config
from where import REPO

N_OBS = 12


@pytest.fixture
def leftovers(tmp_path):
    """Teardown: kill whatever tools a failing test left running."""
    yield tmp_path / "markers"
    kill_leftovers(tmp_path / "markers")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from rxte_hpc.sim.simulate import simulate_archive

    return simulate_archive(tmp_path_factory.mktemp("sig-archive"), n_obs=N_OBS, seed=5)


@pytest.fixture(scope="module")
def headas(tmp_path_factory):
    return make_headas(tmp_path_factory.mktemp("slow-headas") / "headas")


def start_run(cfg: Path, env: dict[str, str], workers: int = 2) -> subprocess.Popen:
    # Its own session, as a shell gives a foreground job: signals go to the whole group, like a Ctrl-C.
    return subprocess.Popen([sys.executable, "-m", "rxte_hpc", "run", str(cfg), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cfg.parent,
                            start_new_session=True)


def records(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run / "status").rglob("*.json")) if p.name != "index.json"}


def started_after(recs: dict[str, dict], moment: datetime) -> list[str]:
    return [o for o, r in recs.items() if datetime.fromisoformat(r["started"]) > moment]


def scratch_left(tmp: Path) -> list[Path]:
    return sorted((tmp / "scratch").glob("rxte-hpc-*"))


def tools(markers: Path, kind: str = "tool") -> dict[str, int]:
    return {k.split("-", 1)[1]: v for k, v in tool_pids(markers).items() if k.startswith(kind + "-")}


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_run_promptly_and_records_obsids_in_flight(archive, headas, tmp_path, leftovers, signum):
    cfg = write_config(tmp_path, archive.root)
    markers = tmp_path / "markers"
    proc = start_run(cfg, env_for(headas, markers))
    try:
        wait_for(lambda: len(tools(markers)) == 2 and len(tools(markers, "sleep")) == 2, what="two tools running")
        in_flight = set(tools(markers))
        moment = datetime.now().astimezone()
        t0 = time.monotonic()
        os.killpg(proc.pid, signum)  # what a terminal's Ctrl-C (or a shell's kill of the job) does
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        _end(proc)
    print(f"signal {int(signum)}: run ended in {took:.2f} s")
    assert proc.returncode == 128 + signum, err
    assert took < 5.0
    assert "Traceback" not in err, err
    assert f"interrupted by signal {int(signum)}" in err
    recs = records(tmp_path / "run")
    assert set(recs) == in_flight  # the queued tasks never started
    assert {r["state"] for r in recs.values()} == {"interrupted"}
    assert all(r["error_kind"] == "site" for r in recs.values())
    assert not started_after(recs, moment)
    assert set(tools(markers)) == in_flight  # no new tool either
    assert not [p for p in tool_pids(markers).values() if alive(p)], "a tool outlived its worker"
    assert not scratch_left(tmp_path)


def test_second_signal_exits_at_once(archive, headas, tmp_path, leftovers):
    """A worker that cannot stop (here: SIGSTOPped, as one stuck in a dead filesystem): the second Ctrl-C ends it."""
    cfg = write_config(tmp_path, archive.root)
    markers = tmp_path / "markers"
    proc = start_run(cfg, env_for(headas, markers))
    try:
        wait_for(lambda: len(tools(markers)) == 2, what="two tools running")
        stuck_obsid, tool = sorted(tools(markers).items())[0]
        worker = parent_of(tool)
        os.kill(worker, signal.SIGSTOP)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1.5)
        assert proc.poll() is None  # waiting for the stuck worker (grace period)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        _end(proc)
    print(f"second signal: run ended in {took:.2f} s")
    assert took < 2.0
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    recs = records(tmp_path / "run")
    assert recs[stuck_obsid]["state"] == "interrupted"  # recorded for it by `run`
    assert all(r["state"] != "running" for r in recs.values())
    assert not alive(worker)
    assert not [p for p in tool_pids(markers).values() if alive(p)], "a tool outlived its worker"
    assert not scratch_left(tmp_path)


def test_worker_killed_outright_run_goes_on(archive, headas, tmp_path, leftovers):
    """SIGKILL of one worker (the OOM killer): no BrokenProcessPool; the run finishes the other tasks."""
    cfg = write_config(tmp_path, archive.root)
    markers = tmp_path / "markers"
    proc = start_run(cfg, env_for(headas, markers, first=60, rest=0.05))
    try:
        wait_for(lambda: (markers / ".first" / "obsid").is_file(), what="the first tool")
        victim_obsid = (markers / ".first" / "obsid").read_text().strip()
        tool = tools(markers)[victim_obsid]
        grandchild = tools(markers, "sleep")[victim_obsid]
        worker = parent_of(tool)
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        _end(proc)
    assert proc.returncode == 1, err  # some ObsIDs failed
    assert "Traceback" not in err and "BrokenProcessPool" not in err, err
    assert "SIGKILL" in err
    recs = records(tmp_path / "run")
    config = load_config(cfg)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest)
    victim_task = manifest.row_for_obsid(victim_obsid).task
    others = {r.obsid.text for r in manifest.rows if r.task != victim_task}
    assert others <= set(recs)  # every other task was still run
    victim = recs[victim_obsid]
    assert victim["state"] == "failed" and victim["error_kind"] == "site" and "SIGKILL" in victim["error"]
    assert all(r["state"] != "running" for r in recs.values())
    assert not alive(tool) and not alive(grandchild), "the dead worker's tools outlived it"
    assert not scratch_left(tmp_path)
    summary = RunSummary.collect(manifest, paths, config.hash())
    assert victim_task in summary.tasks_to_rerun()  # `rerun` takes it


def test_run_killed_outright_workers_still_record(archive, headas, tmp_path, leftovers):
    """SIGKILL of `run` itself: its workers get SIGTERM from the kernel and record their ObsIDs."""
    cfg = write_config(tmp_path, archive.root)
    markers = tmp_path / "markers"
    proc = start_run(cfg, env_for(headas, markers))
    try:
        wait_for(lambda: len(tools(markers)) == 2 and len(tools(markers, "sleep")) == 2, what="two tools running")
        in_flight = set(tools(markers))
        workers = {parent_of(p) for p in tools(markers).values()}
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        wait_for(lambda: not any(alive(w) for w in workers), timeout=10, what="workers to end")
    finally:
        _end(proc)
    recs = records(tmp_path / "run")
    assert set(recs) == in_flight
    assert {r["state"] for r in recs.values()} == {"interrupted"}
    assert all("signal 15" in r["error"] for r in recs.values())
    wait_for(lambda: not [p for p in tool_pids(markers).values() if alive(p)], timeout=5, what="tools to end")
    assert not scratch_left(tmp_path)


def test_die_with_parent_kills_the_child_when_its_parent_is_killed(tmp_path):
    """core.procs.die_with_parent as a preexec_fn: the kernel kills the tool when its worker dies outright."""
    script = (
        "import subprocess, sys, time\n"
        "from rxte_hpc.core.procs import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent(), start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(child), timeout=5, what="the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.communicate()


def test_second_signal_during_cleanup_exits_at_once_and_runs_emergency_callbacks(tmp_path):
    """run/signals.py itself: the first signal raises Interrupted; one during the (slow) cleanup ends the process."""
    flag = tmp_path / "emergency-ran"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from rxte_hpc.core.errors import Interrupted\n"
        "from rxte_hpc.run.signals import interrupt_on_signals, on_second_signal\n"
        "with interrupt_on_signals(), on_second_signal(lambda: Path(sys.argv[1]).write_text('yes')):\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "    except Interrupted:\n"
        "        print('cleaning', flush=True)\n"
        "        time.sleep(60)  # a cleanup stuck on a dead filesystem\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(flag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "cleaning"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 2.0
    assert proc.returncode == 128 + signal.SIGINT
    assert "Traceback" not in err and err.strip() == "rxte-hpc: second signal 2: exiting at once", err
    assert flag.read_text() == "yes"


def test_ctrl_c_twice_while_workers_start_is_quiet(archive, headas, tmp_path, leftovers):
    """Ctrl-C, Ctrl-C while the worker processes are still importing: no traceback, nothing left running."""
    cfg = write_config(tmp_path, archive.root)
    markers = tmp_path / "markers"
    proc = start_run(cfg, env_for(headas, markers))
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the pool starts right after this line
            if "local workers" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        _end(proc)
    # 130, or killed by the second SIGINT itself when it lands after the CLI handled the first (a shell shows 130)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert all(r["state"] != "running" for r in records(tmp_path / "run").values())
    assert not scratch_left(tmp_path)
