"""The `rxte-hpc` command line: parse, load the config, call the library, map errors to exit codes.

Exit codes: 0 all good; 1 some ObsIDs failed or are missing (data); 2 usage
or configuration error. Errors are one line on stderr naming what and where;
a traceback means a bug in rxte-hpc.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from rxte_hpc import __version__
from rxte_hpc.core.config import Config, load_config
from rxte_hpc.core.errors import Interrupted, RxteError, UsageError
from rxte_hpc.core.manifest import Manifest, read_manifest
from rxte_hpc.core.paths import RunPaths

log = logging.getLogger("rxte_hpc")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML configuration file (see configs/demo.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxte-hpc",
        description="Re-extract years of RXTE PCA observations into one light curve, "
        "locally, on a Slurm job array, or with MPI, restartably.",
        epilog="Exit codes: 0 all good; 1 some ObsIDs failed or are missing; 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"rxte-hpc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="write a synthetic RXTE archive (real layout and formats)")
    p.add_argument("outdir", type=Path, help="directory to write AO<cycle>/P<prnb>/<obsid>/ and prepared/ into")
    p.add_argument("--n-obs", type=int, default=200, help="number of ObsIDs (default 200)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--with-broken", action="store_true", help="add deliberately broken ObsIDs (listed on output)")

    p = sub.add_parser("plan", help="write <run_dir>/manifest.ecsv")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="print the query, ObsID and task counts and time estimate; write nothing")
    p.add_argument("--force", action="store_true", help="overwrite a manifest whose tasks already ran")
    p.add_argument("--plot", action="store_true", help="also write the exposure-versus-time plot of the plan")

    p = sub.add_parser("run", help="plan (if needed), extract every task locally, gather")
    _add_config(p)
    p.add_argument("--workers", type=int, default=None, help="local processes (default: CPUs available)")
    p.add_argument("--force", action="store_true", help="redo ObsIDs that are already done")
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even when some ObsIDs failed")

    p = sub.add_parser("work", help="extract one task, one ObsID, a Slurm array element or MPI ranks")
    _add_config(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=int, help="task index: exactly what array element I runs")
    which.add_argument("--obsid", help="one ObsID of the manifest")
    which.add_argument("--slurm", action="store_true", help="task = SLURM_ARRAY_TASK_ID + RXTE_HPC_TASK_OFFSET")
    which.add_argument("--mpi", action="store_true", help="all tasks over MPI COMM_WORLD ranks")
    p.add_argument("--force", action="store_true", help="redo ObsIDs that are already done")
    p.add_argument("--schedule", choices=("dynamic", "static"), default="dynamic", help="--mpi: ObsIDs to free ranks (dynamic) or each rank its tasks (static)")
    p.add_argument("--gather", action="store_true", help="--mpi: rank 0 gathers when all ranks finish")

    p = sub.add_parser("submit", help="sbatch the array(s) and the dependent gather")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="print rendered scripts and sbatch commands; submit nothing")
    p.add_argument("--mpi", action="store_true", help="one allocation running the MPI executor instead of an array")

    p = sub.add_parser("status", help="per-task and per-ObsID state, from the status records")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--scheduler", action="store_true", help="also ask squeue once for pending/running elements")

    p = sub.add_parser("fetch", help="pre-stage remote archive files into the cache")
    _add_config(p)
    p.add_argument("--task", type=int, default=None, help="only this task's ObsIDs")

    p = sub.add_parser("rerun", help="resubmit only tasks with missing/interrupted ObsIDs")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="name the tasks and print the command; submit nothing")
    p.add_argument("--include-failed", action="store_true", help="also tasks whose ObsIDs failed on data errors")

    p = sub.add_parser("gather", help="merge per-ObsID light curves into <run_dir>/<gather.output>")
    _add_config(p)
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even when some ObsIDs failed or are missing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    handler: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return handler(args)
    except Interrupted as stop:
        print(f"rxte-hpc: interrupted by signal {stop.signum}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("rxte-hpc: interrupted", file=sys.stderr)
        return 130
    except RxteError as exc:
        print(f"rxte-hpc: error: {exc}", file=sys.stderr)
        return exc.exit_code


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (callers of main() may replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        """StreamHandler assigns a stream in __init__; the current sys.stderr always wins."""


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("rxte_hpc")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _manifest(config: Config) -> Manifest:
    return read_manifest(RunPaths(config.run_dir).manifest)


def cmd_simulate(args: argparse.Namespace) -> int:
    from rxte_hpc.sim.simulate import main_summary, simulate_archive

    if args.n_obs < 1:
        raise UsageError(f"--n-obs must be at least 1, not {args.n_obs}")
    archive = simulate_archive(args.outdir, n_obs=args.n_obs, seed=args.seed, with_broken=args.with_broken)
    print(main_summary(archive))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from rxte_hpc.plan import planner

    config = load_config(args.config)
    manifest = planner.plan(config)
    if args.dry_run:
        print(planner.describe_plan(config, manifest))
        return 0
    path = planner.write_manifest(config, manifest, force=args.force)
    print(f"wrote {path}: {len(manifest.rows)} ObsIDs in {manifest.n_tasks} tasks")
    if args.plot:
        from rxte_hpc.products.plot import plot_exposure

        print(f"wrote {plot_exposure(manifest, path.with_name('exposure.png'))}")
    return 0


def ensure_manifest(config: Config) -> Manifest:
    """The run's manifest, planning it first when there is none (what `run` and `submit` need)."""
    from rxte_hpc.plan import planner

    paths = RunPaths(config.run_dir)
    if paths.manifest.is_file():
        return read_manifest(paths.manifest)
    manifest = planner.plan(config)
    planner.write_manifest(config, manifest)
    log.info("planned %d ObsIDs in %d tasks: %s", len(manifest.rows), manifest.n_tasks, paths.manifest)
    return manifest


