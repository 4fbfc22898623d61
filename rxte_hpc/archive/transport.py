"""One request to a remote archive through fsspec: a body from a byte offset, a directory listing, what a failure means.

HEASARC serves the same RXTE archive paths (`AO<c>/P<prnb>/<obsid>/...`) over
HTTPS (`https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/`) and from its AWS
Open Data bucket (`s3://nasa-heasarc/xte/data/archive/`, see `archive/s3.py`).
Both go through fsspec: `s3fs` for S3, fsspec's HTTP filesystem (an aiohttp
session on fsspec's I/O loop) for HTTPS. A transport only talks to the network;
the cache, locks, resume, retries and size caps are `download.Downloader`'s, one
implementation for both.

Failures are translated here, once, into what the downloader acts on:

* a missing file (HTTP 404, S3 NoSuchKey): `NoDataError` (the ObsID is `no_data`);
* a refusal (403 and other 4xx): `DataError`;
* a host name that does not resolve, or a refused connection: `SiteError` at
  once. Retrying cannot help, and an offline node would otherwise spend minutes
  per ObsID finding out five times per file;
* 5xx, S3's SlowDown, time-outs and lost connections: `Transient`, which the
  downloader retries with backoff;
* a range the server cannot serve (416): `Restart`, start the file again.

fsspec and aiohttp are imported when a remote archive is opened, never at
import time: a run on a mounted archive does not load them.
"""
from __future__ import annotations

import asyncio
import re
import socket
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, Awaitable, Callable

from rxte_hpc.archive.listing import MAX_LISTING_BYTES, parse_index, validate_base_url
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError
from rxte_hpc.core.safepath import safe_relpath

READ_SIZE = 4 * 1024 * 1024
"""Bytes asked of a body per read: one trip to fsspec's I/O loop per 4 MiB (fewer trips, faster large files)."""

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class Transient(Exception):
    """A failure worth another attempt (time-out, lost connection, 5xx, SlowDown); never leaves the archive package."""


class Restart(Transient):
    """The partial file cannot be continued (the server refused the range): start again from byte zero."""


def missing_extra(what: str, exc: ImportError) -> UsageError:
    """The one-line error for a remote archive whose client library is not installed."""
    return UsageError(f"archive.root {what} needs {exc.name or 'a package that is missing'}: "
                      "pip install 'rxte-hpc[s3]' (see the README, 'Outside SciServer')")


def parse_content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, whole size or None) of a partial answer; Restart when it is unusable."""
    match = _CONTENT_RANGE_RE.match(value or "")
    if not match:
        raise Restart(f"unusable Content-Range {value!r}")
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _innermost(exc: BaseException) -> BaseException:
    """The lowest error under a client library's wrappers (botocore keeps it in `kwargs['error']`, aiohttp in `os_error`)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "os_error", None)
        if inner is None:
            kwargs = getattr(exc, "kwargs", None)
            inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        if inner is None:
            inner = exc.__cause__
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def network_failure(exc: BaseException, url: str) -> Exception:
    """A request that got no answer: SiteError at once when the host cannot be reached at all, else Transient."""
    root = _innermost(exc)
    if isinstance(root, socket.gaierror):
        return SiteError(f"cannot reach {url}: the host name does not resolve ({root.strerror or root}); "
                         "no network here? run `rxte-hpc fetch` where there is", url=url, cause=exc)
    if isinstance(root, ConnectionRefusedError):
        return SiteError(f"cannot reach {url}: connection refused", url=url, cause=exc)
    text = " ".join(str(root).split())[:200]
    return Transient(f"{type(root).__name__}: {text}" if text else type(root).__name__)


async def read_up_to(read: Callable[[int], Awaitable[bytes]], size: int) -> tuple[bytes, Exception | None]:
    """Up to `size` bytes from an async stream, fewer only at its end (one trip to the I/O loop, not one per packet).

    A connection lost after some bytes arrived returns them with the error (the
    body raises it at the next read), so a resumed download continues from every
    byte that arrived; lost before any, the error is raised.
    """
    chunks: list[bytes] = []
    got = 0
    while got < size:
        try:
            chunk = await read(size - got)
        except Exception as exc:
            if not chunks:
                raise
            return b"".join(chunks), exc
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks), None


