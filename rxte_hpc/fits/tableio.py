"""Fast reads of pcaprepobsid products for the native extractor: FITS tables and list files.

A `_dt` file has ~180 columns; astropy builds a Column object for each and
takes ~50 ms per file, which alone would make a 1,370-ObsID campaign exceed a
minute. Here a binary table's header is parsed once and only the columns the
extraction needs are viewed, zero-copy, through a numpy dtype with their byte
offsets, so a file costs about what reading its bytes costs.

What it reads, it reads as CFITSIO and astropy do (tests/fits/test_tableio.py
compares every column): numbers B, I, J, K, E, D of any repeat count (TDIMn
shapes, TSCAL/TZERO/TNULL honoured), strings nA (whole, as bytes), logicals
nL (as the stored T/F/NUL bytes). What it cannot read it refuses with a
DataError naming the file, never a guess: bit (X), complex (C, M) and heap
(P, Q) columns are skipped over and refused when asked for, and so is a
long-string keyword (CONTINUE cards) or a value it cannot parse.
"""
from __future__ import annotations

import gzip
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from rxte_hpc.core.errors import DataError

log = logging.getLogger(__name__)

BLOCK = 2880
CARD = 80
_GZIP_MAGIC = b"\x1f\x8b"
_TFORM = re.compile(r"\s*(\d*)\s*([LXBIJKAEDCMPQ])")
#: bytes per element and the big-endian numpy type of each fixed-width TFORM code.
_CODES = {"L": (1, "S1"), "B": (1, "u1"), "I": (2, ">i2"), "J": (4, ">i4"), "K": (8, ">i8"),
          "A": (1, "S1"), "E": (4, ">f4"), "D": (8, ">f8"), "C": (8, ">c8"), "M": (16, ">c16")}
_HEAP_WIDTH = {"P": 8, "Q": 16}
#: Formats read faithfully; the others are refused when asked for, with what they are.
_READABLE = frozenset("LBIJKAED")
_UNREADABLE = {"X": "a bit array", "C": "complex", "M": "complex", "P": "a heap array", "Q": "a heap array"}


def _card_value(text: str) -> Any:
    """The value of one `KEY = value / comment` card: str, bool, int or float; ValueError for anything else."""
    body = text[10:].strip()
    if body.startswith("'"):
        end = body.find("'", 1)
        while end != -1 and body[end + 1:end + 2] == "'":  # '' is a quote inside the string
            end = body.find("'", end + 2)
        return body[1:end if end != -1 else None].replace("''", "'").rstrip()
    value = body.split("/", 1)[0].strip()
    if value in ("T", "F"):
        return value == "T"
    try:
        return int(value)
    except ValueError:
        pass
    return float(value.replace("D", "E").replace("d", "e"))  # ValueError for a complex or undefined value


class Header(Mapping[str, Any]):
    """A header's keywords, each value parsed from its card only when asked for.

    A `_dt` header has ~1,000 cards of which the extractor reads a few dozen;
    parsing them all cost more than reading the data.
    """

    def __init__(self, cards: Mapping[str, str], continued: frozenset[str] = frozenset(), where: str = "") -> None:
        self._cards = dict(cards)
        self._continued = continued
        self._where = where

    def __getitem__(self, key: str) -> Any:
        card = self._cards[key]
        if key in self._continued:
            raise DataError(f"{self._where}: keyword {key} is a long string continued on CONTINUE cards, "
                            "which this reader does not read")
        try:
            return _card_value(card)
        except ValueError:
            raise DataError(f"{self._where}: keyword {key} has a value this reader cannot parse: "
                            f"{card[10:].split('/')[0].strip()!r}") from None

    def card(self, key: str) -> str | None:
        """The raw 80-character card of `key`, or None."""
        return self._cards.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._cards

    def __iter__(self) -> Iterator[str]:
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)


def _parse_header(buffer: bytes, start: int, where: str) -> tuple[Header, int]:
    """Keywords of the header at `start` and the offset just after its last block."""
    cards: dict[str, str] = {}
    continued: set[str] = set()
    last = ""
    pos = start
    while True:
        block = buffer[pos:pos + BLOCK]
        if len(block) < BLOCK:
            raise DataError(f"{where}: truncated FITS file (header at byte {start} has no END)")
        pos += BLOCK
        text = block.decode("ascii", errors="replace")
        for i in range(0, BLOCK, CARD):
            card = text[i:i + CARD]
            if card[8:10] == "= ":
                last = card[:8].rstrip()
                cards.setdefault(last, card)
            elif card.startswith("CONTINUE"):
                continued.add(last)
            elif card.startswith("END "):
                return Header(cards, frozenset(continued), where), pos


