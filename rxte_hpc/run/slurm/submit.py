"""Executor: submit the run as Slurm job arrays (MaxArraySize chunks, throttle), a dependent gather, reruns.

What Slurm is asked, and why so little (docs/architecture.md#executors):
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

import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import RxteError, UsageError
from rxte_hpc.core.manifest import Manifest, check_run_dir, read_manifest
from rxte_hpc.core.paths import MAX_FOLDER_ENTRIES, RunPaths
from rxte_hpc.run.slurm.render import (
    OFFSET_VAR,
    ArrayChunk,
    _clip,
    RenderInputs,
    compress_indices,
    contiguous_chunks,
    render_array,
    render_gather,
    render_mpi,
    sparse_chunks,
    validate_slurm,
)
from rxte_hpc.core.status import FINISHED, RunSummary
from rxte_hpc.run.slurm.queue import (
    SlurmError, SlurmRefused, Submission, _now, _queued_tasks, _run, record_submission, slurm_failure,
)
from rxte_hpc.run.slurm.queue import read_jobs, scheduler_report, scheduler_states  # noqa: F401 - public names
from rxte_hpc.run.slurm.snapshot import Snapshot, new_snapshot, write_snapshot
from rxte_hpc.run.results import JobSubmission, SubmitResult

log = logging.getLogger(__name__)

#: Slurm's compiled-in default, used only by `--dry-run` when no controller answers.
DEFAULT_MAX_ARRAY_SIZE = 1001
_MAX_ARRAY_RE = re.compile(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", re.MULTILINE)
_MAX_JOBS_RE = re.compile(r"^\s*MaxJobCount\s*=\s*(\d+)\s*$", re.MULTILINE)
_JOB_ID_RE = re.compile(r"\d+")


@dataclass(frozen=True)
class PlannedCall:
    """An sbatch call before it is made (what `--dry-run` prints)."""

    kind: str
    argv: tuple[str, ...]
    chunk: ArrayChunk | None = None
    logs: Path | None = None


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
        raise SlurmRefused("`scontrol show config` did not report MaxArraySize")
    return int(m.group(1))


def parse_max_job_count(text: str) -> int | None:
    """MaxJobCount (jobs the controller holds at once, every array element counted) from `scontrol show config`."""
    m = _MAX_JOBS_RE.search(text)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Limits:
    """What the controller allows, from one `scontrol show config`, and where the figures came from."""

    max_array_size: int
    max_job_count: int | None
    source: str


def query_limits() -> Limits:
    proc = _run(["scontrol", "show", "config"])
    if proc.returncode != 0:
        raise slurm_failure("scontrol show config", proc.stderr)
    return Limits(parse_max_array_size(proc.stdout), parse_max_job_count(proc.stdout), "from scontrol")


def _limits(dry_run: bool) -> Limits:
    """The controller's limits; a dry run on a machine without Slurm assumes Slurm's defaults."""
    try:
        return query_limits()
    except SlurmError as exc:
        if not dry_run:
            raise
        return Limits(DEFAULT_MAX_ARRAY_SIZE, None, f"Slurm's default; scontrol did not answer: {exc}")


#: Characters of an `--array=` index list sbatch accepts: 22.05 refuses ~4,100 ("Pathname of a file, directory
#: or other parameter too long"; measured here: 4,065 accepted, 4,125 refused). A sparse rerun of a few hundred
#: scattered tasks reaches that.
MAX_ARRAY_SPEC = 3900


def cap_chunks(chunks: Sequence[ArrayChunk], limit: int = MAX_FOLDER_ENTRIES,
               max_spec: int = MAX_ARRAY_SPEC) -> list[ArrayChunk]:
    """Split arrays (same offset) so each has at most `limit` elements (its log folder stays under 1,000 files)
    and an index list sbatch accepts (at most `max_spec` characters)."""
    out = []

    def text(run: tuple[int, int]) -> int:
        return len(str(run[0])) if run[0] == run[1] else len(str(run[0])) + 1 + len(str(run[1]))

    for chunk in chunks:
        part: list[int] = []
        runs: list[tuple[int, int]] = []
        length = 0  # == len(compress_indices(part)), kept incrementally
        for index in chunk.indices:
            if runs and index == runs[-1][1] + 1:
                grown = length - text(runs[-1]) + text((runs[-1][0], index))
            else:
                grown = length + (1 if runs else 0) + len(str(index))
            if part and (len(part) >= limit or grown > max_spec):
                out.append(ArrayChunk(chunk.offset, tuple(part)))
                part, runs, length = [], [], 0
                grown = len(str(index))
            if runs and index == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], index)
            else:
                runs.append((index, index))
            part.append(index)
            length = grown
        if part:
            out.append(ArrayChunk(chunk.offset, tuple(part)))
    return out


def scale_notes(n_elements: int, n_arrays: int, throttle: int, max_jobs: int | None) -> list[str]:
    """What a big submission means for the queue: the throttle is per array; queued-job limits count elements."""
    notes = []
    if n_arrays > 1:
        notes.append(f"throttle {throttle} applies per array: up to {min(n_elements, throttle * n_arrays)} elements "
                     f"of {n_arrays} arrays may run at once")
    if max_jobs is not None and n_elements >= max_jobs:
        notes.append(f"warning: {n_elements} array elements but the controller's MaxJobCount is {max_jobs}: "
                     "sbatch will refuse the arrays that do not fit; raise tasks.obs_per_task")
    if n_elements > 1000:
        notes.append(f"{n_elements} elements count as {n_elements} jobs against per-user limits (MaxSubmitJobs, "
                     "see `sacctmgr show assoc user=$USER format=maxsubmit`); a refused sbatch names the limit")
    return notes


def _sbatch(argv: Sequence[str]) -> str:
    proc = _run(argv)
    if proc.returncode != 0:
        raise slurm_failure(shlex.join(argv), proc.stderr or proc.stdout)
    # --parsable prints "<id>" or "<id>;<cluster>"
    job_id = proc.stdout.strip().split(";")[0]
    if not _JOB_ID_RE.fullmatch(job_id):
        raise SlurmRefused(f"{shlex.join(argv)} printed {proc.stdout.strip()[:80]!r}, not a job id")
    return job_id


# ------------------------------------------------------------------ submit / rerun


def _check_backend_or_warn(config: Config, manifest: Manifest) -> None:
    """run.preflight before any sbatch: bands against the manifest's gain epochs always; the backend check only warns
    when slurm.setup lines may provide on the nodes what this shell lacks (e.g. `module load heasoft`)."""
    from rxte_hpc.extract import check_backend
    from rxte_hpc.run.preflight import check_manifest_bands

    check_manifest_bands(config, manifest)
    try:
        check_backend(config)
    except RxteError as exc:
        if not config.slurm.setup:
            raise
        log.warning("extractor not usable in this shell (%s); submitting anyway: slurm.setup may provide it", exc)


def _array_calls(kind: str, chunks: Sequence[ArrayChunk], throttle: int, script: Path,
                 paths: RunPaths) -> list[PlannedCall]:
    """One sbatch per chunk, each with its own log folder (`slurm/logs/<kind>-<time>-<n>/%A_%a.out`)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    calls = []
    for i, chunk in enumerate(chunks):
        logs = paths.slurm_array_logs(f"{kind}-{stamp}-{os.getpid()}-{i:03d}")
        argv = ("sbatch", "--parsable", chunk.array_option(throttle), f"--export=ALL,{OFFSET_VAR}={chunk.offset}",
                f"--output={logs}/%A_%a.out", str(script))
        calls.append(PlannedCall(kind, argv, chunk, logs))
    return calls


