"""rxte-hpc: re-extract years of RXTE PCA observations into one light curve on an HPC cluster.

The Python API is `Campaign` and `Products` (rxte_hpc.api) and the results its
methods return (rxte_hpc.run.results); they are imported on first use, so that
the package's own modules, which import it first, stay cheap to import in
every worker. The errors are importable from here (`from rxte_hpc import
ConfigError`): each has an `exit_code` (2 usage/config, 1 data/site) and its
`obsid`, `path` and `url` as fields where known.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rxte_hpc.core.errors import (
    ConfigError, DataError, Incomplete, Interrupted, NoDataError, RxteError, SiteError, UsageError,
)
from rxte_hpc.core.version import __version__

_API = ("Campaign", "LeftOut", "Product", "Products")
_RESULTS = ("FetchResult", "MpiResult", "RunResult", "RunStatus", "SubmitResult", "WorkResult")
__all__ = ["Campaign", "LeftOut", "Product", "Products",
           "FetchResult", "MpiResult", "RunResult", "RunStatus", "SubmitResult", "WorkResult",
           "ConfigError", "DataError", "Incomplete", "Interrupted", "NoDataError", "RxteError", "SiteError", "UsageError",
           "__version__"]

if TYPE_CHECKING:
    from rxte_hpc.api import Campaign, LeftOut, Product, Products
    from rxte_hpc.run.results import FetchResult, MpiResult, RunResult, RunStatus, SubmitResult, WorkResult


def __getattr__(name: str) -> Any:
    if name in _API:
        from rxte_hpc import api

        return getattr(api, name)
    if name in _RESULTS:
        from rxte_hpc.run import results

        return getattr(results, name)
    raise AttributeError(f"module 'rxte_hpc' has no attribute {name!r}")
