"""The RXTE archive over HTTP(S) through a local cache, and `rxte-hpc fetch` to pre-stage it.

Outside SciServer the archive is only reachable as
`https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/AO<c>/P<prnb>/<obsid>/...`
(or a mirror). `RemoteArchive` gives the extractors the same `Archive` interface
as a mounted mirror and downloads only what each one asks for: one light curve
(stdprod), the filter file and Standard-2 files (native), the whole ObsID
directory (heasoft). Files go through `download.Downloader`, so many workers can
share one cache and only one of them downloads a given file.

Compute nodes often have no network: `fetch_command` pre-stages on a login node
what the configured backend will read, after which a run makes no requests at
all (cached files, saved directory listings and complete trees are reused; the
archive's files never change, so nothing is revalidated).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, TextIO, TypeVar

from rxte_hpc.archive.local import Archive
from rxte_hpc.core.config import Config
from rxte_hpc.archive.download import COMPLETE_MARKER, Downloader, DownloadPolicy, ProgressCallback, safe_relpath, validate_base_url
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import Manifest, ManifestRow
from rxte_hpc.core.paths import RunPaths

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_POLICY = DownloadPolicy()
"""Retry and timeout policy of every RemoteArchive that is not given one (tests make it quick)."""

UNREACHABLE_AFTER = 3
"""Consecutive site failures after which one RemoteArchive stops asking the network.

