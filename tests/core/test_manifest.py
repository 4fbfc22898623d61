"""The manifest: ECSV round trip with metadata, deterministic balanced task assignment, slicing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.core.manifest import Observation, assign_tasks, build_manifest, read_manifest
from rxte_hpc.core.obsid import ObsID

META = {
    "tool_version": "0.1.0",
    "created": "2024-01-02T03:04:05+00:00",
    "config_hash": "0123456789abcdef",
    "source": {"kind": "tap", "service": "https://example.org/tap", "adql": "SELECT 1 FROM t WHERE x > 0",
               "maxrec": 100000, "n_rows": 5, "query_status": "OK", "dropped": {"duplicate": 1, "cone": 0}},
}


def observations(n: int, seed: int = 0, nan_every: int = 0) -> list[Observation]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        exposure = float(rng.lognormal(np.log(1600), 0.6))
        if nan_every and i % nan_every == 0:
            exposure = math.nan
        obsid = ObsID(f"10019-01-{i // 100:02d}-{i % 100:02d}")
        out.append(Observation(obsid, 1, "ETA_CAR", 50200.0 + i, exposure, 161.26, -59.68))
    return out


def test_round_trip_keeps_rows_and_metadata(tmp_path):
    manifest = build_manifest(observations(23, nan_every=7), 4, META)
    path = tmp_path / "run" / "manifest.ecsv"
    manifest.write(path)
    back = read_manifest(path)
    assert len(back.rows) == 23
    for a, b in zip(manifest.rows, back.rows):
        assert a.obsid == b.obsid and a.task == b.task and a.index == b.index and a.target_name == b.target_name
        assert a.time_mjd == b.time_mjd
        assert a.exposure_s == b.exposure_s or (math.isnan(a.exposure_s) and math.isnan(b.exposure_s))
    assert back.meta["source"] == META["source"]
    assert (back.meta["n_tasks"], back.meta["obs_per_task"], back.meta["n_obsids"]) == (6, 4, 23)
    assert back.meta["config_hash"] == META["config_hash"] and back.n_tasks == 6
    assert back.digest() == manifest.digest()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_build_manifest_sorts_by_time_and_keeps_each_obsid_once():
    obs = observations(5)
    shuffled = [obs[3], obs[0], obs[4], obs[0], obs[1], obs[2]]
    manifest = build_manifest(shuffled, 2, {})
    assert [r.obsid for r in manifest.rows] == [o.obsid for o in obs]
    assert [r.index for r in manifest.rows] == list(range(5))
    assert manifest.n_tasks == 3


def test_assignment_is_deterministic_and_balanced():
    exposures = [o.exposure_s for o in observations(1000, seed=4)]
    first = assign_tasks(exposures, 125)
    assert first == assign_tasks(list(exposures), 125)
    loads = np.bincount(first, weights=exposures, minlength=125)
    assert loads.max() / loads.min() < 1.05
    naive = np.bincount(np.arange(1000) % 125, weights=np.asarray(exposures), minlength=125)
    assert loads.max() / loads.min() < naive.max() / naive.min()
    assert sorted(set(first)) == list(range(125))  # every task used


def test_unknown_exposures_spread_by_count():
    tasks = assign_tasks([math.nan] * 10, 5)
    assert sorted(np.bincount(tasks)) == [2, 2, 2, 2, 2]


def test_rows_for_task_and_obsid_lookup():
    manifest = build_manifest(observations(10), 3, {})
    covered = sorted(r.index for t in range(manifest.n_tasks) for r in manifest.rows_for_task(t))
    assert covered == list(range(10))
    assert manifest.row_for_obsid("10019-01-00-04").index == 4
    with pytest.raises(UsageError, match="out of range"):
        manifest.rows_for_task(manifest.n_tasks)
    with pytest.raises(UsageError, match="not in the manifest"):
        manifest.row_for_obsid("99999-01-01-01")


def test_missing_and_broken_manifests(tmp_path):
    with pytest.raises(UsageError, match="run `rxte-hpc plan"):
        read_manifest(tmp_path / "manifest.ecsv")
    path = tmp_path / "manifest.ecsv"
    build_manifest(observations(3), 2, {}).write(path)
    path.write_text(path.read_text().replace("10019-01-00-01", "10019-1-00-01"))
    with pytest.raises(DataError, match="row 2"):
        read_manifest(path)


def test_manifest_with_empty_target_name_round_trips(tmp_path):
    from rxte_hpc.core.manifest import Observation, build_manifest, read_manifest
    from rxte_hpc.core.obsid import ObsID

    manifest = build_manifest([Observation(ObsID("90171-01-01-00"), 9)], 8, {"source": {"kind": "test"}})
    manifest.write(tmp_path / "m.ecsv")
    back = read_manifest(tmp_path / "m.ecsv")
    assert back.rows[0].target_name == ""
    assert back.digest() == manifest.digest()


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _data_lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("duplicate", r"row 3: ObsID 10019-01-00-01 is listed twice \(first at row 2\)"),
        ("task_out_of_range", r"row 1: task 7 is out of range: the manifest's n_tasks is 3"),
        ("task_gap", r"task 1 has no rows although tasks run 0..2"),
        ("negative_task", r"row 1: task -1 is negative"),
        ("bad_type", r"row 2: .*exposure_s"),
        ("no_column", r"lacks column 'task'"),
        ("not_ecsv", r"unreadable manifest"),
    ],
)
def test_inconsistent_manifests_are_refused_naming_the_row(tmp_path, damage, message):
    path = tmp_path / "manifest.ecsv"
    manifest = build_manifest(observations(6), 2, {})
    manifest.write(path)
    lines = path.read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    names = body[0].split()
    rows = [line.split(" ") for line in body[1:]]
    task = names.index("task")
    if damage == "duplicate":
        rows[2][names.index("obsid")] = rows[1][names.index("obsid")]
    elif damage == "task_out_of_range":
        rows[0][task] = "7\n"
    elif damage == "task_gap":
        rows = [[*r[:task], ("0\n" if r[task].strip() == "1" else r[task])] for r in rows]
    elif damage == "negative_task":
        rows[0][task] = "-1\n"
    elif damage == "bad_type":
        pass
    if damage == "no_column":
        table = manifest.to_table()
        table.remove_column("task")
        table.write(path, format="ascii.ecsv", overwrite=True)
    elif damage == "not_ecsv":
        path.write_text("[1, 2]\n")
    elif damage == "bad_type":
        table = manifest.to_table()
        table["exposure_s"] = table["exposure_s"].astype(str)
        table["exposure_s"][1] = "lots"
        table.write(path, format="ascii.ecsv", overwrite=True)
    else:
        path.write_text("".join(header) + body[0] + "".join(" ".join(r) for r in rows))
    with pytest.raises(DataError, match=message) as info:
        read_manifest(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_target_column_round_trips_and_is_absent_for_one_target(tmp_path):
    obs = [Observation(o.obsid, o.cycle, o.target_name, o.time_mjd, o.exposure_s, o.ra, o.dec,
                       target="eta car" if i % 2 else "gx 339-4") for i, o in enumerate(observations(8))]
    manifest = build_manifest(obs, 3, {})
    manifest.write(tmp_path / "m.ecsv")
    back = read_manifest(tmp_path / "m.ecsv")
    assert [r.target for r in back.rows] == [r.target for r in manifest.rows]
    assert back.targets == ("gx 339-4", "eta car")
    one = build_manifest(observations(3), 3, {})
    one.write(tmp_path / "one.ecsv")
    assert "target_name" in (tmp_path / "one.ecsv").read_text()
    assert " target " not in _data_lines(tmp_path / "one.ecsv")[0] + " "
    assert read_manifest(tmp_path / "one.ecsv").targets == ()


def test_manifest_errors_carry_the_file_as_a_field(tmp_path):
    missing = tmp_path / "run" / "manifest.ecsv"
    with pytest.raises(UsageError) as caught:
        read_manifest(missing)
    assert caught.value.path == str(missing)
    broken = tmp_path / "manifest.ecsv"
    broken.write_text("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: obsid, datatype: string}\nobsid\nnot-an-obsid\n")
    with pytest.raises(DataError) as caught:
        read_manifest(broken)
    assert caught.value.path == str(broken) and caught.value.exit_code == 1
