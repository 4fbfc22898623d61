"""Mirror remote archive files into a cache shared by many parallel workers, whatever the transport.

Outside SciServer the archive is reached over S3 or HTTPS (`archive/transport.py`),
and hundreds of Slurm array elements or MPI ranks ask for it at once through one
cache directory on a shared filesystem. No client library does this part, so it
is the project's own, the same for both transports:

* a file is published in the cache only by `rename` of a fully written, size-checked,
  fsynced temporary; its final name existing means "complete" and it is reused
  without any request;
* one worker downloads a given file; the others wait on a per-file `flock` and
  then reuse it (no thundering herd on the archive);
* an interrupted download (a killed job, a cut connection) is continued from the
  bytes already on disk by whoever comes next, never mistaken for a complete file;
* every download is capped: by the size the server announces, and by a maximum
  per kind of file (`size_cap`), so an endless body cannot fill the cache's
  filesystem; a body over its cap is a failed download whose partial file is removed;
* 5xx, SlowDown, time-outs and lost connections are retried with capped
  exponential backoff and finally become `SiteError` (safe to retry the ObsID
  later); a host that does not resolve or refuses connections is a `SiteError`
  at once; a missing file is `NoDataError`; other refusals `DataError`.

Temporary and lock files are dot-files next to their target (`.<name>.part`,
`.<name>.lock`) so that the globs HEASoft tasks use (`pca/FS4a*`,
`pca/FH5[abcde]_*`) never see them. Lock files are removed by their holder
(see `_exclusive`); only a process killed while holding one leaves it behind,
and the next fetch of that file removes it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, TypeVar

from rxte_hpc.archive.listing import COMPLETE_MARKER, is_reserved
from rxte_hpc.archive.transport import READ_SIZE, Body, Restart, Transient, Transport
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError
from rxte_hpc.core.safepath import safe_relpath
from rxte_hpc.core.version import __version__

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, "int | None"], None]
_T = TypeVar("_T")

_MAX_TREE_DEPTH = 16  # an ObsID directory is 3 levels deep; a deeper tree is a server loop
_THREAD_STRIPES = 64
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
_MB = 1024 * 1024

SIZE_CAPS = {"science data (pca/, hexte/)": 4096 * _MB, "other": 512 * _MB}
"""Largest file of each kind the cache accepts.

