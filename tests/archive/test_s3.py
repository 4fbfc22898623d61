"""The archive in an S3 bucket: a real S3 server (moto's) on 127.0.0.1, read anonymously through s3fs.

The bucket stands in for HEASARC's `s3://nasa-heasarc/xte/data/archive/` (public
read policy, HEASARC's layout). Faults come from a proxy between the client and
moto (tests/kit/s3server.py). The reference of every run is the same simulated
archive read from its local path.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import socket
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from archivekit import assert_same_lcs, cache_files, cache_leftovers, closed_port, good_obsids, records_of, row_of, \
    work_in_process, write_config, write_table
from httpserver import Faults, pseudo_random_bytes, serve_tree
from s3server import HEASARC_BUCKET as BUCKET, HEASARC_PREFIX as PREFIX, MotoServer, fill_bucket, serve_proxy, \
    tree_files
from rxte_hpc.archive import download, remote
from rxte_hpc.archive.download import DownloadPolicy
from rxte_hpc.archive.remote import RemoteArchive
from rxte_hpc.cli import main
from rxte_hpc.core.archiveconfig import S3Config
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import DataError, NoDataError, SiteError
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import read_record
from rxte_hpc.sim.simulate import SimArchive
from where import REPO, STANDIN

ROOT = f"s3://{BUCKET}/{PREFIX}"
FAST = DownloadPolicy(timeout_s=5, retries=4, backoff_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> DownloadPolicy:
    """In-process RemoteArchives retry quickly (spawned pool workers keep the real default)."""
    monkeypatch.setattr(remote, "DEFAULT_POLICY", FAST)
    return FAST


def s3_archive(root: str, endpoint: str, cache: Path, policy: DownloadPolicy = FAST) -> RemoteArchive:
    return RemoteArchive(root, cache, policy=policy, s3=S3Config(endpoint_url=endpoint))


def key_path(sim: SimArchive, obsid: str, rel: str, bucket: str = BUCKET) -> str:
    """The URL path of an ObsID's file in the bucket, as the proxy sees it."""
    row = row_of(sim, obsid)
    return f"/{bucket}/{PREFIX}/{row.obsid.archive_dir(row.cycle)}/{rel}"


def stdprod_rel(sim: SimArchive, obsid: str) -> str:
    return f"stdprod/{row_of(sim, obsid).obsid.stdprod_lc_name('a')}"


# ------------------------------------------------------------------- runs equal the local run


@pytest.mark.parametrize("backend", ["stdprod", "native", "heasoft"])
def test_a_run_through_s3_equals_the_local_run(s3sim, moto, tmp_path, monkeypatch, backend):
    """Every backend reads the bucket through the cache and ends with the local run's records and light curves."""
    monkeypatch.setenv("HEADAS", str(STANDIN))  # native without prepared products runs pcaprepobsid (stand-in)
    only = None if backend == "stdprod" else good_obsids(s3sim)[:2]
    local_cfg = write_config(tmp_path, s3sim, str(s3sim.root), name="local", backend=backend, only=only)
    assert main(["run", str(local_cfg), "--workers", "2"]) in (0, 1)
    with serve_proxy(moto.url) as proxy:
        cfg = write_config(tmp_path, s3sim, ROOT, name="s3", backend=backend, only=only, s3_endpoint=proxy.url)
        code = main(["run", str(cfg), "--workers", "2"])
        keys = {r.path for r in proxy.log if r.method == "GET"}
    local, there = load_config(local_cfg).run_dir, load_config(cfg).run_dir
    cache = tmp_path / "s3" / "cache"
    assert code == (1 if only is None else 0)  # the corrupt ObsID fails in both runs
    obsids = only or [o.obsid.text for o in s3sim.observations]
    for obsid in obsids:
        a, b = read_record(RunPaths(there), obsid), read_record(RunPaths(local), obsid)
        assert a is not None and b is not None
        assert (obsid, a.state, a.error_kind) == (obsid, b.state, b.error_kind)
    good = [o for o in obsids if o not in s3sim.broken]
    assert_same_lcs(there, local, good)
    with fits.open(there / "merged.lc") as x, fits.open(local / "merged.lc") as y:
        for col in x["RATE"].columns.names:
            np.testing.assert_array_equal(x["RATE"].data[col], y["RATE"].data[col])
    if backend == "stdprod":  # one light curve per ObsID, nothing else
        assert all("/stdprod/xp" in k for k in keys), keys
        assert all("/stdprod/xp" in f or f.startswith(".listings") for f in cache_files(cache))
        missing = next(k for k, v in s3sim.broken.items() if "Standard-2" in v)
        record = read_record(RunPaths(there), missing)
        assert record is not None and record.state == "no_data"
        assert f"{ROOT}/" in record.error and "NoSuchKey" in record.error
    else:  # pcaprepobsid read whole ObsID directories, mirrored once each
        for obsid in good:
            row = row_of(s3sim, obsid)
            assert (cache / str(row.obsid.archive_dir(row.cycle)) / ".complete").is_file()
    assert cache_files(cache) and cache_leftovers(cache) == []


