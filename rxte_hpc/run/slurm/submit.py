"""Executor: submit the run as Slurm job arrays (MaxArraySize chunks, throttle), a dependent gather, reruns.

What Slurm is asked, and why so little (LESSONS.md "Slurm arrays"):
- `scontrol show config` once per submission, for MaxArraySize: it caps the
  highest *index*, so big runs go as several arrays indexed from 0, each with
  an exported `RXTE_HPC_TASK_OFFSET`.
- `sbatch --parsable` per array and once for the gather, which depends on all
  arrays with `afterany` so it runs and reports even when elements failed.
- `squeue` at most once per `status --scheduler` or `rerun`, never `sacct`
  (it hammers the controller and is off where accounting is off).

What to rerun comes from the status records, never from the scheduler's
memory. Every submission is appended to `<run_dir>/slurm/jobs.json` (by atomic
rewrite) so later commands know this run's job ids and chunk offsets.
Every Slurm command is an argv list: no shell is involved.
"""
from __future__ import annotations

import fcntl
import json
import logging
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import RxteError, UsageError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import Manifest, read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.run.slurm.render import (
    OFFSET_VAR,
    ArrayChunk,
    RenderInputs,
    compress_indices,
    contiguous_chunks,
    render_array,
    render_gather,
    render_mpi,
    sparse_chunks,
    validate_slurm,
)
from rxte_hpc.core.status import MISSING, RunSummary

log = logging.getLogger(__name__)

#: Slurm's compiled-in default, used only by `--dry-run` when no controller answers.
DEFAULT_MAX_ARRAY_SIZE = 1001
_MAX_ARRAY_RE = re.compile(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", re.MULTILINE)
_JOB_ID_RE = re.compile(r"\d+")
_ELEMENT_RE = re.compile(r"(\d+)(?:_(\d+))?")
_TIMEOUT_S = 60


class SlurmError(UsageError):
    """A Slurm command is missing or refused: the user must fix the environment or the request."""


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

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "array": self.array,
            "offset": self.offset,
            "tasks": list(self.tasks),
            "depends_on": list(self.depends_on),
            "script": self.script,
            "command": list(self.command),
            "submitted": self.submitted,
        }


@dataclass(frozen=True)
class PlannedCall:
    """An sbatch call before it is made (what `--dry-run` prints)."""

    kind: str
    argv: tuple[str, ...]
    chunk: ArrayChunk | None = None


# ------------------------------------------------------------------ environment


def array_task_from_env(env: Mapping[str, str]) -> tuple[int, str]:
    """(task, "<array job>_<index>") of this array element: task = SLURM_ARRAY_TASK_ID + RXTE_HPC_TASK_OFFSET."""
    hint = "`work --slurm` runs inside an array job submitted by `rxte-hpc submit` (or sbatch); elsewhere use --task I"
    raw_index = env.get("SLURM_ARRAY_TASK_ID")
    raw_job = env.get("SLURM_ARRAY_JOB_ID")
    if raw_index is None or raw_job is None:
        raise UsageError(f"SLURM_ARRAY_TASK_ID/SLURM_ARRAY_JOB_ID are not set: {hint}")
    raw_offset = env.get(OFFSET_VAR, "0") or "0"
    values = {}
    for name, raw in (("SLURM_ARRAY_TASK_ID", raw_index), ("SLURM_ARRAY_JOB_ID", raw_job), (OFFSET_VAR, raw_offset)):
        if not raw.strip().isdigit():
            raise UsageError(f"{name}={raw!r} is not a non-negative whole number: {hint}")
        values[name] = int(raw)
    index = values["SLURM_ARRAY_TASK_ID"]
    return index + values[OFFSET_VAR], f"{values['SLURM_ARRAY_JOB_ID']}_{index}"


def parse_max_array_size(text: str) -> int:
    """MaxArraySize from `scontrol show config` output."""
    m = _MAX_ARRAY_RE.search(text)
    if not m:
        raise SlurmError("`scontrol show config` did not report MaxArraySize")
    return int(m.group(1))


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command; SlurmError when it is missing or does not answer."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(
            f"{argv[0]} not found: Slurm's client commands must be on PATH (or run locally: `rxte-hpc run CONFIG`)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{shlex.join(argv)} did not answer within {_TIMEOUT_S} s: is slurmctld up?") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no message)")


def query_max_array_size() -> int:
    proc = _run(["scontrol", "show", "config"])
    if proc.returncode != 0:
        raise SlurmError(f"scontrol show config failed: {_first_line(proc.stderr)}")
    return parse_max_array_size(proc.stdout)


