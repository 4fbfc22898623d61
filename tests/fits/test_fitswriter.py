"""The fast FITS writer: what it writes is what astropy reads, and what it cannot write it refuses."""
import io

import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.fits.writer import CardError, Col, primary_bytes, table_bytes
from rxte_hpc.fits.lcfile import LightCurve, lightcurve_bytes, lightcurve_hdulist, read_lightcurves


def _curve(name="RATE", **keywords):
    n = 7
    t = 1.5e8 + 16.0 * np.arange(n)
    rate = np.linspace(-1, 5, n)
    rate[3] = np.nan
    return LightCurve(time=t, rate=rate, error=np.abs(rate) + 0.1, fracexp=np.full(n, 0.5), timedel=16.0,
                      columns={"BACKV": np.full(n, 2.0), "LiveTime": np.arange(n, dtype=np.float32),
                               "OBSID": np.array(["90171-01-01-00"] * n), "NPCU": np.arange(n)},
                      gti=np.array([[t[0], t[-1] + 16.0]]), name=name, keywords=keywords)


def _hdus(data):
    return fits.open(io.BytesIO(data))


def test_fast_bytes_equal_astropy_content():
    curves = [_curve("soft", CHMIN=(5, "lowest"), OBJECT="ETA_CAR", DEADAPP=True),
              _curve("hard", CHMIN=11, E_MIN=(4.5, "keV"))]
    fast = lightcurve_bytes(curves, {"OBS_ID": "90171-01-01-00", "NBANDS": 2})
    buf = io.BytesIO()
    lightcurve_hdulist(curves, {"OBS_ID": "90171-01-01-00", "NBANDS": 2}).writeto(buf)
    with _hdus(fast) as a, fits.open(io.BytesIO(buf.getvalue())) as b:
        assert [h.name for h in a] == [h.name for h in b] == ["PRIMARY", "SOFT", "HARD", "GTI"]
        a.verify("exception")
        for ha, hb in zip(a, b):
            keys_b = {k for k in hb.header if k not in ("COMMENT", "HISTORY")}
            for key in keys_b:
                assert ha.header[key] == hb.header[key], key
            if ha.data is not None:
                for name in hb.columns.names:
                    np.testing.assert_array_equal(ha.data[name], hb.data[name])
                    assert ha.columns[name].unit == hb.columns[name].unit
    back = read_lightcurves(io.BytesIO(fast))
    assert [c.name for c in back] == ["SOFT", "HARD"]  # EXTNAMEs are upper-cased, as astropy writes them
    np.testing.assert_array_equal(back[0].time, curves[0].time)
    np.testing.assert_array_equal(back[0].rate, curves[0].rate)
    assert back[0].columns["OBSID"][0].strip() in ("90171-01-01-00", b"90171-01-01-00")


def test_long_keyword_value_falls_back_to_astropy_continue_cards():
    long_text = "x" * 150
    data = lightcurve_bytes([_curve(FILEN1=long_text)])
    with _hdus(data) as hdul:
        assert hdul[1].header["FILEN1"] == long_text


@pytest.mark.parametrize("key, value", [("TOOLONGKEY", 1), ("BAD KEY", 1), ("X", "é"), ("X", float("nan")),
                                         ("X", None)])
def test_card_errors(key, value):
    with pytest.raises(CardError):
        primary_bytes([(key, value, "")])


def test_long_comment_is_trimmed_not_an_error():
    data = primary_bytes([("KEY", 1, "c" * 200)])
    with _hdus(data) as hdul:
        assert hdul[0].header["KEY"] == 1


def test_table_round_trip_types():
    cols = [Col("A", "D", np.array([1.5, -2.0])), Col("B", "3I", np.array([[1, 2, 3], [4, 5, 6]])),
            Col("C", "L", np.array([True, False])), Col("D", "4A", np.array(["ab", "cdef"])),
            Col("E", "J", np.array([7, 8]), tnull=-1)]
    data = primary_bytes([]) + table_bytes("T", cols, [("OBJECT", "it's", "quoted")])
    with _hdus(data) as hdul:
        hdul.verify("exception")
        d = hdul["T"].data
        assert list(d["A"]) == [1.5, -2.0] and d["B"].tolist() == [[1, 2, 3], [4, 5, 6]]
        assert list(d["C"]) == [True, False] and list(d["D"]) == ["ab", "cdef"]
        assert hdul["T"].header["OBJECT"] == "it's" and hdul["T"].header["TNULL5"] == -1



@pytest.mark.parametrize("value", ["y" * 69, "q" * 66 + "'" + "z" * 90, "(ELV > 4) && (OFFSET < 0.1) && " * 9 + "x"])
def test_long_strings_are_continue_cards_that_astropy_and_cfitsio_read(tmp_path, value):
    fitsio = pytest.importorskip("fitsio")  # the test extra installs it: a skip here means a broken install
    data = primary_bytes([("FILTER", value, "maketime expression")]) + table_bytes(
        "T", [Col("A", "D", np.arange(3.0))], [("FILTER", value, "")])
    assert b"CONTINUE  '" in data and b"LONGSTRN= 'OGIP 1.0'" in data
    with _hdus(data) as hdul:
        assert hdul[0].header["FILTER"] == value and hdul[1].header["FILTER"] == value
    path = tmp_path / "long.fits"
    path.write_bytes(data)
    with fitsio.FITS(str(path)) as f:
        assert f[0].read_header()["FILTER"] == value


def test_every_hdu_has_checksums_that_astropy_and_cfitsio_verify(tmp_path):
    fitsio = pytest.importorskip("fitsio")
    data = lightcurve_bytes([_curve("soft"), _curve("hard")], {"OBS_ID": "90171-01-01-00"})
    path = tmp_path / "lc.fits"
    path.write_bytes(data)
    with fits.open(path, checksum=True) as hdul:  # a mismatch is a warning, an error under this suite
        assert all(len(h.header["CHECKSUM"]) == 16 and h.header["DATASUM"].isdigit() for h in hdul)
        assert len(hdul) == 4
    with fitsio.FITS(str(path)) as f:
        for hdu in f:
            hdu.verify_checksum()  # raises on a mismatch
    flipped = bytearray(data)
    flipped[-2880 + 5] ^= 0x01  # a byte of the GTI's data
    path.write_bytes(bytes(flipped))
    with pytest.warns(UserWarning, match="verification failed"):
        with fits.open(path, checksum=True) as hdul:
            hdul.readall()
