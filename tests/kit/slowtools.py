"""A HEADAS tree whose pcaprepobsid hangs in a grandchild: for signal and killed-worker tests of real runs.

`rxte-hpc run` with `extract.backend: heasoft, runner: exec` and HEADAS
pointing here starts, per ObsID, `$HEADAS/bin/pcaprepobsid` as a shell whose
child `sleep` is the grandchild a real Perl task's ftools would be. Each
leaves `<markers>/tool-<obsid>` and `<markers>/sleep-<obsid>` holding their
pids (and the first ObsID's name in `<markers>/.first/obsid`). The first
ObsID to start sleeps RXTE_TEST_SLEEP_FIRST seconds, every
later one RXTE_TEST_SLEEP seconds; then the task fails the way real Perl
tasks do (status -1, exit 0), so each ObsID ends `failed` (data).
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from where import REPO, STANDIN

PCAPREPOBSID = """#!/bin/sh
obs=unknown
for a in "$@"; do case "$a" in indir=*) obs=$(basename "${a#indir=}");; esac; done
first=no
s="${RXTE_TEST_SLEEP:-60}"
if mkdir "$RXTE_TEST_MARKERS/.first" 2>/dev/null; then first=yes; s="${RXTE_TEST_SLEEP_FIRST:-60}"; fi
echo "$$" > "$RXTE_TEST_MARKERS/tool-$obs"
sleep "$s" &
echo "$!" > "$RXTE_TEST_MARKERS/sleep-$obs"
if [ $first = yes ]; then
  echo "$obs" > "$RXTE_TEST_MARKERS/.first/obsid.tmp"
  mv "$RXTE_TEST_MARKERS/.first/obsid.tmp" "$RXTE_TEST_MARKERS/.first/obsid"
fi
wait
echo "Task pcaprepobsid 1.0 terminating with status -1"
"""
FAILING = """#!/bin/sh
echo "Task $(basename "$0") 1.0 terminating with status -1"
"""


def make_headas(dest: Path) -> Path:
    """The tree: the stand-in's parameter files, the hanging pcaprepobsid, failing maketime/pcaextlc2."""
    (dest / "bin").mkdir(parents=True)
    shutil.copytree(STANDIN / "syspfiles", dest / "syspfiles")
    for name, text in (("pcaprepobsid", PCAPREPOBSID), ("maketime", FAILING), ("pcaextlc2", FAILING)):
        path = dest / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
    return dest


def write_config(tmp: Path, archive_root: Path, obs_per_task: int = 2) -> Path:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(
        f"run_dir: run\nsource: {{kind: archive}}\narchive: {{root: {archive_root}}}\n"
        f"scratch: {{root: scratch}}\ntasks: {{obs_per_task: {obs_per_task}}}\n"
        "extract: {backend: heasoft, runner: exec, chmin: 5, chmax: 10}\n"
    )
    (tmp / "scratch").mkdir(exist_ok=True)
    return cfg


def env_for(headas: Path, markers: Path, first: float = 60, rest: float = 60) -> dict[str, str]:
    markers.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(HEADAS=str(headas), RXTE_TEST_MARKERS=str(markers), RXTE_TEST_SLEEP_FIRST=str(first),
               RXTE_TEST_SLEEP=str(rest))
    return env


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def tool_pids(markers: Path) -> dict[str, int]:
    """{marker name: pid} for every tool and grandchild started so far."""
    out = {}
    for p in markers.glob("*-*"):
        text = p.read_text().strip()
        if text.isdigit():
            out[p.name] = int(text)
    return out


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_leftovers(markers: Path) -> None:
    """Teardown: whatever a failing test left running."""
    for pid in tool_pids(markers).values():
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

