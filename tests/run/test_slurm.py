"""The Slurm executor: rendering, validation, chunking (pure), then real submissions to a real Slurm.

The live tests (marker `slurm`) start a single-node Slurm 22.05 with
`scripts/start-slurm.sh` and MaxArraySize=5, so a 12-task run must be cut into
three arrays. They skip only when Slurm cannot be started here (not root, no
packages); under CI=true that is a failure instead. Jobs are watched by polling
`squeue` every 0.2 s (`sbatch --wait` polls after 2, 10, 42 s) and judged from
`scontrol -o show job` and the run's own status records.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
import yaml

from rxte_hpc import Campaign
from rxte_hpc.cli import main
from rxte_hpc.core.config import config_from_mapping, load_config
from rxte_hpc.core.errors import ConfigError, UsageError
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.run.slurm.queue import SlurmRefused, SlurmUnreachable, slurm_failure
from rxte_hpc.run.slurm.submit import array_task_from_env, parse_max_array_size, read_jobs, scheduler_states
from rxte_hpc.run.slurm.render import (
    TEMPLATES,
    ArrayChunk,
    RenderInputs,
    compress_indices,
    contiguous_chunks,
    render_array,
    render_gather,
    render_mpi,
    sparse_chunks,
    time_limit_seconds,
    validate_slurm,
)
from rxte_hpc.core.status import RunSummary, read_record
from slurmkit import job_states, slurm_cmd, wait_jobs
from where import DATA, REPO, STANDIN



def _config(slurm: dict | None = None, **top: object):
    raw = {"run_dir": "/scratch/etacar/run", "slurm": {"setup": [], **(slurm or {})}, **top}
    return config_from_mapping(raw, Path("/project/etacar/etacar.yaml"))


# ------------------------------------------------------------------ pure: rendering


def _expected_inputs() -> tuple[RenderInputs, list[ArrayChunk]]:
    cfg = _config(
        {
            "partition": "debug",
            "account": "astro",
            "time": "02:00:00",
            "mem": "4G",
            "cpus_per_task": 1,
            "throttle": 64,
            "extra": ["--qos=normal", "--constraint=[ib|eth]"],
            "setup": ["module load heasoft", "export HEADASNOQUERY="],
            "signal_s": 120,
        }
    )
    validate_slurm(cfg)
    inputs = RenderInputs(cfg.slurm, Path("/project/etacar/etacar.yaml"), cfg.run_dir, "/opt/rxte env/bin/python")
    return inputs, contiguous_chunks(172, 100)


def test_array_script_matches_recorded_expected():
    inputs, chunks = _expected_inputs()
    rendered = render_array(inputs, chunks)
    expected = (DATA / "expected_array.sbatch").read_text()
    assert rendered == expected, "rendered array script changed: review it and update tests/data/expected_array.sbatch"


def test_rendered_scripts_quote_and_omit():
    inputs, _ = _expected_inputs()
    gather = render_gather(inputs)
    assert "exec '/opt/rxte env/bin/python' -m rxte_hpc gather /project/etacar/etacar.yaml\n" in gather
    assert "#SBATCH --partition=debug\n#SBATCH --account=astro\n" in gather
    mpi = render_mpi(inputs)
    assert "srun --mpi=pmi2 -n 2 '/opt/rxte env/bin/python' -m rxte_hpc work /project/etacar/etacar.yaml --mpi --gather" in mpi
    bare = RenderInputs(_config().slurm, Path("/c.yaml"), Path("/r"), "/usr/bin/python3")
    text = render_array(bare, contiguous_chunks(3, 1001))
    assert "--partition" not in text and "--account" not in text
    assert "#SBATCH --array=0-2%64\n" in text and "\n\n" not in text
    assert 'export RXTE_HPC_TASK_OFFSET="${RXTE_HPC_TASK_OFFSET:-0}"' in text
    assert text.rstrip().endswith("exec /usr/bin/python3 -m rxte_hpc work /c.yaml --slurm")
    assert "#SBATCH --signal=B:USR1@120" in text


def test_templates_have_one_source_of_truth():
    for name in TEMPLATES:
        repo_copy = REPO / "slurm" / f"{name}.sbatch"
        packaged = REPO / "rxte_hpc" / "run" / "slurm" / "templates" / f"{name}.sbatch"
        assert repo_copy.read_text() == packaged.read_text(), f"slurm/{name}.sbatch differs from the packaged template"


@pytest.mark.parametrize(
    "slurm, key",
    [
        ({"partition": "debug; touch /tmp/x"}, "slurm.partition"),
        ({"account": "a$(id)"}, "slurm.account"),
        ({"mem": "4G$(id)"}, "slurm.mem"),
        ({"mem": "4 G"}, "slurm.mem"),
        ({"time": "01:00:00;id"}, "slurm.time"),
        ({"time": "1:2:3:4"}, "slurm.time"),
        ({"extra": ["--qos=x;rm"]}, "slurm.extra[0]"),
        ({"extra": ["--qos=normal", "-q x"]}, "slurm.extra[1]"),
        ({"extra": ["--qos=a b"]}, "slurm.extra[0]"),
        ({"extra": ["--array=1-1000"]}, "slurm.extra[0]"),
        ({"extra": ["--output=/tmp/`id`"]}, "slurm.extra[0]"),
        ({"setup": ["module load heasoft\rid"]}, "slurm.setup[0]"),
        ({"time": "00:01:00", "signal_s": 60}, "slurm.signal_s"),
    ],
)
def test_injection_and_bad_values_rejected(slurm, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_slurm(_config(slurm))


def test_newline_in_setup_line_rejected_by_config():
    with pytest.raises(ConfigError, match=r"slurm\.setup\[0\]"):
        _config({"setup": ["module load heasoft\ntouch /tmp/x"]})


def test_run_dir_that_sbatch_cannot_carry_is_refused():
    cfg = _config(run_dir="/scratch/my run")
    with pytest.raises(UsageError, match="run_dir"):
        render_array(RenderInputs.from_config(cfg, "/usr/bin/python3"), contiguous_chunks(2, 5))


@pytest.mark.parametrize(
    "value, seconds",
    [("90", 5400), ("5:30", 330), ("02:00:00", 7200), ("1-0", 86400), ("1-12:30", 131400), ("0-00:01:00", 60)],
)
def test_time_limit_seconds(value, seconds):
    assert time_limit_seconds(value) == seconds


# ------------------------------------------------------------------ pure: chunks and environment


def test_contiguous_chunks_keep_every_index_below_max_array_size():
    chunks = contiguous_chunks(12, 5)
    assert [(c.spec(), c.offset) for c in chunks] == [("0-4", 0), ("0-4", 5), ("0-1", 10)]
    assert [t for c in chunks for t in c.tasks] == list(range(12))
    assert contiguous_chunks(5, 5) == [ArrayChunk(0, (0, 1, 2, 3, 4))]
    assert chunks[2].array_option(3) == "--array=0-1%3"


def test_sparse_chunks_group_by_offset():
    chunks = sparse_chunks([42, 3, 17, 18, 19, 4], 10)
    assert [(c.offset, c.spec()) for c in chunks] == [(0, "3-4"), (10, "7-9"), (40, "2")]
    assert sorted(t for c in chunks for t in c.tasks) == [3, 4, 17, 18, 19, 42]
    assert all(i < 10 for c in chunks for i in c.indices)
    assert compress_indices([3, 17, 42]) == "3,17,42"
    assert sparse_chunks([2, 6], 5) == [ArrayChunk(0, (2,)), ArrayChunk(5, (1,))]


def test_array_task_from_env():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_JOB_ID": "812", "RXTE_HPC_TASK_OFFSET": "1000"}
    assert array_task_from_env(env) == (1003, "812_3")
    assert array_task_from_env({"SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_JOB_ID": "9"}) == (17, "9_17")
    with pytest.raises(UsageError, match="--task"):
        array_task_from_env({})
    with pytest.raises(UsageError, match="RXTE_HPC_TASK_OFFSET"):
        array_task_from_env({**env, "RXTE_HPC_TASK_OFFSET": "-5"})
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID"):
        array_task_from_env({**env, "SLURM_ARRAY_TASK_ID": "x"})


def test_parse_max_array_size():
    text = "MailType                = (null)\nMaxArraySize            = 1001\nMaxBatchRequeue         = 5\n"
    assert parse_max_array_size(text) == 1001


def test_scheduler_states_without_jobs_or_without_slurm(tmp_path, monkeypatch):
    cfg = _config(run_dir=str(tmp_path / "run"))
    assert "no Slurm jobs recorded" in scheduler_states(cfg)["summary"]
    jobs = RunPaths(cfg.run_dir).slurm_dir / "jobs.json"
    jobs.parent.mkdir(parents=True)
    jobs.write_text(json.dumps({"submissions": [{"kind": "array", "job_id": "5", "offset": 0}]}))
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue here
    states = scheduler_states(cfg)
    assert states["available"] is False and "squeue not found" in states["summary"]


def test_dry_run_without_slurm_prints_and_submits_nothing(tmp_path, monkeypatch, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": "run",
                "archive": {"root": "simulated"},
                "simulate": {"n_obs": 3, "seed": 2},
                "source": {"kind": "archive"},
                "extract": {"backend": "stdprod"},
                "tasks": {"obs_per_task": 1},
                "slurm": {"setup": [], "throttle": 2},
            }
        )
    )
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert main(["submit", str(cfg_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 tasks (3 ObsIDs) as 1 array(s); MaxArraySize 1001" in out
    assert "sbatch --parsable --array=0-2%2 --export=ALL,RXTE_HPC_TASK_OFFSET=0" in out
    assert "--dependency=afterany:" in out and "exec " in out
    assert not (tmp_path / "run" / "slurm").exists() and not (tmp_path / "run" / "manifest.ecsv").exists()


# ------------------------------------------------------------------ live Slurm


def run_ids(run_dir: Path, kinds: tuple[str, ...]) -> list[str]:
    return [j["job_id"] for j in read_jobs(RunPaths(run_dir)) if j["kind"] in kinds]


@pytest.fixture(scope="session")
def sim_archive(tmp_path_factory):
    """One simulated archive (24 ObsIDs, with standard products) shared read-only by the live tests."""
    root = tmp_path_factory.mktemp("archive")
    assert main(["simulate", str(root), "--n-obs", "24", "--seed", "3"]) == 0
    return root


def write_config(tmp_path: Path, archive: Path, **over: object) -> Path:
    raw = {
        "run_dir": str(tmp_path / "run"),
        "archive": {"root": str(archive)},
        "source": {"kind": "archive"},
        "extract": {"backend": "stdprod"},
        "scratch": {"root": str(tmp_path / "scratch")},
        "tasks": {"obs_per_task": 2},
        "slurm": {"partition": None, "time": "00:05:00", "mem": "200M", "throttle": 8, "setup": [], "signal_s": 30},
    }
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slurm
def test_live_chunked_arrays_then_gather(slurm_cluster, sim_archive, tmp_path, capsys):
    cfg_path = write_config(tmp_path, sim_archive)
    result = Campaign.from_config(cfg_path).submit()  # the API: job ids returned, nothing printed
    assert capsys.readouterr().out == ""
    run = tmp_path / "run"
    jobs = read_jobs(RunPaths(run))
    arrays = [j for j in jobs if j["kind"] == "array"]
    assert result.job_ids == {"arrays": [j["job_id"] for j in arrays],
                              "gather": next(j["job_id"] for j in jobs if j["kind"] == "gather")}
    assert len(repr(result).splitlines()) == 1 and result.ok
    assert [(j["array"], j["offset"]) for j in arrays] == [("0-4", 0), ("0-4", 5), ("0-1", 10)]
    gather = [j for j in jobs if j["kind"] == "gather"]
    assert len(gather) == 1 and gather[0]["depends_on"] == [j["job_id"] for j in arrays]
    assert "afterany:" in gather[0]["command"][2]
    wait_jobs([j["job_id"] for j in jobs])

    cfg = load_config(cfg_path)
    manifest = read_manifest(RunPaths(run).manifest)
    assert manifest.n_tasks == 12
    for j in arrays:
        states = job_states(j["job_id"])
        assert len(states) == len(j["tasks"]) and all(s == ("COMPLETED", "0:0") for s in states.values()), states
        for index, task in enumerate(j["tasks"]):
            log = Path(j["logs"]) / f"{j['job_id']}_{index}.out"
            assert Path(j["logs"]).parent == RunPaths(run).slurm_logs_dir
            assert f"task{task:05d}: end: 2 done" in log.read_text()
    assert job_states(gather[0]["job_id"])[gather[0]["job_id"]] == ("COMPLETED", "0:0")
    records = {row.obsid.text: read_record(RunPaths(run), row.obsid.text) for row in manifest.rows}
    assert all(r is not None and r.state == "done" and r.config_hash == cfg.hash() for r in records.values())
    # each ObsID processed once, by the element whose index + offset is its task
    by_job = {j["job_id"]: j["offset"] for j in arrays}
    for row in manifest.rows:
        job, index = records[row.obsid.text].slurm_job.split("_")
        assert int(index) + by_job[job] == row.task
    assert (run / "merged.lc").is_file()
    assert len([p for p in RunPaths(run).task_log_files() if p.name.startswith("task")]) == 12

    capsys.readouterr()
    assert main(["status", str(cfg_path), "--scheduler"]) == 0
    assert "nothing of this run in the queue" in capsys.readouterr().out
    assert main(["rerun", str(cfg_path)]) == 0
    assert "nothing to rerun" in capsys.readouterr().out


@pytest.mark.slurm
def test_live_cancelled_elements_are_rerun(slurm_cluster, sim_archive, tmp_path, capsys):
    # 24 ObsIDs, 3 per task: 8 tasks = arrays 0-4 (offset 0) and 0-2 (offset 5); throttle 1 keeps elements pending
    cfg_path = write_config(tmp_path, sim_archive, tasks={"obs_per_task": 3}, slurm={"throttle": 1})
    assert main(["submit", str(cfg_path)]) == 0
    run = tmp_path / "run"
    first, second = run_ids(run, ("array",))
    for element in (f"{first}_2", f"{second}_1"):  # tasks 2 and 6
        assert slurm_cmd("scancel", element).returncode == 0
    wait_jobs(run_ids(run, ("array", "gather")))
    # a pending element cancelled before it started leaves no job record at all
    assert job_states(first).get(f"{first}_2", ("CANCELLED",))[0] == "CANCELLED"

    cfg = load_config(cfg_path)
    manifest = read_manifest(RunPaths(run).manifest)
    summary = RunSummary.collect(manifest, RunPaths(run), cfg.hash())
    assert {s.task for s in summary.with_state("missing")} == {2, 6}
    assert len(summary.with_state("missing")) == 6
    capsys.readouterr()
    assert main(["status", str(cfg_path)]) == 1
    assert "6 missing" in capsys.readouterr().out

    assert main(["rerun", str(cfg_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rerun 2 task(s): 2, 6" in out
    assert "--array=2%1 --export=ALL,RXTE_HPC_TASK_OFFSET=0" in out
    assert "--array=1%1 --export=ALL,RXTE_HPC_TASK_OFFSET=5" in out
    assert len(read_jobs(RunPaths(run))) == 3  # the dry run submitted nothing

    (run / "merged.lc").unlink(missing_ok=True)
    assert main(["rerun", str(cfg_path)]) == 0
    wait_jobs(run_ids(run, ("rerun", "rerun-gather")))
    summary = RunSummary.collect(manifest, RunPaths(run), cfg.hash())
    assert summary.complete
    assert (run / "merged.lc").is_file()
    reruns = [j for j in read_jobs(RunPaths(run)) if j["kind"] == "rerun"]
    assert sorted(t for j in reruns for t in j["tasks"]) == [2, 6]


@pytest.mark.slurm
def test_live_signal_before_time_limit_records_interrupted(slurm_cluster, sim_archive, tmp_path, capsys, monkeypatch):
    # Two ObsIDs, one task, through the HEASoft stand-in made slow: the element gets the
    # USR1 that `--signal=B:USR1@N` sends before the limit, while an ObsID is in flight.
    obsid_dirs = sorted(sim_archive.glob("AO*/P*/*-*-*-*"), key=lambda p: p.name)[:2]
    table = tmp_path / "obsids.csv"
    table.write_text("obsid,cycle\n" + "".join(f"{p.name},{p.parent.parent.name[2:]}\n" for p in obsid_dirs))
    cfg_path = write_config(
        tmp_path,
        sim_archive,
        source={"kind": "table", "path": str(table)},
        extract={"backend": "heasoft", "chmin": 5, "chmax": 10},
        slurm={"time": "00:01:00", "signal_s": 10},
    )
    monkeypatch.setenv("HEADAS", str(STANDIN))  # sbatch exports the submitting environment
    monkeypatch.setenv("RXTE_STANDIN_SLEEP", "3")
    assert main(["submit", str(cfg_path)]) == 0
    run = tmp_path / "run"
    (array,) = run_ids(run, ("array",))
    manifest = read_manifest(RunPaths(run).manifest)
    first = manifest.rows_for_task(0)[0].obsid.text
    deadline = time.monotonic() + 60
    while (rec := read_record(RunPaths(run), first)) is None or rec.state != "running":
        assert time.monotonic() < deadline, "the element never started its first ObsID"
        time.sleep(0.05)
    assert slurm_cmd("scancel", "--signal=USR1", "--batch", f"{array}_0").returncode == 0
    wait_jobs(run_ids(run, ("array", "gather")))

    rec = read_record(RunPaths(run), first)
    assert rec is not None and rec.state == "interrupted" and rec.error_kind == "site", rec
    assert rec.slurm_job == f"{array}_0"
    assert job_states(array)[f"{array}_0"] == ("FAILED", "138:0")
    assert not [p for p in (tmp_path / "scratch").iterdir() if p.name.startswith("rxte-hpc")], "scratch left behind"

    capsys.readouterr()
    assert main(["rerun", str(cfg_path), "--dry-run"]) == 0
    assert "rerun 1 task(s): 0" in capsys.readouterr().out
    monkeypatch.delenv("RXTE_STANDIN_SLEEP")
    assert main(["rerun", str(cfg_path)]) == 0
    wait_jobs(run_ids(run, ("rerun", "rerun-gather")))
    cfg = load_config(cfg_path)
    assert RunSummary.collect(manifest, RunPaths(run), cfg.hash()).complete
    assert read_record(RunPaths(run), first).state == "done"


@pytest.mark.slurm
@pytest.mark.mpi
def test_live_submit_mpi_one_allocation(slurm_cluster, sim_archive, tmp_path):
    pytest.importorskip("mpi4py")
    cfg_path = write_config(tmp_path, sim_archive, slurm={"mpi_tasks": 2})
    assert main(["submit", str(cfg_path), "--mpi"]) == 0
    run = tmp_path / "run"
    (job,) = run_ids(run, ("mpi",))
    wait_jobs([job])
    assert job_states(job)[job] == ("COMPLETED", "0:0"), (run / "slurm" / "logs" / f"mpi_{job}.out").read_text()
    manifest = read_manifest(RunPaths(run).manifest)
    records = [read_record(RunPaths(run), row.obsid.text) for row in manifest.rows]
    assert all(r is not None and r.state == "done" for r in records)
    assert {r.rank for r in records} == {0, 1}  # srun --mpi=pmi2 gave one world of two ranks
    assert (run / "merged.lc").is_file()


def _record_many(run_dir: str, start: int) -> None:
    from rxte_hpc.run.slurm.submit import Submission, record_submission

    for i in range(start, start + 10):
        record_submission(RunPaths(Path(run_dir)), Submission("array", str(i), "s", ("sbatch",), "now", "0-1", 0))


def test_concurrent_submissions_are_all_recorded(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), 100 * k)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = sorted(int(s["job_id"]) for s in read_jobs(RunPaths(tmp_path)))
    assert ids == sorted(100 * k + i for k in range(6) for i in range(10))


# ------------------------------------------------------------------ scale (pure, then live)


def test_10000_tasks_with_max_array_size_1001_submit_as_capped_chunks(tmp_path, monkeypatch, capsys):
    from rxte_hpc.run.slurm import submit as submit_mod

    cfg = config_from_mapping(
        {"run_dir": str(tmp_path / "run"), "slurm": {"setup": [], "throttle": 50}}, tmp_path / "c.yaml"
    )
    monkeypatch.setattr(submit_mod, "query_limits", lambda: submit_mod.Limits(1001, 10000, "from scontrol"))
    from rxte_hpc.core.manifest import Observation, build_manifest
    from rxte_hpc.core.obsid import ObsID

    obs = [Observation(ObsID(f"{10000 + i // 100:05d}-01-{i % 100:02d}-00"), 1, exposure_s=1.0) for i in range(10_000)]
    monkeypatch.setattr(submit_mod, "_manifest_for_submit", lambda config, dry_run: build_manifest(obs, 1, {}))
    result = submit_mod.submit(cfg, dry_run=True)
    assert result.dry_run and result.exit_code == 0 and result.job_ids == {"arrays": [None] * 10, "gather": None}
    out = "\n".join(result.lines())
    assert capsys.readouterr() == ("", "")  # the API prints nothing
    calls = [line for line in out.splitlines() if line.startswith("sbatch --parsable --array=")]
    assert len(calls) == 10
    covered = []
    for line in calls:
        spec = re.search(r"--array=(\S+)%50 ", line).group(1)
        offset = int(re.search(r"RXTE_HPC_TASK_OFFSET=(\d+)", line).group(1))
        lo, hi = (int(x) for x in spec.split("-"))
        assert hi < 1001 and hi - lo + 1 <= 1000  # MaxArraySize caps the index; the log folder <= 1,000 files
        logs = re.search(r"--output=(\S+)/%A_%a\.out", line).group(1)
        assert Path(logs).parent == RunPaths(cfg.run_dir).slurm_logs_dir
        covered += [offset + i for i in range(lo, hi + 1)]
    assert sorted(covered) == list(range(10_000))  # every task exactly once
    assert len({re.search(r"--output=(\S+)", line).group(1) for line in calls}) == 10  # one log folder per array
    assert "throttle 50 applies per array: up to 500 elements of 10 arrays may run at once" in out
    assert "MaxJobCount is 10000" in out and "MaxSubmitJobs" in out


def test_sparse_rerun_chunks_across_many_arrays_are_capped():
    from rxte_hpc.run.slurm.submit import cap_chunks

    tasks = list(range(0, 10_000, 3)) + [9_999]
    chunks = cap_chunks(sparse_chunks(tasks, 1001))
    assert sorted(t for c in chunks for t in c.tasks) == sorted(set(tasks))
    assert all(max(c.indices) < 1001 and len(c.indices) <= 1000 for c in chunks)
    dense = cap_chunks(sparse_chunks(range(2002), 1001))
    assert [len(c.indices) for c in dense] == [1000, 1, 1000, 1] and {c.offset for c in dense} == {0, 1001}


def test_scheduler_report_names_stale_running_and_elements_without_records(tmp_path, monkeypatch):
    from rxte_hpc.core.manifest import Observation, build_manifest
    from rxte_hpc.core.obsid import ObsID
    from rxte_hpc.core.status import StatusRecord, write_record
    from rxte_hpc.core.statusreport import StatusReport, format_status
    from rxte_hpc.run.slurm import queue
    from rxte_hpc.run.slurm.submit import Submission, record_submission

    cfg = config_from_mapping({"run_dir": str(tmp_path / "run"), "slurm": {"setup": []}}, tmp_path / "c.yaml")
    paths = RunPaths(cfg.run_dir)
    obs = [Observation(ObsID(f"10000-01-{i:02d}-00"), 1, exposure_s=1.0) for i in range(6)]
    manifest = build_manifest(obs, 2, {})  # 3 tasks
    logs = paths.slurm_array_logs("array-x-000")
    logs.mkdir(parents=True)
    record_submission(paths, Submission("array", "700", "s", ("sbatch",), "now", "0-2", 0, (0, 1, 2), logs=str(logs)))
    rows = {t: manifest.rows_for_task(t) for t in range(3)}
    for row in rows[0]:  # task 0: one ObsID left `running` by a worker that died; element 700_0 has ended
        write_record(paths, StatusRecord(row.obsid.text, 0, "running", "stdprod", cfg.hash(), "t0", None, None,
                                         "node1", slurm_job="700_0"))
    for row in rows[2]:  # task 2 still running in the queue: its running records are not stale
        write_record(paths, StatusRecord(row.obsid.text, 2, "running", "stdprod", cfg.hash(), "t0", None, None,
                                         "node1", slurm_job="700_2"))
    (logs / "700_1.out").write_text("start\nline 2\n/bin/bash: module: command not found\n")
    monkeypatch.setattr(queue, "_squeue", lambda ids: [("700_2", "RUNNING")])
    summary = RunSummary.collect(manifest, paths, cfg.hash())
    info = queue.scheduler_report(cfg, summary)
    assert sorted(info["stale_running"]) == sorted(r.obsid.text for r in rows[0])
    (ended,) = info["ended_without_records"]
    assert ended["task"] == 1 and ended["element"] == "700_1" and ended["missing"] == 2
    assert ended["tail"][-1] == "/bin/bash: module: command not found"
    text = format_status(StatusReport.build(summary, paths.root, manifest.n_tasks, scheduler=info))
    assert "2 stale 'running' record(s)" in text and "module: command not found" in text
    # a pending element that never started has no log: said so, not a traceback
    (logs / "700_1.out").unlink()
    assert "never started" in queue.scheduler_report(cfg, summary)["ended_without_records"][0]["tail"][0]


@pytest.mark.slurm
def test_live_sparse_rerun_across_arrays_and_failed_setup_shows_log_tail(slurm_cluster, sim_archive, tmp_path, capsys):
    from rxte_hpc.core.statusreport import StatusReport, format_status
    from rxte_hpc.run.slurm.queue import scheduler_report

    # 24 ObsIDs one per task: 24 tasks = 5 arrays at MaxArraySize 5; a setup line fails in every element
    cfg_path = write_config(tmp_path, sim_archive, tasks={"obs_per_task": 1},
                            slurm={"setup": ["echo 'setup: no such module' >&2; false"]})
    assert main(["submit", str(cfg_path)]) == 0
    run = tmp_path / "run"
    wait_jobs(run_ids(run, ("array", "gather")))
    cfg = load_config(cfg_path)
    manifest = read_manifest(RunPaths(run).manifest)
    summary = RunSummary.collect(manifest, RunPaths(run), cfg.hash())
    assert summary.counts()["missing"] == 24
    info = scheduler_report(cfg, summary)
    assert len(info["ended_without_records"]) == 24
    assert any("setup: no such module" in line for line in info["ended_without_records"][0]["tail"])
    assert "setup: no such module" in format_status(StatusReport.build(summary, run, manifest.n_tasks, scheduler=info))

    # a fixed config: rerun of sparse tasks lands in 3 of the 5 arrays' index ranges
    raw = yaml.safe_load(cfg_path.read_text())
    raw["slurm"]["setup"] = []
    cfg_path.write_text(yaml.safe_dump(raw))
    for task in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 19, 20, 21, 23):
        assert main(["work", str(cfg_path), "--task", str(task)]) == 0
    capsys.readouterr()
    assert main(["rerun", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "rerun 3 task(s): 12, 18, 22" in out and "as 3 array(s)" in out
    reruns = [j for j in read_jobs(RunPaths(run)) if j["kind"] == "rerun"]
    assert sorted((j["offset"], j["array"]) for j in reruns) == [(10, "2"), (15, "3"), (20, "2")]
    wait_jobs(run_ids(run, ("rerun", "rerun-gather")))
    assert RunSummary.collect(manifest, RunPaths(run), cfg.hash()).complete
    assert (run / "merged.lc").is_file()


def test_sparse_index_lists_stay_under_what_sbatch_accepts():
    """sbatch 22.05 refuses an --array list of ~4,100 characters (measured); a sparse rerun is cut below that."""
    import random

    from rxte_hpc.run.slurm.submit import MAX_ARRAY_SPEC, cap_chunks

    rng = random.Random(3)
    for trial in range(30):
        tasks = sorted(rng.sample(range(100_000), rng.choice([1, 50, 700, 1800, 5000])))
        if trial % 3 == 0:  # runs as well as singletons
            tasks = sorted(set(tasks) | set(range(500, 500 + rng.randrange(3000))))
        chunks = cap_chunks(sparse_chunks(tasks, 100_001))
        assert sorted(t for c in chunks for t in c.tasks) == tasks
        for c in chunks:
            assert len(c.spec()) <= MAX_ARRAY_SPEC and len(c.indices) <= 1000
        # greedy: two consecutive chunks of one offset could not have been one
        for a, b in zip(chunks, chunks[1:]):
            if a.offset == b.offset:
                merged = a.indices + b.indices[:1]
                assert len(merged) > 1000 or len(compress_indices(merged)) > MAX_ARRAY_SPEC


def test_rerun_and_submit_dry_run_write_nothing_at_all(tmp_path, monkeypatch, capsys):
    """--dry-run writes nothing anywhere: not even the status index or the manifest's checked copy."""
    from rxte_hpc.core.manifest import Observation, build_manifest
    from rxte_hpc.core.obsid import ObsID
    from rxte_hpc.core.status import StatusRecord, write_record
    from rxte_hpc.run.slurm import submit as submit_mod

    cfg = config_from_mapping({"run_dir": str(tmp_path / "run"), "slurm": {"setup": []}}, tmp_path / "c.yaml")
    paths = RunPaths(cfg.run_dir)
    manifest = build_manifest([Observation(ObsID(f"10000-01-{i:02d}-00"), 1, exposure_s=1.0) for i in range(20)], 2, {})
    manifest.write(paths.manifest)
    for row in manifest.rows[:15]:
        write_record(paths, StatusRecord(row.obsid.text, row.task, "done", "stdprod", cfg.hash(), "t0", "t1", 1.0, "h"))
        paths.lc(row.obsid).parent.mkdir(parents=True, exist_ok=True)
        paths.lc(row.obsid).write_bytes(b"lc")
    lost = sorted({row.task for row in manifest.rows[15:]})
    past = time.time() - 60
    for p in [paths.manifest, *paths.status_files(), *paths.lc_files()]:
        os.utime(p, (past, past))
        os.utime(p.parent, (past, past))

    def snapshot():
        return sorted((str(p), p.stat().st_mtime_ns) for p in paths.root.rglob("*"))

    def no_slurm():
        raise SlurmUnreachable("no controller here")

    monkeypatch.setattr(submit_mod, "query_limits", no_slurm)
    before = snapshot()
    rerun = submit_mod.rerun(cfg, dry_run=True)
    assert submit_mod.submit(cfg, dry_run=True).dry_run
    assert f"rerun {len(lost)} task(s): {', '.join(map(str, lost))}" in rerun.lines()
    assert snapshot() == before
    RunSummary.collect(read_manifest(paths.manifest), paths, cfg.hash())  # a real reader does write its caches
    assert paths.status_index.is_file() and paths.manifest_cache.is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_live_demo_config_as_shipped_gives_its_merged_light_curve(slurm_cluster, tmp_path, capsys):
    """configs/demo.yaml byte for byte (simulated archive, native backend, /dev/shm scratch, default slurm: block)."""
    shipped = REPO / "configs" / "demo.yaml"
    cfg_path = tmp_path / "configs" / "demo.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_bytes(shipped.read_bytes())
    run = tmp_path / "runs" / "demo"  # run_dir: ../runs/demo, relative to the config's folder
    assert main(["submit", str(cfg_path)]) == 0
    jobs = read_jobs(RunPaths(run))
    wait_jobs([j["job_id"] for j in jobs], timeout=600)
    for j in jobs:
        assert all(s == ("COMPLETED", "0:0") for s in job_states(j["job_id"]).values()), (j, job_states(j["job_id"]))
    manifest = read_manifest(RunPaths(run).manifest)
    assert len(manifest.rows) == 200
    assert all(read_record(RunPaths(run), r.obsid.text).state == "done" for r in manifest.rows)
    assert (run / "merged.lc").is_file() and (run / "merged.png").is_file()
    capsys.readouterr()
    assert main(["status", str(cfg_path)]) == 0


