"""Fetch RXTE archive files over HTTP(S) into a cache shared by many parallel workers.

Outside SciServer the archive (`.../FTP/xte/data/archive/AO{cycle}/P{prnb}/{obsid}/`)
is only reachable over HTTPS, and hundreds of Slurm array elements or MPI ranks
ask for it at once through one cache directory on a shared filesystem. So:

* a file is published in the cache only by `rename` of a fully written, size-checked,
  fsynced temporary; its final name existing means "complete" and it is reused
  without any request;
* one worker downloads a given file; the others wait on a per-file `flock` and
  then reuse it (no thundering herd on HEASARC);
* an interrupted download (a killed job) is continued with `Range` by whoever
  comes next, never mistaken for a complete file;
* network trouble is retried with capped exponential backoff and finally becomes
  `SiteError` (safe to retry the ObsID later); 404 is `NoDataError`; other 4xx
  are `DataError`.

Temporary and lock files are dot-files next to their target (`.<name>.part`,
`.<name>.lock`) so that the globs HEASoft tasks use (`pca/FS4a*`,
`pca/FH5[abcde]_*`) never see them. Lock files are removed by their holder
(see `_exclusive`); only a process killed while holding one leaves it behind,
and the next fetch of that file removes it.

Standard library only (urllib, html.parser, fcntl): the package must run on
cluster nodes where only the base environment is installed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, TypeVar

from rxte_hpc.core.version import __version__
from rxte_hpc.archive.listing import COMPLETE_MARKER, MAX_LISTING_BYTES, is_reserved, parse_index, validate_base_url
from rxte_hpc.core.safepath import safe_relpath
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, "int | None"], None]
_T = TypeVar("_T")

_CHUNK = 256 * 1024
_MAX_TREE_DEPTH = 16  # an ObsID directory is 3 levels deep; a deeper tree is a server loop
_THREAD_STRIPES = 64
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)


@dataclass(frozen=True)
class DownloadPolicy:
    """How patient the downloader is; the defaults suit HEASARC from a cluster."""

    timeout_s: float = 60.0
    """Seconds to wait for a connection or for the next bytes of a body."""
    retries: int = 5
    """Extra attempts after the first one for timeouts, dropped connections and 5xx."""
    backoff_s: float = 1.0
    """Delay before the first retry; doubled each time (with jitter so workers spread out)."""
    backoff_max_s: float = 30.0
    """Cap of the delay between two attempts."""
    user_agent: str = f"rxte-hpc/{__version__}"
    """Sent with every request, so the archive's operators can tell who is asking."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise UsageError(f"download policy needs positive timeout and non-negative retries/backoff: {self}")


class _Transient(Exception):
    """A failure worth another attempt (timeout, reset, short body, 5xx); never leaves this module."""


