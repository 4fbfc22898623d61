"""Filter expressions: CFITSIO's own row filter (through fitsio) against the package's evaluator, measured.

The native extractor screens each ObsID's filter file with its own reader and evaluator of CFITSIO's
expression language (`fits/tableio.py` + `extract/filterexpr.py` + `filtereval.py`, about 740 lines).
The alternative is CFITSIO's own row filter, `fitsio.FITS(path)[1].where(expr)`, which maketime runs.
For every ObsID of the simulated campaign (the prepared `FP_*.xfl` files the native extractor reads),
for the seed's expression and the HEASARC notebooks' two, this prints:

- time per ObsID of each (open, read the columns, evaluate; the better of two passes, same run);
- rows selected by each, and on how many ObsIDs the two select exactly the same rows;
- fitsio 1.4's constant-false quirk: for an expression CFITSIO folds to a constant false (`1 == 0`),
  `where()` returns one uninitialised index per row instead of none; the guarded form
  `(expr) && (Time > -1e300)` (what the tests' oracle uses) returns none.

    python benchmarks/bench_filter.py [N_OBS]      (default 1370, the Eta Car campaign's size)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import fitsio
import numpy as np
from bench_native import cached_archive

from rxte_hpc.extract.filterexpr import parse_filter
from rxte_hpc.extract.gti import row_flags_from_table
from rxte_hpc.fits.tableio import read_tables

EXPRESSIONS = (
    "(ELV > 4) && (OFFSET < 0.1)",
    "(ELV > 4) .AND. (OFFSET < 0.1) .AND. (NUM_PCU_ON > 0 .AND. NUM_PCU_ON < 6)",
    "(ELV > 4) && (OFFSET < 0.1) && (NUM_PCU_ON > 0) && .NOT. ISNULL(ELV) && (NUM_PCU_ON < 6)",
)
CONSTANT_FALSE = "1 == 0"


def ours(files: list[Path], expr: str) -> list[np.ndarray]:
    parsed = parse_filter(expr)
    return [np.nonzero(row_flags_from_table(read_tables(f)[0], parsed))[0] for f in files]


def cfitsio(files: list[Path], expr: str) -> list[np.ndarray]:
    out = []
    for f in files:
        with fitsio.FITS(str(f)) as fits_file:
            out.append(np.asarray(fits_file[1].where(expr), dtype=np.int64))
    return out


def timed(fn, files: list[Path], expr: str) -> tuple[float, list[np.ndarray]]:
    best, rows = float("inf"), []
    for _ in range(2):
        t0 = time.perf_counter()
        rows = fn(files, expr)
        best = min(best, time.perf_counter() - t0)
    return best, rows


def main(n_obs: int = 1370) -> None:
    root = cached_archive(n_obs)
    files = sorted((root / "prepared").glob("*/FP_*.xfl"))
    n_rows = 0
    for f in files:
        with fitsio.FITS(str(f)) as fits_file:
            n_rows += fits_file[1].get_nrows()
    print(f"{len(files)} filter files ({n_rows} rows) of {n_obs} simulated ObsIDs under {root}")
    for expr in EXPRESSIONS:
        ours_s, our_rows = timed(ours, files, expr)
        theirs_s, their_rows = timed(cfitsio, files, expr)
        same = sum(np.array_equal(a, b) for a, b in zip(our_rows, their_rows))
        print(f"\n{expr}")
        print(f"  ours (tableio + filterexpr): {ours_s / len(files) * 1e3:6.2f} ms/ObsID, "
              f"{sum(len(r) for r in our_rows)} rows selected")
        print(f"  fitsio where() (CFITSIO):    {theirs_s / len(files) * 1e3:6.2f} ms/ObsID, "
              f"{sum(len(r) for r in their_rows)} rows selected")
        print(f"  same rows on {same}/{len(files)} ObsIDs; ours/fitsio time = {ours_s / theirs_s:.2f}x")
    plain = cfitsio(files, CONSTANT_FALSE)
    guarded = cfitsio(files, f"({CONSTANT_FALSE}) && (Time > -1e300)")
    mine = ours(files, CONSTANT_FALSE)
    wrong = sum(len(r) > 0 for r in plain)
    print(f"\nconstant false {CONSTANT_FALSE!r}: fitsio where() returns rows on {wrong}/{len(files)} ObsIDs "
          f"({sum(len(r) for r in plain)} indices, e.g. {plain[0][:2].tolist() if len(plain[0]) else []}); "
          f"guarded form {sum(len(r) for r in guarded)} rows; ours {sum(len(r) for r in mine)} rows")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1370)
