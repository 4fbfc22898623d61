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
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import Manifest, read_manifest
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
from rxte_hpc.core.status import MISSING, RunSummary
from rxte_hpc.run.slurm.queue import SlurmError, Submission, _first_line, _now, _queued_tasks, _run, record_submission
from rxte_hpc.run.slurm.queue import read_jobs, scheduler_report, scheduler_states  # noqa: F401 - public names

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
        raise SlurmError("`scontrol show config` did not report MaxArraySize")
    return int(m.group(1))


def parse_max_job_count(text: str) -> int | None:
    """MaxJobCount (jobs the controller holds at once, every array element counted) from `scontrol show config`."""
    m = _MAX_JOBS_RE.search(text)
    return int(m.group(1)) if m else None


_LIMITS: dict[str, int | None] = {}


def query_max_array_size() -> int:
    proc = _run(["scontrol", "show", "config"])
    if proc.returncode != 0:
        raise SlurmError(f"scontrol show config failed: {_first_line(proc.stderr)}")
    _LIMITS["MaxJobCount"] = parse_max_job_count(proc.stdout)
    return parse_max_array_size(proc.stdout)


def _max_array_size(dry_run: bool) -> tuple[int, str]:
    """MaxArraySize and where it came from; a dry run on a machine without Slurm assumes the default."""
    _LIMITS.clear()
    try:
        return query_max_array_size(), "from scontrol"
    except SlurmError as exc:
        if not dry_run:
            raise
        return DEFAULT_MAX_ARRAY_SIZE, f"Slurm's default; scontrol did not answer: {exc}"


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


def scale_notes(n_elements: int, n_arrays: int, throttle: int) -> list[str]:
    """What a big submission means for the queue: the throttle is per array; queued-job limits count elements."""
    notes = []
    if n_arrays > 1:
        notes.append(f"throttle {throttle} applies per array: up to {min(n_elements, throttle * n_arrays)} elements "
                     f"of {n_arrays} arrays may run at once")
    max_jobs = _LIMITS.get("MaxJobCount")
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
        raise SlurmError(f"{shlex.join(argv)} failed: {_first_line(proc.stderr or proc.stdout)}")
    # --parsable prints "<id>" or "<id>;<cluster>"
    job_id = proc.stdout.strip().split(";")[0]
    if not _JOB_ID_RE.fullmatch(job_id):
        raise SlurmError(f"{shlex.join(argv)} printed {proc.stdout.strip()!r}, not a job id")
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


def _write_script(path: Path, text: str) -> None:
    write_atomic(path, text.encode())
    path.chmod(0o755)


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
    paths.slurm_logs_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    done: list[Submission] = []
    quiet = len(calls) > 20
    for call in calls:
        assert call.chunk is not None
        if call.logs is not None:
            call.logs.mkdir(parents=True, exist_ok=True)
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
            logs=str(call.logs) if call.logs is not None else None,
        )
        record_submission(paths, sub)
        done.append(sub)
        if not quiet:
            print(f"submitted array {job_id}_[{call.chunk.spec()}] (offset {call.chunk.offset}): "
                  f"tasks {compress_indices(call.chunk.tasks)}")
    if quiet:
        print(f"submitted {len(done)} arrays {done[0].job_id}..{done[-1].job_id}: "
              f"{sum(len(s.tasks) for s in done)} elements (jobs.json lists each)")
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
    chunks = cap_chunks(contiguous_chunks(manifest.n_tasks, min(max_array, MAX_FOLDER_ENTRIES)))
    array_script, gather_script = paths.slurm_dir / "array.sbatch", paths.slurm_dir / "gather.sbatch"
    array_text, gather_text = render_array(inputs, chunks), render_gather(inputs)
    calls = _array_calls("array", chunks, config.slurm.throttle, array_script, paths)
    print(f"{manifest.n_tasks} tasks ({len(manifest.rows)} ObsIDs) as {len(chunks)} array(s); "
          f"MaxArraySize {max_array} ({source})")
    for note in scale_notes(manifest.n_tasks, len(chunks), config.slurm.throttle):
        print(note)
    if dry_run:
        _print_dry_run([(array_script, array_text), (gather_script, gather_text)], calls, gather_script)
        return 0
    _check_backend_or_warn(config, manifest)
    _write_script(array_script, array_text)
    _write_script(gather_script, gather_text)
    _submit_arrays(paths, calls, gather_script, "gather")
    print(f"watch: rxte-hpc status {shlex.quote(str(config.path))} --scheduler   logs: {paths.slurm_dir / 'logs'}")
    return 0


