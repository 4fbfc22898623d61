"""Machine failures against real filesystems: a read-only run directory, a full disk, no usable scratch.

Each filesystem is a tmpfs this test mounts (root only; elsewhere these tests
skip with the reason, and test_worker's RLIMIT_FSIZE test still covers a full
disk). Every case must end in one line and exit 1, no traceback, and no
ObsID left `running`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from rxte_hpc.core.config import load_config
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.fits.lcfile import read_lightcurve
from rxte_hpc.plan import planner
from where import KIT, REPO

N_OBS = 40


def _can_mount() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


pytestmark = pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs needs root on Linux")


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_ro(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from rxte_hpc.sim.simulate import simulate_archive

    return simulate_archive(tmp_path_factory.mktemp("fail-archive"), n_obs=N_OBS, seed=9)


def write_config(tmp: Path, archive_root: Path, run_dir: Path, scratch: Path, per_task: int = 4) -> Path:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(
        f"run_dir: {run_dir}\nsource: {{kind: archive}}\narchive: {{root: {archive_root}}}\n"
        f"scratch: {{root: {scratch}}}\ntasks: {{obs_per_task: {per_task}}}\n"
        f"extract: {{backend: native, chmin: 5, chmax: 10, prepared: {archive_root / 'prepared'}}}\n"
    )
    return cfg


def plan(cfg: Path) -> None:
    config = load_config(cfg)
    planner.plan(config).write(RunPaths(config.run_dir).manifest)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "rxte_hpc", *args], capture_output=True, text=True, timeout=180,
                          env=full)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line; fails the test on a traceback or a multi-line error."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rxte-hpc: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def records(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in RunPaths(run).status_files()]


@pytest.mark.parametrize("command", [["work", "--task", "0"], ["run", "--workers", "2"]])
def test_read_only_run_directory_is_one_site_line(archive, tmp_path, command):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, archive.root, run, tmp_path / "scratch")
    with tmpfs(run, "size=20m"):
        plan(cfg)
        remount_ro(run)
        proc = cli(command[0], str(cfg), *command[1:])
        line = error_line(proc)
        assert proc.returncode == 1, proc.stderr
        assert "Read-only file system" in line and str(run) in line, line
        assert records(run) == []
    assert not list((tmp_path / "scratch").glob("rxte-hpc-*"))


def test_full_disk_ends_run_with_one_line_and_nothing_running(archive, tmp_path):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, archive.root, run, tmp_path / "scratch", per_task=2)
    with tmpfs(run, "size=200k"):
        plan(cfg)
        proc = cli("run", str(cfg), "--workers", "2")
        line = error_line(proc)
        assert proc.returncode == 1, proc.stderr
        assert "disk full" in line, line
        recs = records(run)
        assert recs, "nothing was recorded before the disk filled"
        assert all(r["state"] != "running" for r in recs), [r for r in recs if r["state"] == "running"]
        # The first write to fail is either a light curve (its ObsID is then recorded failed) or the
        # running record of an ObsID about to start (which then never starts).
        failed = [r for r in recs if r["state"] == "failed"]
        assert all(r["error_kind"] == "site" and "disk full" in r["error"] for r in failed), failed
        assert failed or "cannot record that it started" in line, line
        for r in recs:
            if r["state"] == "done":
                assert read_lightcurve(run / r["output"]).n_rows > 0
        paths = RunPaths(run)
        assert all(read_lightcurve(p).n_rows > 0 for p in paths.lc_files())
    assert not list((tmp_path / "scratch").glob("rxte-hpc-*"))


def test_disk_full_during_an_obsid_still_records_it(tmp_path, monkeypatch):
    """The disk fills while an ObsID extracts: its light curve and a new record cannot be written, yet
    its running record becomes `failed` (site) in place, in the room the running record reserved."""
    monkeypatch.syspath_prepend(str(KIT))
    from workerkit import factory, write_run

    from rxte_hpc.core.manifest import read_manifest
    from rxte_hpc.core.status import read_record
    from rxte_hpc.core.errors import SiteError
    from rxte_hpc.run.worker import run_task

    with tmpfs(tmp_path / "run", "size=200k"):
        cfg_path = write_run(tmp_path)
        config = load_config(cfg_path)
        paths = RunPaths(config.run_dir)
        manifest = read_manifest(paths.manifest)
        monkeypatch.setenv("WORKERKIT_FILL", str(tmp_path / "run" / "filler"))
        with pytest.raises(SiteError, match="disk full"):
            run_task(config, manifest, 0, extractor_factory=factory("fill"))
        first, *rest = manifest.rows_for_task(0)
        rec = read_record(paths, first.obsid.text)
        assert rec is not None and rec.state == "failed" and rec.error_kind == "site", rec
        assert "disk full" in rec.error
        assert all(read_record(paths, r.obsid.text) is None for r in rest)
        assert list(paths.lc_files()) == []


def test_no_usable_scratch_is_a_clear_site_error(archive, tmp_path):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, archive.root, run, tmp_path / "shm")
    plan(cfg)
    with tmpfs(tmp_path / "shm", "ro,size=1m"), tmpfs(tmp_path / "tmpdir", "ro,size=1m"):
        proc = cli("work", str(cfg), "--task", "0", env={"TMPDIR": str(tmp_path / "tmpdir")})
    line = error_line(proc)
    assert proc.returncode == 1, proc.stderr
    assert "no usable scratch directory" in line and "no space" not in line.lower(), line
    assert str(tmp_path / "shm") in line and str(tmp_path / "tmpdir") in line
    assert records(run) == []


def test_scratch_fallback_is_said_once_per_process(archive, tmp_path):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, archive.root, run, tmp_path / "shm", per_task=4)
    plan(cfg)
    fallback = tmp_path / "tmpdir"
    fallback.mkdir()
    with tmpfs(tmp_path / "shm", "ro,size=1m"):
        proc = cli("run", str(cfg), "--workers", "1", env={"TMPDIR": str(fallback)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("unusable") == 1, proc.stderr
    assert {r["state"] for r in records(run)} <= {"done", "no_data"} and len(records(run)) == N_OBS
    assert not list(fallback.glob("rxte-hpc-*"))
