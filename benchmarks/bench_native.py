"""The native extractor against what it replaces, on the same prepared products, in the same run.

Simulates the campaign once (1,370 ObsIDs by default, cached under
benchmarks/.cache or $RXTE_BENCH_CACHE and reused) with what pcaprepobsid
would make of each ObsID. pcaprepobsid is not timed: both backends need its
products and pay it once on a first pass (`keep_prepared`), so what native
replaces is maketime + pcaextlc2 per band. Printed, all measured in this run:
  * the floor any extractor pays: reading (and gunzipping) every input file,
    from a warm page cache and from a cold one (each file's pages dropped with
    posix_fadvise(POSIX_FADV_DONTNEED) after an fsync);
  * the native extractor alone over every ObsID, warm and cold, and its
    ratio to the read of the same state (target <= 2x warm);
  * full local runs (`run_local`: worker, records, FITS publication), native
    backend: a first run into an empty run directory, then 1 and 2 workers
    with --force (every file replaced);
  * the heasoft backend (maketime + pcaextlc2 on the same prepared products,
    pcaprepobsid skipped) on the first `--heasoft-obs` ObsIDs with 1 worker,
    when a real HEASoft is installed ($HEADAS with pcaextlc2); otherwise it
    says "not measured". The tests' stand-in HEASoft is never timed.
The seed's 10-20 s per ObsID for the whole HEASoft chain is the seed's
figure, quoted as such, never divided by.

    python benchmarks/bench_native.py [--n-obs 1370] [--heasoft-obs 20]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from rxte_hpc.archive.local import LocalArchive
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import RxteError
from rxte_hpc.core.manifest import Manifest, build_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.extract.base import ExtractContext
from rxte_hpc.extract.native import NativeExtractor
from rxte_hpc.run.local import run_local
from rxte_hpc.sim.simulate import campaign, simulate_archive

SEED = 1
SEED_HEASOFT_FIGURE = "10-20 s per ObsID (the seed's figure for pcaprepobsid + maketime + pcaextlc2; not measured here)"
REPO = Path(__file__).resolve().parents[1]


def cached_archive(n_obs: int) -> Path:
    """The simulated campaign, made once per size and simulator version (a `.complete` marker says it is whole).

    The version is a digest of the simulator's source, so a cache made by an older simulator is never reused.
    """
    cache = Path(os.environ.get("RXTE_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
    sim = Path(simulate_archive.__code__.co_filename).parent
    version = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(sim.glob("*.py")))).hexdigest()[:10]
    root = cache / f"etacar-{n_obs}-{version}"
    if not (root / ".complete").is_file():
        t0 = time.perf_counter()
        simulate_archive(root, n_obs=n_obs, seed=SEED)
        (root / ".complete").write_text("complete\n")
        print(f"simulated {n_obs} ObsIDs into {root} in {time.perf_counter() - t0:.0f} s (cached for next time)")
    return root


def write_config(base: Path, root: Path, backend: str, per_task: int = 25) -> Path:
    """A config for the cached archive: both backends read the same prepared products."""
    cfg = base / f"{backend}.yaml"
    keep = ", keep_prepared: true" if backend == "heasoft" else ""
    cfg.write_text(
        f"run_dir: run-{backend}\narchive: {{root: {root}}}\nscratch: {{root: {base / 'scratch'}}}\n"
        f"tasks: {{obs_per_task: {per_task}}}\nslurm: {{setup: []}}\n"
        f"extract: {{backend: {backend}, prepared: {root / 'prepared'}, chmin: 5, chmax: 10{keep}}}\n")
    return cfg


def manifest_for(n_obs: int, per_task: int, first: int | None = None) -> Manifest:
    return build_manifest(campaign(n_obs, SEED)[:first], per_task, {"source": {"kind": "benchmark"}})


def input_files(prepared: Path) -> list[Path]:
    files = []
    for directory in sorted(p for p in prepared.iterdir() if p.is_dir()):
        for name in ("FP_dtstd2.lis", "FP_dtbkg2.lis"):
            lis = directory / name
            if lis.is_file():
                files += [directory / Path(line).name for line in lis.read_text().split()]
        files += sorted(directory.glob("FP_*.xfl"))
    return files


def drop_cache(files: list[Path]) -> None:
    """Evict the files' pages from the page cache (clean pages only: fsync first)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_read(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            gzip.decompress(data)
    return time.perf_counter() - t0


