"""Reading one per-ObsID light curve for the merge, fast, with its CHECKSUM/DATASUM verified over the bytes read.

astropy takes ~5 ms to open a small light curve (more with checksum=True),
which makes a 100,000-ObsID gather a quarter of an hour of opening files. The
per-ObsID files are small OGIP tables our own writers made, so here a file is
read once into memory, its HDUs are walked with the fast table reader
(`fits.tableio`: header cards parsed lazily, columns viewed zero-copy), each
HDU's sums are computed over the bytes already read (the FITS 32-bit ones'
complement sum, numpy over the buffer) and compared with its CHECKSUM and
DATASUM, and only what the merge uses is built: TIME (through `lcfile`'s
time keywords: TIMEZERO, MJDREF, TIMEUNIT, TIMEPIXR), RATE, ERROR, FRACEXP,
the optional columns, the GTI, and the keywords the merge carries.

A failed sum is a DataError at once (the file changed after it was written).
Anything else the fast path does not read (gzip, a long-string keyword, an
odd column, a structure it does not expect) goes to `lcfile.read_lightcurves`
with checksum verification, so the result, or the one-line error, is the
authoritative reader's. tests/products/test_targets_gather.py compares the two readers.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rxte_hpc.core.errors import DataError
from rxte_hpc.fits.lcfile import REQUIRED_COLUMNS, LightCurve, read_lightcurves
from rxte_hpc.fits.tableio import BLOCK, CARD, FitsTable, Header, image_bytes, padded, table_at
from rxte_hpc.fits.timekeys import absolute_times, bin_start_times, read_time_ref
from rxte_hpc.fits.writer import ones_complement_sum
from rxte_hpc.products.merge import CARRIED_KEYWORDS, OPTIONAL_COLUMNS

__all__ = ["hdu_sums_ok", "read_obsid_curves", "read_obsid_curves_fast"]

log = logging.getLogger(__name__)

#: Keywords of a light-curve extension the merge reads (CurveAccumulator.add); the rest are not built.
MERGE_KEYWORDS = (*CARRIED_KEYWORDS, "CHMIN", "CHMAX", "GAINEPOC", "GAINEPO")
_MASK32 = 0xFFFFFFFF
_CHANNEL_COMMENT = re.compile(r"COMMENT.*\b(CHMIN|CHMAX) for filtering was\s+(\d+)")


#: A header's END card (blank-padded); found by one search instead of a loop over cards.
_END = re.compile(rb"END {77}")
#: Parsed values by card text: most cards (TTYPEn, TFORMn, MJDREF, TIMEDEL, ...) repeat from file to file.
_VALUES: dict[str, Any] = {}
_MAX_CACHED = 100_000


class _NotFast(Exception):
    """The fast path does not read this file; the astropy reader will."""


class _CachedHeader(Header):
    """`tableio.Header` whose parsed values are shared between files by card text (same card, same value)."""

    def __getitem__(self, key: str) -> Any:
        card = self._cards[key]
        try:
            return _VALUES[card]
        except KeyError:
            pass
        value = super().__getitem__(key)
        if len(_VALUES) < _MAX_CACHED:
            _VALUES[card] = value
        return value


def _parse_header(buffer: bytes, start: int, where: str) -> tuple[Header, int]:
    """The header at `start` and the offset just after its last block (tableio's parser, one search for END)."""
    pos = start
    while True:
        found = _END.search(buffer, pos)
        if found is None:
            raise DataError(f"{where}: truncated FITS file (header at byte {start} has no END)")
        if (found.start() - start) % CARD == 0:
            break
        pos = found.start() + 1
    text = buffer[start:found.start()].decode("ascii", errors="replace")
    cards = [text[i:i + CARD] for i in range(0, len(text), CARD)]
    if "CONTINUE" in text and any(c.startswith("CONTINUE") for c in cards):
        raise _NotFast("a long-string keyword (CONTINUE)")
    keyed = {c[:8].rstrip(): c for c in reversed(cards) if c[8:10] == "= "}  # reversed: the first card wins
    end = start + padded(found.start() + CARD - start)
    if end > len(buffer):
        raise DataError(f"{where}: truncated FITS file (header at byte {start} has no END)")
    return _CachedHeader(keyed, frozenset(), where), end


def hdu_sums_ok(buffer: bytes, start: int, data_start: int, end: int, header: Mapping[str, Any]) -> str:
    """'' when the HDU buffer[start:end] matches its CHECKSUM and DATASUM (where it has them), else which failed.

    The data sum must equal DATASUM; the sum over header and data, the
    CHECKSUM card included, must be ones' complement zero (all bits set).
    """
    data_sum = ones_complement_sum(buffer[data_start:end])
    if "DATASUM" in header:
        try:
            stored = int(str(header["DATASUM"]).strip() or "0")
        except (ValueError, DataError):
            return "Datasum unreadable"
        if stored % _MASK32 != data_sum % _MASK32:
            return "Datasum verification failed"
    if "CHECKSUM" in header:
        if ones_complement_sum(buffer[start:data_start], data_sum) != _MASK32:  # the writer's sum, the same algorithm
            return "Checksum verification failed"
    return ""


def read_obsid_curves(path: Path) -> list[LightCurve]:
    """Every light-curve extension of a per-ObsID file (one per band), its sums verified; DataError naming the file."""
    try:
        buffer = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: light curve file does not exist") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return read_obsid_curves_fast(buffer, str(path))
    except _NotFast as why:
        log.debug("%s: read with astropy (%s)", path, why)
        return read_lightcurves(path, verify_checksum=True)


def read_obsid_curves_fast(buffer: bytes, where: str) -> list[LightCurve]:
    """The fast path over a file's bytes; `_NotFast` for what it leaves to astropy."""
    if not buffer.startswith(b"SIMPLE  ="):
        raise _NotFast("not a plain FITS file")
    curves: list[FitsTable] = []
    comments: list[str] = []
    gti: FitsTable | None = None
    pos, number = 0, 0
    try:
        while pos < len(buffer):
            if number and not buffer[pos:pos + BLOCK].strip(b"\0 "):
                break  # trailing padding
            header, data_start = _parse_header(buffer, pos, where)
            table = None
            if number == 0:
                data_end = data_start + image_bytes(header, where)
            elif str(header.get("XTENSION", "")).strip() == "BINTABLE":
                table, data_end = table_at(buffer, header, data_start, where)
            else:
                raise _NotFast(f"HDU {number} is not a binary table")
            end = data_start + padded(data_end - data_start)
            if end > len(buffer):
                raise _NotFast("truncated")
            failed = hdu_sums_ok(buffer, pos, data_start, end, header)
            if failed:
                raise DataError(f"{where}: {failed} for HDU #{number}: the file changed after it was written")
            if table is not None:
                kind = _kind(table)
                if kind == "lc":
                    curves.append(table)
                    text = buffer[pos:data_start]
                    comments.append(text.decode("ascii", "replace") if b"for filtering was" in text else "")
                elif kind == "gti" and gti is None:
                    gti = table
            pos, number = end, number + 1
        if not curves:
            raise _NotFast("no light-curve extension")
        ref = read_time_ref(curves[0].header)
        gti_array = None
        if gti is not None:
            start = absolute_times(gti.values("START"), gti.header)
            stop = absolute_times(gti.values("STOP"), gti.header)
            gti_array = np.column_stack([start, stop]) if len(start) else np.zeros((0, 2))
            gti_array = gti_array + read_time_ref(gti.header).seconds_to(ref)
        return [_curve(t, gti_array, text, where) for t, text in zip(curves, comments)]
    except DataError as exc:
        if "verification failed" in str(exc) or "Datasum unreadable" in str(exc):
            raise
        raise _NotFast(str(exc)) from exc  # astropy's reading and message are the reference


def _kind(table: FitsTable) -> str:
    hduclas1 = str(table.header.get("HDUCLAS1", "")).strip().upper()
    if hduclas1 == "LIGHTCURVE" or (table.has("TIME") and (table.has("RATE") or table.has("COUNTS"))):
        return "lc"
    if hduclas1 == "GTI" or (table.has("START") and table.has("STOP") and table.extname.upper() in ("GTI", "STDGTI")):
        return "gti"
    return ""


def _curve(table: FitsTable, gti: np.ndarray | None, header_text: str, where: str) -> LightCurve:
    hdr = table.header
    for column in REQUIRED_COLUMNS:
        if not table.has(column):
            raise DataError(f"{where}: extension {table.extname or '?'} has no {column} column")
    time, timedel = bin_start_times(table.values("TIME"), hdr, where, table.extname)
    columns = {name: _native(table, name) for name in table.names if name.upper() in _OPTIONAL_UPPER}
    keywords: dict[str, Any] = {k: hdr[k] for k in MERGE_KEYWORDS if k in hdr}
    for match in _CHANNEL_COMMENT.finditer(_cards_text(header_text)):
        keywords.setdefault(match.group(1), int(match.group(2)))
    return LightCurve(
        time=time,
        rate=table.values("RATE"),
        error=table.values("ERROR"),
        fracexp=table.values("FRACEXP"),
        timedel=timedel,
        ref=read_time_ref(hdr),
        columns=columns,
        gti=gti,
        name=table.extname or "RATE",
        keywords=keywords,
    )


_OPTIONAL_UPPER = frozenset(c.upper() for c in OPTIONAL_COLUMNS)


def _native(table: FitsTable, name: str) -> np.ndarray:
    """A column as astropy gives it: native byte order, scaled to float64 only when TSCAL/TZERO say so."""
    index = table.column_index(name)
    if f"TSCAL{index}" in table.header or f"TZERO{index}" in table.header:
        return table.values(name)
    raw = table.raw(name)
    return raw.astype(raw.dtype.newbyteorder("="))


def _cards_text(text: str) -> str:
    """A header's text one card per line, so a pattern cannot run from one card into the next."""
    return "\n".join(text[i:i + 80] for i in range(0, len(text), 80)) if text else ""
