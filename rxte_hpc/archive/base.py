"""What every archive offers the extractors: an ObsID's files by relative path, and staging what an extractor reads.

Paths are built from `cycle`, `prnb` and `obsid` (never from datalinks, which
returned empty tables for a while: docs/architecture.md#why-it-is-built-this-way). Every relative path goes
through `core.safepath`, so nothing can escape the archive root or the cache.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from rxte_hpc.core.manifest import ManifestRow


@dataclass(frozen=True)
class ArchiveNeeds:
    """The archive files an extractor reads for one row: single files, and whether it needs the whole ObsID tree.

    Extractors declare these (`Extractor.archive_needs`) so that `fetch` stages
    exactly what a later run reads, and nothing it does not.
    """

    files: tuple[str, ...] = ()
    whole_tree: bool = False

    @property
    def empty(self) -> bool:
        return not self.files and not self.whole_tree


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

    def stage(self, row: ManifestRow, needs: ArchiveNeeds) -> None:
        """Make everything in `needs` available locally (a download for a remote archive; a check for a local one)."""
        if needs.whole_tree:
            self.obsid_dir(row)
        for relpath in needs.files:
            self.file(row, relpath)
