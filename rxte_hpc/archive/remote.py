"""The RXTE archive on S3 or HTTPS through a local cache, and what `rxte-hpc fetch` pre-stages.

Outside SciServer the archive is reachable in HEASARC's AWS bucket
(`s3://nasa-heasarc/xte/data/archive/AO<c>/P<prnb>/<obsid>/...`) and over HTTPS
(`https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/...`, or a mirror).
`RemoteArchive` gives the extractors the same `Archive` interface as a mounted
mirror and downloads only what each one asks for: one light curve (stdprod), the
whole ObsID directory for pcaprepobsid (heasoft, and native without prepared
products). Files go through `download.Downloader`, so many workers can share
one cache and only one of them downloads a given file.

Compute nodes often have no network: `rxte-hpc fetch` (rxte_hpc.run.fetch)
pre-stages on a login node what the configured backend declares it reads,
after which a run makes no requests at all (cached files, saved directory
listings and complete trees are reused; the archive's files never change, so
nothing is revalidated).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path, PurePosixPath
from typing import Callable, TypeVar

from rxte_hpc.archive.base import Archive
from rxte_hpc.archive.download import Downloader, DownloadPolicy, ProgressCallback
from rxte_hpc.archive.listing import COMPLETE_MARKER
from rxte_hpc.archive.s3 import S3Transport
from rxte_hpc.archive.transport import HttpTransport, Transport
from rxte_hpc.core.archiveconfig import S3Config
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.safepath import safe_relpath

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_POLICY = DownloadPolicy()
"""Retry and timeout policy of every RemoteArchive that is not given one (tests make it quick)."""

UNREACHABLE_AFTER = 3
"""Consecutive site failures after which one RemoteArchive stops asking the network.

Each failure has already used up the downloader's retries (or was a host that
cannot be reached at all); when the archive or the route to it is down, a task
of many ObsIDs would otherwise spend that much per ObsID only to record the same
`site` failure. The ObsIDs not tried are recorded as `site` failures too, so
`rerun` picks them up later.
"""


LISTINGS_DIR = ".listings"
"""Saved directory listings under the cache root, so a run without network can still list `pca/`."""


def open_transport(root: str, policy: DownloadPolicy, s3: S3Config | None = None) -> Transport:
    """The transport for an `archive.root` URL: s3fs for s3://, fsspec's HTTP for http(s)://."""
    if root.startswith("s3://"):
        return S3Transport(root, s3 if s3 is not None else S3Config(), policy.timeout_s, policy.user_agent)
    return HttpTransport(root, policy.timeout_s, policy.user_agent)


def other_layout(location: str) -> str | None:
    """The same root in HEASARC's other layout, `rxte/` for `xte/` and back (HEASARC moved it once), or None."""
    scheme, sep, rest = location.partition("://")
    parts = rest.split("/")
    for i, part in enumerate(parts[1:], start=1):  # parts[0] is the host or the bucket
        if part in ("xte", "rxte"):
            parts[i] = "rxte" if part == "xte" else "xte"
            return scheme + sep + "/".join(parts)
    return None


class RemoteArchive(Archive):
    """An archive whose files are downloaded into a cache on first use.

    A missing file is `NoDataError` (the worker records `no_data` with the URL),
    other refusals `DataError`, network and local-disk trouble `SiteError`
    (`failed`, site). When a missing file turns out to be a root that lists
    nothing at all (a wrong `archive.root`, such as HEASARC's old `rxte/` for
    `xte/`), every ObsID fails with one `SiteError` that names the other layout,
    instead of each becoming `no_data`. Safe to share between threads; separate
    processes share the cache through the downloader's file locks.
    """

    def __init__(
        self,
        root: str,
        cache_dir: Path,
        policy: DownloadPolicy | None = None,
        progress: ProgressCallback | None = None,
        s3: S3Config | None = None,
    ) -> None:
        policy = policy if policy is not None else DEFAULT_POLICY
        try:
            transport = open_transport(root, policy, s3)
        except UsageError as exc:
            message = str(exc)
            raise UsageError(message if message.startswith("archive.") else f"archive.root: {message}") from None
        self.downloader = Downloader(transport, Path(cache_dir), policy, progress)
        self.location = transport.location
        self.cache_dir = self.downloader.cache_dir
        self._lock = threading.Lock()
        self._site_failures = 0
        self._last_site_error = ""
        self._root_empty: bool | None = None  # unknown until a file turns out to be missing

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
            if self._root_empty:
                raise SiteError(self.empty_root_message(), url=self.location)
            if self._site_failures >= UNREACHABLE_AFTER:
                raise SiteError(
                    f"not tried: the last {self._site_failures} requests to {self.location} failed "
                    f"(last: {self._last_site_error}); retry later with `rxte-hpc rerun` or `rxte-hpc fetch`",
                    url=self.location,
                )
        try:
            result = call()
        except SiteError as exc:
            with self._lock:
                self._site_failures += 1
                self._last_site_error = " ".join(str(exc).split())[:200]
            raise
        except NoDataError as exc:
            self._reset()
            if self._root_lists_nothing():
                raise SiteError(self.empty_root_message(), url=self.location) from exc
            raise
        except DataError:
            self._reset()
            raise
        self._reset()
        return result

    def _root_lists_nothing(self) -> bool:
        """Whether the archive root itself is empty; asked once, at the first missing file."""
        with self._lock:
            known = self._root_empty
        if known is not None:
            return known
        try:
            empty = self.downloader.root_is_empty()
        except (SiteError, DataError) as exc:  # cannot tell now: the missing file stays missing
            log.debug("cannot list %s to check it: %s", self.location, exc)
            return False
        with self._lock:
            self._root_empty = empty
        return empty

    def empty_root_message(self) -> str:
        """One line: the root lists nothing, and the other layout of HEASARC's archive to try."""
        other = other_layout(self.location)
        hint = (f"HEASARC moved the RXTE archive from rxte/ to xte/ once: is it {other}?" if other is not None
                else "check archive.root")
        return f"archive.root {self.location} lists nothing (no AO* folders there); {hint}"

    def raise_if_root_empty(self) -> None:
        """UsageError when a missing file has shown that the root itself lists nothing (for `fetch`'s summary)."""
        with self._lock:
            empty = self._root_empty
        if empty:
            raise UsageError(self.empty_root_message(), url=self.location)

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
