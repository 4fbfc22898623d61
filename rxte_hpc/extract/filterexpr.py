"""The CFITSIO filter-expression subset that screening uses, parsed safely and evaluated in numpy.

A tokenizer and recursive-descent parser (never `eval`) build a small tree
that evaluates over numpy columns with NULLs (RXTE-PCA.md Q3):

NULL semantics (CFITSIO's row filter): a NULL is a float NaN or an integer equal
to its column's TNULL. NULL propagates through arithmetic and comparisons, and
arithmetic that yields NaN (x/0, inf-inf) is NULL too. `&&`/`||` use three-valued
logic: false && NULL is false, true || NULL is true, otherwise NULL wins.
`ISNULL(x)` is never NULL; `DEFNULL(x, d)` replaces NULLs of x by d. A row whose
final result is NULL is not selected (false).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from rxte_hpc.core.errors import DataError, UsageError

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
            raise DataError(missing_columns_message(self.text, missing, list(table), "the table"))
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


def missing_columns_message(expr: str, missing: list[str], available: list[str], where: str) -> str:
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
