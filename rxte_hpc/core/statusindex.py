"""Read every status record of a run with far fewer opens than records, and never a stale one.

The per-ObsID records (`status/<shard>/<obsid>.json`, written by atomic rename
by their worker) stay the only truth. `<run_dir>/.status-index` is a cache that
the *readers* (`status`, `rerun`, `gather`) write after reading records: for
each shard folder of `status/` it keeps the folder's mtime and the parsed
records, for each shard folder of `lc/` its mtime and the light curves in it.
A later reader `stat`s each shard folder (512 stats, no per-record open or
stat) and uses a cached shard only when

1. the folder's mtime (ns) is the one recorded: every publication, removal or
   replacement of a file in the folder is a rename/unlink in it, and that
   updates the folder's mtime;
2. the shard was quiet before it was read: its mtime was more than `GRACE_NS`
   older than the moment the reading started (the mtime of the index's
   temporary file, created first, so both times come from the filesystem's
   clock). A rename after the reading started therefore sets the folder's
   mtime to a later value than the recorded one, however coarse the
   filesystem's timestamps (1 s on some): the "racy git" rule. A shard written
   to within the grace period is not cached and is read again next time.

So a cached shard is used only when nothing was published into it since it
was read; anything else re-reads that shard (and only that shard). At 100,000
ObsIDs of a finished run `status` opens the manifest's checked copy and this
index, nothing else (plus 512 stats); during a run only the shards written
in the last seconds are read again. The assumptions are the ones `make`
relies on: files are published by rename or removed (rxte-hpc never rewrites
a record in place; a record edited in place by hand is seen once its shard
changes, or with `use_index=False`), and node clocks agree within `GRACE_NS`
when several nodes write one run directory.

Any content is valid or "unreadable, treated as missing": a damaged index is
ignored (and rebuilt), a damaged record is reported with its reason.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rxte_hpc.core.fsutil import temp_name
from rxte_hpc.core.paths import RunPaths, all_shards

log = logging.getLogger(__name__)

INDEX_VERSION = 4
#: Position of `output` in a record's fields (core/status.py: StatusRecord's field order).
_OUTPUT = 11
#: How long a shard folder must have been quiet before its records are cached (covers 1 s timestamps).
GRACE_NS = 2_000_000_000
_SUFFIX = ".json"

#: parse(text, expected_obsid) -> (record fields as a list, None) or (None, reason)
Parser = Callable[[bytes, str], "tuple[list[Any] | None, str | None]"]


@dataclass
class Snapshot:
    """Every record of the run directory, by ObsID, with what it cost to read them."""

    records: dict[str, Sequence[Any]] = field(default_factory=dict)  # obsid -> record fields (core/status.py order)
    unreadable: dict[str, str] = field(default_factory=dict)  # obsid -> why it is treated as missing
    lc_present: set[str] = field(default_factory=set)  # obsids with a published light curve
    opens: int = 0  # record files opened (the index and the manifest not counted)
    shards_read: int = 0  # shards whose records were read from disk rather than the index


def _mtime(folder: Path) -> int | None:
    try:
        return os.stat(folder).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


def _names(folder: Path, suffix: str) -> list[str]:
    """Stems of the published files (no temporaries) of a folder."""
    try:
        with os.scandir(folder) as entries:
            return [e.name[: -len(suffix)] for e in entries if e.name.endswith(suffix) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


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


def _entry(mtime: int, shard: str, files: dict[str, tuple[list[Any] | None, str | None]]) -> dict[str, Any]:
    """A status shard's cache entry, columnar and compact: JSON parses a list per field 3x faster than a list per
    record, and a field with one value throughout the shard (backend, config_hash, state of a finished run, ...)
    is stored once. Field 0 (obsid) is the stem; an `output` that is the canonical light-curve path is implied."""
    good = [(stem, f[0]) for stem, f in files.items() if f[0] is not None]
    bad = [(stem, f[1]) for stem, f in files.items() if f[0] is None]
    stems = [g[0] for g in good]
    cols: list[Any] = []
    for i, col in enumerate(zip(*(g[1] for g in good))):
        if i == 0:
            continue
        values = list(col)
        if i == _OUTPUT and all(v == f"lc/{shard}/{s}.lc" for v, s in zip(values, stems)):
            cols.append({"canonical": True})
        elif all(v == values[0] for v in values):
            cols.append({"all": values[0]})
        else:
            cols.append(values)
    return {"mtime": mtime, "stems": stems, "cols": cols, "bad": {stem: reason for stem, reason in bad}}


def _rows(shard: str, entry: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The field tuples of a cache entry (the inverse of `_entry`)."""
    stems = entry["stems"]
    cols: list[Any] = [stems]
    for c in entry["cols"]:
        if isinstance(c, list):
            cols.append(c)
        elif c.get("canonical"):
            cols.append([f"lc/{shard}/{s}.lc" for s in stems])
        else:
            cols.append(itertools.repeat(c["all"], len(stems)))
    return zip(*cols)


