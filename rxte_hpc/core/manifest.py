"""The ObsID manifest: rows + metadata in ECSV, balanced task assignment, slicing by task.

ECSV is astropy's typed CSV: readable by people, diffable, typed. The `task`
column is written once at planning time, so every later rerun, array index and
MPI rank maps ObsIDs to tasks identically.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from rxte_hpc.core import manifestcache
from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.obsid import MAX_CYCLE, ObsID, check_cycle
from rxte_hpc.core.paths import RunPaths

if TYPE_CHECKING:
    from astropy.table import Table

log = logging.getLogger(__name__)

COLUMNS = ("index", "obsid", "cycle", "prnb", "target_name", "time_mjd", "exposure_s", "ra", "dec", "task")
#: With several configured targets: the configured target whose cone holds the row (docs/architecture.md#data-flow).
TARGET_COLUMN = "target"


@dataclass(frozen=True)
class ManifestRow:
    """One row of the plan (`manifest.ecsv`): an `Observation` placed at `index` in time order and given its `task`.

    Two types for two concepts: an Observation is what a catalogue, a table or
    an archive scan says about a pointing (the simulation yields them too); a
    ManifestRow exists only in a plan, and every executor works from these.
    """

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
    target: str = ""  # the configured target (several-targets runs); "" for a one-target run

    @classmethod
    def placed(cls, obs: "Observation", index: int, task: int) -> "ManifestRow":
        """The row of `obs` at `index` of the plan, in `task`."""
        return cls(index, obs.obsid, obs.cycle, obs.prnb, obs.target_name, obs.time_mjd, obs.exposure_s, obs.ra,
                   obs.dec, task, obs.target)


@dataclass(frozen=True)
class Observation:
    """A pointing as a source lists it (xtemaster over TAP, a table file, an archive scan, the simulation),
    before it is placed in a plan (`ManifestRow.placed`)."""

    obsid: ObsID
    cycle: int
    target_name: str = ""
    time_mjd: float = math.nan
    exposure_s: float = math.nan
    ra: float = math.nan
    dec: float = math.nan
    target: str = ""

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

    @property
    def targets(self) -> tuple[str, ...]:
        """The configured targets of a several-targets run, in first-appearance order (empty for one target)."""
        return tuple(dict.fromkeys(r.target for r in self.rows if r.target))

    @property
    def table(self) -> Table:
        """The manifest as an astropy Table (what `manifest.ecsv` holds), for notebooks."""
        return self.to_table()

    def to_table(self) -> Table:
        f8 = np.float64
        dtypes: tuple[Any, ...] = (np.int64, "U15", np.int64, np.int64, "U64", f8, f8, f8, f8, np.int64)
        values = [
            [r.index for r in self.rows],
            [r.obsid.text for r in self.rows],
            [r.cycle for r in self.rows],
            [r.prnb for r in self.rows],
            [r.target_name for r in self.rows],
            [r.time_mjd for r in self.rows],
            [r.exposure_s for r in self.rows],
            [r.ra for r in self.rows],
            [r.dec for r in self.rows],
            [r.task for r in self.rows],
        ]
        from astropy.table import Table

        t = Table([np.array(v, dtype=d) for v, d in zip(values, dtypes)], names=COLUMNS)
        if self.targets:
            t[TARGET_COLUMN] = np.array([r.target for r in self.rows], dtype="U64")
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


def read_manifest(path: Path, write_cache: bool = True) -> Manifest:
    """Read a manifest and check it is consistent; a missing file says to run `plan`, a bad one names the row.

    Every error has the manifest's path in `.path`.
    """
    try:
        return _read_manifest(path, write_cache)
    except (DataError, UsageError) as exc:
        raise exc.with_context(path=path)


def _read_manifest(path: Path, write_cache: bool) -> Manifest:
    """`read_manifest` itself.

    A hand-edited manifest is refused when a later step would go wrong on it:
    a duplicated ObsID (merged twice), a `task` outside 0..n_tasks-1 or a task
    number with no rows (never run, or an array index `work` rejects), a
    missing column, a value of the wrong type.
    """
    if not path.is_file():
        raise UsageError(f"{path}: no manifest; run `rxte-hpc plan CONFIG` first")
    cache = RunPaths(path.parent).manifest_cache if path.name == RunPaths(path.parent).manifest.name else None
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: unreadable manifest ({exc.strerror or exc})") from None
    cached = manifestcache.load(cache, st) if cache is not None else None
    if cached is not None:
        try:
            return _build(path, cached["cols"], cached["meta"], trusted=True)
        except (KeyError, TypeError, ValueError, IndexError, DataError) as exc:
            log.debug("%s: cached copy ignored (%s)", cache, exc)
    from astropy.table import Table

    try:
        t = Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # astropy's ECSV and YAML readers raise many types on a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable manifest ({type(exc).__name__}: {reason[:160]})") from None
    missing = [c for c in COLUMNS if c not in t.colnames]
    if missing:
        raise DataError(f"{path}: manifest lacks column {missing[0]!r}")
    try:
        cols: dict[str, list[Any]] = {c: _typed(t, c, _int) for c in ("index", "cycle", "prnb", "task")}
        cols.update({c: _typed(t, c, _float) for c in ("time_mjd", "exposure_s", "ra", "dec")})
    except _BadCell as exc:
        raise DataError(f"{path}: row {exc.row + 1}: {exc.reason}") from None
    cols["target_name"] = [_cell_text(v) for v in _column(t, "target_name")]
    cols["obsid"] = _column(t, "obsid")
    if TARGET_COLUMN in t.colnames:
        cols[TARGET_COLUMN] = [_cell_text(v) for v in _column(t, TARGET_COLUMN)]
    manifest = _build(path, cols, dict(t.meta), trusted=False)
    if cache is not None and write_cache:
        manifestcache.save(cache, st, dict(manifest.meta), {**cols, "obsid": [r.obsid.text for r in manifest.rows]})
    return manifest


def _build(path: Path, cols: Mapping[str, list[Any]], meta: dict[str, Any], trusted: bool) -> Manifest:
    """Rows from columns; `trusted` columns come from the checked copy of an already validated manifest."""
    n = len(cols["obsid"])
    if any(len(cols[c]) != n for c in COLUMNS):
        raise ValueError("columns of different lengths")
    obsids, cycle, task = cols["obsid"], cols["cycle"], cols["task"]
    index, prnb, names = cols["index"], cols["prnb"], cols["target_name"]
    time_mjd, exposure, ra, dec = cols["time_mjd"], cols["exposure_s"], cols["ra"], cols["dec"]
    targets = cols.get(TARGET_COLUMN) or [""] * n
    cycles_ok = all(0 <= c <= MAX_CYCLE for c in cycle)
    rows = []
    seen: dict[str, int] = {}
    for i in range(n):
        if trusted:
            obsid = object.__new__(ObsID)
            obsid.__dict__["text"] = obsids[i]
        else:
            try:
                obsid = ObsID.parse(obsids[i])
                if not cycles_ok:
                    check_cycle(cycle[i])
            except DataError as exc:
                raise DataError(f"{path}: row {i + 1}: {exc}") from None
        text = obsid.text
        if text in seen:
            raise DataError(f"{path}: row {i + 1}: ObsID {text} is listed twice (first at row {seen[text] + 1}); "
                            "each ObsID is planned once")
        seen[text] = i
        if task[i] < 0:
            raise DataError(f"{path}: row {i + 1}: task {task[i]} is negative")
        rows.append(ManifestRow(index[i], obsid, cycle[i], prnb[i], names[i], time_mjd[i], exposure[i],
                                ra[i], dec[i], task[i], targets[i]))
    _check_tasks(path, rows, meta)
    return Manifest(tuple(rows), meta)


def _column(t: Table, name: str) -> list[Any]:
    """A column as Python values, masked cells as None (tolist is ~20x faster than iterating rows)."""
    col = t[name]
    if getattr(col, "mask", None) is not None and np.any(col.mask):
        return [None if m else v for v, m in zip(col.data.data.tolist(), np.asarray(col.mask).tolist())]
    return list(np.asarray(col).tolist())


class _BadCell(Exception):
    def __init__(self, row: int, reason: str) -> None:
        super().__init__(reason)
        self.row, self.reason = row, reason


def _typed(t: Table, name: str, convert: Any) -> list[Any]:
    """A numeric column as Python ints/floats; a column of the declared type needs no per-cell check."""
    col = t[name]
    kind = "iu" if convert is _int else "iuf"
    masked = getattr(col, "mask", None) is not None and bool(np.any(col.mask))
    if not masked and np.asarray(col).dtype.kind in kind:
        values = np.asarray(col).tolist()
        return [float(v) for v in values] if convert is _float and np.asarray(col).dtype.kind != "f" else values
    out = []
    for i, value in enumerate(_column(t, name)):
        try:
            out.append(convert(value, name))
        except ValueError as exc:
            raise _BadCell(i, str(exc)) from None
    return out


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} is not a whole number: {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} is not a whole number: {value!r}")
        return int(value)
    if isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name} is not a whole number: {value!r}") from None
    raise ValueError(f"{name} is not a whole number: {value!r}")


def _float(value: Any, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"{name} is not a number: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number: {value!r}") from None


def _cell_text(value: Any) -> str:
    return "" if value is None else str(value)


def _check_tasks(path: Path, rows: Sequence[ManifestRow], meta: Mapping[str, Any]) -> None:
    """Tasks are exactly 0..n_tasks-1, each with at least one row, and agree with the metadata's n_tasks."""
    n_meta = meta.get("n_tasks")
    used = sorted({r.task for r in rows})
    n_tasks = (used[-1] + 1) if used else 0
    if n_meta is not None:
        if isinstance(n_meta, bool) or not isinstance(n_meta, int) or n_meta < 1:
            raise DataError(f"{path}: metadata n_tasks is not a positive whole number: {n_meta!r}")
        for i, r in enumerate(rows):
            if r.task >= n_meta:
                raise DataError(f"{path}: row {i + 1}: task {r.task} is out of range: "
                                f"the manifest's n_tasks is {n_meta} (tasks 0..{n_meta - 1})")
        n_tasks = n_meta
    if len(used) != n_tasks:
        gap = next(t for t in range(n_tasks) if t not in set(used))
        raise DataError(f"{path}: task {gap} has no rows although tasks run 0..{n_tasks - 1}: "
                        "tasks must be contiguous (an array element would run nothing)")


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
    rows = tuple(ManifestRow.placed(o, i, tasks[i]) for i, o in enumerate(ordered))
    full_meta = {**meta, "n_tasks": n_tasks, "obs_per_task": obs_per_task, "n_obsids": len(rows)}
    return Manifest(rows, full_meta)


