"""Several targets in one campaign, and HEASARC's real xtemaster rows (tests/data/real-xtemaster)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from rxte_hpc.core.config import config_from_mapping, target_key
from rxte_hpc.core.errors import ConfigError, UsageError
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import RunSummary
from rxte_hpc.core.statusreport import StatusReport, format_status
from rxte_hpc.plan.planner import plan, write_manifest

from tapserver import serve_tap, xtemaster_rows
from mpikit import mpi_work, needs_mpiexec
from slurmkit import job_states, wait_jobs
from where import DATA

#: HEASARC's real rows, copied from the shared fixtures with their README (public catalogue data).
FIXTURES = DATA / "real-xtemaster"

ETA = {"name": "eta car", "ra": 161.2647, "dec": -59.6844, "radius_deg": 0.1}
GX = {"name": "gx 339-4", "ra": 255.7057, "dec": -48.7897, "radius_deg": 0.1}
TER5 = {"name": "Terzan 5", "ra": 267.0208, "dec": -24.7792, "radius_deg": 0.2}


def _config(tmp_path: Path, **raw: object):
    base = {"run_dir": "run", **raw}
    return config_from_mapping(base, tmp_path / "config.yaml")


# ---------------------------------------------------------------- configuration


def test_targets_list_and_csv_give_the_same_targets(tmp_path):
    listed = _config(tmp_path, targets=[ETA, GX])
    (tmp_path / "targets.csv").write_text(
        "name,ra,dec,radius_deg\n"
        f"{ETA['name']},{ETA['ra']},{ETA['dec']},{ETA['radius_deg']}\n"
        f"{GX['name']},{GX['ra']},{GX['dec']},\n"  # radius_deg left empty: the default
    )
    from_csv = _config(tmp_path, targets={"path": "targets.csv"})
    assert listed.targets == from_csv.targets and len(listed.targets) == 2
    assert listed.target_list() == listed.targets
    one = _config(tmp_path, target=ETA)
    assert one.targets == () and one.target_list() == (one.target,)
    assert one.hash() == _config(tmp_path, target=ETA).hash()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"target": ETA, "targets": [GX]}, "either target .* or targets"),
        ({"targets": []}, "non-empty list"),
        ({"targets": [{"name": "x", "ra": 1.0}]}, r"targets\[0\] \(x\) needs ra and dec"),
        ({"targets": [ETA, {**GX, "name": "ETA_CAR"}]}, r"targets\[1\].name 'ETA_CAR' repeats targets\[0\]"),
        ({"targets": [{**ETA, "name": "../x"}]}, r"targets\[0\].name must be"),
        ({"targets": [{**ETA, "radius_deg": -1}]}, r"targets\[0\].radius_deg must be > 0"),
        ({"targets": [{**ETA, "colour": "red"}]}, r"unknown key 'targets\[0\].colour'"),
        ({"targets": {"file": "t.csv"}}, r"\{path: FILE.csv\}"),
    ],
)
def test_bad_targets_are_one_line_naming_the_key(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message) as info:
        _config(tmp_path, **raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,ra,dec,size\nx,1,2,3\n", "unknown column 'size'"),
        ("name,ra,dec\nx,one,2\n", "line 2: ra is not a number"),
        (b"\xff\xfe\x00", "cannot read"),
    ],
)
def test_bad_targets_csv_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, targets={"path": "t.csv"})
    with pytest.raises(ConfigError, match="cannot read"):
        _config(tmp_path, targets={"path": "absent.csv"})


def test_target_names_match_ignoring_case_blanks_and_separators():
    assert target_key("ETA_CAR") == target_key("eta car") == target_key("Eta-Car")
    assert target_key("GX_339-4") == target_key("gx 339 4") != target_key("gx 339-5")


# ---------------------------------------------------------------- assignment


def _table_file(tmp_path: Path, rows: list[tuple], name: str = "obs.ecsv") -> Path:
    path = tmp_path / name
    xtemaster_rows(rows).write(path, format="ascii.ecsv", overwrite=True)
    return path


def test_each_row_goes_to_the_nearest_cone_that_holds_it_and_the_rest_are_counted(tmp_path):
    near_a = {"name": "a", "ra": 100.0, "dec": 0.0, "radius_deg": 0.2}
    near_b = {"name": "b", "ra": 100.3, "dec": 0.0, "radius_deg": 0.2}  # cones overlap between 100.1 and 100.2
    rows = [
        ("A1", 1, "10000-01-01-00", 50000.0, 1000.0, 100.0, 0.0),
        ("OVERLAP", 1, "10000-01-02-00", 50001.0, 1000.0, 100.16, 0.0),  # 0.16 from a, 0.14 from b: b
        ("OVERLAP", 1, "10000-01-03-00", 50002.0, 1000.0, 100.14, 0.0),  # 0.14 from a, 0.16 from b: a
        ("B1", 1, "10000-01-04-00", 50003.0, 1000.0, 100.3, 0.0),
        ("FAR", 1, "10000-01-05-00", 50004.0, 1000.0, 120.0, 0.0),  # in no cone: dropped, counted
        ("b", 1, "10000-01-06-00", 50005.0, 1000.0, math.nan, math.nan),  # no position: matched by name
        ("nobody", 1, "10000-01-07-00", 50006.0, 1000.0, math.nan, math.nan),  # no position, no name: dropped
    ]
    cfg = _config(tmp_path, targets=[near_a, near_b], source={"kind": "table", "path": str(_table_file(tmp_path, rows))})
    manifest = plan(cfg)
    got = {r.obsid.text: r.target for r in manifest.rows}
    assert got == {"10000-01-01-00": "a", "10000-01-02-00": "b", "10000-01-03-00": "a", "10000-01-04-00": "b",
                   "10000-01-06-00": "b"}
    assert manifest.meta["source"]["dropped"]["cone"] == 2
    assert [(t["name"], t["n_obsids"]) for t in manifest.meta["targets"]] == [("a", 2), ("b", 3)]
    write_manifest(cfg, manifest)
    back = read_manifest(RunPaths(cfg.run_dir).manifest)
    assert [r.target for r in back.rows] == [r.target for r in manifest.rows] and back.targets == ("a", "b")
    # status counts per target, from the manifest's target column
    summary = RunSummary.collect(back, RunPaths(cfg.run_dir), cfg.hash())
    report = StatusReport.build(summary, cfg.run_dir, back.n_tasks)
    assert {t: sum(c.values()) for t, c in report.targets.items()} == {"a": 2, "b": 3}
    assert "target a" in format_status(report) and "target b" in format_status(report)


def test_one_target_warns_when_the_table_holds_sources_far_apart(tmp_path, caplog):
    rows = [
        ("ETA_CAR", 1, "10019-01-01-00", 50000.0, 1000.0, ETA["ra"], ETA["dec"]),
        ("GX_339-4", 1, "20019-01-01-00", 50001.0, 1000.0, GX["ra"], GX["dec"]),
    ]
    path = _table_file(tmp_path, rows)
    cfg = _config(tmp_path, target={"name": "eta car"}, source={"kind": "table", "path": str(path)})
    with caplog.at_level(logging.WARNING, logger="rxte_hpc.plan.planner"):
        manifest = plan(cfg)
    assert len(manifest.rows) == 2  # as today: one target without a position keeps every row ...
    assert any("several sources" in r.getMessage() and "targets:" in r.getMessage() for r in caplog.records)  # ... but says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rxte_hpc.plan.planner"):
        both = plan(_config(tmp_path, targets=[ETA, GX], source={"kind": "table", "path": str(path)}))
    assert {r.target for r in both.rows} == {"eta car", "gx 339-4"} and not caplog.records


# ---------------------------------------------------------------- real xtemaster rows


def _with_cycle(table: Table) -> Table:
    """What the user gets after adding `cycle` to the query: HEASARC's cycle per proposal (AO5, AO13, AO15)."""
    cycles = {50054: 5, 50138: 5, 93055: 13, 96316: 15}
    out = table.copy()
    out["cycle"] = np.array([cycles[int(p)] for p in out["prnb"]], dtype=np.int16)
    return out


