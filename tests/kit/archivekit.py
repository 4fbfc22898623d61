"""Helpers for the remote-archive tests (tests/archive/): configs over a simulated archive, runs, comparisons.

A config reads its archive from `root` (a directory, an http:// URL or an s3://
URL) and plans from the simulation's own xtemaster table, so the same ObsIDs
can be run from the local path (the reference) and through a server.
"""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
from astropy.table import Table

from rxte_hpc.cli import main
from rxte_hpc.core.config import load_config
from rxte_hpc.core.manifest import ManifestRow, read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import StatusRecord, read_record
from rxte_hpc.fits.lcfile import read_lightcurve
from rxte_hpc.sim.simulate import SimArchive


def good_obsids(sim: SimArchive) -> list[str]:
    return [o.obsid.text for o in sim.observations if o.obsid.text not in sim.broken]


def write_table(sim: SimArchive, path: Path, only: list[str] | None = None) -> Path:
    """An xtemaster-like table of the simulation (optionally only some ObsIDs)."""
    table = Table.read(sim.root / "xtemaster.ecsv", format="ascii.ecsv")
    if only is not None:
        table = table[[str(o) in {x[:14] for x in only} for o in table["obsid"]]]
    table.write(path, format="ascii.ecsv", overwrite=True)
    return path


def write_config(
    tmp: Path, sim: SimArchive, root: str, *, name: str = "run", backend: str = "stdprod", per_task: int = 3,
    only: list[str] | None = None, s3_endpoint: str | None = None,
) -> Path:
    """A config reading `root` (URL or directory), planning from the simulation's xtemaster table.

    `s3_endpoint` sets `archive.s3.endpoint_url` (the tests' local S3 server); reads stay anonymous.
    """
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "scratch").mkdir(exist_ok=True)
    table = write_table(sim, d / "xtemaster.ecsv", only)
    s3 = f", s3: {{endpoint_url: '{s3_endpoint}'}}" if s3_endpoint else ""
    cfg = d / "config.yaml"
    cfg.write_text(
        f"run_dir: out\n"
        f"target: {{ra: 161.2647, dec: -59.6844, radius_deg: 0.1}}\n"
        f"source: {{kind: table, path: {table}}}\n"
        f"archive: {{root: '{root}', cache: cache{s3}}}\n"
        f"extract: {{backend: {backend}, chmin: 5, chmax: 10}}\n"
        f"scratch: {{root: scratch, min_free_mb: 0}}\n"
        f"tasks: {{obs_per_task: {per_task}}}\n"
    )
    return cfg


def work_in_process(cfg: Path) -> dict[str, StatusRecord | None]:
    """plan + every task through `work --task` in this process (so monkeypatches apply)."""
    assert main(["plan", str(cfg)]) == 0
    config = load_config(cfg)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest)
    for task in range(manifest.n_tasks):
        main(["work", str(cfg), "--task", str(task)])
    return {r.obsid.text: read_record(paths, r.obsid.text) for r in manifest.rows}


def records_of(cfg: Path) -> dict[str, str]:
    """ObsID -> state of every ObsID in the config's manifest."""
    config = load_config(cfg)
    paths = RunPaths(config.run_dir)
    out = {}
    for row in read_manifest(paths.manifest).rows:
        record = read_record(paths, row.obsid.text)
        out[row.obsid.text] = record.state if record is not None else "missing"
    return out


def row_of(sim: SimArchive, obsid: str) -> ManifestRow:
    o = next(o for o in sim.observations if o.obsid.text == obsid)
    return ManifestRow(0, o.obsid, o.cycle, o.prnb, o.target_name, o.time_mjd, o.exposure_s, o.ra, o.dec, 0)


def lc_data(path: Path) -> tuple[np.ndarray, ...]:
    lc = read_lightcurve(path)
    return lc.time, lc.rate, lc.error, lc.fracexp, lc.gti


def assert_same_lcs(run_a: Path, run_b: Path, obsids: list[str]) -> None:
    """The per-ObsID light curves of two runs hold the same columns, value for value."""
    for obsid in obsids:
        a, b = lc_data(RunPaths(run_a).lc(obsid)), lc_data(RunPaths(run_b).lc(obsid))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def cache_leftovers(cache: Path) -> list[str]:
    """Temporary or lock files left anywhere in a download cache."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob(".*") if p.name.endswith((".part", ".lock", ".tmp")))


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
