"""extract.runner: the heasoftpy runner (heasoftpy 1.5, installed by scripts/test-all.sh) and the exec runner.

heasoftpy is imported at the top, unguarded: scripts/test-all.sh installs it
with HEADAS at the stand-in, and if it cannot be built these tests fail, never
skip. The stand-in can tell which runner called it: heasoftpy runs
`$HEADAS/bin/fhelp` for every task object and writes `<task>.par` into the
user PFILES directory before starting the task (RXTE_STANDIN_RECORD).
"""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import heasoftpy  # noqa: F401  (real heasoftpy; the failure of this import fails the file)
from heasoftkit import ETACAR, FILTER, REPO, STANDIN, extractor, good, obs_window, own_filter_file, records
from heasoftkit import row_json, standin_env, user_pfiles, workspace
from rxte_hpc.core.errors import DataError, SiteError, UsageError
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.scratch import heasoft_env
from rxte_hpc.extract import hsp_runner
from rxte_hpc.extract.hsp_runner import task_calls
from rxte_hpc.sim.simulate import SimArchive
from where import KIT

RUNNERS = ["heasoftpy", "exec"]
TASKS = ("pcaprepobsid", "maketime", "pcaextlc2")


@pytest.fixture(scope="module")
def archive(simulated) -> SimArchive:
    return simulated(8, 7, with_broken=True)


@pytest.fixture
def where(tmp_path, monkeypatch) -> Path:
    """RXTE_STANDIN_RECORD, also in os.environ: heasoftpy starts fhelp with this process's environment."""
    path = tmp_path / "records"
    monkeypatch.setenv("RXTE_STANDIN_RECORD", str(path))
    return path


def _no_heasoftpy(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "heasoftpy", None)
    monkeypatch.setitem(sys.modules, "heasoftpy.core", None)


# ---------------------------------------------------------------------------- which runner


def test_auto_calls_every_task_through_heasoftpy(archive, tmp_path, where):
    row = good(archive)[0]
    pfiles_before = os.environ.get("PFILES")
    ex = extractor(archive.root, tmp_path, env={"RXTE_STANDIN_RECORD": str(where)})
    assert ex.context.config.extract.runner == "auto"
    ex.check_available()
    log = io.StringIO()
    ws = workspace(tmp_path / "a")
    auto = ex.extract(row, ws, log)[0]
    ran = records(where)
    assert [r["task"] for r in ran] == list(TASKS)
    assert {r["task"] for r in records(where, "fhelp")} == set(TASKS)  # heasoftpy made a task object for each
    for r in ran:  # ... and wrote the task's .par with this call's values into the ObsID's PFILES before it ran
        assert r["user_par_at_start"] is not None, r["task"]
        assert r["user_dir_at_start"][-1:] == [f"{r['task']}.par"] or f"{r['task']}.par" in r["user_dir_at_start"]
    maketime = next(r for r in ran if r["task"] == "maketime")
    assert maketime["user_par_at_start"]["expr"] == FILTER and maketime["user_par_at_start"]["outfile"] == "gti.fits"
    assert all(f["pfiles"] == r["pfiles"] for f, r in zip(records(where, "fhelp"), ran))
    assert all(r["stdin"] == "/dev/null" and r["cwd"] == str(ws.work) for r in ran)
    assert log.getvalue().count("# heasoftpy: ") == 3
    assert os.environ.get("PFILES") == pfiles_before  # the ObsID's PFILES was set for its calls only

    shutil.rmtree(where)
    ex_exec = extractor(archive.root, tmp_path, {"runner": "exec"}, env={"RXTE_STANDIN_RECORD": str(where)})
    direct = ex_exec.extract(row, workspace(tmp_path / "e"), io.StringIO())[0]
    assert not records(where, "fhelp") and all(r["user_par_at_start"] is None for r in records(where))
    for name in ("time", "rate", "error", "fracexp"):
        np.testing.assert_array_equal(getattr(auto, name), getattr(direct, name))


def test_without_heasoftpy_auto_uses_exec_and_heasoftpy_is_a_usage_error(archive, tmp_path, where, monkeypatch,
                                                                         capsys):
    _no_heasoftpy(monkeypatch)
    assert hsp_runner.heasoftpy_problem() is not None
    ex = extractor(archive.root, tmp_path, env={"RXTE_STANDIN_RECORD": str(where)})
    ex.check_available()
    lc = ex.extract(good(archive)[1], workspace(tmp_path / "a"), io.StringIO())[0]
    assert lc.n_rows > 0
    assert not records(where, "fhelp") and all(r["user_par_at_start"] is None for r in records(where))

    strict = extractor(archive.root, tmp_path, {"runner": "heasoftpy"})
    with pytest.raises(UsageError, match=r"^extract.runner heasoftpy: heasoftpy does not import"):
        strict.check_available()

    from rxte_hpc import cli

    raw = yaml.safe_load(ETACAR.read_text())
    raw.update(run_dir=str(tmp_path / "run"), archive={"root": "simulated"}, simulate={"n_obs": 2, "seed": 3},
               source={"kind": "archive"}, scratch={"root": str(tmp_path / "shm")})
    raw["extract"] = {**raw.get("extract", {}), "backend": "heasoft", "runner": "heasoftpy"}
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("HEADAS", str(STANDIN))
    shutil.rmtree(where, ignore_errors=True)
    assert cli.main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "extract.runner heasoftpy: heasoftpy does not import" in err and "Traceback" not in err
    assert not records(where) and not list(RunPaths(tmp_path / "run").lc_dir.rglob("*.lc"))


