"""Status records at scale: total readers, an index that is never stale, few opens, a short summary."""
from __future__ import annotations

import json
import os
import random
import time

import pytest

from rxte_hpc.core import statusindex
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.manifest import Observation, build_manifest, read_manifest
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths, all_shards
from rxte_hpc.core.status import MISSING, RunSummary, StatusRecord, read_record, read_record_detail, write_record
from rxte_hpc.core.statusreport import StatusReport, format_status

HASH = "0123456789abcdef"


def _manifest(n: int, targets: tuple[str, ...] = ()):
    obs = [Observation(ObsID(f"{10000 + i // 200:05d}-{i // 100 % 2:02d}-{i % 100:02d}-00"), 1, exposure_s=1000.0 + i,
                       target=targets[i % len(targets)] if targets else "") for i in range(n)]
    return build_manifest(obs, 4, {"n": n})


def _record(row, state="done", error=None, kind=None, config_hash=HASH, host="node1") -> StatusRecord:
    return StatusRecord(row.obsid.text, row.task, state, "stdprod", config_hash, "2026-01-01T00:00:00+00:00",
                        None if state == "running" else "2026-01-01T00:00:09+00:00", 9.0, host,
                        error=error, error_kind=kind)


def _publish(paths: RunPaths, row, state="done", **kw) -> None:
    write_record(paths, _record(row, state, **kw))
    if state == "done":
        paths.lc(row.obsid).parent.mkdir(parents=True, exist_ok=True)
        paths.lc(row.obsid).write_bytes(b"lc")


def _age(paths: RunPaths, seconds: float = 30.0) -> None:
    """Make every shard folder look quiet for `seconds` (what a finished run's folders are)."""
    past = time.time() - seconds
    for top in (paths.status_dir, paths.lc_dir):
        for shard in all_shards():
            if (top / shard).is_dir():
                os.utime(top / shard, (past, past))


def _oracle(manifest, paths) -> list[tuple[str, str, str | None]]:
    """What a reader that opens every record (no index) says."""
    s = RunSummary.collect(manifest, paths, HASH, use_index=False)
    return [(o.obsid, o.state, o.unreadable) for o in s.states]


def _states(summary) -> list[tuple[str, str, str | None]]:
    return [(o.obsid, o.state, o.unreadable) for o in summary.states]


HOSTILE = {
    "list": b"[1]",
    "null": b"null",
    "string": b'"done"',
    "number": b"17",
    "truncated": b'{"obsid": "',
    "binary": bytes(range(256)),
    "other_obsid": None,  # filled per test: valid record of another ObsID
    "wrong_types": None,
    "unknown_state": None,
    "empty": b"",
}


def test_hostile_records_are_unreadable_with_a_reason_never_a_crash(tmp_path):
    paths = RunPaths(tmp_path)
    manifest = _manifest(len(HOSTILE) + 2)
    rows = list(manifest.rows)
    for row in rows:
        _publish(paths, row)
    victims = dict(zip(HOSTILE, rows))
    for name, row in victims.items():
        content = HOSTILE[name]
        if name == "other_obsid":
            content = json.dumps({**json.loads(_record(rows[-1]).to_json()), "obsid": "../../etc/passwd"}).encode()
        elif name == "wrong_types":
            content = json.dumps({**json.loads(_record(row).to_json()), "task": "three"}).encode()
        elif name == "unknown_state":
            content = json.dumps({**json.loads(_record(row).to_json()), "state": "exploded"}).encode()
        paths.status(row.obsid).write_bytes(content)
    summary = RunSummary.collect(manifest, paths, HASH)
    by = {s.obsid: s for s in summary.states}
    for name, row in victims.items():
        s = by[row.obsid.text]
        assert s.state == MISSING and s.unreadable, name
        rec, why = read_record_detail(paths, row.obsid.text)
        assert rec is None and why == s.unreadable, name
        assert read_record(paths, row.obsid.text) is None
    assert by[rows[-1].obsid.text].state == "done" and by[rows[-2].obsid.text].state == "done"
    assert "another ObsID" in by[victims["other_obsid"].obsid.text].unreadable
    assert "not a record object" in by[victims["list"].obsid.text].unreadable
    # everything downstream of the summary copes
    assert set(summary.tasks_to_rerun()) == {r.task for r in victims.values()}
    report = StatusReport.build(summary, tmp_path, manifest.n_tasks)
    text = format_status(report)
    assert f"{len(HOSTILE)} unreadable record(s)" in text and "another ObsID" in text
    json.dumps(summary.to_json())  # --json is complete and serialisable
    assert len(summary.to_json()["obsids"]) == len(rows)


