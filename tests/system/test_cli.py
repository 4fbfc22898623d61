"""The command line end to end on a small simulated archive, and its answers to bad input."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from rxte_hpc.cli import main
from rxte_hpc.fits.lcfile import read_lightcurve
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.sim.simulate import simulate_archive
from where import REPO



@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    return simulate_archive(root, n_obs=12, seed=7, with_broken=True)


def make_config(tmp_path: Path, archive_root, **extract) -> Path:
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo["run_dir"] = str(tmp_path / "run")
    demo["archive"] = {"root": str(archive_root)}
    demo["scratch"] = {"root": str(tmp_path / "scratch")}
    demo["tasks"] = {"obs_per_task": 3}
    demo.pop("simulate", None)
    demo["extract"].update(extract)
    if "prepared" not in extract and demo["extract"]["backend"] == "native":
        demo["extract"]["prepared"] = str(Path(archive_root) / "prepared")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def test_whole_run_then_status_and_gather(tmp_path, archive, capsys):
    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    rc = main(["run", str(cfg), "--workers", "2"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    run = tmp_path / "run"
    manifest = read_manifest(run / "manifest.ecsv")
    good = [o for o in archive.observations if o.obsid.text not in archive.broken]
    n_good = len(good)
    assert len(manifest.rows) == len(archive.observations) and len(archive.broken) == 3
    # broken ObsIDs fail or have no data; with failures the exit code is 1
    records = {p.stem: json.loads(p.read_text()) for p in RunPaths(run).status_files()}
    assert len(records) == len(manifest.rows)
    states = {o: r["state"] for o, r in records.items()}
    for obs in good:
        assert states[obs.obsid.text] == "done"
    failed = [o for o, s in states.items() if s == "failed"]
    assert failed and all(records[o]["error_kind"] == "data" for o in failed)
    assert rc == 1
    merged = run / "merged.lc"
    assert merged.is_file() and (run / "merged.png").stat().st_size > 10_000
    with fits.open(merged) as hdul:
        assert hdul[1].header["EXTNAME"] == "RATE" and hdul["GTI"].header["EXTNAME"] == "GTI"
        obsids = set(np.char.strip(hdul[1].data["OBSID"].astype(str)))
        times = hdul[1].data["TIME"]
    assert obsids == {o.obsid.text for o in good}
    assert np.all(np.diff(times) >= 0)
    assert f"light curve: {merged}" in out
    # status: exit 1 while ObsIDs are failed, JSON parses and counts agree
    assert main(["status", str(cfg), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["done"] == n_good and data["counts"]["failed"] == len(failed)
    # the default text is a summary: failures grouped by error with example ObsIDs, no line per task
    assert main(["status", str(cfg)]) == 1
    text = capsys.readouterr().out
    assert f"{len(manifest.rows)} ObsIDs in {manifest.n_tasks} tasks" in text
    assert all(o in text for o in failed) and "failed [data]" in text and "task " not in text
    assert main(["status", str(cfg), "--tasks", "-v"]) == 1  # -v after the verb is accepted
    listed = capsys.readouterr().out
    assert all(f"task {t:5d}:" in listed for t in range(manifest.n_tasks))
    # gather --allow-missing: exit 0, same file contents for the used ObsIDs
    assert main(["gather", str(cfg), "--allow-missing"]) == 0
    lc = read_lightcurve(merged)
    assert np.array_equal(lc.time, times)


def test_work_task_and_obsid_match_run(tmp_path, archive, capsys):
    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    assert main(["plan", str(cfg)]) == 0
    manifest = read_manifest(tmp_path / "run" / "manifest.ecsv")
    good = {o.obsid.text for o in archive.observations} - set(archive.broken)
    task = next(t for t in range(manifest.n_tasks) if all(r.obsid.text in good for r in manifest.rows_for_task(t)))
    assert main(["work", str(cfg), "--task", str(task)]) == 0
    for row in manifest.rows_for_task(task):
        assert RunPaths(tmp_path / "run").lc(row.obsid).is_file()
    one = next(iter(sorted(good - {r.obsid.text for r in manifest.rows_for_task(task)})))
    assert main(["work", str(cfg), "--obsid", one]) == 0
    assert RunPaths(tmp_path / "run").lc(one).is_file()
    assert main(["work", str(cfg), "--task", "999"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_replan_refused_after_tasks_ran(tmp_path, archive, capsys):
    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    assert main(["plan", str(cfg)]) == 0
    manifest = read_manifest(tmp_path / "run" / "manifest.ecsv")
    assert main(["work", str(cfg), "--obsid", manifest.rows[0].obsid.text]) in (0, 1)
    capsys.readouterr()
    assert main(["plan", str(cfg)]) == 2
    assert "--force" in capsys.readouterr().err


def test_missing_archive_root_is_exit_2(tmp_path, capsys):
    cfg = make_config(tmp_path, tmp_path / "no-such-archive", backend="stdprod", chmin=None, chmax=None)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-archive" in err[0]
    assert not (tmp_path / "run" / "manifest.ecsv").exists()


def test_malformed_obsid_in_table_is_one_line(tmp_path, capsys):
    table = tmp_path / "obs.csv"
    table.write_text("obsid,cycle\n90171-01-01-00,9\n../../etc,9\n")
    cfg = make_config(tmp_path, tmp_path, backend="stdprod", chmin=None, chmax=None)
    text = yaml.safe_load(cfg.read_text())
    text["source"] = {"kind": "table", "path": str(table)}
    cfg.write_text(yaml.safe_dump(text))
    assert main(["plan", str(cfg)]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "../../etc" in err[0] and "Traceback" not in err[0]


def test_corrupt_light_curve_fails_that_obsid_alone(tmp_path, archive):
    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    assert main(["plan", str(cfg)]) == 0
    manifest = read_manifest(tmp_path / "run" / "manifest.ecsv")
    good = [r for r in manifest.rows if r.obsid.text not in archive.broken]
    victim = good[0]
    # a private copy of the archive where one good ObsID's product is an empty file
    src = archive.root / victim.obsid.archive_dir(victim.cycle) / "stdprod" / victim.obsid.stdprod_lc_name("a")
    data = src.read_bytes()
    try:
        src.write_bytes(gzip.compress(b"SIMPLE  =  not really FITS"))
        proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "work", str(cfg), "--obsid", victim.obsid.text],
                              capture_output=True, text=True, timeout=120)
    finally:
        src.write_bytes(data)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    rec = json.loads(RunPaths(tmp_path / "run").status(victim.obsid).read_text())
    assert rec["state"] == "failed" and rec["error_kind"] == "data" and str(src.name) in rec["error"]
    assert not RunPaths(tmp_path / "run").lc(victim.obsid).exists()


def test_python_m_and_help():
    proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("simulate", "plan", "run", "work", "submit", "status", "fetch", "rerun", "gather"):
        assert command in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "work"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2


def test_simulate_command_lists_broken(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "a"), "--n-obs", "3", "--seed", "2", "--with-broken"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out.lower()
    assert list((tmp_path / "a").glob("AO*/P*/*-*-*-*"))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_plan_dry_run_on_a_simulated_archive_writes_nothing_anywhere(tmp_path, capsys):
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo.update(run_dir=str(tmp_path / "run"), scratch={"root": str(tmp_path / "scratch")}, simulate={"n_obs": 7, "seed": 2})
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(demo))
    before = _tree(tmp_path)
    assert main(["plan", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _tree(tmp_path) == before, "a dry run wrote files"
    assert "ObsIDs: 7 in" in out and "not generated" in out and "time estimate: none for the native backend" in out
    # the real plan of the same config has the same ObsIDs
    assert main(["plan", str(cfg)]) == 0
    assert len(read_manifest(tmp_path / "run" / "manifest.ecsv").rows) == 7


def test_plan_plot_draws_the_existing_plan_after_tasks_ran(tmp_path, archive, capsys):
    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    main(["run", str(cfg)])
    before = (tmp_path / "run" / "manifest.ecsv").read_bytes()
    capsys.readouterr()
    assert main(["plan", str(cfg), "--plot"]) == 0
    out = capsys.readouterr().out
    assert "(kept)" in out and (tmp_path / "run" / "exposure.png").stat().st_size > 5_000
    assert (tmp_path / "run" / "manifest.ecsv").read_bytes() == before


@pytest.mark.parametrize("argv, what", [
    (["simulate", "{file}", "--n-obs", "2"], "exists and is not a directory"),
    (["simulate", "{dir}", "--n-obs", "2", "--seed", "-5"], "--seed must be a non-negative integer"),
])
def test_simulate_bad_arguments_are_one_line_usage_errors(tmp_path, capsys, argv, what):
    (tmp_path / "f").write_text("")
    argv = [a.format(file=tmp_path / "f", dir=tmp_path / "d") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert what in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_work_obsid_that_is_not_an_obsid_is_a_usage_error(tmp_path, archive, capsys):
    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    assert main(["plan", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["work", str(cfg), "--obsid", "x;rm -rf /"]) == 2
    err = capsys.readouterr().err
    assert "--obsid" in err and "Traceback" not in err and "np.str_" not in err


def test_per_obsid_files_say_what_was_summed_and_how_it_was_screened(tmp_path, archive):
    cfg = make_config(tmp_path, archive.root, pculist="1,2", layerlist="1", filter="(ELV > 5) && (OFFSET < 0.05)")
    assert main(["plan", str(cfg)]) == 0
    main(["work", str(cfg), "--task", "0"])
    paths = RunPaths(tmp_path / "run")
    done = [p for p in paths.lc_files()]
    assert done
    with fits.open(done[0], checksum=True) as hdul:
        for hdu in (hdul[0], hdul[1]):
            h = hdu.header
            assert (h["PCULIST"], h["LAYERS"], h["FILTER"]) == ("1,2", "1", "(ELV > 5) && (OFFSET < 0.05)")
            assert h["BACKEND"] == "native"


def test_a_channel_band_gives_nominal_kev_per_obsid_and_their_range_when_merged(tmp_path, archive):
    cfg = make_config(tmp_path, archive.root)  # the demo's band: channels 5-10, over 16 years of gain epochs
    main(["run", str(cfg)])
    paths = RunPaths(tmp_path / "run")
    per_obsid = []
    for path in paths.lc_files():
        with fits.open(path) as hdul:
            h = hdul[1].header
            per_obsid.append((h["GAINEPOC"], h["E_MIN"], h["E_MAX"]))
            assert (h["CHMIN"], h["CHMAX"]) == (5, 10) and "NOMINAL" in h["ECHANRUL"]
    assert len({e for e, _, _ in per_obsid}) > 1, "the test archive should span several gain epochs"
    with fits.open(tmp_path / "run" / "merged.lc") as hdul:
        h = hdul["RATE"].header
        assert (h["CHMIN"], h["CHMAX"]) == (5, 10)
        assert h["E_MIN"] == min(lo for _, lo, _ in per_obsid) and h["E_MAX"] == max(hi for _, _, hi in per_obsid)
        assert "nominal" in h.comments["E_MIN"]


def test_changing_the_simulation_after_first_use_is_refused_not_ignored(tmp_path, capsys):
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo.update(run_dir=str(tmp_path / "run"), scratch={"root": str(tmp_path / "s")}, simulate={"n_obs": 4, "seed": 2})
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(demo))
    assert main(["plan", str(cfg)]) == 0
    demo["simulate"] = {"n_obs": 9, "seed": 2}
    cfg.write_text(yaml.safe_dump(demo))
    capsys.readouterr()
    assert main(["plan", str(cfg), "--force"]) == 2
    err = capsys.readouterr().err
    assert "n_obs=9" in err and "n_obs=4" in err and "Traceback" not in err


def test_status_into_a_closed_pipe_ends_quietly(tmp_path, archive):
    """`rxte-hpc status CFG | head`: the reader is gone before status writes; no traceback, no 'Exception ignored'."""
    import subprocess
    import sys

    cfg = make_config(tmp_path, archive.root, backend="stdprod", chmin=None, chmax=None)
    assert main(["plan", str(cfg)]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already left
    try:
        done = subprocess.run([sys.executable, "-m", "rxte_hpc", "status", str(cfg), "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr and "Exception ignored" not in done.stderr


def test_out_of_memory_is_one_line_exit_1(tmp_path):
    """Under an address-space limit (`ulimit -v`), a simulation too large for it: one line, exit 1, no traceback."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (500 * 2**20, 500 * 2**20))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "simulate", str(tmp_path / "big"), "--n-obs", "100000000"],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "out of memory during `simulate`" in proc.stderr
