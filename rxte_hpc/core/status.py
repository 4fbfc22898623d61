"""Per-ObsID status records (`status/<shard>/<obsid>.json`) and the run summary built from them.

One small JSON file per ObsID, written by atomic rename: parallel filesystems
lock badly on shared appended files, and a record must never be half-written.
`status`, `rerun` and `gather` read only these records (and the manifest),
never the scheduler's memory; core/statusindex.py reads them at 100,000
ObsIDs with a handful of opens, never trusting a summary older than them.

Reading is total: a record file is either a valid record of the ObsID its
path names, or "unreadable, treated as missing" with the reason (`status`
names it). JSON that is not an object, a field of the wrong type, or an
`obsid` field naming another ObsID are all unreadable, never a crash.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import Manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.statusindex import Snapshot, load_snapshot

log = logging.getLogger(__name__)

STATES = ("done", "failed", "no_data", "interrupted", "running")
#: What `status` reports per ObsID: the record's state, or one of these two.
MISSING = "missing"  # no record, or a done record for another config / without its output
#: States that count as finished for exit codes (docs/architecture.md#records: no_data is not a failure).
FINISHED = ("done", "no_data")
ERROR_KINDS = ("site", "data")
_ORDER = ("done", "no_data", "failed", "interrupted", "running", MISSING)


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
    def from_json(cls, text: str | bytes, expected_obsid: str | None = None) -> "StatusRecord":
        """Parse a record; ValueError (with the reason) for anything that is not a valid record."""
        fields, reason = parse_record(text.encode() if isinstance(text, str) else text, expected_obsid)
        if fields is None:
            raise ValueError(reason)
        return _record(fields)


# ------------------------------------------------------------------ validation (total)

_NAMES = tuple(f.name for f in dataclasses.fields(StatusRecord))
_REQUIRED = ("obsid", "task", "state", "config_hash")
_TEXT_OPTIONAL = ("started", "finished", "slurm_job", "output", "error", "error_kind")
_DEFAULTS: dict[str, Any] = {"backend": "", "started": "", "host": "", "bands": ()}


def _check(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for field `name` (None when it is)."""
    if name in ("obsid", "state", "config_hash", "backend", "host"):
        ok = isinstance(value, str)
    elif name in ("task",):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif name in ("rank", "n_rows"):
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    elif name == "seconds":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    elif name == "bands":
        ok = isinstance(value, (list, tuple)) and all(isinstance(b, str) for b in value)
    else:  # _TEXT_OPTIONAL
        ok = value is None or isinstance(value, str)
    if not ok:
        return f"field {name!r} has the wrong type ({type(value).__name__})"
    if name == "state" and value not in STATES:
        return f"unknown state {value!r}"
    if name == "error_kind" and value not in (None, *ERROR_KINDS):
        return f"unknown error kind {value!r}"
    return None


