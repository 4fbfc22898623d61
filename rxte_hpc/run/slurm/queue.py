"""The scheduler's side of a run: Slurm client calls, `<run_dir>/slurm/jobs.json`, and the queue view.

`squeue` at most once per `status --scheduler` or `rerun`, never `sacct` (it
hammers the controller and is off where accounting is off). Every submission
is appended to jobs.json (by atomic rewrite, under a lock) so later commands
know this run's job ids, chunk offsets and log folders.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import RxteError, SiteError, UsageError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import MISSING, RunSummary

log = logging.getLogger(__name__)

_ELEMENT_RE = re.compile(r"(\d+)(?:_(\d+))?")
_TIMEOUT_S = 60


class SlurmError(RxteError):
    """A Slurm client command failed; the subclass says whose problem it is (and so the exit code)."""


class SlurmRefused(SlurmError, UsageError):
    """Slurm answered no (a bad option, partition or limit) or is not installed here: the user must change
    the request or the environment (exit 2)."""


class SlurmUnreachable(SlurmError, SiteError):
    """The controller did not answer (down, unreachable, munge not running): a site problem, worth retrying
    later (exit 1); the same request may well succeed then."""


#: What Slurm's clients print when they cannot reach the controller (slurm_strerror texts of 22.05, as
#: `sbatch`, `squeue` and `scontrol` print them when slurmctld is down or munge refuses).
_UNREACHABLE = re.compile(
    r"unable to contact slurm controller|connect(ion)? (failure|refused)|socket timed out|"
    r"zero bytes were transmitted|communication connection failure|transport endpoint|no route to host|"
    r"temporarily unable to accept|munge|authentication credential|slurm_load_\w+ error",
    re.IGNORECASE,
)


def slurm_failure(what: str, text: str) -> SlurmError:
    """The error for a Slurm command that exited non-zero: unreachable (site) or refused (usage), by its message."""
    line = _first_line(text)
    if _UNREACHABLE.search(text):
        return SlurmUnreachable(f"{what} failed: the Slurm controller did not answer ({line}); try again later "
                                "or ask the site whether slurmctld is up")
    return SlurmRefused(f"{what} failed: {line}")


@dataclass(frozen=True)
class Submission:
    """One sbatch call as recorded in jobs.json."""

    kind: str  # array | gather | mpi | rerun | rerun-gather
    job_id: str
    script: str
    command: tuple[str, ...]
    submitted: str
    array: str | None = None  # index spec without throttle: what squeue/scancel accept
    offset: int | None = None
    tasks: tuple[int, ...] = ()
    depends_on: tuple[str, ...] = ()
    logs: str | None = None  # folder of this array's %A_%a.out logs (one folder per array: <= 1,000 entries)
    snapshot: str | None = None  # the submission's folder: the config copy and the scripts its jobs run

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "array": self.array,
            "offset": self.offset,
            "tasks": list(self.tasks),
            "depends_on": list(self.depends_on),
            "logs": self.logs,
            "snapshot": self.snapshot,
            "script": self.script,
            "command": list(self.command),
            "submitted": self.submitted,
        }


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command; SlurmError when it is missing or does not answer."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmRefused(
            f"{argv[0]} not found: Slurm's client commands must be on PATH (or run locally: `rxte-hpc run CONFIG`)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"{shlex.join(argv)} did not answer within {_TIMEOUT_S} s: is slurmctld up?") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no message)")


# ------------------------------------------------------------------ jobs.json


def jobs_file(paths: RunPaths) -> Path:
    return paths.slurm_dir / "jobs.json"


def read_jobs(paths: RunPaths) -> list[dict[str, Any]]:
    """Every submission recorded for this run (empty when there is no jobs.json)."""
    path = jobs_file(paths)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable job record ({exc}); move it aside to start a fresh record") from exc
    subs = data.get("submissions") if isinstance(data, dict) else None
    if not isinstance(subs, list):
        raise UsageError(f"{path}: not a job record (no 'submissions' list)")
    return subs


def record_submission(paths: RunPaths, sub: Submission) -> None:
    """Append by atomic rewrite under a lock: a reader never sees half a file, and two
    `submit`/`rerun` calls at the same moment cannot drop each other's entry."""
    path = jobs_file(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".jobs.json.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subs = read_jobs(paths)
        subs.append(sub.to_json())
        write_atomic(path, (json.dumps({"submissions": subs}, indent=1) + "\n").encode())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ scheduler view


def _squeue(job_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(element id, state) for every queued element of these jobs; one squeue call."""
    proc = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"])
    if proc.returncode != 0:
        # Slurm answers "Invalid job id specified" once every listed job has left its memory.
        if "invalid job id" in proc.stderr.lower():
            return []
        raise slurm_failure("squeue", proc.stderr)
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((parts[0], parts[1]))
    return out


def _element_task(element: str, offsets: Mapping[str, int]) -> int | None:
    """The task an element id like `12_3` runs (None for a non-array job or an unknown job)."""
    m = _ELEMENT_RE.fullmatch(element)
    if not m or m.group(2) is None or m.group(1) not in offsets:
        return None
    return int(m.group(2)) + offsets[m.group(1)]


def scheduler_states(config: Config) -> dict[str, Any]:
    """Pending/running elements of this run's recorded jobs (one squeue call); never raises for a missing Slurm."""
    paths = RunPaths(config.run_dir)
    jobs = read_jobs(paths)
    if not jobs:
        return {"available": None, "jobs": 0, "summary": f"no Slurm jobs recorded for this run ({jobs_file(paths)} absent)"}
    ids = [str(j["job_id"]) for j in jobs]
    offsets = {str(j["job_id"]): int(j["offset"]) for j in jobs if j.get("offset") is not None}
    kinds = {str(j["job_id"]): j.get("kind") for j in jobs}
    try:
        queued = _squeue(ids)
    except SlurmError as exc:
        return {"available": False, "jobs": len(ids), "summary": f"cannot ask Slurm ({exc})"}
    elements = []
    for element, state in queued:
        elements.append(
            {
                "id": element,
                "state": state,
                "kind": kinds.get(element.split("_")[0]),
                "task": _element_task(element, offsets),
            }
        )
    pending = sum(1 for e in elements if e["state"] == "PENDING")
    running = sum(1 for e in elements if e["state"] in ("RUNNING", "COMPLETING", "CONFIGURING"))
    other = len(elements) - pending - running
    if elements:
        summary = f"{pending} pending, {running} running" + (f", {other} other" if other else "")
        summary += f" (elements of {len(ids)} recorded job(s))"
    else:
        summary = f"nothing of this run in the queue ({len(ids)} recorded job(s) have ended)"
    return {
        "available": True,
        "jobs": len(ids),
        "pending": pending,
        "running": running,
        "elements": elements,
        "summary": summary,
    }


#: Elements whose log tails `status --scheduler` reads (each is an open).
_TAILS = 20
_TAIL_LINES = 6


def _tail(path: Path, lines: int = _TAIL_LINES) -> list[str]:
    """The last lines of a batch log (at most 8 KB read), or why there are none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ["(no log: the element never started, e.g. cancelled while pending)"]
    except OSError as exc:
        return [f"(log unreadable: {exc.strerror or exc})"]
    return [line.rstrip() for line in text.splitlines()[-lines:]] or ["(empty log)"]


def _element_log(paths: RunPaths, job: Mapping[str, Any], index: int) -> Path:
    folder = Path(job["logs"]) if job.get("logs") else paths.slurm_logs_dir
    return folder / f"{job['job_id']}_{index}.out"


def scheduler_report(config: Config, summary: RunSummary) -> dict[str, Any]:
    """`status --scheduler`: the queue, plus what it says about the records (one squeue call).

    - `stale_running`: ObsIDs whose record says `running` for a Slurm element that
      is no longer queued: the worker died without recording (node failure, OOM
      kill, SIGKILL at the time limit); `rerun` resubmits their tasks.
    - `ended_without_records`: the last element submitted for a task has left
      the queue although some of the task's ObsIDs have no record at all; the
      tail of its batch log says why (a setup line that failed, a missing module).
    """
    info = scheduler_states(config)
    if info.get("available") is not True:
        return info
    paths = RunPaths(config.run_dir)
    jobs = read_jobs(paths)
    queued = {e["id"] for e in info["elements"]}
    queued_jobs = {e["id"].split("_")[0] for e in info["elements"]}
    recorded = {str(j["job_id"]) for j in jobs}
    stale = []
    for st in summary.states:
        if st.state != "running":
            continue
        rec = st.record
        element = rec.slurm_job if rec is not None else None
        if not element or element.split("_")[0] not in recorded:
            continue  # not one of this run's Slurm jobs (a local run, or jobs.json was reset): cannot judge
        if element not in queued and not ("_" not in element and element in queued_jobs):
            stale.append(st.obsid)
    last: dict[int, tuple[Mapping[str, Any], int]] = {}
    for j in jobs:
        if j.get("kind") in ("array", "rerun") and j.get("offset") is not None:
            for task in j.get("tasks") or ():
                last[int(task)] = (j, int(task) - int(j["offset"]))
    lacking: dict[int, int] = {}
    for st in summary.states:
        if st.state == MISSING and st.fields is None and st.unreadable is None:
            lacking[st.task] = lacking.get(st.task, 0) + 1
    ended: list[dict[str, Any]] = []
    for task in sorted(lacking):
        if task not in last:
            continue
        job, index = last[task]
        element = f"{job['job_id']}_{index}"
        if element in queued:
            continue
        log_path = _element_log(paths, job, index)
        entry: dict[str, Any] = {"task": task, "element": element, "missing": lacking[task], "log": str(log_path)}
        if len(ended) < _TAILS:
            entry["tail"] = _tail(log_path)
        ended.append(entry)
    info = dict(info)
    info["stale_running"] = stale
    info["ended_without_records"] = ended
    extra = []
    if stale:
        extra.append(f"{len(stale)} stale running record(s)")
    if ended:
        extra.append(f"{len(ended)} element(s) ended without records")
    if extra:
        info["summary"] = f"{info['summary']}; " + ", ".join(extra)
    return info


def _queued_tasks(paths: RunPaths) -> set[int]:
    """Tasks whose elements Slurm still holds (pending or running): not lost, so not rerun."""
    jobs = read_jobs(paths)
    offsets = {str(j["job_id"]): int(j["offset"]) for j in jobs if j.get("offset") is not None}
    if not offsets:
        return set()
    try:
        queued = _squeue(list(offsets))
    except SlurmError as exc:
        log.warning("cannot ask squeue which elements are still queued (%s); rerunning from the records alone", exc)
        return set()
    return {t for element, _ in queued if (t := _element_task(element, offsets)) is not None}