The archive's largest files are PCA and HEXTE science files (GoodXenon and event
modes of bright sources reach hundreds of MB); standard products, filter files,
housekeeping and index files are a few MB. Each cap is far above any real file
of its kind and far below a filesystem.
"""


def _amount(nbytes: int) -> str:
    return f"{nbytes // _MB} MB" if nbytes % _MB == 0 else f"{nbytes} bytes"


def size_cap(relpath: PurePosixPath) -> tuple[str, int]:
    """(kind, largest accepted size in bytes) of an archive file, from its path in the ObsID tree."""
    if {"pca", "hexte"} & set(relpath.parts[:-1]):
        kind = "science data (pca/, hexte/)"
    else:
        kind = "other"
    return kind, SIZE_CAPS[kind]


@dataclass(frozen=True)
class DownloadPolicy:
    """How patient the downloader is; the defaults suit HEASARC and AWS from a cluster."""

    timeout_s: float = 60.0
    """Seconds to wait for a connection or for the next bytes of a body."""
    retries: int = 5
    """Extra attempts after the first one for time-outs, lost connections, 5xx and SlowDown."""
    backoff_s: float = 1.0
    """Delay before the first retry; doubled each time (with jitter so workers spread out)."""
    backoff_max_s: float = 30.0
    """Cap of the delay between two attempts."""
    user_agent: str = f"rxte-hpc/{__version__}"
    """Sent with every request, so the archive's operators can tell who is asking."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise UsageError(f"download policy needs positive timeout and non-negative retries/backoff: {self}")


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; some filesystems refuse fsync on a directory, which is fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("fsync of directory %s failed: %s", path, exc)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created if needed), for processes on any host.

    The holder unlinks the lock file before releasing it, so the cache does not fill
    up with lock files. That is safe because every acquirer checks, after getting
    the lock, that the path still names the inode it locked; a waiter that locked an
    unlinked inode just tries again on the new file. flock locks belong to the open
    file description, so two threads of one process exclude each other too (each
    opens its own descriptor).
    """
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise SiteError(f"cannot create lock file {lock_path}: {exc.strerror or exc}", path=lock_path) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.debug("waiting for another worker that is fetching %s", what)
                fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(lock_path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_LOCKS:
                raise UsageError(
                    f"the download cache does not support file locks ({lock_path}: {exc.strerror}); "
                    "put the cache on a filesystem with working flock (Lustre: mount with -o flock) "
                    "or pre-stage the archive with `rxte-hpc fetch` from one process", path=lock_path
                ) from exc
            raise SiteError(f"cannot lock {lock_path}: {exc.strerror or exc}", path=lock_path) from exc
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


class Downloader:
    """Mirror files and directories of one remote archive into a local cache directory.

    One instance may be shared by threads; separate instances and separate
    processes (also on other hosts, through the shared filesystem's locks) may use
    the same cache concurrently. Remote files are assumed immutable (the RXTE
    archive is): a partial download is continued, not revalidated.
    """

    def __init__(
        self,
        transport: Transport,
        cache_dir: Path,
        policy: DownloadPolicy = DownloadPolicy(),
        progress: ProgressCallback | None = None,
    ) -> None:
        self.transport = transport
        self.cache_dir = Path(cache_dir).absolute()
        self.policy = policy
        self.progress = progress
        # On NFS, flock is emulated with POSIX locks, which belong to a process and so
        # do not keep two threads apart; these stripes do, without a registry that grows.
        self._stripes = tuple(threading.Lock() for _ in range(_THREAD_STRIPES))
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"Downloader({self.transport.location!r}, {str(self.cache_dir)!r})"

    # -- public API -----------------------------------------------------------------

    def url_for(self, relpath: str | PurePosixPath, directory: bool = False) -> str:
        """The remote URL of an archive path."""
        return self.transport.url_for(relpath, directory)

    def local_path(self, relpath: str | PurePosixPath) -> Path:
        """Where an archive path lives in the cache (whether or not it is there yet)."""
        return self.cache_dir.joinpath(*safe_relpath(relpath).parts)

    def fetch(self, relpath: str | PurePosixPath) -> Path:
        """Return the cached copy of one remote file, downloading it first if needed.

        A file already in the cache is returned without any request. Otherwise the
        per-file lock decides who downloads; everybody else waits and then reuses it.
        """
        rel = safe_relpath(relpath)
        if is_reserved(rel.name):
            raise DataError(f"cannot cache {rel}: the name is reserved for the cache's own files")
        dest = self.cache_dir.joinpath(*rel.parts)
        if dest.is_file():
            return dest
        url = self.url_for(rel)
        self._makedirs(dest.parent)
        with self._stripe(rel), _exclusive(dest.with_name(f".{dest.name}.lock"), str(rel)):
            if dest.is_file():  # somebody else finished it while we waited
                log.debug("%s: fetched by another worker", rel)
                return dest
            self._with_retries(url, lambda: self._download_once(url, rel, dest))
        return dest

    def list_dir(self, relpath: str | PurePosixPath) -> tuple[list[str], list[str]]:
        """(files, subdirectories) of a remote directory; NoDataError when it does not exist."""
        rel = safe_relpath(relpath)
        return self._with_retries(self.url_for(rel, directory=True), lambda: self.transport.list_dir(rel))

    def root_is_empty(self) -> bool:
        """Whether the archive root lists nothing at all (retried like any request)."""
        return self._with_retries(self.transport.location, self.transport.is_empty)

    def fetch_tree(self, relpath: str | PurePosixPath) -> Path:
        """Mirror a remote directory recursively and return the local directory.

        HEASoft (pcaprepobsid, xtefilt) wants the complete ObsID directory. When the
        whole tree is in, `COMPLETE_MARKER` is written into it last, so a later call
        (here or in any other worker) returns at once without a request. A marker in
        an enclosing directory counts as well.
        """
        rel = safe_relpath(relpath)
        local = self.cache_dir.joinpath(*rel.parts)
        if self._tree_complete(rel):
            return local
        self._makedirs(local.parent)
        # One worker walks a tree at a time: the others then find the marker and make
        # no listing requests at all. Correctness does not depend on this lock (the
        # per-file locks do that), so no thread stripe is needed here.
        with _exclusive(local.with_name(f".{local.name}.lock"), f"{rel}/"):
            if self._tree_complete(rel):
                return local
            files = self._tree_files(rel)
            self._makedirs(local)
            for name in files:
                self.fetch(rel / name)
            self._write_marker(local, rel, len(files))
        log.debug("%s: tree complete (%d files)", rel, len(files))
        return local

    # -- internals ------------------------------------------------------------------

    def _stripe(self, rel: PurePosixPath) -> threading.Lock:
        digest = hashlib.blake2b(str(rel).encode(), digest_size=4).digest()
        return self._stripes[int.from_bytes(digest, "big") % _THREAD_STRIPES]

    def _tree_complete(self, rel: PurePosixPath) -> bool:
        node = self.cache_dir
        if (node / COMPLETE_MARKER).is_file():
            return True
        for part in rel.parts:
            node = node / part
            if (node / COMPLETE_MARKER).is_file():
                return True
        return False

    def _tree_files(self, rel: PurePosixPath) -> list[PurePosixPath]:
        """Every file below `rel`, relative to it: one paginated listing where the transport has it, else a walk."""
        if self.transport.lists_trees:
            return self._with_retries(self.url_for(rel, directory=True), lambda: self.transport.list_tree(rel))
        return self._walk(rel, PurePosixPath(), 0)

    def _walk(self, top: PurePosixPath, below: PurePosixPath, depth: int) -> list[PurePosixPath]:
        if depth > _MAX_TREE_DEPTH:
            raise DataError(f"directory tree deeper than {_MAX_TREE_DEPTH} levels at {self.url_for(top / below, True)}")
        files, subdirs = self.list_dir(top / below if below.parts else top)
        found = [below / name for name in files]
        for name in subdirs:
            found += self._walk(top, below / name, depth + 1)
        return found

    def _write_marker(self, local: Path, rel: PurePosixPath, count: int) -> None:
        tmp = local / f".{COMPLETE_MARKER}.tmp"
        text = f"{self.url_for(rel, directory=True)}\n{count} files\n"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, local / COMPLETE_MARKER)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SiteError(f"cannot write {local / COMPLETE_MARKER}: {exc.strerror or exc}", path=local) from exc
        _fsync_dir(local)

    def _makedirs(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiteError(f"cannot create cache directory {path}: {exc.strerror or exc}", path=path) from exc

    def _with_retries(self, url: str, attempt: Callable[[], _T]) -> _T:
        """Run `attempt` until it succeeds or the policy's retries are used up (then SiteError).

        A restart from byte zero after a refused range is our stale partial file, not
        the server failing: it is retried at once and does not use up a retry, unless
        it happens twice in a row.
        """
        policy = self.policy
        failures = 0
        restarted = False
        while True:
            try:
                return attempt()
            except Restart as exc:
                if not restarted:
                    log.debug("%s: %s; starting again from byte 0", url, exc)
                    restarted = True
                    continue
                reason: Transient = exc
            except Transient as exc:
                reason = exc
            restarted = False
            if failures == policy.retries:
                raise SiteError(f"cannot download {url}: {reason} (gave up after {failures + 1} attempts)",
                                url=url, cause=reason) from reason
            delay = min(policy.backoff_max_s, policy.backoff_s * 2**failures)
            delay *= self._random.uniform(0.5, 1.0)  # workers that failed together retry apart
            failures += 1
            log.warning("%s: %s; retry %d/%d in %.1f s", url, reason, failures, policy.retries, delay)
            time.sleep(delay)

    def _download_once(self, url: str, rel: PurePosixPath, dest: Path) -> None:
        """One attempt: continue or start `.<name>.part`, check its size, publish by rename.

        Runs under the file's lock, so an existing partial file belongs to a worker
        that died (or to an earlier attempt of ours) and may be continued.
        """
        part = dest.with_name(f".{dest.name}.part")
        try:
            offset = os.stat(part, follow_symlinks=False).st_size
        except FileNotFoundError:
            offset = 0
        log.debug("GET %s%s", url, f" from byte {offset}" if offset else "")
        try:
            body = self.transport.open(rel, offset)
        except (Restart, NoDataError, DataError):  # nothing left to continue (a stale partial, or no file)
            self._remove(part)
            raise
        with body:
            if offset and body.start != offset:
                if body.start != 0:
                    self._remove(part)
                    raise Restart(f"server resumed at byte {body.start}, not {offset}")
                log.debug("%s: server ignored the range; starting again", url)
                offset = 0
            total = body.total
            if total is not None and body.length is not None and body.start + body.length != total:
                raise Transient(f"inconsistent sizes: {body.start} + {body.length} bytes != {total}")
            kind, cap = size_cap(rel)
            if total is not None and total > cap:
                self._remove(part)
                raise DataError(f"not downloaded: {url} is {total} bytes, above the {_amount(cap)} cap "
                                f"for {kind} files", url=url)
            limit = total if total is not None else cap
            done = self._receive(body, url, dest, str(rel), offset, limit, total, f"the {_amount(cap)} cap for {kind} files")
        if total is not None and done != total:
            raise Transient(f"short body: got {done} of {total} bytes")
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise SiteError(f"cannot publish {dest}: {exc.strerror or exc}", path=dest) from exc
        _fsync_dir(dest.parent)
        log.debug("cached %s (%d bytes)", dest, done)

    def _receive(
        self, body: Body, url: str, dest: Path, name: str, offset: int, limit: int, total: int | None, cap_text: str
    ) -> int:
        """Copy the body into dest's partial file; returns its size. Past `limit` bytes it stops (DataError)."""
        part = dest.with_name(f".{dest.name}.part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if offset else os.O_TRUNC)
        done = offset
        try:
            fd = os.open(part, flags, 0o644)
        except OSError as exc:
            raise self._disk_error(dest, part, exc) from exc
        try:
            if self.progress is not None:
                self.progress(name, done, total)
            while True:
                chunk = body.read(READ_SIZE)
                if not chunk:
                    break
                if done + len(chunk) > limit:
                    os.close(fd)
                    fd = -1
                    self._remove(part)
                    announced = f"the {total} bytes announced" if total is not None else cap_text
                    raise DataError(f"download of {url} stopped: the server sent more than {announced} "
                                    "(partial file removed)", url=url)
                try:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError as exc:
                    raise self._disk_error(dest, part, exc) from exc
                done += len(chunk)
                if self.progress is not None:
                    self.progress(name, done, total)
            try:
                os.fsync(fd)
            except OSError as exc:
                raise self._disk_error(dest, part, exc) from exc
        finally:
            if fd >= 0:
                os.close(fd)
        return done

    def _disk_error(self, dest: Path, part: Path, exc: OSError) -> SiteError:
        """A local write failed: SiteError; a full disk also drops the partial file to free space."""
        if exc.errno in _DISK_FULL:
            self._remove(part)
            return SiteError(f"disk full while writing {dest} (partial file removed): {exc.strerror}", path=dest)
        return SiteError(f"cannot write {part}: {exc.strerror or exc}", path=part)

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