def test_real_default_columns_without_cycle_say_which_column_to_add(tmp_path):
    path = FIXTURES / "terzan5_default_columns.ecsv"
    cfg = _config(tmp_path, target=TER5, source={"kind": "table", "path": str(path)})
    with pytest.raises(UsageError, match=r"no 'cycle' column .* add `cycle` to the query's SELECT") as info:
        plan(cfg)
    assert "\n" not in str(info.value)


def test_real_rows_unobserved_dropped_masked_exposure_nan_one_source_two_names(tmp_path, caplog):
    table = _with_cycle(Table.read(FIXTURES / "terzan5_default_columns.ecsv", format="ascii.ecsv"))
    assert np.ma.is_masked(table["obsid"][0]) or table["obsid"][0] == ""  # the `accepted` row
    path = tmp_path / "terzan5.ecsv"
    table.write(path, format="ascii.ecsv")
    cfg = _config(tmp_path, target=TER5, source={"kind": "table", "path": str(path)})
    with caplog.at_level(logging.WARNING, logger="rxte_hpc.plan.planner"):
        manifest = plan(cfg)
    dropped = manifest.meta["source"]["dropped"]
    assert dropped["unobserved"] == 1  # status accepted, no ObsID, masked time/exposure: dropped and counted
    assert len(manifest.rows) == len(table) - 1
    masked = {r.obsid.text: r.exposure_s for r in manifest.rows}["50138-03-02-01"]
    assert math.isnan(masked)  # masked exposure stays unknown, never 0 (it would be cut by min_exposure_s)
    assert {r.target_name for r in manifest.rows} == {"EXO_1745-248", "TERZAN_5"}
    assert not [r for r in caplog.records if "several sources" in r.getMessage()]  # one source under two names
    # the same rows through several targets: all of them land on Terzan 5, none on Eta Car
    both = plan(_config(tmp_path, targets=[ETA, TER5], source={"kind": "table", "path": str(path)}))
    assert {r.target for r in both.rows} == {"Terzan 5"} and len(both.rows) == len(manifest.rows)


