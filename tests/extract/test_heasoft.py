"""The heasoft extractor against the stand-in HEASoft tree (tests/heasoft_standin).

The stand-in keeps what makes HEASoft hard to run in parallel (PFILES read and
written back, fcollect's `fname` read-back, exit 0 with "terminating with
status -1", no prompting without a terminal), so these tests show the
extractor's isolation and failure checks working, not just its happy path.
The tests that differ by `extract.runner` run under both runners (heasoftpy
installed by scripts/test-all.sh, and exec);
test_heasoft_runners.py has what is runner-specific, test_heasoft_standin.py
the stand-in itself.
"""
from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

import heasoftpy  # noqa: F401  (installed by scripts/test-all.sh: never skipped)
from heasoftkit import ETACAR, STANDIN, FILTER, broken, extractor, good, obs_window, own_filter_file, par_values
from heasoftkit import records, user_pfiles, workspace
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import DataError, NoDataError, UsageError
from rxte_hpc.core.manifest import ManifestRow, build_manifest, Observation
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.extract.heasoft import HeasoftExtractor
from rxte_hpc.extract.tools import ToolRun
from rxte_hpc.sim.simulate import SimArchive

RUNNERS = ["heasoftpy", "exec"]


@pytest.fixture(scope="session")
def archive(simulated) -> SimArchive:
    return simulated(8, 7, with_broken=True)


def _extractor(archive: SimArchive, tmp: Path, extract: dict | None = None, env: dict | None = None,
               run_dir: Path | None = None, runner: str | None = None, **kw) -> HeasoftExtractor:
    extract = dict(extract or {})
    if runner is not None:
        extract["runner"] = runner
    return extractor(archive.root, tmp, extract, env, run_dir, **kw)


def _good(archive: SimArchive) -> list[ManifestRow]:
    return good(archive)


def _broken(archive: SimArchive, kind: str) -> ManifestRow:
    return broken(archive, kind)


