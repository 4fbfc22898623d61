"""The two ways of calling HEASoft tasks (`extract.runner`), and the heasoftpy one.

`exec` runs `$HEADAS/bin/<task>` with an explicit environment (tools.TaskCaller).
`heasoftpy` calls the tasks through heasoftpy, the user's package: for each call
a fresh task object (an `HSPTask`, as `heasoftpy.pcaprepobsid(...)` makes)
parses the task's `.par` file, runs `fhelp`, writes the parameters into the
ObsID's user PFILES directory and starts the task; `noprompt=True`, so a
missing parameter never reaches Python's `input()`. `auto` (the default) takes
heasoftpy when it imports, as HEASARC's own RXTE notebooks do, and exec
otherwise.

heasoftpy finds PFILES and HEADAS in the process-wide `os.environ` at call time
and writes HEADASNOQUERY/HEADASPROMPT there (heasoftpy 1.5; docs/science.md#heasoft-in-batch-pfiles-prompts-exit-status), so:
- the ObsID's PFILES is put into os.environ for that ObsID's calls
  (`task_calls`), and restored after;
- only one thread per process may call it: every executor runs one extracting
  thread per worker process, and a second thread entering `task_calls` while
  one is inside is refused (UsageError), never silently let share os.environ;
- the prompt variables are set once per worker process.
heasoftpy's own Popen has no timeout, stdin, cwd or session, and it does not
notice "terminating with status -1" with exit 0. So the task class here
subclasses `HSPTask` and implements `exec_task` (heasoftpy's documented
extension point) with `tools.run_tool`: the same process start as exec (stdin
/dev/null, the ObsID's short working directory, own session, timeout killing
the whole tree), and the same checks afterwards (`TaskCaller.__call__`).
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TextIO

from rxte_hpc.core.errors import DataError, UsageError
from rxte_hpc.extract.tools import TaskCaller, ToolRun, run_tool

log = logging.getLogger(__name__)

#: Held while a thread is inside `task_calls` with the heasoftpy runner (heasoftpy state is process-wide).
_IN_USE = threading.Lock()
_state: dict[str, Any] = {"prompt_vars_set": False, "task_class": None, "announced": None}


def heasoftpy_problem() -> str | None:
    """Why heasoftpy cannot be used here (its import error), or None when it imports."""
    try:
        importlib.import_module("heasoftpy")
    except Exception as exc:  # a broken install raises more than ImportError; auto then falls back to exec
        return f"{type(exc).__name__}: {exc}"
    return None


def resolve_runner(runner: str) -> str:
    """`heasoftpy` or `exec` for `extract.runner`; UsageError when heasoftpy is asked for and does not import."""
    if runner == "exec":
        return "exec"
    problem = heasoftpy_problem()
    if runner == "heasoftpy":
        if problem is not None:
            raise UsageError(
                f"extract.runner heasoftpy: heasoftpy does not import ({problem}); it comes with HEASoft "
                "(source $HEADAS/headas-init.sh) or set extract.runner: exec (or auto)"
            )
        return "heasoftpy"
    if runner != "auto":
        raise UsageError(f"extract.runner must be auto, heasoftpy or exec, not {runner!r}")
    chosen = "exec" if problem is not None else "heasoftpy"
    if _state["announced"] != chosen:
        _state["announced"] = chosen
        log.info("extract.runner auto: HEASoft tasks through %s%s", chosen,
                 f" (heasoftpy does not import: {problem})" if problem else "")
    return chosen


def _arg(value: object) -> object:
    """A parameter value as heasoftpy should see it: booleans stay booleans, everything else its text."""
    return value if isinstance(value, bool) else str(value)


def _text(value: object) -> str:
    """heasoftpy's typed parameter value back to command-line text (as its own exec_task does)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "NONE"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _task_class() -> Any:
    """The HSPTask subclass that runs its task through `run_tool` (built once, when heasoftpy is first used)."""
    if _state["task_class"] is not None:
        return _state["task_class"]
    core = importlib.import_module("heasoftpy.core")
    base: Any = core.HSPTask

    class BoundedTask(base):
        """An HSPTask whose exec_task is `run_tool`: timeout, process-tree kill, stdin /dev/null, cwd."""

        # HSPTask treats a subclass from another module as a pure-Python task and gives it an HSPLogger,
        # switching logging's logger class for the whole process; this class runs the native executable,
        # exactly like HSPTask itself, so it takes HSPTask's native path.
        __module__ = "heasoftpy.core"

        def __init__(self, name: str, caller: "HspCaller") -> None:
            super().__init__(name)
            self.rx_caller = caller
            self.rx_run: ToolRun | None = None

        def exec_task(self) -> Any:
            caller = self.rx_caller
            params = [(name, _text(value)) for name, value in self.params.items()]
            run = run_tool(self.taskname, params, headas=caller.headas, env=caller.env, cwd=caller.cwd,
                           tool_log=caller.log, timeout=caller.timeout(self.taskname))
            self.rx_run = run
            return core.HSPResult(run.returncode, run.output, None, dict(self.params))

    _state["task_class"] = BoundedTask
    return BoundedTask


