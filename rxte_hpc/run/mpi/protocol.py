"""How MPI ranks talk: message tags, reports, timing, and rank 0's dispatcher.

Only point-to-point messages on COMM_WORLD, behind one lock (`Channel`), with
non-blocking probes so a main thread never sits in C where Python cannot run
the SIGTERM handler. `Dispatcher` is rank 0's bookkeeping for the dynamic
schedule: the ObsID queue, each worker rank's state, and dead-rank detection
from heartbeats. The flows of each rank live in `mpi.py`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, cast

from rxte_hpc.core.errors import RxteError, UsageError
from rxte_hpc.core.status import FINISHED

log = logging.getLogger(__name__)

TAG_REQUEST = 11  # worker -> 0: (kind, RankReport) with kind "ready" | "finished" | "gone"
TAG_WORK = 12  # 0 -> worker: a manifest row position, or None for "stop"
TAG_HEARTBEAT = 13  # worker -> 0: rank number, "still alive"


@dataclass(frozen=True)
class Timing:
    """How often workers say they are alive, and how long a silence means a rank is dead.

    Kept in one value so the tests and benchmarks can shorten it through the
    environment of the MPI launcher (the config file has no MPI section).
    """

    heartbeat_s: float = 5.0
    dead_after_s: float = 120.0
    poll_max_s: float = 0.005  # longest pause between probes: bounds the latency of handing out an ObsID

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Timing":
        values = {}
        for name, var in (("heartbeat_s", "RXTE_HPC_MPI_HEARTBEAT_S"), ("dead_after_s", "RXTE_HPC_MPI_DEAD_AFTER_S")):
            text = env.get(var)
            if text is None:
                continue
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"{var}={text!r} is not a number of seconds") from None
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{var}={text!r} must be a positive number of seconds")
            values[name] = value
        timing = cls(**values)
        if timing.dead_after_s < 3 * timing.heartbeat_s:
            raise UsageError(
                f"RXTE_HPC_MPI_DEAD_AFTER_S ({timing.dead_after_s}) must be at least three heartbeats "
                f"(RXTE_HPC_MPI_HEARTBEAT_S = {timing.heartbeat_s})"
            )
        return timing


@dataclass(frozen=True)
class RankReport:
    """What a rank did so far; sent with every request so rank 0 can print the table at the end."""

    rank: int
    host: str
    pid: int
    obsids: int = 0
    busy_s: float = 0.0
    longest_s: float = 0.0
    counts: tuple[tuple[str, int], ...] = ()
    state: str = "working"  # working | finished | interrupted | dead | silent

    @property
    def bad(self) -> int:
        return sum(n for k, n in self.counts if k not in (*FINISHED, "skipped"))


@dataclass(frozen=True)
class Startup:
    """One rank's answer to the startup allgather: who it is and whether it can work."""

    rank: int
    host: str
    pid: int
    threaded: bool
    error: str | None
    manifest_digest: str | None = None


@dataclass(frozen=True)
class RankState:
    """Rank 0's view of one worker rank (replaced, never mutated)."""

    report: RankReport
    last_seen: float
    heartbeats: bool
    outstanding: int | None = None
    state: str = "working"  # working | stopped | gone | dead


class Channel:
    """COMM_WORLD point-to-point messages behind one lock, so THREAD_SERIALIZED is enough.

    Receives are non-blocking probes: a blocking MPI receive would keep the
    main thread in C where Python cannot run the SIGTERM handler.
    """

    def __init__(self, comm: Any, any_source: int) -> None:
        self.comm = comm
        self.any_source = any_source  # MPI.ANY_SOURCE: -2 in MPICH, where -1 is MPI_PROC_NULL
        self._lock = threading.Lock()

    def send(self, obj: object, dest: int, tag: int) -> None:
        with self._lock:
            self.comm.send(obj, dest=dest, tag=tag)

    def poll(self, source: int, tag: int, status: Any) -> tuple[bool, object]:
        """(True, message) when one is waiting, else (False, None); never blocks."""
        with self._lock:
            message = self.comm.improbe(source=source, tag=tag, status=status)
            if message is None:
                return False, None
            return True, message.recv()


