"""Executor: the manifest's ObsIDs over MPI `COMM_WORLD` ranks (`work CONFIG --mpi`), dynamic by default.

Only `COMM_WORLD` rank/size and point-to-point messages are used: `Spawn` and
`MPIPoolExecutor` are disabled or hang on many clusters (docs/architecture.md#executors), and
a collective after work has started would hang every rank when one dies. The
one collective is an `allgather` at startup, before any ObsID, so that a
configuration problem on any rank stops every rank with the same message.

Dynamic schedule: rank 0 runs a dispatcher in a helper thread that hands
ObsIDs out longest exposure first to whichever rank asks; every rank, rank 0
included, extracts in its main thread (where signals arrive, so the worker's
SIGTERM handling and scratch cleanup keep working). Workers send heartbeats
from a helper thread; a rank that stops talking is declared dead after a
bounded silence, the others finish without it, and at the end rank 0 records
its ObsID in flight as `failed` (site; `rerun` redoes it) and ends the job
with MPI_Abort (MPI_Finalize would wait for the lost rank forever). Without MPI
thread support rank 0 serves requests between its own ObsIDs and silences are
judged from ObsID durations instead.

Which lost ranks are survived depends on the launcher (measured with MPICH 5.0,
tests/run/test_mpi.py):
- a rank that hangs or is stopped (SIGSTOP, a dead filesystem): every launcher;
- a rank killed outright (SIGKILL, the OOM killer) under `srun --mpi=pmi2`
  (what `submit --mpi` runs) with Slurm's default `--kill-on-bad-exit=0`;
- not under MPICH's `mpiexec` (hydra): it SIGKILLs every rank when one dies
  by a signal, `-disable-auto-cleanup` included (that option only helps for a
  rank that exits with a status). Nothing can be recorded then; the records
  of that job stay `running` and a later `run`/`rerun` redoes them.

Static schedule: each rank runs the manifest tasks `t % size == rank`, exactly
what array elements `t` would run, and only reports to rank 0 when it is done.

Timing can be tuned with RXTE_HPC_MPI_HEARTBEAT_S (default 5) and
RXTE_HPC_MPI_DEAD_AFTER_S (default 120: a rank silent that long is dead).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any, Callable, Iterator, Mapping, Sequence

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import Interrupted, RxteError, UsageError
from rxte_hpc.extract import ExtractContext, Extractor, make_extractor
from rxte_hpc.core.manifest import Manifest, ManifestRow, read_manifest
from rxte_hpc.run.mpi.protocol import (
    TAG_REQUEST, TAG_WORK, Channel, Dispatcher, Heartbeat, RankReport, RankZeroSilent, Startup, Timing,
)
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.run.preflight import Checked, preflight
from rxte_hpc.run.results import MpiResult
from rxte_hpc.run.signals import interrupt_on_signals
from rxte_hpc.core.status import RunSummary, is_done, read_record, write_record
from rxte_hpc.run.worker import TaskRunner, WorkerIdentity

log = logging.getLogger(__name__)

MPI_MISSING = "--mpi needs mpi4py: pip install 'rxte-hpc[mpi]' (the `mpi` extra installs mpi4py and an MPI)"
#: Variables a launcher sets to the number of processes it started (first found wins), then Slurm's.
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
SLURM_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
SCHEDULES = ("dynamic", "static")

ExtractorFactory = Callable[[ExtractContext], Extractor]


def size_claimed_by_launcher(env: Mapping[str, str]) -> tuple[str, int] | None:
    """(variable, value) saying how many processes were started, or None when nothing says."""
    for group in (LAUNCHER_SIZE_VARS, SLURM_SIZE_VARS):
        for var in group:
            text = env.get(var, "").strip()
            if text.isdigit():
                return var, int(text)
    return None


def check_not_independent(size: int, env: Mapping[str, str]) -> None:
    """UsageError when this is one of N independent size-1 processes (plain `srun`, no PMI).

    Each such process believes it is rank 0 of 1 and would extract the whole
    manifest, N times over, racing on the same records.
    """
    claimed = size_claimed_by_launcher(env)
    if size == 1 and claimed is not None and claimed[1] > 1:
        var, n = claimed
        raise UsageError(
            f"MPI says this is the only process (size 1) but {var}={n}: the launcher started {n} independent "
            "processes that all claim rank 0. Start MPI with `srun --mpi=pmi2 ...` (or `mpiexec -n N ...`), "
            "or check that mpi4py uses the same MPI as the launcher (`python -m mpi4py --mpi-library`)."
        )


def _import_mpi() -> Any:
    """mpi4py's MPI module, initialised with thread support when nobody chose a level yet."""
    try:
        import mpi4py
    except ImportError:
        raise UsageError(MPI_MISSING) from None
    # THREAD_MULTIPLE lets the dispatcher and heartbeats run in helper threads while the
    # main thread extracts. A user may lower it (MPI4PY_RC_THREAD_LEVEL) on an MPI where
    # threads are slow or broken; the executor then works without helper threads.
    if "MPI4PY_RC_THREAD_LEVEL" not in os.environ:
        mpi4py.rc.thread_level = "multiple"
    try:
        from mpi4py import MPI
    except ImportError as exc:  # mpi4py present but its MPI library is not
        raise UsageError(f"{MPI_MISSING}; importing mpi4py.MPI failed: {exc}") from None
    return MPI


