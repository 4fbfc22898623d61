"""Submissions are snapshots: what a queued job runs is fixed when it is submitted.

`submit` and `rerun` write `<run_dir>/slurm/<submission>/`: `config.yaml` (the
config resolved by `core.config.dump_config`, every path absolute, so it means
the same from the job's working directory), the rendered batch scripts, which
run that copy, and `submission.json` (which config file it came from, its
hash, the manifest's digest). Editing the config afterwards changes nothing
queued; `status` compares the config with the last submission's copy and says
which keys differ. The manifest is not copied: a run directory holds one plan,
and `plan` refuses to replace it while records exist (`plan --force` is the
deliberate way), so the jobs' manifest is the submitted one.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from rxte_hpc.core.config import Config, load_config
from rxte_hpc.core.configio import config_to_mapping, dump_config
from rxte_hpc.core.errors import RxteError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.paths import RunPaths

CONFIG_NAME = "config.yaml"
INFO_NAME = "submission.json"


@dataclass(frozen=True)
class Snapshot:
    """One submission's folder and the config file its jobs run."""

    name: str
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / CONFIG_NAME

    def script(self, kind: str) -> Path:
        return self.folder / f"{kind}.sbatch"


def new_snapshot(paths: RunPaths, kind: str) -> Snapshot:
    """The folder name of a new submission: `<kind>-<UTC time>-<pid>` (sorts by time; two at once differ)."""
    name = f"{kind}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    return Snapshot(name, paths.slurm_dir / name)


def write_snapshot(snapshot: Snapshot, config: Config, manifest_digest: str,
                   scripts: Mapping[str, str]) -> None:
    """Write the resolved config, the scripts (executable) and what the submission was made from.

    The folder is new (exclusive mkdir): a submission never writes into another's.
    """
    snapshot.folder.parent.mkdir(parents=True, exist_ok=True)
    snapshot.folder.mkdir()
    write_atomic(snapshot.config, dump_config(config).encode())
    info = {"source_config": str(config.path.resolve()), "config_hash": config.hash(),
            "manifest_digest": manifest_digest, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_atomic(snapshot.folder / INFO_NAME, (json.dumps(info, indent=1) + "\n").encode())
    for kind, text in scripts.items():
        path = snapshot.script(kind)
        write_atomic(path, text.encode())
        path.chmod(0o755)


@dataclass(frozen=True)
class Drift:
    """The config differs from the one the last submission's jobs run."""

    snapshot: Path
    keys: tuple[str, ...]

    def line(self) -> str:
        shown = ", ".join(self.keys[:8]) + (f" (+{len(self.keys) - 8} more)" if len(self.keys) > 8 else "")
        return (f"the config differs from the submitted one ({self.snapshot}) in {shown}: "
                "queued jobs run the submitted one; `rerun` submits the current config")


def last_snapshot(jobs: list[dict[str, Any]]) -> Path | None:
    """The config copy of the newest submission recorded in jobs.json that has one."""
    for job in reversed(jobs):
        folder = job.get("snapshot")
        if isinstance(folder, str) and folder:
            return Path(folder) / CONFIG_NAME
    return None


def drift(config: Config, jobs: list[dict[str, Any]]) -> Drift | None:
    """Which keys of `config` differ from the last submission's copy (None when equal or never submitted)."""
    copy_path = last_snapshot(jobs)
    if copy_path is None:
        return None
    try:
        submitted = load_config(copy_path)
    except RxteError as exc:  # removed or damaged by hand: say so rather than guess
        return Drift(copy_path, (f"(the copy cannot be read: {exc})",))
    keys = tuple(_differences(config_to_mapping(submitted), config_to_mapping(config)))
    return Drift(copy_path, keys) if keys else None


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [prefix or "(whole config)"]
