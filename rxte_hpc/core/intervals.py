"""GTI algebra, the one owner: unions and intersections of [start, stop) time intervals as (n, 2) arrays.

Both extraction (maketime's GTIs against each file's own) and gather (the
merged light curve's GTI extension) need it, so it lives below both.
"""
from __future__ import annotations

import numpy as np


def as_intervals(gti: np.ndarray) -> np.ndarray:
    """An (n, 2) float64 array of [start, stop]; ValueError for any other shape."""
    gti = np.asarray(gti, dtype=np.float64)
    if gti.size == 0:
        return np.zeros((0, 2))
    if gti.ndim != 2 or gti.shape[1] != 2:
        raise ValueError(f"a GTI must be an (n, 2) array of [start, stop], got shape {gti.shape}")
    return gti


def union(*gtis: np.ndarray) -> np.ndarray:
    """Sorted, disjoint intervals covering any input; touching intervals merge, empty ones vanish."""
    parts = [as_intervals(g) for g in gtis]
    merged = np.concatenate(parts) if parts else np.zeros((0, 2))
    merged = merged[merged[:, 1] > merged[:, 0]]
    if not len(merged):
        return np.zeros((0, 2))
    merged = merged[np.argsort(merged[:, 0], kind="stable")]
    ends = np.maximum.accumulate(merged[:, 1])
    new = np.concatenate([[True], merged[1:, 0] > ends[:-1]])
    first = np.nonzero(new)[0]
    last = np.concatenate([first[1:] - 1, [len(merged) - 1]])
    return np.column_stack([merged[first, 0], ends[last]])


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted, disjoint intervals covered by both; zero-length overlaps are dropped."""
    left, right = union(a), union(b)
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