def test_an_obsid_missing_from_the_bucket_is_no_data_with_its_url(s3sim, moto, tmp_path, fast):
    victim = good_obsids(s3sim)[0]
    row = row_of(s3sim, victim)
    files = tree_files(s3sim.root / str(row.obsid.archive_dir(row.cycle)), f"{PREFIX}/{row.obsid.archive_dir(row.cycle)}",
                       only=())
    del files[f"{PREFIX}/{row.obsid.archive_dir(row.cycle)}/{stdprod_rel(s3sim, victim)}"]
    fill_bucket(moto, "missing-one", files)
    cfg = write_config(tmp_path, s3sim, f"s3://missing-one/{PREFIX}", only=[victim], s3_endpoint=moto.url)
    record = work_in_process(cfg)[victim]
    assert record is not None and (record.state, record.error_kind) == ("no_data", "data")
    assert f"s3://missing-one/{PREFIX}/{row.obsid.archive_dir(row.cycle)}/{stdprod_rel(s3sim, victim)}" in record.error


# ---------------------------------------------------------------------- listings


def test_listings_of_more_than_1000_keys_are_paginated(s3sim, moto, tmp_path):
    """ListObjectsV2 answers 1,000 keys per call: the rest comes with the continuation token, none is lost."""
    obsid = good_obsids(s3sim)[1]
    row = row_of(s3sim, obsid)
    obsdir = f"{PREFIX}/{row.obsid.archive_dir(row.cycle)}"
    files: dict[str, bytes | Path] = dict(tree_files(s3sim.root / str(row.obsid.archive_dir(row.cycle)), obsdir, only=()))
    extra = {f"{obsdir}/pca/FX_{i:04d}": b"x" for i in range(1001)}
    fill_bucket(moto, "many-keys", {**files, **extra})
    want_pca = sorted(p.name for p in (s3sim.root / str(row.obsid.archive_dir(row.cycle)) / "pca").iterdir())
    with serve_proxy(moto.url) as proxy:
        archive = s3_archive(f"s3://many-keys/{PREFIX}", proxy.url, tmp_path / "cache")
        assert archive.listdir(row, "pca") == sorted(want_pca + [k.rsplit("/", 1)[1] for k in extra])
        listed = proxy.lists("many-keys")
        assert len(listed) == 2 and "continuation-token" not in listed[0] and "continuation-token" in listed[1]
        tree = archive.downloader.transport.list_tree(row.obsid.archive_dir(row.cycle))
        assert len(tree) == len(files) + len(extra)
        assert len(proxy.lists("many-keys")) == 4
    # the saved listing answers the next run without a request (the proxy is gone)
    assert len(s3_archive(f"s3://many-keys/{PREFIX}", "http://127.0.0.1:9", tmp_path / "cache").listdir(row, "pca")) \
        == len(want_pca) + len(extra)


