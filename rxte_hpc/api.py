"""The Python API: one `Campaign` per config, for notebooks and scripts; the CLI is a thin layer over it.

    from rxte_hpc import Campaign
    c = Campaign.from_config("configs/demo.yaml")
    c.plan(); c.run(workers=2)
    p = c.gather()
    lc = p.table()            # the merged light curve, header in lc.meta

Every method returns a typed result (rxte_hpc.run.results, and `Products`
here) with `ok`, `exit_code`, a short repr and `raise_for_failures()`; failed
ObsIDs are in the result, not raised. Errors that stop a command raise the
package's own errors (importable from `rxte_hpc`: the same types the CLI maps
to exit codes 2 and 1). Nothing is printed: messages go to the `rxte_hpc`
logger, which the caller configures (the CLI does; a notebook calls
`logging.basicConfig(level=logging.INFO, force=True)`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from rxte_hpc.core.config import Config, load_config
from rxte_hpc.core.errors import RxteError, UsageError
from rxte_hpc.core.manifest import Manifest, check_run_dir, read_manifest
from rxte_hpc.core.obsid import InvalidObsID, ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import RunSummary
from rxte_hpc.core.statusreport import StatusReport
from rxte_hpc.run.results import (
    SHOWN_ITEMS, FetchResult, MpiResult, Outcome, RunResult, RunStatus, SubmitResult, WorkResult, few,
)

if TYPE_CHECKING:  # astropy.table costs ~0.35 s to import: only the calls that return a Table pay it
    from astropy.table import Table


@dataclass(frozen=True)
class Product:
    """One file a gather wrote: `kind` is lightcurve | hardness | plot; band (light curves) and target.

    `target` is the configured target (with several `targets:`, each has its
    own products under `targets/<target>/`), or the one target's name.
    """

    path: Path
    kind: str
    target: str | None
    band: str | None


@dataclass(frozen=True)
class LeftOut:
    """An ObsID of the plan that is not in the merged products: `failed`, `missing` or `no_data`, and why."""

    obsid: str
    state: str
    reason: str


@dataclass(frozen=True, repr=False)
class Products(Outcome):
    """What `Campaign.gather` wrote, what it left out, and the merged light curves as astropy Tables.

    Not `ok` (exit code 1) when ObsIDs failed or are missing, unless gathered
    with `allow_missing`; `raise_for_failures()` raises `Incomplete` then.
    """

    paths: tuple[Product, ...]
    code: int
    summary: str
    n_used: int
    n_failed: int
    n_missing: int
    left_out: tuple[LeftOut, ...] = ()

    @property
    def exit_code(self) -> int:
        return self.code

    @property
    def ok(self) -> bool:
        return self.code == 0

    def lines(self) -> list[str]:
        labels = {"lightcurve": "light curve:", "hardness": "hardness:", "plot": "plot:"}
        return [f"{labels.get(p.kind, p.kind + ':'):12s} {p.path}" for p in self.paths] + self.summary.split("\n")

    def __repr__(self) -> str:
        bad = [o for o in self.left_out if o.state != "no_data"]
        head = (f"gather: {len(self.lightcurves())} merged light curve(s) of {self.n_used} ObsIDs, "
                f"{len(self.paths)} file(s); {self.n_failed} failed, {self.n_missing} missing")
        shown = [f"  {p.kind}: {p.path}" for p in self.paths[:SHOWN_ITEMS]]
        left = [f"  left out: {few([f'{o.obsid} ({o.state})' for o in bad])}"] if bad else []
        return "\n".join([head, *shown, *left])

    def rows(self) -> list[tuple[str, str]]:
        return [(p.kind + (f" {p.band}" if p.band else ""), str(p.path)) for p in self.paths] + [
            ("used", str(self.n_used)), ("failed", str(self.n_failed)), ("missing", str(self.n_missing))]

    def failure(self) -> str:
        bad = [o for o in self.left_out if o.state != "no_data"]
        return (f"gather left out {self.n_failed} failed and {self.n_missing} missing ObsID(s): "
                f"{few([f'{o.obsid} ({o.state}: {o.reason})' for o in bad], 3)}")

    def lightcurves(self) -> list[Product]:
        return [p for p in self.paths if p.kind == "lightcurve"]

    def path(self, band: str | None = None, target: str | None = None) -> Path:
        """The merged light curve of one band and target (named as configured; case, blanks, '_' and '-'
        ignored); None picks the only one (UsageError if several)."""
        from rxte_hpc.core.config import target_key

        found = self.lightcurves()
        found = [p for p in found if target is None or target_key(p.target or "") == target_key(target)]
        found = [p for p in found if band is None or (p.band or "").lower() == band.lower()]
        if len(found) != 1:
            have = ", ".join(f"band={p.band} target={p.target}" for p in self.lightcurves())
            asked = f"band={band} target={target}"
            what = "no merged light curve" if not found else "several merged light curves"
            raise UsageError(f"{what} for {asked}; this gather wrote: {have}")
        return found[0].path

    def table(self, band: str | None = None, target: str | None = None) -> Table:
        """The merged light curve (its RATE extension) as an astropy Table; the FITS header is in `.meta`."""
        from astropy.table import Table

        path = self.path(band, target)
        table = Table.read(path, hdu="RATE", format="fits")
        table.meta["FILENAME"] = str(path)
        return table


class Campaign:
    """One configured campaign: plan, run or submit its tasks, check their status, gather the products."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = RunPaths(config.run_dir)
        self._manifest: tuple[tuple[int, int, int], Manifest] | None = None

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> "Campaign":
        """Load and validate a YAML config (ConfigError names the file and key)."""
        return cls(load_config(Path(path)))

    def __repr__(self) -> str:
        return f"Campaign({str(self.config.path)!r}, run_dir={str(self.paths.root)!r})"

    # -- plan ------------------------------------------------------------------------------
    def plan(self, force: bool = False, dry_run: bool = False) -> Manifest:
        """Plan the ObsIDs into tasks and write the manifest (not with `dry_run`); returns the manifest."""
        from rxte_hpc.plan import planner

        manifest = planner.plan(self.config, dry_run=dry_run)
        if not dry_run:
            planner.write_manifest(self.config, manifest, force=force)
        return manifest

    def describe_plan(self, manifest: Manifest) -> str:
        """What a plan would do: query, ObsID and task counts, a time estimate."""
        from rxte_hpc.plan.describe import describe_plan

        return describe_plan(self.config, manifest)

    def manifest(self) -> Manifest:
        """The written manifest (UsageError when the campaign has not been planned).

        Kept while the file is unchanged (same inode, size and mtime): at
        100,000 ObsIDs reading it costs most of a second, and `status` needs
        it twice.
        """
        try:
            st = self.paths.manifest.stat()
        except OSError:
            return read_manifest(self.paths.manifest)  # raises the one-line error for a missing manifest
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._manifest is None or self._manifest[0] != key:
            self._manifest = (key, read_manifest(self.paths.manifest))
        check_run_dir(self.config, self._manifest[1])
        return self._manifest[1]

    def ensure_manifest(self) -> Manifest:
        """The written manifest, planning it first when there is none."""
        from rxte_hpc.plan.planner import ensure_manifest

        return ensure_manifest(self.config)

    # -- extract ---------------------------------------------------------------------------
    def run(self, workers: int | None = None, force: bool = False, progress: bool = False) -> RunResult:
        """Every task on this machine (planning first if needed); returns what happened (see `RunResult`).

        Failed ObsIDs do not raise: the result says how many and why, grouped
        by kind; `.raise_for_failures()` raises `Incomplete` when any is not done.
        `progress=True` shows a bar on a terminal (sparse lines elsewhere) on stderr, as the CLI does.
        """
        from rxte_hpc.extract import check_backend
        from rxte_hpc.run.local import run_local, worker_count
        from rxte_hpc.run.preflight import preflight

        if workers is not None and workers < 1:
            raise UsageError(f"workers must be at least 1, not {workers}")
        t0 = time.monotonic()
        check_backend(self.config)  # before planning: a TAP query is not made for a backend that cannot run
        manifest = self.ensure_manifest()
        checked = preflight(self.config, manifest, backend_checked=True)
        processed = run_local(self.config, manifest, workers=workers, force=force, progress=progress, checked=checked)
        return RunResult(self.status(), processed, worker_count(workers, manifest.n_tasks), time.monotonic() - t0)

    def work(self, task: int | None = None, obsid: str | None = None, *, slurm: bool = False,
             force: bool = False) -> WorkResult:
        """One task (exactly what array element `task` runs), one ObsID, or the Slurm array element of this job."""
        from rxte_hpc.run.preflight import preflight
        from rxte_hpc.run.worker import TaskRunner, WorkerIdentity, run_task

        if (task is not None) + (obsid is not None) + slurm != 1:
            raise UsageError("work needs exactly one of task, obsid, slurm")
        manifest = self.manifest()
        if obsid is not None:
            try:
                wanted = ObsID.parse(obsid)
            except InvalidObsID as exc:  # typed by a person: a usage error (exit 2), not a data failure
                raise UsageError(f"--obsid: {exc}", obsid=obsid[:40]) from None
            row = manifest.row_for_obsid(wanted)
            checked = preflight(self.config, manifest)
            with TaskRunner(self.config, manifest, WorkerIdentity(label=f"obsid-{row.obsid}"), force=force,
                            checked=checked) as runner:
                return WorkResult(f"obsid {row.obsid}", (runner.process(row),))
        slurm_job = None
        if slurm:
            from rxte_hpc.run.slurm.submit import array_task_from_env

            task, slurm_job = array_task_from_env(os.environ)
        assert task is not None
        manifest.rows_for_task(task)  # an out-of-range task is a usage error before any check
        checked = preflight(self.config, manifest)
        records = run_task(self.config, manifest, task, force=force, slurm_job=slurm_job, checked=checked)
        return WorkResult(f"task {task}" + (f" (Slurm {slurm_job})" if slurm_job else ""), tuple(records))

    def work_mpi(self, force: bool = False, schedule: str = "dynamic", gather: bool = False,
                 on_finish: Callable[[MpiResult], None] | None = None) -> MpiResult:
        """Every task over MPI COMM_WORLD ranks (call from every rank); returns this rank's result.

        Rank 0's result (rank table, gather) is also handed to `on_finish` before
        it returns: after a lost rank, rank 0 ends the job with MPI_Abort instead.
        """
        from rxte_hpc.run.mpi.executor import run_mpi

        return run_mpi(self.config, force=force, schedule=schedule, gather=gather, on_finish=on_finish)

    def submit(self, dry_run: bool = False, mpi: bool = False) -> SubmitResult:
        """sbatch the array(s) and the dependent gather (or one MPI allocation); returns the job ids.

        The jobs run a snapshot of this config (`<run_dir>/slurm/<submission>/config.yaml`): editing the config
        afterwards changes nothing queued.
        """
        from rxte_hpc.run.slurm.submit import submit

        return submit(self.config, dry_run=dry_run, mpi=mpi)

    def rerun(self, dry_run: bool = False, include_failed: bool = False) -> SubmitResult:
        """Resubmit only the tasks with missing or interrupted ObsIDs; returns the job ids (none: nothing to do)."""
        from rxte_hpc.run.slurm.submit import rerun

        return rerun(self.config, dry_run=dry_run, include_failed=include_failed)

    def fetch(self, task: int | None = None, progress: bool = False, stream: TextIO | None = None) -> FetchResult:
        """Pre-stage the archive files the configured backend reads into the cache; returns counts and bytes."""
        from rxte_hpc.run.fetch import fetch

        return fetch(self.config, self.manifest(), task=task, stream=stream, progress=progress)

    # -- results ---------------------------------------------------------------------------
    def status(self, scheduler: bool = False) -> RunStatus:
        """The state of every ObsID from its status record: counts per state, task and target, failures grouped
        by kind with example ObsIDs (`.groups`), and whether the config differs from the last submission's.

        With `scheduler`, one squeue call adds what Slurm says (see `report`).
        """
        summary = RunSummary.collect(self.manifest(), self.paths, self.config.hash())
        return RunStatus(summary, self.report(summary, scheduler=scheduler), self.submitted_drift())

    def submitted_drift(self) -> str | None:
        """One line when the config differs from the one the last submission's jobs run (which keys), else None."""
        from rxte_hpc.run.slurm.queue import read_jobs
        from rxte_hpc.run.slurm.snapshot import drift

        try:
            jobs = read_jobs(self.paths)
        except RxteError as exc:  # a damaged jobs.json must not stop `status`: say it instead
            return f"cannot compare the config with the submitted one: {exc}"
        found = drift(self.config, jobs)
        return found.line() if found is not None else None

    def report(self, summary: RunSummary | None = None, scheduler: bool = False) -> StatusReport:
        """The status as a structured summary: counts per state and target, why ObsIDs are not done, per task.

        With `scheduler`, one squeue call adds what Slurm says: stale `running`
        records of ended jobs, array elements that ended without records (with
        the tail of their log).
        """
        summary = RunSummary.collect(self.manifest(), self.paths, self.config.hash()) if summary is None else summary
        queue: dict[str, Any] | None = None
        if scheduler:
            from rxte_hpc.run.slurm.queue import scheduler_report

            queue = scheduler_report(self.config, summary)
        return StatusReport.build(summary, self.config.run_dir, self.manifest().n_tasks, queue)

    def gather(self, allow_missing: bool = False) -> Products:
        """Merge the per-ObsID light curves into the configured products, per target and band; see `Products`."""
        from rxte_hpc.products.gather import run_gather

        result = run_gather(self.config, allow_missing=allow_missing, manifest=self.manifest())
        products = [Product(self.paths.root / e.path, e.kind, e.target or None,
                            e.band if e.kind == "lightcurve" else None) for e in result.entries]
        left_out = tuple(LeftOut(o.obsid, o.state, o.error) for o in result.left_out)
        return Products(tuple(products), result.exit_code, result.summary, result.n_used, result.n_failed,
                        result.n_missing, left_out)
