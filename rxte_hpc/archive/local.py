"""A mounted archive mirror (SciServer's /FTP/rxte/data/archive) or the simulated one, and where prepared products live."""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from rxte_hpc.archive.base import Archive
from rxte_hpc.core.config import ARCHIVE_SIMULATED, Config
from rxte_hpc.core.errors import NoDataError, SiteError, UsageError
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.safepath import safe_relpath

log = logging.getLogger(__name__)


class LocalArchive(Archive):
    """A mounted mirror such as SciServer's /FTP/rxte/data/archive."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def obsid_dir(self, row: ManifestRow) -> Path:
        return self.root / row.obsid.archive_dir(row.cycle)

    def file(self, row: ManifestRow, relpath: str) -> Path:
        path = self.obsid_dir(row) / safe_relpath(relpath)
        if not path.is_file():
            raise NoDataError(f"{path}: not in the archive", obsid=row.obsid, path=path)
        return path

    def listdir(self, row: ManifestRow, subdir: str) -> list[str]:
        directory = self.obsid_dir(row) / safe_relpath(subdir)
        try:
            return sorted(e.name for e in os.scandir(directory) if e.is_file())
        except FileNotFoundError:
            return []


def simulated_ready(paths: RunPaths) -> bool:
    """Whether the run's simulated archive has been generated completely."""
    return (paths.simulated_archive / ".complete").is_file()


def _simulation_text(config: Config) -> str:
    sim = config.simulate
    return f"complete n_obs={sim.n_obs} seed={sim.seed} with_broken={sim.with_broken}\n"


def _check_simulation(config: Config, done: Path) -> None:
    """An archive simulated with other `simulate:` settings is refused, not silently used (UsageError naming both)."""
    try:
        made = done.read_text()
    except OSError as exc:
        raise SiteError(f"{done}: cannot read ({exc.strerror or exc})", path=done, cause=exc) from exc
    if made.strip() == "complete":  # written before the settings were recorded: nothing to compare
        return
    if made != _simulation_text(config):
        raise UsageError(
            f"{config.path}: simulate: says {_simulation_text(config)[len('complete '):].strip()}, but "
            f"{done.parent} was simulated with {made[len('complete '):].strip()}: use a new run_dir, "
            "or delete that archive to simulate it again")


def ensure_simulated(config: Config, paths: RunPaths) -> Path:
    """Generate the simulated archive once under <run_dir>/archive (a lock keeps it to one writer).

    The `simulate:` settings are recorded in its `.complete` marker, so a later
    change of n_obs or seed is refused instead of silently ignored.
    """
    root = paths.simulated_archive
    done = root / ".complete"
    if done.is_file():
        _check_simulation(config, done)
        return root
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / ".archive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            from rxte_hpc.sim.simulate import simulate_archive

            sim = config.simulate
            log.info("simulating an RXTE archive of %d ObsIDs under %s (first use)", sim.n_obs, root)
            simulate_archive(root, n_obs=sim.n_obs, seed=sim.seed, with_broken=sim.with_broken)
            done.write_text(_simulation_text(config))
        else:
            _check_simulation(config, done)
    return root


def prepared_root(config: Config, paths: RunPaths) -> Path:
    """Where pcaprepobsid products are found: extract.prepared, the simulation's own, or <run_dir>/prepared."""
    if config.extract.prepared is not None:
        return config.extract.prepared
    if config.archive.root == ARCHIVE_SIMULATED:
        return paths.simulated_archive / "prepared"
    return paths.prepared_dir
