"""A small HTTP archive server on 127.0.0.1 for tests: a directory tree, like HEASARC's /FTP.

It answers the way the real archive's Apache does where the downloader cares:
autoindex HTML pages for directories (relative links, directories ending in '/',
a parent link, sort links, an absolute link to another site), GET and HEAD,
`Range: bytes=N-` with 206/416, and Content-Length on every answer. Faults can be
injected per path, and every request is counted, so a test can say "503 twice,
then fine" or "exactly one download of this file".

    with serve_tree(root, Faults(fail_503={"/a/b.fits": 2})) as server:
        Downloader(server.url, cache).fetch("a/b.fits")
        assert server.requests["/a/b.fits"] == 3

The server binds 127.0.0.1 only, on a port the OS picks; handler sockets time out
after a few seconds, and `serve_tree` joins every handler thread on exit. It speaks
HTTP/1.0 (a connection per request) unless `keep_alive=True` asks for HTTP/1.1
persistent connections, as the real archive's Apache keeps them.
"""
from __future__ import annotations

import contextlib
import html
import http.server
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")
ENDLESS_LIMIT = 64 * 1024 * 1024
"""An endless body stops by itself after this many bytes (so a broken client cannot keep a test busy)."""


@dataclass(frozen=True)
class Faults:
    """What goes wrong, per URL path (as requested, e.g. '/AO1/P10000/x/FMI')."""

    fail_503: dict[str, int] = field(default_factory=dict)
    """path -> answer the first N requests of it with 503 Service Unavailable."""
    drop_after: dict[str, tuple[int, int]] = field(default_factory=dict)
    """path -> (K, M): for the first M GETs of it (503-answered ones count), send K body bytes, then close."""
    forbidden: frozenset[str] = frozenset()
    """paths answered with 403 Forbidden, every time."""
    extra_length: dict[str, int] = field(default_factory=dict)
    """path -> announce Content-Length larger by N than the body actually sent (always)."""
    ignore_range: frozenset[str] = frozenset()
    """paths whose Range header is ignored: a full 200 answer, as some mirrors do."""
    delay_s: dict[str, float] = field(default_factory=dict)
    """path -> sleep this long before sending the body (keeps concurrent clients overlapping)."""
    endless: frozenset[str] = frozenset()
    """paths answered 200 without a Content-Length and a body that does not end (until the client hangs up)."""


class Request(NamedTuple):
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    status: int


