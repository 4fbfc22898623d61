"""The HTTPS archive downloader against a real HTTP server on 127.0.0.1 (tests/kit/httpserver.py)."""
from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from httpserver import Faults, pseudo_random_bytes, serve_tree, write_tree
from rxte_hpc.archive import download
from rxte_hpc.archive.download import DownloadPolicy
from rxte_hpc.archive.listing import COMPLETE_MARKER, parse_index, validate_base_url
from rxte_hpc.archive.transport import HttpTransport
from rxte_hpc.core.safepath import safe_relpath
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError

OBS = "AO9/P90171/90171-01-01-00"
FILE = f"{OBS}/pca/FS4a_1234abcd-1234ffff.gz"
URLPATH = "/" + FILE
DATA = pseudo_random_bytes(700_000, seed=3)  # several read chunks, so drops land mid-body
FAST = DownloadPolicy(timeout_s=5, retries=3, backoff_s=0.01, backoff_max_s=0.05)


def Downloader(url: str, cache: Path, policy: DownloadPolicy = FAST, progress=None) -> download.Downloader:  # noqa: N802
    """The downloader over the real HTTP transport (fsspec's HTTP filesystem), as RemoteArchive makes it."""
    return download.Downloader(HttpTransport(url, policy.timeout_s, policy.user_agent), cache, policy, progress)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A tiny ObsID tree in the archive's layout (docs/science.md#the-archive)."""
    return write_tree(
        tmp_path / "archive",
        {
            FILE: DATA,
            f"{OBS}/FMI": b"FMI-bytes",
            f"{OBS}/pca/FH5a_1234abcd-1234ffff.gz": b"housekeeping",
            f"{OBS}/stdprod/xp90171010100_n2a.lc.gz": pseudo_random_bytes(3000, seed=4),
            f"{OBS}/stdprod/GIFS/plot name.gif": b"GIF89a",
            "AO9/P90171/90171-01-02-00/FMI": b"other obsid",
        },
    )


