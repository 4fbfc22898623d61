"""The stand-in maketime's own arithmetic, tests only: row selection by CFITSIO itself, and fndssp.

Real maketime selects rows with CFITSIO's expression evaluator (ffsrow), so
the stand-in asks the same evaluator, through fitsio, instead of a calculator
of its own: integer division, NULL logic and precedence are then CFITSIO's by
construction, and never rxte_hpc.extract.filterexpr's (the code under test).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class ExprError(ValueError):
    """CFITSIO refused the expression (a syntax error or an unknown column)."""


def select_rows(path: Path, extension: int, expr: str, time_name: str, n_rows: int) -> np.ndarray:
    """Boolean row flags of `expr` on one table of `path`, as CFITSIO's row filter selects them.

    fitsio 1.4's `where` returns garbage when CFITSIO folds a whole expression
    to the constant false, so a term that is true on every real row keeps it a
    row expression.
    """
    import fitsio

    flags = np.zeros(n_rows, dtype=bool)
    try:
        with fitsio.FITS(str(path)) as f:
            rows = f[extension].where(f"({expr}) && ({time_name} > -1e300)")
    except (OSError, ValueError) as exc:
        raise ExprError(" ".join(str(exc).split())) from exc
    flags[np.asarray(rows, dtype=np.int64)] = True
    return flags


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
