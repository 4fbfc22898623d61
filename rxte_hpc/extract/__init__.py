"""Extractors behind one interface (`base.Extractor`); `make_extractor` picks one by name.

A new extractor is one new module here plus one line in `_BACKENDS`.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable, NoReturn

from rxte_hpc.archive.base import Archive
from rxte_hpc.archive.factory import open_archive
from rxte_hpc.core.config import ARCHIVE_SIMULATED, Config
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.extract.base import ExtractContext, Extractor

log = logging.getLogger(__name__)

_BACKENDS = {
    "stdprod": ("stdprod", "StdprodExtractor"),
    "native": ("native", "NativeExtractor"),
    "heasoft": ("heasoft", "HeasoftExtractor"),
}


def make_extractor(context: ExtractContext) -> Extractor:
    """The configured extractor (the config already refused unknown backend names)."""
    name = context.config.extract.backend
    try:
        module_name, class_name = _BACKENDS[name]
    except KeyError:
        raise UsageError(f"{context.config.path}: extract.backend {name!r} is unknown") from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    extractor: Extractor = getattr(module, class_name)(context)
    return extractor


class _Unopened(Archive):
    """The archive of the backend check: it opens nothing, and any use of it is a bug (the check must have no
    side effects: opening the configured archive simulates a whole demo archive, or touches the network)."""

    location = "(not opened: backend check)"

    def _refuse(self) -> NoReturn:
        raise RuntimeError("Extractor.check_available must not read the archive")

    def file(self, row: ManifestRow, relpath: str) -> Path:
        self._refuse()

    def listdir(self, row: ManifestRow, subdir: str) -> list[str]:
        self._refuse()

    def obsid_dir(self, row: ManifestRow) -> Path:
        self._refuse()


def check_backend(config: Config, factory: Callable[[ExtractContext], Extractor] = make_extractor) -> None:
    """UsageError (exit 2) when the configured extractor cannot run here (HEASoft, runner, PCU/layer lists, the
    filter expression) or its archive root is unusable. Reads no archive file, downloads and writes nothing
    (run.preflight calls it once per command).

    A mounted or remote root is opened, which touches nothing; the simulated one
    is generated on first use, so it is not opened here.
    """
    paths = RunPaths(config.run_dir)
    if config.archive.root != ARCHIVE_SIMULATED:
        open_archive(config, paths)
    factory(ExtractContext(config, paths, _Unopened())).check_available()
    log.debug("backend check passed: %s", config.extract.backend)


__all__ = ["ExtractContext", "Extractor", "check_backend", "make_extractor"]
