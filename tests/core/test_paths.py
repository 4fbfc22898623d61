"""The run directory's sharding (core/paths.py): no folder over 1,000 entries up to 100,000 ObsIDs."""
from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest

from rxte_hpc.core.obsid import InvalidObsID, ObsID
from rxte_hpc.core.paths import MAX_FOLDER_ENTRIES, N_SHARDS, RunPaths, all_shards, shard_of


def _dense_one_proposal(n: int) -> list[str]:
    """The worst realistic case for a proposal-based layout: one monitoring proposal, consecutive ObsIDs."""
    return [f"96{i // 1000000 % 1000:03d}-{i // 10000 % 100:02d}-{i // 100 % 100:02d}-{i % 100:02d}" for i in range(n)]


def _spread(n: int, seed: int) -> list[str]:
    """Proposals of every size, with event-flag characters, as the archive has them."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        prop = rng.choice([10000 + rng.randrange(1000), 20000 + rng.randrange(90000)])
        flag = rng.choice(["", "", "", "", "A", "Z", "G"])
        out.add(f"{prop % 100000:05d}-{rng.randrange(100):02d}-{rng.randrange(100):02d}-{rng.randrange(100):02d}{flag}")
    return sorted(out)


@pytest.mark.parametrize("obsids", [_dense_one_proposal(100_000), _spread(100_000, 1)], ids=["one-proposal", "spread"])
def test_100000_obsids_never_put_more_than_1000_entries_in_a_folder(obsids, tmp_path):
    paths = RunPaths(tmp_path)
    folders = Counter(paths.lc(text).parent for text in obsids)
    for text in obsids[::97]:  # status and logs use the same shards
        assert paths.status(text).parent.name == paths.log(text).parent.name == paths.lc(text).parent.name
        assert paths.status(text).parent.parent == paths.status_dir and paths.log(text).parent.parent == paths.logs_dir
    worst = max(folders.values())
    assert worst <= MAX_FOLDER_ENTRIES, (worst, folders.most_common(1))
    assert worst < 500  # ~390 expected at 100,000: far from the limit, not just under it
    assert {p.parent for p in folders} == {paths.lc_dir}
    assert len(folders) == N_SHARDS  # the level above holds 256 folders


def test_task_logs_of_10000_tasks_are_sharded_too(tmp_path):
    paths = RunPaths(tmp_path)
    per = Counter(paths.task_log(f"task{t:05d}").parent for t in range(10_000))
    per.update(paths.task_log(f"mpi-rank{r:04d}").parent for r in range(4096))
    assert max(per.values()) <= MAX_FOLDER_ENTRIES and {p.parent for p in per} == {paths.task_logs_dir}


def test_files_land_where_runpaths_says_and_a_real_tree_stays_under_the_limit(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    obsids = _spread(3000, 2)
    for text in obsids:
        for p in (paths.lc(text), paths.status(text), paths.log(text)):
            p.write_bytes(b"")
    for label in ("task00001", "mpi-rank0000"):
        paths.task_log(label).write_text("x\n")
    # walk the real tree: every folder, every entry
    for folder, dirs, files in os.walk(paths.root):
        assert len(dirs) + len(files) <= MAX_FOLDER_ENTRIES, folder
    assert sorted(p.stem for p in paths.status_files()) == obsids
    assert sorted(p.stem for p in paths.lc_files()) == obsids
    assert sorted(p.stem for p in paths.task_log_files()) == ["mpi-rank0000", "task00001"]
    assert paths.has_records()
    # a temporary file (half-written record) is never listed
    (paths.status(obsids[0]).parent / f".{obsids[0]}.json.tmp.host.1").write_bytes(b"{")
    assert sum(1 for _ in paths.status_files()) == len(obsids)


def test_shard_is_stable_and_two_hex_digits():
    # CRC-32 is fixed by the standard: the same shard on every node and Python version
    assert shard_of("10019-01-01-00") == f"{__import__('zlib').crc32(b'10019-01-01-00') % 256:02x}"
    assert len(all_shards()) == N_SHARDS and all(len(s) == 2 for s in all_shards())
    assert all(shard_of(o) in all_shards() for o in _spread(500, 3))


def test_make_dirs_is_one_stat_once_made(tmp_path, monkeypatch):
    paths = RunPaths(tmp_path)
    paths.make_dirs()
    assert sorted(os.listdir(paths.lc_dir)) == list(all_shards())
    calls = []
    real_mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: calls.append(self) or real_mkdir(self, *a, **k))
    paths.make_dirs()
    assert calls == []


def test_hostile_names_cannot_escape(tmp_path):
    paths = RunPaths(tmp_path)
    for bad in ("../../etc/passwd", "10019-01-01-00/../x", "10019-01-01-00\n"):
        if bad.strip() != bad and ObsID.parse(bad).text == bad.strip():
            assert paths.lc(bad).parent.parent == paths.lc_dir
            continue
        with pytest.raises(InvalidObsID):
            paths.lc(bad)
    assert paths.task_log("../../x").parent.parent == paths.task_logs_dir
    assert paths.slurm_array_logs("../x").parent == paths.slurm_logs_dir


def test_target_products_have_one_folder_each(tmp_path):
    paths = RunPaths(tmp_path)
    assert paths.target_dir("eta car") == tmp_path / "targets" / "eta_car"
    assert paths.output("merged.lc", "gx 339-4") == tmp_path / "targets" / "gx_339-4" / "merged.lc"
    assert paths.output("merged.lc") == tmp_path / "merged.lc"
    for hostile in ("../x", "a/b", ".."):
        assert paths.target_dir(hostile).parent == paths.targets_dir
