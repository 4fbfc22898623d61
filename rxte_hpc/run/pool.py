"""Worker processes for the local executor: each runs whole tasks, one at a time, as `work --task` does.

Why not `concurrent.futures.ProcessPoolExecutor`: it queues tasks inside its
worker processes, so after a signal a queued task still starts; a worker
killed outright (SIGKILL, the OOM killer) breaks the whole pool
(`BrokenProcessPool`) and says nothing about which task it held; and its
workers share the terminal's process group, so Ctrl-C reaches them in the
middle of start-up as a KeyboardInterrupt traceback.

Here the parent hands out one task at a time to each idle worker over the
worker's stdin and reads results from a pipe, so it always knows which task a
worker holds. Workers run in their own session (Ctrl-C reaches only the
parent, which passes the signal on at once to the busy workers) and get
SIGTERM from the kernel if the parent dies (`procs.die_with_parent`), so they
record their ObsID in flight even when `run` itself is killed. A worker that
dies is reported to the caller with the task it held (`Lost`) and replaced.

The parent parses the config and the manifest and runs the preflight once;
each worker receives them (`WorkerSetup`, pickled) as the first thing on its
stdin instead of parsing them again (at 100,000 ObsIDs a manifest takes most of
a second to read). The pickle comes from the parent over a private pipe, never
from a file, so it is as trusted as the parent's own memory.

The worker side is this module run as a program:
    python -m rxte_hpc.run.pool RESULT_FD [--log-level N]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Callable, Iterable, Sequence

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import Interrupted, RxteError, SiteError
from rxte_hpc.core.manifest import Manifest
from rxte_hpc.core.procs import die_with_parent
from rxte_hpc.run.preflight import Checked

log = logging.getLogger(__name__)

#: Seconds the workers get, after a signal, to record their ObsIDs in flight and clean scratch.
GRACE_S = 10.0
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class Done:
    """A task finished in a worker: its ObsIDs' final states, or the one-line error that stopped it."""

    task: int
    states: tuple[str, ...] = ()
    error: str | None = None
    exit_code: int = 0


