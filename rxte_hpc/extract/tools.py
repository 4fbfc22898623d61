"""Calling one HEASoft task safely: explicit environment, own session, timeout, failure detection.

HEASoft's Perl tasks exit 0 when they fail and only print `Task <name> <ver>
terminating with status -1` (RXTE-PCA.md Q8), so success here means: exit
status 0, no such line with a non-zero status, and the expected outputs exist.
Every task call of the heasoft and native backends goes through `TaskCaller`.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, TextIO

from rxte_hpc.core.errors import DataError, SiteError, UsageError

log = logging.getLogger(__name__)

#: The tasks of the seed's chain; HEADAS must have all of them.
TASKS = ("pcaprepobsid", "maketime", "pcaextlc2")
#: Seconds one task may take before it counts as hung (a site problem, retried by `rerun`).
TIMEOUTS_S = {"pcaprepobsid": 3600.0, "maketime": 600.0, "pcaextlc2": 1800.0}
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

    heasoftpy is deliberately not used even where it imports: its HSPTask reads
    PFILES from, and writes HEADASNOQUERY/HEADASPROMPT into, the process-wide
    os.environ, and its local_pfiles_context swaps os.environ too (RXTE-PCA.md
    Q8), so under threads one ObsID's call can run with another's PFILES. Its
    task call would also end in the same executable, whose exit status is just
    as unreliable. The plain executable with an explicit env is the one route;
    every caller shares the checks in `ToolRun.failure`.

    The task gets its own session so that on a timeout or a signal the whole
    process tree (Perl task, ftools it started) is killed, not only the top.
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
    return ToolRun(task, tuple(argv), proc.returncode, output)


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def find_headas(environ: Mapping[str, str]) -> Path:
    """$HEADAS with the three tasks in bin/; UsageError naming what is missing."""
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
    return headas


@dataclass(frozen=True)
class TaskCaller:
    """Runs tasks for one ObsID with one env and cwd, and turns failures into DataError.

    The one way the heasoft and native backends call a task, so both get the
    same checks (exit status, status line, expected outputs).
    """

    headas: Path
    env: Mapping[str, str]
    cwd: Path
    log: TextIO

    def __call__(self, task: str, params: Sequence[tuple[str, object]], expect: Sequence[Path]) -> ToolRun:
        result = run_tool(task, params, headas=self.headas, env=self.env, cwd=self.cwd, tool_log=self.log)
        why = result.failure()
        if why is not None:
            raise DataError(f"{task} failed: {why}")
        missing = [p.name for p in expect if not p.is_file()]
        if missing:
            raise DataError(f"{task} reported success but did not write {', '.join(missing)}")
        return result