def _gather_argv(script: Path, after: Sequence[str]) -> tuple[str, ...]:
    return ("sbatch", "--parsable", f"--dependency=afterany:{':'.join(after)}", str(script))


def _planned(calls: Sequence[PlannedCall], gather: Path | None, gather_kind: str) -> tuple[JobSubmission, ...]:
    """The sbatch calls a dry run shows (job ids as placeholders)."""
    jobs = [_job(c.kind, None, c.argv, c.chunk) for c in calls]
    if gather is not None:
        jobs.append(JobSubmission(gather_kind, None, _gather_argv(
            gather, [f"<{call.kind} {i + 1} job id>" for i, call in enumerate(calls)])))
    return tuple(jobs)


def _record(paths: RunPaths, kind: str, job_id: str, argv: tuple[str, ...], snapshot: Snapshot,
            chunk: ArrayChunk | None = None, logs: Path | None = None, after: Sequence[str] = ()) -> JobSubmission:
    """Record one sbatch call in jobs.json as soon as it is made, and return what the result lists."""
    record_submission(paths, Submission(
        kind=kind, job_id=job_id, script=argv[-1], command=argv, submitted=_now(),
        array=chunk.spec() if chunk else None, offset=chunk.offset if chunk else None,
        tasks=chunk.tasks if chunk else (), depends_on=tuple(after), logs=str(logs) if logs else None,
        snapshot=str(snapshot.folder)))
    return _job(kind, job_id, argv, chunk)