class ArchiveServer(http.server.ThreadingHTTPServer):
    """The server object; `url`, `requests` and `log` are what tests read."""

    daemon_threads = False  # server_close() joins handler threads: no socket outlives the test
    block_on_close = True

    def __init__(self, root: Path, faults: Faults, keep_alive: bool = False) -> None:
        self.root = Path(root).resolve()
        self.faults = faults
        self.keep_alive = keep_alive
        self.requests: Counter[str] = Counter()
        self.log: list[Request] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _KeepAliveHandler if keep_alive else _Handler)

    @property
    def url(self) -> str:
        """Base URL ending in '/', e.g. http://127.0.0.1:41234/."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def gets(self, path: str) -> list[Request]:
        """The GET requests of one path, in order."""
        with self._lock:
            return [r for r in self.log if r.method == "GET" and r.path == path]

    def _count(self, path: str) -> int:
        """Count a request of `path`; returns how many came before it (0 for the first)."""
        with self._lock:
            seen = self.requests[path]
            self.requests[path] += 1
            return seen

    def _record(self, entry: Request) -> None:
        with self._lock:
            self.log.append(entry)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer
    timeout = 5  # a client that stops talking cannot hold a handler thread forever
    server_version = "rxte-hpc-test-archive/1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        """Quiet: pytest shows the request log of a failing test through `server.log` instead."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        seen = self.server._count(path)
        faults = self.server.faults
        range_header = self.headers.get("Range")
        status = self._serve(path, seen, faults, range_header, body)
        self.server._record(Request(self.command, path, range_header, status))

    def _serve(self, path: str, seen: int, faults: Faults, range_header: str | None, body: bool) -> int:
        if path in faults.forbidden:
            return self._error(403, "Forbidden")
        if seen < faults.fail_503.get(path, 0):
            return self._error(503, "Service Unavailable")
        if path in faults.endless and body:
            return send_endless(self)
        local = self._local(path)
        if local is None or not local.exists():
            return self._error(404, "Not Found")
        if local.is_dir():
            if not path.endswith("/"):
                self.send_response(301)
                self.send_header("Location", path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 301
            return self._send(200, _index_page(path, local), "text/html; charset=utf-8", body)
        data = local.read_bytes()
        return self._send_file(path, data, seen, faults, range_header, body)

    def _send_file(
        self, path: str, data: bytes, seen: int, faults: Faults, range_header: str | None, body: bool
    ) -> int:
        start, status = 0, 200
        match = _RANGE_RE.match(range_header or "")
        if match and path not in faults.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            status = 206
        payload = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(payload) + faults.extra_length.get(path, 0)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return status
        time.sleep(faults.delay_s.get(path, 0.0))
        drop = faults.drop_after.get(path)
        if drop is not None and len(self.server.gets(path)) < drop[1]:
            payload = payload[: drop[0]]
        with contextlib.suppress(ConnectionError):
            self.wfile.write(payload)
            self.wfile.flush()
        self.close_connection = not self.server.keep_alive or len(payload) < len(data) - start
        return status

    def _send(self, status: int, payload: bytes, content_type: str, body: bool) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)
        return status

    def _error(self, status: int, reason: str) -> int:
        return self._send(status, f"<html><body><h1>{status} {reason}</h1></body></html>".encode(), "text/html", True)

    def _local(self, path: str) -> Path | None:
        """The file a URL path names, or None if it would leave the served root."""
        relative = urllib.parse.unquote(path).lstrip("/")
        candidate = (self.server.root / relative).resolve()
        if candidate != self.server.root and self.server.root not in candidate.parents:
            return None
        return candidate


class _KeepAliveHandler(_Handler):
    """HTTP/1.1 with persistent connections, as Apache serves HEASARC's archive (a cut body still closes)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; without this each waits 40 ms
    timeout = 2  # an idle kept connection holds a handler thread (joined at the end) this long at most


def send_endless(handler: http.server.BaseHTTPRequestHandler) -> int:
    """Answer 200 without a length, then zeros until the client hangs up (at most ENDLESS_LIMIT bytes)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    block = b"\0" * 65536
    with contextlib.suppress(OSError):
        for _ in range(ENDLESS_LIMIT // len(block)):
            handler.wfile.write(block)
    return 200


def _index_page(path: str, directory: Path) -> bytes:
    """An Apache-style autoindex page, with the links a parser must skip."""
    rows = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        name = entry.name + ("/" if entry.is_dir() else "")
        href = urllib.parse.quote(name)
        size = "-" if entry.is_dir() else str(entry.stat().st_size)
        rows.append(f'<tr><td><a href="{href}">{html.escape(name)}</a></td><td>{size}</td></tr>')
    title = html.escape(path)
    return (
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n"
        f"<html><head><title>Index of {title}</title></head><body>\n"
        f"<h1>Index of {title}</h1>\n<table>\n"
        '<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=S;O=A">Size</a></th></tr>\n'
        '<tr><td><a href="../">Parent Directory</a></td><td>-</td></tr>\n'
        + "\n".join(rows)
        + '\n</table>\n<address><a href="https://heasarc.gsfc.nasa.gov/">HEASARC</a></address>\n'
        "</body></html>\n"
    ).encode("utf-8")


@contextlib.contextmanager
def serve_tree(root: Path | str, faults: Faults | None = None, keep_alive: bool = False) -> Iterator[ArchiveServer]:
    """Serve `root` on 127.0.0.1 for the duration of the block; stop and join everything after.

    `keep_alive`: HTTP/1.1 persistent connections (else HTTP/1.0, one connection per request).
    """
    server = ArchiveServer(Path(root), faults or Faults(), keep_alive)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create files (relative POSIX paths -> contents) under root; returns root."""
    for relpath, data in files.items():
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def pseudo_random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes, so a misplaced byte shows up in a comparison."""
    return random.Random(seed).randbytes(size)
