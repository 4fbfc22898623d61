"""Planning: the TAP planner against a real HTTP TAP service on 127.0.0.1, table files, archive scans.

The live HEASARC test at the end is opt-in: set RXTE_HPC_REMOTE_DATA=1 (it
needs the network, which CI machines here do not have).
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from rxte_hpc.plan import planner as planmod
from rxte_hpc.core.config import config_from_mapping, load_config
from rxte_hpc.core.status import read_record
from where import REPO
from rxte_hpc.core.errors import DataError, SiteError, UsageError
from rxte_hpc.fits.lcfile import RXTE_TIMEREF
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.plan.describe import describe_plan
from rxte_hpc.plan.planner import plan, scan_archive, write_manifest
from rxte_hpc.products.plot import plot_exposure
from rxte_hpc.plan.tap import adql_number, build_adql

from tapserver import serve_tap, xtemaster_rows

RA, DEC = 161.2647, -59.6844
ETA = [
    ("ETA_CAR", 1, "10019-01-01-00", 50300.25, 2000.0, RA, DEC),
    ("ETA_CAR", 1, "10019-01-02-00", 50200.5, 3000.0, RA + 0.01, DEC),
    ("ETA_CAR", 2, "20019-01-01-00", 50600.0, 1000.0, RA, DEC - 0.02),
    ("ETA_CAR", 3, "30019-01-01-00", 50900.0, 500.0, RA, DEC),
    ("ETA_CAR", 3, "30019-01-02-00", 51000.0, 0.0, RA, DEC),  # never observed: exposure cut
    ("HD_93129", 2, "20019-07-00-00", 50700.0, 1500.0, RA, DEC + 0.5),  # off target: cone
]
EXPECTED_ADQL = (
    "SELECT target_name, cycle, prnb, obsid, time, exposure, ra, dec FROM xtemaster AS cat WHERE "
    "contains(point('ICRS',cat.ra,cat.dec), circle('ICRS',161.2647,-59.6844,0.1))=1 AND cat.exposure > 0 "
    "ORDER BY cat.time"
)


def make_config(tmp_path: Path, **sections: object):
    raw = {"run_dir": "run", "target": {"name": "eta car", "ra": RA, "dec": DEC, "radius_deg": 0.1}}
    raw.update(sections)
    return config_from_mapping(raw, tmp_path / "config.yaml")


def tap_config(tmp_path: Path, url: str, **source: object):
    return make_config(tmp_path, source={"kind": "tap", "service": url, "maxrec": 100, **source})


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/tap"


# ---------------------------------------------------------------- TAP
def test_tap_sends_the_seed_query_and_plans_what_the_cone_and_cuts_keep(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        manifest = plan(tap_config(tmp_path, tap.url))
    (query,) = tap.queries
    assert query.query == EXPECTED_ADQL
    assert (query.request, query.lang, query.maxrec) == ("doQuery", "ADQL", 100)
    assert [r.obsid.text for r in manifest.rows] == ["10019-01-02-00", "10019-01-01-00", "20019-01-01-00", "30019-01-01-00"]
    first = manifest.rows[0]
    assert (first.cycle, first.prnb, first.target_name) == (1, 10019, "ETA_CAR")
    assert (first.time_mjd, first.exposure_s) == (50200.5, 3000.0)
    src = manifest.meta["source"]
    assert src["kind"] == "tap" and src["service"] == tap.url and src["adql"] == EXPECTED_ADQL
    assert (src["maxrec"], src["n_rows"], src["query_status"]) == (100, 4, "OK")
    assert manifest.meta["config_hash"] and manifest.meta["tool_version"] and manifest.meta["created"].endswith("+00:00")


def test_tap_time_range_and_min_exposure_reach_the_service(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        manifest = plan(tap_config(tmp_path, tap.url, min_exposure_s=600, time_range_mjd=[50250, 50950.5]))
    adql = tap.queries[0].query
    assert "cat.exposure > 600 AND cat.time BETWEEN 50250 AND 50950.5 ORDER BY cat.time" in adql
    assert [r.obsid.text for r in manifest.rows] == ["10019-01-01-00", "20019-01-01-00"]


def test_overflow_is_an_error_that_says_to_raise_maxrec(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        with pytest.raises(UsageError, match=r"OVERFLOW.*raise source\.maxrec \(now 2\)"):
            plan(tap_config(tmp_path, tap.url, maxrec=2))


def test_rows_equal_to_maxrec_is_truncation_even_without_overflow(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        with pytest.raises(UsageError, match=r"returned maxrec=4 rows.*raise source\.maxrec"):
            plan(tap_config(tmp_path, tap.url, maxrec=4))
    assert tap.queries[0].maxrec == 4


def test_empty_result_shows_the_query(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        with pytest.raises(UsageError, match="no observations") as err:
            plan(tap_config(tmp_path, tap.url, time_range_mjd=[40000, 40001]))
    assert "cat.time BETWEEN 40000 AND 40001" in str(err.value)


def test_duplicate_obsids_are_kept_once(tmp_path):
    rows = ETA[:2] + [ETA[0]] + [ETA[0]]
    with serve_tap(xtemaster_rows(rows)) as tap:
        manifest = plan(tap_config(tmp_path, tap.url))
    assert [r.obsid.text for r in manifest.rows] == ["10019-01-02-00", "10019-01-01-00"]
    assert manifest.meta["source"]["dropped"]["duplicate"] == 2


def test_malformed_obsid_fails_the_plan_naming_the_row(tmp_path):
    rows = ETA[:2] + [("ETA_CAR", 1, "10019-1-03-00", 50400.0, 900.0, RA, DEC)]
    with serve_tap(xtemaster_rows(rows)) as tap:
        with pytest.raises(DataError, match=r"row 3 \(obsid '10019-1-03-00'\)"):
            plan(tap_config(tmp_path, tap.url))


def test_prnb_that_disagrees_with_the_obsid_is_rejected(tmp_path):
    table = xtemaster_rows(ETA[:2])
    table["prnb"][1] = 99999
    with serve_tap(table) as tap:
        with pytest.raises(DataError, match=r"row 1 .*prnb 99999 disagrees"):
            plan(tap_config(tmp_path, tap.url))


def test_unreachable_service_is_one_line_naming_the_url(tmp_path):
    url = closed_port_url()
    with pytest.raises(SiteError) as err:
        plan(tap_config(tmp_path, url))
    message = str(err.value)
    assert url in message and "\n" not in message and len(message) < 300
    assert err.value.exit_code == 1


def test_service_error_status_is_a_data_error(tmp_path):
    with serve_tap(xtemaster_rows(ETA), error="Table xtemasterr not found") as tap:
        with pytest.raises(DataError, match="rejected the query.*xtemasterr not found"):
            plan(tap_config(tmp_path, tap.url))


@pytest.mark.parametrize("table", ["xtemaster; DROP", "public.xtemaster.x", "1table", "x--y"])
def test_table_name_must_be_an_identifier(tmp_path, table):
    cfg = make_config(tmp_path, source={"kind": "tap", "table": table})
    with pytest.raises(UsageError, match="source.table"):
        build_adql(cfg, RA, DEC)


def test_schema_qualified_table_and_number_formatting(tmp_path):
    cfg = make_config(tmp_path, source={"kind": "tap", "table": "public.xtemaster", "min_exposure_s": 0.00001})
    adql = build_adql(cfg, 1e-7, -0.5)
    assert "FROM public.xtemaster AS cat" in adql
    assert "circle('ICRS',0.0000001,-0.5,0.1)" in adql and "cat.exposure > 0.00001" in adql
    assert adql_number(161.2647) == "161.2647"
    with pytest.raises(UsageError):
        adql_number(math.nan)


def test_name_only_target_offline_says_to_give_coordinates(tmp_path, monkeypatch):
    from astropy.coordinates import SkyCoord
    from astropy.coordinates.name_resolve import NameResolveError

    def offline(name, *args, **kwargs):
        raise NameResolveError(f"Unable to find coordinates for name '{name}' using sesame")

    monkeypatch.setattr(SkyCoord, "from_name", offline)
    cfg = config_from_mapping(
        {"run_dir": "run", "target": {"name": "eta car"}, "source": {"kind": "tap", "service": closed_port_url()}},
        tmp_path / "config.yaml",
    )
    with pytest.raises(UsageError, match="put target.ra and target.dec"):
        plan(cfg)


# ---------------------------------------------------------------- table files
def _write_formats(tmp_path: Path, table: Table) -> list[Path]:
    paths = []
    for name, fmt in (("obs.csv", "ascii.csv"), ("obs.ecsv", "ascii.ecsv"), ("obs.xml", "votable"), ("obs.fits", "fits")):
        paths.append(tmp_path / name)
        table.write(paths[-1], format=fmt)
    return paths


def test_table_sources_in_every_format_give_the_same_manifest(tmp_path):
    table = xtemaster_rows(ETA)
    table.rename_columns(["obsid", "cycle", "time"], ["ObsID", "CYCLE", "Time"])
    table.remove_column("prnb")
    manifests = []
    for path in _write_formats(tmp_path, table):
        manifests.append(plan(make_config(tmp_path, source={"kind": "table", "path": str(path)})))
        src = manifests[-1].meta["source"]
        assert src["path"] == str(path) and src["sha256"] == planmod._sha256(path) and len(src["sha256"]) == 64
    assert all(m.rows == manifests[0].rows for m in manifests)
    rows = manifests[0].rows
    assert [r.obsid.text for r in rows] == ["10019-01-02-00", "10019-01-01-00", "20019-01-01-00", "30019-01-01-00"]
    assert [r.prnb for r in rows] == [10019, 10019, 20019, 30019]
    assert manifests[0].meta["source"]["dropped"] == {"unobserved": 0, "duplicate": 0, "slew": 0, "exposure": 1,
                                                      "time_range": 0, "cone": 1}


def test_bare_obsid_list_plans_with_unknown_exposure_and_drops_slews(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("obsid,cycle\n10019-01-01-00,1\n10019-01-01-00A,1\n20019-01-01-00,2\n20019-01-01-01,2\n")
    manifest = plan(make_config(tmp_path, source={"kind": "table", "path": str(path)}, tasks={"obs_per_task": 1}))
    assert [r.obsid.text for r in manifest.rows] == ["10019-01-01-00", "20019-01-01-00", "20019-01-01-01"]
    assert all(math.isnan(r.exposure_s) for r in manifest.rows)
    assert sorted(r.task for r in manifest.rows) == [0, 1, 2]
    assert manifest.meta["source"]["dropped"]["slew"] == 1


def test_table_without_obsid_column_names_the_file(tmp_path):
    path = tmp_path / "noobs.csv"
    path.write_text("id,cycle\n10019-01-01-00,1\n")
    with pytest.raises(UsageError, match=r"noobs\.csv: no 'obsid' column"):
        plan(make_config(tmp_path, source={"kind": "table", "path": str(path)}))


def test_bad_row_in_a_table_names_file_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("obsid,cycle\n10019-01-01-00,1\n10019-01-01-00,99\n")
    with pytest.raises(UsageError, match=r"bad\.csv: row 2 .*AO cycle out of range"):
        plan(make_config(tmp_path, source={"kind": "table", "path": str(path)}))


@pytest.mark.parametrize("name,content", [("obs.xml", "this is not xml\n"), ("obs.xml", "<?xml version='1.0'?><foo/>"),
                                          ("obs.fits", "junk"), ("obs.txt", "obsid,cycle\n")])
def test_unreadable_table_is_a_one_line_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError) as err:
        plan(make_config(tmp_path, source={"kind": "table", "path": str(path)}))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- archive scans
def _fake_obsid_dir(root: Path, cycle: int, obsid: str, start: float, stop: float, object_name: str | None) -> Path:
    d = root / f"AO{cycle}" / f"P{obsid[:5]}" / obsid
    d.mkdir(parents=True)
    cols = [fits.Column(name="ObsId", format="15A", array=[obsid]),
            fits.Column(name="StartMET", format="D", array=[start]),
            fits.Column(name="StopMET", format="D", array=[stop])]
    ext = fits.BinTableHDU.from_columns(cols, name="XTE_MI")
    ext.header["MJDREFI"], ext.header["MJDREFF"], ext.header["TIMEZERO"] = 49353, 6.96574074e-4, 3.0
    if object_name:
        ext.header["OBJECT"] = object_name
    fits.HDUList([fits.PrimaryHDU(), ext]).writeto(d / "FMI")
    return d


def test_archive_scan_reads_fmi_times_and_skips_non_obsids(tmp_path):
    root = tmp_path / "archive"
    _fake_obsid_dir(root, 1, "10019-01-01-00", 1.0e8, 1.0e8 + 2000, "ETA_CAR")
    _fake_obsid_dir(root, 1, "10019-01-02-00", 0.9e8, 0.9e8 + 500, None)
    _fake_obsid_dir(root, 1, "10019-01-02-00Z", 0.9e8 + 600, 0.9e8 + 700, None)
    (root / "AO1" / "P10019" / "10019-01-03-00").mkdir()  # no FMI: times unknown
    (root / "AO1" / "P10019" / "README").mkdir()
    (root / "AOx").mkdir()
    found = {o.obsid.text: o for o in scan_archive(root)}
    assert sorted(found) == ["10019-01-01-00", "10019-01-02-00", "10019-01-02-00Z", "10019-01-03-00"]
    first = found["10019-01-01-00"]
    assert first.exposure_s == 2000.0 and first.target_name == "ETA_CAR"
    assert first.time_mjd == pytest.approx(RXTE_TIMEREF.mjd(1.0e8 + 3.0), abs=1e-9)
    assert math.isnan(found["10019-01-03-00"].time_mjd)

    cfg = make_config(tmp_path, archive={"root": str(root)}, source={"kind": "archive"})
    manifest = plan(cfg)
    assert [r.obsid.text for r in manifest.rows] == ["10019-01-02-00", "10019-01-01-00", "10019-01-03-00"]
    assert manifest.meta["source"]["root"] == str(root) and manifest.meta["source"]["dropped"]["slew"] == 1


def test_simulated_archive_scan_matches_its_xtemaster_table(tmp_path):
    cfg = make_config(tmp_path, archive={"root": "simulated"}, simulate={"n_obs": 6, "seed": 3}, source={"kind": "archive"})
    scanned = plan(cfg)
    assert scanned.meta["source"]["root"] == str(cfg.run_dir / "archive")
    table = plan(make_config(tmp_path, source={"kind": "table", "path": str(cfg.run_dir / "archive" / "xtemaster.ecsv")}))
    assert [r.obsid for r in scanned.rows] == [r.obsid for r in table.rows]
    assert table.meta["source"]["dropped"]["cone"] == 3 and table.meta["source"]["dropped"]["exposure"] == 1
    assert all(r.target_name == "ETA_CAR" for r in scanned.rows)
    assert np.allclose([r.time_mjd for r in scanned.rows], [r.time_mjd for r in table.rows], atol=0.05)


# ---------------------------------------------------------------- describe, write, plot
def test_describe_plan_gives_counts_exposure_and_times(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        cfg = tap_config(tmp_path, tap.url)
        manifest = plan(cfg)
    heasoft = make_config(tmp_path, source={"kind": "tap", "service": tap.url, "maxrec": 100}, extract={"backend": "heasoft"})
    text = describe_plan(heasoft, manifest)
    assert EXPECTED_ADQL in text and f"TAP {tap.url}" in text
    assert "ObsIDs: 4 in 1 tasks (obs_per_task 8; 4-4 per task" in text and "total exposure: 6.5 ks" in text
    assert "serial HEASoft estimate: 4 x 15 s = 1.0 min (the seed's figure, not measured)" in text
    assert "parallel estimate at width 1: 1.0 min" in text
    native = make_config(tmp_path, source={"kind": "tap", "service": tap.url, "maxrec": 100}, extract={"backend": "native"})
    assert "HEASoft estimate" not in describe_plan(native, manifest)
    assert "time estimate: none for the native backend" in describe_plan(native, manifest)
    wide = plan(make_config(tmp_path, source={"kind": "table", "path": str(_write_formats(tmp_path, xtemaster_rows(ETA))[1])},
                            tasks={"obs_per_task": 1}))
    text = describe_plan(heasoft, wide, workers=2)
    assert "4 in 4 tasks" in text and "parallel estimate at width 2: 0.5 min (x2.0)" in text


def test_write_manifest_refuses_after_tasks_ran_unless_forced(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        cfg = tap_config(tmp_path, tap.url)
        manifest = plan(cfg)
    path = write_manifest(cfg, manifest)
    assert path == cfg.run_dir / "manifest.ecsv" and read_manifest(path).rows == manifest.rows
    assert write_manifest(cfg, manifest) == path  # nothing ran yet: replanning is fine
    (cfg.run_dir / "status").mkdir()
    RunPaths(cfg.run_dir).status("10019-01-01-00").parent.mkdir(parents=True, exist_ok=True)
    RunPaths(cfg.run_dir).status("10019-01-01-00").write_text("{}")
    before = path.read_bytes()
    with pytest.raises(UsageError, match="tasks already ran.*--force"):
        write_manifest(cfg, manifest)
    assert path.read_bytes() == before
    assert write_manifest(cfg, manifest, force=True) == path


def test_plot_exposure_writes_a_png(tmp_path):
    with serve_tap(xtemaster_rows(ETA)) as tap:
        manifest = plan(tap_config(tmp_path, tap.url))
    out = plot_exposure(manifest, tmp_path / "exposure.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the real HEASARC (opt-in)
@pytest.mark.remote_data
@pytest.mark.skipif(os.environ.get("RXTE_HPC_REMOTE_DATA") != "1", reason="set RXTE_HPC_REMOTE_DATA=1 to query HEASARC")
def test_real_heasarc_eta_car(tmp_path):
    cfg = make_config(tmp_path, source={"kind": "tap", "maxrec": 100000})
    manifest = plan(cfg)
    assert 1000 < len(manifest.rows) < 2000
    assert manifest.meta["source"]["query_status"] == "OK"


# ------------------------------------------------------------------ a run directory belongs to one plan


def test_a_config_of_other_science_on_a_planned_run_dir_is_refused_before_anything_is_written(tmp_path, capsys):
    import yaml

    from rxte_hpc.cli import main

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw.update(run_dir=str(tmp_path / "run"), scratch={"root": str(tmp_path / "scratch")},
               simulate={"n_obs": 4, "seed": 3}, tasks={"obs_per_task": 2})
    first = tmp_path / "soft.yaml"
    first.write_text(yaml.safe_dump(raw))
    raw["extract"].update(chmin=11, chmax=20)
    second = tmp_path / "hard.yaml"
    second.write_text(yaml.safe_dump(raw))
    assert main(["run", str(first), "--workers", "1"]) == 0
    run = RunPaths(tmp_path / "run")

    def written():
        return sorted((str(p), p.stat().st_mtime_ns) for p in run.root.rglob("*") if p.is_file())

    assert main(["status", str(first)]) == 0  # a reader's caches (manifest, status index) exist from here on
    before = written()
    capsys.readouterr()
    for command in (["run"], ["work", "--task", "0"], ["status"], ["gather"], ["submit", "--dry-run"], ["rerun", "--dry-run"]):
        assert main([command[0], str(second), *command[1:]]) == 2, command
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        for named in (str(first), str(second), load_config(first).hash(), load_config(second).hash(),
                      "channels 5-10", "channels 11-20", "another run_dir", "plan", "--force"):
            assert named in err, (command, named, err)
    assert written() == before  # nothing written, not even the status index
    # the deliberate way: replan, and every ObsID is redone for the new config
    assert main(["plan", str(second), "--force"]) == 0
    assert main(["run", str(second), "--workers", "1"]) == 0
    assert {r.config_hash for r in (read_record(run, o.obsid.text) for o in read_manifest(run.manifest).rows)} \
        == {load_config(second).hash()}