def _max_array_size(dry_run: bool) -> tuple[int, str]:
    """MaxArraySize and where it came from; a dry run on a machine without Slurm assumes the default."""
    try:
        return query_max_array_size(), "from scontrol"
    except SlurmError as exc:
        if not dry_run:
            raise
        return DEFAULT_MAX_ARRAY_SIZE, f"Slurm's default; scontrol did not answer: {exc}"


def _sbatch(argv: Sequence[str]) -> str:
    proc = _run(argv)
    if proc.returncode != 0:
        raise SlurmError(f"{shlex.join(argv)} failed: {_first_line(proc.stderr or proc.stdout)}")
    # --parsable prints "<id>" or "<id>;<cluster>"
    job_id = proc.stdout.strip().split(";")[0]
    if not _JOB_ID_RE.fullmatch(job_id):
        raise SlurmError(f"{shlex.join(argv)} printed {proc.stdout.strip()!r}, not a job id")
    return job_id


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
        raise SlurmError(f"squeue failed: {_first_line(proc.stderr)}")
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


# ------------------------------------------------------------------ submit / rerun


def _check_backend_or_warn(config: Config) -> None:
    """The backend check; with setup lines the job may provide what this shell lacks, so only warn."""
    from rxte_hpc.extract import check_backend

    try:
        check_backend(config)
    except RxteError as exc:
        if not config.slurm.setup:
            raise
        log.warning("extractor not usable in this shell (%s); submitting anyway: slurm.setup may provide it", exc)


def _write_script(path: Path, text: str) -> None:
    write_atomic(path, text.encode())
    path.chmod(0o755)


def _array_calls(kind: str, chunks: Sequence[ArrayChunk], throttle: int, script: Path) -> list[PlannedCall]:
    return [
        PlannedCall(
            kind,
            ("sbatch", "--parsable", chunk.array_option(throttle), f"--export=ALL,{OFFSET_VAR}={chunk.offset}", str(script)),
            chunk,
        )
        for chunk in chunks
    ]


def _gather_argv(script: Path, after: Sequence[str]) -> tuple[str, ...]:
    return ("sbatch", "--parsable", f"--dependency=afterany:{':'.join(after)}", str(script))


def _print_dry_run(scripts: Sequence[tuple[Path, str]], calls: Sequence[PlannedCall], gather: Path | None) -> None:
    for path, text in scripts:
        print(f"# ---- {path} (not written: dry run)")
        print(text, end="" if text.endswith("\n") else "\n")
    print("# ---- sbatch commands (not run: dry run)")
    for call in calls:
        print(shlex.join(call.argv))
    if gather is not None:
        print(shlex.join(_gather_argv(gather, [f"<{call.kind} {i + 1} job id>" for i, call in enumerate(calls)])))


def _submit_arrays(
    paths: RunPaths,
    calls: Sequence[PlannedCall],
    gather_script: Path,
    gather_kind: str,
) -> list[Submission]:
    """sbatch every chunk, then the gather after all of them; each submission recorded as it happens."""
    paths.slurm_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    done: list[Submission] = []
    for call in calls:
        assert call.chunk is not None
        job_id = _sbatch(call.argv)
        sub = Submission(
            kind=call.kind,
            job_id=job_id,
            script=call.argv[-1],
            command=call.argv,
            submitted=_now(),
            array=call.chunk.spec(),
            offset=call.chunk.offset,
            tasks=call.chunk.tasks,
        )
        record_submission(paths, sub)
        done.append(sub)
        print(f"submitted array {job_id}_[{call.chunk.spec()}] (offset {call.chunk.offset}): tasks {compress_indices(call.chunk.tasks)}")
    ids = [s.job_id for s in done]
    argv = _gather_argv(gather_script, ids)
    job_id = _sbatch(argv)
    sub = Submission(gather_kind, job_id, str(gather_script), argv, _now(), depends_on=tuple(ids))
    record_submission(paths, sub)
    print(f"submitted gather {job_id} after {', '.join(ids)} (afterany)")
    return [*done, sub]


