"""Good time intervals the way maketime makes them, in numpy, without HEASoft.

Layers, so the rules can be tested without files (docs/science.md#good-time-maketime and the
native spec item 1):

* the filter expression (`filterexpr.py`: CFITSIO's language and semantics),
  applied to a filter file's rows with CFITSIO's column types;
* maketime's `fndssp` rules turning per-row flags into [START, STOP) intervals;
* GTI set operations and row selection as saextrct applies them.

Time stamps: intervals are built on the filter file's RAW `Time` scale, exactly
as maketime writes them; `filter_gti` adds the file's TIMEZERO to make absolute
times, as saextrct does when it reads a maketime file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.fits.lcfile import absolute_times
from rxte_hpc.fits.tableio import FitsTable, read_tables
from rxte_hpc.extract.filterexpr import FilterExpr, missing_columns_message, parse_filter
from rxte_hpc.core.intervals import union

log = logging.getLogger(__name__)

#: maketime's fraction when neither a parameter nor a PREFR/POSTFR keyword gives one.
DEFAULT_FRACTION = 0.5

# ---------------------------------------------------------------------------
# FITS tables -> flags
# ---------------------------------------------------------------------------


def column_for_cfitsio(
    raw: np.ndarray, code: str, repeat: int, tscal: float, tzero: float, tnull: object, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(values, NULL mask) of a stored column as CFITSIO's calculator reads it (eval_f.c find_column).

    B/I/J without TSCAL and with TZERO 0 or 32768 are `long` (int64 here);
    K, E, D and scaled integers are doubles (float64). A stored value equal
    to an integer column's TNULL is NULL; a float's NaN and infinities are
    NULL too (`FilterExpr.evaluate` marks those). Vectors, strings, logical
    and bit columns are refused: screening expressions do not use them.
    """
    if repeat != 1 or code not in "BIJKED":
        raise DataError(f"{where}: a filter expression can use only numeric scalar columns; this one has TFORM "
                        f"{repeat}{code}")
    raw = np.asarray(raw)
    null = np.zeros(raw.shape, dtype=bool)
    if code in "BIJK" and isinstance(tnull, (int, np.integer)) and not isinstance(tnull, bool):
        null = raw == tnull
    if code in "BIJ" and tscal == 1.0 and tzero in (0.0, 32768.0):
        return raw.astype(np.int64) + np.int64(tzero), null
    values = raw.astype(np.float64)
    if tscal != 1.0 or tzero != 0.0:
        values = values * tscal + tzero
    return values, null


def row_flags_from_table(table: FitsTable, expr: FilterExpr) -> np.ndarray:
    """Evaluate `expr` on a table read by `tableio` (the native extractor's fast reader)."""
    missing = sorted(c for c in expr.columns if not table.has(c))
    if missing:
        raise DataError(missing_columns_message(expr.text, missing, list(table.names), f"{table.where}[{table.extname}]"))
    columns: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    for name in expr.columns:
        spec = table.specs[name]
        header = table.header
        columns[name], nulls[name] = column_for_cfitsio(
            table.raw(name), spec.code, spec.repeat, float(header.get(f"TSCAL{spec.index}", 1.0)),
            float(header.get(f"TZERO{spec.index}", 0.0)), header.get(f"TNULL{spec.index}"),
            f"{table.where}[{table.extname}] column {name}")
    if not expr.columns:
        columns["__ROWS__"] = np.zeros(table.n_rows)
    return expr.evaluate(columns, nulls)


# ---------------------------------------------------------------------------
# Flags -> intervals (maketime's fndssp)
# ---------------------------------------------------------------------------


def _check_fraction(value: float, name: str) -> float:
    if not (0.0 <= float(value) <= 1.0):
        raise UsageError(f"{name}={value} must be between 0 and 1 (fraction of the sample spacing)")
    return float(value)