def test_real_all_columns_rows_plan_with_their_cycle_and_status(tmp_path):
    path = FIXTURES / "terzan5_all_columns.ecsv"
    manifest = plan(_config(tmp_path, target=TER5, source={"kind": "table", "path": str(path)}))
    table = Table.read(path, format="ascii.ecsv")
    assert len(manifest.rows) == len(table) and manifest.meta["source"]["dropped"]["unobserved"] == 0
    by = {r.obsid.text: r for r in manifest.rows}
    assert by["96316-01-16-00"].cycle == 15 and by["50054-06-01-01"].cycle == 5


def test_real_eta_car_rows_keep_cycle_15_for_proposal_96002(tmp_path):
    path = FIXTURES / "etacar_2021_rows.ecsv"
    manifest = plan(_config(tmp_path, target={"name": "eta car"}, source={"kind": "table", "path": str(path)}))
    assert len(manifest.rows) == 19
    assert {r.cycle for r in manifest.rows if r.prnb == 96002} == {15}


# ---------------------------------------------------------------- TAP, one query per target


def _tap_rows() -> Table:
    rows = [("ETA_CAR", 1, f"10019-01-{i:02d}-00", 50000.0 + i, 1000.0, ETA["ra"], ETA["dec"]) for i in range(5)]
    rows += [("GX_339-4", 2, f"20181-01-{i:02d}-00", 51000.0 + i, 1500.0, GX["ra"], GX["dec"]) for i in range(3)]
    rows += [("HD_93129", 2, "20019-07-00-00", 50700.0, 1500.0, ETA["ra"], ETA["dec"] + 0.5)]
    return xtemaster_rows(rows)


