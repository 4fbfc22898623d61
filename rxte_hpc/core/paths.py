"""The run directory's layout (docs/architecture.md#the-run-directory): one object knows every path, and the sharding.

Per-ObsID files live two levels down, `lc/<shard>/<obsid>.lc`,
`status/<shard>/<obsid>.json`, `logs/<shard>/<obsid>.log` (task logs:
`logs/tasks/<shard>/<label>.log`), so that no folder holds more than 1,000
entries up to 100,000 ObsIDs: parallel filesystems slow down on large folders
and HPC centres ask users to stay well under 10,000. `<shard>` is two hex
digits of a CRC-32 of the name (`N_SHARDS` = 256 folders): fixed, cheap, the
same on every node and Python version, and even for any mix of proposals
(a proposal-based shard would put a 3,000-ObsID monitoring proposal in one
folder). At 100,000 ObsIDs a shard holds about 390 files (the test checks the
maximum), and the top folders hold at most 256 shards plus a few fixed names.

Nothing else in the package builds these paths: `work`, `rerun`, `gather`, the
MPI executor and `status` all ask this module. ObsIDs are validated before
they become file names, so no path built here can escape the run directory.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rxte_hpc.core.obsid import ObsID

#: Shard folders per per-ObsID directory (two hex digits).
N_SHARDS = 256
#: What the layout promises per folder (docs/architecture.md#the-run-directory), checked by tests/core/test_paths.py.
MAX_FOLDER_ENTRIES = 1000
#: Every name the tool uses directly under a run directory (hidden `.`-files aside, which are all its own):
#: a gather output or plot may take none of them (core/config.py checks `gather:` against this list).
RESERVED_NAMES = ("manifest.ecsv", "products.ecsv", "exposure.png", "lc", "status", "logs", "slurm", "targets",
                  "prepared", "cache", "archive", "verify")


def shard_of(name: str) -> str:
    """The shard folder of a file stem (an ObsID, a task-log label): `00`..`ff`."""
    return f"{zlib.crc32(name.encode()) % N_SHARDS:02x}"


def all_shards() -> tuple[str, ...]:
    return tuple(f"{i:02x}" for i in range(N_SHARDS))


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.ecsv"

    @property
    def manifest_cache(self) -> Path:
        """A checked parsed copy of the manifest (core/manifestcache.py)."""
        return self.root / ".manifest.ecsv.cache"

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
    def slurm_logs_dir(self) -> Path:
        """Batch logs: `gather_%j.out`, `mpi_%j.out`, and one folder per array submission."""
        return self.slurm_dir / "logs"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def simulated_archive(self) -> Path:
        return self.root / "archive"

    @property
    def status_index(self) -> Path:
        """The status records' checked cache (core/statusindex.py); hidden, outside status/ (not a record)."""
        return self.root / ".status-index"

    # ---------------------------------------------------------------- per-ObsID files

    def lc(self, obsid: ObsID | str) -> Path:
        text = ObsID.parse(obsid).text
        return self.lc_dir / shard_of(text) / f"{text}.lc"

    def status(self, obsid: ObsID | str) -> Path:
        text = ObsID.parse(obsid).text
        return self.status_dir / shard_of(text) / f"{text}.json"

    def log(self, obsid: ObsID | str) -> Path:
        text = ObsID.parse(obsid).text
        return self.logs_dir / shard_of(text) / f"{text}.log"

    def task_log(self, label: str) -> Path:
        name = Path(label).name  # labels are made by the worker (task00017, mpi-rank0003): never a path
        return self.task_logs_dir / shard_of(name) / f"{name}.log"

    def slurm_array_logs(self, label: str) -> Path:
        """The folder of one array submission's `%A_%a.out` logs (at most MaxArraySize files, capped at 1,000)."""
        return self.slurm_logs_dir / Path(label).name

    def lc_shard(self, shard: str) -> Path:
        return self.lc_dir / shard

    def status_shard(self, shard: str) -> Path:
        return self.status_dir / shard

    def output(self, name: str, target: str | None = None) -> Path:
        """A gather output (name already validated by the config as a plain file name); with `target`, the
        several-targets layout `targets/<target>/<name>` (docs/architecture.md#the-run-directory)."""
        return (self.target_dir(target) if target else self.root) / Path(name).name

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    def target_dir(self, target: str) -> Path:
        """`targets/<target>/` of a configured target: its name with anything but letters, digits and `_ . + -`
        as `_` (`eta car` -> `eta_car`); the config refuses names that would collide."""
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", target.strip())
        return self.targets_dir / (slug if slug.strip(".") else "_")

    # ---------------------------------------------------------------- listing

    def status_files(self) -> Iterator[Path]:
        """Every published record file (temporary files skipped), shard by shard."""
        yield from self._files(self.status_dir, ".json")

    def lc_files(self) -> Iterator[Path]:
        yield from self._files(self.lc_dir, ".lc")

    def task_log_files(self) -> Iterator[Path]:
        yield from self._files(self.task_logs_dir, ".log")

    def has_records(self) -> bool:
        return next(self.status_files(), None) is not None

    @staticmethod
    def _files(top: Path, suffix: str) -> Iterator[Path]:
        for shard in all_shards():
            try:
                entries = os.scandir(top / shard)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                names = sorted(e.name for e in entries if e.name.endswith(suffix) and not e.name.startswith("."))
            for name in names:
                yield top / shard / name

    def make_dirs(self) -> None:
        """Every folder a worker writes into, shard folders included (so `open(paths.log(o), "w")` works).

        Made once per run directory: the last folder made is the last shard of
        the last top folder, so when it exists everything before it does, and
        a later call costs one stat (a worker calls this once per task).
        """
        tops = (self.lc_dir, self.status_dir, self.logs_dir, self.task_logs_dir)
        if (tops[-1] / all_shards()[-1]).is_dir():
            return
        for top in tops:
            for shard in all_shards():
                (top / shard).mkdir(parents=True, exist_ok=True)
