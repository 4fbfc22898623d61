"""Binning that cannot lose a row to rounding, and background rows paired as pcaextlc2 pairs them.

Metamorphic: one ObsID's products moved whole in MET (across 2^27 and 2^28 s,
where the spacing of doubles changes) and given other TIMEZERO values must
give the same bins, rates, errors and exposures as at a comfortable MET with
an exact TIMEZERO. A row that starts on a bin edge belongs to that bin
(saextrct: dper = trunc((t - T0)/binsz) + 1), however Time + TIMEZERO rounds.
The TIMEZEROs below were found by search to make (Time + TIMEZERO) - (TSTART +
TIMEZERO) fall one ulp short of a bin edge for an ObsID straddling the power
of two, which put that row one bin early before the binning moved to the raw
scale.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.archive.local import LocalArchive
from rxte_hpc.core.config import config_from_mapping
from rxte_hpc.core.errors import DataError
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.extract.base import ExtractContext
from rxte_hpc.extract.native import NativeExtractor, bin_rows
from rxte_hpc.fits.lcfile import LightCurve
from rxte_hpc.sim import simulate as sim

OBSID = "10000-01-01-00"
SPEC = [f"X{layer}{side}SpecPcu{pcu}" for pcu in range(5) for layer in (1, 2, 3) for side in "LR"]
N_ROWS = 12


def _std2(path: Path, raw: np.ndarray, tz: float, counts: np.ndarray, live: np.ndarray, *, background: bool) -> Path:
    n = len(raw)
    cols = [fits.Column(name="Time", format="D", array=raw)]
    for name in SPEC:
        spec = np.zeros((n, 129))
        if name == "X1LSpecPcu2":
            spec[:, 1] = counts
        cols.append(fits.Column(name=name, format="129E" if background else "129I",
                                array=spec.astype(np.float32 if background else np.int16)))
    for pcu in range(5):
        cols.append(fits.Column(name=f"LiveTimePcu{pcu}", format="D", array=live if pcu == 2 else np.zeros(n)))
    table = fits.BinTableHDU.from_columns(cols, name="XTE_SA")
    table.header.update({"TIMEZERO": tz, "TSTART": raw[0], "TSTOP": raw[-1] + 16.0, "TIMEDEL": 16.0,
                         "MJDREFI": 49353, "MJDREFF": 6.965740740000e-04, "TIMESYS": "TT"})
    for i in range(2, 2 + len(SPEC)):
        table.header[f"1CPIX{i}"] = sim.CPIX
    gti = fits.BinTableHDU.from_columns([fits.Column(name="START", format="D", array=[raw[0]]),
                                         fits.Column(name="STOP", format="D", array=[raw[-1] + 16.0])], name="STDGTI")
    gti.header["TIMEZERO"] = tz
    fits.HDUList([fits.PrimaryHDU(), table, gti]).writeto(path, overwrite=True)
    return path


def _obsid(tmp: Path, raw0: float, tz: float, *, bkg_rows: slice = slice(None)) -> Path:
    """Prepared products of one ObsID whose first Standard-2 row starts at raw MET raw0, with TIMEZERO tz."""
    prepared = tmp / "prep" / OBSID
    prepared.mkdir(parents=True, exist_ok=True)
    raw = raw0 + 16.0 * np.arange(N_ROWS)
    counts = np.array([3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610], dtype=float)
    live = np.linspace(10.0, 15.5, N_ROWS)
    _std2(prepared / "FS4a_1_dt", raw, tz, counts, live, background=False)
    _std2(prepared / "FS4a_1_dtbkg", raw[bkg_rows], tz, (counts / 4)[bkg_rows], live[bkg_rows], background=True)
    times = raw0 - 32.0 + 16.0 * np.arange(N_ROWS + 4)
    mkf = fits.BinTableHDU.from_columns([fits.Column(name="Time", format="D", array=times),
                                         fits.Column(name="ELV", format="E", array=np.full(len(times), 30.0))],
                                        name="XTE_MKF")
    mkf.header["TIMEZERO"] = tz
    fits.HDUList([fits.PrimaryHDU(), mkf]).writeto(prepared / "FP_1-2.xfl", overwrite=True)
    (prepared / "FP_dtstd2.lis").write_text("FS4a_1_dt\n")
    (prepared / "FP_dtbkg2.lis").write_text("FS4a_1_dtbkg\n")
    (prepared / "pcaprepobsid_done.txt").write_text("done\n")
    return prepared


def _extract(tmp: Path, binsz: float) -> LightCurve:
    (tmp / "arch").mkdir(exist_ok=True)
    raw = {"run_dir": str(tmp / "run"), "archive": {"root": str(tmp / "arch")},
           "extract": {"backend": "native", "prepared": str(tmp / "prep"), "filter": "ELV > 4",
                       "chmin": 5, "chmax": 5, "pculist": "2", "binsz": binsz}}
    config = config_from_mapping(raw, tmp / "c.yaml")
    ex = NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(tmp / "arch")))
    ex.check_available()
    o = ObsID(OBSID)
    (lc,) = ex.extract(ManifestRow(0, o, 1, o.prnb, "T", 0.0, 0.0, 0.0, 0.0, 0), None, io.StringIO())
    return lc


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[float, LightCurve]:
    """At MET 1e8 with TIMEZERO 3 every sum is exact."""
    out = {}
    for binsz in (32.0, 48.0):
        tmp = tmp_path_factory.mktemp(f"ref{int(binsz)}")
        _obsid(tmp, 1.0e8, 3.0)
        out[binsz] = _extract(tmp, binsz)
    return out


MOVES = [
    (2.0**27 - 16.0, 0.7), (2.0**27 - 64.0, 0.7), (2.0**27 - 32.0, 19.00927393),
    (2.0**28 - 16.0, 4.33538964), (2.0**28 - 16.0, 0.77082779), (2.0**28 - 32.0, 17.36076191),
    (2.0**28 - 96.0, 3.37843167), (2.0**28 + 1.0e6, 3.37843167), (1.0e8 + 0.5, 0.0), (4.0e8, -2.5),
]


@pytest.mark.parametrize("binsz", [32.0, 48.0])
@pytest.mark.parametrize(("raw0", "tz"), MOVES)
def test_moving_an_obsid_in_met_or_changing_timezero_keeps_every_bin(
    tmp_path: Path, reference: dict[float, LightCurve], raw0: float, tz: float, binsz: float
) -> None:
    _obsid(tmp_path, raw0, tz)
    lc = _extract(tmp_path, binsz)
    ref = reference[binsz]
    assert lc.n_rows == ref.n_rows, f"{lc.n_rows} bins, {ref.n_rows} expected: a row changed bin"
    np.testing.assert_array_equal(lc.fracexp, ref.fracexp)
    np.testing.assert_array_equal(lc.rate, ref.rate)
    np.testing.assert_array_equal(lc.error, ref.error)
    np.testing.assert_array_equal(lc.columns["LiveTime"], ref.columns["LiveTime"])
    np.testing.assert_array_equal(lc.columns["BACKV"], ref.columns["BACKV"])
    start = raw0 + tz
    np.testing.assert_allclose(lc.time - start, ref.time - (1.0e8 + 3.0), rtol=0, atol=1e-6)


def test_a_row_on_a_bin_edge_lands_in_that_bin_on_the_raw_scale() -> None:
    raw0, tz = 2.0**28 - 16.0, 4.33538964
    rows = raw0 + 16.0 * np.arange(4)
    assert bin_rows(rows, raw0, 32.0).tolist() == [0, 0, 1, 1]
    # The same rows as absolute times: an edge row can fall one ulp short of its bin.
    assert bin_rows(rows + tz, raw0 + tz, 32.0).tolist() != [0, 0, 1, 1]
    # A second file with another TIMEZERO: its rows are offset exactly by the difference.
    assert bin_rows(rows, raw0, 32.0, zero_offset=16.0).tolist() == [0, 1, 1, 2]


# --- background rows ---------------------------------------------------------------


def test_background_rows_pair_with_source_rows_of_the_same_bin(tmp_path: Path, reference: dict[float, LightCurve]) -> None:
    _obsid(tmp_path, 1.0e8, 3.0)
    lc = _extract(tmp_path, 16.0)
    counts = np.array([3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610], dtype=float)
    live = np.linspace(10.0, 15.5, N_ROWS)
    np.testing.assert_allclose(lc.columns["BACKV"], counts / 4 / live)  # row i's model on row i
    np.testing.assert_allclose(lc.rate, counts / live - counts / 4 / live)


@pytest.mark.parametrize("bkg_rows", [slice(1, None), slice(None, -1), slice(0, None, 2)])
def test_background_with_other_bins_than_the_source_is_refused(tmp_path: Path, bkg_rows: slice) -> None:
    """pcaextlc2 would ftpaste the background by row number onto the wrong bins: refused, naming the files."""
    _obsid(tmp_path, 1.0e8, 3.0, bkg_rows=bkg_rows)
    with pytest.raises(DataError) as info:
        _extract(tmp_path, 16.0)
    message = str(info.value)
    assert OBSID in message and "FS4a_1_dt" in message and "FS4a_1_dtbkg" in message and "row" in message
    assert "\n" not in message