def _cache_leftovers(cache: Path) -> list[str]:
    """Temporary or lock files left anywhere in the cache."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob(".*") if p.name.endswith((".part", ".lock", ".tmp")))


def test_fetch_gives_identical_bytes_and_reuses_the_cache(archive: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    with serve_tree(archive) as server:
        dl = Downloader(server.url, tmp_path / "cache", FAST, progress=lambda *a: calls.append(a))
        path = dl.fetch(FILE)
        assert path == tmp_path / "cache" / FILE
        assert path.read_bytes() == DATA
        assert dl.fetch(FILE) == path
        assert Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE) == path
        assert server.requests[URLPATH] == 1
    assert calls[0] == (FILE, 0, len(DATA)) and calls[-1] == (FILE, len(DATA), len(DATA))
    assert _cache_leftovers(tmp_path / "cache") == []


def test_503_is_retried_then_succeeds(archive: Path, tmp_path: Path) -> None:
    with serve_tree(archive, Faults(fail_503={URLPATH: 2})) as server:
        path = Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE)
        assert path.read_bytes() == DATA
        assert [r.status for r in server.gets(URLPATH)] == [503, 503, 200]


def test_persistent_503_becomes_site_error_with_url(archive: Path, tmp_path: Path) -> None:
    with serve_tree(archive, Faults(fail_503={URLPATH: 100})) as server:
        with pytest.raises(SiteError, match=r"http://127\.0\.0\.1:\d+/AO9/.*FS4a.*503"):
            Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE)
        assert server.requests[URLPATH] == FAST.retries + 1
    assert not (tmp_path / "cache" / FILE).exists()


def test_dropped_connection_is_resumed_with_range(archive: Path, tmp_path: Path) -> None:
    with serve_tree(archive, Faults(drop_after={URLPATH: (300_000, 2)})) as server:
        path = Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE)
        gets = server.gets(URLPATH)
    assert path.read_bytes() == DATA
    # each attempt continues from what the previous one kept (at most the 300,000 bytes the server sent)
    assert [r.status for r in gets] == [200, 206, 206] and gets[0].range is None
    offsets = [int(r.range.removeprefix("bytes=").removesuffix("-")) for r in gets[1:]]
    assert 0 < offsets[0] <= 300_000 and offsets[0] < offsets[1] <= offsets[0] + 300_000
    assert _cache_leftovers(tmp_path / "cache") == []


def test_server_ignoring_range_restarts_from_zero(archive: Path, tmp_path: Path) -> None:
    faults = Faults(drop_after={URLPATH: (300_000, 1)}, ignore_range=frozenset({URLPATH}))
    with serve_tree(archive, faults) as server:
        path = Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE)
        gets = server.gets(URLPATH)
        assert [(r.range is None, r.status) for r in gets] == [(True, 200), (False, 200)]
        assert 0 < int(gets[1].range.removeprefix("bytes=").removesuffix("-")) <= 300_000
    assert path.read_bytes() == DATA


def test_content_length_mismatch_is_never_published(archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serve_tree(archive, Faults(extra_length={URLPATH: 10})) as server:
        with pytest.raises(SiteError, match="content length|inconsistent sizes|short body"):
            Downloader(server.url, cache, FAST).fetch(FILE)
    assert not (cache / FILE).exists()
    with serve_tree(archive) as server:  # the server is fixed: the partial file is not trusted blindly
        assert Downloader(server.url, cache, FAST).fetch(FILE).read_bytes() == DATA
    assert _cache_leftovers(cache) == []


def test_404_is_no_data_with_url(archive: Path, tmp_path: Path) -> None:
    with serve_tree(archive) as server:
        with pytest.raises(NoDataError, match=rf"{server.url}AO9/P90171/nothing/FMI"):
            Downloader(server.url, tmp_path / "cache", FAST).fetch("AO9/P90171/nothing/FMI")
        assert server.requests["/AO9/P90171/nothing/FMI"] == 1  # not retried


def test_403_is_data_error_with_url_and_status(archive: Path, tmp_path: Path) -> None:
    with serve_tree(archive, Faults(forbidden=frozenset({URLPATH}))) as server:
        with pytest.raises(DataError, match=r"FS4a.*HTTP 403"):
            Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE)
        assert server.requests[URLPATH] == 1


def test_unreachable_port_is_site_error_quickly(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = DownloadPolicy(timeout_s=1, retries=1, backoff_s=0.01, backoff_max_s=0.01)
    started = time.monotonic()
    with pytest.raises(SiteError, match=rf"127\.0\.0\.1:{port}/x/FMI.*(refused|Errno)"):
        Downloader(f"http://127.0.0.1:{port}/", tmp_path / "cache", policy).fetch("x/FMI")
    assert time.monotonic() - started < 3


def test_disk_full_is_site_error_and_drops_the_partial(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cache = tmp_path / "cache"
    with serve_tree(archive) as server:
        monkeypatch.setattr(os, "fsync", full)  # NFS often reports a full disk only at fsync
        with pytest.raises(SiteError, match="disk full"):
            Downloader(server.url, cache, FAST).fetch(FILE)
        assert server.requests[URLPATH] == 1  # a full disk is not retried here
    assert not (cache / FILE).exists()
    assert _cache_leftovers(cache) == []


def test_stale_partial_of_a_dead_worker_is_resumed(archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    part = cache / f"{OBS}/pca/.FS4a_1234abcd-1234ffff.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:123_456])
    (part.parent / ".FS4a_1234abcd-1234ffff.gz.lock").touch()  # its lock file, left by a SIGKILL
    with serve_tree(archive) as server:
        path = Downloader(server.url, cache, FAST).fetch(FILE)
        assert [r.range for r in server.gets(URLPATH)] == ["bytes=123456-"]
    assert path.read_bytes() == DATA
    assert _cache_leftovers(cache) == []


def test_stale_partial_as_long_as_the_file_is_not_taken_as_complete(archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    part = cache / f"{OBS}/pca/.FS4a_1234abcd-1234ffff.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * (len(DATA) + 5))  # garbage, longer than the real file
    with serve_tree(archive) as server:
        path = Downloader(server.url, cache, FAST).fetch(FILE)
        assert [(r.range, r.status) for r in server.gets(URLPATH)] == [(f"bytes={len(DATA) + 5}-", 416), (None, 200)]
    assert path.read_bytes() == DATA


def test_list_dir_parses_the_index_page(archive: Path, tmp_path: Path) -> None:
    with serve_tree(archive) as server:
        dl = Downloader(server.url, tmp_path / "cache", FAST)
        assert dl.list_dir(OBS) == (["FMI"], ["pca", "stdprod"])
        assert dl.list_dir(f"{OBS}/stdprod/") == (["xp90171010100_n2a.lc.gz"], ["GIFS"])
        assert dl.list_dir(f"{OBS}/stdprod/GIFS") == (["plot name.gif"], [])
        with pytest.raises(NoDataError, match="90171-99-99-99"):
            dl.list_dir("AO9/P90171/90171-99-99-99")


def test_parse_index_keeps_only_direct_children() -> None:
    page = """<html><body><pre>
    <a href="?C=N;O=D">Name</a> <a href="?C=M;O=A">Last modified</a>
    <a href="../">../</a> <a href="/FTP/xte/data/archive/AO9/">Parent Directory</a>
    <a href="FMI">FMI</a> <a href="pca/">pca/</a>
    <a href="/FTP/xte/data/archive/AO9/P90171/x/stdprod/">stdprod/</a>
    <a href="https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/AO9/P90171/x/FIPC_1-2">FIPC_1-2</a>
    <a href="https://elsewhere.example/FTP/xte/data/archive/AO9/P90171/x/evil">evil</a>
    <a href="pca/FS4a_1-2">nested</a> <a href="./">.</a> <a href="#top">top</a>
    <a href="FMI?download=1">FMI again</a> <a href="a%20b.gif">a b.gif</a> <a href="..%2F..%2Fetc">x</a>
    <a href="FMI">FMI twice</a> <a href="%2e%2e/">dotdot</a>
    </pre></body></html>"""
    url = "https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/AO9/P90171/x/"
    assert parse_index(page, url) == (["FIPC_1-2", "FMI", "a b.gif"], ["pca", "stdprod"])


def test_fetch_tree_mirrors_a_nested_directory_once(archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serve_tree(archive) as server:
        dl = Downloader(server.url, cache, FAST)
        local = dl.fetch_tree(OBS)
        assert local == cache / OBS
        mirrored = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
        expected = sorted(str(p.relative_to(archive / OBS)) for p in (archive / OBS).rglob("*") if p.is_file())
        assert mirrored == sorted(expected + [COMPLETE_MARKER])
        for name in expected:
            assert (local / name).read_bytes() == (archive / OBS / name).read_bytes()
        before = sum(server.requests.values())
        assert dl.fetch_tree(OBS) == local
        assert Downloader(server.url, cache, FAST).fetch_tree(f"{OBS}/stdprod") == local / "stdprod"
        assert sum(server.requests.values()) == before
    assert not (cache / "AO9/P90171/90171-01-02-00").exists()
    assert _cache_leftovers(cache) == []


@pytest.mark.parametrize("shared", [False, True], ids=["own-downloader", "shared-downloader"])
def test_eight_threads_download_one_file_once(archive: Path, tmp_path: Path, shared: bool) -> None:
    cache = tmp_path / "cache"
    barrier = threading.Barrier(8)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            # separate instances: only the file's flock keeps them apart; shared: the thread stripe too
            dl = common if shared else Downloader(server.url, cache, FAST)
            barrier.wait(timeout=5)
            results.append(dl.fetch(FILE).read_bytes())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread and re-raised there
            errors.append(exc)

    with serve_tree(archive, Faults(delay_s={URLPATH: 0.3})) as server:
        common = Downloader(server.url, cache, FAST)
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert not errors, errors
        assert server.requests[URLPATH] == 1
    assert results == [DATA] * 8


def _fetch_in_child(url: str, cache: str) -> str:
    """Runs in a spawned process: fetch FILE and return its digest."""
    path = Downloader(url, Path(cache), FAST).fetch(FILE)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_three_processes_download_one_file_once(archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs server threads
    with serve_tree(archive, Faults(delay_s={URLPATH: 1.0})) as server:
        with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
            digests = list(pool.map(_fetch_in_child, [server.url] * 3, [str(cache)] * 3))
        assert server.requests[URLPATH] == 1
    assert digests == [hashlib.sha256(DATA).hexdigest()] * 3


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a//b", "a/../../b", "a\\b", "a/\0b", "", "./a", "a/."])
def test_safe_relpath_rejects_escapes(bad: str) -> None:
    with pytest.raises(UsageError):
        safe_relpath(bad)


def test_safe_relpath_accepts_archive_paths() -> None:
    assert str(safe_relpath(FILE)) == FILE
    assert str(safe_relpath(f"{OBS}/")) == OBS


def test_fetch_refuses_paths_outside_the_cache(tmp_path: Path) -> None:
    dl = Downloader("http://127.0.0.1:9/", tmp_path / "cache", FAST)
    with pytest.raises(UsageError, match=r"\.\./x"):
        dl.fetch("../x")


@pytest.mark.parametrize(
    "bad", ["ftp://heasarc.gsfc.nasa.gov/", "http://u:p@h/", "not a url", "file:///FTP", "https://h/x?q=1", "https://"]
)
def test_validate_base_url_rejects(bad: str) -> None:
    with pytest.raises(UsageError, match=bad.replace("?", r"\?")):
        validate_base_url(bad)


def test_validate_base_url_normalises_the_trailing_slash() -> None:
    url = "https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive"
    assert validate_base_url(url) == url + "/"
    assert validate_base_url(url + "/") == url + "/"


def test_a_body_without_end_stops_at_the_cap_and_leaves_nothing(archive: Path, tmp_path: Path, monkeypatch) -> None:
    """No Content-Length and bytes that never stop: one DataError line, the partial file removed, no retry."""
    monkeypatch.setitem(download.SIZE_CAPS, "science data (pca/, hexte/)", 1024 * 1024)
    cache = tmp_path / "cache"
    with serve_tree(archive, Faults(endless=frozenset({URLPATH}))) as server:
        with pytest.raises(DataError) as caught:
            Downloader(server.url, cache, FAST).fetch(FILE)
        assert server.requests[URLPATH] == 1
    message = str(caught.value)
    assert "\n" not in message and "stopped" in message and "1 MB cap for science data" in message
    assert "partial file removed" in message
    assert not (cache / FILE).exists() and _cache_leftovers(cache) == []


def test_a_file_announced_above_its_cap_is_not_downloaded(archive: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(download.SIZE_CAPS, "science data (pca/, hexte/)", 100_000)
    with serve_tree(archive) as server:
        with pytest.raises(DataError, match=r"is 700000 bytes, above the 100000 bytes cap for science data"):
            Downloader(server.url, tmp_path / "cache", FAST).fetch(FILE)
        # a file of another kind is under its own cap
        assert Downloader(server.url, tmp_path / "cache", FAST).fetch(f"{OBS}/FMI").read_bytes() == b"FMI-bytes"
    assert _cache_leftovers(tmp_path / "cache") == []


def test_size_caps_follow_the_kind_of_file() -> None:
    from pathlib import PurePosixPath

    assert download.size_cap(PurePosixPath(FILE))[0] == "science data (pca/, hexte/)"
    assert download.size_cap(PurePosixPath(f"{OBS}/hexte/FS52_x.gz"))[0] == "science data (pca/, hexte/)"
    assert download.size_cap(PurePosixPath(f"{OBS}/stdprod/xp90171010100_n2a.lc.gz"))[0] == "other"
    assert download.size_cap(PurePosixPath(f"{OBS}/FMI")) == ("other", download.SIZE_CAPS["other"])
