"""The `rxte-hpc` command line: argparse verbs over the Python API (rxte_hpc.api), errors -> one line + exit code.

Exit codes: 0 all good; 1 some ObsIDs failed or are missing, or the site failed
(data, disk, network); 2 usage or configuration error. Errors are one line on
stderr naming what and where; a traceback means a bug in rxte-hpc.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence, TextIO

from rxte_hpc.core.version import __version__
from rxte_hpc.api import Campaign
from rxte_hpc.run.results import Outcome
from rxte_hpc.core.errors import Interrupted, RxteError, SiteError, UsageError
from rxte_hpc.core.statusreport import format_status

log = logging.getLogger("rxte_hpc")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML configuration file (see configs/demo.yaml)")


def _common() -> argparse.ArgumentParser:
    """Options every verb takes, before or after the verb's name (`rxte-hpc status CFG -v`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
    return common


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
    common = _common()

    p = sub.add_parser("simulate", parents=[common], help="write a synthetic RXTE archive (real layout and formats)")
    p.add_argument("outdir", type=Path, help="directory to write AO<cycle>/P<prnb>/<obsid>/ and prepared/ into")
    p.add_argument("--n-obs", type=int, default=200, help="number of ObsIDs (default 200)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--with-broken", action="store_true", help="add deliberately broken ObsIDs (listed on output)")

    p = sub.add_parser("config", parents=[common], help="the configuration reference (docs/config.md)")
    p.add_argument("--schema", action="store_true", required=True,
                   help="print every key with its type, default, limits and meaning, as Markdown")

    p = sub.add_parser("plan", parents=[common], help="write <run_dir>/manifest.ecsv")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the query, ObsID and task counts and time estimate; write nothing")
    p.add_argument("--force", action="store_true", help="overwrite a manifest whose tasks already ran")
    p.add_argument("--plot", action="store_true",
                   help="also write the exposure-versus-time plot of the plan (of the existing one, if there is one)")

    p = sub.add_parser("run", parents=[common], help="plan (if needed), extract every task locally, gather")
    _add_config(p)
    p.add_argument("--workers", type=int, default=None, help="local processes (default: CPUs available)")
    p.add_argument("--force", action="store_true", help="redo ObsIDs that are already done")
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even when some ObsIDs failed")

    p = sub.add_parser("work", parents=[common], help="extract one task, one ObsID, a Slurm array element or MPI ranks")
    _add_config(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=int, help="task index: exactly what array element I runs")
    which.add_argument("--obsid", help="one ObsID of the manifest")
    which.add_argument("--slurm", action="store_true", help="task = SLURM_ARRAY_TASK_ID + RXTE_HPC_TASK_OFFSET")
    which.add_argument("--mpi", action="store_true", help="all tasks over MPI COMM_WORLD ranks")
    p.add_argument("--force", action="store_true", help="redo ObsIDs that are already done")
    p.add_argument("--schedule", choices=("dynamic", "static"), default="dynamic",
                   help="--mpi: ObsIDs to free ranks (dynamic) or each rank its tasks (static)")
    p.add_argument("--gather", action="store_true", help="--mpi: rank 0 gathers when all ranks finish")

    p = sub.add_parser("submit", parents=[common], help="sbatch the array(s) and the dependent gather")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="print rendered scripts and sbatch commands; submit nothing")
    p.add_argument("--mpi", action="store_true", help="one allocation running the MPI executor instead of an array")

    p = sub.add_parser("status", parents=[common], help="a summary per state and target from the status records")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--scheduler", action="store_true",
                   help="also ask squeue once: pending/running elements, stale running records, elements without records")
    p.add_argument("--tasks", action="store_true", help="also one line per task")

    p = sub.add_parser("fetch", parents=[common], help="pre-stage remote archive files into the cache")
    _add_config(p)
    p.add_argument("--task", type=int, default=None, help="only this task's ObsIDs")

    p = sub.add_parser("rerun", parents=[common], help="resubmit only tasks with missing/interrupted ObsIDs")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="name the tasks and print the command; submit nothing")
    p.add_argument("--include-failed", action="store_true", help="also tasks whose ObsIDs failed on data errors")

    p = sub.add_parser("gather", parents=[common], help="merge per-ObsID light curves into <run_dir>/<gather.output>")
    _add_config(p)
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even when some ObsIDs failed or are missing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit code (0, 1 data/site, 2 usage, 128+N after signal N)."""
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
    except BrokenPipeError:
        # `rxte-hpc status CFG | head`: the reader left; say nothing more, exit as a pipe writer does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except RxteError as exc:
        print(f"rxte-hpc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:
        # e.g. under `ulimit -v`: the machine's limit, not a bug; the records written so far stand
        print(f"rxte-hpc: error: out of memory during `{args.command}` (a memory limit such as `ulimit -v` or the "
              "job's --mem); raise the limit, or use fewer workers", file=sys.stderr)
        return SiteError.exit_code


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (callers of main() may replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    @property
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


def _campaign(args: argparse.Namespace) -> Campaign:
    return Campaign.from_config(args.config)


def cmd_simulate(args: argparse.Namespace) -> int:
    from rxte_hpc.sim.simulate import main_summary, simulate_archive

    if args.n_obs < 1:
        raise UsageError(f"--n-obs must be at least 1, not {args.n_obs}")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, not {args.seed}")
    if args.outdir.exists() and not args.outdir.is_dir():
        raise UsageError(f"{args.outdir}: exists and is not a directory")
    try:
        args.outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SiteError(f"{args.outdir}: cannot create the archive directory ({exc.strerror or exc})",
                        path=args.outdir, cause=exc) from exc
    archive = simulate_archive(args.outdir, n_obs=args.n_obs, seed=args.seed, with_broken=args.with_broken)
    print(main_summary(archive))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from rxte_hpc.core.configdoc import config_reference

    print(config_reference(), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    campaign = _campaign(args)
    if args.plot and not (args.force or args.dry_run) and campaign.paths.manifest.is_file():
        # --plot of the plan that is already there: replanning would need --force once tasks ran
        manifest = campaign.manifest()
        print(f"{campaign.paths.manifest}: {len(manifest.rows)} ObsIDs in {manifest.n_tasks} tasks (kept)")
    else:
        manifest = campaign.plan(force=args.force, dry_run=args.dry_run)
        if args.dry_run:
            print(campaign.describe_plan(manifest))
            return 0
        print(f"wrote {campaign.paths.manifest}: {len(manifest.rows)} ObsIDs in {manifest.n_tasks} tasks")
    if args.plot:
        from rxte_hpc.products.plot import plot_exposure

        print(f"wrote {plot_exposure(manifest, campaign.paths.manifest.with_name('exposure.png'))}")
    return 0


def _print(outcome: Outcome, file: TextIO | None = None) -> None:
    for line in outcome.lines():
        print(line, file=file)


def cmd_run(args: argparse.Namespace) -> int:
    campaign = _campaign(args)
    campaign.run(workers=args.workers, force=args.force, progress=True)
    products = campaign.gather(allow_missing=args.allow_missing)
    _print(products)
    return products.exit_code


def cmd_work(args: argparse.Namespace) -> int:
    campaign = _campaign(args)
    if args.mpi:
        return campaign.work_mpi(force=args.force, schedule=args.schedule, gather=args.gather,
                                 on_finish=lambda result: _print(result)).exit_code
    if args.schedule != "dynamic" or args.gather:
        raise UsageError("--schedule and --gather go with --mpi")
    result = campaign.work(task=args.task, obsid=args.obsid, slurm=args.slurm, force=args.force)
    for r in result.bad:
        print(f"{r.obsid}: {r.state}: {r.error or 'no error recorded'}", file=sys.stderr)
    return result.exit_code


def cmd_submit(args: argparse.Namespace) -> int:
    result = _campaign(args).submit(dry_run=args.dry_run, mpi=args.mpi)
    _print(result)
    return result.exit_code


def cmd_rerun(args: argparse.Namespace) -> int:
    result = _campaign(args).rerun(dry_run=args.dry_run, include_failed=args.include_failed)
    _print(result)
    return result.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    status = _campaign(args).status(scheduler=args.scheduler)
    if args.json:
        data = status.summary.to_json()
        if status.report.scheduler is not None:
            data["scheduler"] = status.report.scheduler
        if status.drift:
            data["submitted_config_differs"] = status.drift
        print(json.dumps(data, indent=1))
    else:
        print(format_status(status.report, tasks=args.tasks))
        if status.drift:
            print(f"  note: {status.drift}")
    return status.exit_code


def cmd_fetch(args: argparse.Namespace) -> int:
    result = _campaign(args).fetch(task=args.task, progress=True)
    _print(result, sys.stderr)
    return result.exit_code


def cmd_gather(args: argparse.Namespace) -> int:
    products = _campaign(args).gather(allow_missing=args.allow_missing)
    _print(products)
    return products.exit_code


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": cmd_simulate,
    "config": cmd_config,
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
