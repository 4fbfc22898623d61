"""Good time intervals the way maketime makes them, in numpy, without HEASoft.

Layers, so the rules can be tested without files (RXTE-PCA.md Q3 and the
native spec item 1):

* the filter expression (`filterexpr.py`: a safe parser, NULL semantics),
  applied to a filter file's rows;
* maketime's `fndssp` rules turning per-row flags into [START, STOP) intervals;
* GTI set operations and row selection as saextrct applies them.

Time stamps: intervals are built on the filter file's RAW `Time` scale, exactly
as maketime writes them; `filter_gti` adds the file's TIMEZERO to make absolute
times, as saextrct does when it reads a maketime file.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.core.fsutil import atomic_path
from rxte_hpc.fits.lcfile import absolute_times
from rxte_hpc.fits.tableio import FitsTable
from rxte_hpc.extract.filterexpr import FilterExpr, missing_columns_message, parse_filter
from rxte_hpc.core.intervals import as_intervals, union

log = logging.getLogger(__name__)

#: maketime's fraction when neither a parameter nor a PREFR/POSTFR keyword gives one.
DEFAULT_FRACTION = 0.5

# ---------------------------------------------------------------------------
# FITS tables -> flags
# ---------------------------------------------------------------------------


def _hdu_where(hdu: fits.BinTableHDU) -> str:
    """'file[EXTNAME]' for messages, whatever astropy knows about where the HDU came from."""
    info = hdu.fileinfo() if hasattr(hdu, "fileinfo") else None
    file = getattr(info.get("file"), "name", None) if info else None
    ext = str(hdu.header.get("EXTNAME", "?")).strip()
    return f"{file}[{ext}]" if file else f"extension {ext}"


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


def row_flags_from_hdu(hdu: fits.BinTableHDU, expr: FilterExpr) -> np.ndarray:
    """Evaluate `expr` on an astropy table extension, reading only the columns it names."""
    names = {name.upper(): name for name in hdu.columns.names}
    missing = sorted(expr.columns - names.keys())
    if missing:
        raise DataError(missing_columns_message(expr.text, missing, list(hdu.columns.names), _hdu_where(hdu)))
    table: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    n_rows = len(hdu.data) if hdu.data is not None else 0
    for upper in expr.columns:
        column = hdu.columns[names[upper]]
        match = re.fullmatch(r"\s*(\d*)\s*([A-Z])\S*", str(column.format).upper())
        repeat, code = (int(match.group(1) or 1), match.group(2)) if match else (0, "?")
        tscal = float(column.bscale) if column.bscale is not None else 1.0
        tzero = float(column.bzero) if column.bzero is not None else 0.0
        scaled = np.asarray(hdu.data[names[upper]]) if n_rows else np.zeros(0)
        # astropy returns scaled values; CFITSIO compares TNULL with the stored ones.
        raw = np.rint((scaled.astype(np.float64) - tzero) / tscal).astype(np.int64) if code in "BIJK" else scaled
        table[upper], nulls[upper] = column_for_cfitsio(
            raw, code, repeat, tscal, tzero, column.null, f"{_hdu_where(hdu)} column {names[upper]}")
    if not expr.columns:
        table["__ROWS__"] = np.zeros(n_rows)
    return expr.evaluate(table, nulls)


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
    table's header, for `write_gti_file`'s keyword copy.
    """

    raw: np.ndarray
    absolute: np.ndarray
    header: fits.Header
    prefr: float
    postfr: float
    expr: FilterExpr


def _filter_table(hdul: fits.HDUList, where: str) -> fits.BinTableHDU:
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.BinTableHDU) and str(hdu.header.get("EXTNAME", "")).strip().upper() == "XTE_MKF":
            return hdu
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.BinTableHDU):
            return hdu
    raise DataError(f"{where}: no binary table (expected the XTE_MKF extension of a filter file)")


def _fraction(arg: float | None, header: fits.Header, key: str, where: str) -> float:
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
    """Screen a (possibly gzipped) filter file; everything `write_gti_file` needs to imitate maketime."""
    parsed = expr if isinstance(expr, FilterExpr) else parse_filter(expr)
    where = str(filter_path)
    try:
        with fits.open(filter_path, memmap=False) as hdul:
            hdu = _filter_table(hdul, where)
            names = {name.upper(): name for name in hdu.columns.names}
            if "TIME" not in names:
                raise DataError(f"{where}: extension {hdu.header.get('EXTNAME', '?')} has no Time column")
            header = hdu.header.copy()
            n_rows = len(hdu.data) if hdu.data is not None else 0
            times = np.asarray(hdu.data[names["TIME"]], dtype=np.float64) if n_rows else np.zeros(0)
            flags = row_flags_from_hdu(hdu, parsed)
    except FileNotFoundError as exc:
        raise DataError(f"filter file {where} does not exist") from exc
    except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
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


# ---------------------------------------------------------------------------
# maketime-format output
# ---------------------------------------------------------------------------

_STRUCTURAL = frozenset(
    "SIMPLE EXTEND XTENSION BITPIX NAXIS PCOUNT GCOUNT TFIELDS THEAP EXTNAME EXTVER EXTLEVEL "
    "BSCALE BZERO BLANK CHECKSUM DATASUM HDUCLASS HDUCLAS1 HDUCLAS2 HDUCLAS3 PREFR POSTFR "
    "COMMENT HISTORY".split()
)
# Per-column keywords (TTYPEn, TLMINn, TDDESn, 1CPIXn, ...) describe the input's
# columns and would mislabel the GTI table's, so they are not copied either.
_COLUMN_KEYWORD = re.compile(r"(T[A-Z]{3,5}|\d+[A-Z]+)\d+[A-Z]?|NAXIS\d*")


def _copyable(key: str) -> bool:
    return bool(key) and key not in _STRUCTURAL and not _COLUMN_KEYWORD.fullmatch(key)


def write_gti_file(
    path: Path | str,
    gti_raw: np.ndarray,
    header_source: fits.Header,
    expr: str | FilterExpr,
    prefr: float,
    postfr: float,
) -> None:
    """Write a GTI file as maketime does (copykw=yes, histkw=yes).

    Primary HDU plus an 'STDGTI' table of 1D START/STOP with TUNIT 'sec', on
    the RAW time scale; the input extension's non-structural keywords
    (TIMEZERO, MJDREF*, TSTART, ...) go into both headers so that a reader adds
    the right TIMEZERO. Written to a temporary name and renamed, so nobody
    reads half a file.
    """
    gti_raw = as_intervals(gti_raw)
    text = str(expr)
    primary = fits.PrimaryHDU()
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="START", format="1D", unit="sec", array=gti_raw[:, 0]),
            fits.Column(name="STOP", format="1D", unit="sec", array=gti_raw[:, 1]),
        ],
        name="STDGTI",
    )
    for card in header_source.cards:
        if _copyable(card.keyword):
            # From the card image, so values and comments are copied exactly as written.
            primary.header.append(fits.Card.fromstring(card.image))
            table.header.append(fits.Card.fromstring(card.image))
    table.header["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    table.header["HDUCLAS1"] = ("GTI", "extension contains good time intervals")
    table.header["HDUCLAS2"] = ("STANDARD", "standard good time intervals")
    table.header["PREFR"] = (float(prefr), "fraction of spacing before a good row")
    table.header["POSTFR"] = (float(postfr), "fraction of spacing after a good row")
    for header in (primary.header, table.header):
        header.add_history("maketime (rxte_hpc native) expression:")
        header.add_history(text)
    with atomic_path(Path(path)) as temporary:
        fits.HDUList([primary, table]).writeto(temporary)