def _job(kind: str, job_id: str | None, argv: tuple[str, ...], chunk: ArrayChunk | None) -> JobSubmission:
    if chunk is None:
        return JobSubmission(kind, job_id, argv)
    return JobSubmission(kind, job_id, argv, chunk.spec(), chunk.offset, chunk.tasks, compress_indices(chunk.tasks))


def _submit_arrays(paths: RunPaths, calls: Sequence[PlannedCall], gather_kind: str,
                   snapshot: Snapshot) -> tuple[JobSubmission, ...]:
    """sbatch every chunk, then the gather after all of them; each recorded in jobs.json as it is made.

    When an sbatch fails half-way, the error says which arrays were already submitted (they stay queued).
    """
    paths.slurm_logs_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    done: list[JobSubmission] = []
    try:
        for call in calls:
            assert call.chunk is not None
            if call.logs is not None:
                call.logs.mkdir(parents=True, exist_ok=True)
            job_id = _sbatch(call.argv)
            done.append(_record(paths, call.kind, job_id, call.argv, snapshot, call.chunk, call.logs))
        ids = [str(j.job_id) for j in done]
        argv = _gather_argv(snapshot.script("gather"), ids)
        done.append(_record(paths, gather_kind, _sbatch(argv), argv, snapshot, after=ids))
    except SlurmError as exc:
        if done:
            exc.message += (f"; already submitted and still queued: job(s) {', '.join(str(j.job_id) for j in done)} "
                            f"(listed in {paths.slurm_dir / 'jobs.json'})")
        raise
    return tuple(done)


def submit(config: Config, dry_run: bool = False, mpi: bool = False, python: str | None = None) -> SubmitResult:
    """`rxte-hpc submit`: plan if needed, snapshot the config, render the scripts, sbatch the array(s) and the
    dependent gather; returns the job ids (nothing is printed)."""
    validate_slurm(config)
    paths = RunPaths(config.run_dir)
    if mpi:
        return _submit_mpi(config, paths, python or sys.executable, dry_run)
    manifest = _manifest_for_submit(config, dry_run)
    limits = _limits(dry_run)
    chunks = cap_chunks(contiguous_chunks(manifest.n_tasks, min(limits.max_array_size, MAX_FOLDER_ENTRIES)))
    snapshot = new_snapshot(paths, "submit")
    inputs = RenderInputs(config.slurm, snapshot.config, config.run_dir, python or sys.executable)
    scripts = {"array": render_array(inputs, chunks), "gather": render_gather(inputs)}
    calls = _array_calls("array", chunks, config.slurm.throttle, snapshot.script("array"), paths)
    notes = (f"{manifest.n_tasks} tasks ({len(manifest.rows)} ObsIDs) as {len(chunks)} array(s); "
             f"MaxArraySize {limits.max_array_size} ({limits.source})",
             *scale_notes(manifest.n_tasks, len(chunks), config.slurm.throttle, limits.max_job_count))
    if dry_run:
        return SubmitResult("submit", True, _planned(calls, snapshot.script("gather"), "gather"), notes,
                            scripts=tuple((snapshot.script(k), t) for k, t in scripts.items()))
    _check_backend_or_warn(config, manifest)
    write_snapshot(snapshot, config, manifest.digest(), scripts)
    jobs = _submit_arrays(paths, calls, "gather", snapshot)
    watch = f"watch: rxte-hpc status {shlex.quote(str(config.path))} --scheduler   logs: {paths.slurm_logs_dir}"
    return SubmitResult("submit", False, jobs, notes, snapshot.folder, tail=(watch,))


