"""Turn the signals a batch system sends into an `Interrupted` exception, once.

Slurm sends SIGTERM at the time limit (and SIGUSR1/2 earlier when asked with
`--signal`); a user sends SIGINT. The first signal raises `Interrupted` in the
main thread, so `finally` blocks clean scratch and the worker records the
ObsID in flight as `interrupted` before the process exits with 128 + signal.
Further signals during that cleanup must not interrupt it (a half-run
`finally` leaves scratch and `running` records behind), except that a second
signal from the user means "now": the registered emergency callbacks run
(kill tool processes) and the process ends at once with 128 + signal, one line
on stderr, no traceback. Whatever is left is recorded or reaped by the next run.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from rxte_hpc.core.errors import Interrupted

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

_state: dict[str, int | None] = {"first": None, "depth": 0}
_emergency: list[Callable[[], object]] = []


def _exit_now(signum: int) -> None:
    """The second signal: run emergency callbacks, then end the process without unwinding."""
    for callback in list(_emergency):
        try:
            callback()
        except Exception:  # the process ends now whatever a callback does  # noqa: BLE001
            pass
    try:
        os.write(2, f"rxte-hpc: second signal {signum}: exiting at once\n".encode())
    except OSError:
        pass
    os._exit(128 + signum)


def _handler(signum: int, _frame: object) -> None:
    if _state["first"] is None:
        _state["first"] = signum
        raise Interrupted(signum)
    _exit_now(signum)


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, the first HANDLED signal raises Interrupted, a second one exits at once.

    Main thread only (elsewhere a no-op). Nesting is fine: the innermost
    block's exit restores the outer handlers. A block entered during a
    shutdown (an inner one) raises at once, so no new work starts; when the
    outermost block ends, the shutdown is over (a notebook may run again).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    _state["depth"] = (_state["depth"] or 0) + 1
    try:
        first = _state["first"]
        if first is not None:
            raise Interrupted(first)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state["depth"] = (_state["depth"] or 1) - 1
        if not _state["depth"]:  # the shutdown is over (a notebook may run again)
            _state["first"] = None


@contextmanager
def on_second_signal(callback: Callable[[], object]) -> Iterator[None]:
    """Run `callback` (quick, no locks: it runs inside a signal handler) if a second signal ends the process."""
    _emergency.append(callback)
    try:
        yield
    finally:
        try:
            _emergency.remove(callback)
        except ValueError:
            pass
