"""Three bands in one pass against three single-band runs, in the same run.

The native extractor reads each Standard-2 and background file once per ObsID
and forms every band from the same per-PCU spectra, so extra bands should cost
little. Target: three bands in one pass <= 1.3x one single-band pass.

    python benchmarks/bench_bands.py [N_OBS]
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from bench_native import cached_archive, manifest_for, write_run

from rxte_hpc.archive.local import LocalArchive
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import RxteError
from rxte_hpc.extract.base import ExtractContext
from rxte_hpc.extract.native import NativeExtractor
from rxte_hpc.core.paths import RunPaths

SINGLE = ("chmin: 5, chmax: 10", "energy_kev: [4, 9]", "energy_kev: [9, 20]")
TRIPLE = "bands: {soft: {chmin: 5, chmax: 10}, mid: [4, 9], hard: [9, 20]}"


def pass_seconds(cfg_path: Path, manifest) -> float:
    """One pass of the extractor over every ObsID, in this process."""
    config = load_config(cfg_path)
    ex = NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(Path(config.archive.root))))
    t0 = time.perf_counter()
    for row in manifest.rows:
        try:
            ex.extract(row, None, io.StringIO())
        except RxteError:
            pass
    return time.perf_counter() - t0


def main(n_obs: int = 300) -> None:
    root = cached_archive(n_obs)
    manifest = manifest_for(n_obs, 25)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        configs = []
        for i, extract in enumerate((*SINGLE, TRIPLE)):
            (base / str(i)).mkdir()
            configs.append(write_run(base / str(i), root, extract))
        pass_seconds(configs[0], manifest)  # warm the page cache
        singles = [pass_seconds(cfg, manifest) for cfg in configs[:3]]
        triple = pass_seconds(configs[3], manifest)
    one = min(singles)
    print(f"{n_obs} ObsIDs")
    for extract, seconds in zip(SINGLE, singles):
        print(f"single band {extract:22s} {seconds:6.2f} s ({seconds / n_obs * 1e3:.1f} ms/ObsID)")
    print(f"three single-band runs       {sum(singles):6.2f} s")
    print(f"three bands in one pass      {triple:6.2f} s = {triple / one:.2f}x one single-band run (target <= 1.3x), "
          f"{sum(singles) / triple:.1f}x faster than three runs")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