# ---------------------------------------------------------------------------- a new PFILES per ObsID


def _two_obsids(archive, tmp_path, where, runner, shared: Path | None = None) -> list[dict]:
    ex = extractor(archive.root, tmp_path, {"runner": runner}, env={"RXTE_STANDIN_RECORD": str(where)},
                   shared_pfiles=shared)
    ws = workspace(tmp_path / "task")  # one task, one workspace, ObsIDs one after the other (as the worker does)
    for row in good(archive)[2:4]:
        ex.extract(row, ws, io.StringIO())
        ws.fresh_work()
    ran = records(where)
    assert [r["task"] for r in ran] == list(TASKS) * 2
    return ran


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_obsid_gets_a_new_pfiles_directory(archive, tmp_path, where, runner):
    ran = _two_obsids(archive, tmp_path, where, runner)
    first, second = ran[:3], ran[3:]
    assert len({user_pfiles(r) for r in first}) == 1 and len({user_pfiles(r) for r in second}) == 1
    assert user_pfiles(first[0]) != user_pfiles(second[0])
    # the second ObsID starts from nothing the first one learned (fcollect's fname, maketime's, pcaextlc2's)
    expected = ["pcaprepobsid.par"] if runner == "heasoftpy" else []
    assert second[0]["user_dir_at_start"] == expected


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_same_check_sees_learned_values_when_pfiles_is_shared(archive, tmp_path, where, runner):
    """The control: one PFILES directory for both ObsIDs, and the second one starts with the first one's files."""
    ran = _two_obsids(archive, tmp_path, where, runner, shared=tmp_path / "one-pfiles")
    second_start = ran[3]["user_dir_at_start"]
    assert {"fcollect.par", "maketime.par", "pcaextlc2.par"} <= set(second_start)


# ---------------------------------------------------------------------------- prompts, names, timeout


def _calls(runner: str, tmp_path: Path, **extra: str):
    pfiles = tmp_path / "pf"
    pfiles.mkdir(exist_ok=True)
    base = standin_env(pfiles, **extra)
    env = heasoft_env(pfiles, STANDIN, base=base)
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    return env, work


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_missing_parameter_fails_and_never_prompts(archive, tmp_path, where, runner, monkeypatch):
    def no_input(*args):
        raise AssertionError(f"input() reached: {args}")

    monkeypatch.setattr(builtins, "input", no_input)
    monkeypatch.delenv("HEADASPROMPT", raising=False)
    xfl = next((archive.root / "prepared" / good(archive)[0].obsid.text).glob("FP_*.xfl"))
    env, work = _calls(runner, tmp_path, RXTE_STANDIN_RECORD=str(where))
    with task_calls(runner, STANDIN, env, work, io.StringIO()) as call:
        assert call.runner == runner
        with pytest.raises(DataError, match=r"^maketime failed: ERROR: Unable to get parameter 'expr'.*"
                                            r"Task maketime 2\.2a terminating with status -1$"):
            call("maketime", [("infile", str(xfl)), ("outfile", "g.fits")], expect=[work / "g.fits"])
    assert [f["task"] for f in records(where, "fhelp")] == (["maketime"] if runner == "heasoftpy" else [])
    if runner == "heasoftpy":  # set once for the worker, left for its later calls
        assert os.environ["HEADASPROMPT"] == "/dev/null" and os.environ["HEADASNOQUERY"] == ""


