"""Atomic publication of files: a reader never sees half a file.

Write to a hidden temporary name in the destination directory, flush, fsync,
rename over the target. Two writers racing for one target
each publish a complete file; the last rename wins (submitit's
`temporary_save_path` habit). A full disk or a killed writer leaves at most a
hidden `.tmp` file, never a truncated target.
"""
from __future__ import annotations

import errno
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rxte_hpc.core.errors import SiteError

TMP_MARK = ".tmp."


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{TMP_MARK}{socket.gethostname()}.{os.getpid()}")


@contextmanager
def atomic_path(target: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `target`.

    `durable` fsyncs the file before the rename, so a node crash cannot leave
    an empty file under the final name. Only advisory files (a `running`
    record) skip it. The directory is not fsynced: a rename lost in a crash
    only means the ObsID is extracted again, and that fsync doubled the cost
    per ObsID.
    """
    tmp = temp_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        _discard(tmp)
        raise _site_error(exc, target) from exc
    except BaseException:
        _discard(tmp)
        raise


def write_atomic(target: Path, data: bytes, durable: bool = True) -> None:
    """Publish `data` at `target` atomically; disk problems become SiteError."""
    with atomic_path(target, durable) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()


def _discard(tmp: Path) -> None:
    """Remove a temporary if there is one; on a read-only or failing disk there is nothing more to do."""
    try:
        tmp.unlink()
    except OSError:
        pass


#: errno values that mean "the disk is full" rather than "this path is wrong".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _site_error(exc: OSError, target: Path) -> SiteError:
    if exc.errno in DISK_FULL:
        return SiteError(f"disk full writing {target} ({os.strerror(exc.errno)})")
    return SiteError(f"cannot write {target} ({exc.strerror or exc})")


def describe_os_error(exc: OSError, doing: str) -> str:
    """One line for an OSError: what was being done, the file, and the system's reason."""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in DISK_FULL:
        return f"disk full {doing}{where} ({reason})"
    return f"cannot {doing}{where} ({reason})"


@contextmanager
def site_errors(doing: str) -> Iterator[None]:
    """The boundary for machine failures: an OSError inside becomes a one-line SiteError.

    `doing` says what was attempted ("create the run directory"); the file and
    the system's reason (read-only file system, no space left, ...) follow.
    """
    try:
        yield
    except OSError as exc:
        raise SiteError(describe_os_error(exc, doing)) from exc
