"""The MPI executor under a real `mpiexec` (pip's MPICH) over a small simulated archive.

Every test starts real processes: `mpiexec -n 2 python -m rxte_hpc work CONFIG --mpi`,
or `tests/kit/mpi_helpers.py` (the same `run_mpi` with a slowed-down extractor) when
a rank has to be caught in the middle of an ObsID. The archive is simulated
once per session and shared read-only through a tree of symlinks per test, so
a test may break one ObsID's input without touching the others.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rxte_hpc.plan import planner
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.run.mpi.executor import check_not_independent, size_claimed_by_launcher
from rxte_hpc.core.paths import RunPaths
from mpikit import MPIEXEC, mpi_env, mpi_work, needs_mpiexec
from where import KIT

pytestmark = pytest.mark.mpi

N_OBS = 16
HELPER = KIT / "mpi_helpers.py"




SHM = Path("/dev/shm")
SHM_PATTERNS = ("mpich_shm_*", "sem.mp-*")


def _shm_files() -> set[str]:
    return {p.name for pattern in SHM_PATTERNS for p in SHM.glob(pattern)} if SHM.is_dir() else set()


def _mapped_shm() -> set[str]:
    """Names under /dev/shm some live process still maps (another job's: never touched)."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "/dev/shm/" in line:
                names.add(line.split("/dev/shm/", 1)[1].split()[0])
    return names


@pytest.fixture(autouse=True)
def no_shm_left_behind():
    """MPICH leaves `mpich_shm_*` segments in /dev/shm when a rank is killed: remove the ones this test made."""
    before = _shm_files()
    yield
    for name in sorted(_shm_files() - before - _mapped_shm()):
        try:
            (SHM / name).unlink()
        except FileNotFoundError:
            pass


@pytest.fixture(scope="session")
def shared_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rxte_hpc.sim.simulate import simulate_archive

    root = tmp_path_factory.mktemp("mpi-archive") / "archive"
    simulate_archive(root, n_obs=N_OBS, seed=7)
    return root


def _overlay(shared: Path, dest: Path) -> Path:
    """A private view of the shared archive: real directories, symlinked files."""
    shutil.copytree(shared, dest, symlinks=True, copy_function=os.symlink)
    return dest


def _setup(tmp_path: Path, shared: Path, obs_per_task: int = 3) -> Path:
    archive = _overlay(shared, tmp_path / "archive")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "run_dir: run\n"
        'target: {name: "eta car", ra: 161.2647, dec: -59.6844, radius_deg: 0.1}\n'
        "source: {kind: archive}\n"
        f"archive: {{root: {archive}}}\n"
        "extract: {backend: stdprod}\n"
        "scratch: {root: scratch}\n"
        f"tasks: {{obs_per_task: {obs_per_task}}}\n"
    )
    config = load_config(cfg)
    planner.plan(config).write(RunPaths(config.run_dir).manifest)
    return cfg


def _records(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RunPaths(run).status_files())}


def _extractions(run: Path) -> Counter:
    """How often each ObsID was extracted, from the per-rank/per-task logs (one line per ObsID processed)."""
    counts: Counter = Counter()
    for log in (run / "logs" / "tasks").rglob("*.log"):
        for obsid in re.findall(r": (\d{5}-\d{2}-\d{2}-\d{2}\w*) (?:done|failed|no_data) in", log.read_text()):
            counts[obsid] += 1
    return counts


def _scratch_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "scratch").glob("rxte-hpc-*"))


def _manifest_obsids(cfg: Path) -> set[str]:
    return {r.obsid.text for r in read_manifest(cfg.parent / "run" / "manifest.ecsv").rows}


# ---------------------------------------------------------------- no processes
def test_launcher_size_and_independent_ranks_detection() -> None:
    assert size_claimed_by_launcher({"SLURM_NTASKS": "4"}) == ("SLURM_NTASKS", 4)
    assert size_claimed_by_launcher({"PMI_SIZE": "1", "SLURM_NTASKS": "4"}) == ("PMI_SIZE", 1)  # mpiexec -n 1 in an allocation
    assert size_claimed_by_launcher({}) is None
    check_not_independent(1, {"PMI_SIZE": "1", "SLURM_NTASKS": "2"})
    check_not_independent(2, {"SLURM_NTASKS": "2"})
    with pytest.raises(UsageError, match="srun --mpi=pmi2"):
        check_not_independent(1, {"SLURM_STEP_NUM_TASKS": "2"})


