"""Shared machinery of the stand-in HEASoft tree: parameter files, PFILES, failure signalling.

HEASoft cannot be installed on the test machines, so `tests/heasoft_standin`
is a tiny `$HEADAS` whose `bin/` tasks behave like the real ones where the
project can trip: PFILES (`<user dirs>;<system dirs>`, user copy read first and
written back when the task ends), refusing to prompt without a terminal, and
the Perl tasks' habit of printing `Task <name> <version> terminating with
status -1` and exiting 0 on failure. Tests only; never imported by rxte_hpc,
and never importing it (only bin/pcaprepobsid uses the simulator's model).

Test hooks (environment variables, read by every task):

* RXTE_STANDIN_FAIL=task[,task]   the named task(s) fail on purpose (status -1, exit 0)
* RXTE_STANDIN_SLEEP=seconds       every task first waits this long for a child `sleep` it starts
                                   (a process tree, as a Perl task running ftools is)
* RXTE_STANDIN_NO_OUTPUT=task[,task] the task reports success but leaves no output (outfile / done file)
* RXTE_STANDIN_EMPTY_LIST=name     pcaprepobsid leaves list file `name` (e.g. FP_dtstd2.lis) empty
* RXTE_STANDIN_RACE_S=seconds      pcaprepobsid's fcollect.par write/read-back gap (default 0.3)
* RXTE_STANDIN_RECORD=dir          each run leaves <dir>/<task>-<pid>-<ns>.json with its parameters, cwd,
                                   PFILES, stdin and what its user PFILES directory held when it started
                                   (heasoftpy writes <task>.par there before each call); bin/fhelp
                                   leaves <dir>/fhelp-<pid>-<ns>.json; a sleeping task leaves
                                   <dir>/child-<pid>.pid with its child's pid
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

HEADAS_DIR = Path(__file__).resolve().parent.parent


class TaskError(Exception):
    """A failure the task reports the HEASoft way; `status` goes into the termination line."""

    def __init__(self, message: str, status: int = -1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Param:
    """One line of a .par file: name,type,mode,default,min,max,prompt."""

    name: str
    type: str
    mode: str
    value: str
    min: str
    max: str
    prompt: str


def read_par(path: Path) -> list[Param]:
    params = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line], skipinitialspace=True))
        fields += [""] * (7 - len(fields))
        params.append(Param(*[f.strip() for f in fields[:7]]))
    return params


def _quote(p: Param, value: str) -> str:
    if p.type in ("s", "f", "fr", "fw") or value == "":
        return '"' + value + '"'
    return value


def write_par(path: Path, params: list[Param]) -> None:
    """Write a .par file (via a temporary name, so a concurrent reader never sees half of one)."""
    out = io.StringIO()
    for p in params:
        out.write(",".join([p.name, p.type, p.mode, _quote(p, p.value), p.min, p.max, '"' + p.prompt + '"']) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(out.getvalue())
    os.replace(tmp, path)


def pfiles_dirs(env: Mapping[str, str] = os.environ) -> tuple[list[Path], list[Path]]:
    """(user dirs, system dirs) from PFILES, with HEASoft's fallback when it is unset."""
    pfiles = env.get("PFILES")
    if pfiles is None:
        pfiles = f"{Path.home() / 'pfiles'};{HEADAS_DIR / 'syspfiles'}"
    user, sep, system = pfiles.partition(";")
    if not sep:
        system = user
    split = lambda text: [Path(p) for p in text.split(":") if p]  # noqa: E731
    return split(user), split(system)


def par_paths(task: str) -> tuple[Path | None, Path | None]:
    """(user copy to write, file to read): the user copy unless absent or older than the system one."""
    user_dirs, sys_dirs = pfiles_dirs()
    system = next((d / f"{task}.par" for d in sys_dirs if (d / f"{task}.par").is_file()), None)
    user = user_dirs[0] / f"{task}.par" if user_dirs else None
    read = system
    if user is not None and user.is_file():
        if system is None or user.stat().st_mtime >= system.stat().st_mtime:
            read = user
    return user, read


def load_params(task: str) -> list[Param]:
    user, read = par_paths(task)
    if read is None:
        raise TaskError(f"Unable to find parameter file {task}.par in PFILES")
    return read_par(read)


def _check_value(p: Param, value: str) -> str:
    if p.type == "b":
        low = value.strip().lower()
        if low in ("yes", "y", "true", "t", "1"):
            return "yes"
        if low in ("no", "n", "false", "f", "0"):
            return "no"
        raise TaskError(f"parameter {p.name}: {value!r} is not a boolean (yes/no)")
    if p.type in ("i", "r") and value.strip().upper() not in ("INDEF", ""):
        try:
            number = int(value) if p.type == "i" else float(value)
        except ValueError:
            raise TaskError(f"parameter {p.name}: {value!r} is not {'an integer' if p.type == 'i' else 'a number'}") from None
        for bound, ok in ((p.min, lambda b: number >= float(b)), (p.max, lambda b: number <= float(b))):
            if bound and not ok(bound):
                raise TaskError(f"parameter {p.name}: {value} is outside {p.min}..{p.max}")
    return value


