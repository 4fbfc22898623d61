"""The products index, `<run_dir>/products.ecsv`, and products left over from another config.

The index lists every product the last gather wrote (path relative to the run
directory, kind, target, band, rows, ObsIDs merged), with the config hash and
tool version in its metadata, so a reader never has to guess which files in the
run directory belong to the current config (with several targets, paths
are `targets/<target>/<name>`). A product the previous index
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
from rxte_hpc.core.paths import RunPaths

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

    def describe(self, root: Path | None = None) -> str:
        """One line; paths relative to `root` (the run directory) when given, else file names."""
        def shown(paths: Sequence[Path]) -> str:
            return ", ".join(_relative(p, root) for p in paths)

        parts = []
        if self.removed:
            parts.append("removed stale products of an earlier config: " + shown(self.removed))
        if self.reported:
            parts.append("not from this gather (left in place): " + shown(self.reported))
        return "; ".join(parts)


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return path.name
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


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

    Only plain files directly in the run directory or directly in a
    `targets/<target>/` folder are ever removed (a target folder left empty goes
    too); look-alikes are searched for in the same places. Call after the new
    products are written and before the new index is.
    """
    keep = {p.resolve() for p in written}
    base = root.resolve()
    targets = RunPaths(root).targets_dir.resolve()
    removed = []
    for entry in read_index(root):
        path = (root / entry.path).resolve()
        if path in keep or not _product_folder(path.parent, base, targets) or not path.is_file():
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError as exc:
            log.warning("%s: stale product could not be removed (%s)", path, exc)
    for folder in sorted({p.parent for p in removed if p.parent.parent == targets}):
        try:
            folder.rmdir()  # only when empty: a target this config no longer has
        except OSError:
            pass
    stem, _, suffix = output.rpartition(".")
    patterns = [output, f"{stem}_*.{suffix}" if stem else f"{output}_*", "hardness_*_*.fits", plot]
    folders = [base, *(sorted(p for p in targets.iterdir() if p.is_dir()) if targets.is_dir() else [])]
    reported = sorted({p.resolve() for folder in folders for pattern in patterns for p in folder.glob(pattern)
                       if p.is_file()} - keep - set(removed))
    return StaleProducts(tuple(removed), tuple(reported))


def _product_folder(folder: Path, base: Path, targets: Path) -> bool:
    return folder == base or folder.parent == targets
