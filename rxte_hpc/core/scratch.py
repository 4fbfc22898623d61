"""Node-local scratch for one task: private directory, private PFILES, cleanup, stale reaping.

Each task gets `<root>/rxte-hpc-<user>-<job>-<label>-<pid>-<random>/` with a
`pfiles/` directory, in which every ObsID gets a fresh, empty user PFILES
directory of its own (`Workspace.obsid_pfiles`: shared parameter files clobber
each other, docs/architecture.md#why-it-is-built-this-way, and values a task learns on one ObsID must not reach
the next), and a short working directory `w/` (long paths break pcaextlc2).
A lock file is held while the owner lives; the next task reaps directories
of this tool whose lock is free, and never touches anything else in /dev/shm.
This is the only module that knows PFILES.
"""
from __future__ import annotations

import fcntl
import getpass
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from rxte_hpc.core.errors import SiteError
from rxte_hpc.core.fsutil import site_errors

log = logging.getLogger(__name__)

PREFIX = "rxte-hpc-"
LOCK_NAME = ".owner.lock"
#: A directory of ours without a lock file is reaped only when older than this (it died in mkdtemp).
UNLOCKED_GRACE_S = 600.0
_SAFE = re.compile(r"[^A-Za-z0-9_.]+")


@dataclass(frozen=True)
class Workspace:
    root: Path
    pfiles: Path
    work: Path

    def obsid_pfiles(self, label: str) -> Path:
        """A new, empty user PFILES directory for one ObsID's HEASoft calls; the previous ObsIDs' are removed.

        Real tasks learn parameter values into the user directory (xtefilt's
        `fcollect fname`, every `ql`/`hl` parameter), so one directory per task
        would let an ObsID's output depend on the ObsID before it.
        """
        if self.pfiles.exists():
            for old in self.pfiles.iterdir():
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink()
        path = self.pfiles / _label(label)
        path.mkdir(parents=True)
        return path

    def fresh_work(self) -> Path:
        """Empty the short working directory for the next ObsID and return it."""
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir()
        return self.work


def _label(value: object) -> str:
    return _SAFE.sub("_", str(value))[:32] or "x"


def _usable(root: Path, min_free_bytes: int) -> str | None:
    """Why `root` cannot be used, or None when it can."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    if not os.access(root, os.W_OK | os.X_OK):
        return "not writable"
    try:
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return f"cannot stat it ({exc.strerror or exc})"
    if free < min_free_bytes:
        return f"only {free // 2**20} MiB free, need {min_free_bytes // 2**20} MiB"
    return None


#: Fallback warnings already given in this process: a task per ObsID batch must not repeat them.
_warned: set[tuple[str, str]] = set()


def choose_root(configured: Path, min_free_bytes: int) -> Path:
    """`configured` when usable, else $TMPDIR (or the system temp dir), saying why once per process.

    SiteError (one line, both places and why) when neither can be used.
    """
    problem = _usable(configured, min_free_bytes)
    if problem is None:
        return configured
    fallback = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
    fallback_problem = _usable(fallback, 0)
    if fallback_problem is not None:
        raise SiteError(
            f"no usable scratch directory: scratch.root {configured} ({problem}) and the fallback "
            f"{fallback} ({fallback_problem}); set scratch.root or $TMPDIR to a writable local directory"
        )
    if (str(configured), problem) not in _warned:
        _warned.add((str(configured), problem))
        log.warning("scratch root %s unusable (%s); using %s", configured, problem, fallback)
    return fallback


def candidate_roots(configured: Path) -> list[Path]:
    """Where this tool's scratch directories can be: the configured root and the fallback."""
    roots = [configured, Path(os.environ.get("TMPDIR") or tempfile.gettempdir())]
    return [r for i, r in enumerate(roots) if r not in roots[:i]]


def kill_tools_of(directory: Path) -> list[int]:
    """Kill processes still running with PFILES in `directory` (a dead worker's HEASoft tools).

    Every HEASoft call gets its environment from `heasoft_env`, so its whole
    process tree, grandchildren included, carries PFILES=<workspace>/pfiles;...
    even after its worker died and it was re-parented.
    """
    marker = f"PFILES={directory}/".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ.split(b"\0")):
            found.append(int(name))
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    if found:
        log.warning("killed %d tool process(es) left running by the dead owner of %s: %s",
                    len(found), directory, ", ".join(map(str, found)))
    return found


def reap_stale(root: Path) -> list[Path]:
    """Remove this tool's directories under `root` whose owner is gone; return what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if _owner_gone(path):
            kill_tools_of(path)
            shutil.rmtree(path, ignore_errors=True)
            log.info("reaped stale scratch %s", path)
            removed.append(path)
    return removed


def _owner_gone(path: Path) -> bool:
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@contextmanager
def task_workspace(configured_root: Path, min_free_mb: int, label: str, job: str | None = None) -> Iterator[Workspace]:
    """A private, locked scratch directory for one task, removed however the task ends.

    Machine problems (read-only or full scratch) are a one-line SiteError.
    """
    root = choose_root(configured_root, min_free_mb * 2**20)
    reap_stale(root)
    name = f"{PREFIX}{_label(getpass.getuser())}-{_label(job or 'local')}-{_label(label)}-{os.getpid()}-"
    # The name is chosen before the directory exists, so that a signal at any point (even inside the
    # mkdir) still finds it in `finally`: a directory without its lock would wait UNLOCKED_GRACE_S for reaping.
    path = root / f"{name}{secrets.token_hex(4)}"
    lock_fd: int | None = None
    try:
        with site_errors("create a scratch directory"):
            while True:
                try:
                    os.mkdir(path, 0o700)
                    break
                except FileExistsError:
                    path = root / f"{name}{secrets.token_hex(4)}"
        with site_errors("set up scratch"):
            # Locked before it has its name: a neighbour's reap_stale that finds LOCK_NAME always finds it
            # held (creating then locking it in place let a neighbour take the free lock in between and
            # remove this new workspace, seen with many array elements on one node).
            unnamed = path / f".{LOCK_NAME}.new"
            lock_fd = os.open(unnamed, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            os.rename(unnamed, path / LOCK_NAME)
            ws = Workspace(root=path, pfiles=path / "pfiles", work=path / "w")
            ws.pfiles.mkdir()
            ws.work.mkdir()
        yield ws
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)


def heasoft_env(pfiles: Path | Workspace, headas: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An explicit environment for HEASoft calls: `pfiles` as the user PFILES directory, no prompting.

    `pfiles` is normally `Workspace.obsid_pfiles(...)` (one per ObsID); a
    Workspace means its task-wide `pfiles/`. Returned as a new dict; the
    parent's os.environ is never changed here (the heasoftpy runner sets
    PFILES in os.environ itself, in the one thread that calls HEASoft).
    """
    user = pfiles.pfiles if isinstance(pfiles, Workspace) else Path(pfiles)
    env = dict(os.environ if base is None else base)
    env["HEADAS"] = str(headas)
    env["PFILES"] = f"{user};{Path(headas) / 'syspfiles'}"
    env["HEADASNOQUERY"] = ""
    env["HEADASPROMPT"] = "/dev/null"
    return env
