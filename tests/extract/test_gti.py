"""maketime in numpy: the filter-expression language, NULLs, fndssp intervals, GTI algebra, files.

Expected values are worked out by hand from docs/science.md#good-time-maketime (fndssp, prefr/postfr,
output format) and the native spec items 1 and 3.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.core.intervals import intersect as intersect_gtis, union as union_gtis
from rxte_hpc.extract.gti import (
    filter_gti,
    intervals_from_flags,
    parse_filter,
    read_filter_gti,
    select_rows,
)
from filterkit import row_flags_from_hdu, write_gti_file

NAN = np.nan


def flags(expr: str, table: dict, nulls: dict | None = None) -> list[bool]:
    return parse_filter(expr).evaluate({k: np.asarray(v) for k, v in table.items()}, nulls).tolist()


# --- grammar ---------------------------------------------------------------------

X = {"X": [1.0, 2.0, 3.0, 4.0]}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("X > 2", [False, False, True, True]),
        ("X .GT. 2", [False, False, True, True]),
        ("X .gt. 2", [False, False, True, True]),
        ("X < 2", [True, False, False, False]),
        ("X .lt. 2", [True, False, False, False]),
        ("X >= 2", [False, True, True, True]),
        ("X .ge. 2", [False, True, True, True]),
        ("X GE. 2", [False, True, True, True]),
        ("X <= 2", [True, True, False, False]),
        ("X .LE. 2", [True, True, False, False]),
        ("X == 2", [False, True, False, False]),
        ("X .EQ. 2", [False, True, False, False]),
        ("X != 2", [True, False, True, True]),
        ("X .ne. 2", [True, False, True, True]),
        ("X > 1 && X < 4", [False, True, True, False]),
        ("X > 1 .AND. X < 4", [False, True, True, False]),
        ("X>1.and.X<4", [False, True, True, False]),
        ("X < 2 || X > 3", [True, False, False, True]),
        ("X < 2 .or. X > 3", [True, False, False, True]),
        ("!(X > 2)", [True, True, False, False]),
        (".NOT. (X > 2)", [True, True, False, False]),
        ("! ! (X > 2)", [False, False, True, True]),
    ],
)
def test_c_and_fortran_operators(expr: str, expected: list[bool]) -> None:
    assert flags(expr, X) == expected


def test_and_binds_tighter_than_or() -> None:
    # X == 4 || (X > 2 && X < 3) selects X = 4; the other grouping selects nothing.
    assert flags("X == 4 || X > 2 && X < 3", X) == [False, False, False, True]
    assert flags("(X == 4 || X > 2) && X < 3", X) == [False, False, False, False]
    assert flags("X == 4 .OR. X > 2 .AND. X < 3", X) == [False, False, False, True]


def test_comparisons_bind_tighter_than_logic_and_arithmetic_tighter_than_comparisons() -> None:
    assert flags("X + 1 > 4", X) == [False, False, False, True]
    assert flags("X * 2 - 1 == 5", X) == [False, False, True, False]
    assert flags("1 + 2 * X == 7", X) == [False, False, True, False]  # 1 + (2*X), not (1+2)*X
    assert flags("(1 + 2) * X == 9", X) == [False, False, True, False]
    assert flags("X / 2 * 4 == 8", X) == [False, False, False, True]  # left-assoc: (X/2)*4
    assert flags("X - 1 - 1 == 0", X) == [False, True, False, False]  # (X-1)-1
    assert flags("(X > 2) == (X < 4)", X) == [False, False, True, False]


def test_unary_minus_and_abs() -> None:
    assert flags("-X < -2", X) == [False, False, True, True]
    assert flags("- - X == 3", X) == [False, False, True, False]
    assert flags("2 - -X == 5", X) == [False, False, True, False]
    assert flags("ABS(X - 2.5) < 1", X) == [False, True, True, False]
    assert flags("abs(-X) == +3", X) == [False, False, True, False]


def test_numbers_in_all_forms() -> None:
    table = {"X": [0.05, 1e3, 15.0]}
    assert flags("X < .1", table) == [True, False, False]
    assert flags("X == 1E3", table) == [False, True, False]
    assert flags("X == 1.0e+3", table) == [False, True, False]
    assert flags("X > 14.", table) == [False, True, True]
    assert flags("X.EQ.15.", table) == [False, False, True]


def test_column_names_are_case_insensitive_both_ways() -> None:
    table = {"Time": [1.0, 2.0], "NUM_PCU_ON": [3, 0]}
    expr = parse_filter("time > 1 || num_pcu_on > 0")
    assert expr.columns == frozenset({"TIME", "NUM_PCU_ON"})
    assert expr.evaluate({k: np.asarray(v) for k, v in table.items()}).tolist() == [True, True]


def test_heasarc_notebook_expressions() -> None:
    table = {
        "ELV": [10.0, 3.0, NAN, 10.0, 10.0],
        "OFFSET": [0.01, 0.01, 0.01, 0.5, 0.01],
        "NUM_PCU_ON": [2, 2, 2, 2, 0],
    }
    s4 = "(ELV > 4) .AND. (OFFSET < 0.1) .AND. (NUM_PCU_ON > 0 .AND. NUM_PCU_ON < 6)"
    s6 = "(ELV > 4) && (OFFSET < 0.1) && (NUM_PCU_ON > 0) && .NOT. ISNULL(ELV) && (NUM_PCU_ON < 6)"
    assert flags(s4, table) == [True, False, False, False, False]
    assert flags(s6, table) == [True, False, False, False, False]


def test_expression_without_columns_broadcasts_to_the_table() -> None:
    assert flags("1 < 2", X) == [True] * 4
    assert parse_filter("1 < 2").columns == frozenset()


@pytest.mark.parametrize(
    ("expr", "column", "what"),
    [
        ("__import__('os')", 12, "a string is not supported"),
        ("__import__(ELV)", 1, "unknown function"),
        ("ELV > > 4", 7, "unexpected '>'"),
        ("ELV >", 6, "end of expression"),
        ("(ELV > 4", 9, "expected ')'"),
        ("ELV > 4)", 8, "unexpected ')'"),
        ("ELV = 4", 5, "use '=='"),
        ("ELV > 4 & OFFSET < 1", 9, "unexpected character '&'"),
        ("ELV", 1, "not a condition"),
        ("ELV + 1", 1, "not a condition"),
        ("1 < ELV < 3", 9, "chained comparison"),
        ("!ELV > 3", 1, "needs a condition"),
        ("ELV && OFFSET < 1", 5, "needs a condition"),
        ("(ELV > 4) + 1 > 0", 11, "needs a number"),
        ("-(ELV > 4)", 1, "needs a number"),
        ("(ELV > 4) == 1", 11, "compares a number with a condition"),
        ("ISNULL(ELV, 2)", 1, "takes 1 argument"),
        ("DEFNULL(ELV) > 1", 1, "takes 2 argument"),
        ("DEFNULL(ELV, OFFSET > 1)", 1, "both be numbers"),
        ("ELV{-1} > 4", 4, "unexpected character '{'"),
        ("#TSTART > 4", 1, "#keyword"),
        ("X .Ge. 2", 3, "all in upper or all in lower case"),
        ("X == 1.e+3", 8, "unexpected name 'e'"),  # CFITSIO's lexer: '1.' then the name e
        ("X == 1d3", 6, "number '1d3' is not supported"),  # CFITSIO's atof makes it 1
        ("ISNULL (X)", 1, "no space is allowed"),
        ("ISNULL(1)", 1, "ISNULL of a constant"),
        ("X > 1/0", 6, "no value"),
        ("ELV 4", 5, "unexpected number"),
        ("", 1, "empty expression"),
        ("   ", 4, "empty expression"),
    ],
)
def test_syntax_errors_are_one_line_usage_errors_with_the_column(expr: str, column: int, what: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_filter(expr)
    message = str(info.value)
    assert "\n" not in message
    assert what in message
    assert f"at column {column}" in message
    assert repr(expr) in message


def test_the_parser_never_evaluates_python() -> None:
    with pytest.raises(UsageError):
        parse_filter("X > 1 or X < 0")  # Python's 'or' is just two names in a row here
    with pytest.raises(UsageError):
        parse_filter("(lambda: 1)() > 0")


def test_unknown_column_names_it_and_the_available_ones() -> None:
    expr = parse_filter("ELVV > 4 && OFFSET < 1")
    with pytest.raises(DataError) as info:
        expr.evaluate({"ELV": np.ones(2), "OFFSET": np.ones(2)})
    message = str(info.value)
    assert "ELVV" in message and "did you mean ELV" in message and "available: ELV, OFFSET" in message


# --- NULLs ---------------------------------------------------------------------------


def test_nan_is_null_and_null_rows_are_not_selected() -> None:
    table = {"X": [NAN, 5.0]}
    assert flags("X > 4", table) == [False, True]
    assert flags("X <= 4", table) == [False, False]  # not the complement: NULL is neither
    assert flags("!(X > 4)", table) == [False, False]  # NOT NULL is NULL
    assert flags("X != 1", table) == [False, True]


def test_null_propagates_through_arithmetic() -> None:
    assert flags("X * 0 == 0", {"X": [NAN, 5.0]}) == [False, True]
    assert flags("-X < 0", {"X": [NAN, 5.0]}) == [False, True]
    assert flags("ABS(X) >= 0", {"X": [NAN, 5.0]}) == [False, True]


def test_division_by_zero_is_null() -> None:
    table = {"A": [1.0, 1.0], "B": [0.0, 2.0]}
    assert flags("ISNULL(A / B)", table) == [True, False]
    assert flags("A / B < 10", table) == [False, True]


def test_three_valued_logic() -> None:
    table = {"X": [NAN, NAN, NAN, 1.0], "Y": [1.0, 5.0, NAN, NAN]}
    # Y > 2: F, T, NULL, NULL.  X > 0: NULL, NULL, NULL, T
    assert flags("X > 0 && Y > 2", table) == [False, False, False, False]
    assert flags("!(X > 0 && Y > 2)", table) == [True, False, False, False]  # false && NULL = false
    assert flags("X > 0 || Y > 2", table) == [False, True, False, True]  # true || NULL = true
    assert flags("!(X > 0 || Y > 2)", table) == [False, False, False, False]  # NULL || false stays NULL


def test_isnull_is_never_null_and_defnull_replaces() -> None:
    table = {"X": [NAN, 5.0]}
    assert flags("ISNULL(X)", table) == [True, False]
    assert flags(".NOT. ISNULL(X)", table) == [False, True]
    assert flags("ISNULL(X + 1)", table) == [True, False]
    assert flags("ISNULL(X > 3)", table) == [True, False]
    assert flags("DEFNULL(X, 10) > 7", table) == [True, False]
    assert flags("DEFNULL(X, -1) == -1", table) == [True, False]
    assert flags("DEFNULL(X > 3, X == X)", table) == [False, True]  # default is itself NULL in row 0
    assert flags("DEFNULL(X > 3, 1 > 0)", table) == [True, True]


def test_explicit_null_masks_for_integer_columns() -> None:
    table = {"NUM_PCU_ON": np.array([2, 255, 3], dtype=np.uint8)}
    nulls = {"num_pcu_on": np.array([False, True, False])}
    assert flags("NUM_PCU_ON > 0", table, nulls) == [True, False, True]
    assert flags("ISNULL(NUM_PCU_ON)", table, nulls) == [False, True, False]


# --- FITS tables -------------------------------------------------------------------


def _mkf_hdu(**header) -> fits.BinTableHDU:
    columns = [
        fits.Column(name="Time", format="D", unit="s", array=np.arange(6) * 16.0 + 1000.0),
        fits.Column(name="ELV", format="E", array=np.array([10, 10, NAN, 10, 3, 10], dtype=np.float32)),
        fits.Column(name="NUM_PCU_ON", format="B", null=255, array=np.array([2, 255, 2, 2, 2, 0], dtype=np.uint8)),
        fits.Column(name="PCU0_ON", format="I", null=-1, array=np.array([1, 1, -1, 0, 1, 1], dtype=np.int16)),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="XTE_MKF")
    for key, value in header.items():
        hdu.header[key] = value
    return hdu


def test_row_flags_from_hdu_treats_tnull_and_nan_as_null() -> None:
    hdu = _mkf_hdu()
    assert row_flags_from_hdu(hdu, parse_filter("elv > 4 && num_pcu_on > 0")).tolist() == [
        True, False, False, True, False, False,
    ]
    assert row_flags_from_hdu(hdu, parse_filter("ISNULL(PCU0_ON) || ISNULL(NUM_PCU_ON)")).tolist() == [
        False, True, True, False, False, False,
    ]
    assert row_flags_from_hdu(hdu, parse_filter("PCU0_ON != 1")).tolist() == [False, False, False, True, False, False]
    assert row_flags_from_hdu(hdu, parse_filter("1 > 0")).tolist() == [True] * 6


def test_row_flags_from_hdu_unknown_column_names_the_extension_and_columns() -> None:
    with pytest.raises(DataError) as info:
        row_flags_from_hdu(_mkf_hdu(), parse_filter("OFFSET < 0.1"))
    message = str(info.value)
    assert "OFFSET" in message and "XTE_MKF" in message and "ELV, NUM_PCU_ON, PCU0_ON, Time" in message


# --- fndssp --------------------------------------------------------------------------

T = np.array([0.0, 16.0, 32.0, 48.0, 64.0, 80.0])


def test_interior_run_moves_each_edge_by_a_fraction_of_the_spacing() -> None:
    f = np.array([0, 0, 1, 1, 0, 0], bool)
    # START = 32 - 0.5*16 = 24, STOP = 48 + 0.5*16 = 56
    assert intervals_from_flags(T, f).tolist() == [[24.0, 56.0]]
    # prefr 0.25 -> 32 - 4 = 28; postfr 1.0 -> 48 + 16 = 64
    assert intervals_from_flags(T, f, prefr=0.25, postfr=1.0).tolist() == [[28.0, 64.0]]
    assert intervals_from_flags(T, f, prefr=0.0, postfr=0.0).tolist() == [[32.0, 48.0]]


def test_first_and_last_rows_are_not_extended() -> None:
    f = np.array([1, 1, 0, 0, 1, 1], bool)
    # run 0..1: START = t0 = 0, STOP = 16 + 8 = 24; run 4..5: START = 64 - 8 = 56, STOP = t5 = 80
    assert intervals_from_flags(T, f).tolist() == [[0.0, 24.0], [56.0, 80.0]]
    assert intervals_from_flags(T, np.ones(6, bool)).tolist() == [[0.0, 80.0]]


def test_uneven_spacing_uses_the_neighbouring_gap() -> None:
    t = np.array([0.0, 10.0, 50.0, 60.0, 160.0])
    f = np.array([0, 0, 1, 1, 0], bool)
    # START = 50 - 0.5*(50-10) = 30; STOP = 60 + 0.5*(160-60) = 110
    assert intervals_from_flags(t, f).tolist() == [[30.0, 110.0]]


def test_out_of_order_times_do_not_extend_the_edge() -> None:
    t = np.array([0.0, 16.0, 32.0, 20.0, 36.0, 52.0, 40.0])
    # run 2..2: previous 16 < 32 -> START = 32 - 8 = 24; next 20 <= 32 -> STOP = 32: [24, 32]
    # run 4..5: previous 20 < 36 -> START = 36 - 8 = 28; next 40 <= 52 -> STOP = 52
    f = np.array([0, 0, 1, 0, 1, 1, 0], bool)
    assert intervals_from_flags(t, f).tolist() == [[24.0, 32.0], [28.0, 52.0]]
    # run 3..3: previous 32 >= 20 -> START = 20; next 36 > 20 -> STOP = 20 + 8 = 28
    f = np.array([0, 0, 0, 1, 0, 0, 0], bool)
    assert intervals_from_flags(t, f).tolist() == [[20.0, 28.0]]
    # a repeated time counts as out of order: START = 16 (not 16 - 0)
    t2 = np.array([0.0, 16.0, 16.0, 32.0])
    assert intervals_from_flags(t2, np.array([0, 0, 1, 0], bool)).tolist() == [[16.0, 24.0]]


def test_zero_length_intervals_are_dropped() -> None:
    # With prefr = postfr = 0 every single-row run has START == STOP (0, 48, 80): all dropped.
    f = np.array([1, 0, 0, 1, 0, 1], bool)
    assert intervals_from_flags(T, f, prefr=0.0, postfr=0.0).tolist() == []
    assert intervals_from_flags(T, f).tolist() == [[0.0, 8.0], [40.0, 56.0], [72.0, 80.0]]
    assert intervals_from_flags(np.array([5.0]), np.array([True])).shape == (0, 2)
    assert intervals_from_flags(np.zeros(0), np.zeros(0, bool)).shape == (0, 2)
    assert intervals_from_flags(T, np.zeros(6, bool)).shape == (0, 2)


def test_bad_fractions_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="prefr"):
        intervals_from_flags(T, np.ones(6, bool), prefr=1.5)
    with pytest.raises(UsageError, match="postfr"):
        intervals_from_flags(T, np.ones(6, bool), postfr=-0.1)


# --- GTI algebra and row selection ----------------------------------------------------


def test_select_rows_includes_start_and_excludes_stop() -> None:
    gti = np.array([[10.0, 20.0], [30.0, 40.0]])
    t = np.array([9.999, 10.0, 19.999, 20.0, 25.0, 30.0, 39.9, 40.0, 50.0])
    assert select_rows(t, gti).tolist() == [False, True, True, False, False, True, True, False, False]
    assert select_rows(t, np.zeros((0, 2))).tolist() == [False] * len(t)
    # unsorted, overlapping input intervals are fine
    assert select_rows(t, np.array([[30.0, 40.0], [10.0, 15.0], [14.0, 20.0]])).tolist() == [
        False, True, True, False, False, True, True, False, False,
    ]


def test_union_sorts_merges_overlapping_and_touching() -> None:
    a = np.array([[30.0, 40.0], [0.0, 10.0]])
    b = np.array([[5.0, 12.0], [12.0, 15.0], [50.0, 50.0]])
    assert union_gtis(a, b).tolist() == [[0.0, 15.0], [30.0, 40.0]]
    assert union_gtis().shape == (0, 2)
    assert union_gtis(np.zeros((0, 2))).shape == (0, 2)


def test_intersection() -> None:
    a = np.array([[0.0, 10.0], [20.0, 30.0]])
    b = np.array([[5.0, 25.0], [28.0, 40.0]])
    assert intersect_gtis(a, b).tolist() == [[5.0, 10.0], [20.0, 25.0], [28.0, 30.0]]
    assert intersect_gtis(np.array([[0.0, 10.0]]), np.array([[10.0, 20.0]])).shape == (0, 2)  # touching only
    assert intersect_gtis(a, np.zeros((0, 2))).shape == (0, 2)
    assert intersect_gtis(a, a).tolist() == a.tolist()


# --- filter files -----------------------------------------------------------------------


def _write_filter_file(path: Path, *, timezero: float = 3.37843167, **keywords) -> Path:
    """A 6-row XTE_MKF at 16 s, ELV good on rows 1-3, TIMEZERO as in real files."""
    columns = [
        fits.Column(name="Time", format="D", unit="s", array=np.arange(6) * 16.0 + 1.0e8),
        fits.Column(name="ELV", format="E", array=np.array([1, 10, 10, 10, 1, NAN], dtype=np.float32)),
        fits.Column(name="NUM_PCU_ON", format="B", null=255, array=np.array([2, 2, 2, 2, 2, 2], dtype=np.uint8)),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="XTE_MKF")
    header = hdu.header
    header["TIMEZERO"] = timezero
    header["MJDREFI"] = 49353
    header["MJDREFF"] = 6.965740740000e-04
    header["TIMESYS"] = "TT"
    header["TSTART"] = 1.0e8
    header["TSTOP"] = 1.0e8 + 80
    header["TIMEPIXR"] = 0.0
    header["OBJECT"] = "CYG_X-1"
    header["TLMIN2"] = -90.0  # a per-column keyword that must not be copied
    header["1CPIX3"] = "0~255"
    for key, value in keywords.items():
        header[key] = value
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(name="JUNK"), hdu])
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as stream:
            hdul.writeto(stream)
    else:
        hdul.writeto(path)
    return path


EXPR = "ELV > 4 && NUM_PCU_ON > 0"
T0 = 1.0e8


def test_filter_gti_returns_absolute_times_with_timezero(tmp_path: Path) -> None:
    path = _write_filter_file(tmp_path / "x.xfl")
    # rows 1..3 good: raw START = T0+16 - 8, STOP = T0+48 + 8
    gti = filter_gti(path, EXPR)
    assert gti == pytest.approx(np.array([[T0 + 8 + 3.37843167, T0 + 56 + 3.37843167]]), abs=1e-9)
    result = read_filter_gti(path, EXPR)
    assert result.raw.tolist() == [[T0 + 8, T0 + 56]]
    assert (result.prefr, result.postfr) == (0.5, 0.5)


def test_filter_gti_reads_gzip_and_split_timezero(tmp_path: Path) -> None:
    path = _write_filter_file(tmp_path / "x.xfl.gz", timezero=0.0)
    assert filter_gti(path, parse_filter(EXPR)).tolist() == [[T0 + 8, T0 + 56]]


def test_prefr_postfr_from_arguments_then_keywords_then_half(tmp_path: Path) -> None:
    path = _write_filter_file(tmp_path / "k.xfl", timezero=0.0, PREFR=0.0, POSTFR=1.0)
    assert filter_gti(path, EXPR).tolist() == [[T0 + 16, T0 + 64]]  # keywords
    assert filter_gti(path, EXPR, prefr=0.25).tolist() == [[T0 + 12, T0 + 64]]  # argument wins for prefr only
    assert filter_gti(path, EXPR, prefr=-1, postfr=-1).tolist() == [[T0 + 16, T0 + 64]]  # maketime's -1 = keywords
    plain = _write_filter_file(tmp_path / "p.xfl", timezero=0.0)
    assert filter_gti(plain, EXPR, postfr=0.0).tolist() == [[T0 + 8, T0 + 48]]


def test_filter_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.xfl"):
        filter_gti(tmp_path / "missing.xfl", EXPR)
    junk = tmp_path / "junk.xfl"
    junk.write_bytes(b"not fits at all" * 200)
    with pytest.raises(DataError, match="junk.xfl"):
        filter_gti(junk, EXPR)
    path = _write_filter_file(tmp_path / "x.xfl")
    with pytest.raises(DataError, match=r"OFFSET.*x\.xfl\[XTE_MKF\]"):
        filter_gti(path, "OFFSET < 0.1")
    bad = _write_filter_file(tmp_path / "bad.xfl", PREFR=2.0)
    with pytest.raises(DataError, match="PREFR"):
        filter_gti(bad, EXPR)
    with pytest.raises(UsageError, match="column 6"):
        filter_gti(path, "ELV >")


# --- maketime-format output ---------------------------------------------------------------


def test_write_gti_file_has_maketime_format(tmp_path: Path) -> None:
    src = _write_filter_file(tmp_path / "x.xfl")
    result = read_filter_gti(src, EXPR)
    out = tmp_path / "out.gti"
    long_expr = EXPR + " && " + " && ".join(f"ELV > {i}" for i in range(12))
    write_gti_file(out, result.raw, result.header, long_expr, result.prefr, result.postfr)
    assert not (tmp_path / "out.gti.tmp").exists()
    with fits.open(out) as hdul:
        assert len(hdul) == 2
        primary, table = hdul
        assert table.name == "STDGTI"
        assert table.columns.names == ["START", "STOP"]
        assert [c.format for c in table.columns] == ["1D", "1D"]
        assert [c.unit for c in table.columns] == ["sec", "sec"]
        assert table.data["START"].tolist() == [T0 + 8] and table.data["STOP"].tolist() == [T0 + 56]
        hdr = table.header
        assert (hdr["HDUCLASS"], hdr["HDUCLAS1"], hdr["HDUCLAS2"]) == ("OGIP", "GTI", "STANDARD")
        assert (hdr["PREFR"], hdr["POSTFR"]) == (0.5, 0.5)
        for header in (primary.header, hdr):
            assert header["TIMEZERO"] == 3.37843167
            assert header["MJDREFI"] == 49353 and header["OBJECT"] == "CYG_X-1" and header["TSTART"] == T0
            assert "TLMIN2" not in header and "1CPIX3" not in header
        history = "".join(str(h) for h in hdr["HISTORY"])
        assert "ELV > 11" in history and EXPR in history
    # saextrct's reading: START + TIMEZERO is the absolute time filter_gti returns
    assert filter_gti(src, EXPR).tolist() == [[T0 + 8 + 3.37843167, T0 + 56 + 3.37843167]]


def test_write_gti_file_with_no_intervals_writes_an_empty_table(tmp_path: Path) -> None:
    out = tmp_path / "empty.gti"
    write_gti_file(out, np.zeros((0, 2)), fits.Header(), "ELV > 100", 0.5, 0.5)
    with fits.open(out) as hdul:
        assert hdul["STDGTI"].data is None or len(hdul["STDGTI"].data) == 0
        write_gti_file(out, np.array([[1.0, 2.0]]), fits.Header(), "ELV > 1", 0.5, 0.5)  # overwrites
    with fits.open(out) as hdul:
        assert hdul["STDGTI"].data["START"].tolist() == [1.0]


def test_non_numeric_column_is_a_data_error() -> None:
    with pytest.raises(DataError, match="OBJECT is not numeric"):
        parse_filter("OBJECT > 1").evaluate({"OBJECT": np.array(["a", "b"])})