def _manifest_for_submit(config: Config, dry_run: bool) -> Manifest:
    """The manifest; planned and written when absent (a dry run plans in memory and writes nothing)."""
    paths = RunPaths(config.run_dir)
    if paths.manifest.is_file():
        manifest = read_manifest(paths.manifest, write_cache=not dry_run)
        check_run_dir(config, manifest)
        return manifest
    if dry_run:
        from rxte_hpc.plan.planner import plan

        return plan(config)
    from rxte_hpc.plan.planner import ensure_manifest

    return ensure_manifest(config)


def _submit_mpi(config: Config, paths: RunPaths, python: str, dry_run: bool) -> SubmitResult:
    snapshot = new_snapshot(paths, "mpi")
    text = render_mpi(RenderInputs(config.slurm, snapshot.config, config.run_dir, python))
    argv = ("sbatch", "--parsable", str(snapshot.script("mpi")))
    if dry_run:
        return SubmitResult("mpi", True, (JobSubmission("mpi", None, argv),), scripts=((snapshot.script("mpi"), text),))
    manifest = _manifest_for_submit(config, dry_run=False)
    _check_backend_or_warn(config, manifest)
    write_snapshot(snapshot, config, manifest.digest(), {"mpi": text})
    paths.slurm_logs_dir.mkdir(parents=True, exist_ok=True)
    job = _record(paths, "mpi", _sbatch(argv), argv, snapshot)
    return SubmitResult("mpi", False, (job,), snapshot=snapshot.folder,
                        tail=(f"submitted MPI job {job.job_id}: {config.slurm.mpi_tasks} ranks, gathers at the end",))


_SHOWN_TASKS = 20


def _task_list(tasks: Sequence[int]) -> str:
    """`2, 6` for a few tasks, the compressed ranges (`0-4,17,40-42`) for many."""
    if len(tasks) <= _SHOWN_TASKS:
        return ", ".join(str(t) for t in tasks)
    return _clip(compress_indices(tasks), 160)


def rerun(config: Config, dry_run: bool = False, include_failed: bool = False,
          python: str | None = None) -> SubmitResult:
    """`rxte-hpc rerun`: resubmit only tasks whose ObsIDs are missing/interrupted (from the records) as sparse
    arrays, running a new snapshot of the config; returns what was submitted."""
    validate_slurm(config)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest, write_cache=not dry_run)
    check_run_dir(config, manifest)
    summary = RunSummary.collect(manifest, paths, config.hash(), write_index=not dry_run)  # --dry-run writes nothing
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
        return SubmitResult("rerun", dry_run, (), (
            f"nothing to rerun: no task has missing or interrupted ObsIDs that is not already queued{why}",))
    by_task: dict[int, list[str]] = {}
    chosen = set(tasks)
    for s in summary.states:
        if s.task in chosen and s.state not in FINISHED:
            by_task.setdefault(s.task, []).append(f"{s.obsid} ({s.state})")
    notes = [f"rerun {len(tasks)} task(s): {_task_list(tasks)}"]
    notes += [f"  task {task}: {', '.join(by_task.get(task, []))}" for task in tasks[:_SHOWN_TASKS]]
    if len(tasks) > _SHOWN_TASKS:
        notes.append(f"  ... and {len(tasks) - _SHOWN_TASKS} more task(s) (`status --tasks` lists every task)")
    limits = _limits(dry_run)
    chunks = cap_chunks(sparse_chunks(tasks, limits.max_array_size))
    snapshot = new_snapshot(paths, "rerun")
    inputs = RenderInputs(config.slurm, snapshot.config, config.run_dir, python or sys.executable)
    scripts = {"array": render_array(inputs, chunks), "gather": render_gather(inputs)}
    calls = _array_calls("rerun", chunks, config.slurm.throttle, snapshot.script("array"), paths)
    notes.append(f"as {len(chunks)} array(s); MaxArraySize {limits.max_array_size} ({limits.source})")
    notes += scale_notes(len(tasks), len(chunks), config.slurm.throttle, limits.max_job_count)
    if dry_run:
        return SubmitResult("rerun", True, _planned(calls, snapshot.script("gather"), "rerun-gather"), tuple(notes),
                            scripts=((snapshot.script("array"), scripts["array"]),))
    _check_backend_or_warn(config, manifest)
    write_snapshot(snapshot, config, manifest.digest(), scripts)
    return SubmitResult("rerun", False, _submit_arrays(paths, calls, "rerun-gather", snapshot), tuple(notes),
                        snapshot.folder)