@dataclass(frozen=True)
class Lost:
    """A worker ended while it held `task`: killed outright (`signum`), or it exited (`exit_code`)."""

    task: int
    pid: int
    since: str  # UTC ISO time the task was handed out: records started after it are this worker's
    signum: int | None
    exit_code: int | None
    by_us: bool  # we killed it (after the grace period or on a second signal)

    def describe(self) -> str:
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            why = f"killed by {name}" + (" (e.g. the OOM killer)" if self.signum == signal.SIGKILL and not self.by_us else "")
        else:
            why = f"exited with status {self.exit_code}"
        return f"local worker pid {self.pid} {why} during task {self.task}"


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker of a run needs, parsed and checked once by the parent."""

    config: Config
    manifest: Manifest
    checked: Checked
    force: bool = False

    def to_bytes(self) -> bytes:
        """`<length>\\n<pickle>`: what the worker reads first from its stdin."""
        data = pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
        return f"{len(data)}\n".encode() + data


@dataclass
class _Worker:
    proc: subprocess.Popen
    results: int  # read end of its result pipe
    buffer: bytes = b""
    ready: bool = False
    task: int | None = None
    since: str = ""
    killed_by_us: bool = False
    lines: list[dict] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class WorkerPool:
    """`n` worker processes for one run; `run(tasks)` hands them out and reports each end as it happens."""

    def __init__(self, n: int, setup: WorkerSetup) -> None:
        self.n = max(1, n)
        self._setup = setup.to_bytes()
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        self.stop_signal: int | None = None
        self._hurry = False
        self._start_failures = 0
        self._draining = False

    def drain(self) -> None:
        """Hand out no more tasks; the busy workers finish theirs (a failure every task would meet)."""
        self._draining = True

    # ---------------------------------------------------------------- processes
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        return env

    def _start(self) -> _Worker:
        read_fd, write_fd = os.pipe()
        level = logging.getLogger("rxte_hpc").getEffectiveLevel()
        level = level if level <= logging.DEBUG else max(level, logging.WARNING)  # task chatter only with -v
        argv = [sys.executable, "-m", "rxte_hpc.run.pool", str(write_fd), "--log-level", str(level)]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=self._env(), start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as exc:
            os.close(read_fd)
            raise SiteError(f"cannot start a local worker process ({exc.strerror or exc})") from exc
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        assert proc.stdin is not None
        try:  # the worker reads this first, before its imports, so the write does not wait long
            proc.stdin.write(self._setup)
            proc.stdin.flush()
        except OSError:  # it died at start: its end-of-file on the result pipe reports it
            pass
        worker = _Worker(proc, read_fd)
        self._selector.register(read_fd, selectors.EVENT_READ, worker)
        self._workers.append(worker)
        return worker

    def _send(self, worker: _Worker, task: int) -> None:
        assert worker.proc.stdin is not None
        worker.task, worker.since = task, _now()
        try:
            worker.proc.stdin.write(f"{task}\n".encode())
            worker.proc.stdin.flush()
        except OSError:  # it died meanwhile: its end-of-file on the result pipe reports it
            pass

    def _close_stdin(self, worker: _Worker) -> None:
        if worker.proc.stdin is not None and not worker.proc.stdin.closed:
            try:
                worker.proc.stdin.close()
            except OSError:
                pass

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            for w in self._workers:  # at once, before another ObsID can start
                if w.task is not None and w.proc.poll() is None:
                    _kill(w.proc.pid, signum)
            return
        self._hurry = True
        for w in self._workers:
            if w.proc.poll() is None:
                w.killed_by_us = True
                _kill(w.proc.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- the loop
    def run(self, tasks: Sequence[int], on_done: Callable[[Done], None], on_lost: Callable[[Lost], None]) -> None:
        """Run every task; call `on_done`/`on_lost` as tasks end. Raises Interrupted after a signal."""
        todo = list(tasks)
        previous = {s: signal.signal(s, self._on_signal) for s in _HANDLED}
        try:
            for _ in range(min(self.n, len(todo))):
                self._start()
            while self._workers and self.stop_signal is None:
                if self._draining:
                    todo.clear()
                busy = any(w.task is not None for w in self._workers)
                if not todo and not busy:
                    break
                for w in self._workers:
                    if todo and w.ready and w.task is None and self.stop_signal is None:
                        self._send(w, todo.pop(0))
                    elif not todo and w.task is None:
                        self._close_stdin(w)  # nothing more for it: it exits
                self._poll(0.2, on_done, on_lost, replace=bool(todo))
            self._shutdown(on_done, on_lost)
        except BaseException:  # a failure of the pool itself: no worker may outlive it, none is left unrecorded
            self._terminate()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._selector.close()
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _poll(self, timeout: float, on_done: Callable[[Done], None], on_lost: Callable[[Lost], None],
              replace: bool) -> None:
        for key, _ in self._selector.select(timeout):
            worker: _Worker = key.data
            try:
                chunk = os.read(worker.results, 65536)
            except BlockingIOError:
                continue
            if chunk:
                worker.buffer += chunk
                *lines, worker.buffer = worker.buffer.split(b"\n")
                for line in lines:
                    self._message(worker, json.loads(line), on_done)
                continue
            self._ended(worker, on_lost, replace)

    def _message(self, worker: _Worker, message: dict, on_done: Callable[[Done], None]) -> None:
        if "ready" in message:
            worker.ready = True
            return
        worker.task = None
        on_done(Done(int(message["task"]), tuple(message.get("states", ())), message.get("error"),
                     int(message.get("exit_code", 0))))

    def _ended(self, worker: _Worker, on_lost: Callable[[Lost], None], replace: bool) -> None:
        """End of file on a worker's result pipe: it has exited (or is about to)."""
        self._selector.unregister(worker.results)
        os.close(worker.results)
        self._close_stdin(worker)
        code = worker.proc.wait()
        self._workers.remove(worker)
        if worker.task is not None:
            signum = -code if code < 0 else None
            on_lost(Lost(worker.task, worker.proc.pid, worker.since, signum, None if code < 0 else code,
                         worker.killed_by_us))
        elif not worker.ready:
            self._start_failures += 1
            if self._start_failures >= 2 * self.n:
                raise SiteError(f"local worker processes exit at start (last status {code}); see the messages above")
        elif code != 0 and self.stop_signal is None:
            log.warning("local worker pid %d exited with status %d between tasks", worker.proc.pid, code)
        if replace and self.stop_signal is None and len(self._workers) < self.n:
            self._start()

    def _shutdown(self, on_done: Callable[[Done], None], on_lost: Callable[[Lost], None]) -> None:
        """No task is handed out any more: let the workers finish (or stop), then make sure they are gone."""
        for w in self._workers:
            self._close_stdin(w)
        deadline = time.monotonic() + GRACE_S
        while self._workers:
            if time.monotonic() > deadline and not self._hurry:
                self._hurry = True
                for w in self._workers:
                    log.warning("local worker pid %d did not stop within %.0f s: killing it", w.proc.pid, GRACE_S)
                    w.killed_by_us = True
                    _kill(w.proc.pid, signal.SIGKILL)
            self._poll(0.1, on_done, on_lost, replace=False)


    def _terminate(self) -> None:
        """Stop every worker as a signal would (they record their ObsIDs), then kill what remains."""
        for w in self._workers:
            self._close_stdin(w)
            if w.proc.poll() is None:
                _kill(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for w in self._workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(w.proc.pid, signal.SIGKILL)
                w.proc.wait()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# ==================================================================== the worker process
def _send_line(out: int, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(out, data):]


def _read_setup(stdin: BinaryIO) -> "WorkerSetup":
    header = stdin.readline()
    if not header.strip().isdigit():
        raise SiteError("local worker: no run setup on stdin (started by hand? it is started by `rxte-hpc run`)")
    setup = pickle.loads(stdin.read(int(header)))
    # Run as a program this module is __main__; the parent pickled the class of rxte_hpc.run.pool.
    from rxte_hpc.run.pool import WorkerSetup as Pickled

    if not isinstance(setup, Pickled):
        raise SiteError(f"local worker: stdin held a {type(setup).__name__}, not a run setup")
    return setup


def worker_main(argv: Iterable[str] | None = None) -> int:
    """One pool worker: read the run's setup, then task numbers from stdin until it closes; run and report each."""
    parser = argparse.ArgumentParser(prog="python -m rxte_hpc.run.pool")
    parser.add_argument("result_fd", type=int)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(list(argv) if argv is not None else None)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("rxte_hpc")
    root.addHandler(handler)
    root.setLevel(args.log_level)

    from rxte_hpc.run.signals import interrupt_on_signals
    from rxte_hpc.run.worker import run_task

    stdin = sys.stdin.buffer
    try:
        with interrupt_on_signals():
            setup = _read_setup(stdin)
            _send_line(args.result_fd, {"ready": os.getpid()})
            while line := stdin.readline():
                task = int(line)
                try:
                    records = run_task(setup.config, setup.manifest, task, force=setup.force, checked=setup.checked)
                except RxteError as exc:
                    _send_line(args.result_fd, {"task": task, "error": str(exc), "exit_code": exc.exit_code})
                    continue
                _send_line(args.result_fd, {"task": task, "states": [r.state for r in records]})
    except Interrupted as stop:
        return stop.exit_code
    except RxteError as exc:
        log.error("local worker: %s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