def science_text(config: Config) -> str:
    """What decides the light curves, in a few words (a refusal names it for both configs)."""
    ex = config.extract
    return f"backend {ex.backend}, " + "; ".join(
        (f"{b.name} " if ex.bands else "") + b.describe() for b in ex.band_list())


def check_run_dir(config: Config, manifest: Manifest) -> None:
    """A run directory belongs to one plan: a config whose science differs from the plan's is refused.

    Its records and light curves would otherwise be mixed with the other
    config's in one directory (each `done` only for its own config hash, both
    writing one `lc/` and one merged product). Checked before anything is
    written by every command that uses the plan. Manifests written before the
    plan recorded its config hash are not checked.
    """
    planned = manifest.meta.get("config_hash")
    if not planned or planned == config.hash():
        return
    paths = RunPaths(config.run_dir)
    by = manifest.meta.get("config_file") or "a config not recorded in the manifest"
    theirs = manifest.meta.get("science") or "science not recorded"
    raise UsageError(
        f"{config.path}: run_dir {paths.root} holds the plan of another configuration: {paths.manifest} was planned "
        f"by {by} (config hash {planned}: {theirs}); this config has hash {config.hash()} ({science_text(config)}). "
        f"Use another run_dir for this config, or replan this one deliberately with "
        f"`rxte-hpc plan {config.path} --force` (every ObsID is then redone for this config, replacing the old "
        "light curves; the old records stop counting as done)",
        path=config.path,
    )