def test_tap_asks_once_per_target_with_maxrec_per_query(tmp_path):
    with serve_tap(_tap_rows()) as tap:
        cfg = _config(tmp_path, targets=[ETA, GX], source={"kind": "tap", "service": tap.url, "maxrec": 6})
        manifest = plan(cfg)
        assert len(tap.queries) == 2 and all(q.maxrec == 6 for q in tap.queries)
        assert "circle('ICRS',161.2647,-59.6844,0.1)" in tap.queries[0].query
        assert "circle('ICRS',255.7057,-48.7897,0.1)" in tap.queries[1].query
    assert sorted((r.target, r.obsid.text[:5]) for r in manifest.rows) == (
        [("eta car", "10019")] * 5 + [("gx 339-4", "20181")] * 3)
    queries = manifest.meta["source"]["queries"]
    assert [(q["target"], q["n_rows"]) for q in queries] == [("eta car", 5), ("gx 339-4", 3)]
    # the maxrec rule holds per query: 5 Eta Car rows reach maxrec 5 although the total is 8
    with serve_tap(_tap_rows()) as tap:
        cfg = _config(tmp_path, targets=[ETA, GX], source={"kind": "tap", "service": tap.url, "maxrec": 5})
        with pytest.raises(UsageError, match=r"target 'eta car': .*truncated.*raise source.maxrec"):
            plan(cfg)


def test_tap_target_without_rows_is_a_warning_unless_all_are_empty(tmp_path, caplog):
    empty = {"name": "nothing here", "ra": 10.0, "dec": 10.0}
    with serve_tap(_tap_rows()) as tap:
        with caplog.at_level(logging.WARNING):
            manifest = plan(_config(tmp_path, targets=[ETA, empty], source={"kind": "tap", "service": tap.url}))
        assert {r.target for r in manifest.rows} == {"eta car"}
        assert any("nothing here" in r.getMessage() for r in caplog.records)
        with pytest.raises(UsageError, match="no observations of any of the 1 targets"):
            plan(_config(tmp_path, targets=[empty], source={"kind": "tap", "service": tap.url}))


# ---------------------------------------------------------------- end to end: one merged light curve per target
# A simulated archive whose ObsIDs are given to three targets by position (a table source), run locally,
# under a real mpiexec and on the real Slurm; each target's merged curve must hold its own ObsIDs' rows only.

E2E_TARGETS = [ETA, GX, TER5]


@pytest.fixture(scope="module")
def e2e_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Table]:
    from rxte_hpc.sim.simulate import simulate_archive

    root = tmp_path_factory.mktemp("targets-archive") / "archive"
    sim = simulate_archive(root, n_obs=12, seed=11)
    master = Table.read(root / "xtemaster.ecsv", format="ascii.ecsv")
    ours = {o.obsid.short for o in sim.observations}
    master = master[[str(o) in ours for o in master["obsid"]]]
    for i, row in enumerate(master):  # ObsID i observes target i % 3: its position, its own archive name
        target = E2E_TARGETS[i % 3]
        row["ra"], row["dec"] = target["ra"] + 0.01, target["dec"] - 0.01
        row["target_name"] = target["name"].upper().replace(" ", "_")
    return root, master


