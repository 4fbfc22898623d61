"""Run `rxte_hpc.run.mpi.executor.run_mpi` under a real `mpiexec` with a slowed-down extractor.

The tests need ranks that are caught in the middle of an ObsID (to kill one,
or to send SIGTERM), which the millisecond `stdprod` extractor never is. This
script is what `work CONFIG --mpi` runs, except that each ObsID first leaves a
marker `<markers>/r<rank>-<obsid>` holding the pid and then sleeps `--delay`
seconds (in short steps, so signals are handled promptly).

    mpiexec -n 2 python tests/kit/mpi_helpers.py CONFIG --markers DIR --delay 0.5 [--schedule static]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from rxte_hpc.archive.base import ArchiveNeeds
from rxte_hpc.cli import _setup_logging
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import Interrupted, RxteError
from rxte_hpc.extract import ExtractContext, Extractor, make_extractor
from rxte_hpc.fits.lcfile import LightCurve
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.scratch import Workspace


def slow_factory(markers: Path, delay: float) -> Callable[[ExtractContext], Extractor]:
    """An extractor factory wrapping the configured extractor with a marker and a delay."""

    def make(context: ExtractContext) -> Extractor:
        inner = make_extractor(context)

        class Slow(Extractor):
            name = inner.name

            def check_available(self) -> None:
                inner.check_available()

            def archive_needs(self, row: ManifestRow) -> ArchiveNeeds:
                return inner.archive_needs(row)

            def extract(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> list[LightCurve]:
                from mpi4py import MPI

                rank = MPI.COMM_WORLD.Get_rank()
                (workspace.work / "busy").write_text("scratch in use\n")  # something for cleanup to remove
                (markers / f"r{rank}-{row.obsid.text}").write_text(f"{os.getpid()}\n")
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    time.sleep(0.02)
                return inner.extract(row, workspace, tool_log)

        return Slow(context)

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("--markers", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--schedule", default="dynamic")
    args = parser.parse_args(argv)
    _setup_logging(False)
    from rxte_hpc.run.mpi.executor import run_mpi

    args.markers.mkdir(parents=True, exist_ok=True)
    try:
        return run_mpi(load_config(args.config), schedule=args.schedule,
                       extractor_factory=slow_factory(args.markers, args.delay),
                       on_finish=lambda result: print("\n".join(result.lines()), flush=True)).exit_code
    except Interrupted as stop:
        print(f"rxte-hpc: interrupted by signal {stop.signum}", file=sys.stderr)
        return stop.exit_code
    except RxteError as exc:
        print(f"rxte-hpc: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