Each failure has already used up the downloader's retries (about half a minute);
when HEASARC or the route to it is down, a task of many ObsIDs would otherwise
spend that much per ObsID only to record the same `site` failure. The ObsIDs not
tried are recorded as `site` failures too, so `rerun` picks them up later.
"""

FETCH_THREADS = 4
"""ObsIDs `fetch` downloads at once: enough to hide request latency, few enough to be polite."""

LISTINGS_DIR = ".listings"
"""Saved directory listings under the cache root, so a run without network can still list `pca/`."""


def is_remote_root(root: str) -> bool:
    """Whether an `archive.root` value names an HTTP(S) archive rather than a directory."""
    return root.startswith(("http://", "https://"))


class RemoteArchive(Archive):
    """An archive whose files are downloaded into a cache on first use.

    404 is `NoDataError` (the worker records `no_data` with the URL), other 4xx
    `DataError`, network and local-disk trouble `SiteError` (`failed`, site).
    Safe to share between threads; separate processes share the cache through
    the downloader's file locks.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        policy: DownloadPolicy | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        try:
            url = validate_base_url(base_url)
        except UsageError as exc:
            raise UsageError(f"archive.root: {exc}") from None
        self.downloader = Downloader(url, Path(cache_dir), policy if policy is not None else DEFAULT_POLICY, progress)
        self.location = url
        self.cache_dir = self.downloader.cache_dir
        self._lock = threading.Lock()
        self._site_failures = 0
        self._last_site_error = ""

    def __repr__(self) -> str:
        return f"RemoteArchive({self.location!r}, {str(self.cache_dir)!r})"

    # -- the Archive interface ---------------------------------------------------------

    def file(self, row: ManifestRow, relpath: str) -> Path:
        """The cached copy of `<obsid dir>/<relpath>`, downloaded if needed (only this file)."""
        rel = self._rel(row, relpath)
        return self._guarded(lambda: self.downloader.fetch(rel))

    def listdir(self, row: ManifestRow, subdir: str) -> list[str]:
        """File names (not subdirectories) in `<obsid dir>/<subdir>`; [] when the server says 404.

        Answered without a request when the tree is complete in the cache or the
        listing was saved before (by `fetch` or an earlier worker): the archive never
        changes, and a node without network must still find `pca/FS4a_*`.
        """
        rel = self._rel(row, subdir)
        local = self._local_listing(rel)
        if local is not None:
            return local
        try:
            files, _ = self._guarded(lambda: self.downloader.list_dir(rel))
        except NoDataError:
            log.debug("%s: no such directory in the archive", rel)
            return []
        self._save_listing(rel, files)
        return files

    def obsid_dir(self, row: ManifestRow) -> Path:
        """The whole ObsID directory mirrored into the cache (what pcaprepobsid reads)."""
        rel = safe_relpath(row.obsid.archive_dir(row.cycle))
        return self._guarded(lambda: self.downloader.fetch_tree(rel))

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _rel(row: ManifestRow, relpath: str) -> PurePosixPath:
        return safe_relpath(f"{row.obsid.archive_dir(row.cycle)}/{relpath}")

    def _guarded(self, call: Callable[[], _T]) -> _T:
        """Run one archive access, giving up at once after UNREACHABLE_AFTER site failures in a row.

        Any answer from the server (a file, a 404, a 403) shows it is reachable
        and resets the count.
        """
        with self._lock:
            if self._site_failures >= UNREACHABLE_AFTER:
                raise SiteError(
                    f"not tried: the last {self._site_failures} requests to {self.location} failed "
                    f"(last: {self._last_site_error}); retry later with `rxte-hpc rerun` or `rxte-hpc fetch`"
                )
        try:
            result = call()
        except SiteError as exc:
            with self._lock:
                self._site_failures += 1
                self._last_site_error = " ".join(str(exc).split())[:200]
            raise
        except (NoDataError, DataError):
            self._reset()
            raise
        self._reset()
        return result

    def _reset(self) -> None:
        with self._lock:
            self._site_failures = 0

    def _listing_path(self, rel: PurePosixPath) -> Path:
        return self.cache_dir.joinpath(LISTINGS_DIR, *rel.parent.parts, f"{rel.name}.json")

    def _local_listing(self, rel: PurePosixPath) -> list[str] | None:
        """Files of a directory from the cache alone, or None when the cache cannot tell."""
        local = self.cache_dir.joinpath(*rel.parts)
        node = self.cache_dir
        complete = (node / COMPLETE_MARKER).is_file()
        for part in rel.parts:
            node = node / part
            complete = complete or (node / COMPLETE_MARKER).is_file()
        if complete:
            if not local.is_dir():
                return []
            return sorted(e.name for e in os.scandir(local) if e.is_file() and not e.name.startswith("."))
        saved = self._listing_path(rel)
        try:
            data = json.loads(saved.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable saved listing, asking the server again (%s)", saved, exc)
            return None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            log.warning("%s: malformed saved listing, asking the server again", saved)
            return None
        return sorted(files)

    def _save_listing(self, rel: PurePosixPath, files: list[str]) -> None:
        """Keep a listing for later runs without network; failing to is only a lost shortcut."""
        target = self._listing_path(rel)
        text = json.dumps({"url": self.downloader.url_for(rel, directory=True), "files": sorted(files)}, indent=1)
        try:
            write_atomic(target, (text + "\n").encode(), durable=False)
        except SiteError as exc:
            log.warning("cannot save the listing of %s: %s", rel, exc)


# ----------------------------------------------------------------------------- fetch


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


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


class _FetchProgress:
    """A one-line bar on a terminal (redrawn as bytes arrive); one plain line per ObsID elsewhere."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.counts = {"fetched": 0, "cached": 0, "missing": 0, "failed": 0}
        self.done = 0
        self.transfers = _Transfers(self._redraw)
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self.t0 = time.monotonic()

    def finished(self, outcome: FetchOutcome) -> None:
        with self._lock:
            self.done += 1
            self.counts[outcome.state] += 1
            if self.tty:
                self._draw(force=True)
                if self.done == self.total:
                    self.stream.write("\n")
            else:
                detail = f" ({outcome.files} files, {_size(outcome.nbytes)})" if outcome.state == "fetched" else ""
                if outcome.error:
                    detail = f": {outcome.error}"
                self.stream.write(f"fetch: {self.done}/{self.total} {outcome.obsid} {outcome.state}{detail}\n")
            self.stream.flush()

    def _redraw(self) -> None:
        if self.tty:
            with self._lock:
                self._draw(force=False)

    def _draw(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        width = 30
        filled = int(width * self.done / max(1, self.total))
        c = self.counts
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} ObsIDs, "
            f"{_size(self.transfers.total_bytes)}, {c['fetched']} fetched, {c['cached']} cached, "
            f"{c['missing']} missing, {c['failed']} failed, {now - self.t0:.0f} s"
        )
        self.stream.flush()


def _stage(archive: RemoteArchive, backend: str, band: str, row: ManifestRow) -> None:
    """Download what `backend` will read for one ObsID (the same calls the extractor makes)."""
    if backend == "heasoft":
        archive.obsid_dir(row)
    elif backend == "native":
        archive.file(row, f"stdprod/{row.obsid.filter_file_name()}")
        for name in archive.listdir(row, "pca"):
            if name.startswith("FS4a_"):
                archive.file(row, f"pca/{name}")
    elif backend == "stdprod":
        archive.file(row, f"stdprod/{row.obsid.stdprod_lc_name(band)}")
    else:  # the config validates the backend; a new one must say here what it reads
        raise UsageError(f"fetch does not know what the {backend!r} backend reads")


def _fetch_one(archive: RemoteArchive, config: Config, row: ManifestRow, transfers: _Transfers) -> FetchOutcome:
    obsid = row.obsid.text
    try:
        _stage(archive, config.extract.backend, config.extract.stdprod_band, row)
    except NoDataError as exc:
        return FetchOutcome(obsid, "missing", error=str(exc))
    except (DataError, SiteError) as exc:
        return FetchOutcome(obsid, "failed", error=str(exc))
    files, nbytes = transfers.of(str(row.obsid.archive_dir(row.cycle)))
    return FetchOutcome(obsid, "fetched" if files else "cached", files, nbytes)


def fetch_command(
    config: Config, manifest: Manifest, task: int | None = None, *, stream: TextIO | None = None
) -> int:
    """`rxte-hpc fetch`: pre-stage what the backend needs for every ObsID (or one task's).

    Meant for a login node with network before computing on nodes without it.
    Prints progress and a one-line summary; returns the exit code: 0 when every
    ObsID is fetched or cached (404s are reported: those ObsIDs will be
    `no_data`), 1 when any failed. A local archive root needs nothing.
    """
    out = stream if stream is not None else sys.stderr
    root = config.archive.root
    if not is_remote_root(root):
        print("archive.root is local; nothing to fetch", file=out)
        return 0
    rows = manifest.rows_for_task(task) if task is not None else list(manifest.rows)
    cache = config.archive.cache or RunPaths(config.run_dir).cache_dir
    progress = _FetchProgress(len(rows), out)
    archive = RemoteArchive(root, cache, progress=progress.transfers)
    if config.extract.backend == "native" and config.extract.prepared is not None:
        log.info("native backend: prepared products are read from %s (local); only raw files are fetched",
                 config.extract.prepared)
    log.info("fetching %s files of %d ObsIDs from %s into %s", config.extract.backend, len(rows), archive.location,
             archive.cache_dir)
    outcomes = _run_fetches(archive, config, rows, progress)
    for o in outcomes:
        if o.state in ("missing", "failed"):
            print(f"  {o.obsid} {o.state}: {' '.join(o.error.split())}", file=out)
    c = progress.counts
    print(
        f"fetch: {len(rows)} ObsIDs: {c['fetched']} fetched ({_size(progress.transfers.total_bytes)}), "
        f"{c['cached']} cached, {c['missing']} missing (404), {c['failed']} failed; cache {archive.cache_dir}",
        file=out,
    )
    return 1 if c["failed"] else 0


def _run_fetches(archive: RemoteArchive, config: Config, rows: list[ManifestRow], progress: _FetchProgress) -> list[FetchOutcome]:
    """Fetch ObsIDs on a few threads; Ctrl-C cancels what has not started (partial files resume later)."""
    outcomes: list[FetchOutcome] = []
    pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="fetch")
    try:
        pending: set[Future[FetchOutcome]] = {
            pool.submit(_fetch_one, archive, config, row, progress.transfers) for row in rows
        }
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                outcome = fut.result()
                outcomes.append(outcome)
                progress.finished(outcome)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return sorted(outcomes, key=lambda o: o.obsid)