def _only_pfiles(ws) -> Path:
    """The one per-ObsID user PFILES directory the last extraction left in the workspace."""
    dirs = [p for p in ws.pfiles.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("runner", RUNNERS)
def test_seed_parameters_reach_every_task_exactly(archive, tmp_path, runner):
    row = _good(archive)[0]
    ws = workspace(tmp_path / "s")
    log = io.StringIO()
    where = tmp_path / "records"
    curves = _extractor(archive, tmp_path, env={"RXTE_STANDIN_RECORD": str(where)}, runner=runner).extract(row, ws, log)
    ran = records(where)
    assert sorted(r["task"] for r in ran) == ["maketime", "pcaextlc2", "pcaprepobsid"]
    assert all(r["cwd"] == str(ws.work) and r["stdin"] == "/dev/null" for r in ran)
    pfiles = _only_pfiles(ws)
    assert pfiles.parent == ws.pfiles and pfiles.name == row.obsid.text.replace("-", "_")
    assert all(user_pfiles(r) == str(pfiles) for r in ran)

    prep = par_values(pfiles, "pcaprepobsid")
    assert prep["indir"] == str(archive.root / str(row.obsid.archive_dir(row.cycle)))
    assert prep["outdir"] == "prep"
    assert float(prep["ra"]) == 161.2647 and float(prep["dec"]) == -59.6844

    mk = par_values(pfiles, "maketime")
    xfl = sorted((ws.work / "prep").glob("FP_*.xfl"))
    assert mk["infile"] == f"prep/{xfl[0].name}"
    assert mk["outfile"] == "gti.fits"
    assert mk["expr"] == FILTER
    assert (mk["name"], mk["value"], mk["time"]) == ("NAME", "VALUE", "TIME")
    assert (mk["compact"], mk["clobber"]) == ("no", "yes")

    lc = par_values(pfiles, "pcaextlc2")
    assert lc["src_infile"] == "@prep/FP_dtstd2.lis" and lc["bkg_infile"] == "@prep/FP_dtbkg2.lis"
    assert lc["outfile"] == "RATE.lc" and lc["gtiandfile"] == "gti.fits"
    assert (lc["pculist"], lc["layerlist"], float(lc["binsz"])) == ("ALL", "ALL", 16.0)
    assert (lc["chmin"], lc["chmax"], lc["clobber"]) == ("5", "10", "yes")

    # one call of each per ObsID, all logged with their output
    text = log.getvalue()
    assert [text.count(f"bin/{t} ") for t in ("pcaprepobsid", "maketime", "pcaextlc2")] == [1, 1, 1]
    assert len(curves) == 1 and curves[0].name == "RATE" and curves[0].n_rows > 0
    assert curves[0].keywords["CHMIN"][0] == 5 and curves[0].keywords["CHMAX"][0] == 10
    assert curves[0].timedel == 16.0
    start, stop = obs_window(archive.root, row)
    assert start <= curves[0].time.min() and curves[0].time.max() < stop + 16


def test_rate_matches_the_simulated_truth(archive, tmp_path):
    """Channels 5-24 net rate per live PCU, as the simulation injected it (independent arithmetic)."""
    truth = {str(r["obsid"]): float(r["mean_net_rate"]) for r in Table.read(archive.root / "sim_truth.ecsv")}
    row = _good(archive)[1]
    lc = _extractor(archive, tmp_path, {"chmax": 24}).extract(row, workspace(tmp_path / "s"), io.StringIO())[0]
    assert np.nanmean(lc.rate) == pytest.approx(truth[row.obsid.text], rel=0.05)
    assert set(lc.columns) >= {"BACKV", "BACKE", "LiveTime"}
    assert np.all(lc.fracexp <= 1.0)


def test_energy_bands_become_channels_per_gain_epoch(archive, tmp_path):
    from rxte_hpc.extract.std2 import gain_epoch, energy_to_channels

    row = _good(archive)[2]
    ws = workspace(tmp_path / "s")
    ex = _extractor(archive, tmp_path, {"chmin": None, "chmax": None, "bands": {"soft": [2, 4], "hard": [4, 9]}})
    curves = ex.extract(row, ws, io.StringIO())
    assert [c.name for c in curves] == ["soft", "hard"]
    with fits.open(sorted((ws.work / "prep").glob("FS4a_*_dt"))[0]) as hdul:
        met = hdul[1].header["TSTART"] + hdul[1].header["TIMEZERO"]
    lo, hi = energy_to_channels(4, 9, gain_epoch(met))
    assert (curves[1].keywords["CHMIN"][0], curves[1].keywords["CHMAX"][0]) == (lo, hi)
    assert (curves[1].keywords["E_MIN"][0], curves[1].keywords["E_MAX"][0]) == (4.0, 9.0)
    assert par_values(_only_pfiles(ws), "pcaextlc2")["outfile"] == "hard.lc"


# ---------------------------------------------------------------------------- parallel PFILES (threads, exec)


def _run_concurrently(archive, tmp: Path, shared_pfiles: bool) -> dict[str, tuple]:
    """Eight ObsIDs at once in threads of this process (exec runner: heasoftpy refuses threads)."""
    ex = _extractor(archive, tmp, env={"RXTE_STANDIN_RACE_S": "1.5"}, runner="exec",
                    shared_pfiles=tmp / "shared-pfiles" if shared_pfiles else None)
    rows = _good(archive)
    assert len(rows) == 8
    results: dict[str, tuple] = {}

    def one(row: ManifestRow) -> None:
        ws = workspace(tmp / row.obsid.text)
        try:
            results[row.obsid.text] = (row, ws, ex.extract(row, ws, io.StringIO())[0])
        except (DataError, NoDataError) as exc:
            results[row.obsid.text] = (row, ws, exc)

    threads = [threading.Thread(target=one, args=(row,)) for row in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _is_right(archive, row, ws, result) -> bool:
    if isinstance(result, Exception):
        return False
    start, stop = obs_window(archive.root, row)
    return (own_filter_file(archive.root, row, ws.work) and result.n_rows > 0 and start <= result.time.min()
            and result.time.max() < stop + 16)


@pytest.mark.slow
def test_one_shared_pfiles_directory_swaps_filter_files(archive, tmp_path):
    """The hazard is real in the stand-in: with one PFILES dir, ObsIDs get each other's filter files."""
    results = _run_concurrently(archive, tmp_path, shared_pfiles=True)
    wrong = [obsid for obsid, (row, ws, res) in results.items() if not _is_right(archive, row, ws, res)]
    assert wrong, "eight concurrent runs sharing one PFILES directory should have collided"


@pytest.mark.slow
def test_private_pfiles_keep_concurrent_obsids_apart(archive, tmp_path):
    results = _run_concurrently(archive, tmp_path, shared_pfiles=False)
    wrong = {obsid: res for obsid, (row, ws, res) in results.items() if not _is_right(archive, row, ws, res)}
    assert not wrong, {obsid: str(res)[:300] for obsid, res in wrong.items()}
    firsts = {float(res.time[0]) for _, _, res in results.values()}
    assert len(firsts) == 8


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("task", ["pcaprepobsid", "maketime", "pcaextlc2"])
def test_status_minus_one_with_exit_zero_is_a_failure(archive, tmp_path, runner, task):
    version = {"pcaprepobsid": "1.3", "maketime": "2.2a", "pcaextlc2": "2.2"}[task]
    ex = _extractor(archive, tmp_path, env={"RXTE_STANDIN_FAIL": task}, runner=runner)
    log = io.StringIO()
    with pytest.raises(DataError, match=rf"^{task} failed: ERROR: .*on purpose.*; Task {task} {version} "
                                        r"terminating with status -1$"):
        ex.extract(_good(archive)[0], workspace(tmp_path / "s"), log)
    assert f"# {task}: exit status 0" in log.getvalue()  # the exit status alone would have said success


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("task, missing", [("pcaprepobsid", "pcaprepobsid_done.txt"), ("maketime", "gti.fits"),
                                           ("pcaextlc2", "RATE.lc")])
def test_success_without_the_expected_output_is_a_failure(archive, tmp_path, runner, task, missing):
    ex = _extractor(archive, tmp_path, env={"RXTE_STANDIN_NO_OUTPUT": task}, runner=runner)
    with pytest.raises(DataError, match=rf"^{task} reported success but did not write {missing}$"):
        ex.extract(_good(archive)[0], workspace(tmp_path / "s"), io.StringIO())


def test_tool_run_failure_rules():
    ok = ToolRun("t", (), 0, "fine\nTask t 1.0 terminating with status 0\n")
    assert ok.failure() is None
    bad = ToolRun("t", (), 0, "t: ERROR: no such file\nTask t 1.0 terminating with status -1\n")
    assert bad.failure() == "t: ERROR: no such file; Task t 1.0 terminating with status -1"
    assert ToolRun("t", (), 3, "Segmentation fault\n").failure() == "exit status 3"


@pytest.mark.parametrize("runner", RUNNERS)
def test_empty_list_file_is_a_failure(archive, tmp_path, runner):
    extractor = _extractor(archive, tmp_path, env={"RXTE_STANDIN_EMPTY_LIST": "FP_dtstd2.lis"}, runner=runner)
    with pytest.raises(DataError, match="empty FP_dtstd2.lis"):
        extractor.extract(_good(archive)[0], workspace(tmp_path / "s"), io.StringIO())


def _kept_copy(archive, row: ManifestRow, prepared: Path) -> Path:
    """Put the simulation's prepared products for `row` where keep_prepared looks for them."""
    kept = prepared / row.obsid.text
    shutil.copytree(archive.root / "prepared" / row.obsid.text, kept)
    return kept


def test_missing_list_file_is_a_failure(archive, tmp_path):
    row = _good(archive)[0]
    kept = _kept_copy(archive, row, tmp_path / "prepared")
    (kept / "FP_dtbkg2.lis").unlink()
    extractor = _extractor(archive, tmp_path, {"keep_prepared": True, "prepared": str(tmp_path / "prepared")})
    with pytest.raises(DataError, match="left no FP_dtbkg2.lis"):
        extractor.extract(row, workspace(tmp_path / "s"), io.StringIO())


def test_swapped_filter_file_gives_an_empty_light_curve_and_fails(archive, tmp_path):
    """What the PFILES race does, made deterministic: another ObsID's filter file -> no rows -> failed."""
    row, other = _good(archive)[0], _good(archive)[5]
    kept = _kept_copy(archive, row, tmp_path / "prepared")
    own = next(kept.glob("FP_*.xfl"))
    shutil.copyfile(next((archive.root / "prepared" / other.obsid.text).glob("FP_*.xfl")), own)
    extractor = _extractor(archive, tmp_path, {"keep_prepared": True, "prepared": str(tmp_path / "prepared")})
    log = io.StringIO()
    with pytest.raises(DataError, match="empty light curve"):
        extractor.extract(row, workspace(tmp_path / "s"), log)
    assert "pcaprepobsid skipped" in log.getvalue()


def test_empty_gti_is_no_data(archive, tmp_path):
    with pytest.raises(NoDataError, match=r"every filter row fails .*ELV > 4"):
        _extractor(archive, tmp_path).extract(_broken(archive, "filtered_out"), workspace(tmp_path / "s"), io.StringIO())


@pytest.mark.parametrize("runner", RUNNERS)
def test_no_standard2_is_no_data_and_corrupt_is_failed(archive, tmp_path, runner):
    extractor = _extractor(archive, tmp_path, runner=runner)
    with pytest.raises(NoDataError, match="no Standard-2"):
        extractor.extract(_broken(archive, "no_std2"), workspace(tmp_path / "a"), io.StringIO())
    with pytest.raises(DataError, match="^pcaprepobsid failed: ERROR: .*; Task pcaprepobsid 1.3 terminating with status -1$"):
        extractor.extract(_broken(archive, "corrupt"), workspace(tmp_path / "b"), io.StringIO())
    assert not (tmp_path / "b" / "w" / "prep" / "pcaprepobsid_done.txt").exists()


# ---------------------------------------------------------------------------- availability


def test_check_available_names_what_is_missing(archive, tmp_path):
    extractor = _extractor(archive, tmp_path)
    extractor.check_available()
    del extractor._environ["HEADAS"]
    with pytest.raises(UsageError, match="HEADAS is not set"):
        extractor.check_available()
    fake = tmp_path / "headas"
    shutil.copytree(STANDIN, fake)
    (fake / "bin" / "maketime").unlink()
    extractor = _extractor(archive, tmp_path, env={"HEADAS": str(fake)})
    with pytest.raises(UsageError, match=r"\$HEADAS/bin/maketime") as err:
        extractor.check_available()
    assert "pcaextlc2" not in str(err.value)
    with pytest.raises(UsageError, match="pculist"):
        _extractor(archive, tmp_path, {"pculist": "0,7"}).check_available()
    with pytest.raises(UsageError, match="bad filter expression"):
        _extractor(archive, tmp_path, {"filter": "ELV > "}).check_available()


# ---------------------------------------------------------------------------- keep_prepared


def test_keep_prepared_copies_once_then_reuses(archive, tmp_path):
    row = _good(archive)[3]
    extractor = _extractor(archive, tmp_path, {"keep_prepared": True})
    unfinished = tmp_path / "run" / "prepared" / row.obsid.text
    unfinished.mkdir(parents=True)
    (unfinished / "FP_dtstd2.lis").write_text("")  # left by an interrupted run: no done file, never used
    first = extractor.extract(row, workspace(tmp_path / "a"), io.StringIO())[0]
    kept = tmp_path / "run" / "prepared" / row.obsid.text
    assert (kept / "pcaprepobsid_done.txt").is_file()
    entries = (kept / "FP_dtstd2.lis").read_text().split()
    assert entries and all(Path(e).is_absolute() and Path(e).is_file() for e in entries)
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".")]
    log = io.StringIO()
    second = extractor.extract(row, workspace(tmp_path / "b"), log)[0]
    assert "bin/pcaprepobsid" not in log.getvalue()
    np.testing.assert_array_equal(first.rate, second.rate)