def _ordered(rows: Sequence[ManifestRow]) -> list[ManifestRow]:
    """Longest exposure first (unknown exposures last), so the tail of the run is short ObsIDs."""

    def key(row: ManifestRow) -> tuple[float, int]:
        weight = row.exposure_s if math.isfinite(row.exposure_s) and row.exposure_s > 0 else 0.0
        return (-weight, row.index)

    return sorted(rows, key=key)


def _counts_of(runners: Sequence[TaskRunner], extra: Mapping[str, int] | None = None) -> tuple[tuple[str, int], ...]:
    total: dict[str, int] = dict(extra or {})
    for r in runners:
        for k, n in r.counts.items():
            total[k] = total.get(k, 0) + n
    return tuple(sorted(total.items()))


class _Tally:
    """One rank's running totals over its TaskRunners (static runs open one per task)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.runners: list[TaskRunner] = []
        self.longest_s = 0.0
        self.t0 = time.monotonic()

    def note(self, seconds: float | None) -> None:
        self.longest_s = max(self.longest_s, seconds or 0.0)

    def report(self, state: str = "working") -> RankReport:
        counts = _counts_of(self.runners)
        return RankReport(
            rank=self.rank,
            host=socket.gethostname(),
            pid=os.getpid(),
            obsids=sum(n for k, n in counts if k != "skipped"),
            busy_s=round(sum(r.busy_seconds for r in self.runners), 3),
            longest_s=round(self.longest_s, 3),
            counts=counts,
            state=state,
        )


# ==================================================================== entry point
def run_mpi(
    config: Config,
    *,
    force: bool = False,
    schedule: str = "dynamic",
    gather: bool = False,
    extractor_factory: ExtractorFactory | None = None,
    env: Mapping[str, str] | None = None,
    on_finish: Callable[[MpiResult], None] | None = None,
) -> MpiResult:
    """`work CONFIG --mpi`: this rank's share of the manifest; rank 0 also reports (and gathers).

    Returns this rank's result; its exit code is 0 when every ObsID this rank
    knows of is done or no_data (on rank 0: the whole manifest, and the gather
    when asked), 1 otherwise. Rank 0's result (rank table, gather lines) goes
    to `on_finish` before it returns, because when ranks were lost rank 0 then
    ends the job with MPI_Abort instead of returning. `extractor_factory` lets
    benchmarks run a stand-in extractor under mpiexec.
    """
    if schedule not in SCHEDULES:
        raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    env = os.environ if env is None else env
    factory = extractor_factory or make_extractor
    timing = Timing.from_env(env)
    MPI = _import_mpi()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    check_not_independent(size, env)
    threaded = MPI.Query_thread() >= MPI.THREAD_SERIALIZED
    t0 = time.monotonic()

    manifest: Manifest | None = None
    checked: Checked | None = None
    error: str | None = None
    try:
        manifest, checked = _prepare(config, factory, gather)
    except RxteError as exc:
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, UsageError) else str(exc)
        if size == 1:
            raise
    digest = manifest.digest() if manifest is not None else None
    startups: list[Startup] = [Startup(rank, socket.gethostname(), os.getpid(), threaded, error, digest)]
    if size > 1:
        # The one collective, before any work: every rank learns whether all can start.
        startups = comm.allgather(startups[0])
    problems = [s for s in startups if s.error]
    if not problems and len({s.manifest_digest for s in startups}) > 1:
        # Rows travel as positions in the manifest: every rank must read the same one.
        odd = next(s for s in startups if s.manifest_digest != startups[0].manifest_digest)
        problems = [dataclasses.replace(odd, error="reads a different manifest than rank 0 (re-planned during the start?)")]
    if problems:
        first = problems[0]
        where = f"rank {first.rank} on {first.host}" if size > 1 else "this rank"
        raise UsageError(f"{where}: {first.error}" + (f" (and {len(problems) - 1} more ranks)" if len(problems) > 1 else ""))
    assert manifest is not None and checked is not None
    log.info("rank %d/%d on %s pid %d: %s schedule, %s", rank, size, socket.gethostname(), os.getpid(), schedule,
             "threaded" if threaded else f"MPI thread level {MPI.Query_thread()} (no helper threads)")

    channel = Channel(comm, MPI.ANY_SOURCE) if size > 1 else None
    tally = _Tally(rank)
    reports: list[RankReport] = []
    with interrupt_on_signals():
        if rank == 0:
            reports, _ = _rank0(config, manifest, channel, MPI, startups, timing, tally, schedule=schedule,
                                       force=force, factory=factory, checked=checked, threaded=threaded)
        else:
            assert channel is not None
            try:
                _worker(config, manifest, channel, MPI, startups, timing, tally, schedule=schedule, force=force,
                        factory=factory, checked=checked, threaded=threaded)
            except RankZeroSilent as exc:
                _abort(comm, f"rank {rank}: {exc}", 1)
    mine = tally.report("finished")
    log.info("rank %d: %d ObsIDs, %.1f s busy, %.1f s wall (%s)", rank, mine.obsids, mine.busy_s,
             time.monotonic() - t0, ", ".join(f"{n} {k}" for k, n in mine.counts) or "nothing to do")
    if rank != 0:
        return MpiResult(rank, 1 if mine.bad else 0)
    result = _finish(config, manifest, [mine, *reports], gather=gather, wall_s=time.monotonic() - t0)
    if on_finish is not None:
        on_finish(result)
    lost = [r.rank for r in reports if r.state in ("dead", "silent")]
    if lost:
        # MPI_Finalize at exit would wait for the lost ranks forever (a stopped or hung process
        # never answers). Everything is written by now, so end the whole job instead.
        _abort(comm, f"rank 0: ranks {', '.join(map(str, lost))} stopped talking; results are saved",
               max(result.code, 1))
    return result


def _abort(comm: Any, why: str, code: int) -> None:
    """The last resort: MPI_Abort, so a dead or hung peer cannot keep this job in MPI_Finalize."""
    log.error("%s; ending the MPI job with MPI_Abort (exit %d); `rerun` completes what is missing", why, code)
    for handler in logging.getLogger("rxte_hpc").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    comm.Abort(code)


def _prepare(config: Config, factory: ExtractorFactory, gather: bool) -> tuple[Manifest, Checked]:
    """What every rank checks before work (once: its task runners are handed the result)."""
    manifest = read_manifest(RunPaths(config.run_dir).manifest)
    return manifest, preflight(config, manifest, factory=factory)


def _nothing() -> None:
    """What rank 0 does between its own ObsIDs when a helper thread serves the other ranks."""


def _static_tasks(manifest: Manifest, rank: int, size: int) -> list[int]:
    return [t for t in range(manifest.n_tasks) if t % size == rank]


def _run_static(config: Config, manifest: Manifest, rank: int, size: int, tally: _Tally, *, force: bool,
                factory: ExtractorFactory, checked: Checked, between: Callable[[], object]) -> None:
    """This rank's tasks, each exactly as array element `t` runs it (same labels, same records)."""
    for task in _static_tasks(manifest, rank, size):
        identity = WorkerIdentity.for_task(task, rank=rank)
        with TaskRunner(config, manifest, identity, force=force, extractor_factory=factory, checked=checked) as runner:
            tally.runners.append(runner)
            for row in manifest.rows_for_task(task):
                tally.note(runner.process(row).seconds)
                between()


