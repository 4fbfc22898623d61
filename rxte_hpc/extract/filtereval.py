"""The evaluation tree of `filterexpr`: CFITSIO's arithmetic, comparisons, NULLs and functions in numpy.

Each node knows, when parsed, whether it is a number or a condition
(`kind`); whether a number is a C `long` or a double is known only when the
columns are (CFITSIO decides it from each column's TFORM), so `evaluate`
returns a `Value` carrying its CFITSIO type ('long', 'double' or 'bool'),
its values and its NULL mask. The rules and where they come from are in
`filterexpr`'s docstring; evaluation runs under `np.errstate(all="ignore")`
because C's overflow and NaN behaviour is the point, not a warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

INT64_MIN = np.int64(-(2**63))
INT32_MIN = -(2**31)
#: CFITSIO's tolerance for `~` (eval.y APPROX).
APPROX = 1.0e-7


class ConstantError(ValueError):
    """A constant sub-expression CFITSIO refuses to compute (divide by zero, LOG(0), ISNULL(1))."""


@dataclass(frozen=True)
class Value:
    kind: str  # 'long', 'double', 'bool'
    values: np.ndarray
    null: np.ndarray


class Node:
    kind = "num"  # 'num' or 'bool', fixed when parsed

    @property
    def constant(self) -> bool:
        return all(child.constant for child in self.children())

    def children(self) -> Sequence["Node"]:
        return ()

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        raise NotImplementedError


def _false(shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def to_double(value: Value) -> Value:
    if value.kind == "double":
        return value
    return Value("double", np.asarray(value.values, dtype=np.float64), value.null)


def to_long_values(x: np.ndarray) -> np.ndarray:
    """C's (long)double on x86-64: truncation, INT64_MIN when out of range or NaN."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x) & (x >= -(2.0**63)) & (x < 2.0**63)
    return np.where(ok, np.where(ok, x, 0.0).astype(np.int64), INT64_MIN)


def _promote(a: Value, b: Value) -> tuple[Value, Value]:
    if a.kind == b.kind:
        return a, b
    return to_double(a), to_double(b)


@dataclass(frozen=True)
class Const(Node):
    type: str  # 'long', 'double', 'bool'
    value: np.generic | np.ndarray  # a numpy scalar

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "bool" if self.type == "bool" else "num"

    @property
    def constant(self) -> bool:
        return True

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        return Value(self.type, np.asarray(self.value), _false())


@dataclass(frozen=True)
class Column(Node):
    name: str  # upper-case

    @property
    def constant(self) -> bool:
        return False

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        return data[self.name]


@dataclass(frozen=True)
class Negate(Node):
    operand: Node

    def children(self) -> Sequence[Node]:
        return (self.operand,)

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        value = self.operand.evaluate(data)
        return Value(value.kind, -value.values, value.null)


@dataclass(frozen=True)
class Not(Node):
    operand: Node
    kind = "bool"

    def children(self) -> Sequence[Node]:
        return (self.operand,)

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        value = self.operand.evaluate(data)
        return Value("bool", ~np.asarray(value.values, dtype=bool), value.null)


@dataclass(frozen=True)
class Cast(Node):
    """(int) or (float)/(double): C casts; a condition casts to 0 or 1."""

    to: str  # 'long' or 'double'
    operand: Node

    def children(self) -> Sequence[Node]:
        return (self.operand,)

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        value = self.operand.evaluate(data)
        if self.to == "double":
            return to_double(value)
        if value.kind == "double":
            return Value("long", to_long_values(value.values), value.null)
        return Value("long", np.asarray(value.values, dtype=np.int64), value.null)


