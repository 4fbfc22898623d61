"""The pure merge: per-ObsID `LightCurve`s into one sorted curve per band (no files, no run directory).

The traps of merging (docs/architecture.md#why-it-is-built-this-way) decide the shape:
every time goes through `lcfile` and onto one MJDREF by exact offsets, one
TIMEDEL or an error, the inputs' GTIs are unioned, each row keeps its ObsID,
and rows of two ObsIDs in the same time bin are reported and kept, never
averaged. Curves are held as lists of small arrays that are concatenated once,
so memory follows the merged size, not the file count. `gather.py` feeds it
from the run directory, one accumulator per target and band.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rxte_hpc.core.errors import DataError
from rxte_hpc.core.intervals import union
from rxte_hpc.fits.lcfile import LightCurve, TimeRef, bins_as_gti
from rxte_hpc.products.headers import channel_keywords, value_of

__all__ = ["CARRIED_KEYWORDS", "OPTIONAL_COLUMNS", "CurveAccumulator", "MergedCurve", "find_overlaps", "first_few"]

log = logging.getLogger(__name__)

#: Columns carried into the merged curve only when every input has them.
OPTIONAL_COLUMNS = ("BACKV", "BACKE", "LiveTime")
#: Light-curve keywords carried when every input agrees on them (per-ObsID ones like ONTIME are not).
#: CHMIN/CHMAX are not among them: an energy band has other channels in each gain epoch, so the merged
#: file gives their range and the channels of each epoch (`channel_keywords`).
CARRIED_KEYWORDS = (
    "TELESCOP", "INSTRUME", "OBJECT", "HDUCLAS2", "BACKAPP", "DEADAPP", "VIGNAPP", "CLOCKAPP",
    "TIMEREF", "TASSIGN", "MINCHAN", "MAXCHAN", "E_MIN", "E_MAX", "PCULIST", "LAYERS", "RATEUNIT", "STDBAND",
    "ECHANRUL", "PCUCHRUL",  # how keV became channels and which channels PCU0 got (extract/std2.band_keywords)
)
#: Carried keywords whose disagreement is said ("varies per ObsID") rather than dropped silently.
_SAY_VARIES = ("PCULIST", "LAYERS", "RATEUNIT")
#: Gain-epoch keyword names the extractors use.
_EPOCH_KEYS = ("GAINEPOC", "GAINEPO")
#: Two bins closer than TIMEDEL minus this (s) share time; float noise at ~3e8 s is ~1e-7 s.
OVERLAP_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class MergedCurve:
    """A merged light curve plus what the merge noticed.

    `curve.columns['OBSID']` names the ObsID of each row; `overlaps` lists the
    ObsID pairs with rows in the same time bin, `n_overlap_rows` how many row
    pairs (of two ObsIDs) share time.
    """

    curve: LightCurve
    obsids: tuple[str, ...]
    n_nan: int
    overlaps: tuple[tuple[str, str], ...]
    n_overlap_rows: int
    channels: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # ObsID -> CHMIN, CHMAX, epoch

    @property
    def n_rows(self) -> int:
        return self.curve.n_rows


class CurveAccumulator:
    """Collects per-ObsID curves as small arrays; `finish()` concatenates once and sorts.

    Mutable on purpose (a builder): holding lists of arrays instead of
    `LightCurve` objects drops each file's header and keywords as soon as it is read.
    """

    def __init__(self) -> None:
        self.ref: TimeRef | None = None
        self.obsids: list[str] = []
        self.timedels: dict[float, list[str]] = {}
        self.parts: dict[str, list[np.ndarray]] = {"TIME": [], "RATE": [], "ERROR": [], "FRACEXP": []}
        self.optional: dict[str, list[np.ndarray]] | None = None
        self.codes: list[np.ndarray] = []
        self.gtis: list[np.ndarray] = []
        self.keywords: dict[str, Any] | None = None
        #: per ObsID: (CHMIN, CHMAX, gain epoch), -1 where the file does not say
        self.channels: dict[str, tuple[int, int, int]] = {}

    def add(self, obsid: str, lc: LightCurve) -> None:
        if self.ref is None:
            self.ref = lc.ref
        elif lc.ref.timesys.upper() != self.ref.timesys.upper():
            raise DataError(
                f"{obsid}: TIMESYS {lc.ref.timesys} differs from {self.obsids[0]}'s {self.ref.timesys}; "
                "times in different systems are not a constant offset apart"
            )
        offset = lc.ref.seconds_to(self.ref)
        time = lc.time + offset if offset else np.asarray(lc.time, dtype=np.float64)
        gti = lc.gti if lc.gti is not None and len(lc.gti) else bins_as_gti(lc.time, lc.timedel)
        self.gtis.append(gti + offset if offset else gti)
        self.timedels.setdefault(float(lc.timedel), []).append(obsid)
        for name, values in (("TIME", time), ("RATE", lc.rate), ("ERROR", lc.error), ("FRACEXP", lc.fracexp)):
            self.parts[name].append(np.asarray(values, dtype=np.float64))
        present = [c for c in OPTIONAL_COLUMNS if c in lc.columns]
        if self.optional is None:
            self.optional = {c: [] for c in present}
        for name in list(self.optional):
            if name in lc.columns:
                self.optional[name].append(np.asarray(lc.columns[name]))
            else:
                del self.optional[name]
        self.codes.append(np.full(lc.n_rows, len(self.obsids), dtype=np.int32))
        self.obsids.append(obsid)
        epoch_key = next((e for e in _EPOCH_KEYS if e in lc.keywords), "GAINEPOC")
        lo, hi, epoch = (int(value_of(lc.keywords.get(k, -1))) for k in ("CHMIN", "CHMAX", epoch_key))
        self.channels[obsid] = (lo, hi, epoch)
        carried = {k: lc.keywords[k] for k in CARRIED_KEYWORDS if k in lc.keywords}
        if self.keywords is None:
            self.keywords = carried
        else:
            varied: dict[str, tuple[object, str]] = {
                k: ("varies per ObsID", "differs between the merged ObsIDs") for k in _SAY_VARIES
                if k in self.keywords and carried.get(k) != self.keywords[k]}
            # a channel band's nominal keV changes with the gain epoch: the merged file gives the range
            for key, pick in (("E_MIN", min), ("E_MAX", max)):
                if key in self.keywords and key in carried and carried[key] != self.keywords[key]:
                    value = pick(float(value_of(carried[key])), float(value_of(self.keywords[key])))
                    varied[key] = (value, f"[keV] nominal, {'lowest' if pick is min else 'highest'} over the ObsIDs")
            self.keywords = {**{k: v for k, v in self.keywords.items() if carried.get(k) == v}, **varied}

    def finish(self, name: str = "RATE") -> MergedCurve:
        if not self.obsids or self.ref is None:
            raise DataError("nothing to merge: no usable per-ObsID light curve")
        timedel = _one_timedel(self.timedels)
        codes = np.concatenate(self.codes)
        time = np.concatenate(self.parts["TIME"])
        names = np.array(self.obsids)
        rank = np.empty(len(names), dtype=np.int32)
        rank[np.argsort(names, kind="stable")] = np.arange(len(names), dtype=np.int32)
        # lexsort is stable: equal TIME goes by ObsID, equal both keeps input order
        order = np.lexsort((rank[codes], time))
        time = time[order]
        codes = codes[order]
        columns: dict[str, np.ndarray] = {"OBSID": names.astype("S")[codes]}
        for col, parts in (self.optional or {}).items():
            columns[col] = np.concatenate(parts)[order]
        rate = np.concatenate(self.parts["RATE"])[order]
        curve = LightCurve(
            time=time,
            rate=rate,
            error=np.concatenate(self.parts["ERROR"])[order],
            fracexp=np.concatenate(self.parts["FRACEXP"])[order],
            timedel=timedel,
            ref=self.ref,
            columns=columns,
            gti=union(*self.gtis),
            name=name,
            keywords={**(self.keywords or {}), **channel_keywords(self.channels)},
        )
        pairs, n_overlap = find_overlaps(time, codes, timedel, names)
        return MergedCurve(curve, tuple(self.obsids), int(np.count_nonzero(~np.isfinite(rate))), pairs, n_overlap,
                           dict(self.channels))


def _one_timedel(timedels: Mapping[float, list[str]]) -> float:
    if len(timedels) == 1:
        return next(iter(timedels))
    common = max(timedels, key=lambda t: len(timedels[t]))
    odd = "; ".join(f"TIMEDEL {t:g} s: {first_few(ids)}" for t, ids in timedels.items() if t != common)
    raise DataError(
        f"light curves have different bin sizes: {len(timedels[common])} ObsIDs have TIMEDEL {common:g} s, but {odd}. "
        "Re-extract them with one extract.binsz (rxte-hpc work --obsid ID --force)"
    )


def find_overlaps(
    time: np.ndarray, codes: np.ndarray, timedel: float, names: np.ndarray
) -> tuple[tuple[tuple[str, str], ...], int]:
    """ObsID pairs with rows whose bins [t, t+TIMEDEL) intersect, and how many such row pairs.

    `time` is sorted, so the rows that start less than one bin before row i form
    the window start[i]..i-1; its depth is the number of ObsIDs stacked on one
    bin (1 or 2 in practice), which bounds the loop.
    """
    n = len(time)
    if n < 2:
        return (), 0
    start = np.searchsorted(time, time - (timedel - OVERLAP_TOLERANCE_S), side="right")
    depth = int(np.max(np.arange(n) - start))
    pairs: set[tuple[str, str]] = set()
    count = 0
    for k in range(1, depth + 1):
        i = np.arange(k, n)
        hit = i[(i - k >= start[k:]) & (codes[k:] != codes[:-k])]
        count += len(hit)
        for a, b in {(int(codes[j]), int(codes[j - k])) for j in hit}:
            pairs.add(tuple(sorted((str(names[a]), str(names[b])))))  # type: ignore[arg-type]
    return tuple(sorted(pairs)), count


def first_few(items: Sequence[str], n: int = 5) -> str:
    """`a, b, c, ... (+N more)`: the first `n` items of a list for a one-line message."""
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