# ---------------------------------------------------------------- real mpiexec
@needs_mpiexec
def test_dynamic_two_ranks_each_obsid_once(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    proc = mpi_work(cfg)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    records = _records(run)
    assert set(records) == _manifest_obsids(cfg)
    assert {r["state"] for r in records.values()} <= {"done", "no_data"}
    assert {r["rank"] for r in records.values()} == {0, 1}  # both ranks extracted
    manifest_task = {r.obsid.text: r.task for r in read_manifest(run / "manifest.ecsv").rows}
    assert all(rec["task"] == manifest_task[o] for o, rec in records.items())
    assert set(_extractions(run).values()) == {1} and set(_extractions(run)) == set(records)
    assert re.search(r"^\s+0\s.*\n\s+1\s", proc.stdout, re.M), proc.stdout  # the rank table
    assert not _scratch_dirs(tmp_path)
    # A second run finds everything done and extracts nothing again.
    again = mpi_work(cfg)
    assert again.returncode == 0, again.stderr
    assert set(_extractions(run).values()) == {1}


@needs_mpiexec
def test_one_rank_runs_serially(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    proc = mpi_work(cfg, n=1)
    assert proc.returncode == 0, proc.stderr
    records = _records(tmp_path / "run")
    assert set(records) == _manifest_obsids(cfg)
    assert {r["rank"] for r in records.values()} == {0}
    assert [p.name for p in RunPaths(tmp_path / "run").task_log_files()] == ["mpi-rank0000.log"]


@needs_mpiexec
def test_broken_obsid_fails_alone(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    victim = sorted((tmp_path / "archive").glob("AO*/P*/*/stdprod/*_n2a.lc.gz"))[3]
    data = victim.read_bytes()
    victim.unlink()  # the symlink: the shared original stays intact
    victim.write_bytes(data[: len(data) // 3])
    obsid = victim.parent.parent.name
    proc = mpi_work(cfg)
    assert proc.returncode == 1, proc.stderr
    records = _records(tmp_path / "run")
    assert records[obsid]["state"] == "failed" and records[obsid]["error_kind"] == "data"
    others = {o: r["state"] for o, r in records.items() if o != obsid}
    assert set(others.values()) <= {"done", "no_data"} and len(others) == N_OBS - 1


@needs_mpiexec
def test_static_schedule_runs_tasks_by_rank(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    proc = mpi_work(cfg, "--schedule", "static")
    assert proc.returncode == 0, proc.stderr
    records = _records(tmp_path / "run")
    assert set(records) == _manifest_obsids(cfg)
    assert all(r["rank"] == r["task"] % 2 for r in records.values())
    logs = sorted(p.name for p in RunPaths(tmp_path / "run").task_log_files())
    assert logs == [f"task{t:05d}.log" for t in range(len(logs))]  # what array elements write


@needs_mpiexec
def test_without_thread_support_rank0_interleaves(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    proc = mpi_work(cfg, env=mpi_env(MPI4PY_RC_THREAD_LEVEL="single"))
    assert proc.returncode == 0, proc.stderr
    assert "between rank 0's own ObsIDs" in proc.stderr
    records = _records(tmp_path / "run")
    assert set(records) == _manifest_obsids(cfg)
    assert set(_extractions(tmp_path / "run").values()) == {1}


@needs_mpiexec
def test_gather_after_ranks(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    proc = mpi_work(cfg, "--gather")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "run" / "merged.lc").is_file()


def test_independent_size1_processes_refuse(tmp_path: Path, shared_archive: Path) -> None:
    """Plain `srun` without --mpi=pmi2: N processes of size 1 that all claim rank 0."""
    pytest.importorskip("mpi4py")
    cfg = _setup(tmp_path, shared_archive)
    env = mpi_env(SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2")
    cmd = [sys.executable, "-m", "rxte_hpc", "work", str(cfg), "--mpi"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=40) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 2, err
        assert "all claim rank 0" in err and "srun --mpi=pmi2" in err
    assert not (tmp_path / "run" / "status").exists() or not list((tmp_path / "run" / "status").iterdir())


# ---------------------------------------------------------------- ranks that die or are stopped
def _start_helper(cfg: Path, markers: Path, *launcher: str, delay: float = 0.4,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [MPIEXEC, *launcher, "-n", "2", sys.executable, str(HELPER), str(cfg), "--markers", str(markers),
           "--delay", str(delay)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or mpi_env(),
                            cwd=cfg.parent, start_new_session=True)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _rank_pid(markers: Path, rank: int) -> int:
    return int(next(markers.glob(f"r{rank}-*")).read_text())


def _finish_with_run_task(cfg: Path) -> None:
    """What `rerun`/`run` does later: the tasks with missing ObsIDs, serially."""
    from rxte_hpc.core.status import RunSummary
    from rxte_hpc.run.worker import run_task

    config = load_config(cfg)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest)
    summary = RunSummary.collect(manifest, paths, config.hash())
    tasks = summary.tasks_to_rerun()
    assert tasks, "the killed rank left nothing to redo?"
    for task in tasks:
        run_task(config, manifest, task)
    assert RunSummary.collect(manifest, paths, config.hash()).complete


LOST_ENV = {"RXTE_HPC_MPI_HEARTBEAT_S": "0.2", "RXTE_HPC_MPI_DEAD_AFTER_S": "1.5"}


def _lose_rank_1(proc: subprocess.Popen, markers: Path, signum: int, start_s: float = 30.0) -> tuple[str, str]:
    try:
        _wait_for(lambda: markers.is_dir() and any(markers.glob("r1-*")) or proc.poll() is not None, timeout=start_s)
        if proc.poll() is not None:  # the launcher ended before rank 1 started: say what it printed
            out, err = proc.communicate()
            raise AssertionError(f"launcher exited {proc.returncode} before rank 1 started:\n{out}\n{err}")
        os.kill(_rank_pid(markers, 1), signum)
        return proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()  # always drain and close its pipes, so no unclosed file leaks into a later test


def _assert_survived(tmp_path: Path, cfg: Path, out: str, err: str) -> None:
    """Rank 0 noticed the silence, did every other ObsID, and recorded the lost one failed (site)."""
    assert "declared dead" in err and "MPI_Abort" in err, err
    records = _records(tmp_path / "run")
    assert len(records) == N_OBS, err  # rank 0 did all the rest
    states = Counter(r["state"] for r in records.values())
    assert states["running"] == 0, err
    lost = [r for r in records.values() if r["state"] == "failed" and r["error_kind"] == "site"]
    assert len(lost) == 1 and lost[0]["rank"] == 1 and "rank 1" in lost[0]["error"], records
    assert re.search(r"^\s+1\s.*\bdead\b", out, re.M), out
    _finish_with_run_task(cfg)


@needs_mpiexec
def test_stopped_rank_is_survived(tmp_path: Path, shared_archive: Path) -> None:
    """A rank that stops answering (SIGSTOP: a hung node, a process stuck in the filesystem), under any launcher.

    Nobody tears the job down, so rank 0 must notice the silence, finish the
    remaining ObsIDs itself, record the lost one failed (site), and end the job.
    """
    cfg = _setup(tmp_path, shared_archive)
    markers = tmp_path / "markers"
    proc = _start_helper(cfg, markers, env=mpi_env(**LOST_ENV), delay=0.3)
    out, err = _lose_rank_1(proc, markers, signal.SIGSTOP)
    assert proc.returncode != 0
    _assert_survived(tmp_path, cfg, out, err)


@needs_mpiexec
def test_plain_mpiexec_tears_the_job_down_when_a_rank_is_killed(tmp_path: Path, shared_archive: Path) -> None:
    """What the docs state for MPICH's hydra: a rank killed by a signal makes it SIGKILL every rank.

    (`-disable-auto-cleanup` does not change that for a rank killed by a
    signal in MPICH 5.0: measured, both ranks end with signal 9.) Nobody can
    record anything then; the job still ends at once (nothing hangs) and a
    later run completes it. Surviving a killed rank needs `srun` (below).
    """
    cfg = _setup(tmp_path, shared_archive)
    markers = tmp_path / "markers"
    proc = _start_helper(cfg, markers, env=mpi_env(**LOST_ENV), delay=0.3)
    out, err = _lose_rank_1(proc, markers, signal.SIGKILL)
    assert proc.returncode != 0
    assert "BAD TERMINATION" in out + err
    assert len(_records(tmp_path / "run")) < N_OBS  # the survivors were killed too
    _finish_with_run_task(cfg)


def _srun_ready() -> bool:
    if shutil.which("srun") is None or shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    states = proc.stdout.split()
    return proc.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states)


@needs_mpiexec
@pytest.mark.slurm
def test_lost_rank_is_survived_under_srun(tmp_path: Path, shared_archive: Path) -> None:
    """`srun --mpi=pmi2` (what `submit --mpi` runs) with Slurm's default KillOnBadExit=0 survives a killed rank."""
    if not _srun_ready():
        pytest.skip("no usable Slurm node (scripts/start-slurm.sh starts one)")
    cfg = _setup(tmp_path, shared_archive)
    markers = tmp_path / "markers"
    cmd = ["srun", "--mpi=pmi2", "-n", "2", f"--chdir={cfg.parent}", "--kill-on-bad-exit=0", sys.executable,
           str(HELPER), str(cfg), "--markers", str(markers), "--delay", "0.3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(**LOST_ENV), cwd=cfg.parent, start_new_session=True)
    out, err = _lose_rank_1(proc, markers, signal.SIGKILL, start_s=120.0)  # the node may be busy: srun waits
    assert proc.returncode != 0
    _assert_survived(tmp_path, cfg, out, err)


@needs_mpiexec
def test_sigterm_cleans_scratch_and_records_interrupted(tmp_path: Path, shared_archive: Path) -> None:
    cfg = _setup(tmp_path, shared_archive)
    markers = tmp_path / "markers"
    proc = _start_helper(cfg, markers, delay=1.5)
    try:
        _wait_for(lambda: markers.is_dir() and any(markers.glob("r0-*")) and any(markers.glob("r1-*")))
        time.sleep(0.3)
        assert len(_scratch_dirs(tmp_path)) == 2
        os.kill(proc.pid, signal.SIGTERM)  # mpiexec passes it on to every rank, as srun does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not _scratch_dirs(tmp_path), err
    records = _records(tmp_path / "run")
    interrupted = [r for r in records.values() if r["state"] == "interrupted"]
    assert {r["rank"] for r in interrupted} == {0, 1}, err
    assert all(r["state"] != "running" for r in records.values())