@dataclass(frozen=True)
class HspCaller(TaskCaller):
    """TaskCaller whose calls go through heasoftpy task objects (use it inside `task_calls` only)."""

    runner = "heasoftpy"

    def run(self, task: str, params: Sequence[tuple[str, object]]) -> ToolRun:
        core = importlib.import_module("heasoftpy.core")
        self.log.write(f"# heasoftpy: {task} task object, noprompt=True\n")
        try:
            hsp_task = _task_class()(task, self)  # a fresh object per call: no values from an earlier call
        except (core.HSPTaskException, OSError) as exc:
            raise DataError(f"{task}: heasoftpy cannot make the task ({exc})") from exc
        dropped = [name for name, _ in params if name not in hsp_task.par_names]
        if dropped:  # heasoftpy would drop these silently
            raise UsageError(f"{task}: no parameter {', '.join(dropped)} in {hsp_task.pfile}")
        kwargs = {name: _arg(value) for name, value in params}
        try:
            hsp_task(noprompt=True, allow_failure=True, verbose=0, **kwargs)
        except core.HSPTaskException as exc:
            raise DataError(f"{task}: heasoftpy: {str(exc).strip().splitlines()[0]}") from exc
        except (ValueError, IndexError) as exc:
            if hsp_task.rx_run is None:  # before the run: a value heasoftpy cannot convert to the parameter's type
                raise UsageError(f"{task}: {exc}") from exc
            # after the run heasoftpy re-reads the .par the task wrote back; the run's own checks still decide
            log.warning("%s: heasoftpy could not re-read the task's parameter file afterwards (%s)", task, exc)
        if hsp_task.rx_run is None:
            raise DataError(f"{task}: heasoftpy returned without running the task")
        return hsp_task.rx_run


@contextmanager
def task_calls(
    runner: str, headas: Path, env: Mapping[str, str], cwd: Path, tool_log: TextIO,
    timeouts: Mapping[str, float] | None = None,
) -> Iterator[TaskCaller]:
    """A TaskCaller for one ObsID's tasks under `extract.runner` (env holds the ObsID's PFILES).

    For heasoftpy, the ObsID's PFILES and HEADAS are in os.environ while the
    block runs (heasoftpy reads them there), in this thread only: another
    thread of the process entering meanwhile is a UsageError.
    """
    if resolve_runner(runner) == "exec":
        yield TaskCaller(headas, env, cwd, tool_log, timeouts)
        return
    if not _IN_USE.acquire(blocking=False):
        raise UsageError(
            "extract.runner heasoftpy: HEASoft called from two threads of one process at once (heasoftpy keeps "
            "PFILES in os.environ); run one extracting thread per process or set extract.runner: exec"
        )
    saved = {key: os.environ.get(key) for key in ("HEADAS", "PFILES")}
    try:
        if not _state["prompt_vars_set"]:  # once per worker process; heasoftpy itself rewrites them per call
            os.environ["HEADASNOQUERY"] = ""
            os.environ["HEADASPROMPT"] = "/dev/null"
            _state["prompt_vars_set"] = True
        os.environ["HEADAS"] = str(headas)
        os.environ["PFILES"] = env["PFILES"]
        yield HspCaller(headas, env, cwd, tool_log, timeouts)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _IN_USE.release()
