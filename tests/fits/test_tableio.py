"""The fast table reader against astropy: every column of every file type it reads, and refusals, not guesses.

astropy is the oracle: each table of each file is read by both, every column
compared (numbers with TSCAL/TZERO and TNULL, strings whole, logicals), and
every keyword astropy reads compared with the reader's value. What the reader
does not read (bit, complex, heap columns, long-string keywords) must be a
DataError naming the file and the column or keyword.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.core.errors import DataError
from rxte_hpc.fits.tableio import FitsTable, read_tables
from rxte_hpc.sim.simulate import simulate_archive
from where import DATA



@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return simulate_archive(tmp_path_factory.mktemp("tableio"), n_obs=2, seed=4)


def _expected(hdu: fits.BinTableHDU, name: str) -> np.ndarray:
    """What a column means, from astropy: floats with NULLs as NaN, strings as str, logicals as bool."""
    col = hdu.columns[name]
    values = np.asarray(hdu.data[name])
    if col.format[-1] in "BIJKED":
        out = values.astype(np.float64)
        if col.null is not None and col.bscale in (None, 1) and col.bzero in (None, 0):
            out[values == col.null] = np.nan
        return out
    return values


def _ours(table: FitsTable, name: str, code: str) -> np.ndarray:
    if code in "BIJKED":
        return table.values(name)
    raw = table.raw(name)
    if code == "A":
        return np.char.rstrip(np.char.decode(raw, "ascii"))
    return raw == b"T"


def compare_file(path: Path) -> int:
    """Compare every table, column and keyword of `path`; returns the number of columns compared."""
    ours = read_tables(path)
    n = 0
    with fits.open(path) as hdul:
        theirs = [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
        assert [t.extname for t in ours] == [h.name for h in theirs], path
        for table, hdu in zip(ours, theirs):
            assert table.n_rows == len(hdu.data) and list(table.names) == list(hdu.columns.names)
            for col in hdu.columns:
                code = col.format[-1]
                expected, got = _expected(hdu, col.name), _ours(table, col.name, code)
                assert got.shape == expected.shape, (path.name, col.name)
                np.testing.assert_array_equal(got, expected, err_msg=f"{path.name}[{hdu.name}] {col.name}")
                n += 1
            for key in hdu.header:
                if key in ("COMMENT", "HISTORY", "") or key not in table.header:
                    continue
                if len(str(hdu.header[key])) > 68:  # continued on CONTINUE cards: refused, not cut (below)
                    with pytest.raises(DataError, match=f"keyword {key} is a long string"):
                        table.header[key]
                    continue
                assert table.header[key] == hdu.header[key], (path.name, hdu.name, key)
    return n


def test_every_simulated_file_type_reads_as_astropy_reads_it(archive):
    """Raw Standard-2 (gzip), FMI (strings), housekeeping, filter file (TNULLs), prepared _dt/_dtbkg, GTIs."""
    obs = archive.observations[0]
    odir = archive.root / str(obs.obsid.archive_dir(obs.cycle))
    prepared = archive.root / "prepared" / str(obs.obsid)
    files = [odir / "FMI", *sorted((odir / "pca").glob("FS4a_*")), *sorted((odir / "pca").glob("FH5a_*")),
             *sorted(prepared.glob("*_dt")), *sorted(prepared.glob("*_dtbkg")), *sorted(prepared.glob("*.xfl")),
             odir / "stdprod" / obs.obsid.filter_file_name()]
    kinds = {p.name.split("_")[0] for p in files}
    assert {"FMI", "FS4a", "FH5a"} <= kinds and any(p.name.endswith("_dt") for p in files)
    assert sum(compare_file(p) for p in files) > 300


@pytest.mark.parametrize("name", ["xp5001101_e5_n2a.lc", "xp4001201_e4_n2a.lc"])
def test_real_heasarc_light_curves_read_as_astropy_reads_them(name):
    assert compare_file(DATA / name) == 5


def _odd_file(tmp_path: Path) -> Path:
    """A table with every column kind the reader must read or refuse, and a long-string keyword."""
    n = 4
    cols = [
        fits.Column("NAME", "12A", array=np.array(["ETA_CAR", "x", "a much longer", ""])),
        fits.Column("FLAGS", "3L", array=np.array([[True, False, True]] * n)),
        fits.Column("ONE", "L", array=np.array([True, False, False, True])),
        fits.Column("GRID", "6J", dim="(3,2)", array=np.arange(n * 6, dtype=np.int32).reshape(n, 2, 3)),
        fits.Column("SCALED", "I", array=np.array([0, 3, 4, -1], dtype=np.int16)),  # TSCAL/TZERO set below
        fits.Column("UNSIGNED", "I", bzero=32768, array=np.array([0, 1, 40000, 65535], dtype=np.uint16)),
        fits.Column("NULLED", "J", null=-99, array=np.array([1, -99, 3, 4], dtype=np.int32)),
        fits.Column("BITS", "8X", array=np.zeros((n, 8), dtype=bool)),
        fits.Column("CPLX", "C", array=np.array([1 + 2j] * n, dtype=np.complex64)),
        fits.Column("HEAP", "PJ()", array=np.array([np.arange(k + 1, dtype=np.int32) for k in range(n)], dtype=object)),
        fits.Column("AFTER", "D", array=np.array([1.5, 2.5, 3.5, 4.5])),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="ODD")
    hdu.header["TSCAL5"], hdu.header["TZERO5"] = 0.5, 10.0
    hdu.header["FILTER"] = "(ELV > 4) && (OFFSET < 0.1) && " * 4 + "(NUM_PCU_ON >= 2)"  # CONTINUE cards
    hdu.header["PLAIN"] = ("short", "a plain string")
    hdu.header["CVALUE"] = complex(1, 2)
    path = tmp_path / "odd.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    assert b"CONTINUE" in path.read_bytes()
    return path


def test_strings_logicals_arrays_and_scaled_columns_read_whole(tmp_path):
    path = _odd_file(tmp_path)
    (table,) = read_tables(path)
    with fits.open(path) as hdul:
        hdu = hdul[1]
        for name, code in [("NAME", "A"), ("FLAGS", "L"), ("ONE", "L"), ("GRID", "J"), ("SCALED", "I"),
                           ("UNSIGNED", "I"), ("NULLED", "J"), ("AFTER", "D")]:
            np.testing.assert_array_equal(_ours(table, name, code), _expected(hdu, name), err_msg=name)
        assert table.raw("NAME")[2] == b"a much longer"[:12]
        assert table.header["PLAIN"] == "short"


@pytest.mark.parametrize("column, what", [("BITS", "8X"), ("CPLX", "1C"), ("HEAP", "1P")])
def test_columns_it_cannot_read_are_refused(tmp_path, column, what):
    path = _odd_file(tmp_path)
    (table,) = read_tables(path)
    with pytest.raises(DataError, match=rf"odd\.fits\[ODD\]: column {column} has TFORM {what}"):
        table.values(column)
    with pytest.raises(DataError, match=rf"column {column} has TFORM"):
        table.raw(column)


def test_long_string_and_unparsable_keywords_are_refused(tmp_path):
    path = _odd_file(tmp_path)
    (table,) = read_tables(path)
    with pytest.raises(DataError, match=r"odd\.fits: keyword FILTER is a long string continued on CONTINUE"):
        table.header["FILTER"]
    with pytest.raises(DataError, match=r"odd\.fits: keyword CVALUE has a value this reader cannot parse"):
        table.header["CVALUE"]
    with pytest.raises(DataError, match="is not a number|not a number"):
        table.values("NAME")
