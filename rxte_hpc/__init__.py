"""rxte-hpc: re-extract years of RXTE PCA observations into one light curve on an HPC cluster.

The Python API is `Campaign` and `Products` (rxte_hpc.api); they are imported
on first use, so that the package's own modules, which import it first, stay
cheap to import in every worker.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rxte_hpc.core.version import __version__
__all__ = ["Campaign", "Product", "Products", "__version__"]

if TYPE_CHECKING:
    from rxte_hpc.api import Campaign, Product, Products


def __getattr__(name: str) -> Any:
    if name in ("Campaign", "Product", "Products"):
        from rxte_hpc import api

        return getattr(api, name)
    raise AttributeError(f"module 'rxte_hpc' has no attribute {name!r}")