def intervals_from_flags(
    times: np.ndarray, flags: np.ndarray, prefr: float = DEFAULT_FRACTION, postfr: float = DEFAULT_FRACTION
) -> np.ndarray:
    """maketime's `fndssp`: one [START, STOP] per maximal run of true rows i..j-1.

    START = t[i] for the first row or when t[i] <= t[i-1] (out of order), else
    t[i] - prefr*(t[i]-t[i-1]). STOP = t[j-1] when the run reaches the last row
    or t[j] <= t[j-1], else t[j-1] + postfr*(t[j]-t[j-1]). Intervals with
    STOP <= START are dropped: maketime drops zero-length ones, and a negative
    one (times out of order inside a run) is not an interval anyone can use.
    """
    times = np.asarray(times, dtype=np.float64)
    flags = np.asarray(flags, dtype=bool)
    if times.shape != flags.shape or times.ndim != 1:
        raise ValueError(f"times {times.shape} and flags {flags.shape} must be 1-D of equal length")
    prefr = _check_fraction(prefr, "prefr")
    postfr = _check_fraction(postfr, "postfr")
    if not np.all(np.isfinite(times)):
        raise DataError("filter file has non-finite Time values")
    n = len(times)
    padded = np.concatenate([[False], flags, [False]])
    edges = np.diff(padded.astype(np.int8))
    run_starts = np.nonzero(edges == 1)[0]
    run_stops = np.nonzero(edges == -1)[0]  # j: first row after the run
    intervals = []
    for i, j in zip(run_starts, run_stops):
        if i == 0 or times[i] <= times[i - 1]:
            start = times[i]
        else:
            start = times[i] - prefr * (times[i] - times[i - 1])
        if j == n or times[j] <= times[j - 1]:
            stop = times[j - 1]
        else:
            stop = times[j - 1] + postfr * (times[j] - times[j - 1])
        if stop > start:
            intervals.append((start, stop))
    return np.array(intervals, dtype=np.float64).reshape(-1, 2)


# ---------------------------------------------------------------------------
# Filter file -> GTI
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FilterGti:
    """What maketime would compute from one filter file: raw intervals and what they came from.

    `raw` is on the filter file's Time scale (what maketime writes); `absolute`
    has the file's TIMEZERO added (what saextrct uses). `header` is the filter
    table's header (its raw cards, for a maketime-format copy).
    """

    raw: np.ndarray
    absolute: np.ndarray
    header: Mapping[str, Any]
    prefr: float
    postfr: float
    expr: FilterExpr


def _filter_table(tables: list[FitsTable], where: str) -> FitsTable:
    for table in tables:
        if table.extname.upper() == "XTE_MKF":
            return table
    if tables:
        return tables[0]
    raise DataError(f"{where}: no binary table (expected the XTE_MKF extension of a filter file)")


def _fraction(arg: float | None, header: Mapping[str, Any], key: str, where: str) -> float:
    """maketime's rule: a parameter >= 0 wins, else the PREFR/POSTFR keyword, else 0.5."""
    if arg is not None and arg >= 0:
        return _check_fraction(arg, key.lower())
    if key in header:
        try:
            value = float(header[key])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: keyword {key}={header[key]!r} is not a number") from exc
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: keyword {key}={value} is outside 0-1")
        return value
    return DEFAULT_FRACTION


def read_filter_gti(
    filter_path: Path | str, expr: str | FilterExpr, prefr: float | None = None, postfr: float | None = None
) -> FilterGti:
    """Screen a (possibly gzipped) filter file as maketime does, through the fast reader (`fits.tableio`).

    Only the expression's columns and Time are read, with CFITSIO's column
    types (`column_for_cfitsio`); astropy's table set-up alone took as long
    as a whole native extraction.
    """
    parsed = expr if isinstance(expr, FilterExpr) else parse_filter(expr)
    where = str(filter_path)
    table = _filter_table(read_tables(Path(filter_path)), where)
    if not table.has("TIME"):
        raise DataError(f"{where}: extension {table.extname or '?'} has no Time column")
    header = table.header
    try:
        times = table.values("Time")
        flags = row_flags_from_table(table, parsed)
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{where}: not a readable filter file ({type(exc).__name__}: {exc})") from exc
    pre = _fraction(prefr, header, "PREFR", where)
    post = _fraction(postfr, header, "POSTFR", where)
    raw = intervals_from_flags(times, flags, pre, post)
    log.debug("%s: %d of %d rows pass %r -> %d intervals", where, int(flags.sum()), len(flags), parsed.text, len(raw))
    return FilterGti(raw, absolute_times(raw, header).reshape(-1, 2), header, pre, post, parsed)


def filter_gti(
    filter_path: Path | str, expr: str | FilterExpr, prefr: float | None = None, postfr: float | None = None
) -> np.ndarray:
    """maketime on a filter file, as absolute (TIMEZERO-added) [start, stop) intervals, shape (n, 2).

    prefr/postfr: the arguments when given (>= 0), else the table's PREFR/POSTFR
    keywords, else 0.5, as maketime decides.
    """
    return read_filter_gti(filter_path, expr, prefr, postfr).absolute


# ---------------------------------------------------------------------------
# GTI set operations and row selection
# ---------------------------------------------------------------------------


def select_rows(t_row: np.ndarray, gti: np.ndarray) -> np.ndarray:
    """Rows whose time lies in some interval, start <= t < stop, with no tolerance (saextrct)."""
    t_row = np.asarray(t_row, dtype=np.float64)
    merged = union(gti)
    if not len(merged):
        return np.zeros(t_row.shape, dtype=bool)
    index = np.searchsorted(merged[:, 0], t_row, side="right") - 1
    inside = index >= 0
    inside[inside] = t_row[inside] < merged[index[inside], 1]
    return inside
