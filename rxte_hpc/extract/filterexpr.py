"""maketime's filter expressions with CFITSIO's semantics, parsed safely and evaluated in numpy.

The language is the part of CFITSIO's calculator (eval.l / eval.y, which
maketime's `ftfrow` runs) that screening needs; every rule below was read in
CFITSIO's source and is checked row for row against CFITSIO itself
(tests/extract/test_filterexpr_cfitsio.py, through fitsio). Anything else CFITSIO
knows (strings, bit strings, `?:`, `{-1}` row offsets, `[i]`, `#KEYWORD`,
`$name$`, bitwise operators, vector functions) is refused when the
expression is parsed, never evaluated differently.

* Tokens are CFITSIO's, longest match first: `2` is an integer and `2.`,
  `.5`, `2e3` are reals; operators are `&& || ! == != < > <= >= =< => ~`,
  `+ - * / % ** ^` and the Fortran forms `.and. .or. .not. .eq. .ne. .gt.
  .lt. .ge. .le.` written all lower or all upper case (also without the
  first dot, `and.`); `T` and `F` are logical constants; a function name is
  followed by `(` with no space; `(int)`, `(float)` and `(double)` cast.
* Precedence (loosest first): `||`; `&&`; `== != ~`; `< > <= >=`; `+ - %`
  (CFITSIO puts `%` with `+`); `* /`; `**` (right-associative); `!`; casts;
  unary minus. So `7 - 3 % 2` is `(7-3) % 2` and `-2**2` is 4.
* Types: an integer constant or an integer column (TFORM B, I, J without
  scaling, TZERO 32768 allowed) is a C `long`; reals, E/D columns, K columns
  and scaled integers are doubles. Integer op integer stays integer: `/`
  truncates toward zero, `%` takes the dividend's sign, `**` is
  `(long)pow()`; mixed operands become doubles; double `%` is
  `a - b*(int)(a/b)`; `~` is |a-b| < 1e-7 (== for integers).
* NULL: a TNULL integer, or a float NaN or infinity (CFITSIO's reader flags
  every all-ones exponent), is NULL; NULL propagates through arithmetic,
  comparisons and `!`; `x/0` and `x%0` are NULL, as are SQRT/LOG/LOG10/ASIN/
  ACOS outside their domain; `&&` and `||` are three-valued (false && NULL is
  false, true || NULL is true). ISNULL is never NULL; DEFNULL(x, d) replaces
  NULLs; MIN/MAX of a NULL and a value is the value. A row whose result is
  NULL is not selected. A NaN computed from non-NULL values is a value.
* A constant sub-expression is computed when parsed, as CFITSIO does, so
  `1/0` or `LOG(0)` is a parse error.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.extract import filtereval as ev
from rxte_hpc.extract.filtereval import Node, Value

# ---------------------------------------------------------------------------
# Tokenizer: CFITSIO's flex rules, longest match, earlier rule on a tie
# ---------------------------------------------------------------------------

_WORD_OPS = {"not": "NOT", "or": "OR", "and": "AND", "eq": "EQ", "ne": "NE", "gt": "GT", "lt": "LT",
             "ge": "GE", "le": "LE", "xor": "XOR"}
_SYMBOL_OPS = {"**": "POW", "^": "POW", "!": "NOT", "||": "OR", "&&": "AND", "==": "EQ", "!=": "NE",
               ">": "GT", "<": "LT", ">=": "GE", "=>": "GE", "<=": "LE", "=<": "LE", "^^": "XOR"}
_WORDS = "|".join(list(_WORD_OPS) + [w.upper() for w in _WORD_OPS])
# (kind, regex) in eval.l's order; the kind decides what happens to the token.
_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("bitstr", re.compile(r"[bB][01xX]+|[oO][0-7xX]+|[hH][0-9a-fA-FxX]+")),
    ("radix", re.compile(r"0b[01]+|0x[0-9a-fA-F]+|0o\]+")),
    ("long", re.compile(r"[0-9]+")),
    ("logical", re.compile(r"[tfTF]")),
    ("double", re.compile(r"[0-9]*\.[0-9]+")),  # flex's alternatives, each tried for the longest match
    ("double", re.compile(r"[0-9]*\.*[0-9]+[eEdD][+-]?[0-9]+")),
    ("double", re.compile(r"[0-9]*\.")),
    ("keyword", re.compile(r"#[a-zA-Z0-9_]+|#\$[^\n]*\$")),
    ("string", re.compile(r"\"[^\"\n]*\"|'[^'\n]*'")),
    ("name", re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*|\$[^$\n]*\$")),
    ("func", re.compile(r"[a-zA-Z][a-zA-Z0-9]+\(")),
    ("cast", re.compile(r"\((?:int|INT|float|FLOAT|double|DOUBLE)\)")),
    ("op", re.compile(rf"\*\*|\^\^|\^|\.?(?:{_WORDS})\.|\|\||&&|==|!=|>=|=>|<=|=<|!|>|<")),
    ("char", re.compile(r"[^ \t]", re.DOTALL)),
]
_REFUSED = {
    "bitstr": "a bit/octal/hex string constant (CFITSIO reads {text!r} as one)",
    "radix": "a 0b/0x/0o constant",
    "keyword": "a #keyword or #constant",
    "string": "a string",
}
_CHARS = set("()+-*/%,~")


@dataclass(frozen=True)
class _Token:
    kind: str  # 'long', 'double', 'logical', 'name', 'func', 'cast', 'op', 'end'
    text: str  # canonical: operators upper-case names (AND, POW, ...) or the character
    pos: int  # 1-based column in the expression
    raw: str  # as written


def _syntax(expr: str, pos: int, what: str) -> UsageError:
    """One line: the expression, what is wrong and the 1-based column where."""
    return UsageError(f"bad filter expression {expr!r} (extract.filter): {what} at column {pos}")


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(expr):
        if expr[index] in " \t":
            index += 1
            continue
        best_kind, best_len = "", 0
        for kind, pattern in _RULES:
            match = pattern.match(expr, index)
            if match and len(match.group()) > best_len:
                best_kind, best_len = kind, len(match.group())
        text = expr[index:index + best_len]
        pos = index + 1
        if best_kind in _REFUSED:
            raise _syntax(expr, pos, f"{_REFUSED[best_kind].format(text=text)} is not supported")
        if best_kind == "op":
            word = text.strip(".")
            tokens.append(_Token("op", _WORD_OPS.get(word.lower(), _SYMBOL_OPS.get(text, "")), pos, text))
        elif best_kind == "double":
            if text == "." and re.match(rf"\.(?:{_WORDS})\.", expr[index:], re.IGNORECASE):
                raise _syntax(expr, pos, "write a Fortran operator all in upper or all in lower case (.GE. or .ge.)")
            if text.count(".") > 1 or text == "." or re.search(r"[dD]", text):
                raise _syntax(expr, pos, f"number {text!r} is not supported (CFITSIO reads it as atof({text!r}))")
            tokens.append(_Token("double", text, pos, text))
        elif best_kind == "name" and text.startswith("$"):
            raise _syntax(expr, pos, f"a $quoted$ column name {text} is not supported")
        elif best_kind == "char":
            if text not in _CHARS:
                hint = {"=": " (use '==' to test equality)", "&": " (use '&&')", "|": " (use '||')"}.get(text, "")
                raise _syntax(expr, pos, f"unexpected character {text!r}{hint}")
            tokens.append(_Token("op", text, pos, text))
        else:
            tokens.append(_Token(best_kind, text, pos, text))
        index += best_len
    tokens.append(_Token("end", "", len(expr) + 1, ""))
    return tokens


# ---------------------------------------------------------------------------
# Parser: recursive descent with eval.y's precedence (module docstring)
# ---------------------------------------------------------------------------

_LEVELS: list[tuple[str, ...]] = [("OR",), ("AND",), ("EQ", "NE", "~"), ("GT", "LT", "GE", "LE"), ("+", "-", "%"), ("*", "/")]


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

    def at(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.text in ops

    def error(self, what: str, token: _Token | None = None) -> UsageError:
        return _syntax(self.expr, (token or self.token).pos, what)

    def unexpected(self) -> UsageError:
        token = self.token
        if token.kind == "end":
            return self.error("unexpected end of expression")
        if token.kind == "op" and token.text == "XOR":
            return self.error(f"the bitwise operator '{token.raw}' is not supported")
        return self.error(f"unexpected {_describe(token)}")

    def need(self, node: Node, kind: str, token: _Token, role: str) -> None:
        if node.kind != kind:
            wanted = "a number" if kind == "num" else "a condition"
            raise self.error(f"{role} needs {wanted}", token)

    def fold(self, node: Node, token: _Token) -> Node:
        """A constant sub-expression is computed now, as CFITSIO does; its errors are parse errors."""
        if node.constant:
            try:
                return ev.constant(node)
            except ev.ConstantError as exc:
                raise self.error(str(exc), token) from None
        return node

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.error("empty expression")
        node = self.binary(0)
        if self.token.kind != "end":
            raise self.unexpected()
        if node.kind != "bool":
            raise _syntax(self.expr, 1, "the expression is a number, not a condition (compare it with something)")
        return node

    def binary(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.power()
        node = self.binary(level + 1)
        while self.at(*_LEVELS[level]):
            token = self.advance()
            right = self.binary(level + 1)
            op = token.text
            role = f"'{token.raw}'"
            if op in ("AND", "OR"):
                self.need(node, "bool", token, role)
                self.need(right, "bool", token, role)
                node = ev.Logical(op, node, right)
            elif op in ("EQ", "NE", "~"):
                if node.kind == "bool" and right.kind == "num" and self.at(*_LEVELS[level]):
                    # eval.y has no 'condition == number' rule, so its LR parser shifts on:
                    # A > B == C != D is (A > B) == (C != D).
                    inner = self.advance()
                    right = self.fold(self.compare(inner, right, self.binary(level + 1)), inner)
                node = self.compare(token, node, right)
            else:
                if op in ("GT", "LT", "GE", "LE") and isinstance(node, ev.Compare):
                    raise self.error("chained comparison: write 'a < x && x < b', not 'a < x < b'", token)
                self.need(node, "num", token, role)
                self.need(right, "num", token, role)
                node = ev.Compare(op, node, right) if op in ("GT", "LT", "GE", "LE") else ev.Arith(op, node, right)
            node = self.fold(node, token)
        return node

    def compare(self, token: _Token, left: Node, right: Node) -> Node:
        """An equality-level comparison: == and != of two numbers or two conditions, ~ of two numbers."""
        if token.text == "~":
            self.need(left, "num", token, f"'{token.raw}'")
            self.need(right, "num", token, f"'{token.raw}'")
        elif left.kind != right.kind:
            raise self.error(f"'{token.raw}' compares a number with a condition", token)
        return ev.Compare(token.text, left, right)

    def power(self) -> Node:
        node = self.prefix()
        if self.at("POW"):
            token = self.advance()
            right = self.power()  # right-associative
            self.need(node, "num", token, f"'{token.raw}'")
            self.need(right, "num", token, f"'{token.raw}'")
            node = self.fold(ev.Arith("POW", node, right), token)
        return node

    def prefix(self) -> Node:
        token = self.token
        if self.at("NOT", "-", "+") or token.kind == "cast":
            self.advance()
            operand = self.prefix()
            if token.kind == "cast":
                node: Node = ev.Cast("long" if token.text[1].lower() == "i" else "double", operand)
            elif token.text == "NOT":
                self.need(operand, "bool", token, f"'{token.raw}'")
                node = ev.Not(operand)
            else:
                self.need(operand, "num", token, f"unary '{token.text}'")
                node = ev.Negate(operand) if token.text == "-" else operand
            return self.fold(node, token)
        return self.primary()

    def primary(self) -> Node:
        token = self.token
        if token.kind in ("long", "double"):
            self.advance()
            if token.kind == "long":
                if int(token.text) >= 2**63:
                    raise self.error(f"integer {token.text} does not fit a 64-bit long", token)
                return ev.Const("long", np.int64(int(token.text)))
            return ev.Const("double", np.float64(float(token.text)))
        if token.kind == "logical":
            self.advance()
            return ev.Const("bool", np.bool_(token.text in "tT"))
        if self.at("("):
            self.advance()
            node = self.binary(0)
            if not self.at(")"):
                raise self.error(f"expected ')' to close the '(' at column {token.pos}, found {_describe(self.token)}")
            self.advance()
            return node
        if token.kind == "name":
            self.advance()
            if self.at("("):
                if self.token.pos == token.pos + len(token.raw):
                    raise self.error(f"unknown function {token.text!r}", token)
                raise self.error(f"no space is allowed between the function name {token.text} and '('", token)
            name = token.text.upper()
            self.columns.add(name)
            return ev.Column(name)
        if token.kind == "func":
            return self.call()
        raise self.unexpected()

    def call(self) -> Node:
        token = self.advance()
        name = token.text[:-1].upper()
        if name not in ev.FUNCTIONS:
            known = ", ".join(sorted(ev.FUNCTIONS))
            raise self.error(f"unknown or unsupported function {token.text[:-1]!r} (supported: {known})", token)
        args = [self.binary(0)]
        while self.at(","):
            self.advance()
            args.append(self.binary(0))
        if not self.at(")"):
            raise self.error(f"expected ')' to close {name}(, found {_describe(self.token)}")
        self.advance()
        try:
            node = ev.make_function(name, args)
        except ev.ConstantError as exc:
            raise self.error(str(exc), token) from None
        return self.fold(node, token)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of expression"
    if token.kind == "op":
        return f"'{token.raw}'"
    kind = {"long": "number", "double": "number", "logical": "logical constant", "func": "function"}.get(token.kind, token.kind)
    return f"{kind} {token.raw!r}"


# ---------------------------------------------------------------------------
# The parsed expression
# ---------------------------------------------------------------------------


def _column_value(name: str, raw: np.ndarray, extra_null: np.ndarray | None, expr: str) -> Value:
    """CFITSIO's view of a column given as an array: integers are longs, floats doubles (NaN/inf NULL)."""
    if raw.ndim != 1:
        raise DataError(f"filter expression {expr!r}: column {name} is not one value per row")
    if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 4 or raw.dtype == np.int64:
        value = Value("long", raw.astype(np.int64), np.zeros(raw.shape, dtype=bool))
    elif raw.dtype.kind in "fiu":
        values = raw.astype(np.float64)
        value = Value("double", values, ~np.isfinite(values))
    else:
        kind = "logical" if raw.dtype.kind == "b" else f"{raw.dtype}"
        raise DataError(f"filter expression {expr!r}: column {name} is not numeric ({kind}); "
                        "only numeric columns are supported")
    if extra_null is not None:
        value = Value(value.kind, value.values, value.null | np.asarray(extra_null, dtype=bool))
    return value


