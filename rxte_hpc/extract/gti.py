"""Good time intervals the way maketime makes them, in numpy, without HEASoft.

Three layers, so the rules can be tested without files (RXTE-PCA.md Q3 and the
native spec item 1):

* a safe parser for the CFITSIO filter-expression subset that screening
  expressions use (never `eval`), evaluated over numpy columns with NULLs;
* maketime's `fndssp` rules turning per-row flags into [START, STOP) intervals;
* GTI set operations and row selection as saextrct applies them.

NULL semantics (CFITSIO's row filter): a NULL is a float NaN or an integer equal
to its column's TNULL. NULL propagates through arithmetic and comparisons, and
arithmetic that yields NaN (x/0, inf-inf) is NULL too. `&&`/`||` use three-valued
logic: false && NULL is false, true || NULL is true, otherwise NULL wins.
`ISNULL(x)` is never NULL; `DEFNULL(x, d)` replaces NULLs of x by d. A row whose
final result is NULL is not selected (false).

Time stamps: intervals are built on the filter file's RAW `Time` scale, exactly
as maketime writes them; `filter_gti` adds the file's TIMEZERO to make absolute
times, as saextrct does when it reads a maketime file.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from astropy.io import fits

from ..errors import DataError, UsageError
from ..lcfile import absolute_times

log = logging.getLogger(__name__)

#: maketime's fraction when neither a parameter nor a PREFR/POSTFR keyword gives one.
DEFAULT_FRACTION = 0.5

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

_FORTRAN_WORDS = "AND|OR|NOT|GT|LT|GE|LE|EQ|NE"
_TOKEN_RE = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<fortran>\.(?:{_FORTRAN_WORDS})\.)
  | (?P<number>(?:\d+(?:\.(?!(?:{_FORTRAN_WORDS})\.)\d*)?|\.\d+)(?:e[+-]?\d+)?)
  | (?P<name>[a-z_][a-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|>=|<=|[<>!+\-*/(),])
    """,
    re.IGNORECASE | re.VERBOSE,
)
_CANONICAL = {
    "&&": "AND", "||": "OR", "!": "NOT", "==": "EQ", "!=": "NE",
    ">": "GT", "<": "LT", ">=": "GE", "<=": "LE",
}
_COMPARISONS = {
    "GT": np.greater, "LT": np.less, "GE": np.greater_equal, "LE": np.less_equal,
    "EQ": np.equal, "NE": np.not_equal,
}
_ARITHMETIC: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
}
_SYMBOL = {"AND": "&&", "OR": "||", "NOT": "!", "EQ": "==", "NE": "!=", "GT": ">", "LT": "<", "GE": ">=", "LE": "<="}


@dataclass(frozen=True)
class _Token:
    kind: str  # 'number', 'name', 'op', 'end'
    text: str  # canonical: operator names upper-case, names as written
    pos: int  # 1-based column in the expression


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(expr):
        match = _TOKEN_RE.match(expr, index)
        if not match:
            hint = " (use '==' to test equality)" if expr[index] == "=" else ""
            raise _syntax(expr, index + 1, f"unexpected character {expr[index]!r}{hint}")
        kind = match.lastgroup or ""
        text = match.group()
        if kind == "fortran":
            tokens.append(_Token("op", text[1:-1].upper(), index + 1))
        elif kind == "op":
            tokens.append(_Token("op", _CANONICAL.get(text, text), index + 1))
        elif kind != "space":
            tokens.append(_Token(kind, text, index + 1))
        index = match.end()
    tokens.append(_Token("end", "", len(expr) + 1))
    return tokens


def _syntax(expr: str, pos: int, what: str) -> UsageError:
    """One line: the expression, what is wrong and the 1-based column where."""
    return UsageError(f"bad filter expression {expr!r}: {what} at column {pos}")


# ---------------------------------------------------------------------------
# Syntax tree: each node knows its type ('num' or 'bool') and evaluates to
# (values, null mask), both broadcastable to the number of rows.
# ---------------------------------------------------------------------------

