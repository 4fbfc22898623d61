"""Test-side maketime helpers: the astropy reading of a filter table and a maketime-format GTI writer.

The package screens filter files with its fast reader (`gti.read_filter_gti`);
these are the second reader the tests compare it with and the writer the
tests use to make maketime's output format (DESIGN: a maketime-format writer
only the tests use lives under tests/).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from astropy.io import fits

from rxte_hpc.core.errors import DataError
from rxte_hpc.core.fsutil import atomic_path
from rxte_hpc.core.intervals import as_intervals
from rxte_hpc.extract.filterexpr import FilterExpr, missing_columns_message
from rxte_hpc.extract.gti import column_for_cfitsio


def _hdu_where(hdu: fits.BinTableHDU) -> str:
    """'file[EXTNAME]' for messages, whatever astropy knows about where the HDU came from."""
    info = hdu.fileinfo() if hasattr(hdu, "fileinfo") else None
    file = getattr(info.get("file"), "name", None) if info else None
    ext = str(hdu.header.get("EXTNAME", "?")).strip()
    return f"{file}[{ext}]" if file else f"extension {ext}"


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


def _card_images(header: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(keyword, 80-character card) of an astropy header or a `fits.tableio` one."""
    if isinstance(header, fits.Header):
        for card in header.cards:
            yield card.keyword, card.image
        return
    for key in header:
        image = header.card(key)  # type: ignore[attr-defined]
        if image is not None:
            yield key, image


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
    header_source: Mapping[str, Any],
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
    for key, image in _card_images(header_source):
        if _copyable(key):
            # From the card image, so values and comments are copied exactly as written.
            primary.header.append(fits.Card.fromstring(image))
            table.header.append(fits.Card.fromstring(image))
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