# ---------------------------------------------------------------------------- through the worker / CLI


def _etacar_variant(tmp: Path, run_dir: Path, n_obs: int = 8) -> Path:
    raw = yaml.safe_load(ETACAR.read_text())
    raw["run_dir"] = str(run_dir)
    raw["archive"] = {"root": "simulated"}
    raw["simulate"] = {"n_obs": n_obs, "seed": 3}
    raw["source"] = {"kind": "archive"}
    raw["scratch"] = {"root": str(tmp / "shm")}
    raw["tasks"] = {"obs_per_task": 4}
    path = tmp / "etacar-test.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_long_run_dir_path_works_through_the_worker(tmp_path):
    from rxte_hpc.archive.local import ensure_simulated
    from rxte_hpc.run.worker import run_task

    run_dir = tmp_path / ("r" * 80) / ("u" * 80)
    assert len(str(run_dir)) > 150
    config = load_config(_etacar_variant(tmp_path, run_dir, n_obs=2))
    paths = RunPaths(config.run_dir)
    sim = ensure_simulated(config, paths)
    observations = [Observation(ObsID(p.name), int(p.parent.parent.name[2:])) for p in sorted(sim.glob("AO*/P*/*"))]
    manifest = build_manifest(observations, 4, {"source": {"kind": "test"}})
    environ = {**os.environ, "HEADAS": str(STANDIN)}
    records = run_task(config, manifest, 0, extractor_factory=lambda ctx: HeasoftExtractor(ctx, environ=environ))
    assert [r.state for r in records] == ["done"] * len(observations), [(r.obsid, r.state, r.error) for r in records]
    for r in records:
        assert (run_dir / r.output).is_file()
        text = paths.log(r.obsid).read_text()
        assert "bin/pcaextlc2" in text
        assert "# heasoftpy: pcaextlc2 task object" in text  # runner auto, heasoftpy installed: through it