def _e2e_config(tmp_path: Path, archive: tuple[Path, Table], **extra: object) -> Path:
    import yaml

    root, master = archive
    master.write(tmp_path / "obs.ecsv", format="ascii.ecsv", overwrite=True)
    raw = {"run_dir": str(tmp_path / "run"), "targets": E2E_TARGETS,
           "source": {"kind": "table", "path": str(tmp_path / "obs.ecsv")}, "archive": {"root": str(root)},
           "extract": {"backend": "stdprod"}, "scratch": {"root": str(tmp_path / "scratch")},
           "tasks": {"obs_per_task": 2}, "slurm": {"time": "00:05:00", "mem": "200M", "setup": []}, **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_one_curve_per_target(run: Path) -> None:
    """Every target's merged.lc holds exactly its manifest rows' ObsIDs; products.ecsv lists them; no mixture."""
    from astropy.io import fits

    manifest = read_manifest(RunPaths(run).manifest)
    assert set(manifest.targets) == {t["name"] for t in E2E_TARGETS}
    assert not (run / "merged.lc").exists(), "a several-targets run must not merge its targets together"
    index = Table.read(run / "products.ecsv", format="ascii.ecsv")
    for target in manifest.targets:
        expected = {r.obsid.text for r in manifest.rows if r.target == target}
        path = RunPaths(run).output("merged.lc", target)
        assert path.is_file(), f"no merged light curve for {target}"
        with fits.open(path, checksum=True) as hdul:
            got = {o.decode() if isinstance(o, bytes) else str(o) for o in hdul["RATE"].data["OBSID"]}
            assert got == expected, f"{target}: rows of {sorted(got - expected)} are not its ObsIDs"
            assert hdul["RATE"].header["OBJECT"] == target
            assert {str(o) for o in hdul["OBSIDS"].data["OBSID"]} == expected
        rows = [r for r in index if r["target"] == target and r["kind"] == "lightcurve"]
        assert [r["path"] for r in rows] == [path.relative_to(run).as_posix()] and rows[0]["obsids"] == len(expected)


def test_several_targets_run_locally_end_to_end(tmp_path, e2e_archive, capsys):
    from rxte_hpc import Campaign
    from rxte_hpc.cli import main

    cfg = _e2e_config(tmp_path, e2e_archive)
    assert main(["run", str(cfg), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    _assert_one_curve_per_target(tmp_path / "run")
    for target in E2E_TARGETS:
        assert f"target {target['name']}: merged 4 ObsIDs" in out
    assert "total: merged 12 ObsIDs of 3 of 3 targets" in out
    # the API: every target's products, one table per target (named as configured, case and '_' ignored)
    products = Campaign.from_config(cfg).gather()
    assert {p.target for p in products.paths} == {t["name"] for t in E2E_TARGETS}
    assert {p.kind for p in products.paths} == {"lightcurve", "plot"}
    table = products.table(target="GX_339-4")
    assert set(np.char.decode(np.asarray(table["OBSID"]).astype("S")).tolist()) <= {
        r.obsid.text for r in read_manifest(RunPaths(tmp_path / "run").manifest).rows if r.target == "gx 339-4"}
    with pytest.raises(UsageError, match="several merged light curves"):
        products.path()


@pytest.mark.mpi
@needs_mpiexec
def test_several_targets_under_mpi_end_to_end(tmp_path, e2e_archive):
    from rxte_hpc.cli import main

    cfg = _e2e_config(tmp_path, e2e_archive)
    assert main(["plan", str(cfg)]) == 0
    proc = mpi_work(cfg, "--gather", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_one_curve_per_target(tmp_path / "run")
    assert "total: merged 12 ObsIDs of 3 of 3 targets" in proc.stdout


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_several_targets_on_slurm_end_to_end(tmp_path, e2e_archive):
    from rxte_hpc.cli import main
    from rxte_hpc.run.slurm.submit import read_jobs

    cfg = _e2e_config(tmp_path, e2e_archive)
    assert main(["submit", str(cfg)]) == 0
    jobs = read_jobs(RunPaths(tmp_path / "run"))
    wait_jobs([j["job_id"] for j in jobs], timeout=240)
    gather = [j for j in jobs if j["kind"] == "gather"]
    assert len(gather) == 1 and job_states(gather[0]["job_id"])[gather[0]["job_id"]] == ("COMPLETED", "0:0")
    _assert_one_curve_per_target(tmp_path / "run")