_Value = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Columns:
    """Evaluation input: upper-case column name -> (float values, null mask)."""

    data: Mapping[str, _Value]


@dataclass(frozen=True)
class _Number:
    value: float
    kind = "num"

    def evaluate(self, cols: _Columns) -> _Value:
        return np.asarray(self.value, dtype=np.float64), np.asarray(False)


@dataclass(frozen=True)
class _Column:
    name: str  # upper-case
    kind = "num"

    def evaluate(self, cols: _Columns) -> _Value:
        return cols.data[self.name]


@dataclass(frozen=True)
class _Negate:
    operand: Any
    kind = "num"

    def evaluate(self, cols: _Columns) -> _Value:
        value, null = self.operand.evaluate(cols)
        return -value, null


@dataclass(frozen=True)
class _Not:
    operand: Any
    kind = "bool"

    def evaluate(self, cols: _Columns) -> _Value:
        value, null = self.operand.evaluate(cols)
        return ~value & ~null, null


@dataclass(frozen=True)
class _Arithmetic:
    op: str
    left: Any
    right: Any
    kind = "num"

    def evaluate(self, cols: _Columns) -> _Value:
        lv, ln = self.left.evaluate(cols)
        rv, rn = self.right.evaluate(cols)
        value = _ARITHMETIC[self.op](lv, rv)
        # CFITSIO gives NULL for division by zero; any NaN result is NULL too.
        null = ln | rn | np.isnan(value)
        if self.op == "/":
            null = null | (rv == 0)
        return value, null


@dataclass(frozen=True)
class _Compare:
    op: str
    left: Any
    right: Any
    kind = "bool"

    def evaluate(self, cols: _Columns) -> _Value:
        lv, ln = self.left.evaluate(cols)
        rv, rn = self.right.evaluate(cols)
        null = ln | rn
        return _COMPARISONS[self.op](lv, rv) & ~null, null


@dataclass(frozen=True)
class _Logical:
    op: str  # 'AND' or 'OR'
    left: Any
    right: Any
    kind = "bool"

    def evaluate(self, cols: _Columns) -> _Value:
        lv, ln = self.left.evaluate(cols)
        rv, rn = self.right.evaluate(cols)
        if self.op == "AND":
            decided = (~lv & ~ln) | (~rv & ~rn)  # a known false decides AND
            null = (ln | rn) & ~decided
            return lv & rv & ~null, null
        decided = (lv & ~ln) | (rv & ~rn)  # a known true decides OR
        null = (ln | rn) & ~decided
        return (lv | rv) & ~null, null


@dataclass(frozen=True)
class _IsNull:
    operand: Any
    kind = "bool"

    def evaluate(self, cols: _Columns) -> _Value:
        _, null = self.operand.evaluate(cols)
        return np.asarray(null, dtype=bool), np.asarray(False)


@dataclass(frozen=True)
class _DefNull:
    operand: Any
    default: Any
    kind: str

    def evaluate(self, cols: _Columns) -> _Value:
        value, null = self.operand.evaluate(cols)
        dvalue, dnull = self.default.evaluate(cols)
        return np.where(null, dvalue, value), null & dnull


@dataclass(frozen=True)
class _Abs:
    operand: Any
    kind = "num"

    def evaluate(self, cols: _Columns) -> _Value:
        value, null = self.operand.evaluate(cols)
        return np.abs(value), null


# ---------------------------------------------------------------------------
# Parser: recursive descent with CFITSIO's precedence (lowest first):
#   || ; && ; == != ; < > <= >= ; + - ; * / ; unary ! - +
# ---------------------------------------------------------------------------

_FUNCTIONS = {"ISNULL": 1, "DEFNULL": 2, "ABS": 1}