class Dispatcher:
    """Rank 0's bookkeeping: the queue of ObsIDs, each worker rank's state, dead-rank detection.

    `service()` handles every waiting message without blocking; a helper thread
    calls it in a loop, or rank 0's main thread between its own ObsIDs when MPI
    has no thread support. Rank 0's own worker takes ObsIDs with `take_local()`.
    """

    def __init__(
        self,
        channel: Channel,
        status_factory: Callable[[], Any],
        startups: Sequence[Startup],
        timing: Timing,
        *,
        queue: Sequence[int] = (),
    ) -> None:
        self._channel = channel
        self._status = status_factory
        self._timing = timing
        self._lock = threading.Lock()
        self._queue: deque[int] = deque(queue)
        now = time.monotonic()
        self._ranks: dict[int, RankState] = {
            s.rank: RankState(RankReport(s.rank, s.host, s.pid), now, s.threaded) for s in startups if s.rank != 0
        }
        self._local_done = False
        self._longest_s = 0.0
        self.finished = threading.Event()
        self.stop_requested = threading.Event()

    # ---------------------------------------------------------------- rank 0's own worker
    def take_local(self) -> int | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def local_finished(self) -> None:
        with self._lock:
            self._local_done = True

    # ---------------------------------------------------------------- messages
    def service(self) -> bool:
        """Answer every waiting request, note heartbeats, declare silent ranks dead; True when all is over."""
        handled = False
        status = self._status()
        while True:
            found, message = self._channel.poll(self._channel.any_source, TAG_REQUEST, status)
            if not found:
                break
            handled = True
            self._request(status.Get_source(), message)
        while True:
            found, _ = self._channel.poll(self._channel.any_source, TAG_HEARTBEAT, status)
            if not found:
                break
            self._seen(status.Get_source())
        self._check_silence()
        with self._lock:
            over = self._local_done and not self._queue and all(s.state != "working" for s in self._ranks.values())
        if over:
            self.finished.set()
        return handled

    def _seen(self, rank: int) -> None:
        with self._lock:
            state = self._ranks.get(rank)
            if state is not None:
                self._ranks[rank] = dataclasses.replace(state, last_seen=time.monotonic())

    def _request(self, rank: int, message: object) -> None:
        kind, report = cast("tuple[str, RankReport]", message)  # TAG_REQUEST's payload
        with self._lock:
            state = self._ranks[rank]
            if state.state == "dead":
                log.warning("rank %d talks again after being declared dead; its work is welcome", rank)
            self._longest_s = max(self._longest_s, report.longest_s)
            state = dataclasses.replace(state, report=report, last_seen=time.monotonic(), outstanding=None)
            reply: int | None = None
            send = False
            if kind == "ready":
                send = True
                if self._queue and not self.stop_requested.is_set():
                    reply = self._queue.popleft()
                    state = dataclasses.replace(state, outstanding=reply, state="working")
                else:
                    state = dataclasses.replace(state, state="stopped")
            elif kind == "finished":
                state = dataclasses.replace(state, state="stopped")
            else:  # "gone": interrupted or failed; it asks for nothing more
                state = dataclasses.replace(state, state="gone")
            self._ranks[rank] = state
        if send:
            self._channel.send(reply, rank, TAG_WORK)

    def _silence_limit(self, state: RankState) -> float:
        if state.heartbeats:
            return self._timing.dead_after_s
        # No heartbeat thread on that rank: it is silent for a whole ObsID at a time.
        return self._timing.dead_after_s + 10.0 * max(self._longest_s, state.report.longest_s)

    def _check_silence(self) -> None:
        now = time.monotonic()
        with self._lock:
            for rank, state in list(self._ranks.items()):
                if state.state != "working" or now - state.last_seen <= self._silence_limit(state):
                    continue
                self._ranks[rank] = dataclasses.replace(state, state="dead")
                log.warning(
                    "rank %d (%s pid %d) silent for %.0f s: declared dead; %s",
                    rank,
                    state.report.host,
                    state.report.pid,
                    now - state.last_seen,
                    "its ObsID in flight is recorded failed (site) at the end"
                    if state.outstanding is not None else "it had no ObsID",
                )

    def run_thread(self) -> None:
        """The helper thread's loop: serve until everything is over or rank 0 stops."""
        pause = 0.001
        try:
            while not self.finished.is_set() and not self.stop_requested.is_set():
                if self.service():
                    pause = 0.001
                else:
                    time.sleep(pause)
                    pause = min(pause * 2, self._timing.poll_max_s)
        except Exception:  # a bug here must not leave rank 0's main thread waiting forever
            log.exception("MPI dispatcher failed; ending the run")
            self.stop_requested.set()
            self.finished.set()

    def abort(self) -> None:
        """Rank 0 is stopping (signal): hand out nothing more and tell waiting ranks to stop."""
        self.stop_requested.set()
        with self._lock:
            self._queue.clear()
        try:
            self.service()  # answers pending requests with "stop"
        except Exception as exc:  # best effort on the way out
            log.warning("MPI dispatcher: could not tell every rank to stop (%s)", exc)

    def reports(self) -> list[RankReport]:
        with self._lock:
            names = {"stopped": "finished", "dead": "dead", "working": "silent"}
            return [
                dataclasses.replace(s.report, state=names.get(s.state, s.report.state))  # gone: as the rank said
                for _, s in sorted(self._ranks.items())
            ]

    def outstanding_of_dead(self) -> list[int]:
        with self._lock:
            return [s.outstanding for s in self._ranks.values() if s.state == "dead" and s.outstanding is not None]


class RankZeroSilent(RxteError):
    """Rank 0 stopped answering requests for work (it died, or the network did)."""


class Heartbeat:
    """A worker's helper thread telling rank 0 it is alive while the main thread extracts.

    It only sends MPI messages and never calls HEASoft (extract.runner heasoftpy allows one extracting thread).
    """

    def __init__(self, channel: Channel, rank: int, period_s: float) -> None:
        self._channel = channel
        self._rank = rank
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rxte-hpc-heartbeat-{rank}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._channel.send(self._rank, 0, TAG_HEARTBEAT)
            except Exception as exc:  # rank 0 gone: nothing to tell, the main thread will notice
                log.warning("rank %d: heartbeat to rank 0 failed (%s); stopping heartbeats", self._rank, exc)
                return