@pytest.mark.parametrize("runner", RUNNERS)
def test_parameter_names_are_checked_against_the_par_files(archive, tmp_path, where, runner):
    fake = tmp_path / "headas"
    shutil.copytree(STANDIN, fake)
    par = fake / "syspfiles" / "pcaextlc2.par"
    par.write_text("".join(line for line in par.read_text().splitlines(True) if not line.startswith("layerlist,")))
    ex = extractor(archive.root, tmp_path, {"runner": runner}, env={"HEADAS": str(fake)})
    with pytest.raises(UsageError, match=r"pcaextlc2\.par has no parameter layerlist, which this project passes"):
        ex.check_available()
    env, work = _calls(runner, tmp_path, RXTE_STANDIN_RECORD=str(where))
    with task_calls(runner, STANDIN, env, work, io.StringIO()) as call:
        with pytest.raises(UsageError, match=r"^maketime: no parameter bogus in "):
            call("maketime", [("infile", "x.xfl"), ("bogus", "1")], expect=[])
    assert not records(where)  # refused before the task started


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_hung_task_is_killed_with_its_whole_process_tree(tmp_path, where, runner):
    env, work = _calls(runner, tmp_path, RXTE_STANDIN_SLEEP="60", RXTE_STANDIN_RECORD=str(where))
    start = time.monotonic()
    with task_calls(runner, STANDIN, env, work, io.StringIO(), timeouts={"maketime": 2.0}) as call:
        with pytest.raises(SiteError, match=r"^maketime did not finish within 2 s \(killed\)$"):
            call("maketime", [("infile", "x.xfl"), ("outfile", "g.fits"), ("expr", FILTER)], expect=[])
    assert time.monotonic() - start < 30
    (pid_file,) = where.glob("child-*.pid")
    task_pid, child_pid = int(pid_file.stem.split("-")[1]), int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not (_gone(task_pid) and _gone(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(task_pid) and _gone(child_pid), "the task's child outlived the timeout"


# ---------------------------------------------------------------------------- threads and processes


def test_heasoftpy_refuses_a_second_thread_of_the_process(tmp_path):
    env, work = _calls("heasoftpy", tmp_path)
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with task_calls("heasoftpy", STANDIN, env, work, io.StringIO()):
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(30)
        with pytest.raises(UsageError, match="two threads of one process"):
            with task_calls("heasoftpy", STANDIN, env, work, io.StringIO()):
                pass
        with task_calls("exec", STANDIN, env, work, io.StringIO()):  # the exec runner has no process-wide state
            pass
    finally:
        leave.set()
        holder.join()
    with task_calls("heasoftpy", STANDIN, env, work, io.StringIO()):  # free again once the first thread left
        pass


def _in_processes(archive, tmp_path: Path, shared: bool) -> list[tuple]:
    """Eight ObsIDs at once, one worker process each (heasoftpy runner), started together."""
    go = tmp_path / "go"
    rows = good(archive)
    env = {**os.environ, "HEADAS": str(STANDIN), "RXTE_STANDIN_RACE_S": "1.5",
           "PYTHONPATH": os.pathsep.join([str(KIT), str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for row in rows:
        base = tmp_path / row.obsid.text
        base.mkdir()
        argv = [sys.executable, str(KIT / "heasoftkit.py"), str(archive.root), row_json(row), str(base),
                "heasoftpy", str(go), str(tmp_path / "shared-pfiles") if shared else ""]
        procs.append((row, base, subprocess.Popen(argv, env={**env, "RXTE_STANDIN_RECORD": str(base / "rec")},
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    deadline = time.monotonic() + 240
    while not all((base / "ready").exists() for _, base, _ in procs) and time.monotonic() < deadline:
        assert all(p.poll() is None for _, _, p in procs), [p.stdout.read().decode()[-2000:] for *_, p in procs
                                                              if p.poll() is not None]
        time.sleep(0.05)
    go.write_text("")
    out = []
    for row, base, proc in procs:
        text = proc.communicate(timeout=240)[0].decode()
        assert proc.returncode == 0, text[-2000:]
        out.append((row, base, json.loads((base / "result.json").read_text())))
    return out


def _right(archive, row, result: dict) -> bool:
    if not result["ok"]:
        return False
    start, stop = obs_window(archive.root, row)
    return (own_filter_file(archive.root, row, Path(result["work"])) and result["n_rows"] > 0
            and start <= result["tmin"] and result["tmax"] < stop + 16)


@pytest.mark.slow
def test_heasoftpy_workers_with_their_own_pfiles_keep_obsids_apart(archive, tmp_path):
    results = _in_processes(archive, tmp_path, shared=False)
    wrong = {row.obsid.text: res for row, _, res in results if not _right(archive, row, res)}
    assert not wrong, wrong
    for row, base, _ in results:  # through heasoftpy, which saw the ObsID's own PFILES in os.environ
        fhelp = records(base / "rec", "fhelp")
        assert {f["task"] for f in fhelp} == set(TASKS)
        assert {user_pfiles(f) for f in fhelp} == {user_pfiles(r) for r in records(base / "rec")}
        assert len({user_pfiles(f) for f in fhelp}) == 1
    assert len({float(res["first"]) for _, _, res in results}) == 8


@pytest.mark.slow
def test_heasoftpy_workers_sharing_one_pfiles_swap_filter_files(archive, tmp_path):
    """The control for the test above: the same run with one PFILES directory shows the swap."""
    results = _in_processes(archive, tmp_path, shared=True)
    wrong = [row.obsid.text for row, _, res in results if not _right(archive, row, res)]
    assert wrong, "eight heasoftpy workers sharing one PFILES directory should have collided"
