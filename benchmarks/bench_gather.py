"""Benchmark `gather`: 2,000 simulated per-ObsID files of ~100 rows each.

Prints the time of `run_gather` (merge + write, and with the plot) against the
time to merely open and read the same files with astropy, with and without
checksum verification (gather verifies them), in the same run (target: <= 2x
the verified read), and the peak memory of each. Each measurement runs in a fresh
subprocess so one cannot inflate the next: wall time without tracing, then
peak resident memory (ru_maxrss) above the process's size after its imports.

    python benchmarks/bench_gather.py [--n-files 2000] [--rows 100]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rxte_hpc.core.config import config_from_mapping
from rxte_hpc.fits.lcfile import RXTE_TIMEREF, LightCurve, lightcurve_bytes
from rxte_hpc.core.manifest import Observation, build_manifest
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import StatusRecord


def make_run(root: Path, n_files: int, rows: int, seed: int = 1) -> Path:
    """A run directory of `n_files` done ObsIDs, each a lcfile-written curve with a gap or two."""
    rng = np.random.default_rng(seed)
    config_path = root / "config.yaml"
    config_path.write_text(f"run_dir: {root / 'run'}\nextract: {{backend: native, chmin: 5, chmax: 10}}\n")
    cfg = config_from_mapping({"run_dir": str(root / "run"), "extract": {"backend": "native", "chmin": 5, "chmax": 10}},
                              config_path)
    starts = 1.0e8 + np.arange(n_files) * 86400.0 * 2.5 + rng.uniform(0, 3000, n_files).round() * 16
    obs = [Observation(ObsID.parse(f"{10000 + i // 100:05d}-01-{i % 100:02d}-00"), cycle=1 + i // 500, target_name="sim",
                       time_mjd=float(RXTE_TIMEREF.mjd(starts[i])), exposure_s=16.0 * rows) for i in range(n_files)]
    manifest = build_manifest(obs, 8, {"source": "bench"})
    paths = RunPaths(cfg.run_dir)
    paths.make_dirs()
    manifest.write(paths.manifest)
    for row in manifest.rows:
        i = row.index
        n = rows + int(rng.integers(-10, 10))
        time_ = starts[i] + 16.0 * np.arange(n) + np.where(np.arange(n) > n // 2, 16.0 * 200, 0.0)
        rate = rng.normal(20, 2, n)
        live = np.full(n, 16.0 * 3)
        lc = LightCurve(time_, rate, np.full(n, 0.7), np.ones(n), 16.0, RXTE_TIMEREF,
                        columns={"BACKV": np.full(n, 5.0), "BACKE": np.full(n, 0.1), "LiveTime": live})
        # plain writes: the fsync of an atomic publish is the worker's cost, not gather's
        paths.lc(row.obsid).write_bytes(lightcurve_bytes([lc], {"OBS_ID": row.obsid.text, "CONFHASH": cfg.hash()}))
        record = StatusRecord(row.obsid.text, row.task, "done", "native", cfg.hash(), "t0", "t1", 1.0, "bench", n_rows=n)
        paths.status(row.obsid).write_text(record.to_json())
    return config_path


_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, config_path = sys.argv[1], Path(sys.argv[2])
from astropy.io import fits
from rxte_hpc.core.config import load_config
from rxte_hpc.products.gather import run_gather
from rxte_hpc.core.paths import RunPaths
import rxte_hpc.products.plot, matplotlib.figure, matplotlib.backends.backend_agg  # imports are not the work
import rxte_hpc.products.gather as g
cfg = load_config(config_path)
if mode == "merge":  # the merge and the FITS write, without the figure
    g._plot = lambda *a, **k: None
files = sorted(RunPaths(cfg.run_dir).lc_dir.rglob("*.lc"))  # lc/<shard>/<obsid>.lc
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode in ("astropy", "astropy-checksum"):
    rows = 0
    for f in files:
        with fits.open(f, memmap=False, checksum=mode == "astropy-checksum") as hdul:
            data = hdul[1].data
            rows += len(data["TIME"]) + 0 * len(data["RATE"]) + 0 * len(hdul[2].data["START"])
    out = {"rows": rows, "files": len(files)}
else:
    r = run_gather(cfg)
    out = {"rows": r.n_rows, "summary": r.summary}
out["seconds"] = time.perf_counter() - t0
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print(json.dumps(out))
"""


def measure(mode: str, config_path: Path, repeat: int = 2) -> dict:
    """Best of `repeat` fresh processes: disk and fsync latency on shared machines is noisy."""
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(config_path)], capture_output=True, text=True,
                              check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=100)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        config_path = make_run(Path(tmp), args.n_files, args.rows)
        print(f"wrote {args.n_files} per-ObsID files in {time.perf_counter() - t0:.1f} s")
        plain = measure("astropy", config_path)
        base = measure("astropy-checksum", config_path)
        merge = measure("merge", config_path)
        full = measure("gather", config_path)
    assert plain["files"] == base["files"] == args.n_files, "the baseline did not find every per-ObsID file"
    print(f"astropy open+read only : {plain['seconds']:7.2f} s  peak +{plain['peak_mb']:6.1f} MiB  ({plain['rows']} rows)")
    print(f"  ... + checksums      : {base['seconds']:7.2f} s  peak +{base['peak_mb']:6.1f} MiB  "
          "(the baseline below: gather verifies every file's CHECKSUM/DATASUM too)")
    print(f"run_gather, no plot    : {merge['seconds']:7.2f} s  peak +{merge['peak_mb']:6.1f} MiB  "
          f"ratio {merge['seconds'] / base['seconds']:.2f}x (target <= 2x; {merge['seconds'] / plain['seconds']:.2f}x "
          "the read without checksums)")
    print(f"run_gather with plot   : {full['seconds']:7.2f} s  peak +{full['peak_mb']:6.1f} MiB  "
          f"ratio {full['seconds'] / base['seconds']:.2f}x")
    print(f"summary: {full['summary']}")


if __name__ == "__main__":
    main()