def submit(config: Config, dry_run: bool = False, mpi: bool = False, python: str | None = None) -> int:
    """`rxte-hpc submit`: plan if needed, render the scripts, sbatch the array(s) and the dependent gather."""
    validate_slurm(config)
    paths = RunPaths(config.run_dir)
    inputs = RenderInputs.from_config(config, python or sys.executable)
    if mpi:
        return _submit_mpi(config, paths, inputs, dry_run)
    manifest = _manifest_for_submit(config, dry_run)
    max_array, source = _max_array_size(dry_run)
    chunks = contiguous_chunks(manifest.n_tasks, max_array)
    array_script, gather_script = paths.slurm_dir / "array.sbatch", paths.slurm_dir / "gather.sbatch"
    array_text, gather_text = render_array(inputs, chunks), render_gather(inputs)
    calls = _array_calls("array", chunks, config.slurm.throttle, array_script)
    print(f"{manifest.n_tasks} tasks ({len(manifest.rows)} ObsIDs) as {len(chunks)} array(s); MaxArraySize {max_array} ({source})")
    if dry_run:
        _print_dry_run([(array_script, array_text), (gather_script, gather_text)], calls, gather_script)
        return 0
    _check_backend_or_warn(config)
    _write_script(array_script, array_text)
    _write_script(gather_script, gather_text)
    _submit_arrays(paths, calls, gather_script, "gather")
    print(f"watch: rxte-hpc status {shlex.quote(str(config.path))} --scheduler   logs: {paths.slurm_dir / 'logs'}")
    return 0


def _manifest_for_submit(config: Config, dry_run: bool) -> Manifest:
    """The manifest; planned and written when absent (a dry run plans in memory and writes nothing)."""
    paths = RunPaths(config.run_dir)
    if paths.manifest.is_file():
        return read_manifest(paths.manifest)
    if dry_run:
        from rxte_hpc.plan.planner import plan

        return plan(config)
    from rxte_hpc.plan.planner import ensure_manifest

    return ensure_manifest(config)


def _submit_mpi(config: Config, paths: RunPaths, inputs: RenderInputs, dry_run: bool) -> int:
    script = paths.slurm_dir / "mpi.sbatch"
    text = render_mpi(inputs)
    argv = ("sbatch", "--parsable", str(script))
    if dry_run:
        _print_dry_run([(script, text)], [PlannedCall("mpi", argv)], None)
        return 0
    _manifest_for_submit(config, dry_run=False)
    _check_backend_or_warn(config)
    _write_script(script, text)
    paths.slurm_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
    job_id = _sbatch(argv)
    record_submission(paths, Submission("mpi", job_id, str(script), argv, _now()))
    print(f"submitted MPI job {job_id}: {config.slurm.mpi_tasks} ranks, gathers at the end")
    return 0


def rerun(config: Config, dry_run: bool = False, include_failed: bool = False, python: str | None = None) -> int:
    """`rxte-hpc rerun`: resubmit only tasks whose ObsIDs are missing/interrupted (from the records) as sparse arrays."""
    validate_slurm(config)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest)
    summary = RunSummary.collect(manifest, paths, config.hash())
    wanted = summary.tasks_to_rerun(include_failed)
    queued = _queued_tasks(paths) if wanted else set()
    if queued & set(wanted):
        log.warning(
            "tasks %s are still pending/running in Slurm: not resubmitted (rerun again once they end)",
            compress_indices(queued & set(wanted)),
        )
    tasks = [t for t in wanted if t not in queued]
    if not tasks:
        why = "" if wanted else (
            "" if include_failed or not summary.with_state("failed") else " (data failures need --include-failed)"
        )
        print(f"nothing to rerun: no task has missing or interrupted ObsIDs that is not already queued{why}")
        return 0
    by_task: dict[int, list[str]] = {}
    for s in summary.states:
        if s.task in tasks and s.state not in ("done", "no_data"):
            by_task.setdefault(s.task, []).append(f"{s.obsid} ({s.state if s.state != MISSING else 'missing'})")
    print(f"rerun {len(tasks)} task(s): {', '.join(str(t) for t in tasks)}")
    for task in tasks:
        print(f"  task {task}: {', '.join(by_task.get(task, []))}")
    max_array, source = _max_array_size(dry_run)
    chunks = sparse_chunks(tasks, max_array)
    inputs = RenderInputs.from_config(config, python or sys.executable)
    array_script, gather_script = paths.slurm_dir / "rerun.sbatch", paths.slurm_dir / "gather.sbatch"
    array_text, gather_text = render_array(inputs, chunks), render_gather(inputs)
    calls = _array_calls("rerun", chunks, config.slurm.throttle, array_script)
    print(f"as {len(chunks)} array(s); MaxArraySize {max_array} ({source})")
    if dry_run:
        _print_dry_run([(array_script, array_text)], calls, gather_script)
        return 0
    _write_script(array_script, array_text)
    _write_script(gather_script, gather_text)
    _submit_arrays(paths, calls, gather_script, "rerun-gather")
    return 0
