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


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and TMP_MARK in path.name


@contextmanager
def atomic_path(target: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `target`.

    `durable` fsyncs the file before the rename, so a node crash cannot leave
    an empty file under the final name. Only advisory files (a `running`
    record) skip it. The directory is not fsynced: a rename lost in a crash
    only means the ObsID is extracted again, and that fsync doubled the cost
    per ObsID.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
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
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def _site_error(exc: OSError, target: Path) -> SiteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return SiteError(f"disk full writing {target} ({os.strerror(exc.errno)})")
    return SiteError(f"cannot write {target} ({exc.strerror or exc})")
