"""Pure half of the Slurm executor: validate the `slurm:` section, cut arrays into chunks, render sbatch text.

No processes and no files are touched here, so the rendered text is checked
against a recorded expected script (tests/data/expected_array.sbatch) and a
change to it is visible in review (submitit's habit).

Nothing from a config reaches a shell unchecked: every scheduler option is
matched against a strict pattern (a config error names the key) and every
value that lands in the shell part of a script is `shlex.quote`d. The one
exception is `slurm.setup`: lines such as `module load heasoft` are trusted
shell written by the config's owner and are pasted verbatim (only line breaks
and NUL inside a line are refused, since they would smuggle in extra lines).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Iterable, Sequence

from rxte_hpc.core.config import Config, SlurmConfig
from rxte_hpc.core.errors import ConfigError, UsageError

TEMPLATES = ("array", "gather", "mpi")
OFFSET_VAR = "RXTE_HPC_TASK_OFFSET"

_TIME_RE = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d{2}))?(?::(\d{2}))?")
_MEM_RE = re.compile(r"[1-9]\d*[KMGT]?|0")
_NAME_RE = re.compile(r"[A-Za-z0-9_.,-]+")
#: `--name` or `--name=value`; values may carry constraint/gres syntax but no
#: whitespace, quotes, `$`, `;`, backticks or redirections.
_EXTRA_RE = re.compile(r"--([a-z][a-z0-9-]*)(?:=([A-Za-z0-9_.,:@/+=|&*\[\]-]+))?")
#: Options the executor itself owns: overriding them would break the run's contract (what runs, which task an
#: element is, where logs go; `--export-file` sets the task offset's variable too, `--wait` would hold `submit`
#: until the jobs end).
_EXTRA_OWNED = ("array", "export", "export-file", "dependency", "wrap", "output", "error", "signal", "chdir",
                "parsable", "job-name", "ntasks", "wait")


def owned_option(name: str) -> str | None:
    """The option rxte-hpc sets that `--name` would set: itself, or the owned option it abbreviates.

    sbatch parses with getopt_long, which takes any unambiguous prefix of a long
    option (`--outp=` is `--output=`), and an ambiguous one is refused anyway;
    so every prefix of an owned option is refused here.
    """
    if name in _EXTRA_OWNED:
        return name
    return next((o for o in _EXTRA_OWNED if o.startswith(name)), None)


def _quoted(value: object, limit: int = 60) -> str:
    """A bad value in a message: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(cut)"
#: #SBATCH lines are not shell, but Slurm splits them on blanks and expands `%`:
#: paths that land there must be plain.
_SBATCH_PATH_RE = re.compile(r"/[A-Za-z0-9_./+,:@=~-]*")


@dataclass(frozen=True)
class ArrayChunk:
    """One `sbatch --array` submission: element indices (from 0) plus the task offset they add.

    `task = index + offset` is computed here and in `array_task_from_env` only,
    never anywhere else (canu issue 337 was an off-by-one on resubmit: docs/architecture.md#why-it-is-built-this-way).
    """

    offset: int
    indices: tuple[int, ...]

    @property
    def tasks(self) -> tuple[int, ...]:
        return tuple(i + self.offset for i in self.indices)

    def spec(self) -> str:
        """The index list without throttle: `0-4` or `3,17,40-42` (what scancel/squeue accept)."""
        return compress_indices(self.indices)

    def array_option(self, throttle: int) -> str:
        return f"--array={self.spec()}%{throttle}"


def compress_indices(indices: Iterable[int]) -> str:
    """`[3, 17, 40, 41, 42]` -> `3,17,40-42` (runs of consecutive indices as ranges)."""
    values = sorted(set(indices))
    if not values:
        raise ValueError("no array indices")
    parts = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


def _clip(text: str, width: int) -> str:
    """A long comma list cut at a comma, with `...`."""
    if len(text) <= width:
        return text
    return text[: text.rfind(",", 0, width)] + ",..."


