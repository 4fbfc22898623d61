"""A small TAP service on 127.0.0.1 for tests: answers like HEASARC's, on rows the test gives it.

The planner's client is the real one (pyvo), so this server speaks enough of
TAP 1.1 for pyvo: `/sync` (POST and GET, `REQUEST=doQuery`, `LANG=ADQL`,
`QUERY`, `MAXREC`) answered with a VOTable built by astropy.io.votable, a
`QUERY_STATUS` INFO of `OK` before the rows and `OVERFLOW` after them when
MAXREC cut the result (as real services do), plus minimal `/capabilities`,
`/availability` and `/tables` documents.

It evaluates the parts of the query the planner writes (the cone, the
exposure cut, the time range, `ORDER BY`), parsing the numbers back out of
the ADQL with regular expressions, so the planner's filters are exercised for
real rather than assumed. Every request is recorded, so a test can assert the
exact ADQL and MAXREC that reached the service.

    with serve_tap(rows) as tap:
        TAPService(tap.url).run_sync(adql, maxrec=10)
        assert tap.queries[-1].maxrec == 10
"""
from __future__ import annotations

import contextlib
import http.server
import io
import math
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from astropy.io.votable import from_table
from astropy.io.votable.tree import Info
from astropy.table import Table

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_CONE_RE = re.compile(rf"circle\(\s*'ICRS'\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\)", re.I)
_EXPOSURE_RE = re.compile(rf"\bexposure\s*>\s*{_NUM}", re.I)
_TIME_RE = re.compile(rf"\btime\s+BETWEEN\s+{_NUM}\s+AND\s+{_NUM}", re.I)
_ORDER_RE = re.compile(r"ORDER\s+BY\s+(?:\w+\.)?(\w+)", re.I)

_CAPABILITIES = """<?xml version="1.0" encoding="UTF-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
    xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">
  <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="base">{url}</accessURL></interface>
    <language><name>ADQL</name><version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version></language>
    <outputFormat><mime>application/x-votable+xml</mime></outputFormat>
  </capability>
</vosi:capabilities>
"""

_TABLES = """<?xml version="1.0" encoding="UTF-8"?>
<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">
  <schema><name>public</name><table><name>xtemaster</name>{columns}</table></schema>
</vosi:tableset>
"""

_AVAILABILITY = """<?xml version="1.0" encoding="UTF-8"?>
<avl:availability xmlns:avl="http://www.ivoa.net/xml/VOSIAvailability/v1.0"><avl:available>true</avl:available></avl:availability>
"""


@dataclass(frozen=True)
class TapQuery:
    """One `/sync` request as the service received it."""

    method: str
    request: str | None
    lang: str | None
    query: str
    maxrec: int | None


