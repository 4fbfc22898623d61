"""Test kit for the worker: a tiny run directory and extractors that behave on command.

The extractors here stand in for real ones only to exercise the framework
(scratch, records, publication, signals); real extractors have their own tests.
Runnable as a script so tests can drive a worker in a separate process:
    python tests/kit/workerkit.py CONFIG TASK MODE [SECONDS]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from where import REPO

sys.path.insert(0, str(REPO))

from rxte_hpc.archive.base import ArchiveNeeds  # noqa: E402
from rxte_hpc.core.config import load_config  # noqa: E402
from rxte_hpc.core.errors import DataError  # noqa: E402
from rxte_hpc.extract.base import Extractor  # noqa: E402
from rxte_hpc.fits.lcfile import LightCurve  # noqa: E402
from rxte_hpc.core.manifest import Observation, build_manifest, read_manifest  # noqa: E402
from rxte_hpc.core.obsid import ObsID  # noqa: E402
from rxte_hpc.core.paths import RunPaths  # noqa: E402
from rxte_hpc.run.worker import run_task  # noqa: E402

OBSIDS = [f"{10000 + i:05d}-01-01-00" for i in range(12)]


def write_run(tmp: Path, n: int = 12, per_task: int = 4, extra: str = "") -> Path:
    """A config + manifest for `n` fake ObsIDs; returns the config path."""
    (tmp / "archive").mkdir(exist_ok=True)
    (tmp / "scratch").mkdir(exist_ok=True)
    cfg = tmp / "run.yaml"
    cfg.write_text(
        f"run_dir: run\narchive: {{root: archive}}\nscratch: {{root: scratch}}\n"
        f"tasks: {{obs_per_task: {per_task}}}\nextract: {{backend: stdprod}}\n{extra}"
    )
    obs = [Observation(ObsID(o), 1, "FAKE", 50000.0 + i, 1000.0 + 10 * i) for i, o in enumerate(OBSIDS[:n])]
    manifest = build_manifest(obs, per_task, {"source": {"kind": "test"}})
    manifest.write(RunPaths(tmp / "run").manifest)
    return cfg


def fake_curve(obsid: str) -> LightCurve:
    """A deterministic light curve whose values depend on the ObsID (so swaps are visible)."""
    seed = int(ObsID(obsid).nodash[:9])
    t0 = 1e8 + (seed % 1000) * 1e4
    n = 50
    rate = np.arange(n, dtype=float) + seed % 97
    return LightCurve(time=t0 + 16.0 * np.arange(n), rate=rate, error=np.sqrt(rate + 1), fracexp=np.ones(n), timedel=16.0)


class TestExtractor(Extractor):
    """Modes: 'ok'; 'slow' (sleeps SECONDS per ObsID, leaving a file in scratch); 'fail-<obsid>';
    'fill' (fills the file $WORKERKIT_FILL until its disk is full, then returns a curve)."""

    __test__ = False
    name = "test"
    mode = "ok"
    seconds = 0.0

    def archive_needs(self, row):
        return ArchiveNeeds()

    def extract(self, row, workspace, tool_log):
        (workspace.work / "in-progress.tmp").write_bytes(b"x" * 1000)
        tool_log.write(f"extracting {row.obsid}\n")
        if self.mode == "slow":
            time.sleep(self.seconds)
        if self.mode == "fill" and os.environ.get("WORKERKIT_FILL"):  # the run directory's disk fills up now
            with open(os.environ["WORKERKIT_FILL"], "ab") as fh:
                try:
                    while True:
                        fh.write(b"x" * 4096)
                        fh.flush()
                except OSError:
                    pass
        if self.mode == f"fail-{row.obsid}":
            raise DataError(f"{row.obsid}: input is corrupt (test)")
        return [fake_curve(row.obsid.text)]


def factory(mode: str, seconds: float = 0.0):
    def make(context):
        ex = TestExtractor(context)
        ex.mode, ex.seconds = mode, seconds
        return ex

    return make


if __name__ == "__main__":
    config_path, task, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if os.environ.get("WORKERKIT_FSIZE"):
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["WORKERKIT_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    cfg = load_config(config_path)
    manifest = read_manifest(RunPaths(cfg.run_dir).manifest)
    from rxte_hpc.core.errors import Interrupted, RxteError

    try:
        records = run_task(cfg, manifest, task, extractor_factory=factory(mode, seconds))
    except Interrupted as stop:
        sys.exit(stop.exit_code)
    except RxteError as exc:  # what the CLI does with it
        print(f"rxte-hpc: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(" ".join(f"{r.obsid}={r.state}" for r in records))
    sys.exit(0 if all(r.state == "done" for r in records) else 1)
