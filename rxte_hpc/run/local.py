"""Executor: every task of the manifest on a process pool on this machine (the embedded default).

Each pool process runs exactly what an array element runs (`worker.run_task`),
so a local run, a Slurm array and `work --task I` produce identical records.
Progress is a bar on a terminal and plain lines in a batch log.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rxte_hpc.core.config import Config, load_config
from rxte_hpc.core.errors import Interrupted
from rxte_hpc.core.manifest import Manifest, read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.run.signals import interrupt_on_signals
from rxte_hpc.run.worker import run_task

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


class Progress:
    """A one-line bar on a terminal; a plain line per step elsewhere (batch logs)."""

    def __init__(self, total_tasks: int, total_obsids: int, stream: TextIO | None = None) -> None:
        self.total_tasks = total_tasks
        self.total_obsids = total_obsids
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.tasks = 0
        self.obsids = 0
        self.failed = 0
        self.t0 = time.monotonic()

    def update(self, n_obsids: int, n_failed: int) -> None:
        self.tasks += 1
        self.obsids += n_obsids
        self.failed += n_failed
        elapsed = time.monotonic() - self.t0
        text = (
            f"{self.tasks}/{self.total_tasks} tasks, {self.obsids}/{self.total_obsids} ObsIDs, "
            f"{self.failed} failed, {elapsed:.0f} s"
        )
        if self.tty:
            width = 30
            filled = int(width * self.tasks / max(1, self.total_tasks))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}")
            if self.tasks == self.total_tasks:
                self.stream.write("\n")
        else:
            self.stream.write(f"progress: {text}\n")
        self.stream.flush()


@dataclass(frozen=True)
class TaskResult:
    task: int
    states: tuple[str, ...]


def _pool_task(config_path: str, run_dir: str, task: int, force: bool) -> TaskResult:
    config = load_config(Path(config_path))
    manifest = read_manifest(RunPaths(Path(run_dir)).manifest)
    records = run_task(config, manifest, task, force=force)
    return TaskResult(task, tuple(r.state for r in records))


def run_local(config: Config, manifest: Manifest, *, workers: int | None = None, force: bool = False) -> dict[str, int]:
    """Run every task on `workers` processes; return counts of final ObsID states.

    A signal (SIGINT/SIGTERM) is passed on to the pool processes, which record
    the ObsIDs in flight as interrupted and clean their scratch.
    """
    workers = max(1, min(workers or default_workers(), manifest.n_tasks))
    tasks = list(range(manifest.n_tasks))
    progress = Progress(len(tasks), len(manifest.rows))
    counts: dict[str, int] = {}
    paths = RunPaths(config.run_dir)
    log.info("running %d tasks (%d ObsIDs) on %d local workers", len(tasks), len(manifest.rows), workers)
    context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: set[Future] = set()
        try:
            with interrupt_on_signals():
                pending = {pool.submit(_pool_task, str(config.path), str(paths.root), t, force) for t in tasks}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        result = fut.result()
                        for state in result.states:
                            counts[state] = counts.get(state, 0) + 1
                        progress.update(len(result.states), sum(s == "failed" for s in result.states))
        except Interrupted as stop:
            _forward(pool, stop.signum)
            for fut in pending:
                fut.cancel()
            raise
    return counts


def _forward(pool: ProcessPoolExecutor, signum: int) -> None:
    """Pass a signal on to the pool's processes so each can record and clean up."""
    processes = getattr(pool, "_processes", None) or {}
    for pid in list(processes):
        try:
            os.kill(pid, signum if signum != signal.SIGINT else signal.SIGTERM)
        except ProcessLookupError:
            pass