class _Parser:
    """One parse of one expression; holds only its own position."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.index = 0
        self.columns: set[str] = set()

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def error(self, what: str, token: _Token | None = None) -> UsageError:
        token = token or self.token
        return _syntax(self.expr, token.pos, what)

    def unexpected(self) -> UsageError:
        token = self.token
        if token.kind == "end":
            return self.error("unexpected end of expression")
        return self.error(f"unexpected {_describe(token)}")

    def expect_kind(self, node: Any, kind: str, token: _Token, role: str) -> None:
        if node.kind != kind:
            wanted = "a number" if kind == "num" else "a condition"
            raise self.error(f"{role} needs {wanted}", token)

    def parse(self) -> Any:
        if self.token.kind == "end":
            raise self.error("empty expression")
        node = self.logical("OR")
        if self.token.kind != "end":
            raise self.unexpected()
        if node.kind != "bool":
            raise _syntax(self.expr, 1, "the expression is a number, not a condition (compare it with something)")
        return node

    def logical(self, op: str) -> Any:
        operand = (lambda: self.logical("AND")) if op == "OR" else self.equality
        node = operand()
        while self.token.kind == "op" and self.token.text == op:
            token = self.advance()
            right = operand()
            self.expect_kind(node, "bool", token, f"'{_token_text(self.expr, token)}'")
            self.expect_kind(right, "bool", token, f"'{_token_text(self.expr, token)}'")
            node = _Logical(op, node, right)
        return node

    def equality(self) -> Any:
        node = self.relational()
        while self.token.kind == "op" and self.token.text in ("EQ", "NE"):
            token = self.advance()
            right = self.relational()
            if node.kind != right.kind:
                raise self.error(f"'{_token_text(self.expr, token)}' compares a number with a condition", token)
            node = _Compare(token.text, node, right)
        return node

    def relational(self) -> Any:
        node = self.additive()
        while self.token.kind == "op" and self.token.text in ("GT", "LT", "GE", "LE"):
            token = self.advance()
            right = self.additive()
            if isinstance(node, _Compare):
                raise self.error("chained comparison: write 'a < x && x < b', not 'a < x < b'", token)
            self.expect_kind(node, "num", token, f"'{_token_text(self.expr, token)}'")
            self.expect_kind(right, "num", token, f"'{_token_text(self.expr, token)}'")
            node = _Compare(token.text, node, right)
        return node

    def additive(self) -> Any:
        return self.binary(("+", "-"), self.multiplicative)

    def multiplicative(self) -> Any:
        return self.binary(("*", "/"), self.unary)

    def binary(self, ops: tuple[str, ...], operand: Callable[[], Any]) -> Any:
        node = operand()
        while self.token.kind == "op" and self.token.text in ops:
            token = self.advance()
            right = operand()
            self.expect_kind(node, "num", token, f"'{token.text}'")
            self.expect_kind(right, "num", token, f"'{token.text}'")
            node = _Arithmetic(token.text, node, right)
        return node

    def unary(self) -> Any:
        token = self.token
        if token.kind == "op" and token.text in ("NOT", "-", "+"):
            self.advance()
            operand = self.unary()
            if token.text == "NOT":
                self.expect_kind(operand, "bool", token, f"'{_token_text(self.expr, token)}'")
                return _Not(operand)
            self.expect_kind(operand, "num", token, f"unary '{token.text}'")
            return _Negate(operand) if token.text == "-" else operand
        return self.primary()

    def primary(self) -> Any:
        token = self.token
        if token.kind == "number":
            self.advance()
            return _Number(float(token.text))
        if token.kind == "op" and token.text == "(":
            self.advance()
            node = self.logical("OR")
            if not (self.token.kind == "op" and self.token.text == ")"):
                raise self.error(f"expected ')' to close the '(' at column {token.pos}, found {_describe(self.token)}")
            self.advance()
            return node
        if token.kind == "name":
            self.advance()
            if self.token.kind == "op" and self.token.text == "(":
                return self.call(token)
            name = token.text.upper()
            self.columns.add(name)
            return _Column(name)
        raise self.unexpected()

    def call(self, name_token: _Token) -> Any:
        name = name_token.text.upper()
        if name not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise self.error(f"unknown function {name_token.text!r} (supported: {known})", name_token)
        self.advance()  # '('
        args = [self.logical("OR")]
        while self.token.kind == "op" and self.token.text == ",":
            self.advance()
            args.append(self.logical("OR"))
        if not (self.token.kind == "op" and self.token.text == ")"):
            raise self.error(f"expected ')' to close {name}(, found {_describe(self.token)}")
        self.advance()
        if len(args) != _FUNCTIONS[name]:
            raise self.error(f"{name} takes {_FUNCTIONS[name]} argument(s), got {len(args)}", name_token)
        if name == "ISNULL":
            return _IsNull(args[0])
        if name == "ABS":
            self.expect_kind(args[0], "num", name_token, "ABS")
            return _Abs(args[0])
        if args[0].kind != args[1].kind:
            raise self.error("DEFNULL's value and default must both be numbers or both conditions", name_token)
        return _DefNull(args[0], args[1], args[0].kind)


def _token_text(expr: str, token: _Token) -> str:
    """The operator as the user wrote it (`.and.` or `&&`), for messages."""
    match = _TOKEN_RE.match(expr, token.pos - 1)
    return match.group() if match else token.text


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of expression"
    if token.kind == "op":
        return f"'{_SYMBOL.get(token.text, token.text)}'"
    return f"{token.kind} {token.text!r}"


@dataclass(frozen=True)
class FilterExpr:
    """A parsed filter expression: its text, the columns it reads (upper-case) and its tree."""

    text: str
    columns: frozenset[str]
    root: Any

    def __str__(self) -> str:
        return self.text

    def evaluate(
        self, table: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Per-row selection flags; NULL results are False.

        `table` maps column names (any case) to 1-D arrays of equal length;
        float NaN is NULL, and `nulls` (same names) marks further NULLs such as
        integer TNULL values.
        """
        by_upper = {str(name).upper(): name for name in table}
        null_by_upper = {str(name).upper(): mask for name, mask in (nulls or {}).items()}
        missing = sorted(self.columns - by_upper.keys())
        if missing:
            raise DataError(_missing_message(self.text, missing, list(table), "the table"))
        lengths = {len(np.asarray(table[name])) for name in table}
        if len(lengths) > 1:
            raise DataError(f"filter expression {self.text!r}: table columns have different lengths {sorted(lengths)}")
        n_rows = lengths.pop() if lengths else 1
        data: dict[str, _Value] = {}
        for upper in self.columns:
            raw = np.asarray(table[by_upper[upper]])
            if raw.ndim != 1:
                raise DataError(f"filter expression {self.text!r}: column {by_upper[upper]} is not one value per row")
            try:
                values = raw.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"filter expression {self.text!r}: column {by_upper[upper]} is not numeric ({raw.dtype})"
                ) from exc
            null = np.isnan(values)
            if upper in null_by_upper:
                null = null | np.asarray(null_by_upper[upper], dtype=bool)
            data[upper] = (values, null)
        with np.errstate(all="ignore"):
            value, null = self.root.evaluate(_Columns(data))
        return np.broadcast_to(np.asarray(value & ~null, dtype=bool), (n_rows,)).copy()


