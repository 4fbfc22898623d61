"""The framework's own cost per ObsID: scratch, records, atomic publication, logs.

A no-op extractor returns a tiny light curve, so what is timed is everything
the worker does around an extraction: the `running` record, the per-ObsID
log, cleaning the scratch work directory, writing the FITS file by atomic
rename, and the final record. Baseline in the same run: writing the same
light-curve bytes to the same number of files with a plain open/write (no
fsync, no rename, no records). Target: under 5 ms per ObsID.

    python benchmarks/bench_worker.py [N_OBSIDS]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rxte_hpc.core.config import load_config
from rxte_hpc.extract.base import Extractor
from rxte_hpc.fits.lcfile import LightCurve, lightcurve_bytes
from rxte_hpc.core.manifest import Observation, build_manifest
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.run.worker import TaskRunner, WorkerIdentity

CURVE = LightCurve(time=1e8 + 16.0 * np.arange(8), rate=np.ones(8), error=np.ones(8), fracexp=np.ones(8), timedel=16.0)


class NoOpExtractor(Extractor):
    name = "noop"

    def extract(self, row, workspace, tool_log):
        return [CURVE]


def main(n: int = 2000) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as shm, \
            tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "archive").mkdir()
        cfg_path = base / "bench.yaml"
        cfg_path.write_text(f"run_dir: run\narchive: {{root: archive}}\nscratch: {{root: {shm}}}\n"
                            f"tasks: {{obs_per_task: {n}}}\nextract: {{backend: stdprod}}\n")
        config = load_config(cfg_path)
        obs = [Observation(ObsID(f"{10000 + i // 100:05d}-{i % 100:02d}-01-00"), 1) for i in range(n)]
        manifest = build_manifest(obs, n, {})
        paths = RunPaths(config.run_dir)
        manifest.write(paths.manifest)

        t0 = time.perf_counter()
        with TaskRunner(config, manifest, WorkerIdentity.for_task(0), extractor_factory=NoOpExtractor) as runner:
            for row in manifest.rows:
                runner.process(row)
        framework = time.perf_counter() - t0

        plain_dir = base / "plain"
        plain_dir.mkdir()
        t0 = time.perf_counter()
        for row in manifest.rows:
            (plain_dir / f"{row.obsid}.lc").write_bytes(lightcurve_bytes([CURVE]))
        baseline = time.perf_counter() - t0

        t0 = time.perf_counter()
        with TaskRunner(config, manifest, WorkerIdentity.for_task(0), extractor_factory=NoOpExtractor) as runner:
            for row in manifest.rows:
                runner.process(row)
        skip = time.perf_counter() - t0

    print(f"ObsIDs: {n}")
    print(f"framework per ObsID (records, log, scratch, atomic publish): {1e3 * framework / n:.2f} ms  (target < 5 ms)")
    print(f"baseline per ObsID (serialise + plain write, same bytes):    {1e3 * baseline / n:.2f} ms")
    print(f"ratio framework/baseline: {framework / baseline:.2f}x")
    print(f"restart: skipping a done ObsID costs {1e3 * skip / n:.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
