"""The ObsID manifest: rows + metadata in ECSV, balanced task assignment, slicing by task.

ECSV is astropy's typed CSV: readable by people, diffable, typed. The `task`
column is written once at planning time, so every later rerun, array index and
MPI rank maps ObsIDs to tasks identically.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from astropy.table import Table

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.obsid import ObsID, check_cycle

COLUMNS = ("index", "obsid", "cycle", "prnb", "target_name", "time_mjd", "exposure_s", "ra", "dec", "task")


@dataclass(frozen=True)
class ManifestRow:
    index: int
    obsid: ObsID
    cycle: int
    prnb: int
    target_name: str
    time_mjd: float
    exposure_s: float
    ra: float
    dec: float
    task: int


@dataclass(frozen=True)
class Observation:
    """A planned ObsID before task assignment (what a planner source yields)."""

    obsid: ObsID
    cycle: int
    target_name: str = ""
    time_mjd: float = math.nan
    exposure_s: float = math.nan
    ra: float = math.nan
    dec: float = math.nan

    @property
    def prnb(self) -> int:
        return self.obsid.prnb


@dataclass(frozen=True)
class Manifest:
    rows: tuple[ManifestRow, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_tasks(self) -> int:
        return int(self.meta.get("n_tasks", max((r.task for r in self.rows), default=-1) + 1))

    def rows_for_task(self, task: int) -> list[ManifestRow]:
        if not 0 <= task < self.n_tasks:
            raise UsageError(f"task {task} is out of range: the manifest has tasks 0..{self.n_tasks - 1}")
        return [r for r in self.rows if r.task == task]

    def row_for_obsid(self, obsid: str | ObsID) -> ManifestRow:
        oid = ObsID.parse(obsid)
        for r in self.rows:
            if r.obsid == oid:
                return r
        raise UsageError(f"ObsID {oid} is not in the manifest")

    def task_exposures(self) -> list[float]:
        totals = [0.0] * self.n_tasks
        for r in self.rows:
            totals[r.task] += _weight(r.exposure_s)
        return totals

    def to_table(self) -> Table:
        t = Table(
            rows=[
                (r.index, r.obsid.text, r.cycle, r.prnb, r.target_name, r.time_mjd, r.exposure_s, r.ra, r.dec, r.task)
                for r in self.rows
            ],
            names=COLUMNS,
            dtype=(np.int64, "U15", np.int64, np.int64, "U64", np.float64, np.float64, np.float64, np.float64, np.int64),
        )
        t.meta.update(dict(self.meta))
        t["time_mjd"].unit = "d"
        t["exposure_s"].unit = "s"
        t["ra"].unit = "deg"
        t["dec"].unit = "deg"
        return t

    def to_bytes(self) -> bytes:
        buf = io.StringIO()
        self.to_table().write(buf, format="ascii.ecsv")
        return buf.getvalue().encode()

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_bytes())

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


def read_manifest(path: Path) -> Manifest:
    """Read a manifest; a missing file says to run `plan`, a broken one names the file."""
    if not path.is_file():
        raise UsageError(f"{path}: no manifest; run `rxte-hpc plan CONFIG` first")
    try:
        t = Table.read(path, format="ascii.ecsv")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from exc
    missing = [c for c in COLUMNS if c not in t.colnames]
    if missing:
        raise DataError(f"{path}: manifest lacks column {missing[0]!r}")
    rows = []
    for i, rec in enumerate(t):
        try:
            rows.append(
                ManifestRow(
                    index=int(rec["index"]),
                    obsid=ObsID.parse(str(rec["obsid"])),
                    cycle=check_cycle(int(rec["cycle"])),
                    prnb=int(rec["prnb"]),
                    target_name=_text(rec["target_name"]),
                    time_mjd=float(rec["time_mjd"]),
                    exposure_s=float(rec["exposure_s"]),
                    ra=float(rec["ra"]),
                    dec=float(rec["dec"]),
                    task=int(rec["task"]),
                )
            )
        except (ValueError, DataError) as exc:
            raise DataError(f"{path}: row {i + 1}: {exc}") from exc
    return Manifest(tuple(rows), dict(t.meta))


def _text(value: object) -> str:
    """A string cell; ECSV reads an empty string back as masked, which str() would make '--'."""
    return "" if np.ma.is_masked(value) else str(value)


def _weight(exposure: float) -> float:
    return exposure if math.isfinite(exposure) and exposure > 0 else 0.0


def assign_tasks(exposures: Sequence[float], n_tasks: int) -> list[int]:
    """Longest-processing-time-first onto the least-loaded task; ties broken by count, then index.

    Unknown (NaN) exposures weigh nothing, so the count tie-break still spreads
    them evenly. Deterministic for the same input.
    """
    if n_tasks < 1:
        raise ValueError("need at least one task")
    order = sorted(range(len(exposures)), key=lambda i: (-_weight(exposures[i]), i))
    heap = [(0.0, 0, t) for t in range(n_tasks)]  # (load, count, task)
    heapq.heapify(heap)
    out = [0] * len(exposures)
    for i in order:
        load, count, task = heapq.heappop(heap)
        out[i] = task
        heapq.heappush(heap, (load + _weight(exposures[i]), count + 1, task))
    return out


def build_manifest(observations: Iterable[Observation], obs_per_task: int, meta: Mapping[str, Any]) -> Manifest:
    """Sort by time (then ObsID), keep each ObsID once, index, and assign balanced tasks."""
    unique: dict[ObsID, Observation] = {}
    for obs in observations:
        unique.setdefault(obs.obsid, obs)
    ordered = sorted(unique.values(), key=lambda o: (math.inf if math.isnan(o.time_mjd) else o.time_mjd, o.obsid.text))
    n_tasks = max(1, math.ceil(len(ordered) / obs_per_task))
    tasks = assign_tasks([o.exposure_s for o in ordered], n_tasks)
    rows = tuple(
        ManifestRow(i, o.obsid, o.cycle, o.prnb, o.target_name, o.time_mjd, o.exposure_s, o.ra, o.dec, tasks[i])
        for i, o in enumerate(ordered)
    )
    full_meta = {**meta, "n_tasks": n_tasks, "obs_per_task": obs_per_task, "n_obsids": len(rows)}
    return Manifest(rows, full_meta)
