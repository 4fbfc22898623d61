"""Calling one HEASoft task safely: explicit environment, own session, timeout, failure detection.

HEASoft's Perl tasks exit 0 when they fail and only print `Task <name> <ver>
terminating with status -1` (docs/science.md#heasoft-in-batch-pfiles-prompts-exit-status), so success here means: exit
status 0, no such line with a non-zero status, and the expected outputs exist.
Every task call of the heasoft and native backends goes through `TaskCaller`
(the `exec` runner) or its heasoftpy subclass in `hsp_runner` (the `heasoftpy`
runner), so both runners share these checks, the timeout that kills a task's
whole process tree, and the check of parameter names against the task's
`.par` file (heasoftpy silently drops a keyword its task does not have).
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence, TextIO

from rxte_hpc.core.procs import die_with_parent
from rxte_hpc.core.errors import DataError, SiteError, UsageError

log = logging.getLogger(__name__)

#: The tasks of the seed's chain; HEADAS must have all of them.
TASKS = ("pcaprepobsid", "maketime", "pcaextlc2")
#: Seconds one task may take before it counts as hung (a site problem, retried by `rerun`).
TIMEOUTS_S = {"pcaprepobsid": 3600.0, "maketime": 600.0, "pcaextlc2": 1800.0}
#: Every parameter this project passes to each task; each must be in the task's .par (checked before any task).
TASK_PARAMS = {
    "pcaprepobsid": ("indir", "outdir", "ra", "dec"),
    "maketime": ("infile", "outfile", "expr", "name", "value", "time", "compact", "clobber"),
    "pcaextlc2": ("src_infile", "bkg_infile", "outfile", "gtiandfile", "pculist", "layerlist", "binsz",
                  "chmin", "chmax", "clobber"),
}
#: Signals that end a task from outside (a crash such as SIGSEGV stays a data failure: the tool failed on this input).
_SITE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU})
_STATUS_RE = re.compile(r"terminating with status\s+(-?\d+)", re.IGNORECASE)
_ERROR_RE = re.compile(r"error|unable|cannot|could not|failed", re.IGNORECASE)


@dataclass(frozen=True)
class ToolRun:
    """What one task call printed and returned, kept for the ObsID's log and error messages."""

    task: str
    argv: tuple[str, ...]
    returncode: int
    output: str

    def failure(self) -> str | None:
        """Why the call failed (status line or last error line), or None when it looks successful."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        bad_status = [line for line in lines if (m := _STATUS_RE.search(line)) and int(m.group(1)) != 0]
        if self.returncode == 0 and not bad_status:
            return None
        errors = [line for line in lines if _ERROR_RE.search(line) and not _STATUS_RE.search(line)]
        parts = [errors[-1]] if errors else []
        parts += bad_status[-1:] or [f"exit status {self.returncode}"]
        return "; ".join(parts)


def _param(name: str, value: object) -> str:
    """One `par=value` argv item; values go to the task verbatim, so refuse what would change its meaning."""
    text = "yes" if value is True else "no" if value is False else str(value)
    if "\n" in text or "\0" in text or "\r" in text:
        raise UsageError(f"HEASoft parameter {name}={text!r} contains a control character")
    return f"{name}={text}"


def run_tool(
    task: str,
    params: Sequence[tuple[str, object]],
    *,
    headas: Path,
    env: Mapping[str, str],
    cwd: Path,
    tool_log: TextIO,
    timeout: float | None = None,
) -> ToolRun:
    """Run one HEASoft task as `$HEADAS/bin/<task> par=value ...` and return what happened.

    The one place a task process starts, for both runners (the heasoftpy
    runner's task objects end here too, from their `exec_task`): the explicit
    environment `env` (the ObsID's PFILES, no prompting), stdin from /dev/null,
    `cwd` as working directory, every parameter its own argv item (no shell).
    The task gets its own session so that on a timeout or a signal the whole
    process tree (Perl task, ftools it started) is killed, not only the top.
    Success is judged by the caller (`ToolRun.failure`, expected outputs).
    """
    argv = [str(Path(headas) / "bin" / task), *(_param(k, v) for k, v in params)]
    tool_log.write(f"$ {' '.join(argv)}\n")
    tool_log.flush()
    limit = TIMEOUTS_S.get(task, 1800.0) if timeout is None else timeout
    log.debug("running %s in %s (PFILES=%s)", task, cwd, env.get("PFILES"))
    try:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a worker killed outright (OOM, SIGKILL) takes its task with it
        )
    except OSError as exc:
        raise DataError(f"{task}: cannot start {argv[0]} ({exc.strerror or exc})") from exc
    try:
        raw, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        raw, _ = proc.communicate()
        tool_log.write(raw.decode("iso-8859-15", errors="replace"))
        raise SiteError(f"{task} did not finish within {limit:g} s (killed)") from None
    except BaseException:  # Interrupted by a signal, KeyboardInterrupt: leave no orphan behind
        _kill_tree(proc)
        proc.wait()
        raise
    output = raw.decode("iso-8859-15", errors="replace")
    tool_log.write(output)
    if output and not output.endswith("\n"):
        tool_log.write("\n")
    tool_log.write(f"# {task}: exit status {proc.returncode}\n")
    tool_log.flush()
    if proc.returncode < 0 and -proc.returncode in _SITE_SIGNALS:
        # killed from outside (OOM killer, an administrator, a node going down): the machine, not the data
        name = signal.Signals(-proc.returncode).name
        raise SiteError(f"{task} was killed by {name}; safe to rerun")
    return ToolRun(task, tuple(argv), proc.returncode, output)


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def par_names(par_file: Path) -> tuple[str, ...]:
    """The parameter names of a HEASoft .par file (first field of each non-comment line)."""
    return _par_names(str(par_file))


@lru_cache(maxsize=32)
def _par_names(par_file: str) -> tuple[str, ...]:
    try:
        text = Path(par_file).read_text(errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read HEASoft parameter file {par_file} ({exc.strerror or exc})") from exc
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "," in line:
            names.append(line.split(",", 1)[0].strip())
    return tuple(names)


def unknown_params(headas: Path, task: str, names: Sequence[str]) -> list[str]:
    """Which of `names` the task's $HEADAS/syspfiles/<task>.par does not have (case-insensitive, like PIL)."""
    known = {n.lower() for n in par_names(Path(headas) / "syspfiles" / f"{task}.par")}
    return [n for n in names if n.lower() not in known]


def check_par_names(headas: Path) -> None:
    """Every parameter this project passes exists in its task's .par; UsageError naming task and names if not."""
    for task, names in TASK_PARAMS.items():
        par = Path(headas) / "syspfiles" / f"{task}.par"
        if not par.is_file():
            raise UsageError(f"extract.backend heasoft: HEADAS={headas} has no syspfiles/{task}.par")
        missing = unknown_params(headas, task, names)
        if missing:
            raise UsageError(
                f"extract.backend heasoft: {par} has no parameter {', '.join(missing)}, which this project passes "
                f"to {task} (a HEASoft too old or too new for it?)"
            )


def find_headas(environ: Mapping[str, str]) -> Path:
    """$HEADAS with the three tasks in bin/ and their .par files naming every parameter passed; UsageError if not."""
    value = environ.get("HEADAS", "").strip()
    if not value:
        raise UsageError(
            "extract.backend heasoft needs HEASoft: HEADAS is not set "
            "(initialise HEASoft, e.g. `module load heasoft` or source $HEADAS/headas-init.sh)"
        )
    headas = Path(value)
    missing = [t for t in TASKS if not os.access(headas / "bin" / t, os.X_OK)]
    if missing:
        raise UsageError(
            f"extract.backend heasoft: HEADAS={value} has no executable "
            + ", ".join(f"$HEADAS/bin/{t}" for t in missing)
            + " (is HEADAS the HEASoft installation with the XTE ftools?)"
        )
    if not (headas / "syspfiles").is_dir():
        raise UsageError(f"extract.backend heasoft: HEADAS={value} has no syspfiles/ directory of parameter files")
    check_par_names(headas)
    return headas


@dataclass(frozen=True)
class TaskCaller:
    """Runs tasks for one ObsID with one env and cwd, and turns failures into DataError.

    The one way the heasoft and native backends call a task, so both get the
    same checks (parameter names, exit status, status line, expected outputs).
    This class is the `exec` runner; `hsp_runner.HspCaller` overrides `run`
    to go through heasoftpy's task objects. `timeouts` overrides TIMEOUTS_S.
    """

    headas: Path
    env: Mapping[str, str]
    cwd: Path
    log: TextIO
    timeouts: Mapping[str, float] | None = None

    runner = "exec"

    def timeout(self, task: str) -> float | None:
        return None if self.timeouts is None else self.timeouts.get(task)

    def run(self, task: str, params: Sequence[tuple[str, object]]) -> ToolRun:
        """Start the task and wait for it (timeout, process-tree kill): the runner-specific part."""
        return run_tool(task, params, headas=self.headas, env=self.env, cwd=self.cwd, tool_log=self.log,
                        timeout=self.timeout(task))

    def __call__(self, task: str, params: Sequence[tuple[str, object]], expect: Sequence[Path]) -> ToolRun:
        unknown = unknown_params(self.headas, task, [name for name, _ in params])
        if unknown:
            raise UsageError(f"{task}: no parameter {', '.join(unknown)} in $HEADAS/syspfiles/{task}.par")
        result = self.run(task, params)
        why = result.failure()
        if why is not None:
            raise DataError(f"{task} failed: {why}")
        missing = [p.name for p in expect if not p.is_file()]
        if missing:
            raise DataError(f"{task} reported success but did not write {', '.join(missing)}")
        return result
