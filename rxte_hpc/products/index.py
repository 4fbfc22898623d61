"""The products index, `<run_dir>/products.ecsv`, and products left over from another config.

The index lists every product the last gather wrote (path relative to the run
directory, kind, target, band, rows, ObsIDs merged), with the config hash and
tool version in its metadata, so a reader never has to guess which files in the
run directory belong to the current config. A product the previous index
listed and this gather did not write (an old `merged.lc` after a band change
made `merged_<band>.lc`) is removed; a file that merely looks like a product
(same name pattern, no index saying so) is reported, never deleted.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from astropy.table import Table

from rxte_hpc.core.version import __version__
from rxte_hpc.core.fsutil import atomic_path

log = logging.getLogger(__name__)

INDEX_NAME = "products.ecsv"
COLUMNS = ("path", "kind", "target", "band", "rows", "obsids")


@dataclass(frozen=True)
class ProductEntry:
    """One product file: `path` relative to the run directory; `band` 'all' and `rows` 0 for the plot."""

    path: str
    kind: str  # lightcurve | hardness | plot
    target: str
    band: str
    rows: int
    obsids: int


@dataclass(frozen=True)
class StaleProducts:
    removed: tuple[Path, ...]  # listed by the previous index, not written now: deleted
    reported: tuple[Path, ...]  # product-like names no index claims: left in place

    def describe(self) -> str:
        parts = []
        if self.removed:
            parts.append("removed stale products of an earlier config: " + ", ".join(p.name for p in self.removed))
        if self.reported:
            parts.append("not from this gather (left in place): " + ", ".join(p.name for p in self.reported))
        return "; ".join(parts)


def write_index(root: Path, entries: Sequence[ProductEntry], config_hash: str) -> Path:
    """`<root>/products.ecsv`, written atomically."""
    table = Table(rows=[tuple(getattr(e, c) for c in COLUMNS) for e in entries], names=COLUMNS,
                  dtype=(str, str, str, str, int, int))
    table.meta.update({"config_hash": config_hash, "creator": f"rxte-hpc {__version__}",
                       "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "comment": "every product the last gather wrote; paths relative to the run directory"})
    target = root / INDEX_NAME
    with atomic_path(target) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    return target


def read_index(root: Path) -> list[ProductEntry]:
    """The products the last gather listed; [] when there is no index or it cannot be read."""
    path = root / INDEX_NAME
    if not path.is_file():
        return []
    try:
        table = Table.read(path, format="ascii.ecsv")
        return [ProductEntry(str(r["path"]), str(r["kind"]), str(r["target"]), str(r["band"]), int(r["rows"]),
                             int(r["obsids"])) for r in table]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable products index, ignored (%s)", path, exc)
        return []


def clear_stale(root: Path, written: Sequence[Path], output: str, plot: str) -> StaleProducts:
    """Remove what the previous index listed and this gather did not write; report look-alikes.

    Call after the new products are written and before the new index is.
    """
    keep = {p.resolve() for p in written}
    removed = []
    for entry in read_index(root):
        path = (root / entry.path).resolve()
        if path in keep or path.parent != root.resolve() or not path.is_file():
            continue  # only plain files directly in the run directory are ever removed
        try:
            path.unlink()
            removed.append(path)
        except OSError as exc:
            log.warning("%s: stale product could not be removed (%s)", path, exc)
    stem, _, suffix = output.rpartition(".")
    patterns = [output, f"{stem}_*.{suffix}" if stem else f"{output}_*", "hardness_*_*.fits", plot]
    reported = sorted({p.resolve() for pattern in patterns for p in root.glob(pattern) if p.is_file()} - keep
                      - set(removed))
    return StaleProducts(tuple(removed), tuple(reported))