def _manifest_for_submit(config: Config, dry_run: bool) -> Manifest:
    """The manifest; planned and written when absent (a dry run plans in memory and writes nothing)."""
    paths = RunPaths(config.run_dir)
    if paths.manifest.is_file():
        return read_manifest(paths.manifest, write_cache=not dry_run)
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
    manifest = _manifest_for_submit(config, dry_run=False)
    _check_backend_or_warn(config, manifest)
    _write_script(script, text)
    paths.slurm_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
    job_id = _sbatch(argv)
    record_submission(paths, Submission("mpi", job_id, str(script), argv, _now()))
    print(f"submitted MPI job {job_id}: {config.slurm.mpi_tasks} ranks, gathers at the end")
    return 0


_SHOWN_TASKS = 20


def _task_list(tasks: Sequence[int]) -> str:
    """`2, 6` for a few tasks, the compressed ranges (`0-4,17,40-42`) for many."""
    if len(tasks) <= _SHOWN_TASKS:
        return ", ".join(str(t) for t in tasks)
    return _clip(compress_indices(tasks), 160)


def rerun(config: Config, dry_run: bool = False, include_failed: bool = False, python: str | None = None) -> int:
    """`rxte-hpc rerun`: resubmit only tasks whose ObsIDs are missing/interrupted (from the records) as sparse arrays."""
    validate_slurm(config)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest, write_cache=not dry_run)
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
        print(f"nothing to rerun: no task has missing or interrupted ObsIDs that is not already queued{why}")
        return 0
    by_task: dict[int, list[str]] = {}
    chosen = set(tasks)
    for s in summary.states:
        if s.task in chosen and s.state not in ("done", "no_data"):
            by_task.setdefault(s.task, []).append(f"{s.obsid} ({s.state if s.state != MISSING else 'missing'})")
    print(f"rerun {len(tasks)} task(s): {_task_list(tasks)}")
    for task in tasks[:_SHOWN_TASKS]:
        print(f"  task {task}: {', '.join(by_task.get(task, []))}")
    if len(tasks) > _SHOWN_TASKS:
        print(f"  ... and {len(tasks) - _SHOWN_TASKS} more task(s) (`status --tasks` lists every task)")
    max_array, source = _max_array_size(dry_run)
    chunks = cap_chunks(sparse_chunks(tasks, max_array))
    inputs = RenderInputs.from_config(config, python or sys.executable)
    array_script, gather_script = paths.slurm_dir / "rerun.sbatch", paths.slurm_dir / "gather.sbatch"
    array_text, gather_text = render_array(inputs, chunks), render_gather(inputs)
    calls = _array_calls("rerun", chunks, config.slurm.throttle, array_script, paths)
    print(f"as {len(chunks)} array(s); MaxArraySize {max_array} ({source})")
    for note in scale_notes(len(tasks), len(chunks), config.slurm.throttle):
        print(note)
    if dry_run:
        _print_dry_run([(array_script, array_text)], calls, gather_script)
        return 0
    _check_backend_or_warn(config, manifest)
    _write_script(array_script, array_text)
    _write_script(gather_script, gather_text)
    _submit_arrays(paths, calls, gather_script, "rerun-gather")
    return 0
