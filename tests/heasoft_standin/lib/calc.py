"""The stand-in maketime's own row-selection calculator (a CFITSIO-calculator subset), tests only.

Written here, apart from rxte_hpc.extract.filterexpr, so that a test of the
project's maketime call compares two implementations. Supported: numbers,
column names (case-insensitive), `+ - * /`, unary `-`, comparisons
(`> >= < <= == !=` and `.gt. .ge. .lt. .le. .eq. .ne.`), logic (`&& || !` and
`.and. .or. .not.`), parentheses, `ISNULL(x)` and `DEFNULL(x, y)`.
A value is a pair (numbers, null mask); comparisons and arithmetic with a
NULL are NULL, `false && NULL` is false and `true || NULL` is true, and a row
whose result is NULL is not selected (CFITSIO row selection).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<fop>\.(?:and|or|not|gt|ge|lt|le|eq|ne)\.)"
    r"|(?P<op>&&|\|\||>=|<=|==|!=|>|<|!|\+|-|\*|/|\(|\)|,)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))",
    re.IGNORECASE,
)
_FORTRAN = {".and.": "&&", ".or.": "||", ".not.": "!", ".gt.": ">", ".ge.": ">=", ".lt.": "<", ".le.": "<=",
            ".eq.": "==", ".ne.": "!="}
_COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal,
}
_ARITH: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
}

Value = tuple[np.ndarray, np.ndarray]  # (float values, null mask)


class ExprError(ValueError):
    """The expression cannot be parsed or names an unknown column."""


def tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"cannot parse expression at {text[pos:pos + 12]!r}")
        token = m.group(m.lastgroup or "")
        out.append(_FORTRAN.get(token.lower(), token))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent, C precedence: || < && < comparison < + - < * / < unary."""

    def __init__(self, text: str, columns: Mapping[str, Value], n_rows: int) -> None:
        self.toks = tokens(text)
        self.i = 0
        self.columns = {k.upper(): v for k, v in columns.items()}
        self.n = n_rows

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ExprError(f"expected {expected or 'more'} in expression, found {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> Value:
        value = self.or_()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()!r} in expression")
        return value

    def or_(self) -> Value:
        left = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            lv, ln = left
            rv, rn = right
            true = (lv.astype(bool) & ~ln) | (rv.astype(bool) & ~rn)
            left = (true.astype(float), ~true & (ln | rn))
        return left

    def and_(self) -> Value:
        left = self.compare()
        while self.peek() == "&&":
            self.take()
            right = self.compare()
            lv, ln = left
            rv, rn = right
            false = (~lv.astype(bool) & ~ln) | (~rv.astype(bool) & ~rn)
            left = ((~false & ~(ln | rn)).astype(float), ~false & (ln | rn))
        return left

    def compare(self) -> Value:
        left = self.sum()
        while self.peek() in _COMPARE:
            op = self.take()
            rv, rn = self.sum()
            with np.errstate(invalid="ignore"):
                left = (_COMPARE[op](left[0], rv).astype(float), left[1] | rn)
        return left

    def sum(self) -> Value:
        left = self.product()
        while self.peek() in ("+", "-"):
            op = self.take()
            rv, rn = self.product()
            left = (_ARITH[op](left[0], rv), left[1] | rn)
        return left

    def product(self) -> Value:
        left = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            rv, rn = self.unary()
            with np.errstate(divide="ignore", invalid="ignore"):
                value = _ARITH[op](left[0], rv)
            left = (value, left[1] | rn | ~np.isfinite(value))
        return left

    def unary(self) -> Value:
        tok = self.peek()
        if tok == "!":
            self.take()
            v, n = self.unary()
            return ((~v.astype(bool)).astype(float), n)
        if tok == "-":
            self.take()
            v, n = self.unary()
            return (-v, n)
        return self.atom()

    def atom(self) -> Value:
        tok = self.take()
        if tok == "(":
            value = self.or_()
            self.take(")")
            return value
        if re.fullmatch(r"[\d.].*", tok):
            return (np.full(self.n, float(tok)), np.zeros(self.n, bool))
        name = tok.upper()
        if name in ("ISNULL", "DEFNULL"):
            self.take("(")
            first = self.or_()
            if name == "ISNULL":
                self.take(")")
                return (first[1].astype(float), np.zeros(self.n, bool))
            self.take(",")
            default = self.or_()
            self.take(")")
            return (np.where(first[1], default[0], first[0]), first[1] & default[1])
        if name in ("T", "TRUE", "F", "FALSE"):
            return (np.full(self.n, 1.0 if name[0] == "T" else 0.0), np.zeros(self.n, bool))
        if self.peek() == "{":
            raise ExprError("row offsets (col{-1}) are not supported by the stand-in")
        if name not in self.columns:
            raise ExprError(f"unknown column {tok!r} in expression")
        return self.columns[name]


def select_rows(expr: str, columns: Mapping[str, Value], n_rows: int) -> np.ndarray:
    """Boolean row flags: the expression is true and not NULL."""
    value, null = _Parser(expr, columns, n_rows).parse()
    return value.astype(bool) & ~null


def intervals(times: np.ndarray, flags: np.ndarray, prefr: float, postfr: float) -> list[tuple[float, float]]:
    """maketime's fndssp: runs of good rows -> [START, STOP], edges moved by prefr/postfr of the spacing."""
    out: list[tuple[float, float]] = []
    n = len(times)
    i = 0
    while i < n:
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < n and flags[j]:
            j += 1
        if i == 0 or times[i] <= times[i - 1]:
            start = float(times[i])
        else:
            start = float(times[i] - prefr * (times[i] - times[i - 1]))
        if j == n:
            stop = float(times[n - 1])
        elif times[j] <= times[j - 1]:
            stop = float(times[j - 1])
        else:
            stop = float(times[j - 1] + postfr * (times[j] - times[j - 1]))
        if stop != start:
            out.append((start, stop))
        i = j
    return out
