"""The archive over HTTP: runs, faults, 404s, shared caches, `fetch` and offline runs.

A simulated archive is served by tests/kit/httpserver.py on 127.0.0.1 and read by
the real client code (RemoteArchive -> Downloader -> urllib). The reference is
the same archive read from its local path, so every difference is the remote
path's fault.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from archivekit import assert_same_lcs, cache_files, closed_port, good_obsids, records_of, row_of, work_in_process, \
    write_config
from httpserver import Faults, serve_tree
from rxte_hpc.archive import remote
from rxte_hpc.cli import main
from rxte_hpc.core.config import load_config
from rxte_hpc.archive.download import DownloadPolicy
from rxte_hpc.core.errors import DataError, NoDataError, UsageError
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.archive.remote import RemoteArchive
from rxte_hpc.run.fetch import fetch as fetch_command
from rxte_hpc.sim.simulate import SimArchive, simulate_archive
from rxte_hpc.core.status import read_record
from where import REPO, STANDIN

FAST = DownloadPolicy(timeout_s=5, retries=6, backoff_s=0.01, backoff_max_s=0.05)
ROOT = REPO


# ------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimArchive:
    """Six good ObsIDs plus the three broken kinds (no Standard-2, all filtered out, corrupt)."""
    return simulate_archive(tmp_path_factory.mktemp("sim") / "archive", n_obs=6, seed=7, with_broken=True)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> DownloadPolicy:
    """In-process RemoteArchives retry quickly (spawned pool workers keep the real default)."""
    monkeypatch.setattr(remote, "DEFAULT_POLICY", FAST)
    return FAST


@pytest.fixture(scope="module")
def local_run(sim: SimArchive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same archive read from its local path; returns the run directory."""
    cfg = write_config(tmp_path_factory.mktemp("local"), sim, str(sim.root))
    work_in_process(cfg)
    main(["gather", str(cfg)])
    return load_config(cfg).run_dir


# --------------------------------------------------------------------------- tests


def test_run_over_http_gives_the_same_light_curves_as_the_local_path(sim, local_run, tmp_path):
    with serve_tree(sim.root) as server:
        cfg = write_config(tmp_path, sim, server.url)
        code = main(["run", str(cfg), "--workers", "2"])
    run_dir = load_config(cfg).run_dir
    assert code == 1  # the corrupt ObsID fails in both runs
    for obsid in [o.obsid.text for o in sim.observations]:
        here, there = read_record(RunPaths(run_dir), obsid), read_record(RunPaths(local_run), obsid)
        assert (obsid, here.state, here.error_kind) == (obsid, there.state, there.error_kind)
    assert_same_lcs(run_dir, local_run, good_obsids(sim))
    with fits.open(run_dir / "merged.lc") as a, fits.open(local_run / "merged.lc") as b:
        assert a[1].header["EXTNAME"] == "RATE"
        for name in ("RATE", "GTI"):
            for col in a[name].columns.names:
                np.testing.assert_array_equal(a[name].data[col], b[name].data[col])
    no_std2 = read_record(RunPaths(run_dir), next(k for k, v in sim.broken.items() if "Standard-2" in v))
    assert no_std2.state == "no_data" and server.url in no_std2.error and "404" in no_std2.error
    # only the one light curve per ObsID was downloaded: nothing from pca/, no filter files
    assert all("/stdprod/xp" in f or f.startswith(".listings") for f in cache_files(run_dir / "cache"))


def test_drops_and_503s_still_end_with_every_obsid_right(sim, local_run, tmp_path, fast):
    paths = {
        f"/{o.obsid.archive_dir(o.cycle)}/stdprod/{o.obsid.stdprod_lc_name('a')}" for o in sim.observations
    }
    paths = {p for p in paths if (sim.root / p.lstrip("/")).is_file()}
    faults = Faults(fail_503={p: 2 for p in paths}, drop_after={p: (1000, 4) for p in paths})
    with serve_tree(sim.root, faults) as server:
        records = work_in_process(write_config(tmp_path, sim, server.url))
        for p in paths:
            assert [r.status for r in server.gets(p)][:2] == [503, 503]
            assert server.gets(p)[-1].status in (200, 206)
    assert {o: r.state for o, r in records.items() if o not in sim.broken} == dict.fromkeys(good_obsids(sim), "done")
    assert_same_lcs(tmp_path / "run" / "out", local_run, good_obsids(sim))
    leftovers = [p for p in (tmp_path / "run" / "out" / "cache").rglob(".*") if p.name.endswith((".part", ".lock"))]
    assert leftovers == []