class Body(ABC):
    """One answer being read: where it starts in the file, how long it says it is, and the file's whole size.

    `length` is the answer's own announced length (Content-Length), `total` the
    size of the whole file when the server said it (a 206's Content-Range, or a
    200's length); either may be None. The first READ_SIZE bytes come with the
    answer (`first`), so a small file costs one trip to fsspec's I/O loop;
    `ended` says the answer is already read to its end and its connection let go,
    `lost` is the (translated) error that cut it after `first`.
    """

    def __init__(self, url: str, start: int, length: int | None, total: int | None, first: bytes, ended: bool,
                 lost: Exception | None = None) -> None:
        self.url = url
        self.start = start
        self.length = length
        self.total = total
        self._first = first
        self._ended = ended
        self._lost = lost
        self._closed = ended or lost is not None

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end); b"" at the end; Transient when the connection is lost."""
        if self._first:
            chunk, self._first = self._first, b""
            return chunk
        if self._lost is not None:
            raise self._lost
        if self._ended:
            return b""
        chunk, self._lost = self._more(size)
        self._ended = not chunk
        return chunk

    def close(self) -> None:
        """Let go of the connection (an answer not read to its end is dropped, not drained)."""
        if not self._closed:
            self._closed = True
            self._release(self._ended)

    @abstractmethod
    def _more(self, size: int) -> tuple[bytes, Exception | None]:
        """The next bytes from the network (one trip to the I/O loop), and the error that cut them short."""

    @abstractmethod
    def _release(self, ended: bool) -> None:
        """Give the connection back (ended) or close it (not ended)."""

    def __enter__(self) -> "Body":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Transport(ABC):
    """Single requests to one remote archive root; no retries, no cache (the downloader's job)."""

    #: The root as given, ending in '/', for messages, records and the manifest.
    location: str
    #: Whether `list_tree` lists a whole directory tree in one (paginated) request; otherwise it is walked.
    lists_trees: bool = False

    def url_for(self, relpath: str | PurePosixPath, directory: bool = False) -> str:
        """The URL of an archive path (each component percent-encoded for HTTP)."""
        rel = safe_relpath(relpath)
        quoted = "/".join(urllib.parse.quote(part, safe="") for part in rel.parts)
        return self.location + quoted + ("/" if directory else "")

    @abstractmethod
    def open(self, relpath: PurePosixPath, offset: int) -> Body:
        """Ask for the file from byte `offset` on (the whole file when 0)."""

    @abstractmethod
    def list_dir(self, relpath: PurePosixPath) -> tuple[list[str], list[str]]:
        """(files, subdirectories) directly in a directory; NoDataError when it does not exist."""

    def list_tree(self, relpath: PurePosixPath) -> list[PurePosixPath]:
        """Every file below a directory, relative to it (transports with `lists_trees` only)."""
        raise NotImplementedError(f"{type(self).__name__} lists one directory at a time")

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether the root itself holds nothing (a wrong root: HEASARC moved `rxte/` to `xte/` once)."""


class _HttpBody(Body):
    def __init__(self, transport: "HttpTransport", url: str, response: Any, start: int, length: int | None,
                 total: int | None, first: bytes, ended: bool, lost: Exception | None) -> None:
        super().__init__(url, start, length, total, first, ended, lost)
        self._transport = transport
        self._response = response

    def _more(self, size: int) -> tuple[bytes, Exception | None]:
        chunk, lost = self._transport.call(self.url, read_up_to, self._response.content.read, size)
        return chunk, None if lost is None else self._transport.translate(lost, self.url)

    def _release(self, ended: bool) -> None:
        self._transport.call(self.url, _finish, self._response, ended)


async def _finish(response: Any, ended: bool) -> None:
    """Give a read-out connection back to the pool, close one whose answer was not read to its end."""
    if ended:
        response.release()
    else:
        response.close()


class _HttpStatus(Exception):
    """An HTTP error answer, raised on fsspec's loop and translated on the caller's side."""

    def __init__(self, status: int, reason: str, content_range: str | None) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.content_range = content_range


class HttpTransport(Transport):
    """HEASARC's HTTPS archive (or any mirror of its tree) through fsspec's HTTP filesystem.

    fsspec gives the aiohttp session (time-outs, connection reuse: one TLS
    handshake for many files), its I/O loop and URL encoding; the proxy is the
    one the environment names (https_proxy, no_proxy), as for any HTTP tool.
    fsspec's file objects are not used for bodies: `open()` asks HEAD first and
    reports any HEAD failure, a 503 included, as a missing file, and its ranged
    reads hide whether the server honoured the range, which resuming a partial
    file must know. So one GET per file runs on fsspec's session here, and the
    answer's status and headers are read before a byte is kept.
    """

    def __init__(self, base_url: str, timeout_s: float, user_agent: str) -> None:
        self.location = validate_base_url(base_url)
        try:
            import aiohttp
            import fsspec
            from fsspec.asyn import sync
        except ImportError as exc:
            raise missing_extra(self.location, exc) from None
        self._sync = sync
        self._network_errors = (OSError, asyncio.TimeoutError, aiohttp.ClientError)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        # .gz files must arrive as stored. The proxy is looked up once: aiohttp's trust_env would read the
        # environment and ~/.netrc again for every request (0.4 ms each, more than the rest of a small file).
        self._proxy = _proxy_for(self.location)
        self._fs = fsspec.filesystem(
            "http", skip_instance_cache=True,
            # read_bufsize: aiohttp's 64 KiB default costs a quarter of the throughput of a large file
            client_kwargs={"timeout": timeout, "auto_decompress": False, "read_bufsize": 1024 * 1024,
                           "headers": {"User-Agent": user_agent, "Accept-Encoding": "identity"}},
        )

    def __repr__(self) -> str:
        return f"HttpTransport({self.location!r})"

    def call(self, url: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run a coroutine function on fsspec's loop; translate what went wrong."""
        try:
            return self._sync(self._fs.loop, func, *args)
        except (_HttpStatus, *self._network_errors) as exc:
            raise self.translate(exc, url) from exc

    def translate(self, exc: Exception, url: str) -> Exception:
        """The package's error for what aiohttp or the server said (see the module docstring)."""
        if isinstance(exc, _HttpStatus):
            return self._status_error(url, exc)
        if isinstance(exc, self._network_errors):
            return network_failure(exc, url)
        return exc

    @staticmethod
    def _status_error(url: str, exc: _HttpStatus) -> Exception:
        if exc.status == 404:
            return NoDataError(f"not in the archive: {url} (HTTP 404)", url=url)
        if exc.status == 416:
            return Restart(f"HTTP 416, server range {exc.content_range!r}")
        if exc.status in (408, 429) or exc.status >= 500:
            return Transient(f"HTTP {exc.status} {exc.reason}")
        return DataError(f"cannot download {url}: HTTP {exc.status} {exc.reason}", url=url)

    async def _get(self, url: str, headers: dict[str, str], first: int) -> tuple[Any, bytes, bool, Exception | None]:
        """GET `url`: the answer, its first `first` bytes, whether that was all (connection let go), what cut it."""
        session = await self._fs.set_session()
        response = await session.get(self._fs.encode_url(url), headers=headers, proxy=self._proxy)
        if response.status >= 400:
            error = _HttpStatus(response.status, response.reason or "", response.headers.get("Content-Range"))
            response.release()
            raise error
        try:
            data, lost = await read_up_to(response.content.read, first)
        except BaseException:
            response.close()
            raise
        if lost is not None:
            response.close()
            return response, data, False, lost
        ended = len(data) < first or response.content.at_eof()
        if ended:
            response.release()
        return response, data, ended, None

    def open(self, relpath: PurePosixPath, offset: int) -> Body:
        url = self.url_for(relpath)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response, first, ended, lost = self.call(url, self._get, url, headers, READ_SIZE)
        try:
            length = _length(response.headers.get("Content-Length"))
            if response.status == 206:
                start, total = parse_content_range(response.headers.get("Content-Range"))
            else:
                start, total = 0, length
        except Transient:
            if not ended and lost is None:
                self.call(url, _finish, response, False)
            raise
        return _HttpBody(self, url, response, start, length, total, first, ended,
                         None if lost is None else self.translate(lost, url))

    def list_dir(self, relpath: PurePosixPath) -> tuple[list[str], list[str]]:
        return self._index(self.url_for(relpath, directory=True))

    def _index(self, url: str) -> tuple[list[str], list[str]]:
        """(files, subdirectories) of an autoindex page, read up to MAX_LISTING_BYTES."""
        response, page, ended, lost = self.call(url, self._get, url, {}, MAX_LISTING_BYTES + 1)
        if lost is not None:
            raise self.translate(lost, url)
        if not ended:
            self.call(url, _finish, response, False)
        if len(page) > MAX_LISTING_BYTES:
            raise DataError(f"index page larger than {MAX_LISTING_BYTES} bytes: {url}", url=url)
        # after a redirect, links resolve against where the page came from
        return parse_index(page.decode(response.charset or "utf-8", errors="replace"), str(response.url))

    def is_empty(self) -> bool:
        try:
            files, subdirs = self._index(self.location)
        except NoDataError:
            return True
        return not files and not subdirs


def _proxy_for(url: str) -> str | None:
    """The proxy urllib would use for `url` (https_proxy, http_proxy, no_proxy from the environment), or None."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme)


def _length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise Transient(f"bad Content-Length {value[:40]!r}") from None
    if length < 0:
        raise Transient(f"bad Content-Length {value[:40]!r}")
    return length