class Task:
    """One run of one task: parameters resolved, outputs and failures signalled like HEASoft."""

    def __init__(self, name: str, version: str, argv: list[str]) -> None:
        self.name = name
        self.version = version
        self.params = load_params(name)
        self.given: dict[str, str] = {}
        by_name = {p.name.lower(): p for p in self.params}
        positional = [p for p in self.params if "a" in p.mode or "q" in p.mode]
        for index, arg in enumerate(argv):
            key, sep, value = arg.partition("=")
            if not sep:
                if index >= len(positional):
                    raise TaskError(f"too many positional arguments ({arg!r})")
                key, value = positional[index].name, arg
            p = by_name.get(key.strip().lower())
            if p is None:
                raise TaskError(f"parameter '{key}' not found in {name}.par")
            self.given[p.name] = _check_value(p, value)
        task_mode = self.given.get("mode", by_name["mode"].value if "mode" in by_name else "ql")
        for p in self.params:
            mode = task_mode if p.mode == "a" else p.mode
            if "q" in mode and p.name not in self.given:
                self._cannot_prompt(p)
        self.values = {p.name: self.given.get(p.name, p.value) for p in self.params}
        self.user_dir_at_start: list[str] = []
        self.user_par_at_start: dict[str, str] | None = None
        self.task_mode = task_mode

    def _cannot_prompt(self, p: Param) -> None:
        """A query parameter not on the command line: prompt, which batch runs must never need."""
        interactive = sys.stdin.isatty() and os.environ.get("HEADASPROMPT") != "/dev/null"
        if "HEADASNOQUERY" in os.environ and p.value != "":
            return
        if interactive:
            raise TaskError(f"stand-in HEASoft does not prompt; give {p.name}= on the command line")
        raise TaskError(
            f"Unable to get parameter '{p.name}' ({p.prompt}): cannot prompt, stdin is not a terminal "
            "or HEADASPROMPT=/dev/null"
        )

    # -- values --------------------------------------------------------------
    def str(self, name: str) -> str:
        return self.values[name].strip()

    def bool(self, name: str) -> bool:
        return _check_value(self._param(name), self.values[name]) == "yes"

    def float(self, name: str) -> float | None:
        text = self.values[name].strip()
        return None if text.upper() in ("INDEF", "") else float(text)

    def _param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    # -- end of task -----------------------------------------------------------
    def save(self) -> None:
        """Write the user .par back with this run's values, as PIL does when a task closes.

        Simplification: every value given on the command line is kept, hidden
        ones included, so a test can read exactly what a task ran with.
        The file is re-read first so values another task wrote meanwhile
        (fcollect's fname) survive, as with the real read-modify-write.
        """
        user, _ = par_paths(self.name)
        if user is None:
            return
        current = load_params(self.name)
        for p in current:
            if p.name in self.given:
                p.value = self.given[p.name]
        write_par(user, current)

    def record(self) -> None:
        where = os.environ.get("RXTE_STANDIN_RECORD")
        if not where:
            return
        data = {"task": self.name, "params": self.values, "given": self.given, "cwd": os.getcwd(),
                "pfiles": os.environ.get("PFILES"), "stdin": stdin_name(), "user_dir_at_start": self.user_dir_at_start,
                "user_par_at_start": self.user_par_at_start}
        path = Path(where) / f"{self.name}-{os.getpid()}-{time.monotonic_ns()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


def fail_line(name: str, version: str, status: int) -> str:
    return f"Task {name} {version} terminating with status {status}"


def stdin_name() -> str:
    """What this process's stdin is (a path such as /dev/null, or pipe:[...] / a tty)."""
    try:
        return os.readlink("/proc/self/fd/0")
    except OSError:
        return "closed"


def hooked(variable: str, name: str) -> bool:
    return name in [t.strip() for t in os.environ.get(variable, "").split(",")]


def user_dir_listing(name: str) -> tuple[list[str], dict[str, str] | None]:
    """What the first user PFILES directory holds now, and the values in its <name>.par if there is one."""
    user_dirs, _ = pfiles_dirs()
    if not user_dirs or not user_dirs[0].is_dir():
        return [], None
    names = sorted(p.name for p in user_dirs[0].iterdir() if not p.name.startswith("."))
    own = user_dirs[0] / f"{name}.par"
    values = {p.name: p.value for p in read_par(own)} if own.is_file() else None
    return names, values


def _sleep_in_child(seconds: float) -> None:
    """Wait for a child process, so that a timeout must kill a process tree, not just this process."""
    import subprocess

    child = subprocess.Popen(["sleep", f"{seconds:g}"])
    where = os.environ.get("RXTE_STANDIN_RECORD")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"child-{os.getpid()}.pid").write_text(f"{child.pid}\n")
    child.wait()


def _drop_output(task: Task) -> None:
    """RXTE_STANDIN_NO_OUTPUT: remove what the task wrote, keeping its successful-looking output text."""
    if "outfile" in task.values:
        Path(task.str("outfile")).unlink(missing_ok=True)
    if "outdir" in task.values:
        (Path(task.str("outdir")) / "pcaprepobsid_done.txt").unlink(missing_ok=True)


def main(name: str, version: str, body: Callable[[Task], None]) -> None:
    """Run a task body the HEASoft way: a failure prints `ERROR: ...`, then the status line, and exits 0."""
    try:
        listing, own_par = user_dir_listing(name)
        delay = float(os.environ.get("RXTE_STANDIN_SLEEP") or 0)
        if delay > 0:
            _sleep_in_child(delay)
        task = Task(name, version, sys.argv[1:])
        task.user_dir_at_start, task.user_par_at_start = listing, own_par
        task.record()
        if hooked("RXTE_STANDIN_FAIL", name):
            raise TaskError(f"{name} failing on purpose (RXTE_STANDIN_FAIL)")
        try:
            body(task)
        finally:
            task.save()
        if hooked("RXTE_STANDIN_NO_OUTPUT", name):
            _drop_output(task)
    except TaskError as exc:
        sys.stdout.flush()
        print(f"ERROR: {exc}", file=sys.stderr)
        print(fail_line(name, version, exc.status), file=sys.stderr)
        sys.exit(0)
    except Exception as exc:  # the Perl tasks catch everything the same way
        traceback.print_exc()
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(fail_line(name, version, -1), file=sys.stderr)
        sys.exit(0)
    sys.stdout.flush()
