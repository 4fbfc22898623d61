"""A checked side copy of the parsed manifest, so `status` at 100,000 ObsIDs does not parse ECSV each time.

The manifest is immutable once tasks started and is only ever replaced by
atomic rename, so its (inode, size, mtime) identify its content; the copy
(`RunPaths.manifest_cache`) is used only while they match, and only when the
manifest was older than the copy by more than the grace period when the copy
was made (an edit in the same clock tick would not move the mtime: the same
rule as the status index, core/statusindex.py). The copy carries a SHA-256 of
its content: a damaged or edited copy is ignored and rebuilt, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from rxte_hpc.core.fsutil import temp_name

log = logging.getLogger(__name__)

VERSION = 1
GRACE_NS = 2_000_000_000


def _key(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _header(payload: bytes) -> bytes:
    return f"rxte-hpc manifest cache {VERSION} sha256 {hashlib.sha256(payload).hexdigest()}".encode()


def load(cache: Path, manifest_stat: os.stat_result) -> dict[str, Any] | None:
    """{'meta': ..., 'cols': {...}} when the copy is of exactly this manifest, else None."""
    try:
        raw = cache.read_bytes()
    except OSError:
        return None
    head, _, payload = raw.partition(b"\n")
    if head != _header(payload):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("key") != _key(manifest_stat):
        return None
    if not isinstance(data.get("meta"), dict) or not isinstance(data.get("cols"), dict):
        return None
    return data


def save(cache: Path, manifest_stat: os.stat_result, meta: dict[str, Any], cols: dict[str, list[Any]]) -> None:
    """Write the copy (best effort: a read-only run directory simply has none)."""
    tmp = temp_name(cache)
    try:
        with open(tmp, "wb") as fh:
            if manifest_stat.st_mtime_ns >= os.fstat(fh.fileno()).st_mtime_ns - GRACE_NS:
                raise _TooRecent
            payload = json.dumps({"key": _key(manifest_stat), "meta": meta, "cols": cols},
                                 separators=(",", ":"), allow_nan=True).encode()
            fh.write(_header(payload) + b"\n" + payload)
        os.replace(tmp, cache)
        tmp = None  # type: ignore[assignment]
    except _TooRecent:
        pass
    except (OSError, TypeError, ValueError) as exc:
        log.debug("%s: manifest copy not written (%s)", cache, exc)
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass


class _TooRecent(Exception):
    """The manifest changed within the grace period: do not cache it yet."""
