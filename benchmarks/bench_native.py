"""How fast the native extractor does a whole Eta Car campaign, and against what.

Simulates the campaign once (1,370 ObsIDs, cached under benchmarks/.cache or
$RXTE_BENCH_CACHE and reused), then in the same run times:
  * reading (and gunzipping, where gzipped) every input file the extraction
    reads: the floor any extractor pays;
  * the extractor alone, in this process, over every ObsID;
  * full local runs (`run_local`: worker, records, FITS publication) with 1 and 2 workers.
Targets: extractor <= 2x the read time; whole campaign < 60 s on 2 cores; the
seed's HEASoft chain took ~15 s per ObsID.

    python benchmarks/bench_native.py [N_OBS]
"""
from __future__ import annotations

import gzip
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from rxte_hpc.archive.local import LocalArchive
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import RxteError
from rxte_hpc.extract.base import ExtractContext
from rxte_hpc.extract.native import NativeExtractor
from rxte_hpc.run.local import run_local
from rxte_hpc.core.manifest import Observation, build_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.sim.simulate import campaign, simulate_archive

HEASOFT_S_PER_OBSID = 15.0
SEED = 1


def cached_archive(n_obs: int, bands: str = "") -> Path:
    """The simulated campaign, made once per size (a `.complete` marker says it is whole)."""
    cache = Path(os.environ.get("RXTE_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
    root = cache / f"etacar-{n_obs}"
    if not (root / ".complete").is_file():
        t0 = time.perf_counter()
        simulate_archive(root, n_obs=n_obs, seed=SEED)
        (root / ".complete").write_text("complete\n")
        print(f"simulated {n_obs} ObsIDs into {root} in {time.perf_counter() - t0:.0f} s (cached for next time)")
    return root


def write_run(base: Path, root: Path, extract: str, per_task: int = 25) -> Path:
    """A config and manifest for the cached archive; returns the config path."""
    cfg = base / "bench.yaml"
    cfg.write_text(
        f"run_dir: run\narchive: {{root: {root}}}\nscratch: {{root: {base / 'scratch'}}}\n"
        f"tasks: {{obs_per_task: {per_task}}}\n"
        f"extract: {{backend: native, prepared: {root / 'prepared'}, {extract}}}\n")
    return cfg


def manifest_for(n_obs: int, per_task: int):
    obs = [Observation(o.obsid, o.cycle, o.target_name, o.time_mjd, o.exposure_s, o.ra, o.dec)
           for o in campaign(n_obs, SEED)]
    return build_manifest(obs, per_task, {"source": {"kind": "benchmark"}})


def input_files(prepared: Path) -> list[Path]:
    files = []
    for directory in sorted(p for p in prepared.iterdir() if p.is_dir()):
        for name in ("FP_dtstd2.lis", "FP_dtbkg2.lis"):
            lis = directory / name
            if lis.is_file():
                files += [directory / Path(line).name for line in lis.read_text().split()]
        files += sorted(directory.glob("FP_*.xfl"))
    return files


def time_read(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            gzip.decompress(data)
    return time.perf_counter() - t0


def time_extractor(cfg_path: Path, manifest) -> tuple[float, int]:
    config = load_config(cfg_path)
    ex = NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(Path(config.archive.root))))
    done = 0
    t0 = time.perf_counter()
    for row in manifest.rows:
        try:
            ex.extract(row, None, io.StringIO())
            done += 1
        except RxteError:
            pass
    return time.perf_counter() - t0, done


def main(n_obs: int = 1370) -> None:
    root = cached_archive(n_obs)
    per_task = 25
    manifest = manifest_for(n_obs, per_task)
    files = input_files(root / "prepared")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg_path = write_run(base, root, "chmin: 5, chmax: 10")
        time_read(files)  # warm the page cache so both timings read from memory
        read_s = time_read(files)
        extract_s, ok = time_extractor(cfg_path, manifest)
        print(f"{n_obs} ObsIDs, {len(files)} input files ({sum(p.stat().st_size for p in files) / 1e6:.0f} MB)")
        print(f"read+decompress inputs:   {read_s:7.2f} s  ({read_s / n_obs * 1e3:.2f} ms/ObsID)")
        print(f"native extractor alone:   {extract_s:7.2f} s  ({extract_s / n_obs * 1e3:.2f} ms/ObsID, "
              f"{ok} light curves) = {extract_s / read_s:.1f}x read (target <= 2x)")
        config = load_config(cfg_path)
        paths = RunPaths(config.run_dir)
        paths.make_dirs()
        manifest.write(paths.manifest)
        for workers in (1, 2):
            t0 = time.perf_counter()
            counts = run_local(config, manifest, workers=workers, force=True)
            wall = time.perf_counter() - t0
            print(f"run_local {workers} worker(s):    {wall:7.2f} s  ({n_obs / wall:.0f} ObsIDs/s, {counts}); "
                  f"HEASoft seed at {HEASOFT_S_PER_OBSID:.0f} s/ObsID on {workers} core(s): "
                  f"{HEASOFT_S_PER_OBSID * n_obs / workers / 3600:.1f} h = {HEASOFT_S_PER_OBSID * n_obs / workers / wall:.0f}x slower"
                  f"{'' if workers < 2 else f'; target < 60 s: {wall < 60}'}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
