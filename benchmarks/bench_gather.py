"""Benchmark `gather`: simulated per-ObsID files of ~100 rows each, over one or several targets.

Prints the time of `run_gather` (merge + write per target, and with the plot)
against baselines measured in the same run: reading every file's bytes from a
warm page cache (the issue's target: gather <= 2x that), the fast reader alone
(products/lcread.py, checksums verified), and astropy opening and reading the
files with and without checksum verification (the old reader; on at most
--astropy-files files, scaled per file, since at 100,000 files it takes a
quarter of an hour). Each measurement runs in a fresh subprocess so one
cannot inflate the next: wall time without tracing, then peak resident memory
(ru_maxrss) above the process's size after its imports.

    python benchmarks/bench_gather.py [--n-files 2000] [--rows 100] [--targets 1] [--astropy-files 2000]
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


def make_run(root: Path, n_files: int, rows: int, seed: int = 1, n_targets: int = 1) -> Path:
    """A run directory of `n_files` done ObsIDs, each a lcfile-written curve with a gap or two.

    With `n_targets` > 1 the config has that many `targets:` and ObsID i belongs to target i % n_targets.
    """
    rng = np.random.default_rng(seed)
    config_path = root / "config.yaml"
    targets = [{"name": f"src {k}", "ra": 10.0 * k, "dec": 0.0} for k in range(n_targets)]
    raw = {"run_dir": str(root / "run"), "extract": {"backend": "native", "chmin": 5, "chmax": 10}}
    if n_targets > 1:
        raw["targets"] = targets
    config_path.write_text(json.dumps(raw))  # JSON is YAML
    cfg = config_from_mapping(raw, config_path)
    starts = 1.0e8 + np.arange(n_files) * 86400.0 * 2.5 + rng.uniform(0, 3000, n_files).round() * 16
    obs = [Observation(ObsID.parse(f"{10000 + i // 100:05d}-01-{i % 100:02d}-00"),
                       cycle=1 + min(19, i * 20 // n_files), target_name="sim",  # AO cycles 1..20
                       time_mjd=float(RXTE_TIMEREF.mjd(starts[i])), exposure_s=16.0 * rows,
                       target=targets[i % n_targets]["name"] if n_targets > 1 else "") for i in range(n_files)]
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
    g.plot_products = lambda *a, **k: None
files = sorted(RunPaths(cfg.run_dir).lc_dir.rglob("*.lc"))  # lc/<shard>/<obsid>.lc
if mode.startswith("astropy"):
    files = files[:int(sys.argv[3])]
for f in files:  # warm the page cache: every mode reads from memory
    f.read_bytes()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "bytes":
    out = {"bytes": sum(len(f.read_bytes()) for f in files), "files": len(files)}
elif mode == "fast":
    from rxte_hpc.products.lcread import read_obsid_curves
    out = {"rows": sum(read_obsid_curves(f)[0].n_rows for f in files), "files": len(files)}
elif mode in ("astropy", "astropy-checksum"):
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


def measure(mode: str, config_path: Path, repeat: int = 2, n_astropy: int = 0) -> dict:
    """Best of `repeat` fresh processes: disk and fsync latency on shared machines is noisy."""
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(config_path), str(n_astropy)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"bench_gather: {mode} failed:\n{proc.stderr.strip()}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--targets", type=int, default=1, help="targets the ObsIDs are spread over (gathered per target)")
    ap.add_argument("--astropy-files", type=int, default=2000, help="files the astropy baselines read (scaled per file)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        config_path = make_run(Path(tmp), args.n_files, args.rows, n_targets=args.targets)
        print(f"wrote {args.n_files} per-ObsID files over {args.targets} target(s) in {time.perf_counter() - t0:.1f} s")
        n_astropy = min(args.astropy_files, args.n_files)
        raw = measure("bytes", config_path)
        fast = measure("fast", config_path)
        plain = measure("astropy", config_path, n_astropy=n_astropy)
        base = measure("astropy-checksum", config_path, n_astropy=n_astropy)
        merge = measure("merge", config_path)
        full = measure("gather", config_path)
    assert raw["files"] == fast["files"] == args.n_files and plain["files"] == n_astropy, "a baseline missed files"
    scale = args.n_files / n_astropy
    print(f"read bytes (warm cache): {raw['seconds']:7.2f} s  ({raw['bytes'] / 2**20:.0f} MiB in {raw['files']} files)"
          "  <- the baseline: gather target <= 2x")
    print(f"fast reader + checksums: {fast['seconds']:7.2f} s  peak +{fast['peak_mb']:6.1f} MiB  "
          f"{fast['seconds'] / raw['seconds']:.2f}x the byte read")
    print(f"astropy open+read      : {plain['seconds'] * scale:7.2f} s  (measured on {n_astropy} files, scaled)")
    print(f"  ... + checksums      : {base['seconds'] * scale:7.2f} s  (the old gather's reader)")
    print(f"run_gather, no plot    : {merge['seconds']:7.2f} s  peak +{merge['peak_mb']:6.1f} MiB  "
          f"{merge['seconds'] / raw['seconds']:.2f}x the byte read (target <= 2x); "
          f"{merge['seconds'] / (base['seconds'] * scale):.2f}x astropy's checksummed read")
    print(f"run_gather with plot   : {full['seconds']:7.2f} s  peak +{full['peak_mb']:6.1f} MiB  "
          f"{full['seconds'] / raw['seconds']:.2f}x the byte read")
    print(f"summary: {full['summary']}")


if __name__ == "__main__":
    main()
