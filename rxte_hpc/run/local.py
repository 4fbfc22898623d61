"""Executor: every task of the manifest on a process pool on this machine (the embedded default).

Each worker process (`pool.py`) runs exactly what an array element runs
(`worker.run_task`), so a local run, a Slurm array and `work --task I`
produce identical records.
Progress is a bar on a terminal and sparse plain lines in a batch log (core.progress).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
from datetime import datetime, timezone
from typing import Sequence

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import RxteError, SiteError, UsageError
from rxte_hpc.core.manifest import Manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.progress import ProgressLine
from rxte_hpc.core.scratch import candidate_roots, reap_stale
from rxte_hpc.core.status import effective_state, read_record, write_record
from rxte_hpc.run.pool import Done, Lost, WorkerPool, WorkerSetup
from rxte_hpc.run.preflight import Checked, preflight

log = logging.getLogger(__name__)


def default_workers() -> int:
    """CPUs Slurm gave us, else the CPUs this process may use."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def worker_count(workers: int | None, n_tasks: int) -> int:
    """How many worker processes a run starts: as asked (default: the CPUs available), at most one per task."""
    return max(1, min(workers or default_workers(), n_tasks))


def run_local(config: Config, manifest: Manifest, *, workers: int | None = None, force: bool = False,
              progress: bool = True, checked: Checked | None = None) -> dict[str, int]:
    """Run every task on `workers` processes; return counts of final ObsID states.

    `progress`: a bar on a terminal, sparse lines elsewhere, on stderr (the
    CLI's; the Python API passes False unless asked).

    Checks everything checkable first (`preflight`: UsageError, nothing
    written), unless the caller did (`checked`); the workers get the parsed
    config, the manifest and that result, and check nothing again. A signal (SIGINT/SIGTERM) stops the handing out of tasks at
    once and is passed on to the busy workers, which record their ObsIDs in
    flight as `interrupted` and clean their scratch; then Interrupted is
    raised (exit 128 + signal). A second signal kills the workers at once.
    A worker killed outright (SIGKILL, OOM) is replaced and the run goes on;
    the ObsID it held is recorded `failed` (site), its scratch reaped and its
    tool processes killed before this returns. A task stopped by a machine
    failure (a full or read-only run directory) stops the handing out of
    tasks (the others would meet it too); the busy ones finish, and the error
    is raised as one line (SiteError, exit 1). `rerun`/`run` does the rest.
    """
    if checked is None:
        checked = preflight(config, manifest)
    workers = worker_count(workers, manifest.n_tasks)
    tasks = list(range(manifest.n_tasks))
    counts: dict[str, int] = {}
    tally = {"obsids": 0, "failed": 0}

    def describe(done: int, elapsed_s: float) -> str:
        return (f"{done}/{len(tasks)} tasks, {tally['obsids']}/{len(manifest.rows)} ObsIDs, "
                f"{tally['failed']} failed, {elapsed_s:.0f} s")

    shown = ProgressLine(len(tasks), describe, show=progress)
    stopped: list[Done] = []
    lost: list[Lost] = []
    paths = RunPaths(config.run_dir)

    def add(states: Sequence[str]) -> None:
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        tally["obsids"] += len(states)
        tally["failed"] += sum(s == "failed" for s in states)
        shown.advance()

    def on_done(done: Done) -> None:
        if done.error is not None:
            if not stopped:  # the run directory or the machine failed: every other task would meet it too
                log.error("task %d stopped: %s; starting no more tasks", done.task, done.error)
                pool.drain()
            stopped.append(done)
            add(_task_states(config, manifest, paths, done.task))
        else:
            add(done.states)

    def on_lost(gone: Lost) -> None:
        lost.append(gone)
        add(record_lost(config, manifest, paths, gone))
        reap_dead_scratch(config)

    pool = WorkerPool(workers, WorkerSetup(config, manifest, checked, force))
    log.info("running %d tasks (%d ObsIDs) on %d local workers", len(tasks), len(manifest.rows), workers)
    try:
        pool.run(tasks, on_done, on_lost)
    finally:
        if lost:
            reap_dead_scratch(config)
    if stopped:
        first = stopped[0]
        more = f" (and {len(stopped) - 1} more tasks)" if len(stopped) > 1 else ""
        log.info("%d of %d tasks not started after that", len(tasks) - shown.done, len(tasks))
        raise _error_like(first.exit_code, f"task {first.task} stopped: {first.error}{more}")
    return counts


def _error_like(exit_code: int, message: str) -> RxteError:
    return UsageError(message) if exit_code == UsageError.exit_code else SiteError(message)


def _task_states(config: Config, manifest: Manifest, paths: RunPaths, task: int) -> list[str]:
    """What each ObsID of `task` is now, from the records (for a task that did not report states)."""
    config_hash = config.hash()
    return [effective_state(read_record(paths, r.obsid.text), paths, config_hash) for r in manifest.rows_for_task(task)]


def record_lost(config: Config, manifest: Manifest, paths: RunPaths, gone: Lost) -> list[str]:
    """Record the ObsIDs a dead worker left `running`: interrupted when we stopped it, else failed (site).

    Only records of this host started after the task was handed out are the
    dead worker's; anything else `running` belongs to someone alive.
    """
    host = socket.gethostname()
    state, kind = ("interrupted", "site") if gone.by_us else ("failed", "site")
    why = gone.describe()
    for row in manifest.rows_for_task(gone.task):
        rec = read_record(paths, row.obsid.text)
        if rec is None or rec.state != "running" or rec.host != host or rec.started < gone.since:
            continue
        final = dataclasses.replace(rec, state=state, finished=_now(), error=why, error_kind=kind)
        try:
            write_record(paths, final)
        except SiteError as exc:
            log.error("%s: cannot record that its worker died (%s)", row.obsid, exc)
            continue
        log.warning("%s: %s; recorded %s (site): `run` or `rerun` redoes it", row.obsid, why, state)
    return _task_states(config, manifest, paths, gone.task)


def reap_dead_scratch(config: Config) -> None:
    """Remove the scratch of dead workers now (and kill their tool processes), not at the next run."""
    for root in candidate_roots(config.scratch.root):
        reap_stale(root)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