def contiguous_chunks(n_tasks: int, max_array_size: int) -> list[ArrayChunk]:
    """Tasks 0..n-1 as arrays `0..k-1` with offsets, so every index is < MaxArraySize."""
    if n_tasks < 1:
        raise ValueError("need at least one task")
    if max_array_size < 1:
        raise ValueError("MaxArraySize must be at least 1")
    chunks = []
    for offset in range(0, n_tasks, max_array_size):
        size = min(max_array_size, n_tasks - offset)
        chunks.append(ArrayChunk(offset, tuple(range(size))))
    return chunks


def sparse_chunks(tasks: Iterable[int], max_array_size: int) -> list[ArrayChunk]:
    """Chosen tasks as sparse arrays: grouped by offset = task // MaxArraySize * MaxArraySize."""
    if max_array_size < 1:
        raise ValueError("MaxArraySize must be at least 1")
    groups: dict[int, list[int]] = {}
    for task in sorted(set(tasks)):
        if task < 0:
            raise ValueError(f"negative task {task}")
        offset = task // max_array_size * max_array_size
        groups.setdefault(offset, []).append(task - offset)
    return [ArrayChunk(offset, tuple(indices)) for offset, indices in sorted(groups.items())]


def time_limit_seconds(value: str) -> int:
    """Seconds in a Slurm time limit (`M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`); ValueError otherwise."""
    m = _TIME_RE.fullmatch(value)
    if not m:
        raise ValueError(value)
    days, first, second, third = m.groups()
    fields = [int(first)] + [int(x) for x in (second, third) if x is not None]
    if days is None:
        # M | M:S | H:M:S
        if len(fields) == 1:
            seconds = fields[0] * 60
        elif len(fields) == 2:
            seconds = fields[0] * 60 + fields[1]
        else:
            seconds = fields[0] * 3600 + fields[1] * 60 + fields[2]
    else:
        # D-H | D-H:M | D-H:M:S
        fields += [0] * (3 - len(fields))
        seconds = int(days) * 86400 + fields[0] * 3600 + fields[1] * 60 + fields[2]
    if seconds <= 0:
        raise ValueError(value)
    return seconds


def validate_slurm(config: Config) -> None:
    """Reject any `slurm:` value that could break or inject into a script; the error names the key."""
    s = config.slurm
    where = config.path

    def bad(key: str, value: object, why: str) -> ConfigError:
        return ConfigError(f"{where}: slurm.{key} {why}, not {_quoted(value)}", path=where)

    for key in ("partition", "account"):
        value = getattr(s, key)
        if value is not None and not _NAME_RE.fullmatch(value):
            raise bad(key, value, "must be a Slurm name (letters, digits, _ . , -)")
    try:
        limit = time_limit_seconds(s.time)
    except ValueError:
        raise bad("time", s.time, "must be a Slurm time limit such as 02:00:00, 90 or 1-12:00:00") from None
    if s.signal_s >= limit:
        raise ConfigError(
            f"{where}: slurm.signal_s ({s.signal_s} s) must be shorter than slurm.time ({s.time} = {limit} s): "
            "it is the warning the worker gets before the time limit", path=where
        )
    if not _MEM_RE.fullmatch(s.mem):
        raise bad("mem", s.mem, "must be a number with an optional K/M/G/T suffix, e.g. 4G")
    for i, opt in enumerate(s.extra):
        m = _EXTRA_RE.fullmatch(opt)
        if not m:
            raise bad(f"extra[{i}]", opt, "must be one option '--name' or '--name=value' without blanks or shell characters")
        owned = owned_option(m.group(1))
        if owned is not None:
            how = "sets" if owned == m.group(1) else f"abbreviates (sbatch takes unambiguous prefixes) --{owned}, so it sets"
            raise bad(f"extra[{i}]", opt, f"{how} --{owned}, which rxte-hpc itself controls")
    for i, line in enumerate(s.setup):
        if any(c in line for c in "\n\r\0"):
            raise bad(f"setup[{i}]", line, "must be one line (no line breaks or NUL)")


