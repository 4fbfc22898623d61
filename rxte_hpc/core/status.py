"""Per-ObsID status records (`status/<obsid>.json`) and the run summary built from them.

One small JSON file per ObsID, written by atomic rename: parallel filesystems
lock badly on shared appended files, and a record must never be half-written.
`status`, `rerun` and `gather` read only these records (and the manifest),
never the scheduler's memory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import Manifest
from rxte_hpc.core.paths import RunPaths

log = logging.getLogger(__name__)

STATES = ("done", "failed", "no_data", "interrupted", "running")
#: What `status` reports per ObsID: the record's state, or one of these two.
MISSING = "missing"  # no record, or a done record for another config / without its output
#: States that count as finished for exit codes (DESIGN.md: no_data is not a failure).
FINISHED = ("done", "no_data")
ERROR_KINDS = ("site", "data")


@dataclass(frozen=True)
class StatusRecord:
    obsid: str
    task: int
    state: str
    backend: str
    config_hash: str
    started: str
    finished: str | None
    seconds: float | None
    host: str
    slurm_job: str | None = None
    rank: int | None = None
    output: str | None = None
    n_rows: int | None = None
    error: str | None = None
    error_kind: str | None = None
    bands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}")
        if self.error_kind not in (None, *ERROR_KINDS):
            raise ValueError(f"unknown error kind {self.error_kind!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "StatusRecord":
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["bands"] = tuple(data.get("bands") or ())
        return cls(**data)


def write_record(paths: RunPaths, record: StatusRecord) -> None:
    """Publish a record; a `running` record is advisory and skips the fsyncs."""
    write_atomic(paths.status(record.obsid), record.to_json().encode(), durable=record.state != "running")


def read_record(paths: RunPaths, obsid: str) -> StatusRecord | None:
    """The record for `obsid`, or None when there is none or it is unreadable (logged)."""
    path = paths.status(obsid)
    try:
        return StatusRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable status record, treated as missing (%s)", path, exc)
        return None


def read_records(paths: RunPaths, obsids: Iterable[str]) -> dict[str, StatusRecord]:
    records = {}
    for obsid in obsids:
        rec = read_record(paths, obsid)
        if rec is not None:
            records[obsid] = rec
    return records


def effective_state(record: StatusRecord | None, paths: RunPaths, config_hash: str) -> str:
    """What a record means for this config: a stale or output-less `done` is `missing`."""
    if record is None:
        return MISSING
    if record.state == "done":
        if record.config_hash != config_hash or not paths.lc(record.obsid).is_file():
            return MISSING
    if record.state == "no_data" and record.config_hash != config_hash:
        return MISSING
    return record.state


def is_done(record: StatusRecord | None, paths: RunPaths, config_hash: str) -> bool:
    """True when the worker may skip this ObsID (done for this config, output present, or no_data)."""
    return effective_state(record, paths, config_hash) in FINISHED


@dataclass(frozen=True)
class ObsState:
    obsid: str
    task: int
    state: str
    record: StatusRecord | None


@dataclass(frozen=True)
class RunSummary:
    """Per-ObsID states of a whole manifest; the basis of `status`, `rerun` and exit codes."""

    states: tuple[ObsState, ...]

    @classmethod
    def collect(cls, manifest: Manifest, paths: RunPaths, config_hash: str) -> "RunSummary":
        out = []
        for row in manifest.rows:
            rec = read_record(paths, row.obsid.text)
            out.append(ObsState(row.obsid.text, row.task, effective_state(rec, paths, config_hash), rec))
        return cls(tuple(out))

    def counts(self) -> Counter:
        return Counter(s.state for s in self.states)

    def per_task(self) -> dict[int, Counter]:
        tasks: dict[int, Counter] = {}
        for s in self.states:
            tasks.setdefault(s.task, Counter())[s.state] += 1
        return dict(sorted(tasks.items()))

    @property
    def complete(self) -> bool:
        return all(s.state in FINISHED for s in self.states)

    def with_state(self, *states: str) -> list[ObsState]:
        return [s for s in self.states if s.state in states]

    def tasks_to_rerun(self, include_failed: bool = False) -> list[int]:
        """Tasks with missing/interrupted ObsIDs (site failures too; data failures only on request)."""
        tasks = set()
        for s in self.states:
            if s.state in (MISSING, "interrupted", "running"):
                tasks.add(s.task)
            elif s.state == "failed" and (include_failed or (s.record is not None and s.record.error_kind == "site")):
                tasks.add(s.task)
        return sorted(tasks)

    def to_json(self) -> dict:
        return {
            "counts": {k: self.counts().get(k, 0) for k in (*STATES, MISSING)},
            "complete": self.complete,
            "tasks": {str(t): dict(c) for t, c in self.per_task().items()},
            "obsids": [
                {
                    "obsid": s.obsid,
                    "task": s.task,
                    "state": s.state,
                    "error": s.record.error if s.record and s.state == "failed" else None,
                    "error_kind": s.record.error_kind if s.record and s.state == "failed" else None,
                    "seconds": s.record.seconds if s.record else None,
                }
                for s in self.states
            ],
        }


def format_counts(counts: Mapping[str, int]) -> str:
    order = ("done", "no_data", "failed", "interrupted", "running", MISSING)
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in order if counts.get(k, 0) or k in ("done", "failed", MISSING))