@pytest.mark.slow
def test_rxte_hpc_run_end_to_end(tmp_path, monkeypatch):
    from rxte_hpc import cli

    monkeypatch.setenv("HEADAS", str(STANDIN))
    for key in [k for k in os.environ if k.startswith("RXTE_STANDIN")]:
        monkeypatch.delenv(key)
    cfg = _etacar_variant(tmp_path, tmp_path / "run")
    assert cli.main(["run", str(cfg)]) == 0
    paths = RunPaths(tmp_path / "run")
    assert len(list(paths.lc_dir.rglob("*.lc"))) == 8
    with fits.open(tmp_path / "run" / "merged.lc") as hdul:
        assert hdul[1].header["EXTNAME"] == "RATE" and len(hdul[1].data) > 0
    monkeypatch.delenv("HEADAS")
    assert cli.main(["run", str(cfg)]) == 2


# ---------------------------------------------------------------------------- other backends, time limits


def test_standin_and_native_extractor_agree(archive, tmp_path):
    """Two independent implementations of pcaextlc2's arithmetic on the same prepared products."""
    from rxte_hpc.extract.native import NativeExtractor

    row = _good(archive)[4]
    heasoft = _extractor(archive, tmp_path).extract(row, workspace(tmp_path / "h"), io.StringIO())[0]
    native_ex = _extractor(archive, tmp_path, {"backend": "native", "prepared": str(archive.root / "prepared")})
    native = NativeExtractor(native_ex.context).extract(row, workspace(tmp_path / "n"), io.StringIO())[0]
    np.testing.assert_allclose(heasoft.time, native.time, rtol=0, atol=1e-6)
    for name in ("rate", "error", "fracexp"):
        np.testing.assert_allclose(getattr(heasoft, name), getattr(native, name), rtol=2e-6, equal_nan=True)
    np.testing.assert_allclose(heasoft.columns["BACKV"], native.columns["BACKV"], rtol=2e-6, equal_nan=True)


def test_run_pcaprepobsid_helper_publishes_products_for_native(archive, tmp_path, monkeypatch):
    from rxte_hpc.extract.prepare import prepare_into as run_pcaprepobsid

    monkeypatch.setenv("HEADAS", str(STANDIN))
    row = _good(archive)[6]
    extractor = _extractor(archive, tmp_path)
    target = tmp_path / "prepared" / row.obsid.text
    run_pcaprepobsid(extractor.context, row, target, workspace(tmp_path / "s"), io.StringIO())
    assert (target / "pcaprepobsid_done.txt").is_file() and len(list(target.glob("FP_*.xfl"))) == 1
    assert all(Path(e).parent == target for e in (target / "FP_dtbkg2.lis").read_text().split())
