"""Build the manifest: from an archive scan or a table (HEASARC TAP comes with the planner issue)."""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .archive import ensure_simulated
from .config import ARCHIVE_SIMULATED, Config
from .errors import UsageError
from .manifest import Manifest, Observation, build_manifest
from .obsid import InvalidObsID, ObsID, check_cycle
from .paths import RunPaths

log = logging.getLogger(__name__)


def scan_archive(root: Path) -> list[Observation]:
    """Every `AO*/P*/<obsid>` directory under a local archive root."""
    found = []
    for ao in sorted(root.glob("AO*")):
        try:
            cycle = check_cycle(ao.name[2:])
        except InvalidObsID:
            continue
        for prop in sorted(ao.glob("P*")):
            for entry in sorted(os.scandir(prop), key=lambda e: e.name):
                if not entry.is_dir():
                    continue
                try:
                    obsid = ObsID.parse(entry.name)
                except InvalidObsID:
                    log.warning("%s: not an ObsID directory, skipped", entry.path)
                    continue
                found.append(Observation(obsid, cycle))
    return found


def plan(config: Config) -> Manifest:
    paths = RunPaths(config.run_dir)
    if config.source.kind != "archive":
        raise UsageError(f"{config.path}: source.kind {config.source.kind!r} is not available yet")
    root = Path(ensure_simulated(config, paths) if config.archive.root == ARCHIVE_SIMULATED else config.archive.root)
    if not root.is_dir():
        raise UsageError(f"{config.path}: archive.root {str(root)!r} is not a directory")
    observations = scan_archive(root)
    if not observations:
        raise UsageError(f"{config.path}: no AO*/P*/<obsid> directories under {root}")
    meta = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config.hash(),
        "source": {"kind": "archive", "root": str(root)},
    }
    return build_manifest(observations, config.tasks.obs_per_task, meta)


