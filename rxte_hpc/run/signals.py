"""Turn the signals a batch system sends into an `Interrupted` exception.

Slurm sends SIGTERM at the time limit (and SIGUSR1/2 earlier when asked with
`--signal`); a user sends SIGINT. Raising in the main thread lets `finally`
blocks clean scratch and lets the worker record the ObsID in flight as
`interrupted` before the process exits with 128 + signal.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from rxte_hpc.core.errors import Interrupted

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def _raise(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, HANDLED signals raise Interrupted (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
