"""SIGKILL of a whole running `rxte-hpc run` (parent and pool), then `run` again: nothing lost or mixed.

The kill lands at three points of progress (counted from the status records as
they appear), like a node failure or the OOM killer. After each kill every
visible file under lc/ and status/ must be complete; after the final run the
merged light curve must equal that of an uninterrupted run of the same config.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from rxte_hpc.core.paths import RunPaths
from rxte_hpc.fits.lcfile import read_lightcurve
from rxte_hpc.sim.simulate import simulate_archive

N_OBS = 120


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return simulate_archive(tmp_path_factory.mktemp("archive"), n_obs=N_OBS, seed=11)


def config(tmp: Path, archive_root: Path) -> Path:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(
        f"run_dir: run\nsource: {{kind: archive}}\narchive: {{root: {archive_root}}}\n"
        f"scratch: {{root: scratch}}\ntasks: {{obs_per_task: 2}}\n"
        f"extract: {{backend: native, chmin: 5, chmax: 10, prepared: {archive_root / 'prepared'}}}\n"
    )
    return cfg


def start_run(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rxte_hpc", "run", str(cfg), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def finished_records(status_dir: Path) -> int:
    n = 0
    for p in RunPaths(status_dir.parent).status_files():
        try:
            if json.loads(p.read_text())["state"] != "running":
                n += 1
        except (OSError, ValueError):
            raise AssertionError(f"half-written status record visible: {p}") from None
    return n


def running_records(status_dir: Path) -> list[Path]:
    out = []
    for p in RunPaths(status_dir.parent).status_files():
        try:
            if json.loads(p.read_text())["state"] == "running":
                out.append(p)
        except (OSError, ValueError):
            continue
    return out


def assert_nothing_half_written(run_dir: Path) -> None:
    for p in (run_dir / "lc").rglob("*.lc"):
        assert read_lightcurve(p).n_rows > 0
    finished_records(run_dir / "status")


def merged_table(run_dir: Path) -> Table:
    return Table.read(run_dir / "merged.lc", hdu="RATE")


def test_sigkill_then_run_again_gives_the_uninterrupted_result(archive, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "run", str(config(reference, archive.root))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    killed = tmp_path / "killed"
    killed.mkdir()
    cfg = config(killed, archive.root)
    status_dir = killed / "run" / "status"
    progress_at_kill = []
    for fraction in (0.0, 0.3, 0.7):
        already = finished_records(status_dir)
        goal = max(already + 1, int(fraction * N_OBS))
        proc = start_run(cfg)
        deadline = time.monotonic() + 120
        while finished_records(status_dir) < goal and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # Its workers (own sessions) get SIGTERM from the kernel and record what they held.
        deadline = time.monotonic() + 10
        while running_records(status_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running_records(status_dir), "a worker of the killed run left its ObsID `running`"
        progress_at_kill.append(finished_records(status_dir))
        assert_nothing_half_written(killed / "run")
    print("finished records at each kill:", progress_at_kill)
    assert any(n < N_OBS for n in progress_at_kill), f"every kill came too late to interrupt: {progress_at_kill}"
    assert not (killed / "run" / "merged.lc").exists() or progress_at_kill[-1] == N_OBS

    proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "run", str(cfg)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in RunPaths(status_dir.parent).status_files()]
    assert len(records) == N_OBS and {r["state"] for r in records} == {"done"}
    ref, got = merged_table(reference / "run"), merged_table(killed / "run")
    assert ref.colnames == got.colnames
    for name in ref.colnames:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(ref[name]), err_msg=name)
    assert [p for p in (killed / "scratch").iterdir()] == []