# ------------------------------------------------------------------ slurm.extra: owned options and their abbreviations


@pytest.mark.parametrize("opt, owned", [
    ("--outp=/tmp/x.out", "output"), ("--arr=1-3", "array"), ("--exp=ALL", "export"), ("--chd=/tmp", "chdir"),
    ("--sig=B:USR1@10", "signal"), ("--export-f=/dev/null", "export-file"), ("--job=x", "job-name"),
    ("--dep=afterok:1", "dependency"), ("--wait", "wait"), ("--output=/x", "output"),
])
def test_extra_refuses_owned_options_and_their_abbreviations(opt, owned):
    with pytest.raises(ConfigError, match=re.escape("slurm.extra[0]") + f".*--{re.escape(owned)}.*rxte-hpc itself"):
        validate_slurm(_config({"extra": [opt]}))


@pytest.mark.parametrize("opt", ["--qos=normal", "--time-min=10", "--exclusive", "--constraint=haswell", "--mem-per-cpu=2G",
                                 "--nodes=1", "--exclude=n01", "--gres=gpu:1"])
def test_extra_accepts_options_rxte_hpc_does_not_set(opt):
    validate_slurm(_config({"extra": [opt]}))


@pytest.mark.slurm
def test_sbatch_itself_takes_the_abbreviations_that_are_refused(slurm_cluster, tmp_path):
    """The oracle for the prefix rule is sbatch's own getopt: each abbreviation it accepts is one we refuse."""
    for opt, owned in [(f"--outp={tmp_path}/x.out", "output"), ("--arr=1-2", "array"), (f"--chd={tmp_path}", "chdir"),
                       ("--sig=B:USR1@10", "signal"), ("--export-f=/dev/null", "export-file")]:
        proc = slurm_cmd("sbatch", "--test-only", opt, "--wrap=true")  # --test-only: validated, never queued
        assert proc.returncode == 0, (opt, proc.stderr)
        with pytest.raises(ConfigError, match=f"--{owned}"):
            validate_slurm(_config({"extra": [opt]}))