def parse_filter(expr: str) -> FilterExpr:
    """Parse a CFITSIO-style screening expression; a UsageError says what is wrong and where."""
    if not isinstance(expr, str):
        raise UsageError(f"filter expression must be text, got {type(expr).__name__}")
    parser = _Parser(expr)
    root = parser.parse()
    return FilterExpr(expr, frozenset(parser.columns), root)


def _missing_message(expr: str, missing: list[str], available: list[str], where: str) -> str:
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name.upper(), [a.upper() for a in available], n=1)
        if close:
            hints.append(f"{name} (did you mean {close[0]}?)")
        else:
            hints.append(name)
    return (
        f"filter expression {expr!r} needs column(s) {', '.join(hints)} that {where} does not have; "
        f"available: {', '.join(sorted(available, key=str.upper))}"
    )


# ---------------------------------------------------------------------------
# FITS tables -> flags
# ---------------------------------------------------------------------------


def _hdu_where(hdu: fits.BinTableHDU) -> str:
    """'file[EXTNAME]' for messages, whatever astropy knows about where the HDU came from."""
    info = hdu.fileinfo() if hasattr(hdu, "fileinfo") else None
    file = getattr(info.get("file"), "name", None) if info else None
    ext = str(hdu.header.get("EXTNAME", "?")).strip()
    return f"{file}[{ext}]" if file else f"extension {ext}"


