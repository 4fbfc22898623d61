"""Archive URLs and directory listings: what a config may name, and which names of a listing are files.

Kept apart from the transports because these are pure text rules, tested
without a server.
"""
from __future__ import annotations

import logging
import urllib.parse
from html.parser import HTMLParser

from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.safepath import CONTROL_RE

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
"""Written last into a directory by `Downloader.fetch_tree`: the whole tree is in the cache."""

#: An index page larger than this is not an index page.
MAX_LISTING_BYTES = 16 * 1024 * 1024


def validate_base_url(url: str) -> str:
    """Check an archive URL from a config and return it ending in '/'.

    Only http(s): urllib would also open `file:` and `ftp:` URLs, which is not what a
    config key called an archive URL should do. Credentials in the URL would end up
    in logs and status records, so they are refused rather than silently used.
    """
    if not isinstance(url, str):
        raise UsageError(f"archive URL must be a string, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 -- evaluating it raises ValueError on a malformed port
    except ValueError as exc:
        raise UsageError(f"not a valid archive URL: {url!r} ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"archive URL must be http:// or https:// with a host name: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"archive URL must not contain credentials: {url!r}")
    if parts.query or parts.fragment or url.strip().endswith(("?", "#")):
        raise UsageError(f"archive URL must not have a query or fragment: {url!r}")
    if CONTROL_RE.search(url) or " " in url.strip():
        raise UsageError(f"archive URL contains blanks or control characters: {url!r}")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_reserved(name: str) -> bool:
    """Names the cache uses for itself; a remote file of that name would collide with them."""
    return name == COMPLETE_MARKER or (name.startswith(".") and name.endswith((".part", ".lock", ".tmp")))


def is_safe_name(name: str, where: str) -> bool:
    """Whether a name from a server's listing may become one path component in the cache (else a warning).

    Server listings are input: '..', a backslash, control characters or the
    cache's own names would let a listing write outside its directory or over
    the cache's bookkeeping.
    """
    if name in ("", ".", "..") or "/" in name or "\\" in name or CONTROL_RE.search(name) or is_reserved(name):
        log.warning("ignoring unsafe name %r in the listing of %s", name[:80], where)
        return False
    return True


class _IndexParser(HTMLParser):
    """Collects the href of every <a> in an autoindex page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for key, value in attrs:
                if key == "href" and value:
                    self.hrefs.append(value.strip())


def parse_index(html: str, dir_url: str) -> tuple[list[str], list[str]]:
    """Files and subdirectories linked from an Apache/nginx directory index page.

    Only links that resolve to a direct child of `dir_url` count: that drops the
    parent link, sort links (`?C=N;O=D`), anchors and links to other sites or other
    directories, whatever the server's page looks like around the table. Names are
    percent-decoded; anything that would not be a safe single path component is
    dropped with a warning.
    """
    base = urllib.parse.urlsplit(dir_url)
    base_path = base.path if base.path.endswith("/") else base.path + "/"
    parser = _IndexParser()
    parser.feed(html)
    parser.close()
    files: set[str] = set()
    subdirs: set[str] = set()
    for href in parser.hrefs:
        if href.startswith(("?", "#")):
            continue
        target = urllib.parse.urlsplit(urllib.parse.urljoin(dir_url, href))
        if target.query or target.fragment:
            continue
        if (target.scheme, target.netloc) != (base.scheme, base.netloc):
            continue
        if not target.path.startswith(base_path):
            continue
        rest = target.path[len(base_path):]
        is_dir = rest.endswith("/")
        name = urllib.parse.unquote(rest[:-1] if is_dir else rest)
        if not name or name in (".", "..") or "/" in name:
            continue
        if is_safe_name(name, dir_url):
            (subdirs if is_dir else files).add(name)
    return sorted(files), sorted(subdirs - files)