def parse_record(data: bytes, expected_obsid: str | None = None) -> tuple[list[Any] | None, str | None]:
    """(fields in StatusRecord order, None) for a valid record, else (None, why it is unreadable)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON ({str(exc).splitlines()[0][:80]})"
    if not isinstance(raw, dict):
        return None, f"JSON {type(raw).__name__}, not a record object"
    for name in _REQUIRED:
        if name not in raw:
            return None, f"no {name!r} field"
    fields = []
    for name in _NAMES:
        value = raw.get(name, _DEFAULTS.get(name))
        why = _check(name, value)
        if why:
            return None, why
        fields.append(list(value or ()) if name == "bands" else value)
    if expected_obsid is not None and fields[0] != expected_obsid:
        return None, f"its obsid field names another ObsID ({str(fields[0])[:40]!r})"
    return fields, None


def _record(fields: Sequence[Any]) -> StatusRecord:
    """A StatusRecord from validated fields, without the dataclass __init__ (100,000 of these per `status`)."""
    rec = object.__new__(StatusRecord)
    values = dict(zip(_NAMES, fields))
    values["bands"] = tuple(values["bands"] or ())
    rec.__dict__.update(values)
    return rec


# ------------------------------------------------------------------ one record


def write_record(paths: RunPaths, record: StatusRecord) -> None:
    """Publish a record; a `running` record is advisory and skips the fsyncs."""
    write_atomic(paths.status(record.obsid), record.to_json().encode(), durable=record.state != "running")


def read_record_detail(paths: RunPaths, obsid: str) -> tuple[StatusRecord | None, str | None]:
    """(record, None), (None, None) when there is none, or (None, why it is unreadable)."""
    path = paths.status(obsid)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable record ({exc.strerror or exc})"
    fields, reason = parse_record(data, paths.status(obsid).stem)
    if fields is None:
        return None, reason
    return _record(fields), None


def read_record(paths: RunPaths, obsid: str) -> StatusRecord | None:
    """The record for `obsid`, or None when there is none or it is unreadable (logged)."""
    rec, reason = read_record_detail(paths, obsid)
    if reason:
        log.warning("%s: unreadable status record, treated as missing (%s)", paths.status(obsid), reason)
    return rec


def snapshot(paths: RunPaths, use_index: bool = True, write_index: bool = True) -> Snapshot:
    """Every record of the run directory, read through the status index (core/statusindex.py)."""
    return load_snapshot(paths, parse_record, use_index=use_index, write_index=write_index)


def effective_state(record: StatusRecord | None, paths: RunPaths, config_hash: str,
                    lc_present: bool | None = None) -> str:
    """What a record means for this config: a stale or output-less `done` is `missing`."""
    if record is None:
        return MISSING
    if record.state == "done":
        if lc_present is None:
            lc_present = paths.lc(record.obsid).is_file()
        if record.config_hash != config_hash or not lc_present:
            return MISSING
    if record.state == "no_data" and record.config_hash != config_hash:
        return MISSING
    return record.state


def is_done(record: StatusRecord | None, paths: RunPaths, config_hash: str) -> bool:
    """True when the worker may skip this ObsID (done for this config, output present, or no_data)."""
    return effective_state(record, paths, config_hash) in FINISHED


def why_missing(record: StatusRecord | None, unreadable: str | None, config_hash: str) -> str:
    """Why an ObsID counts as missing, in a few words."""
    if unreadable:
        return f"unreadable record, treated as missing: {unreadable}"
    if record is None:
        return "no record (never started)"
    if record.config_hash != config_hash:
        return f"{record.state} for another config"
    return "done but its light curve is missing"


# ------------------------------------------------------------------ the run summary


class ObsState(NamedTuple):
    obsid: str
    task: int
    state: str
    fields: Sequence[Any] | None  # the record's fields (StatusRecord order), None without a readable record
    target: str = ""
    unreadable: str | None = None  # why the record file was treated as missing

    @property
    def record(self) -> StatusRecord | None:
        """The record (made on access: a summary of 100,000 ObsIDs needs few of them)."""
        return _record(self.fields) if self.fields is not None else None


@dataclass(frozen=True)
class RunSummary:
    """Per-ObsID states of a whole manifest; the basis of `status`, `rerun` and exit codes."""

    states: tuple[ObsState, ...]
    config_hash: str = ""
    opens: int = 0  # record files opened to build it (core/statusindex.py)

    @classmethod
    def collect(cls, manifest: Manifest, paths: RunPaths, config_hash: str, use_index: bool = True,
                write_index: bool = True) -> "RunSummary":
        """States of every manifest row; `write_index=False` writes nothing (for `--dry-run`)."""
        snap = snapshot(paths, use_index, write_index)
        out = []
        records, bad, lcs = snap.records, snap.unreadable, snap.lc_present
        i_state, i_hash = _NAMES.index("state"), _NAMES.index("config_hash")
        for row in manifest.rows:
            oid = row.obsid.text
            fields = records.get(oid)
            if fields is None:
                state = MISSING
            else:  # effective_state() without making the record
                state = fields[i_state]
                if state in FINISHED and (fields[i_hash] != config_hash or (state == "done" and oid not in lcs)):
                    state = MISSING
            out.append(ObsState(oid, row.task, state, fields, row.target, bad.get(oid)))
        for oid, why in bad.items():
            log.debug("%s: unreadable status record, treated as missing (%s)", oid, why)
        return cls(tuple(out), config_hash, snap.opens)

    def counts(self) -> Counter:
        return Counter(s.state for s in self.states)

    def per_task(self) -> dict[int, Counter]:
        tasks: dict[int, Counter] = {}
        for (task, state), n in sorted(Counter((s.task, s.state) for s in self.states).items()):
            tasks.setdefault(task, Counter())[state] = n
        return tasks

    def per_target(self) -> dict[str, Counter]:
        targets: dict[str, Counter] = {}
        for (target, state), n in Counter((s.target, s.state) for s in self.states).items():
            targets.setdefault(target, Counter())[state] = n
        return targets

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

    def reason(self, s: ObsState) -> str | None:
        """Why this ObsID is not done (None when it is)."""
        if s.state == "done":
            return None
        if s.state == MISSING:
            return why_missing(s.record, s.unreadable, self.config_hash)
        rec = s.record
        assert rec is not None
        if s.state == "running":
            where = f"on {rec.host}" + (f" (Slurm {rec.slurm_job})" if rec.slurm_job else "")
            return f"running {where} since {rec.started}"
        if s.state == "no_data":
            return rec.error or "no data (no reason recorded)"
        return rec.error or f"{s.state} (no error recorded)"

    def to_json(self) -> dict:
        counts = self.counts()
        return {
            "counts": {k: counts.get(k, 0) for k in (*STATES, MISSING)},
            "complete": self.complete,
            "targets": {t: dict(c) for t, c in self.per_target().items()},
            "tasks": {str(t): dict(c) for t, c in self.per_task().items()},
            "obsids": [
                {
                    "obsid": s.obsid,
                    "task": s.task,
                    "target": s.target,
                    "state": s.state,
                    "reason": self.reason(s),
                    "error": s.record.error if s.record and s.state == "failed" else None,
                    "error_kind": s.record.error_kind if s.record and s.state == "failed" else None,
                    "seconds": s.record.seconds if s.record else None,
                    "slurm_job": s.record.slurm_job if s.record else None,
                    "unreadable": s.unreadable,
                }
                for s in self.states
            ],
        }


def format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in _ORDER if counts.get(k, 0) or k in ("done", "failed", MISSING))
