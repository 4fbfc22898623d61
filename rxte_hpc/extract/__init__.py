"""Extractors behind one interface (`base.Extractor`); `make_extractor` picks one by name.

A new extractor is one new module here plus one line in `_BACKENDS`.
"""
from __future__ import annotations

import importlib

from rxte_hpc.archive.factory import open_archive
from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.extract.base import ExtractContext, Extractor

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


def check_backend(config: Config) -> Extractor:
    """The configured extractor, checked: UsageError (exit 2) before any task when it cannot run here.

    The one backend check every entry point (run, work, submit, MPI rank 0) calls.
    """
    paths = RunPaths(config.run_dir)
    extractor = make_extractor(ExtractContext(config, paths, open_archive(config, paths)))
    extractor.check_available()
    return extractor


__all__ = ["ExtractContext", "Extractor", "check_backend", "make_extractor"]
