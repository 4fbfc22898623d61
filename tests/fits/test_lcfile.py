"""lcfile on real saextrct output: split time keywords, exact round trips, and every
other way a file can say the same absolute time (MJDREF, TIMEZERO, TIMEUNIT d, TIMEPIXR 0.5).

Expected absolute times are computed independently of lcfile: from the raw
header integers with astropy.time (two-double precision), never through lcfile.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from rxte_hpc.core.errors import DataError
from rxte_hpc.fits.lcfile import RXTE_TIMEREF, LightCurve, TimeRef, lightcurve_bytes, read_lightcurve, read_lightcurves
from where import DATA

REAL = DATA / "xp5001101_e5_n2a.lc"
#: 1 microsecond: far below RXTE's 1e-4 s absolute timing, far above float64 noise at 2e8 s (3e-8 s).
TOL_S = 1e-6


def _raw():
    with fits.open(REAL, memmap=False) as hdul:
        return hdul[1].header.copy(), np.array(hdul[1].data["TIME"]), np.array(hdul[1].data["RATE"])


def _absolute(mjdrefi: int, mjdreff: float, seconds: np.ndarray) -> Time:
    """What the file means, computed by astropy (jd1/jd2 keep the precision)."""
    return Time(mjdrefi, mjdreff, format="mjd", scale="tt") + np.asarray(seconds) * u.s


def _lc_absolute(lc: LightCurve) -> Time:
    return _absolute(lc.ref.mjdrefi, lc.ref.mjdreff, lc.time)


def _rewrite(tmp_path: Path, name: str, edit) -> Path:
    """A copy of the real file after `edit(header, data)` changed its time keywords/column."""
    with fits.open(REAL, memmap=False) as hdul:
        edit(hdul[1].header, hdul[1].data)
        out = tmp_path / name
        hdul.writeto(out, output_verify="silentfix")
    return out


def test_real_file_split_keywords_are_honoured():
    hdr, time, rate = _raw()
    assert "TSTART" not in hdr and "MJDREF" not in hdr  # only the split forms in the extension
    lc = read_lightcurve(REAL)
    assert lc.n_rows == 2400 and lc.timedel == 16.0
    assert lc.ref == RXTE_TIMEREF == TimeRef(49353, 6.965740740e-4, "TT")
    # TIMEZERI/F are 0, so TIME is the raw column; the first bin starts at TSTARTI + TSTARTF
    np.testing.assert_array_equal(lc.time, time)
    assert lc.time[0] == hdr["TSTARTI"] + hdr["TSTARTF"]
    np.testing.assert_array_equal(lc.rate, rate.astype(np.float64))
    assert lc.gti is None  # the real products have no GTI extension
    assert lc.keywords["CHMIN"] == 5 and lc.keywords["CHMAX"] == 21  # from saextrct's COMMENT lines
    first = _lc_absolute(lc)[0]
    # DATE-OBS is the raw files' start on saextrct's own clock: only a coarse check (a shifted
    # MJDREF or a missed TSTARTF would be off by days or by the fraction of a day)
    assert abs((first - Time("2000-05-13T00:12:32", scale="utc")).to_value(u.s)) < 120


def test_round_trip_is_exact():
    lc = read_lightcurve(REAL)
    data = lightcurve_bytes([lc], {"OBS_ID": "50011-01-01-00"})
    back = read_lightcurve(io.BytesIO(data))
    for name in ("time", "rate", "error", "fracexp"):
        np.testing.assert_array_equal(getattr(back, name), getattr(lc, name))
    assert back.ref == lc.ref and back.timedel == lc.timedel
    np.testing.assert_array_equal(back.columns["BARYTIME"], lc.columns["BARYTIME"])
    with fits.open(io.BytesIO(data)) as hdul:
        assert hdul[1].header["TIMEZERI"] == 0 and hdul[1].header["MJDREFI"] == 49353
        assert hdul[1].header["TSTARTI"] + hdul[1].header["TSTARTF"] == lc.time[0]
        assert hdul["GTI"].data["START"][0] == lc.time[0]


def test_string_column_width_is_the_longest_value():
    lc = read_lightcurve(REAL)
    obsid = np.array(["50011-01-01-00"] * lc.n_rows, dtype="S")
    tagged = LightCurve(lc.time, lc.rate, lc.error, lc.fracexp, lc.timedel, lc.ref, columns={"OBSID": obsid})
    with fits.open(io.BytesIO(lightcurve_bytes([tagged]))) as hdul:
        assert hdul[1].columns["OBSID"].format == "14A"
        assert hdul[1].data["OBSID"][0] == "50011-01-01-00"


def test_plain_mjdref_lands_on_the_same_times(tmp_path):
    def edit(hdr, data):
        del hdr["MJDREFI"], hdr["MJDREFF"]
        hdr["MJDREF"] = 49353.000696574074

    lc = read_lightcurve(_rewrite(tmp_path, "mjdref.lc", edit))
    reference = read_lightcurve(REAL)
    assert lc.ref == RXTE_TIMEREF  # RXTE's value in one float is taken as exactly RXTE's reference
    np.testing.assert_array_equal(lc.time, reference.time)


def test_other_mjdref_with_shifted_time_lands_on_the_same_times(tmp_path):
    # Re-reference to MJD 51000.25 TT: TIME' = TIME - (51000.25 - 49353.000696574074) d, computed in
    # exact integer/fraction parts so the expectation does not share lcfile's arithmetic.
    shift_s = (51000 - 49353) * 86400 + (0.25 - 6.965740740e-4) * 86400

    def edit(hdr, data):
        del hdr["MJDREFI"], hdr["MJDREFF"]
        hdr["MJDREF"] = 51000.25
        data["TIME"] = data["TIME"] - shift_s

    lc = read_lightcurve(_rewrite(tmp_path, "other.lc", edit))
    assert (lc.ref.mjdrefi, lc.ref.mjdreff) == (51000, 0.25)
    hdr, time, _ = _raw()
    expected = _absolute(hdr["MJDREFI"], hdr["MJDREFF"], time)
    assert np.max(np.abs((_lc_absolute(lc) - expected).to_value(u.s))) < TOL_S
    # and brought back onto RXTE's reference by the exact offset
    np.testing.assert_allclose(lc.time + lc.ref.seconds_to(RXTE_TIMEREF), time, rtol=0, atol=TOL_S)


@pytest.mark.parametrize("split", [False, True])
def test_timezero_is_added(tmp_path, split):
    timezero = 3.37843167  # RXTE's clock correction in raw files

    def edit(hdr, data):
        if split:
            hdr["TIMEZERI"], hdr["TIMEZERF"] = 3, timezero - 3
        else:
            del hdr["TIMEZERI"], hdr["TIMEZERF"]
            hdr["TIMEZERO"] = timezero
        data["TIME"] = data["TIME"] - timezero

    lc = read_lightcurve(_rewrite(tmp_path, f"tz{split}.lc", edit))
    hdr, time, _ = _raw()
    expected = _absolute(hdr["MJDREFI"], hdr["MJDREFF"], time)
    assert np.max(np.abs((_lc_absolute(lc) - expected).to_value(u.s))) < TOL_S


def test_timeunit_days_and_timepixr_half(tmp_path):
    def edit(hdr, data):
        hdr["TIMEUNIT"] = "d"
        hdr["TIMEPIXR"] = 0.5  # stamps at bin centres
        hdr["TIMEDEL"] = 16.0 / 86400
        for key in ("TSTART", "TSTOP"):
            hdr[key + "I"], hdr[key + "F"] = 0, (hdr[key + "I"] + hdr[key + "F"]) / 86400
        data["TIME"] = (data["TIME"] + 8.0) / 86400

    lc = read_lightcurve(_rewrite(tmp_path, "days.lc", edit))
    assert lc.timedel == pytest.approx(16.0, abs=1e-9)
    hdr, time, _ = _raw()
    expected = _absolute(hdr["MJDREFI"], hdr["MJDREFF"], time)  # leading edges
    assert np.max(np.abs((_lc_absolute(lc) - expected).to_value(u.s))) < TOL_S


def test_gti_extension_with_timezero_and_other_reference(tmp_path):
    lc = read_lightcurve(REAL)
    timezero = 3.5
    gti = fits.BinTableHDU.from_columns(
        [fits.Column("START", "D", array=[lc.time[0] - timezero]), fits.Column("STOP", "D", array=[lc.time[9] + 16 - timezero])],
        name="GTI",
    )
    gti.header.update({"TIMEZERO": timezero, "MJDREFI": 49353, "MJDREFF": 6.965740740e-4, "TIMEUNIT": "s"})
    with fits.open(REAL, memmap=False) as hdul:
        hdul.append(gti)
        hdul.writeto(tmp_path / "gti.lc")
    got = read_lightcurve(tmp_path / "gti.lc").gti
    np.testing.assert_allclose(got, [[lc.time[0], lc.time[9] + 16]], rtol=0, atol=TOL_S)


def test_several_bands_are_read_by_name():
    lc = read_lightcurve(REAL)
    soft = LightCurve(lc.time, lc.rate, lc.error, lc.fracexp, lc.timedel, lc.ref, name="soft")
    hard = LightCurve(lc.time, lc.rate * 2, lc.error, lc.fracexp, lc.timedel, lc.ref, name="hard")
    curves = read_lightcurves(io.BytesIO(lightcurve_bytes([soft, hard])))
    assert [c.name for c in curves] == ["SOFT", "HARD"]  # FITS EXTNAMEs are upper case
    np.testing.assert_array_equal(read_lightcurve(io.BytesIO(lightcurve_bytes([soft, hard])), "HARD").rate, lc.rate * 2)


@pytest.mark.parametrize("column", ["ERROR", "FRACEXP"])
def test_a_missing_column_is_refused_not_made_up(tmp_path, column):
    """No ERROR = sqrt(|RATE|), no FRACEXP = 1: a curve without them fails naming the file and column."""
    with fits.open(REAL, memmap=False) as hdul:
        cols = [c for c in hdul[1].columns if c.name != column]
        ext = fits.BinTableHDU.from_columns(cols, header=hdul[1].header)
        path = tmp_path / f"no_{column}.lc"
        fits.HDUList([hdul[0].copy(), ext]).writeto(path, output_verify="silentfix")
    with pytest.raises(DataError, match=rf"no_{column}\.lc: extension RATE has no {column} column"):
        read_lightcurves(path)


def test_non_finite_time_is_refused(tmp_path):
    def nan_time(header, data):
        data["TIME"][5] = np.nan

    path = _rewrite(tmp_path, "nan_time.lc", nan_time)
    with pytest.raises(DataError, match=r"nan_time\.lc: extension RATE has 1 non-finite TIME"):
        read_lightcurves(path)


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    lc = read_lightcurve(REAL)
    data = bytearray(lightcurve_bytes([lc]))
    path = tmp_path / "ok.lc"
    path.write_bytes(bytes(data))
    assert read_lightcurves(path, verify_checksum=True)[0].n_rows == lc.n_rows
    with fits.open(path) as hdul:
        start = len(hdul[0].header.tostring()) + len(hdul[1].header.tostring())
    data[start + 9] ^= 0x40  # a byte of the first RATE value: the file still parses
    path.write_bytes(bytes(data))
    assert read_lightcurves(path)[0].n_rows == lc.n_rows
    with pytest.raises(DataError, match=r"ok\.lc: .*verification failed"):
        read_lightcurves(path, verify_checksum=True)


def test_written_headers_say_what_a_referee_needs():
    """TELESCOP/INSTRUME/OBJECT on the RATE extension, DATE-OBS/END, EXPOSURE, ONTIME, provenance on both."""
    lc = read_lightcurve(REAL)
    gti = np.array([[lc.time[0], lc.time[0] + 160.0], [lc.time[20], lc.time[20] + 320.0]])
    fracexp = np.full(lc.n_rows, 0.5)
    rate = lc.rate.copy()
    rate[:4] = np.nan
    curve = LightCurve(lc.time, rate, lc.error, fracexp, lc.timedel, lc.ref, gti=gti, keywords={"OBJECT": "SS_CYGNI"})
    provenance = {"CREATOR": "rxte-hpc 9.9", "BACKEND": ("native", "extractor"), "PCULIST": "ALL", "LAYERS": "1",
                  "FILTER": "(ELV > 4) && (OFFSET < 0.1)"}
    with fits.open(io.BytesIO(lightcurve_bytes([curve], provenance))) as hdul:
        for hdr in (hdul[0].header, hdul[1].header):
            assert (hdr["TELESCOP"], hdr["INSTRUME"], hdr["OBJECT"]) == ("XTE", "PCA", "SS_CYGNI")
            # DATE-OBS/DATE-END from astropy.time on the GTI edges, in the file's TIMESYS (TT)
            assert hdr["DATE-OBS"] == _absolute(49353, 6.965740740000e-04, gti[0, 0]).strftime("%Y-%m-%dT%H:%M:%S")
            assert hdr["DATE-END"] == _absolute(49353, 6.965740740000e-04, gti[1, 1]).strftime("%Y-%m-%dT%H:%M:%S")
            assert hdr["CREATOR"] == "rxte-hpc 9.9" and hdr["BACKEND"] == "native" and hdr["LAYERS"] == "1"
            assert hdr["FILTER"] == "(ELV > 4) && (OFFSET < 0.1)"
        ext = hdul[1].header
        assert ext["EXPOSURE"] == pytest.approx(0.5 * 16.0 * (lc.n_rows - 4))
        assert ext["ONTIME"] == pytest.approx(480.0)