class _Restart(_Transient):
    """The partial file cannot be continued (server refused the range): start again from zero."""


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size or None) of a 206 answer; _Restart if it is unusable."""
    match = _CONTENT_RANGE_RE.match(value or "")
    if not match:
        raise _Restart(f"unusable Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError as exc:
        raise _Transient(f"bad Content-Length {value!r}") from exc
    if length < 0:
        raise _Transient(f"bad Content-Length {value!r}")
    return length


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
            raise SiteError(f"cannot create lock file {lock_path}: {exc.strerror or exc}") from exc
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
                    "or pre-stage the archive with `rxte-hpc fetch` from one process"
                ) from exc
            raise SiteError(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
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
    archive is): a partial download is continued with `Range`, not revalidated.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        policy: DownloadPolicy = DownloadPolicy(),
        progress: ProgressCallback | None = None,
    ) -> None:
        self.base_url = validate_base_url(base_url)
        self.cache_dir = Path(cache_dir).absolute()
        self.policy = policy
        self.progress = progress
        self._opener = urllib.request.build_opener()
        # On NFS, flock is emulated with POSIX locks, which belong to a process and so
        # do not keep two threads apart; these stripes do, without a registry that grows.
        self._stripes = tuple(threading.Lock() for _ in range(_THREAD_STRIPES))
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"Downloader({self.base_url!r}, {str(self.cache_dir)!r})"

    # -- public API -----------------------------------------------------------------

    def url_for(self, relpath: str | PurePosixPath, directory: bool = False) -> str:
        """The remote URL of an archive path (each component percent-encoded)."""
        rel = safe_relpath(relpath)
        quoted = "/".join(urllib.parse.quote(part, safe="") for part in rel.parts)
        return self.base_url + quoted + ("/" if directory else "")

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
            self._with_retries(url, lambda: self._download_once(url, str(rel), dest))
        return dest

    def list_dir(self, relpath: str | PurePosixPath) -> tuple[list[str], list[str]]:
        """(files, subdirectories) of a remote directory, from its HTML index page."""
        url = self.url_for(relpath, directory=True)
        html, final_url = self._with_retries(url, lambda: self._get_small(url))
        return parse_index(html, final_url)

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
            count = self._walk(rel, depth=0)
            self._write_marker(local, rel, count)
        log.debug("%s: tree complete (%d files)", rel, count)
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

    def _walk(self, rel: PurePosixPath, depth: int) -> int:
        if depth > _MAX_TREE_DEPTH:
            raise DataError(f"directory tree deeper than {_MAX_TREE_DEPTH} levels at {self.url_for(rel, True)}")
        files, subdirs = self.list_dir(rel)
        self._makedirs(self.cache_dir.joinpath(*rel.parts))
        for name in files:
            self.fetch(rel / name)
        count = len(files)
        for name in subdirs:
            count += self._walk(rel / name, depth + 1)
        return count

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
            raise SiteError(f"cannot write {local / COMPLETE_MARKER}: {exc.strerror or exc}") from exc
        _fsync_dir(local)

    def _makedirs(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiteError(f"cannot create cache directory {path}: {exc.strerror or exc}") from exc

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
            except _Restart as exc:
                if not restarted:
                    log.debug("%s: %s; starting again from byte 0", url, exc)
                    restarted = True
                    continue
                reason: _Transient = exc
            except _Transient as exc:
                reason = exc
            restarted = False
            if failures == policy.retries:
                raise SiteError(f"cannot download {url}: {reason} (gave up after {failures + 1} attempts)") from reason
            delay = min(policy.backoff_max_s, policy.backoff_s * 2**failures)
            delay *= self._random.uniform(0.5, 1.0)  # workers that failed together retry apart
            failures += 1
            log.warning("%s: %s; retry %d/%d in %.1f s", url, reason, failures, policy.retries, delay)
            time.sleep(delay)

    def _open(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send a GET; map every failure to _Transient or to the package's errors."""
        request = urllib.request.Request(
            url, headers={"User-Agent": self.policy.user_agent, "Accept-Encoding": "identity", **headers}
        )
        try:
            return self._opener.open(request, timeout=self.policy.timeout_s)
        except urllib.error.HTTPError as exc:
            status, reason = exc.code, exc.reason
            content_range = exc.headers.get("Content-Range") if exc.headers else None
            exc.close()
            if status == 404:
                raise NoDataError(f"not in the archive: {url} (HTTP 404)") from None
            if status == 416:
                raise _Restart(f"HTTP 416, server range {content_range!r}") from None
            if status in (408, 429) or status >= 500:
                raise _Transient(f"HTTP {status} {reason}") from None
            raise DataError(f"cannot download {url}: HTTP {status} {reason}") from None
        except urllib.error.URLError as exc:
            raise _Transient(f"{exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _get_small(self, url: str) -> tuple[str, str]:
        """(text, final URL after redirects) of a small document such as an index page.

        The final URL matters: relative links on a page resolve against where the page
        really came from, which after a redirect to a mirror is not `url`.
        """
        with self._open(url, {}) as response:
            expected = _content_length(response.headers.get("Content-Length"))
            charset = response.headers.get_content_charset() or "utf-8"
            final_url = response.geturl()
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_LISTING_BYTES:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"connection lost after {size} bytes: {type(exc).__name__}: {exc}") from exc
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        if size > MAX_LISTING_BYTES:
            raise DataError(f"index page larger than {MAX_LISTING_BYTES} bytes: {url}")
        if expected is not None and size != expected:
            raise _Transient(f"short body: got {size} of {expected} bytes")
        return b"".join(chunks).decode(charset, errors="replace"), final_url

    def _download_once(self, url: str, name: str, dest: Path) -> None:
        """One attempt: continue or start `.<name>.part`, check its size, publish by rename.

        Runs under the file's lock, so an existing partial file belongs to a worker
        that died (or to an earlier attempt of ours) and may be continued.
        """
        part = dest.with_name(f".{dest.name}.part")
        try:
            offset = os.stat(part, follow_symlinks=False).st_size
        except FileNotFoundError:
            offset = 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        log.debug("GET %s%s", url, f" from byte {offset}" if offset else "")
        try:
            response = self._open(url, headers)
        except _Restart:
            self._remove(part)
            raise
        except (NoDataError, DataError):
            self._remove(part)
            raise
        with response:
            length = _content_length(response.headers.get("Content-Length"))
            if response.status == 206 and offset:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    self._remove(part)
                    raise _Restart(f"server resumed at byte {start}, not {offset}")
            else:
                if offset:
                    log.debug("%s: server ignored the range; starting again", url)
                offset, total = 0, length
            if total is not None and length is not None and offset + length != total:
                raise _Transient(f"inconsistent sizes: {offset} + {length} bytes != {total}")
            done = self._receive(response, dest, name, offset, total, append=offset > 0)
        if total is not None and done != total:
            raise _Transient(f"short body: got {done} of {total} bytes")
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise SiteError(f"cannot publish {dest}: {exc.strerror or exc}") from exc
        _fsync_dir(dest.parent)
        log.debug("cached %s (%d bytes)", dest, done)

    def _receive(
        self, response: http.client.HTTPResponse, dest: Path, name: str, offset: int, total: int | None, append: bool
    ) -> int:
        """Copy the body into dest's partial file; returns its size. Network errors are _Transient."""
        part = dest.with_name(f".{dest.name}.part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        done = offset
        try:
            fd = os.open(part, flags, 0o644)
        except OSError as exc:
            raise self._disk_error(dest, part, exc) from exc
        try:
            if self.progress is not None:
                self.progress(name, done, total)
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"connection lost after {done} bytes: {type(exc).__name__}: {exc}") from exc
                if not chunk:
                    break
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
            os.close(fd)
        return done

    def _disk_error(self, dest: Path, part: Path, exc: OSError) -> SiteError:
        """A local write failed: SiteError; a full disk also drops the partial file to free space."""
        if exc.errno in _DISK_FULL:
            self._remove(part)
            return SiteError(f"disk full while writing {dest} (partial file removed): {exc.strerror}")
        return SiteError(f"cannot write {part}: {exc.strerror or exc}")

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