def test_a_404_is_no_data_with_the_url(sim, tmp_path, fast):
    victim = good_obsids(sim)[0]
    row = row_of(sim, victim)
    served = tmp_path / "served"
    shutil.copytree(sim.root / str(row.obsid.archive_dir(row.cycle)), served / str(row.obsid.archive_dir(row.cycle)))
    lc = served / str(row.obsid.archive_dir(row.cycle)) / "stdprod" / row.obsid.stdprod_lc_name("a")
    lc.unlink()
    with serve_tree(served) as server:
        records = work_in_process(write_config(tmp_path, sim, server.url, only=[victim]))
    record = records[victim]
    assert record.state == "no_data" and record.error_kind == "data"
    assert f"{server.url}{row.obsid.archive_dir(row.cycle)}/stdprod/{lc.name}" in record.error


def test_two_worker_processes_on_one_obsid_download_it_once(sim, tmp_path):
    obsid = good_obsids(sim)[1]
    row = row_of(sim, obsid)
    urlpath = f"/{row.obsid.archive_dir(row.cycle)}/stdprod/{row.obsid.stdprod_lc_name('a')}"
    with serve_tree(sim.root, Faults(delay_s={urlpath: 2.0})) as server:
        cfg = write_config(tmp_path, sim, server.url, only=[obsid])
        assert main(["plan", str(cfg)]) == 0
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "rxte_hpc", "-v", "work", str(cfg), "--obsid", obsid, "--force"]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert server.requests[urlpath] == 1
    # they overlapped: one of them found the other holding the file's lock
    assert sum("waiting for another worker" in out or "fetched by another worker" in out for out in outputs) == 1
    assert read_record(RunPaths(load_config(cfg).run_dir), obsid).state == "done"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fetch_prestages_then_a_run_works_with_the_server_stopped(sim, tmp_path, capsys):
    good = good_obsids(sim)
    with serve_tree(sim.root) as server:
        cfg = write_config(tmp_path, sim, server.url, only=good)
        assert main(["plan", str(cfg)]) == 0
        assert main(["fetch", str(cfg)]) == 0
        err = capsys.readouterr().err
        assert f"fetch: {len(good)} ObsIDs: {len(good)} fetched" in err
        assert f"fetch: 1/{len(good)} " in err  # plain progress lines off a terminal
        cache = tmp_path / "run" / "cache"
        assert sorted(f.split("/")[2] for f in cache_files(cache)) == sorted(good)
        before = len(server.log)
        config = load_config(cfg)
        terminal = _Terminal()
        result = fetch_command(config, read_manifest(RunPaths(config.run_dir).manifest), stream=terminal, progress=True)
        assert result.exit_code == 0 and result.counts["cached"] == len(good) and result.nbytes == 0
        assert len(server.log) == before  # everything came from the cache: not one request
        text = terminal.getvalue()
        assert text.startswith("\r[") and f"{len(good)} cached, 0 missing, 0 failed" in text  # the progress bar
        assert f"{len(good)} cached, 0 missing (404), 0 failed" in result.lines()[-1]
    assert main(["run", str(cfg), "--workers", "2"]) == 0
    for obsid in good:
        assert read_record(RunPaths(config.run_dir), obsid).state == "done"
    assert (config.run_dir / "merged.lc").is_file()


def test_fetch_reports_404s_as_missing_and_does_only_one_task(sim, tmp_path, capsys):
    with serve_tree(sim.root) as server:
        cfg = write_config(tmp_path, sim, server.url, per_task=20)
        assert main(["plan", str(cfg)]) == 0
        assert main(["fetch", str(cfg), "--task", "0"]) == 0
    err = capsys.readouterr().err
    n = len(sim.observations)
    assert f"fetch: {n} ObsIDs: {n - 2} fetched" in err and "2 missing (404), 0 failed" in err
    assert f"{server.url}" in err and "HTTP 404" in err
    assert main(["fetch", str(cfg), "--task", "1"]) == 2  # out of range: usage error



def test_fetch_for_native_with_prepared_products_downloads_nothing_and_the_run_needs_no_server(sim, tmp_path):
    """native reads prepared products, never the archive's stdprod or pca files: fetch stages what it declares."""
    obsid = good_obsids(sim)[2]
    with serve_tree(sim.root) as server:
        cfg = write_config(tmp_path, sim, server.url, backend="native", only=[obsid])
        cfg.write_text(cfg.read_text().replace("chmax: 10}", f"chmax: 10, prepared: '{sim.root / 'prepared'}'}}"))
        assert main(["plan", str(cfg)]) == 0
        assert main(["fetch", str(cfg)]) == 0
        assert not server.log, "fetch downloaded files the native backend never reads"
    # the server is gone
    assert main(["work", str(cfg), "--task", "0"]) == 0
    assert records_of(cfg) == {obsid: "done"}


