"""The run directory's layout (DESIGN.md "Run directory"): one object knows every path.

ObsIDs are validated before they become file names, so no path built here can
escape the run directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rxte_hpc.core.obsid import ObsID


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.ecsv"

    @property
    def lc_dir(self) -> Path:
        return self.root / "lc"

    @property
    def status_dir(self) -> Path:
        return self.root / "status"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def task_logs_dir(self) -> Path:
        return self.root / "logs" / "tasks"

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def simulated_archive(self) -> Path:
        return self.root / "archive"

    def lc(self, obsid: ObsID) -> Path:
        return self.lc_dir / f"{ObsID.parse(obsid).text}.lc"

    def status(self, obsid: ObsID) -> Path:
        return self.status_dir / f"{ObsID.parse(obsid).text}.json"

    def log(self, obsid: ObsID) -> Path:
        return self.logs_dir / f"{ObsID.parse(obsid).text}.log"

    def task_log(self, label: str) -> Path:
        return self.task_logs_dir / f"{label}.log"

    def output(self, name: str) -> Path:
        """A gather output (name already validated by the config as a plain file name)."""
        return self.root / Path(name).name

    def make_dirs(self) -> None:
        for d in (self.lc_dir, self.status_dir, self.logs_dir, self.task_logs_dir):
            d.mkdir(parents=True, exist_ok=True)