def test_an_empty_root_is_one_error_naming_the_other_layout(s3sim, moto, tmp_path, fast, capsys):
    """HEASARC moved rxte/ to xte/ once: the old form lists nothing, which is said, not 'no_data' per ObsID."""
    only = good_obsids(s3sim)[:2]
    old = f"s3://{BUCKET}/rxte/data/archive"
    cfg = write_config(tmp_path, s3sim, old, only=only, s3_endpoint=moto.url)
    records = work_in_process(cfg)
    assert {(r.state, r.error_kind) for r in records.values() if r is not None} == {("failed", "site")}
    assert all(f"is it {ROOT}/?" in r.error for r in records.values() if r is not None)
    capsys.readouterr()
    assert main(["fetch", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"archive.root {old}/ lists nothing" in err[-1] and f"{ROOT}/" in err[-1]


# ---------------------------------------------------------------- faults of the network


def test_slowdown_503_is_retried_then_succeeds(s3sim, moto, tmp_path, caplog):
    obsid = good_obsids(s3sim)[2]
    key = key_path(s3sim, obsid, stdprod_rel(s3sim, obsid))
    with serve_proxy(moto.url, Faults(fail_503={key: 2})) as proxy:
        path = s3_archive(ROOT, proxy.url, tmp_path / "cache").file(row_of(s3sim, obsid), stdprod_rel(s3sim, obsid))
        assert [r.status for r in proxy.gets(key)] == [503, 503, 200]
    assert path.read_bytes() == (s3sim.root / key.split(f"/{PREFIX}/")[1]).read_bytes()
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all("SlowDown" in m for m in retries)


def test_slowdown_that_never_ends_is_a_site_failure_after_the_retries(s3sim, moto, tmp_path):
    obsid = good_obsids(s3sim)[2]
    key = key_path(s3sim, obsid, stdprod_rel(s3sim, obsid))
    with serve_proxy(moto.url, Faults(fail_503={key: 100})) as proxy:
        with pytest.raises(SiteError, match=r"SlowDown.*gave up after 5 attempts"):
            s3_archive(ROOT, proxy.url, tmp_path / "cache").file(row_of(s3sim, obsid), stdprod_rel(s3sim, obsid))
        assert len(proxy.gets(key)) == FAST.retries + 1
    assert cache_files(tmp_path / "cache") == []


@pytest.fixture(scope="module")
def big_object(moto: MotoServer, s3sim: SimArchive) -> tuple[str, str, bytes]:
    """A 3 MB file in an ObsID's pca/ folder of its own bucket: (relpath in the ObsID, proxy path, bytes)."""
    obsid = good_obsids(s3sim)[3]
    data = pseudo_random_bytes(3_000_000, seed=11)
    rel = "pca/FS4a_00000000-00000fff.gz"
    row = row_of(s3sim, obsid)
    fill_bucket(moto, "big-files", {f"{PREFIX}/{row.obsid.archive_dir(row.cycle)}/{rel}": data})
    return rel, key_path(s3sim, obsid, rel, bucket="big-files"), data


def test_a_download_cut_halfway_is_resumed_from_the_bytes_kept(s3sim, moto, tmp_path, big_object):
    rel, key, data = big_object
    row = row_of(s3sim, good_obsids(s3sim)[3])
    with serve_proxy(moto.url, Faults(drop_after={key: (1_500_000, 1)})) as proxy:
        path = s3_archive(f"s3://big-files/{PREFIX}", proxy.url, tmp_path / "cache").file(row, rel)
        gets = proxy.gets(key)
    assert path.read_bytes() == data
    assert [(r.range is None, r.status) for r in gets] == [(True, 200), (False, 206)]
    assert 0 < int(gets[1].range.removeprefix("bytes=").removesuffix("-")) <= 1_500_000
    assert cache_leftovers(tmp_path / "cache") == []


def test_a_partial_file_left_by_a_killed_worker_is_continued(s3sim, moto, tmp_path, big_object):
    rel, key, data = big_object
    row = row_of(s3sim, good_obsids(s3sim)[3])
    dest = tmp_path / "cache" / str(row.obsid.archive_dir(row.cycle)) / rel
    dest.parent.mkdir(parents=True)
    (dest.parent / f".{dest.name}.part").write_bytes(data[:1_234_567])
    (dest.parent / f".{dest.name}.lock").touch()  # its lock file, left by a SIGKILL
    with serve_proxy(moto.url) as proxy:
        assert s3_archive(f"s3://big-files/{PREFIX}", proxy.url, tmp_path / "cache").file(row, rel) == dest
        assert [(r.range, r.status) for r in proxy.gets(key)] == [("bytes=1234567-", 206)]
    assert dest.read_bytes() == data
    assert cache_leftovers(tmp_path / "cache") == []


def _fetch_in_child(endpoint: str, cache: str, obsid_dir: str, rel: str) -> str:
    """Runs in a spawned process: fetch one file from the bucket, return its digest."""
    transport = remote.open_transport(f"s3://big-files/{PREFIX}", FAST, S3Config(endpoint_url=endpoint))
    path = download.Downloader(transport, Path(cache), FAST).fetch(f"{obsid_dir}/{rel}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_three_workers_asking_for_one_file_download_it_once(s3sim, moto, tmp_path, big_object):
    rel, key, data = big_object
    row = row_of(s3sim, good_obsids(s3sim)[3])
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs server threads
    with serve_proxy(moto.url, Faults(delay_s={key: 1.0})) as proxy:
        with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
            args = [proxy.url] * 3, [str(tmp_path / "cache")] * 3, [str(row.obsid.archive_dir(row.cycle))] * 3, [rel] * 3
            digests = list(pool.map(_fetch_in_child, *args))
        assert len(proxy.gets(key)) == 1
    assert digests == [hashlib.sha256(data).hexdigest()] * 3


def test_a_file_over_its_size_cap_is_refused_before_a_byte_is_kept(s3sim, moto, tmp_path, big_object, monkeypatch):
    rel, key, _ = big_object
    row = row_of(s3sim, good_obsids(s3sim)[3])
    monkeypatch.setitem(download.SIZE_CAPS, "science data (pca/, hexte/)", 1024 * 1024)
    with serve_proxy(moto.url) as proxy:
        with pytest.raises(DataError) as caught:
            s3_archive(f"s3://big-files/{PREFIX}", proxy.url, tmp_path / "cache").file(row, rel)
        assert len(proxy.gets(key)) == 1  # not retried
    message = str(caught.value)
    assert "\n" not in message and "3000000 bytes, above the 1 MB cap for science data" in message
    assert cache_files(tmp_path / "cache") == []


# ------------------------------------------------------------------- offline, access


def test_fetch_then_work_with_the_server_stopped(s3sim, moto, tmp_path, monkeypatch):
    """The login node fetches whole ObsID trees for heasoft; the compute node runs with no S3 at all."""
    monkeypatch.setenv("HEADAS", str(STANDIN))
    obsid = good_obsids(s3sim)[4]
    with serve_proxy(moto.url) as proxy:
        cfg = write_config(tmp_path, s3sim, ROOT, backend="heasoft", only=[obsid], s3_endpoint=proxy.url)
        assert main(["plan", str(cfg)]) == 0
        assert main(["fetch", str(cfg)]) == 0
        fetched = len(proxy.log)
        assert main(["fetch", str(cfg)]) == 0
        assert len(proxy.log) == fetched  # the second fetch is answered by the cache
    assert main(["work", str(cfg), "--task", "0"]) == 0  # the proxy is gone: nothing listens there now
    assert records_of(cfg) == {obsid: "done"}


def test_the_https_and_s3_forms_of_one_archive_give_the_same_files(s3sim, moto, tmp_path):
    rows = [row_of(s3sim, o) for o in good_obsids(s3sim)[:2]]
    with serve_tree(s3sim.root) as http, serve_proxy(moto.url) as proxy:
        over_http = RemoteArchive(http.url, tmp_path / "http", policy=FAST)
        over_s3 = s3_archive(ROOT, proxy.url, tmp_path / "s3")
        for row in rows:
            a, b = over_http.obsid_dir(row), over_s3.obsid_dir(row)
            files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
            files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
            assert files_a == files_b and len(files_a) > 5
            assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a if not f.endswith(".complete"))
            assert over_http.listdir(row, "pca") == over_s3.listdir(row, "pca")


def test_a_bucket_without_a_public_policy_refuses_anonymous_reads(s3sim, moto, tmp_path):
    """moto, like AWS, answers unsigned requests with 403 when the bucket policy does not allow them."""
    obsid = good_obsids(s3sim)[0]
    row = row_of(s3sim, obsid)
    fill_bucket(moto, "private-archive", {f"{PREFIX}/{row.obsid.archive_dir(row.cycle)}/FMI": b"fmi"}, public=False)
    with pytest.raises(DataError, match=r"S3 403; the bucket refuses anonymous reads.*archive\.s3\.anon: false"):
        s3_archive(f"s3://private-archive/{PREFIX}", moto.url, tmp_path / "cache").file(row, "FMI")


def test_a_missing_bucket_is_an_empty_root(s3sim, moto, tmp_path):
    row = row_of(s3sim, good_obsids(s3sim)[0])
    archive = s3_archive(f"s3://no-such-bucket/{PREFIX}", moto.url, tmp_path / "cache")
    with pytest.raises(SiteError, match=r"s3://no-such-bucket/xte/data/archive/ lists nothing.*rxte/data/archive"):
        archive.file(row, "FMI")


def test_a_refused_connection_is_not_retried(s3sim, tmp_path, caplog):
    row = row_of(s3sim, good_obsids(s3sim)[0])
    archive = s3_archive(ROOT, f"http://127.0.0.1:{closed_port()}", tmp_path / "cache")
    caplog.set_level(logging.WARNING)
    with pytest.raises(SiteError, match="connection refused"):
        archive.file(row, "FMI")
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_a_copy_of_a_bucket_with_an_unsafe_key_ignores_it(s3sim, moto, tmp_path, caplog):
    """Keys are input: '..' or a control character in a key never becomes a path in the cache."""
    row = row_of(s3sim, good_obsids(s3sim)[5])
    obsdir = f"{PREFIX}/{row.obsid.archive_dir(row.cycle)}"
    fill_bucket(moto, "odd-keys", {f"{obsdir}/FMI": b"fmi", f"{obsdir}/pca/../../escape": b"x",
                                   f"{obsdir}/pca/bad\x01name": b"x", f"{obsdir}/pca/.FMI.part": b"x"})
    with serve_proxy(moto.url) as proxy:
        local = s3_archive(f"s3://odd-keys/{PREFIX}", proxy.url, tmp_path / "cache").obsid_dir(row)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [".complete", "FMI"]
    assert not (tmp_path / "cache" / "escape").exists()
    assert sum("ignoring unsafe name" in r.getMessage() for r in caplog.records) >= 2


def test_no_such_key_in_a_listing_is_an_empty_folder(s3sim, moto, tmp_path):
    row = row_of(s3sim, good_obsids(s3sim)[0])
    archive = s3_archive(ROOT, moto.url, tmp_path / "cache")
    assert archive.listdir(row, "hexte") == []
    with pytest.raises(NoDataError, match=r"NoSuchKey"):
        archive.file(row, "nothing.fits")


def _unresolvable(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """`host` does not resolve, as offline: the OS resolver says so (no DNS query leaves the machine)."""
    real = socket.getaddrinfo

    def getaddrinfo(name, *args, **kwargs):  # noqa: ANN001, ANN202 - socket's own signature
        if name == host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_host_that_does_not_resolve_is_not_retried_over_s3(s3sim, tmp_path, monkeypatch, caplog):
    _unresolvable(monkeypatch, "s3.rxte-hpc.test")
    row = row_of(s3sim, good_obsids(s3sim)[0])
    caplog.set_level(logging.WARNING)
    with pytest.raises(SiteError, match="host name does not resolve"):
        s3_archive(ROOT, "http://s3.rxte-hpc.test:9000", tmp_path / "cache").file(row, "FMI")
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_offline_a_task_gives_up_without_retrying_dns_failures(s3sim, tmp_path, monkeypatch, caplog):
    """As a new user offline: nine ObsIDs over HTTPS, the default retry policy, no name resolves.

    Each worker tries three ObsIDs once (no retries of a DNS failure) and records
    the rest as not tried: all `failed` (site), so `rerun` picks them up later.
    """
    _unresolvable(monkeypatch, "heasarc.rxte-hpc.test")
    cfg = write_config(tmp_path, s3sim, "https://heasarc.rxte-hpc.test/FTP/xte/data/archive", per_task=5)
    caplog.set_level(logging.WARNING)
    records = work_in_process(cfg)
    assert {(r.state, r.error_kind) for r in records.values() if r is not None} == {("failed", "site")}
    tried = [r for r in records.values() if r is not None and r.error.startswith("cannot reach")]
    not_tried = [r for r in records.values() if r is not None and r.error.startswith("not tried")]
    assert len(records) == 9 and len(tried) == 6 and len(not_tried) == 3
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_the_shipped_s3_config_runs_against_the_bucket(s3sim, moto, tmp_path):
    """configs/etacar-s3.yaml as shipped, with only what this machine needs changed: the ObsIDs come from the
    simulation's table, the endpoint is the local S3 server, the paths are in tmp_path. Its root, bucket and
    layout (s3://nasa-heasarc/xte/data/archive/AO<c>/P<prnb>/<obsid>) are kept, and so is anonymous access.
    """
    shipped = yaml.safe_load((REPO / "configs" / "etacar-s3.yaml").read_text())
    assert shipped["archive"]["root"] == ROOT and shipped["archive"]["s3"]["anon"] is True
    only = good_obsids(s3sim)[:2]
    table = tmp_path / "xtemaster.ecsv"
    write_table(s3sim, table, only)
    shipped.update(run_dir=str(tmp_path / "run"), source={"kind": "table", "path": str(table)},
                   scratch={"root": str(tmp_path), "min_free_mb": 0})
    shipped["archive"].update(cache=str(tmp_path / "cache"))
    shipped["archive"]["s3"]["endpoint_url"] = moto.url
    shipped["extract"]["backend"] = "stdprod"
    cfg = tmp_path / "etacar-s3.yaml"
    cfg.write_text(yaml.safe_dump(shipped))
    assert main(["run", str(cfg)]) == 0
    assert records_of(cfg) == dict.fromkeys(only, "done")