def time_extractor(cfg_path: Path, manifest: Manifest) -> tuple[float, int]:
    config = load_config(cfg_path)
    ex = NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(Path(config.archive.root))))
    done = 0
    t0 = time.perf_counter()
    for row in manifest.rows:
        try:
            ex.extract(row, None, io.StringIO())  # type: ignore[arg-type]  # native needs no workspace
            done += 1
        except RxteError:
            pass
    return time.perf_counter() - t0, done


def real_heasoft() -> Path | None:
    """$HEADAS of a real HEASoft (pcaextlc2 and maketime present, not the tests' stand-in), or None."""
    headas = os.environ.get("HEADAS")
    if not headas:
        return None
    root = Path(headas).resolve()
    if (REPO / "tests" / "heasoft_standin").resolve() in (root, *root.parents):
        return None
    ok = all((root / "bin" / tool).exists() for tool in ("pcaextlc2", "maketime")) or all(
        shutil.which(tool) for tool in ("pcaextlc2", "maketime"))
    return root if ok else None


def time_run(cfg_path: Path, manifest: Manifest, workers: int) -> tuple[float, dict[str, int]]:
    config = load_config(cfg_path)
    paths = RunPaths(config.run_dir)
    paths.make_dirs()
    manifest.write(paths.manifest)
    t0 = time.perf_counter()
    counts = run_local(config, manifest, workers=workers, force=True)
    return time.perf_counter() - t0, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-obs", type=int, default=1370)
    parser.add_argument("--heasoft-obs", type=int, default=20, help="ObsIDs timed through real HEASoft, if any")
    args = parser.parse_args()
    n_obs, per_task = args.n_obs, 25
    root = cached_archive(n_obs)
    manifest = manifest_for(n_obs, per_task)
    files = input_files(root / "prepared")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.chdir(base)
        native_cfg = write_config(base, root, "native")
        drop_cache(files)
        cold_read = time_read(files)
        warm_read = time_read(files)
        warm_extract, ok = time_extractor(native_cfg, manifest)
        drop_cache(files)
        cold_extract, _ = time_extractor(native_cfg, manifest)
        size = sum(p.stat().st_size for p in files) / 1e6
        print(f"{n_obs} ObsIDs, {len(files)} prepared input files ({size:.0f} MB); pcaprepobsid not timed "
              "(both backends need its products and pay it once on a first pass)")
        print(f"read+decompress, warm cache:  {warm_read:7.2f} s  ({warm_read / n_obs * 1e3:.2f} ms/ObsID)")
        print(f"read+decompress, cold cache:  {cold_read:7.2f} s  ({cold_read / n_obs * 1e3:.2f} ms/ObsID)")
        print(f"native extractor, warm:       {warm_extract:7.2f} s  ({warm_extract / n_obs * 1e3:.2f} ms/ObsID, {ok} "
              f"light curves) = {warm_extract / warm_read:.1f}x the warm read (target <= 2x)")
        print(f"native extractor, cold:       {cold_extract:7.2f} s  ({cold_extract / n_obs * 1e3:.2f} ms/ObsID) "
              f"= {cold_extract / cold_read:.1f}x the cold read")
        native_per_obs = {}
        wall, counts = time_run(native_cfg, manifest, 2)
        print(f"run_local native, first run into an empty run directory, 2 workers: {wall:7.2f} s  ({counts})")
        for workers in (1, 2):  # then each again with --force, every file replaced: the same work for both
            wall, counts = time_run(native_cfg, manifest, workers)
            native_per_obs[workers] = wall / n_obs
            print(f"run_local native, {workers} worker(s), --force: {wall:7.2f} s  ({n_obs / wall:.0f} ObsIDs/s, {counts})"
                  + (f"; target < 60 s: {wall < 60}" if workers == 2 else ""))
        headas = real_heasoft()
        if headas is None:
            print("heasoft backend (maketime + pcaextlc2 on the same prepared products): not measured "
                  "(no real HEASoft here: $HEADAS unset or the tests' stand-in)")
        else:
            subset = manifest_for(n_obs, per_task, first=args.heasoft_obs)
            wall, counts = time_run(write_config(base, root, "heasoft"), subset, 1)
            per_obs = wall / len(subset.rows)
            print(f"heasoft backend ({headas}), 1 worker, {len(subset.rows)} ObsIDs: {per_obs:.2f} s/ObsID ({counts}) "
                  f"= {per_obs / native_per_obs[1]:.0f}x native's {native_per_obs[1] * 1e3:.1f} ms/ObsID "
                  "(same products, same worker)")
        print(f"for scale only: {SEED_HEASOFT_FIGURE}")


if __name__ == "__main__":
    main()