# ------------------------------------------------------------------ whose problem a Slurm failure is


def test_slurm_failures_are_site_or_usage_by_what_slurm_said():
    down = slurm_failure("sbatch", "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                                   "(connect failure)")
    assert isinstance(down, SlurmUnreachable) and down.exit_code == 1 and "did not answer" in str(down)
    refused = slurm_failure("sbatch", "sbatch: error: invalid partition specified: nopart\nsbatch: error: Batch job "
                                      "submission failed: Invalid partition name specified")
    assert isinstance(refused, SlurmRefused) and refused.exit_code == 2 and "invalid partition" in str(refused)


def _dead_controller_conf(tmp_path: Path) -> Path:
    """A copy of the live slurm.conf whose controller port nobody listens on: Slurm's clients fail to connect."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lines = [line for line in Path("/etc/slurm/slurm.conf").read_text().splitlines()
             if not line.startswith("SlurmctldPort=")]
    conf = tmp_path / "slurm.conf"
    conf.write_text("\n".join([*lines, f"SlurmctldPort={port}"]) + "\n")
    return conf


@pytest.mark.slurm
def test_live_controller_that_does_not_answer_is_a_site_error_and_a_bad_partition_a_usage_error(
        slurm_cluster, sim_archive, tmp_path, monkeypatch, capsys):
    cfg_path = write_config(tmp_path, sim_archive, tasks={"obs_per_task": 12})
    monkeypatch.setenv("SLURM_CONF", str(_dead_controller_conf(tmp_path)))
    assert main(["submit", str(cfg_path)]) == 1  # real scontrol, real connect failure (Slurm retries ~9 s)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rxte-hpc: error:")]
    assert len(errors) == 1 and "the Slurm controller did not answer" in errors[0] and "Traceback" not in err
    assert read_jobs(RunPaths(tmp_path / "run")) == []
    monkeypatch.delenv("SLURM_CONF")
    bad = write_config(tmp_path, sim_archive, tasks={"obs_per_task": 12}, slurm={"partition": "nopart"})
    assert main(["submit", str(bad)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rxte-hpc: error:")]
    assert len(errors) == 1 and "invalid partition" in errors[0].lower() and "Traceback" not in err
    assert read_jobs(RunPaths(tmp_path / "run")) == []


# ------------------------------------------------------------------ submissions are snapshots


@pytest.mark.slurm
def test_live_submission_runs_its_snapshot_not_the_edited_config(slurm_cluster, sim_archive, tmp_path, capsys):
    cfg_path = write_config(tmp_path, sim_archive, tasks={"obs_per_task": 12}, slurm={"throttle": 1})
    original = load_config(cfg_path)
    assert main(["submit", str(cfg_path)]) == 0
    run = tmp_path / "run"
    # the science changes while element 1 waits behind the throttle
    raw = yaml.safe_load(cfg_path.read_text())
    raw["extract"]["stdprod_band"] = "b"
    cfg_path.write_text(yaml.safe_dump(raw))
    out = capsys.readouterr().out
    jobs = read_jobs(RunPaths(run))
    snap = Path(jobs[0]["snapshot"])
    assert snap.parent == RunPaths(run).slurm_dir and {j["snapshot"] for j in jobs} == {str(snap)}
    assert f"submitted gather {jobs[-1]['job_id']} after {jobs[0]['job_id']} (afterany)" in out
    assert f"work {snap / 'config.yaml'} --slurm" in (snap / "array.sbatch").read_text()
    assert f"gather {snap / 'config.yaml'}" in (snap / "gather.sbatch").read_text()
    # the copy is resolved: loaded from another folder it is the submitted config
    moved = tmp_path / "elsewhere" / "copy.yaml"
    moved.parent.mkdir()
    moved.write_text((snap / "config.yaml").read_text())
    assert dataclasses.replace(load_config(moved), path=original.path) == original
    wait_jobs([j["job_id"] for j in jobs])

    manifest = read_manifest(RunPaths(run).manifest)
    records = [read_record(RunPaths(run), r.obsid.text) for r in manifest.rows]
    assert all(r is not None and r.state in ("done", "no_data") for r in records)
    assert {r.config_hash for r in records} == {original.hash()}  # every element ran the submitted band
    from astropy.io import fits
    with fits.open(run / "merged.lc") as hdul:
        assert hdul[0].header["CONFHASH"] == original.hash()

    # the edited config is another plan's science: refused, both named
    assert main(["status", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert original.hash() in err and load_config(cfg_path).hash() in err and "plan" in err and "--force" in err
    # a change that is not science: status says the queued jobs run another config, and which keys differ
    raw["extract"]["stdprod_band"] = "a"
    raw["slurm"]["mem"] = "300M"
    raw["gather"] = {"plot": "other.png"}
    cfg_path.write_text(yaml.safe_dump(raw))
    assert main(["status", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert f"differs from the submitted one ({snap / 'config.yaml'}) in slurm.mem, gather.plot" in out