def test_index_is_used_only_while_provably_current(tmp_path):
    paths = RunPaths(tmp_path)
    manifest = _manifest(400)
    for row in manifest.rows:
        _publish(paths, row)
    first = RunSummary.collect(manifest, paths, HASH)
    assert first.opens == 400  # nothing cached: every shard was written within the grace period
    assert first.opens == RunSummary.collect(manifest, paths, HASH).opens  # still too recent to trust
    _age(paths)
    assert RunSummary.collect(manifest, paths, HASH).opens == 400  # read once more, now cached
    warm = RunSummary.collect(manifest, paths, HASH)
    assert warm.opens == 0 and _states(warm) == _oracle(manifest, paths)

    # a rewrite moves the shard's mtime: only that shard is read again
    victim = manifest.rows[7]
    _publish(paths, victim, "failed", error="tool failed", kind="data")
    after = RunSummary.collect(manifest, paths, HASH)
    assert after.states[7].state == "failed"
    shard_size = sum(1 for p in paths.status_files() if p.parent == paths.status(victim.obsid).parent)
    assert after.opens == shard_size

    # a rewrite moves the shard's mtime past the recorded one even when it lands in the same second
    _age(paths)
    RunSummary.collect(manifest, paths, HASH)
    assert RunSummary.collect(manifest, paths, HASH).opens == 0
    folder = paths.status(victim.obsid).parent
    before = os.stat(folder).st_mtime_ns
    _publish(paths, victim, "done")
    assert os.stat(folder).st_mtime_ns > before
    assert RunSummary.collect(manifest, paths, HASH).states[7].state == "done"

    # a removed light curve makes a done record missing at once (its lc folder's mtime moves)
    _age(paths)
    RunSummary.collect(manifest, paths, HASH)
    paths.lc(manifest.rows[3].obsid).unlink()
    assert RunSummary.collect(manifest, paths, HASH).states[3].state == MISSING


def test_racy_shard_is_not_cached(tmp_path, monkeypatch):
    """A shard whose mtime is within the grace period of the reading is never written to the index."""
    paths = RunPaths(tmp_path)
    manifest = _manifest(50)
    for row in manifest.rows:
        _publish(paths, row)
    _age(paths)
    victim = manifest.rows[0]
    _publish(paths, victim, "running")  # this shard is now hot
    RunSummary.collect(manifest, paths, HASH)
    raw = paths.status_index.read_bytes().partition(b"\n")[2]
    cached = json.loads(raw)["status"]
    hot = paths.status(victim.obsid).parent.name
    assert hot not in cached and len(cached) > 0
    # the hot shard is rewritten (same mtime tick, forced) after the read: still not trusted next time
    _publish(paths, victim, "done")
    assert RunSummary.collect(manifest, paths, HASH).states[0].state == "done"


