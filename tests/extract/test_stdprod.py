"""The standard-product extractor on real HEASARC light curves placed in an archive layout.

Expectations come from reading the real files directly with astropy (raw TIME
column plus the split TIMEZERI/TIMEZERF), not through rxte_hpc.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.cli import main
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.fits.lcfile import read_lightcurve
from where import DATA

REAL = {"40012-01-01-00": (4, "xp4001201_e4_n2a.lc"), "50011-01-01-00": (5, "xp5001101_e5_n2a.lc")}


@pytest.fixture()
def run(tmp_path):
    """An archive holding the real products as two ObsIDs' n2a files, plus one ObsID without any."""
    for obsid, (cycle, name) in REAL.items():
        d = tmp_path / "archive" / f"AO{cycle}" / f"P{obsid[:5]}" / obsid / "stdprod"
        d.mkdir(parents=True)
        (d / f"xp{obsid.replace('-', '')}_n2a.lc.gz").write_bytes(gzip.compress((DATA / name).read_bytes()))
    (tmp_path / "archive" / "AO5" / "P50011" / "50011-01-02-00" / "stdprod").mkdir(parents=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: run\nsource: {kind: archive}\narchive: {root: archive}\nscratch: {root: scratch}\n"
                   "extract: {backend: stdprod, stdprod_band: a}\n")
    return cfg, tmp_path / "run"


def expected(name: str):
    with fits.open(DATA / name) as hdul:
        h, d = hdul[1].header, hdul[1].data
        zero = h["TIMEZERI"] + h["TIMEZERF"]
        return d["TIME"] + zero, np.asarray(d["RATE"], float), np.asarray(d["ERROR"], float), h


def test_real_products_pass_through_exactly(run):
    cfg, run_dir = run
    assert main(["run", str(cfg), "--workers", "1"]) == 0
    for obsid, (_, name) in REAL.items():
        lc = read_lightcurve(RunPaths(run_dir).lc(obsid))
        t, rate, err, header = expected(name)
        np.testing.assert_array_equal(lc.time, t)
        np.testing.assert_array_equal(lc.rate, rate)
        np.testing.assert_array_equal(lc.error, err)
        assert lc.timedel == header["TIMEDEL"] == 16.0
        assert (lc.ref.mjdrefi, lc.ref.mjdreff) == (header["MJDREFI"], header["MJDREFF"])
        assert lc.keywords["CHMIN"] == 5 and lc.keywords["CHMAX"] == 21
        assert lc.keywords["E_MIN"] == 2.0 and lc.keywords["E_MAX"] == 9.0
        # labelled as what they are: the product's own ROWIDn, DEADAPP and fcalc HISTORY, read here with astropy
        rowids = [str(header[k]) for k in header if k.startswith("ROWID")]
        assert lc.keywords["PCULIST"] == ",".join(sorted({r[-1] for r in rowids})) and lc.keywords["LAYERS"] == "1"
        assert header["DEADAPP"] is False and lc.keywords["DEADAPP"] is False
        assert lc.keywords["RATEUNIT"] == "net count/s per PCU, dead time not corrected"
        assert any(f"RATE * {lc.keywords['RATESCAL']!r}"[:20] in str(h) for h in header["HISTORY"])
    # an ObsID without the product is no_data, not a failure
    rec = json.loads(RunPaths(run_dir).status("50011-01-02-00").read_text())
    assert rec["state"] == "no_data" and "xp500110102" in rec["error"]
    merged = read_lightcurve(run_dir / "merged.lc")
    assert merged.keywords["PCULIST"] == "varies per ObsID" and merged.keywords["LAYERS"] == "1"
    assert merged.keywords["BACKEND"] == "stdprod" and "FILTER" not in merged.keywords  # HEASARC screened, not us
    assert merged.n_rows == sum(len(expected(n)[0]) for _, n in REAL.values())
    assert np.all(np.diff(merged.time) >= 0)


def test_other_band_missing_is_no_data(run, tmp_path):
    cfg, run_dir = run
    cfg.write_text(cfg.read_text().replace("stdprod_band: a", "stdprod_band: e"))
    assert main(["run", str(cfg), "--workers", "1"]) == 1  # nothing to merge at all: data error
    paths = RunPaths(run_dir)
    states = {o: json.loads(paths.status(o).read_text())["state"] for o in [*REAL, "50011-01-02-00"]}
    assert set(states.values()) == {"no_data"}
