"""Everything checkable before a task runs is checked before any task runs: exit 2, one line, no record.

The oracle for "which band works in which gain epoch" is the packaged
energy table itself (std2.energy_to_channels per epoch), not preflight.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.manifest import Observation, build_manifest
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.extract import std2
from rxte_hpc.run.preflight import check_bands, epochs_of
from where import REPO



def _manifest(mjds: list[float]):
    obs = [Observation(ObsID(f"{10000 + i:05d}-01-01-00"), 1, "FAKE", mjd, 1000.0) for i, mjd in enumerate(mjds)]
    return build_manifest(obs, 2, {"source": {"kind": "test"}})


def _config(tmp: Path, extract: str, gather: str = "") -> Path:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(f"run_dir: run\narchive: {{root: archive}}\nextract: {extract}\n{gather}")
    return cfg


def test_epochs_spanned_by_the_manifest():
    every = (1, 2, 3, 4, 5)
    assert epochs_of(None) == every
    assert epochs_of(_manifest([55000.0, 55500.0])) == (5,)
    assert epochs_of(_manifest([50100.0, 55500.0])) == every
    assert epochs_of(_manifest([51000.0, 51500.0])) == (3, 4)
    assert epochs_of(_manifest([55000.0, float("nan")])) == every  # an unknown time: every epoch


@pytest.mark.parametrize("band", [(2.0, 100.0), (60.0, 110.0), (2.0, 9.0), (3.0, 3.05), (2.0, 150.0)])
def test_a_band_is_refused_exactly_where_an_epoch_cannot_convert_it(tmp_path, band):
    cfg = load_config(_config(tmp_path, f"{{backend: native, energy_kev: [{band[0]}, {band[1]}]}}"))
    for mjds in ([50100.0], [51000.0], [55500.0], [50100.0, 55500.0]):
        epochs = epochs_of(_manifest(mjds))
        bad = []
        for epoch in epochs:
            try:
                std2.energy_to_channels(*band, epoch)
            except UsageError:
                bad.append(epoch)
        if bad:
            with pytest.raises(UsageError, match=r"extract\.energy_kev.*gain epoch"):
                check_bands(cfg, epochs)
        else:
            check_bands(cfg, epochs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rxte_hpc", *args], capture_output=True, text=True, timeout=120, env=env)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rxte-hpc: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def sim_archive(tmp_path_factory):
    from rxte_hpc.sim.simulate import simulate_archive

    return simulate_archive(tmp_path_factory.mktemp("pre-archive"), n_obs=6, seed=3)


@pytest.mark.parametrize("band", ["[2, 150]", "[3.0, 3.05]"])
@pytest.mark.parametrize("command", [["run"], ["work", "--task", "0"], ["submit"]])
def test_bad_band_stops_before_any_record(tmp_path, sim_archive, band, command):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"run_dir: run\nsource: {{kind: archive}}\narchive: {{root: {sim_archive.root}}}\n"
        f"scratch: {{root: scratch}}\ntasks: {{obs_per_task: 2}}\n"
        f"extract: {{backend: native, energy_kev: {band}, prepared: {sim_archive.root / 'prepared'}}}\n"
    )
    if command[0] == "work":
        assert _cli("plan", str(cfg)).returncode == 0
    proc = _cli(command[0], str(cfg), *command[1:])
    line = _one_error_line(proc)
    assert proc.returncode == 2, proc.stderr
    assert "extract.energy_kev" in line
    assert list(RunPaths(tmp_path / "run").status_files()) == []
    assert not (tmp_path / "run" / "slurm" / "jobs.json").exists()  # submit: nothing queued to fail later


@pytest.mark.parametrize(("text", "expected"), [
    ("run_dir: a\nrun_dir: b\n", "duplicate key 'run_dir'"),
    ("run_dir: run\nextract: {backend: native, bands: {soft: [2, 4], hard: [4, 9]}}\n"
     "gather: {hardness: [[soft, soft]]}\n", "gather.hardness[0] divides band 'soft' by itself"),
    ("run_dir: run\nextract: {backend: native, bands: {soft: [2, 4], hard: [4, 9]}}\n"
     "gather: {hardness: [[hard, soft], [hard, soft]]}\n", "gather.hardness[1] repeats"),
    ("run_dir: run\nextract: {backend: native, energy_kev: [-5, 2]}\n", "extract.energy_kev"),
    ("run_dir: run\nextract: {backend: native, bands: {soft: [4, 2]}}\n", "extract.bands.soft"),
])
def test_config_problems_are_one_line_exit_2(tmp_path, text, expected):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    proc = _cli("status", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert expected in _one_error_line(proc)


def test_non_utf8_config_is_one_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"run_dir: r\xe9sultats\n")
    proc = _cli("status", str(cfg))
    assert proc.returncode == 2
    assert "not UTF-8" in _one_error_line(proc)


def test_slurm_setup_is_empty_by_default(tmp_path):
    assert load_config(_config(tmp_path, "{backend: stdprod}")).slurm.setup == ()
    for name in ("etacar.yaml", "etacar-https.yaml"):  # the heasoft configs load HEASoft themselves
        assert "module load heasoft" in load_config(REPO / "configs" / name).slurm.setup


# ------------------------------------------------------------------ checked once, without side effects


def _demo(tmp_path: Path, n_obs: int = 6, **extract: object) -> Path:
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw.update(run_dir=str(tmp_path / "run"), scratch={"root": str(tmp_path / "scratch")},
               simulate={"n_obs": n_obs, "seed": 3}, tasks={"obs_per_task": 2})
    raw["extract"].update(extract)
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_the_backend_check_opens_no_archive_and_writes_nothing(tmp_path):
    """Opening the demo's archive would simulate it under run_dir; the check must not (nor create run_dir)."""
    from rxte_hpc.extract import check_backend

    check_backend(load_config(_demo(tmp_path)))
    assert not (tmp_path / "run").exists() and not (tmp_path / "scratch").exists()


@pytest.mark.parametrize("command, n_tasks", [(["run", "--workers", "2"], 3), (["work", "--task", "1"], 1)])
def test_preflight_runs_once_per_command_whatever_the_tasks_and_workers(tmp_path, command, n_tasks):
    """Counted in the debug log of every process (the pool's workers log there too): one check per command."""
    cfg = _demo(tmp_path)
    if command[0] == "work":
        assert _cli("plan", str(cfg)).returncode == 0
    proc = _cli("-v", command[0], str(cfg), *command[1:])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("preflight passed") == 1, proc.stderr
    assert proc.stderr.count("backend check passed") == 1, proc.stderr  # HEASoft, lists, filter: checked once
    assert proc.stderr.count(": start on ") == n_tasks  # each task runner started, none of them checked again


def test_pool_workers_parse_neither_config_nor_manifest(tmp_path):
    """The workers get the parent's parsed config and manifest: with no config file and no manifest.ecsv on
    disk at all, every task still runs."""
    from rxte_hpc.plan.planner import plan
    from rxte_hpc.run.local import run_local

    path = _demo(tmp_path)
    config = load_config(path)
    manifest = plan(config)  # in memory (it simulates the archive under run_dir), nothing written
    path.unlink()
    assert not RunPaths(config.run_dir).manifest.exists()
    counts = run_local(config, manifest, workers=2, progress=False)
    assert counts == {"done": 6}