def _usable(entry: Any, mtime: int, keys: tuple[str, ...]) -> bool:
    return isinstance(entry, dict) and entry.get("mtime") == mtime and all(k in entry for k in keys)


def load_snapshot(paths: RunPaths, parse: Parser, use_index: bool = True, write_index: bool = True) -> Snapshot:
    """Every record (through the index where it is provably current) and which light curves exist.

    `parse` turns a record file's bytes into its field list or a reason. The
    index holds only what `parse` returned, and is ignored whole when its
    checksum does not match (a damaged or hand-edited index is never trusted).
    `write_index=False` reads through the index but writes nothing (`--dry-run`).
    """
    snap = Snapshot()
    index = _load_index(paths.status_index) if use_index else {}
    old_status, old_lc = index.get("status") or {}, index.get("lc") or {}
    fresh: dict[str, dict[str, Any]] = {"status": {}, "lc": {}}
    changed = False
    start_ns: int | None = None
    with _IndexWriter(paths) as writer:

        def started() -> int | None:
            nonlocal start_ns
            if start_ns is None and use_index and write_index:
                start_ns = writer.start()
            return start_ns

        for shard in all_shards():
            folder = paths.status_shard(shard)
            mtime = _mtime(folder)
            if mtime is None:
                changed |= shard in old_status
                continue
            entry: dict[str, Any] = old_status.get(shard) or {}
            if not _usable(entry, mtime, ("stems", "cols", "bad")):
                t0 = started()
                files = {}
                for stem in _names(folder, _SUFFIX):
                    fields, reason = _read_one(folder / f"{stem}{_SUFFIX}", stem, parse)
                    snap.opens += 1
                    if fields is not None or reason is not None:
                        files[stem] = (fields, reason)
                snap.shards_read += 1
                changed = True
                entry = _entry(mtime, shard, files)
                if t0 is None or mtime >= t0 - GRACE_NS:
                    entry = dict(entry, mtime=None)  # used now, never trusted later
            if entry["mtime"] is not None:
                fresh["status"][shard] = entry
            if entry["stems"]:
                snap.records.update(zip(entry["stems"], _rows(shard, entry)))
            snap.unreadable.update(entry["bad"])
        for shard in all_shards():
            folder = paths.lc_shard(shard)
            mtime = _mtime(folder)
            if mtime is None:
                changed |= shard in old_lc
                continue
            entry = old_lc.get(shard) or {}
            if not _usable(entry, mtime, ("names",)):
                t0 = started()
                entry = {"mtime": mtime, "names": _names(folder, ".lc")}
                changed = True
                if t0 is None or mtime >= t0 - GRACE_NS:
                    entry["mtime"] = None
            if entry["mtime"] is not None:
                fresh["lc"][shard] = entry
            snap.lc_present.update(entry["names"])
        if changed and use_index and write_index:
            writer.commit(fresh)
    return snap


def _read_one(path: Path, stem: str, parse: Parser) -> tuple[list[Any] | None, str | None]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed between the listing and the read: no record (the folder's mtime moved)
        return None, None
    except OSError as exc:
        return None, f"unreadable record ({exc.strerror or exc})"
    return parse(data, stem)


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
