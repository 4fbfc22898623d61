"""Where an ObsID's files are: a local mirror, an HTTPS mirror through a cache, or a simulation.

Paths are built from `cycle`, `prnb` and `obsid` (never from datalinks, which
returned empty tables for a while: LESSONS.md). Every relative path is checked
so that nothing can escape the archive root or the cache.
"""
from __future__ import annotations

import fcntl
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath

from rxte_hpc.core.config import ARCHIVE_SIMULATED, Config
from rxte_hpc.core.errors import NoDataError, UsageError
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.paths import RunPaths

log = logging.getLogger(__name__)


class Archive(ABC):
    """Read access to archive files of one ObsID, by path relative to its directory."""

    #: Human-readable location for messages and the manifest.
    location: str

    @abstractmethod
    def file(self, row: ManifestRow, relpath: str) -> Path:
        """A local path to `AO<c>/P<p>/<obsid>/<relpath>`; NoDataError when it does not exist."""

    @abstractmethod
    def listdir(self, row: ManifestRow, subdir: str) -> list[str]:
        """File names in `<obsid dir>/<subdir>` (empty when the directory is absent)."""

    @abstractmethod
    def obsid_dir(self, row: ManifestRow) -> Path:
        """The whole ObsID directory, locally (HEASoft's pcaprepobsid reads all of it)."""

    def exists(self, row: ManifestRow, relpath: str) -> bool:
        try:
            self.file(row, relpath)
        except NoDataError:
            return False
        return True


def _relative(relpath: str) -> PurePosixPath:
    p = PurePosixPath(relpath)
    if p.is_absolute() or any(part in ("..", "") for part in relpath.split("/")) or "\\" in relpath or "\0" in relpath:
        raise ValueError(f"unsafe archive path {relpath!r}")
    return p


class LocalArchive(Archive):
    """A mounted mirror such as SciServer's /FTP/rxte/data/archive."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def obsid_dir(self, row: ManifestRow) -> Path:
        return self.root / row.obsid.archive_dir(row.cycle)

    def file(self, row: ManifestRow, relpath: str) -> Path:
        path = self.obsid_dir(row) / _relative(relpath)
        if not path.is_file():
            raise NoDataError(f"{path}: not in the archive")
        return path

    def listdir(self, row: ManifestRow, subdir: str) -> list[str]:
        directory = self.obsid_dir(row) / _relative(subdir)
        try:
            return sorted(e.name for e in os.scandir(directory) if e.is_file())
        except FileNotFoundError:
            return []


def open_archive(config: Config, paths: RunPaths) -> Archive:
    """The configured archive; UsageError (exit 2) quoting the value when the root is unusable."""
    root = config.archive.root
    if root == ARCHIVE_SIMULATED:
        return LocalArchive(ensure_simulated(config, paths))
    if root.startswith(("http://", "https://")):
        from rxte_hpc.archive.remote import RemoteArchive

        return RemoteArchive(root, config.archive.cache or paths.cache_dir)
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"{config.path}: archive.root {root!r} is not a directory, an https:// URL, or 'simulated'")
    return LocalArchive(path)


def ensure_simulated(config: Config, paths: RunPaths) -> Path:
    """Generate the simulated archive once under <run_dir>/archive (a lock keeps it to one writer)."""
    root = paths.simulated_archive
    done = root / ".complete"
    if done.is_file():
        return root
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / ".archive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            from rxte_hpc.sim.simulate import simulate_archive

            sim = config.simulate
            log.info("simulating an RXTE archive of %d ObsIDs under %s (first use)", sim.n_obs, root)
            simulate_archive(root, n_obs=sim.n_obs, seed=sim.seed, with_broken=sim.with_broken)
            done.write_text("complete\n")
    return root


def prepared_root(config: Config, paths: RunPaths) -> Path:
    """Where pcaprepobsid products are found: extract.prepared, the simulation's own, or <run_dir>/prepared."""
    if config.extract.prepared is not None:
        return config.extract.prepared
    if config.archive.root == ARCHIVE_SIMULATED:
        return paths.simulated_archive / "prepared"
    return paths.prepared_dir
