"""The one small interface every extractor implements.

An extractor turns one manifest row into one light curve per band. It works in
the task's scratch workspace, writes what tools print to `tool_log`, and says
how it failed by raising: NoDataError (nothing to extract: `no_data`),
DataError (unusable input or tool failure: `failed`, data), SiteError
(machine trouble: `failed`, site). The worker publishes the result; an
extractor never writes into the run directory itself (except kept prepared
products, which are outputs of their own).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, TextIO

from rxte_hpc.archive.base import Archive, ArchiveNeeds
from rxte_hpc.core.config import Config
from rxte_hpc.fits.lcfile import LightCurve
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.scratch import Workspace


@dataclass(frozen=True)
class ExtractContext:
    """What an extractor may use besides the row: config, run layout, archive access."""

    config: Config
    paths: RunPaths
    archive: Archive


class Extractor(ABC):
    """Base class; subclasses set `name` and implement `extract`."""

    name: ClassVar[str]

    def __init__(self, context: ExtractContext) -> None:
        self.context = context

    def check_available(self) -> None:
        """Raise UsageError naming what is missing (e.g. HEASoft) before any task starts."""

    @abstractmethod
    def archive_needs(self, row: ManifestRow) -> ArchiveNeeds:
        """The archive files `extract` will read for this row: `fetch` stages exactly these."""

    @abstractmethod
    def extract(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> list[LightCurve]:
        """One light curve per configured band (EXTNAME = band name), in band order."""
