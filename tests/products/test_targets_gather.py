"""Gather of a several-targets run (per target, never across) and the fast per-ObsID reader it uses.

Oracles: the manifest's `target` column says which ObsIDs each target's files
may hold; astropy (`lcfile.read_lightcurves` with checksum verification) is the
reference the fast reader (`products.lcread`) must agree with, value for value,
and astropy's own CHECKSUM/DATASUM verdict on a changed byte is what the fast
reader's must be.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from rxte_hpc.core.config import config_from_mapping
from rxte_hpc.core.errors import DataError
from rxte_hpc.core.manifest import Observation, build_manifest
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import StatusRecord
from rxte_hpc.fits.lcfile import RXTE_TIMEREF, LightCurve, lightcurve_bytes, read_lightcurves
from rxte_hpc.products.gather import run_gather
from rxte_hpc.products.lcread import read_obsid_curves, read_obsid_curves_fast
from rxte_hpc.products.merge import OPTIONAL_COLUMNS

TARGETS = [{"name": "eta car", "ra": 161.2647, "dec": -59.6844}, {"name": "gx 339-4", "ra": 255.7057, "dec": -48.7897}]


def _curve(start: float, n: int, seed: int, band: str = "RATE") -> LightCurve:
    rng = np.random.default_rng(seed)
    time = start + 16.0 * np.arange(n) + np.where(np.arange(n) >= n // 2, 160.0, 0.0)
    return LightCurve(time, rng.normal(20, 2, n), np.full(n, 0.7), rng.uniform(0.5, 1, n), 16.0, RXTE_TIMEREF,
                      columns={"BACKV": rng.normal(5, 1, n), "LiveTime": np.full(n, 48.0, dtype=np.float32)},
                      name=band, keywords={"OBJECT": "ETA_CAR", "CHMIN": 5, "CHMAX": 10, "GAINEPOC": 5,
                                           "TELESCOP": "XTE", "PCULIST": "ALL"})


def _run(tmp_path: Path, per_target: dict[str, int], done: dict[str, int] | None = None):
    """A run of several targets: `per_target[t]` ObsIDs each, the first `done[t]` of them extracted."""
    cfg = config_from_mapping({"run_dir": str(tmp_path / "run"), "targets": TARGETS,
                               "extract": {"backend": "native", "chmin": 5, "chmax": 10}}, tmp_path / "c.yaml")
    obs = []
    for k, (target, n) in enumerate(per_target.items()):
        for i in range(n):
            obs.append(Observation(ObsID.parse(f"{20000 + k}-01-{i:02d}-00"), cycle=3, target_name=target.upper(),
                                   time_mjd=50500.0 + 3 * i + k, exposure_s=1000.0, target=target))
    manifest = build_manifest(obs, 2, {"source": "test"})
    paths = RunPaths(cfg.run_dir)
    paths.make_dirs()
    manifest.write(paths.manifest)
    counts: dict[str, int] = {}
    for row in manifest.rows:
        counts[row.target] = counts.get(row.target, 0) + 1
        if done is not None and counts[row.target] > done.get(row.target, per_target[row.target]):
            continue
        start = 1.0e8 + row.index * 3 * 86400.0
        paths.lc(row.obsid).write_bytes(lightcurve_bytes([_curve(start, 20, row.index)], {"CONFHASH": cfg.hash()}))
        paths.status(row.obsid).write_text(StatusRecord(row.obsid.text, row.task, "done", "native", cfg.hash(), "t0",
                                                        "t1", 1.0, "test", n_rows=20).to_json())
    return cfg, manifest, paths


def test_each_target_gets_its_own_rows_and_products_index(tmp_path):
    cfg, manifest, paths = _run(tmp_path, {"eta car": 3, "gx 339-4": 2})
    result = run_gather(cfg)
    assert result.exit_code == 0 and result.n_used == 5 and len(result.targets) == 2
    index = Table.read(paths.root / "products.ecsv", format="ascii.ecsv")
    assert sorted(index["path"]) == sorted(["targets/eta_car/merged.lc", "targets/eta_car/merged.png",
                                            "targets/gx_339-4/merged.lc", "targets/gx_339-4/merged.png"])
    for target in ("eta car", "gx 339-4"):
        expected = {r.obsid.text for r in manifest.rows if r.target == target}
        with fits.open(paths.output("merged.lc", target), checksum=True) as hdul:
            assert set(hdul["RATE"].data["OBSID"].tolist()) == expected
            assert len(hdul["RATE"].data) == 20 * len(expected)
            assert hdul["RATE"].header["OBJECT"] == target and hdul[0].header["N_USED"] == len(expected)
    lines = result.summary.splitlines()
    assert lines[0].startswith("target eta car: merged 3 ObsIDs (60 rows, 0 NaN) into targets/eta_car/merged.lc")
    assert lines[1].startswith("target gx 339-4: merged 2 ObsIDs (40 rows")
    assert lines[2] == "total: merged 5 ObsIDs of 2 of 2 targets into 2 files (100 rows)"


def test_a_target_with_nothing_done_has_no_products_says_so_and_exit_1(tmp_path):
    cfg, manifest, paths = _run(tmp_path, {"eta car": 2, "gx 339-4": 2})
    assert run_gather(cfg).exit_code == 0
    old = paths.output("merged.lc", "gx 339-4")
    assert old.is_file()
    for row in manifest.rows:  # gx 339-4 loses its results: its old products are stale
        if row.target == "gx 339-4":
            paths.status(row.obsid).unlink()
    result = run_gather(cfg)
    assert result.exit_code == 1 and result.n_missing == 2 and result.n_used == 2
    assert "target gx 339-4: nothing to merge (2 missing); 2 missing: 20001-01-00-00, 20001-01-01-00" in result.summary
    assert "removed stale products of an earlier config: targets/gx_339-4/merged.lc" in result.summary
    assert not old.exists() and not old.parent.exists()
    assert sorted(Table.read(paths.root / "products.ecsv", format="ascii.ecsv")["target"]) == ["eta car"] * 2
    assert run_gather(cfg, allow_missing=True).exit_code == 0


def test_nothing_done_in_any_target_is_an_error_naming_each(tmp_path):
    cfg, _, paths = _run(tmp_path, {"eta car": 1, "gx 339-4": 1}, done={"eta car": 0, "gx 339-4": 0})
    with pytest.raises(DataError, match=r"no ObsID of any target is done \(eta car: 1 missing; gx 339-4: 1 missing\)"):
        run_gather(cfg)
    assert not (paths.root / "products.ecsv").exists()


# ---------------------------------------------------------------- the fast reader against astropy


def _files(tmp_path: Path) -> list[Path]:
    """Per-ObsID files as the writers make them, and astropy-written ones with other time keywords."""
    out = []
    one = tmp_path / "one.lc"
    one.write_bytes(lightcurve_bytes([_curve(1.0e8, 30, 1)], {"OBS_ID": "x"}))
    two = tmp_path / "bands.lc"
    two.write_bytes(lightcurve_bytes([_curve(1.0e8, 30, 2, "SOFT"), _curve(1.0e8, 30, 3, "HARD")]))
    out += [one, two]
    with fits.open(one) as hdul:  # TIMEZERO, TIMEPIXR 0.5, MJDREF split differently, a TSCAL'd column
        h = hdul[1].header
        h["TIMEZERO"] = 12.5
        h["TIMEPIXR"] = 0.5
        hdul[1].header["COMMENT"] = "CHMIN for filtering was 7"
        del h["CHMIN"]
        hdul.writeto(tmp_path / "other.lc", checksum=True)
    out.append(tmp_path / "other.lc")
    return out


def test_fast_reader_agrees_with_astropy_value_for_value(tmp_path):
    for path in _files(tmp_path):
        fast = read_obsid_curves_fast(path.read_bytes(), str(path))  # the fast path itself, no fallback
        ref = read_lightcurves(path, verify_checksum=True)
        assert len(fast) == len(ref)
        for a, b in zip(fast, ref):
            assert a.name == b.name and a.timedel == b.timedel and a.ref == b.ref
            for name in ("time", "rate", "error", "fracexp", "gti"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{path.name} {name}")
            for col in OPTIONAL_COLUMNS:
                if col in b.columns:
                    assert a.columns[col].dtype == b.columns[col].dtype.newbyteorder("=")  # native order
                    np.testing.assert_array_equal(a.columns[col], b.columns[col])
            for key, value in a.keywords.items():
                assert b.keywords[key] == value, (path.name, key)
            assert a.keywords.get("CHMIN") == b.keywords.get("CHMIN") is not None


@pytest.mark.parametrize("where", ["data", "header"])
def test_fast_reader_fails_a_changed_byte_as_astropy_does(tmp_path, where):
    path = _files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    with fits.open(io.BytesIO(bytes(data))) as hdul:
        primary = len(hdul[0].header.tostring())
        rate_header = hdul[1].header.tostring()
    if where == "data":
        data[primary + len(rate_header) + 10] ^= 0x01
    else:  # a letter inside a comment of the RATE header: the header still parses
        card = next(i for i in range(0, len(rate_header), 80) if "/ " in rate_header[i + 10:i + 80])
        pos = primary + card + rate_header.index("/ ", card) + 3  # a comment letter
        data[pos] ^= 0x20
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as seen:  # the oracle: astropy's verdict on the same bytes
        warnings.simplefilter("always")
        with fits.open(path, checksum=True) as hdul:
            hdul.readall()
    told = [str(w.message) for w in seen if "verification failed" in str(w.message)]
    assert told, "the changed byte must be one astropy's checksum catches"
    with pytest.raises(DataError, match="verification failed for HDU #1: the file changed after it was written"):
        read_obsid_curves(path)


def test_fast_reader_leaves_what_it_does_not_read_to_astropy(tmp_path):
    import gzip

    path = _files(tmp_path)[0]
    packed = tmp_path / "packed.lc"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(read_obsid_curves(packed)[0].rate, read_lightcurves(path)[0].rate)
    (tmp_path / "junk.lc").write_bytes(b"not fits at all")
    with pytest.raises(DataError, match="junk.lc: not a readable FITS light curve"):
        read_obsid_curves(tmp_path / "junk.lc")
    with pytest.raises(DataError, match="absent.lc: light curve file does not exist"):
        read_obsid_curves(tmp_path / "absent.lc")