@dataclass(frozen=True)
class FilterExpr:
    """A parsed filter expression: its text, the columns it reads (upper-case) and its tree."""

    text: str
    columns: frozenset[str]
    root: Node

    def __str__(self) -> str:
        return self.text

    def evaluate(
        self, table: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Per-row selection flags as CFITSIO's row filter gives them; NULL results are False.

        `table` maps column names (any case) to 1-D arrays of equal length, in
        CFITSIO's types: an integer array is a `long` column, a float array a
        double one (NaN and infinities NULL). `nulls` (same names) marks further
        NULLs, such as integer TNULL values. `gti.column_for_cfitsio` turns a
        FITS column into this form.
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
        data = {upper: _column_value(str(by_upper[upper]), np.asarray(table[by_upper[upper]]),
                                     null_by_upper.get(upper), self.text) for upper in self.columns}
        with np.errstate(all="ignore"):
            result = self.root.evaluate(data)
        selected = np.asarray(result.values, dtype=bool) & ~np.asarray(result.null, dtype=bool)
        return np.broadcast_to(selected, (n_rows,)).copy()


def parse_filter(expr: str) -> FilterExpr:
    """Parse a CFITSIO screening expression; a UsageError says what is wrong and where."""
    if not isinstance(expr, str):
        raise UsageError(f"extract.filter must be text, got {type(expr).__name__}")
    if "\n" in expr or "\r" in expr:
        raise UsageError(f"bad filter expression {expr!r} (extract.filter): write it on one line")
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