def _rank_identity(rank: int) -> WorkerIdentity:
    return WorkerIdentity(label=f"mpi-rank{rank:04d}", rank=rank)


def _rank0(config: Config, manifest: Manifest, channel: Channel | None, MPI: Any, startups: Sequence[Startup],
           timing: Timing, tally: _Tally, *, schedule: str, force: bool, factory: ExtractorFactory,
           checked: Checked, threaded: bool) -> tuple[list[RankReport], list[int]]:
    """Rank 0: dispatch (in a helper thread when possible) and extract; returns the other ranks' reports."""
    rows = manifest.rows
    size = len(startups)
    if schedule == "dynamic":
        paths = RunPaths(config.run_dir)
        config_hash = config.hash()
        todo = [r for r in _ordered(rows) if force or not is_done(read_record(paths, r.obsid.text), paths, config_hash)]
        skipped = len(rows) - len(todo)
        if skipped:
            log.info("rank 0: %d of %d ObsIDs already done for this config; %d to extract", skipped, len(rows), len(todo))
        position = {r.index: i for i, r in enumerate(rows)}
        queue = [position[r.index] for r in todo]
    else:
        queue = []
    if channel is None:  # size 1: serial, no messages
        if schedule == "static":
            _run_static(config, manifest, 0, 1, tally, force=force, factory=factory, checked=checked, between=lambda: None)
        else:
            with TaskRunner(config, manifest, _rank_identity(0), force=force, extractor_factory=factory,
                            checked=checked) as runner:
                tally.runners.append(runner)
                for i in queue:
                    tally.note(runner.process(rows[i]).seconds)
        return [], []

    dispatcher = Dispatcher(channel, MPI.Status, startups, timing, queue=queue)
    thread = None
    if threaded:
        # This thread only passes MPI messages and never calls HEASoft: every HEASoft task of this rank runs in
        # the main thread below, as extract.runner heasoftpy requires (heasoftpy keeps PFILES in os.environ;
        # hsp_runner.task_calls refuses a second thread).
        thread = threading.Thread(target=dispatcher.run_thread, name="rxte-hpc-dispatcher", daemon=True)
        thread.start()
        between: Callable[[], object] = _nothing
    else:
        between = dispatcher.service
    log.info("rank 0: dispatching %d ObsIDs to %d ranks (%s)", len(queue), size,
             "dispatcher thread" if threaded else "between rank 0's own ObsIDs")
    try:
        if schedule == "static":
            _run_static(config, manifest, 0, size, tally, force=force, factory=factory, checked=checked, between=between)
        else:
            with TaskRunner(config, manifest, _rank_identity(0), force=force, extractor_factory=factory,
                            checked=checked) as runner:
                tally.runners.append(runner)
                while (pos := dispatcher.take_local()) is not None:
                    tally.note(runner.process(rows[pos]).seconds)
                    between()
        dispatcher.local_finished()
        pause = 0.001
        while not dispatcher.finished.is_set():
            if thread is None:
                dispatcher.service()
            elif not thread.is_alive():
                break
            time.sleep(pause)  # interruptible: a signal raises Interrupted here
            pause = min(pause * 2, timing.poll_max_s)
    except (Interrupted, Exception):  # rank 0 stops: answer waiting ranks "stop" rather than nothing
        dispatcher.abort()
        raise
    finally:
        dispatcher.stop_requested.set()
        if thread is not None:
            thread.join(timeout=10.0)
    return dispatcher.reports(), dispatcher.outstanding_of_dead()


