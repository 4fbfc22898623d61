"""The configured archive: a local mirror, an S3 bucket or HTTPS mirror through a cache, or the simulated one."""
from __future__ import annotations

from pathlib import Path

from rxte_hpc.archive.base import Archive
from rxte_hpc.archive.local import LocalArchive, ensure_simulated
from rxte_hpc.archive.remote import RemoteArchive
from rxte_hpc.core.archiveconfig import is_remote_root
from rxte_hpc.core.config import ARCHIVE_SIMULATED, Config
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.paths import RunPaths


def open_archive(config: Config, paths: RunPaths) -> Archive:
    """The configured archive; UsageError (exit 2) quoting the value when the root is unusable."""
    root = config.archive.root
    if root == ARCHIVE_SIMULATED:
        return LocalArchive(ensure_simulated(config, paths))
    if is_remote_root(root):
        return RemoteArchive(root, config.archive.cache or paths.cache_dir, s3=config.archive.s3)
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"{config.path}: archive.root {root[:200]!r} is not a directory, an s3:// or https:// URL, "
                         "or 'simulated'")
    return LocalArchive(path)
