"""A real S3 server on 127.0.0.1 for tests (moto's, from PyPI), and a proxy in front of it that injects faults.

`moto_server()` starts moto's standalone S3 server in a child process on a port
the OS picks, and stops it on exit. `fill_bucket()` uploads a directory tree
into a bucket through boto3, with the public-read policy HEASARC's bucket has
(moto, like AWS, answers unsigned requests with 403 without one).

`serve_proxy(upstream, Faults(...))` is what the client under test talks to: it
forwards every GET and HEAD to moto and answers as the network and S3 can go
wrong, per key path (`/bucket/key`), with the `Faults` of tests/kit/httpserver.py:
503 SlowDown for the first N requests, a body cut after K bytes, a 403, a delay,
a body without end. Every request is counted and logged, so a test can say "one
GET of this key" or "503 twice, then a ranged GET".

    with moto_server() as moto, serve_proxy(moto.url, Faults(fail_503={"/b/k": 2})) as proxy:
        ...archive.s3.endpoint_url = proxy.url...

Run as a script, this file is the child process: it prints the port and serves
until its stdin closes.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from httpserver import Faults, Request, send_endless

#: HEASARC's bucket and layout: s3://nasa-heasarc/xte/data/archive/AO<c>/P<prnb>/<obsid>/...
HEASARC_BUCKET = "nasa-heasarc"
HEASARC_PREFIX = "xte/data/archive"
#: Credentials for uploading into moto (it accepts any); the client under test reads anonymously.
UPLOAD_CREDENTIALS = {"aws_access_key_id": "rxte-hpc-tests", "aws_secret_access_key": "rxte-hpc-tests"}
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_FORBIDDEN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
              b"<Message>Access Denied</Message></Error>")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


@dataclass(frozen=True)
class MotoServer:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):  # noqa: ANN201 - boto3 has no types here
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **UPLOAD_CREDENTIALS)


@contextlib.contextmanager
def moto_server(timeout_s: float = 60.0) -> Iterator[MotoServer]:
    """moto's S3 server in a child process on 127.0.0.1; stopped (and waited for) on exit."""
    proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"moto's S3 server did not start: {line!r} {err[-2000:]}")
        yield MotoServer(int(line))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def public_read_policy(bucket: str) -> str:
    """The policy that lets anybody list and read the bucket, as HEASARC's nasa-heasarc allows."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]})


def fill_bucket(moto: MotoServer, bucket: str, files: dict[str, bytes | Path], public: bool = True) -> None:
    """Create `bucket` and upload `files` (key -> bytes or a local file), a few at a time."""
    client = moto.client()
    client.create_bucket(Bucket=bucket)
    if public:
        client.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))

    def put(item: tuple[str, bytes | Path]) -> None:
        key, data = item
        client.put_object(Bucket=bucket, Key=key, Body=data.read_bytes() if isinstance(data, Path) else data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, files.items()))


def tree_files(root: Path, prefix: str, only: tuple[str, ...] = ("AO",)) -> dict[str, Path]:
    """Keys `<prefix>/<relative path>` for the files under `root` whose first folder starts with one of `only`.

    The default takes an archive's `AO*` trees (not a simulation's prepared/ or tables); `only=()` takes all.
    """
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and (not only or rel.parts[0].startswith(only)):
            out[f"{prefix.strip('/')}/{rel.as_posix()}"] = path
    return out


class ProxyServer(http.server.ThreadingHTTPServer):
    """The fault-injecting proxy; `url`, `requests` and `log` are what tests read."""

    daemon_threads = False  # server_close() joins handler threads: no socket outlives the test
    block_on_close = True

    def __init__(self, upstream: str, faults: Faults) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults = faults
        self.requests: Counter[str] = Counter()
        self.log: list[Request] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, path: str) -> list[Request]:
        """The GET requests of one key path (`/bucket/key`), in order."""
        with self._lock:
            return [r for r in self.log if r.method == "GET" and r.path == path]

    def lists(self, bucket: str) -> list[str]:
        """The query strings of the bucket listings (ListObjectsV2 calls) seen, in order.

        A listing is logged with method "LIST" and its query string where a GET keeps its Range header.
        """
        with self._lock:
            return [r.range or "" for r in self.log if r.method == "LIST" and r.path == f"/{bucket}"]

    def _count(self, path: str) -> int:
        with self._lock:
            seen = self.requests[path]
            self.requests[path] += 1
            return seen

    def _record(self, entry: Request) -> None:
        with self._lock:
            self.log.append(entry)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: ProxyServer
    timeout = 10
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        """Quiet: a failing test reads `proxy.log` instead."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer()

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        faults = self.server.faults
        listing = self.command == "GET" and "list-type=2" in split.query
        seen = self.server._count(path)

        def record(status: int) -> None:  # before the answer is sent: a client that has it finds it logged
            method = "LIST" if listing else self.command
            self.server._record(Request(method, path, split.query if listing else self.headers.get("Range"), status))

        if path in faults.forbidden:
            record(403)
            self._error(403, "Forbidden", _FORBIDDEN)
        elif seen < faults.fail_503.get(path, 0):
            record(503)
            self._error(503, "Slow Down", _SLOWDOWN)
        elif path in faults.endless and self.command == "GET":
            record(200)
            send_endless(self)
        else:
            status, headers, body = self._upstream()
            record(status)
            self._send_upstream(path, faults, status, headers, body)

    def _upstream(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """The request as moto answers it."""
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _send_upstream(self, path: str, faults: Faults, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) + faults.extra_length.get(path, 0)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        time.sleep(faults.delay_s.get(path, 0.0))
        drop = faults.drop_after.get(path)
        cut = drop is not None and status in (200, 206) and len(self.server.gets(path)) <= drop[1]
        with contextlib.suppress(ConnectionError):
            self.wfile.write(body[: drop[0]] if cut and drop is not None else body)
            self.wfile.flush()
            if cut:
                time.sleep(0.3)  # the bytes arrive, then the connection is lost (not both in one packet)

    def _error(self, status: int, reason: str, payload: bytes) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(payload)


@contextlib.contextmanager
def serve_proxy(upstream: str, faults: Faults | None = None) -> Iterator[ProxyServer]:
    """The fault-injecting proxy in front of `upstream` for the duration of the block; stopped and joined after."""
    server = ProxyServer(upstream, faults or Faults())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _serve_until_stdin_closes() -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    _serve_until_stdin_closes()