def _worker(config: Config, manifest: Manifest, channel: Channel, MPI: Any, startups: Sequence[Startup],
            timing: Timing, tally: _Tally, *, schedule: str, force: bool, factory: ExtractorFactory,
            checked: Checked, threaded: bool) -> None:
    """A rank > 0: ask rank 0 for ObsIDs (dynamic) or run its own tasks (static), then report."""
    rank = tally.rank
    try:
        with ExitStack() as stack:
            if threaded:
                stack.enter_context(Heartbeat(channel, rank, timing.heartbeat_s))
            _worker_loop(config, manifest, channel, MPI, startups, timing, tally, schedule=schedule, force=force,
                         factory=factory, checked=checked)
    except Interrupted:
        _say_gone(channel, tally, "interrupted")
        raise
    except RankZeroSilent as exc:
        log.error("rank %d: %s; ending this rank", rank, exc)
        raise
    except Exception:  # a bug: say so to rank 0 so it does not wait, then show the traceback
        _say_gone(channel, tally, "failed")
        raise


def _worker_loop(config: Config, manifest: Manifest, channel: Channel, MPI: Any, startups: Sequence[Startup],
                 timing: Timing, tally: _Tally, *, schedule: str, force: bool, factory: ExtractorFactory,
                 checked: Checked) -> None:
    """The worker's work proper; separate so `_worker` reads as its error handling."""
    if schedule == "static":
        _run_static(config, manifest, tally.rank, len(startups), tally, force=force, factory=factory,
                    checked=checked, between=lambda: None)
        channel.send(("finished", tally.report("finished")), 0, TAG_REQUEST)
        return
    with TaskRunner(config, manifest, _rank_identity(tally.rank), force=force, extractor_factory=factory,
                    checked=checked) as runner:
        tally.runners.append(runner)
        for i in _requests(channel, MPI, tally, timing, startups[0].threaded):
            tally.note(runner.process(manifest.rows[i]).seconds)