def _tnull_mask(column: fits.Column, values: np.ndarray) -> np.ndarray | None:
    """Rows equal to an integer column's TNULL (compared after TSCAL/TZERO, as astropy returns them)."""
    if column.null is None or str(column.format)[-1:].upper() not in "BIJK":
        return None
    try:
        raw_null = int(column.null)
    except (TypeError, ValueError):
        return None
    scaled = raw_null * (column.bscale if column.bscale is not None else 1) + (
        column.bzero if column.bzero is not None else 0
    )
    return values == scaled


def row_flags_from_hdu(hdu: fits.BinTableHDU, expr: FilterExpr) -> np.ndarray:
    """Evaluate `expr` on a table extension, reading only the columns it names."""
    names = {name.upper(): name for name in hdu.columns.names}
    missing = sorted(expr.columns - names.keys())
    if missing:
        raise DataError(_missing_message(expr.text, missing, list(hdu.columns.names), _hdu_where(hdu)))
    table: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    n_rows = len(hdu.data) if hdu.data is not None else 0
    for upper in expr.columns:
        values = np.asarray(hdu.data[names[upper]]) if n_rows else np.zeros(0)
        table[upper] = values
        mask = _tnull_mask(hdu.columns[names[upper]], values)
        if mask is not None:
            nulls[upper] = mask
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


def _as_intervals(gti: np.ndarray) -> np.ndarray:
    gti = np.asarray(gti, dtype=np.float64)
    if gti.size == 0:
        return np.zeros((0, 2))
    if gti.ndim != 2 or gti.shape[1] != 2:
        raise ValueError(f"a GTI must be an (n, 2) array of [start, stop], got shape {gti.shape}")
    return gti


def union_gtis(*gtis: np.ndarray) -> np.ndarray:
    """Sorted, disjoint intervals covering any input; touching intervals merge, empty ones vanish."""
    parts = [_as_intervals(g) for g in gtis]
    merged = np.concatenate(parts) if parts else np.zeros((0, 2))
    merged = merged[merged[:, 1] > merged[:, 0]]
    if not len(merged):
        return np.zeros((0, 2))
    merged = merged[np.argsort(merged[:, 0], kind="stable")]
    out = [list(merged[0])]
    for start, stop in merged[1:]:
        if start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return np.array(out, dtype=np.float64)


def intersect_gtis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted, disjoint intervals covered by both; zero-length overlaps are dropped."""
    left, right = union_gtis(a), union_gtis(b)
    out = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i, 0], right[j, 0])
        stop = min(left[i, 1], right[j, 1])
        if stop > start:
            out.append((start, stop))
        if left[i, 1] < right[j, 1]:
            i += 1
        else:
            j += 1
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def select_rows(t_row: np.ndarray, gti: np.ndarray) -> np.ndarray:
    """Rows whose time lies in some interval, start <= t < stop, with no tolerance (saextrct)."""
    t_row = np.asarray(t_row, dtype=np.float64)
    merged = union_gtis(gti)
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
    gti_raw = _as_intervals(gti_raw)
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
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    fits.HDUList([primary, table]).writeto(temporary, overwrite=True)
    os.replace(temporary, path)
