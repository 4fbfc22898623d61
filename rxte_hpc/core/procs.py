"""Child processes that never outlive the worker that started them.

Two mechanisms, because a worker can end two ways:
- in order (a signal, a timeout): the caller kills the child's process group
  (the child is started with `start_new_session=True`, so its own children,
  e.g. the ftools a Perl task runs, are in that group too);
- killed outright (SIGKILL, the OOM killer): nothing runs in the worker any
  more, so the kernel does it: `die_with_parent()` is a `preexec_fn` that asks
  for SIGKILL when the parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), and the
  reaper of a dead worker's scratch kills whatever still runs with that
  scratch's PFILES (`scratch.kill_tools_of`), which catches the grandchildren.

Linux delivers the parent-death signal when the *thread* that forked the child
ends: start tools from a thread that lives as long as the worker (the main
thread, or a per-process extracting thread).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from typing import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - a Linux without a loadable libc
        return None


#: Loaded once in the parent: a preexec function must not import or load anything between fork and exec.
_LIBC = _load_libc()


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen: the child gets `signum` when this process dies.

    Returns None where the kernel has no such mechanism (not Linux): pass it
    as `preexec_fn=` either way. The parent's pid is taken now, so a parent
    that dies between fork and prctl is noticed (the child then kills itself).
    """
    if _LIBC is None:
        return None
    prctl = _LIBC.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:  # the parent is already gone: nobody would ever signal us
            os.kill(os.getpid(), signum)

    return preexec