@pytest.mark.parametrize("backend", ["native", "heasoft"])
def test_fetch_then_a_run_with_the_server_stopped_prepares_from_the_cache(sim, tmp_path, monkeypatch, backend):
    """Without prepared products both backends run pcaprepobsid on the ObsID tree: fetch mirrors it, offline works."""
    obsid = good_obsids(sim)[1]
    monkeypatch.setenv("HEADAS", str(STANDIN))
    with serve_tree(sim.root) as server:
        cfg = write_config(tmp_path, sim, server.url, backend=backend, only=[obsid])
        assert main(["plan", str(cfg)]) == 0
        assert main(["fetch", str(cfg)]) == 0
        assert server.log
    assert main(["work", str(cfg), "--task", "0"]) == 0
    assert records_of(cfg) == {obsid: "done"}


def test_fetch_for_heasoft_mirrors_whole_obsid_directories(sim, tmp_path):
    obsid = good_obsids(sim)[0]
    row = row_of(sim, obsid)
    with serve_tree(sim.root) as server:
        cfg = write_config(tmp_path, sim, server.url, backend="heasoft", only=[obsid])
        assert main(["plan", str(cfg)]) == 0
        assert main(["fetch", str(cfg)]) == 0
        before = len(server.log)
        assert main(["fetch", str(cfg)]) == 0
        assert len(server.log) == before
    local = sim.root / str(row.obsid.archive_dir(row.cycle))
    mirror = tmp_path / "run" / "cache" / str(row.obsid.archive_dir(row.cycle))
    assert (mirror / ".complete").is_file()
    want = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert [f for f in cache_files(mirror) if not f.startswith(".")] == want


def test_fetch_with_a_local_archive_has_nothing_to_do(sim, tmp_path, capsys):
    cfg = write_config(tmp_path, sim, str(sim.root))
    assert main(["plan", str(cfg)]) == 0
    assert main(["fetch", str(cfg)]) == 0
    assert "archive.root is local; nothing to fetch" in capsys.readouterr().err


@pytest.mark.parametrize("root", ["not-a-url-or-dir", "https://", "http://user:pw@example.org/archive"])
def test_an_unusable_archive_root_is_a_usage_error_naming_it(sim, tmp_path, capsys, root):
    cfg = write_config(tmp_path, sim, root)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and root in err and "archive" in err


def test_an_unreachable_host_gives_site_failures_and_leaves_the_cache_clean(sim, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(remote, "DEFAULT_POLICY", DownloadPolicy(timeout_s=2, retries=1, backoff_s=0.01, backoff_max_s=0.02))
    url = f"http://127.0.0.1:{closed_port()}/"
    cfg = write_config(tmp_path, sim, url, per_task=5)
    records = work_in_process(cfg)
    assert {r.state for r in records.values()} == {"failed"}
    assert {r.error_kind for r in records.values()} == {"site"}
    assert all(url in r.error for r in records.values())
    # tasks of five and four: after three failed ObsIDs a worker stops trying the network
    not_tried = sorted(r.task for r in records.values() if r.error.startswith("not tried"))
    assert len(records) == 9 and not_tried == [0, 0, 1]
    capsys.readouterr()
    assert main(["status", str(cfg)]) == 1
    assert f"{len(records)} failed" in capsys.readouterr().out
    assert main(["fetch", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"0 fetched (0 B), 0 cached, 0 missing (404), {len(records)} failed" in err
    assert cache_files(tmp_path / "run" / "cache") == []


def test_obsid_dir_mirrors_the_whole_tree_once(sim, tmp_path):
    row = row_of(sim, good_obsids(sim)[3])
    local = sim.root / str(row.obsid.archive_dir(row.cycle))
    with serve_tree(sim.root) as server:
        archive = RemoteArchive(server.url, tmp_path / "cache", policy=FAST)
        assert archive.location == server.url
        mirror = archive.obsid_dir(row)
        want = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
        got = sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*") if p.is_file() and not p.name.startswith("."))
        assert got == want
        assert all((mirror / f).read_bytes() == (local / f).read_bytes() for f in want)
        before = len(server.log)
        assert archive.obsid_dir(row) == mirror
        assert archive.listdir(row, "pca") == sorted(p.name for p in (local / "pca").iterdir())
        assert archive.listdir(row, "hexte") == []
        assert len(server.log) == before  # a complete tree answers from the cache
        assert archive.listdir(row_of(sim, good_obsids(sim)[4]), "nonexistent") == []  # a 404 directory
        with pytest.raises(NoDataError, match=r"http://127\.0\.0\.1:\d+/.*nothing.fits.*404"):
            archive.file(row, "nothing.fits")


def test_a_403_is_a_data_error_and_unsafe_paths_are_refused(sim, tmp_path):
    row = row_of(sim, good_obsids(sim)[0])
    rel = f"stdprod/{row.obsid.filter_file_name()}"
    with serve_tree(sim.root, Faults(forbidden=frozenset({f"/{row.obsid.archive_dir(row.cycle)}/{rel}"}))) as server:
        archive = RemoteArchive(server.url, tmp_path / "cache", policy=FAST)
        with pytest.raises(DataError, match="HTTP 403"):
            archive.file(row, rel)
        with pytest.raises(UsageError):
            archive.file(row, "../../../../etc/passwd")
