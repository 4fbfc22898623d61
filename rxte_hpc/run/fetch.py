"""`rxte-hpc fetch`: pre-stage, on a login node with network, exactly the archive files a run will read.

Each extractor declares what it reads for a row (`Extractor.archive_needs`),
so fetch never has its own idea of a backend's inputs: a run after fetch, with
the server unreachable, reads only files that are in the cache.
"""
from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, TextIO

from rxte_hpc.archive.remote import RemoteArchive
from rxte_hpc.core.archiveconfig import is_remote_root
from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import DataError, NoDataError, SiteError
from rxte_hpc.core.manifest import Manifest, ManifestRow
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.progress import ProgressLine
from rxte_hpc.extract import ExtractContext, Extractor, make_extractor
from rxte_hpc.run.results import FetchProblem, FetchResult, size_text

log = logging.getLogger(__name__)

#: ObsIDs fetched at once: enough to hide request latency, few enough to be polite.
FETCH_THREADS = 4
_STATES = ("fetched", "cached", "missing", "failed")


@dataclass(frozen=True)
class FetchOutcome:
    """What `fetch` did for one ObsID: state is fetched | cached | missing | failed."""

    obsid: str
    state: str
    files: int = 0
    nbytes: int = 0
    error: str = ""


class _Transfers:
    """Counts downloaded files and bytes per ObsID from the downloader's progress callback.

    The callback only fires for real downloads, so an ObsID without any call was
    served entirely from the cache. A resumed file's first call reports the bytes
    already on disk; they are not counted as fetched now.
    """

    def __init__(self, on_bytes: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._files: dict[str, set[str]] = {}
        self._bytes: dict[str, int] = {}
        self._total = 0
        self._on_bytes = on_bytes

    def __call__(self, name: str, done: int, total: int | None) -> None:
        obsdir = "/".join(name.split("/")[:3])
        with self._lock:
            delta = max(0, done - self._last.get(name, done))
            self._last[name] = done
            self._files.setdefault(obsdir, set()).add(name)
            self._bytes[obsdir] = self._bytes.get(obsdir, 0) + delta
            self._total += delta
        if delta:
            self._on_bytes()

    def of(self, obsdir: str) -> tuple[int, int]:
        with self._lock:
            return len(self._files.get(obsdir, ())), self._bytes.get(obsdir, 0)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total


class _Tally:
    """Counts per state and the progress line fed by finished ObsIDs and arriving bytes."""

    def __init__(self, total: int, stream: TextIO, show: bool) -> None:
        self.counts = dict.fromkeys(_STATES, 0)
        self.progress = ProgressLine(total, self._describe, prefix="fetch", stream=stream, show=show)
        self.transfers = _Transfers(self.progress.redraw)

    def _describe(self, done: int, elapsed: float) -> str:
        c = self.counts
        return (f"{done}/{self.progress.total} ObsIDs, {size_text(self.transfers.total_bytes)}, {c['fetched']} fetched, "
                f"{c['cached']} cached, {c['missing']} missing, {c['failed']} failed, {elapsed:.0f} s")

    def finished(self, outcome: FetchOutcome) -> None:
        self.counts[outcome.state] += 1
        self.progress.advance()


def _fetch_one(archive: RemoteArchive, extractor: Extractor, row: ManifestRow, transfers: _Transfers) -> FetchOutcome:
    obsid = row.obsid.text
    try:
        archive.stage(row, extractor.archive_needs(row))
    except NoDataError as exc:
        return FetchOutcome(obsid, "missing", error=str(exc))
    except (DataError, SiteError) as exc:
        return FetchOutcome(obsid, "failed", error=str(exc))
    files, nbytes = transfers.of(str(row.obsid.archive_dir(row.cycle)))
    return FetchOutcome(obsid, "fetched" if files else "cached", files, nbytes)


def fetch(config: Config, manifest: Manifest, task: int | None = None, *, stream: TextIO | None = None,
          progress: bool = False) -> FetchResult:
    """Pre-stage what the configured extractor reads for every ObsID (or one task's); returns what was staged.

    404s are reported as `missing` (those ObsIDs will be `no_data`); the result
    is not ok when any ObsID failed. A local archive root needs nothing.
    `progress` shows a line on `stream` (stderr by default) while it runs.
    """
    root = config.archive.root
    rows = manifest.rows_for_task(task) if task is not None else list(manifest.rows)
    if not is_remote_root(root):
        return FetchResult(len(rows), {}, 0, 0, None)
    paths = RunPaths(config.run_dir)
    cache = config.archive.cache or paths.cache_dir
    tally = _Tally(len(rows), stream if stream is not None else sys.stderr, progress)
    archive = RemoteArchive(root, cache, progress=tally.transfers, s3=config.archive.s3)
    extractor = make_extractor(ExtractContext(config, paths, archive))
    log.info("fetching what the %s backend reads for %d ObsIDs from %s into %s", config.extract.backend, len(rows),
             archive.location, archive.cache_dir)
    outcomes = _run_fetches(archive, extractor, rows, tally)
    archive.raise_if_root_empty()  # one line for a wrong root, not one "failed" per ObsID
    problems = tuple(FetchProblem(o.obsid, o.state, o.error) for o in outcomes if o.state in ("missing", "failed"))
    return FetchResult(len(rows), dict(tally.counts), tally.transfers.total_bytes, sum(o.files for o in outcomes),
                       archive.cache_dir, problems)


def _run_fetches(archive: RemoteArchive, extractor: Extractor, rows: list[ManifestRow], tally: _Tally) -> list[FetchOutcome]:
    """Fetch ObsIDs on a few threads; Ctrl-C cancels what has not started (partial files resume later)."""
    outcomes: list[FetchOutcome] = []
    pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="fetch")
    try:
        pending: set[Future[FetchOutcome]] = {
            pool.submit(_fetch_one, archive, extractor, row, tally.transfers) for row in rows
        }
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                outcome = fut.result()
                outcomes.append(outcome)
                tally.finished(outcome)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return sorted(outcomes, key=lambda o: o.obsid)