def sbatch_path(path: Path, key: str) -> str:
    """A path for an #SBATCH line; UsageError when Slurm would split or expand it."""
    text = str(path)
    if not _SBATCH_PATH_RE.fullmatch(text):
        raise UsageError(
            f"{key} {text!r} cannot go into an #SBATCH line (blanks, quotes, % or shell characters); "
            "use a run_dir path of letters, digits and _ . / + , : @ = ~ -"
        )
    return text


def job_name(run_dir: Path, kind: str) -> str:
    """`rxte-<run name>` (+ `-gather`/`-mpi`): squeue shows which run a job belongs to."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.name)[:40] or "run"
    return f"rxte-{base}" + ("" if kind == "array" else f"-{kind}")


def template_text(name: str) -> str:
    """A packaged template (`rxte_hpc/run/slurm/templates/<name>.sbatch`, also `slurm/<name>.sbatch` in the repo)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}")
    return resources.files("rxte_hpc.run.slurm").joinpath("templates").joinpath(f"{name}.sbatch").read_text()


@dataclass(frozen=True)
class RenderInputs:
    """Everything a script depends on; fixed values here give a byte-identical script."""

    slurm: SlurmConfig
    config_file: Path
    run_dir: Path
    python: str

    @classmethod
    def from_config(cls, config: Config, python: str) -> "RenderInputs":
        return cls(config.slurm, config.path.resolve(), config.run_dir, python)


def _fields(inputs: RenderInputs, kind: str) -> dict[str, str]:
    s = inputs.slurm
    run_dir = sbatch_path(inputs.run_dir, "run_dir")
    return {
        "job_name": job_name(inputs.run_dir, kind),
        "partition_line": f"#SBATCH --partition={s.partition}" if s.partition else "",
        "account_line": f"#SBATCH --account={s.account}" if s.account else "",
        "time": s.time,
        "mem": s.mem,
        "cpus_per_task": str(s.cpus_per_task),
        "extra_lines": "\n".join(f"#SBATCH {opt}" for opt in s.extra),
        "signal_s": str(s.signal_s),
        "run_dir": run_dir,
        "log_dir": f"{run_dir}/slurm/logs",
        "setup_lines": "\n".join(s.setup),
        "python": shlex.quote(inputs.python),
        "config": shlex.quote(str(inputs.config_file)),
        "mpi_tasks": str(s.mpi_tasks),
    }


def _render(name: str, fields: dict[str, str]) -> str:
    text = template_text(name)
    # An optional block that renders empty takes its line with it, so the
    # script has no stray blank lines between #SBATCH directives.
    for key, value in fields.items():
        if not value:
            text = text.replace("${" + key + "}\n", "")
    return Template(text).substitute(fields)


def render_array(inputs: RenderInputs, chunks: Sequence[ArrayChunk]) -> str:
    """The array script; its own `#SBATCH --array` is the first chunk, each sbatch call names its chunk."""
    if not chunks:
        raise ValueError("no chunks to render")
    throttle = inputs.slurm.throttle
    fields = _fields(inputs, "array")
    fields["array"] = f"{chunks[0].spec()}%{throttle}"
    fields["chunk_comments"] = "\n".join(
        f"#   sbatch {chunk.array_option(throttle)} --export=ALL,{OFFSET_VAR}={chunk.offset} <this script>"
        f"   # tasks {_clip(compress_indices(chunk.tasks), 120)}"
        for chunk in chunks
    )
    return _render("array", fields)


def render_gather(inputs: RenderInputs) -> str:
    return _render("gather", _fields(inputs, "gather"))


def render_mpi(inputs: RenderInputs) -> str:
    return _render("mpi", _fields(inputs, "mpi"))