def _requests(channel: Channel, MPI: Any, tally: _Tally, timing: Timing, rank0_threaded: bool) -> Iterator[int]:
    """Row positions from rank 0, one request at a time, until it says stop."""
    status = MPI.Status()
    while True:
        channel.send(("ready", tally.report()), 0, TAG_REQUEST)
        limit = timing.dead_after_s if rank0_threaded else timing.dead_after_s + 10.0 * max(tally.longest_s, 1.0)
        asked = time.monotonic()
        pause = 0.0005
        while True:
            found, reply = channel.poll(0, TAG_WORK, status)
            if found:
                break
            if time.monotonic() - asked > limit:
                raise RankZeroSilent(f"no answer from rank 0 for {limit:.0f} s")
            time.sleep(pause)  # interruptible, unlike a blocking MPI receive
            pause = min(pause * 2, timing.poll_max_s)
        if reply is None:
            return
        yield int(reply)  # type: ignore[call-overload]


def _say_gone(channel: Channel, tally: _Tally, state: str) -> None:
    """Best effort: tell rank 0 not to wait for this rank any more."""
    try:
        channel.send(("gone", tally.report(state)), 0, TAG_REQUEST)
    except Exception as exc:  # rank 0 may be gone too; the interrupt still has to propagate
        log.warning("rank %d: could not tell rank 0 that it stops (%s)", tally.rank, exc)


def format_rank_table(reports: Sequence[RankReport], wall_s: float) -> str:
    """The table rank 0 prints: what each rank did, so an idle or dead rank stands out."""
    lines = [f"{'rank':>4}  {'host':<16} {'pid':>7}  {'ObsIDs':>6}  {'busy s':>8}  {'busy %':>6}  {'state':<11} results"]
    for r in reports:
        share = 100.0 * r.busy_s / wall_s if wall_s > 0 else 0.0
        results = ", ".join(f"{n} {k}" for k, n in r.counts) or "-"
        lines.append(f"{r.rank:>4}  {r.host[:16]:<16} {r.pid:>7}  {r.obsids:>6}  {r.busy_s:>8.1f}  {share:>6.0f}  "
                     f"{r.state:<11} {results}")
    total_obs = sum(r.obsids for r in reports)
    total_busy = sum(r.busy_s for r in reports)
    lines.append(f"{'all':>4}  {'':<16} {'':>7}  {total_obs:>6}  {total_busy:>8.1f}  wall {wall_s:.1f} s")
    return "\n".join(lines)


def record_lost_ranks(config: Config, manifest: Manifest, lost: Sequence[RankReport]) -> None:
    """Record the ObsIDs lost ranks left `running` as failed (site), so none stays `running`.

    A record is the lost rank's when it says that rank and host and is still
    `running`; `run` or `rerun` redoes these (site failures are retried).
    """
    paths = RunPaths(config.run_dir)
    by_rank = {(r.rank, r.host): r for r in lost}
    for row in manifest.rows:
        rec = read_record(paths, row.obsid.text)
        key = (-1 if rec is None or rec.rank is None else rec.rank, "" if rec is None else rec.host)
        if rec is None or rec.state != "running" or key not in by_rank:
            continue
        r = by_rank[key]
        why = f"MPI rank {r.rank} ({r.host} pid {r.pid}) was lost (killed, or silent too long) during this ObsID"
        try:
            write_record(paths, dataclasses.replace(rec, state="failed", finished=_utc_now(), error=why,
                                                    error_kind="site"))
        except RxteError as exc:
            log.error("%s: cannot record that its rank was lost (%s)", row.obsid, exc)
            continue
        log.warning("%s: %s; recorded failed (site): `rerun` or `run` completes it", row.obsid, why)


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _finish(config: Config, manifest: Manifest, reports: list[RankReport], *, gather: bool,
            wall_s: float) -> MpiResult:
    """Rank 0's end: the table, what is left for `rerun`, the gather; the exit code from the records."""
    table = format_rank_table(reports, wall_s)
    lost = [r for r in reports if r.state in ("dead", "silent")]
    for r in lost:
        log.warning("rank %d (%s pid %d) never finished", r.rank, r.host, r.pid)
    if lost:
        record_lost_ranks(config, manifest, lost)
    summary = RunSummary.collect(manifest, RunPaths(config.run_dir), config.hash())
    code = 0 if summary.complete else 1
    if not summary.complete:
        counts = summary.counts()
        log.warning("not complete: %s", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if gather:
        from rxte_hpc.products.gather import run_gather

        result = run_gather(config, allow_missing=False, manifest=manifest)
        lines = tuple(f"light curve: {out}" for out in result.outputs) + (result.summary,)
        return MpiResult(0, max(code, result.exit_code), table, lines)
    return MpiResult(0, code, table)