def _check_backend(config: Config) -> None:
    """Fail before any task starts when the extractor cannot run here (e.g. no HEASoft)."""
    from rxte_hpc.archive.local import open_archive
    from rxte_hpc.extract import ExtractContext, make_extractor

    paths = RunPaths(config.run_dir)
    make_extractor(ExtractContext(config, paths, open_archive(config, paths))).check_available()


def cmd_run(args: argparse.Namespace) -> int:
    from rxte_hpc.products.gather import run_gather
    from rxte_hpc.run.local import run_local

    config = load_config(args.config)
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    _check_backend(config)
    manifest = ensure_manifest(config)
    run_local(config, manifest, workers=args.workers, force=args.force)
    result = run_gather(config, allow_missing=args.allow_missing, manifest=manifest)
    for out in result.outputs:
        print(f"light curve: {out}")
    if result.plot is not None:
        print(f"plot:        {result.plot}")
    print(result.summary)
    return result.exit_code


def cmd_work(args: argparse.Namespace) -> int:
    from rxte_hpc.core.status import FINISHED
    from rxte_hpc.run.worker import TaskRunner, WorkerIdentity, run_task

    config = load_config(args.config)
    if args.mpi:
        from rxte_hpc.run.mpi.executor import run_mpi

        return run_mpi(config, force=args.force, schedule=args.schedule, gather=args.gather)
    if args.schedule != "dynamic" or args.gather:
        raise UsageError("--schedule and --gather go with --mpi")
    _check_backend(config)
    manifest = _manifest(config)
    if args.obsid is not None:
        row = manifest.row_for_obsid(args.obsid)
        with TaskRunner(config, manifest, WorkerIdentity(label=f"obsid-{row.obsid}"), force=args.force) as runner:
            records = [runner.process(row)]
    else:
        slurm_job = None
        task = args.task
        if args.slurm:
            from rxte_hpc.run.slurm.submit import array_task_from_env

            task, slurm_job = array_task_from_env(os.environ)
        records = run_task(config, manifest, task, force=args.force, slurm_job=slurm_job)
    bad = [r for r in records if r.state not in FINISHED]
    for r in bad:
        print(f"{r.obsid}: {r.state}: {r.error}", file=sys.stderr)
    return 1 if bad else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from rxte_hpc.run.slurm.submit import submit

    config = load_config(args.config)
    return submit(config, dry_run=args.dry_run, mpi=args.mpi)


def cmd_rerun(args: argparse.Namespace) -> int:
    from rxte_hpc.run.slurm.submit import rerun

    config = load_config(args.config)
    return rerun(config, dry_run=args.dry_run, include_failed=args.include_failed)


def cmd_status(args: argparse.Namespace) -> int:
    from rxte_hpc.core.status import RunSummary, format_counts

    config = load_config(args.config)
    manifest = _manifest(config)
    summary = RunSummary.collect(manifest, RunPaths(config.run_dir), config.hash())
    scheduler = None
    if args.scheduler:
        from rxte_hpc.run.slurm.submit import scheduler_states

        scheduler = scheduler_states(config)
    if args.json:
        data = summary.to_json()
        if scheduler is not None:
            data["scheduler"] = scheduler
        print(json.dumps(data, indent=1))
    else:
        print(f"{config.run_dir}: {len(summary.states)} ObsIDs in {manifest.n_tasks} tasks: {format_counts(summary.counts())}")
        for task, counts in summary.per_task().items():
            if set(counts) - {"done", "no_data"}:
                print(f"  task {task:5d}: {format_counts(counts)}")
        for s in summary.with_state("failed", "interrupted"):
            kind = s.record.error_kind if s.record else None
            error = s.record.error if s.record else ""
            print(f"  {s.obsid} (task {s.task}) {s.state} [{kind}]: {error}")
        missing = summary.with_state("missing", "running")
        if missing:
            names = ", ".join(s.obsid for s in missing[:10]) + (" ..." if len(missing) > 10 else "")
            print(f"  not done ({len(missing)}): {names}")
        if scheduler is not None:
            print(f"  scheduler: {scheduler.get('summary', scheduler)}")
    return 0 if summary.complete else 1


def cmd_fetch(args: argparse.Namespace) -> int:
    from rxte_hpc.archive.remote import fetch_command

    config = load_config(args.config)
    return fetch_command(config, _manifest(config), task=args.task)


def cmd_gather(args: argparse.Namespace) -> int:
    from rxte_hpc.products.gather import run_gather

    config = load_config(args.config)
    result = run_gather(config, allow_missing=args.allow_missing)
    for out in result.outputs:
        print(f"light curve: {out}")
    if result.plot is not None:
        print(f"plot:        {result.plot}")
    print(result.summary)
    return result.exit_code


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": cmd_simulate,
    "plan": cmd_plan,
    "run": cmd_run,
    "work": cmd_work,
    "submit": cmd_submit,
    "status": cmd_status,
    "fetch": cmd_fetch,
    "rerun": cmd_rerun,
    "gather": cmd_gather,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
