"""The archive section's own rules: what an `archive.root` names, S3 access settings, and their checks at load.

Kept apart from config.py (which holds `ArchiveConfig` with the other sections)
so the archive layer and `fetch` ask one owner whether a root is remote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rxte_hpc.core.errors import ConfigError

#: How an `archive.root` names a remote archive (anything else is a directory or 'simulated').
REMOTE_SCHEMES = ("s3://", "https://", "http://")
#: AWS region names as AWS spells them (us-east-1, ap-southeast-2, us-gov-west-1).
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")


def is_remote_root(root: str) -> bool:
    """Whether an `archive.root` value names an S3 or HTTP(S) archive rather than a directory."""
    return root.startswith(REMOTE_SCHEMES)


@dataclass(frozen=True)
class S3Config:
    """`archive.s3`: how an s3:// root is read (HEASARC's bucket: the defaults)."""

    endpoint_url: str | None = field(
        default=None, metadata={"help": "S3 endpoint of a bucket outside AWS, http(s)://host[:port] (default: AWS)"})
    anon: bool = field(
        default=True, metadata={"help": "read without credentials (HEASARC's bucket is public); false: AWS credentials"})
    region: str = field(default="us-east-1", metadata={"help": "AWS region of the bucket (nasa-heasarc: us-east-1)"})


def check_archive(path: Path, source_kind: str, root: str, s3: S3Config) -> None:
    """ConfigError when a remote root would be scanned, or archive.s3 does not fit the root; one line each."""
    if source_kind == "archive" and is_remote_root(root):
        raise ConfigError(f"{path}: source.kind: archive scans a mounted directory, but archive.root is "
                          f"{root[:80]!r}: plan from TAP (source.kind: tap) or a table (source.kind: table)")
    if s3 != S3Config() and not root.startswith("s3://"):
        raise ConfigError(f"{path}: archive.s3 applies to an s3:// archive.root only, not {root[:80]!r}")
    if s3.endpoint_url is not None and not s3.endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: archive.s3.endpoint_url must be http(s)://host[:port], not {s3.endpoint_url[:80]!r}")
    if not _REGION_RE.fullmatch(s3.region):
        raise ConfigError(f"{path}: archive.s3.region must be an AWS region such as us-east-1, not {s3.region[:40]!r}")
