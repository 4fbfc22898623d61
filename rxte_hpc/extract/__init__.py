"""Extractors behind one interface (`base.Extractor`); `make_extractor` picks one by name.

A new extractor is one new module here plus one line in `_BACKENDS`.
"""
from __future__ import annotations

import importlib

from rxte_hpc.core.errors import UsageError
from rxte_hpc.extract.base import ExtractContext, Extractor

_BACKENDS = {
    "stdprod": ("stdprod", "StdprodExtractor"),
    "native": ("native", "NativeExtractor"),
    "heasoft": ("heasoft", "HeasoftExtractor"),
}


def make_extractor(context: ExtractContext) -> Extractor:
    """The configured extractor; UsageError when the backend is not available in this build."""
    name = context.config.extract.backend
    try:
        module_name, class_name = _BACKENDS[name]
    except KeyError:
        raise UsageError(f"{context.config.path}: extract.backend {name!r} is unknown") from None
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{module_name}":
            raise UsageError(f"extractor {name!r} is not available in this version of rxte-hpc") from None
        raise
    return getattr(module, class_name)(context)


__all__ = ["ExtractContext", "Extractor", "make_extractor"]
