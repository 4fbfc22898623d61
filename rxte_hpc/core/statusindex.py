"""Read every status record of a run with far fewer opens than records, and never a stale one.

The per-ObsID records (`status/<shard>/<obsid>.json`, written by atomic rename
by their worker) stay the only truth. `<run_dir>/.status-index` is a cache that the
*readers* (`status`, `rerun`, `gather`) write after reading records: for each
shard folder it keeps the folder's mtime, the inode number of every record
file in it, and the parsed records. A later reader lists each shard folder
(one `stat` and one `readdir` per shard: 256 of each, no per-record open or
stat, since `readdir` gives names and inode numbers) and trusts a shard's
cached records only when

1. the folder's mtime (ns) is the one recorded: every publication is a rename
   into that folder, and a rename updates the folder's mtime;
2. every record file has the inode number recorded: a rename publishes a
   *new* file, so a rewritten record has another inode even when the folder's
   mtime did not move (two renames in one clock tick);
3. the shard was quiet before it was read: its mtime was more than
   `GRACE_NS` older than the moment the reading started (the mtime of the
   index's temporary file, created first, so both times come from the
   filesystem's clock). A rename after the reading started therefore sets the
   folder's mtime to a later value than the recorded one, however coarse the
   filesystem's timestamps (1 s on some): the "racy git" rule. Shards written
   to within the grace period are simply not cached and are read again next
   time.

So a cached shard is used only when nothing was published into it since it
was read; anything else re-reads that shard's records (and only that shard).
At 100,000 ObsIDs of a finished run, `status` opens the manifest, this index
and nothing else (plus 256 stats and 512 readdirs: the status and lc shard
folders); during a run only the shards written in the last seconds are read.
The one assumption is the one `make` also relies on: node clocks agree within
`GRACE_NS` when several nodes write one run directory.

Any content is valid or "unreadable, treated as missing": a damaged index is
ignored (and rebuilt), a damaged record is reported with its reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rxte_hpc.core.fsutil import temp_name
from rxte_hpc.core.paths import RunPaths, all_shards

log = logging.getLogger(__name__)

INDEX_VERSION = 2
#: How long a shard folder must have been quiet before its records are cached (covers 1 s timestamps).
GRACE_NS = 2_000_000_000
_SUFFIX = ".json"

#: parse(text, expected_obsid) -> (record fields as a list, None) or (None, reason)
Parser = Callable[[bytes, str], "tuple[list[Any] | None, str | None]"]


@dataclass
class Snapshot:
    """Every record of the run directory, by ObsID, with what it cost to read them."""

    records: dict[str, list[Any]] = field(default_factory=dict)  # obsid -> record fields (core/status.py order)
    unreadable: dict[str, str] = field(default_factory=dict)  # obsid -> why it is treated as missing
    lc_present: set[str] = field(default_factory=set)  # obsids with a published light curve
    opens: int = 0  # record files opened (the index and the manifest not counted)
    shards_read: int = 0  # shards whose records were read from disk rather than the index


def _list_shard(folder: Path, suffix: str) -> tuple[int | None, dict[str, int]]:
    """(folder mtime ns or None when absent, {stem: inode}) of published files (no temporaries)."""
    try:
        mtime = os.stat(folder).st_mtime_ns
        with os.scandir(folder) as entries:
            names = {e.name[: -len(suffix)]: e.inode() for e in entries
                     if e.name.endswith(suffix) and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return None, {}
    return mtime, names


def _load_index(path: Path) -> dict[str, Any]:
    """The cached shards, or {} for an absent, damaged or edited index (its SHA-256 covers the content)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.debug("%s: ignored (%s)", path, exc)
        return {}
    head, _, payload = raw.partition(b"\n")
    if head != _header(payload):
        log.debug("%s: ignored (not an index of this version, or its checksum does not match)", path)
        return {}
    try:
        data = json.loads(payload)
    except ValueError as exc:
        log.debug("%s: ignored (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _header(payload: bytes) -> bytes:
    return f"rxte-hpc status index {INDEX_VERSION} sha256 {hashlib.sha256(payload).hexdigest()}".encode()


def _cached(entry: Any, mtime: int, inodes: dict[str, int]) -> dict[str, Any] | None:
    """The cached shard when it is provably current (rules 1 and 2; rule 3 was applied when it was written)."""
    try:
        if entry["mtime"] != mtime:
            return None
        good, bad = entry["good"], entry["bad"]
        listed = dict(zip(good["stems"], good["inodes"]))
        listed.update(zip(bad["stems"], bad["inodes"]))
        if listed != inodes:
            return None
        if any(len(c) != len(good["stems"]) for c in good["cols"]):
            return None
        return entry
    except (KeyError, TypeError, AttributeError):
        return None


def _entry(mtime: int, files: dict[str, list[Any]]) -> dict[str, Any]:
    """A shard's cache entry, columnar (JSON parses a list per field three times faster than a list per record)."""
    good = [(stem, f[0], f[1]) for stem, f in files.items() if f[1] is not None]
    bad = [(stem, f[0], f[2]) for stem, f in files.items() if f[1] is None]
    return {
        "mtime": mtime,
        "good": {"stems": [g[0] for g in good], "inodes": [g[1] for g in good],
                 "cols": [list(c) for c in zip(*(g[2] for g in good))]},
        "bad": {"stems": [b[0] for b in bad], "inodes": [b[1] for b in bad], "reasons": [b[2] for b in bad]},
    }


def load_snapshot(paths: RunPaths, parse: Parser, use_index: bool = True) -> Snapshot:
    """Every record (through the index where it is provably current) and which light curves exist.

    `parse` turns a record file's bytes into its field list or a reason. The
    index holds only what `parse` returned, and is ignored whole when its
    checksum does not match (a damaged or hand-edited index is never trusted).
    """
    snap = Snapshot()
    shards_index = _load_index(paths.status_index) if use_index else {}
    fresh: dict[str, Any] = {}
    stale = False
    start_ns: int | None = None
    with _IndexWriter(paths) as writer:
        for shard in all_shards():
            folder = paths.status_shard(shard)
            mtime, inodes = _list_shard(folder, _SUFFIX)
            if mtime is None:
                if shard in shards_index:
                    stale = True
                continue
            entry = _cached(shards_index.get(shard), mtime, inodes) if use_index else None
            if entry is None:
                if start_ns is None and use_index:
                    start_ns = writer.start()
                files = {}
                for stem, inode in inodes.items():
                    files[stem] = _read_one(folder / f"{stem}{_SUFFIX}", stem, inode, parse)
                    snap.opens += 1
                snap.shards_read += 1
                stale = True
                entry = _entry(mtime, files)
                if start_ns is not None and mtime < start_ns - GRACE_NS:
                    fresh[shard] = entry
            else:
                fresh[shard] = entry
            good, bad = entry["good"], entry["bad"]
            if good["cols"]:
                snap.records.update(zip(good["stems"], map(list, zip(*good["cols"]))))
            snap.unreadable.update(zip(bad["stems"], bad["reasons"]))
        if stale and use_index:
            writer.commit(fresh)
    for shard in all_shards():
        _, names = _list_shard(paths.lc_shard(shard), ".lc")
        snap.lc_present.update(names)
    return snap


def _read_one(path: Path, stem: str, inode: int, parse: Parser) -> list[Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # replaced or removed between the listing and the read: read next time
        return [inode, None, "record vanished while being read"]
    except OSError as exc:
        return [inode, None, f"unreadable record ({exc.strerror or exc})"]
    fields, reason = parse(data, stem)
    return [inode, fields, reason]


class _IndexWriter:
    """The index's temporary file is created before any record is read: its mtime is rule 3's start time."""

    def __init__(self, paths: RunPaths) -> None:
        self.target = paths.status_index
        self._tmp: Path | None = None
        self._fh: Any = None

    def __enter__(self) -> "_IndexWriter":
        return self

    def start(self) -> int | None:
        """Create the temporary file; its mtime (the filesystem's clock), or None when it cannot be written."""
        try:
            self._tmp = temp_name(self.target)
            self._fh = open(self._tmp, "wb")
            return os.fstat(self._fh.fileno()).st_mtime_ns
        except OSError as exc:
            log.debug("status index not writable (%s): reading records only", exc)
            self._abandon()
            return None

    def commit(self, data: dict[str, Any]) -> None:
        if self._fh is None or self._tmp is None:
            return
        try:
            payload = json.dumps(data, separators=(",", ":")).encode()
            self._fh.write(_header(payload) + b"\n" + payload)
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.target)
            self._tmp = None
        except OSError as exc:
            log.debug("status index not written (%s)", exc)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except OSError:
                pass
            self._tmp = None

    def __exit__(self, *exc: object) -> None:
        self._abandon()
