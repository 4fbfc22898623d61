"""Path safety, the one owner: a relative path from a manifest, a config or a server listing that cannot escape.

Archive paths come from manifests and from server listings; a `..`, an
absolute path or a backslash there must not be able to read or write outside
the archive root, the cache or the run directory.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath

from rxte_hpc.core.errors import UsageError

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def safe_relpath(relpath: str | PurePosixPath) -> PurePosixPath:
    """Return `relpath` as a path that cannot leave the directory it is joined to, or raise UsageError.

    Empty parts (`a//b`) and `.` are refused too, so one file has exactly one
    spelling (and therefore one download lock). A single trailing '/' (a
    directory) is accepted.
    """
    text = str(relpath)
    if text.endswith("/") and not text.endswith("//"):
        text = text[:-1]
    if not text:
        raise UsageError("empty archive path")
    if "\\" in text or CONTROL_RE.search(text):
        raise UsageError(f"archive path contains a backslash or control character: {text!r}")
    if text.startswith("/"):
        raise UsageError(f"archive path must be relative: {text!r}")
    parts = text.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UsageError(f"archive path has an empty, '.' or '..' component: {text!r}")
    return PurePosixPath(*parts)
