"""The archive downloader's old HTTP client against the new fsspec transport, on one loopback server, in one run.

The old transport is the stdlib urllib downloader as it was at commit
7caf6d0fd8f060edab7fae387fba542fc7b4f582 (`rxte_hpc/archive/download.py`), loaded
from git history at run time into a temporary module, so no old client code stays
in the tree. The new one is `download.Downloader` over `transport.HttpTransport`
(fsspec's HTTP filesystem, aiohttp). Both download from the same server
(tests/kit/httpserver.py on 127.0.0.1) into fresh caches on /dev/shm, through their
full path (lock, temporary file, fsync, rename).

Measured on two servers (HTTP/1.0 with a connection per request, and HTTP/1.1
keep-alive as Apache and S3 answer), alternating old and new, best of `--repeat`:
* small files, one thread (a stdprod run: one light curve per ObsID): files per second;
* small files, four threads (what `rxte-hpc fetch` uses): files per second;
* large files, one thread: MB per second;
* resume after a cut: a large file whose first answer stops half-way; seconds to
  have it complete, and the bytes asked for again (Range) by the second request.

    python benchmarks/bench_transport.py [--files 300] [--size-kb 60] [--large-mb 24] [--repeat 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "kit"))

from httpserver import Faults, pseudo_random_bytes, serve_tree, write_tree  # noqa: E402

from rxte_hpc.archive import download  # noqa: E402
from rxte_hpc.archive.transport import HttpTransport  # noqa: E402

OLD_COMMIT = "7caf6d0fd8f060edab7fae387fba542fc7b4f582"
OBS = "AO9/P90171/90171-01-01-00"


def old_module() -> ModuleType:
    """rxte_hpc/archive/download.py as it was at OLD_COMMIT, imported under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:rxte_hpc/archive/download.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-old-transport-")) / "old_download.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_download", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    shutil.rmtree(path.parent)
    return module


Fetcher = Callable[[str, Path], Callable[[str], Path]]


def fetchers(old: ModuleType) -> dict[str, Fetcher]:
    """name -> (server URL, cache) -> fetch(relpath): the two clients with the same patient policy."""
    def make_old(url: str, cache: Path) -> Callable[[str], Path]:
        return old.Downloader(url, cache, old.DownloadPolicy(timeout_s=30, retries=3, backoff_s=0.01)).fetch

    def make_new(url: str, cache: Path) -> Callable[[str], Path]:
        policy = download.DownloadPolicy(timeout_s=30, retries=3, backoff_s=0.01)
        return download.Downloader(HttpTransport(url, policy.timeout_s, policy.user_agent), cache, policy).fetch

    return {"old (urllib)": make_old, "new (fsspec)": make_new}


def timed(fetch: Callable[[str], Path], names: list[str], threads: int) -> float:
    t0 = time.perf_counter()
    if threads == 1:
        for name in names:
            fetch(name)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fetch, names))
    return time.perf_counter() - t0


def measure(clients: dict[str, Fetcher], root: Path, work: Path, files: dict[str, bytes], keep_alive: bool,
            args: argparse.Namespace) -> tuple[dict[tuple[str, str], float], dict[str, int]]:
    """Best figures per (measurement, client) on one kind of server, alternating the clients' order."""
    small = [n for n in files if "/stdprod/" in n]
    large = [n for n in files if "/pca/" in n]
    cut = large[0]
    size = len(files[cut])
    best: dict[tuple[str, str], float] = {}
    resent: dict[str, int] = {}
    with serve_tree(root, keep_alive=keep_alive) as server:
        for rep in range(args.repeat):
            for name, make in (list(clients.items()) if rep % 2 == 0 else list(reversed(clients.items()))):
                runs = {
                    "small files, 1 thread (files/s)": (small, 1, len(small)),
                    "small files, 4 threads (files/s)": (small, 4, len(small)),
                    "large files, 1 thread (MB/s)": (large, 1, len(large) * args.large_mb),
                }
                for what, (names, threads, amount) in runs.items():
                    cache = work / f"cache-{rep}-{len(best)}"
                    rate = amount / timed(make(server.url, cache), names, threads)
                    best[(what, name)] = max(best.get((what, name), 0.0), rate)
                    shutil.rmtree(cache)
                # resume: the first answer of this file stops half-way; the client must continue it
                cache = work / f"cache-cut-{rep}"
                with serve_tree(root, Faults(drop_after={f"/{cut}": (size // 2, 1)}), keep_alive=keep_alive) as cutter:
                    seconds = timed(make(cutter.url, cache), [cut], 1)
                    second = cutter.gets(f"/{cut}")[1]
                assert (cache / cut).read_bytes() == files[cut]
                resent[name] = size - int(str(second.range).removeprefix("bytes=").removesuffix("-"))
                key = ("resume after a cut at half (s, lower is better)", name)
                best[key] = min(best.get(key, float("inf")), seconds)
                shutil.rmtree(cache)
    return best, resent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--size-kb", type=int, default=60)
    ap.add_argument("--large-mb", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    clients = fetchers(old_module())
    names = list(clients)
    work = Path(tempfile.mkdtemp(prefix="bench-transport-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        files = {f"{OBS}/stdprod/xp{i:06d}_n2a.lc.gz": pseudo_random_bytes(args.size_kb * 1024, seed=i)
                 for i in range(args.files)}
        files.update({f"{OBS}/pca/FS4a_{i:04d}.gz": pseudo_random_bytes(args.large_mb * 1024 * 1024, seed=100 + i)
                      for i in range(3)})
        root = write_tree(work / "served", files)
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"bench_transport: {args.files} files of {args.size_kb} kB, 3 of {args.large_mb} MB, best of {args.repeat}; "
              f"load average {load} on {os.cpu_count()} cores")
        print(f"old = urllib downloader at {OLD_COMMIT[:10]}, new = fsspec HTTP transport; the same loopback server")
        for keep_alive, server in ((False, "HTTP/1.0, a connection per request"),
                                   (True, "HTTP/1.1 keep-alive (as Apache and S3 answer)")):
            best, resent = measure(clients, root, work, files, keep_alive, args)
            print(f"\nserver: {server}")
            print(f"{'':52s}" + "".join(f"{n:>16s}" for n in names) + f"{'new/old':>10s}")
            for what in dict.fromkeys(w for w, _ in best):
                old_v, new_v = best[(what, names[0])], best[(what, names[1])]
                print(f"{what:52s}{old_v:16.2f}{new_v:16.2f}{new_v / old_v:10.2f}")
            for name in names:
                print(f"resume, {name}: the second request asked for {resent[name]:,} of {args.large_mb * 1024 * 1024:,} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