class FakeTap:
    """The service's state: its rows, how it misbehaves, and what it was asked."""

    def __init__(self, rows: Table, *, error: str | None = None, ignore_maxrec: bool = False) -> None:
        self.rows = rows
        self.error = error
        self.ignore_maxrec = ignore_maxrec
        self.queries: list[TapQuery] = []
        self.paths: list[str] = []
        self.url = ""
        self._lock = threading.Lock()

    def record(self, path: str, query: TapQuery | None) -> None:
        with self._lock:
            self.paths.append(path)
            if query is not None:
                self.queries.append(query)

    def evaluate(self, adql: str) -> Table:
        """The rows the query selects: cone, exposure cut, time range, order."""
        t = self.rows
        keep = np.ones(len(t), dtype=bool)
        cone = _CONE_RE.search(adql)
        if cone:
            ra0, dec0, radius = (math.radians(float(v)) for v in cone.groups())
            ra, dec = np.radians(np.asarray(t["ra"], float)), np.radians(np.asarray(t["dec"], float))
            cos_sep = np.sin(dec) * math.sin(dec0) + np.cos(dec) * math.cos(dec0) * np.cos(ra - ra0)
            keep &= cos_sep >= math.cos(radius)
        exposure = _EXPOSURE_RE.search(adql)
        if exposure:
            keep &= np.asarray(t["exposure"], float) > float(exposure.group(1))
        time = _TIME_RE.search(adql)
        if time:
            lo, hi = float(time.group(1)), float(time.group(2))
            tt = np.asarray(t["time"], float)
            keep &= (tt >= lo) & (tt <= hi)
        out = t[keep]
        order = _ORDER_RE.search(adql)
        if order and order.group(1) in out.colnames:
            out = out[np.argsort(np.asarray(out[order.group(1)]), kind="stable")]
        return out

    def answer(self, adql: str, maxrec: int | None) -> bytes:
        """The VOTable document for a query (ERROR, OK, or OK + OVERFLOW after the rows)."""
        if self.error is not None:
            return _error_votable(self.error)
        result = self.evaluate(adql)
        overflow = maxrec is not None and len(result) > maxrec
        if overflow and not self.ignore_maxrec:
            result = result[:maxrec]
        votable = from_table(result)
        votable.resources[0].type = "results"
        votable.resources[0].infos.append(Info(name="QUERY_STATUS", value="OK"))
        buf = io.BytesIO()
        votable.to_xml(buf)
        text = buf.getvalue().decode()
        if overflow:
            text = text.replace("</RESOURCE>", '<INFO name="QUERY_STATUS" value="OVERFLOW"/>\n</RESOURCE>', 1)
        return text.encode()


def _error_votable(message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
        f' <RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">{message}</INFO></RESOURCE>\n'
        "</VOTABLE>\n"
    ).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    timeout = 5

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        """Silent: test output stays readable."""

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        self._route(parsed.path, urllib.parse.parse_qs(parsed.query), "GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        parsed = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(parsed.query)
        params.update(urllib.parse.parse_qs(body))
        self._route(parsed.path, params, "POST")

    def _route(self, path: str, params: dict[str, list[str]], method: str) -> None:
        tap = self.server.tap
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name == "sync":
            get = {k.upper(): v[-1] for k, v in params.items()}
            maxrec = int(get["MAXREC"]) if "MAXREC" in get else None
            query = TapQuery(method, get.get("REQUEST"), get.get("LANG"), get.get("QUERY", ""), maxrec)
            tap.record(path, query)
            self._send(200, "application/x-votable+xml", tap.answer(query.query, maxrec))
            return
        tap.record(path, None)
        if name == "capabilities":
            self._send(200, "text/xml", _CAPABILITIES.format(url=tap.url).encode())
        elif name == "availability":
            self._send(200, "text/xml", _AVAILABILITY.encode())
        elif name == "tables":
            columns = "".join(f"<column><name>{c}</name></column>" for c in tap.rows.colnames)
            self._send(200, "text/xml", _TABLES.format(columns=columns).encode())
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, tap: FakeTap) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tap = tap


@contextlib.contextmanager
def serve_tap(rows: Table, **options: object) -> Iterator[FakeTap]:
    """Run a FakeTap on 127.0.0.1 (port chosen by the OS) for the duration of the block."""
    tap = FakeTap(rows, **options)  # type: ignore[arg-type]
    server = _Server(tap)
    host, port = server.server_address[:2]
    tap.url = f"http://{host}:{port}/tap"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-tap", daemon=True)
    thread.start()
    try:
        yield tap
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def xtemaster_rows(entries: list[tuple]) -> Table:
    """An xtemaster-like table from (target_name, cycle, obsid, time, exposure, ra, dec) tuples."""
    names = ("target_name", "cycle", "prnb", "obsid", "time", "exposure", "ra", "dec")
    data = [(n, c, int(o[:5]), o, t, e, r, d) for (n, c, o, t, e, r, d) in entries]
    return Table(rows=data, names=names, dtype=("U32", "i8", "i8", "U20", "f8", "f8", "f8", "f8"))