@dataclass(frozen=True)
class _ColumnSpec:
    index: int  # 1-based, as in TTYPEn
    offset: int
    code: str
    repeat: int


@dataclass(frozen=True, eq=False)
class FitsTable:
    """One binary-table extension: its keywords and zero-copy access to chosen columns."""

    where: str
    header: Mapping[str, Any]
    specs: Mapping[str, _ColumnSpec]  # keyed by upper-case name
    names: tuple[str, ...]
    data: bytes
    n_rows: int
    row_bytes: int

    @property
    def extname(self) -> str:
        return str(self.header.get("EXTNAME", "")).strip()

    def has(self, name: str) -> bool:
        return name.upper() in self.specs

    def column_index(self, name: str) -> int:
        return self._spec(name).index

    def _spec(self, name: str) -> _ColumnSpec:
        try:
            return self.specs[name.upper()]
        except KeyError:
            raise DataError(f"{self.where}[{self.extname}]: missing column {name}") from None

    def raw(self, name: str) -> np.ndarray:
        """The stored values (big-endian, unscaled): shape (n,), (n, repeat) or (n, *TDIM reversed).

        nA strings are (n,) bytes of width n; nL logicals are the stored bytes b'T', b'F' or b'\\0' (undefined).
        """
        spec = self._spec(name)
        if spec.code not in _READABLE:
            raise DataError(f"{self.where}[{self.extname}]: column {name} has TFORM {spec.repeat}{spec.code} "
                            f"({_UNREADABLE.get(spec.code, 'unknown')}), which this reader does not read")
        width, base = _CODES[spec.code]
        if spec.code == "A":
            base, shape = f"S{max(spec.repeat, 1)}", self._shape(spec, name, strings=True)
        else:
            shape = self._shape(spec, name)
        dtype = np.dtype({"names": ["v"], "formats": [(base, shape) if shape else base],
                          "offsets": [spec.offset], "itemsize": self.row_bytes})
        return np.frombuffer(self.data, dtype=dtype, count=self.n_rows)["v"]

    def _shape(self, spec: _ColumnSpec, name: str, strings: bool = False) -> tuple[int, ...]:
        """The element shape of a row: () for a scalar or one string, TDIMn reversed (C order) when given."""
        key = f"TDIM{spec.index}"
        if key not in self.header:
            return () if strings or spec.repeat == 1 else (spec.repeat,)
        if strings:
            raise DataError(f"{self.where}[{self.extname}]: column {name} is an array of strings ({key}), "
                            "which this reader does not read")
        dims = [int(d) for d in re.findall(r"\d+", str(self.header[key]))]
        if int(np.prod(dims)) != spec.repeat:
            raise DataError(f"{self.where}[{self.extname}]: column {name} has {key} = {self.header[key]!r}, "
                            f"not {spec.repeat} elements")
        return tuple(reversed(dims))

    def values(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Values as float64 with TSCAL/TZERO applied; NULLs (TNULL, NaN) are NaN. `rows`: a row mask."""
        spec = self._spec(name)
        if spec.code in "AL":
            raise DataError(f"{self.where}[{self.extname}]: column {name} has TFORM {spec.repeat}{spec.code}, "
                            "not a number")
        raw = self.raw(name)
        if rows is not None:
            raw = raw[rows]
        out = raw.astype(np.float64)
        tnull = self.header.get(f"TNULL{spec.index}")
        if isinstance(tnull, int) and spec.code in "BIJK":
            out[raw == tnull] = np.nan
        tscal = float(self.header.get(f"TSCAL{spec.index}", 1.0))
        tzero = float(self.header.get(f"TZERO{spec.index}", 0.0))
        if tscal != 1.0 or tzero != 0.0:
            out = out * tscal + tzero
        return out

    def counts(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Counts as saextrct sums them with negative=IGNORE: NULL and negative values become 0.

        Unscaled integer columns stay integers (int64), so summing many
        columns costs integer adds rather than float conversions.
        """
        spec = self._spec(name)
        index = spec.index
        if spec.code in "BIJK" and f"TSCAL{index}" not in self.header and f"TZERO{index}" not in self.header:
            raw = self.raw(name)
            raw = raw[rows] if rows is not None else raw
            bad = raw < 0
            tnull = self.header.get(f"TNULL{index}")
            if isinstance(tnull, int):
                bad |= raw == tnull
            return np.where(bad, 0, raw).astype(np.int64)
        values = self.values(name, rows)
        return np.where(values >= 0, values, 0.0)  # NaN >= 0 is False: NULLs drop out too


def _quick_string(header: Header, key: str) -> str:
    """A short string keyword (TTYPEn, TFORMn) without the general card parser: hundreds per file."""
    card = header.card(key)
    if card is None:
        return ""
    parts = card[10:].split("'")
    return parts[1].strip() if len(parts) >= 3 and "''" not in card else str(header[key]).strip()


def table_at(buffer: bytes, header: Header, data_start: int, where: str) -> tuple[FitsTable, int]:
    try:
        row_bytes = int(header["NAXIS1"])
        n_rows = int(header["NAXIS2"])
        n_fields = int(header.get("TFIELDS", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: binary table header lacks {exc}") from exc
    size = row_bytes * n_rows
    data_end = data_start + size + int(header.get("PCOUNT", 0) or 0)
    if len(buffer) < data_end:
        raise DataError(f"{where}: truncated FITS file (table {header.get('EXTNAME', '?')} needs "
                        f"{data_end} bytes, file has {len(buffer)})")
    specs: dict[str, _ColumnSpec] = {}
    names = []
    offset = 0
    for i in range(1, n_fields + 1):
        match = _TFORM.match(_quick_string(header, f"TFORM{i}"))
        if not match:
            raise DataError(f"{where}: column {i} has unreadable TFORM{i}={header.get(f'TFORM{i}')!r}")
        repeat = int(match.group(1)) if match.group(1) else 1
        code = match.group(2)
        if code in _HEAP_WIDTH:
            width = _HEAP_WIDTH[code] * (1 if repeat else 0)
        elif code == "X":
            width = (repeat + 7) // 8
        else:
            width = _CODES[code][0] * repeat
        name = _quick_string(header, f"TTYPE{i}") or f"COL{i}"
        specs.setdefault(name.upper(), _ColumnSpec(i, offset, code, repeat))
        names.append(name)
        offset += width
    if offset != row_bytes:
        raise DataError(f"{where}: columns take {offset} bytes per row but NAXIS1 says {row_bytes}")
    table = FitsTable(where, header, specs, tuple(names), buffer[data_start:data_start + size], n_rows, row_bytes)
    return table, data_end


def _file_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip-compressed (whatever its name)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: listed input file does not exist") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip ({exc})") from exc
    return data


def read_tables(path: Path) -> list[FitsTable]:
    """Every binary-table extension of a FITS file, in file order (the primary is skipped)."""
    where = str(path)
    buffer = _file_bytes(path)
    if not buffer.startswith(b"SIMPLE  ="):
        raise DataError(f"{where}: not a FITS file")
    header, pos = _parse_header(buffer, 0, where)
    pos += padded(image_bytes(header, where))
    tables = []
    while pos < len(buffer):
        if not buffer[pos:pos + BLOCK].strip(b"\0 "):
            break  # trailing padding
        header, data_start = _parse_header(buffer, pos, where)
        if str(header.get("XTENSION", "")).strip() == "BINTABLE":
            table, end = table_at(buffer, header, data_start, where)
            tables.append(table)
        else:
            end = data_start + image_bytes(header, where) + int(header.get("PCOUNT", 0) or 0)
            if len(buffer) < end:
                raise DataError(f"{where}: truncated FITS file")
        pos = data_start + padded(end - data_start)
    return tables


def image_bytes(header: Mapping[str, Any], where: str) -> int:
    try:
        naxis = int(header.get("NAXIS", 0))
        if naxis == 0:
            return 0
        size = abs(int(header["BITPIX"])) // 8
        for i in range(1, naxis + 1):
            size *= int(header[f"NAXIS{i}"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed HDU header ({exc})") from exc
    return size


def padded(size: int) -> int:
    return size + (-size % BLOCK)


def find_table(tables: list[FitsTable], where: Path, *extnames: str, gti: bool = False) -> FitsTable:
    """The first table named one of `extnames` (or, for `gti`, any OGIP GTI table); DataError if none."""
    wanted = {e.upper() for e in extnames}
    for table in tables:
        if table.extname.upper() in wanted:
            return table
        if gti and str(table.header.get("HDUCLAS1", "")).strip().upper() == "GTI":
            return table
    raise DataError(f"{where}: missing extension {' or '.join(extnames)}")