def test_damaged_or_edited_index_is_ignored(tmp_path):
    paths = RunPaths(tmp_path)
    manifest = _manifest(60)
    for row in manifest.rows:
        _publish(paths, row)
    _age(paths)
    RunSummary.collect(manifest, paths, HASH)
    assert RunSummary.collect(manifest, paths, HASH).opens == 0
    raw = paths.status_index.read_bytes()
    edited = raw.replace(b'"done"', b'"failed"', 1)
    assert edited != raw
    for content in (edited, b"", b"[1]", raw[: len(raw) // 2], b"rxte-hpc status index 2 sha256 00\n{}"):
        paths.status_index.write_bytes(content)
        summary = RunSummary.collect(manifest, paths, HASH)
        assert summary.opens == 60 and _states(summary) == _oracle(manifest, paths)


def test_random_histories_never_disagree_with_reading_every_record(tmp_path):
    """Property: after any sequence of publications, ages and reads, the index-backed summary equals the oracle.

    Publications are renames (fsutil.write_atomic), the only way rxte-hpc writes a record; a file
    overwritten in place keeps its inode and leaves its folder's mtime alone, which no listing can see.
    """
    rng = random.Random(5)
    paths = RunPaths(tmp_path)
    manifest = _manifest(300)
    rows = list(manifest.rows)
    for step in range(40):
        for row in rng.sample(rows, rng.randrange(0, 12)):
            state = rng.choice(["done", "failed", "running", "no_data", "interrupted", "bad", "delete"])
            if state == "bad":  # published the way every writer publishes: by rename
                write_atomic(paths.status(row.obsid), rng.choice([b"[1]", b"{", b"null"]), durable=False)
            elif state == "delete":
                paths.status(row.obsid).unlink(missing_ok=True)
            else:
                _publish(paths, row, state, config_hash=rng.choice([HASH, HASH, "other"]))
        if rng.random() < 0.3:
            _age(paths, rng.choice([1.0, 30.0]))
        assert _states(RunSummary.collect(manifest, paths, HASH)) == _oracle(manifest, paths), step


def test_summary_counts_per_target_and_groups_failures(tmp_path):
    paths = RunPaths(tmp_path)
    manifest = _manifest(90, targets=("eta car", "gx 339-4", "ss cyg"))
    for i, row in enumerate(manifest.rows):
        if i % 10 == 0:
            _publish(paths, row, "failed", error=f"pcaextlc2 failed (exit {i % 20 // 10})", kind="data")
        elif i % 10 == 1:
            _publish(paths, row, "no_data", error="no Standard-2 data")
        elif i % 10 == 2:
            continue
        else:
            _publish(paths, row)
    summary = RunSummary.collect(manifest, paths, HASH)
    report = StatusReport.build(summary, tmp_path, manifest.n_tasks)
    assert sum(report.counts.values()) == 90
    assert {t: sum(c.values()) for t, c in report.targets.items()} == {"eta car": 30, "gx 339-4": 30, "ss cyg": 30}
    groups = {(g.state, g.reason): g for g in report.groups}
    assert groups[("failed", "pcaextlc2 failed (exit 0)")].count == 5
    assert groups[("failed", "pcaextlc2 failed (exit 1)")].count == 4
    assert groups[("no_data", "no Standard-2 data")].count == 9
    assert groups[(MISSING, "no record (never started)")].count == 9
    text = format_status(report)
    assert len(text.splitlines()) < 20 and "target gx 339-4" in text and "e.g." in text
    assert len(format_status(report, tasks=True).splitlines()) == len(text.splitlines()) - 1 + manifest.n_tasks


@pytest.mark.slow
def test_100000_records_summarised_with_a_handful_of_opens(tmp_path):
    paths = RunPaths(tmp_path)
    manifest = _manifest(100_000, targets=("a", "b", "c", "d"))
    manifest.write(paths.manifest)
    paths.make_dirs()
    for row in manifest.rows:  # plain writes: the point is the reader
        paths.status(row.obsid).write_text(_record(row).to_json())
        paths.lc(row.obsid).write_bytes(b"")
    _age(paths)
    past = time.time() - 30
    os.utime(paths.manifest, (past, past))
    RunSummary.collect(read_manifest(paths.manifest), paths, HASH)  # builds the index
    opened: list[str] = []
    real_open = open

    def counting_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    import builtins
    builtins.open, saved = counting_open, builtins.open
    try:
        t0 = time.process_time()
        summary = RunSummary.collect(read_manifest(paths.manifest), paths, HASH)
        cpu = time.process_time() - t0
    finally:
        builtins.open = saved
    assert summary.opens == 0 and summary.counts()["done"] == 100_000
    assert len([p for p in opened if "/status/" in p and p.endswith(".json") and "index" not in p]) == 0
    assert cpu < 4.0, cpu  # about 1 s here; the benchmark reports the wall time against a baseline
    assert statusindex.GRACE_NS >= 1_000_000_000


def test_index_layout_matches_the_record_fields():
    from rxte_hpc.core.status import _NAMES

    assert _NAMES[0] == "obsid" and _NAMES.index("output") == statusindex._OUTPUT