def _c_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C integer division (truncation toward zero); b has no zeros."""
    q = np.floor_divide(a, b)
    r = a - q * b
    return q + ((r != 0) & ((a < 0) != (b < 0)))


def _long_arith(op: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zero = b == 0
    safe = np.where(zero, 1, b)
    if op == "+":
        return a + b, _false()
    if op == "-":
        return a - b, _false()
    if op == "*":
        return a * b, _false()
    if op == "/":
        return _c_divide(a, safe), zero
    if op == "%":
        return np.fmod(a, safe), zero
    return to_long_values(np.power(a.astype(np.float64), b.astype(np.float64))), _false()  # (long)pow()


def _double_arith(op: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zero = b == 0
    safe = np.where(zero, 1.0, b)
    if op == "+":
        return a + b, _false()
    if op == "-":
        return a - b, _false()
    if op == "*":
        return a * b, _false()
    if op == "/":
        return a / safe, zero
    if op == "%":
        q = a / safe  # a - b*(int)(a/b), with x86's 32-bit cast: INT_MIN when out of range
        ok = np.isfinite(q) & (q > INT32_MIN - 1.0) & (q < -float(INT32_MIN))
        return a - safe * np.where(ok, np.trunc(np.where(ok, q, 0.0)), float(INT32_MIN)), zero
    return np.power(a, b), _false()


@dataclass(frozen=True)
class Arith(Node):
    op: str  # '+', '-', '*', '/', '%', 'POW'
    left: Node
    right: Node

    def children(self) -> Sequence[Node]:
        return (self.left, self.right)

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        a, b = _promote(self.left.evaluate(data), self.right.evaluate(data))
        arith = _long_arith if a.kind == "long" else _double_arith
        values, extra = arith(self.op, np.asarray(a.values), np.asarray(b.values))
        return Value(a.kind, values, a.null | b.null | extra)


_COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "GT": np.greater, "LT": np.less, "GE": np.greater_equal, "LE": np.less_equal, "EQ": np.equal, "NE": np.not_equal,
}


@dataclass(frozen=True)
class Compare(Node):
    op: str  # GT LT GE LE EQ NE ~
    left: Node
    right: Node
    kind = "bool"

    def children(self) -> Sequence[Node]:
        return (self.left, self.right)

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        a, b = _promote(self.left.evaluate(data), self.right.evaluate(data))
        av, bv = np.asarray(a.values), np.asarray(b.values)
        if self.op == "~":
            result = np.abs(av - bv) < APPROX if a.kind == "double" else av == bv
        else:
            result = _COMPARE[self.op](av, bv)
        return Value("bool", result, a.null | b.null)


@dataclass(frozen=True)
class Logical(Node):
    op: str  # 'AND' or 'OR'
    left: Node
    right: Node
    kind = "bool"

    def children(self) -> Sequence[Node]:
        return (self.left, self.right)

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        a, b = self.left.evaluate(data), self.right.evaluate(data)
        lv, ln = np.asarray(a.values, dtype=bool), a.null
        rv, rn = np.asarray(b.values, dtype=bool), b.null
        if self.op == "AND":
            decided = (~lv & ~ln) | (~rv & ~rn)  # a known false decides AND
            null = (ln | rn) & ~decided
            return Value("bool", lv & rv & ~null, null)
        decided = (lv & ~ln) | (rv & ~rn)  # a known true decides OR
        null = (ln | rn) & ~decided
        return Value("bool", (lv | rv) & ~null, null)


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------

def _domain(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Rows CFITSIO makes NULL because the argument is outside the function's domain."""
    if name == "SQRT":
        return lambda x: x < 0.0
    if name in ("LOG", "LOG10"):
        return lambda x: x <= 0.0
    if name in ("ASIN", "ARCSIN", "ACOS", "ARCCOS"):
        return lambda x: (x < -1.0) | (x > 1.0)
    return lambda x: np.zeros(np.shape(x), dtype=bool)


_DOUBLE_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "SQRT": np.sqrt, "EXP": np.exp, "LOG": np.log, "LOG10": np.log10, "SIN": np.sin, "COS": np.cos, "TAN": np.tan,
    "ASIN": np.arcsin, "ARCSIN": np.arcsin, "ACOS": np.arccos, "ARCCOS": np.arccos, "ATAN": np.arctan,
    "ARCTAN": np.arctan, "FLOOR": np.floor, "CEIL": np.ceil, "ROUND": lambda x: np.floor(x + 0.5),
}
FUNCTIONS: dict[str, int] = {"ISNULL": 1, "DEFNULL": 2, "ABS": 1, "MIN": 2, "MAX": 2, **{k: 1 for k in _DOUBLE_FUNCTIONS}}


@dataclass(frozen=True)
class Function(Node):
    name: str
    args: tuple[Node, ...]
    kind: str = "num"

    def children(self) -> Sequence[Node]:
        return self.args

    def evaluate(self, data: Mapping[str, Value]) -> Value:
        values = [arg.evaluate(data) for arg in self.args]
        name = self.name
        if name == "ISNULL":
            return Value("bool", np.asarray(values[0].null, dtype=bool), _false())
        if name == "ABS":
            v = np.asarray(values[0].values)
            return Value(values[0].kind, np.where(v > 0, v, -v), values[0].null)
        if name in ("DEFNULL", "MIN", "MAX"):
            a, b = _promote(values[0], values[1]) if self.kind == "num" else (values[0], values[1])
            av, bv = np.asarray(a.values), np.asarray(b.values)
            if name == "DEFNULL":
                return Value(a.kind, np.where(a.null, bv, av), a.null & b.null)
            pick = av < bv if name == "MIN" else av > bv  # C's (A < B ? A : B)
            both = np.where(pick, av, bv)
            result = np.where(a.null, bv, np.where(b.null, av, both))
            return Value(a.kind, result, a.null & b.null)
        x = to_double(values[0])
        xv = np.asarray(x.values)
        bad = _domain(name)(xv)
        return Value("double", _DOUBLE_FUNCTIONS[name](np.where(bad, 1.0, xv)), x.null | bad)


def make_function(name: str, args: list[Node]) -> Node:
    """A checked call node; ConstantError says what CFITSIO would refuse."""
    arity = FUNCTIONS[name]
    if len(args) != arity:
        raise ConstantError(f"{name} takes {arity} argument(s), got {len(args)}")
    if name == "ISNULL":
        if args[0].constant:
            raise ConstantError("ISNULL of a constant is not supported (CFITSIO returns garbage for it)")
        return Function(name, tuple(args), "bool")
    if name == "DEFNULL":
        if args[0].kind != args[1].kind:
            raise ConstantError("DEFNULL's value and default must both be numbers or both conditions")
        return Function(name, tuple(args), args[0].kind)
    if any(arg.kind != "num" for arg in args):
        raise ConstantError(f"{name} needs a number")
    return Function(name, tuple(args), "num")


def constant(node: Node) -> Const:
    """Compute a constant sub-expression now; CFITSIO refuses one without a value (1/0, LOG(0))."""
    with np.errstate(all="ignore"):
        value = node.evaluate({})
    if bool(np.any(value.null)):
        raise ConstantError("a constant part of the expression has no value (division by zero or a function "
                            "outside its domain)")
    return Const(value.kind, np.asarray(value.values)[()])
