"""What the `Campaign` methods return: typed, frozen, a few lines to print, and able to raise on failures.

Every result has `ok`, `exit_code` (what the CLI exits with), `lines()` (the
text the CLI prints), a repr of a few lines whatever the run's size (the last
line of a notebook cell shows it: 200 or 100,000 ObsIDs give the same few
lines), `_repr_html_` (a small table in Jupyter), and `raise_for_failures()`,
which raises `Incomplete` (exit 1) naming what failed and returns the result
otherwise, so `c.run().raise_for_failures()` is the one-line strict form.
Failed ObsIDs are results, not exceptions, because a run with failures still
did useful work; errors that stop a command (bad config, no controller) raise.
"""
from __future__ import annotations

import html
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rxte_hpc.core.errors import Incomplete
from rxte_hpc.core.status import FINISHED, ObsState, RunSummary, StatusRecord, format_counts
from rxte_hpc.core.statusreport import ReasonGroup, StatusReport

#: Failure groups a repr shows (`status` and `.groups` have them all).
SHOWN_GROUPS = 3
#: ObsIDs or items named in one line.
SHOWN_ITEMS = 5


def few(items: Sequence[str], n: int = SHOWN_ITEMS) -> str:
    """`a, b, c ... (+7)`: the first few of a list, and how many more."""
    head = ", ".join(items[:n])
    return head + (f" ... (+{len(items) - n})" if len(items) > n else "")


class Outcome:
    """The common face of every result; subclasses are frozen dataclasses declared with `repr=False`."""

    @property
    def ok(self) -> bool:
        return True

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def lines(self) -> list[str]:
        """The text the CLI prints (and the repr shows)."""
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the notebook table; by default one row per line."""
        return [("", line) for line in self.lines()]

    def failure(self) -> str:
        """One line saying what is not done (for `Incomplete`)."""
        return self.lines()[0] if self.lines() else type(self).__name__

    def raise_for_failures(self) -> "Outcome":
        """Raise `Incomplete` (exit 1, `.result` is this) when anything failed or is missing; else return self."""
        if not self.ok:
            raise Incomplete(self.failure(), result=self)
        return self

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in self.rows())
        return f"<table><caption>{html.escape(type(self).__name__)}</caption>{cells}</table>"


def group_line(g: ReasonGroup) -> str:
    kind = f" [{g.error_kind}]" if g.error_kind else ""
    more = f" ... (+{g.count - len(g.examples)})" if g.count > len(g.examples) else ""
    return f"{g.count} {g.state}{kind}: {g.reason} (e.g. {', '.join(g.examples)}{more})"


@dataclass(frozen=True, repr=False)
class RunStatus(Outcome):
    """The state of every ObsID of the plan, from the status records: what `Campaign.status()` returns.

    `counts()`, `per_task()`, `per_target()` and `with_state()` are RunSummary's;
    `groups` says why ObsIDs are not done, one group per kind of failure with
    example ObsIDs, largest first; `summary` and `report` hold everything.
    """

    summary: RunSummary
    report: StatusReport
    drift: str | None = None  # how the config differs from the last submission's copy (None: it does not)

    def counts(self) -> Counter:
        return self.summary.counts()

    def per_task(self) -> dict[int, Counter]:
        return self.summary.per_task()

    def per_target(self) -> dict[str, Counter]:
        return self.summary.per_target()

    def with_state(self, *states: str) -> list[ObsState]:
        return self.summary.with_state(*states)

    @property
    def complete(self) -> bool:
        return self.summary.complete

    @property
    def groups(self) -> tuple[ReasonGroup, ...]:
        return self.report.groups

    @property
    def ok(self) -> bool:
        return self.complete

    def lines(self) -> list[str]:
        r = self.report
        out = [f"{r.n_obsids} ObsIDs in {r.n_tasks} tasks: {format_counts(r.counts)}"
               + ("" if r.complete else " (not complete)")]
        out += ["  " + group_line(g) for g in r.groups[:SHOWN_GROUPS]]
        if len(r.groups) > SHOWN_GROUPS:
            out.append(f"  ... {len(r.groups) - SHOWN_GROUPS} more group(s): `.groups` or `rxte-hpc status` lists them")
        if self.drift:
            out.append(f"  note: {self.drift}")
        return out

    def failure(self) -> str:
        r = self.report
        bad = sum(n for k, n in r.counts.items() if k not in FINISHED)
        first = f"; {group_line(r.groups[0])}" if r.groups else ""
        return f"{bad} of {r.n_obsids} ObsIDs not done in {r.run_dir}: {format_counts(r.counts)}{first}"

    def rows(self) -> list[tuple[str, str]]:
        r = self.report
        rows = [("run_dir", r.run_dir), ("ObsIDs", f"{r.n_obsids} in {r.n_tasks} tasks"),
                ("states", format_counts(r.counts))]
        rows += [(f"{g.state}" + (f" [{g.error_kind}]" if g.error_kind else ""),
                  f"{g.count}: {g.reason} (e.g. {', '.join(g.examples)})") for g in r.groups[:SHOWN_GROUPS]]
        return rows


@dataclass(frozen=True, repr=False)
class RunResult(Outcome):
    """What `Campaign.run()` did: this run's ObsID states (`processed`, already-done ones included) and the
    state of the whole plan afterwards (`status`)."""

    status: RunStatus
    processed: Mapping[str, int]
    workers: int
    seconds: float

    def counts(self) -> Counter:
        """Per state over the whole plan (as `status().counts()`)."""
        return self.status.counts()

    @property
    def complete(self) -> bool:
        return self.status.complete

    @property
    def ok(self) -> bool:
        return self.status.ok

    def lines(self) -> list[str]:
        head = (f"run: {sum(self.processed.values())} ObsIDs on {self.workers} worker(s) in {self.seconds:.0f} s; "
                + self.status.lines()[0])
        return [head, *self.status.lines()[1:]]

    def failure(self) -> str:
        return self.status.failure()

    def rows(self) -> list[tuple[str, str]]:
        return [("run", f"{sum(self.processed.values())} ObsIDs on {self.workers} worker(s) in {self.seconds:.0f} s"),
                *self.status.rows()]


@dataclass(frozen=True, repr=False)
class WorkResult(Outcome):
    """What `Campaign.work()` did: the final record of each ObsID of the task (or the one ObsID)."""

    label: str
    records: tuple[StatusRecord, ...]

    @property
    def bad(self) -> tuple[StatusRecord, ...]:
        return tuple(r for r in self.records if r.state not in FINISHED)

    @property
    def ok(self) -> bool:
        return not self.bad

    def counts(self) -> Counter:
        return Counter(r.state for r in self.records)

    def lines(self) -> list[str]:
        out = [f"{self.label}: {len(self.records)} ObsIDs: {format_counts(self.counts())}"]
        out += [f"  {r.obsid}: {r.state}: {r.error or 'no error recorded'}" for r in self.bad[:SHOWN_ITEMS]]
        if len(self.bad) > SHOWN_ITEMS:
            out.append(f"  ... and {len(self.bad) - SHOWN_ITEMS} more")
        return out


@dataclass(frozen=True)
class FetchProblem:
    """An ObsID `fetch` could not stage: missing (404: it will be `no_data`) or failed."""

    obsid: str
    state: str
    error: str


@dataclass(frozen=True, repr=False)
class FetchResult(Outcome):
    """What `Campaign.fetch()` staged: ObsIDs per state (fetched, cached, missing, failed), bytes and files."""

    n_obsids: int
    counts: Mapping[str, int]
    nbytes: int
    files: int
    cache: Path | None  # None: the archive is local, nothing to fetch
    problems: tuple[FetchProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.counts.get("failed", 0)

    def lines(self) -> list[str]:
        if self.cache is None:
            return ["archive.root is local; nothing to fetch"]
        c = self.counts
        return [f"  {p.obsid} {p.state}: {' '.join(p.error.split())}" for p in self.problems] + [
            f"fetch: {self.n_obsids} ObsIDs: {c.get('fetched', 0)} fetched ({size_text(self.nbytes)}), "
            f"{c.get('cached', 0)} cached, {c.get('missing', 0)} missing (404), {c.get('failed', 0)} failed; "
            f"cache {self.cache}"]

    def __repr__(self) -> str:  # the problems list can be long: the repr keeps the few first
        lines = self.lines()
        shown = [line for line in lines[:-1]][:SHOWN_ITEMS]
        more = [f"  ... and {len(lines) - 1 - SHOWN_ITEMS} more"] if len(lines) - 1 > SHOWN_ITEMS else []
        return "\n".join([lines[-1], *shown, *more])

    def rows(self) -> list[tuple[str, str]]:
        return [("", self.lines()[-1]), *[(p.state, f"{p.obsid}: {p.error}") for p in self.problems[:SHOWN_ITEMS]]]


def size_text(n: int) -> str:
    """Bytes for people: `512 B`, `3.4 MB`, `1.2 GB` (powers of 1000)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


@dataclass(frozen=True)
class JobSubmission:
    """One sbatch call made (or, in a dry run, planned): its job id, array index list and the tasks it runs."""

    kind: str  # array | gather | mpi | rerun | rerun-gather
    job_id: str | None  # None in a dry run
    argv: tuple[str, ...]
    array: str | None = None
    offset: int | None = None
    tasks: tuple[int, ...] = ()
    tasks_text: str = ""  # the tasks as ranges (`0-4,17`)


@dataclass(frozen=True, repr=False)
class SubmitResult(Outcome):
    """What `Campaign.submit()` / `rerun()` did: the job ids per array and of the gather, the snapshot the
    jobs run, and the lines the CLI prints (`notes`: the plan of the submission; `scripts` only in a dry run)."""

    kind: str  # submit | rerun | mpi
    dry_run: bool
    jobs: tuple[JobSubmission, ...]
    notes: tuple[str, ...] = ()
    snapshot: Path | None = None
    scripts: tuple[tuple[Path, str], ...] = ()
    tail: tuple[str, ...] = ()

    @property
    def arrays(self) -> tuple[JobSubmission, ...]:
        return tuple(j for j in self.jobs if j.kind in ("array", "rerun"))

    @property
    def gather_job(self) -> str | None:
        """The job id of the dependent gather (or of the one MPI allocation, which gathers)."""
        return next((j.job_id for j in self.jobs if j.kind in ("gather", "rerun-gather", "mpi")), None)

    @property
    def job_ids(self) -> dict[str, Any]:
        return {"arrays": [j.job_id for j in self.arrays], "gather": self.gather_job}

    def lines(self) -> list[str]:
        out = list(self.notes)
        if self.dry_run:
            for path, text in self.scripts:
                out.append(f"# ---- {path} (not written: dry run)")
                out.extend(text.rstrip("\n").split("\n"))
            if self.jobs:
                out.append("# ---- sbatch commands (not run: dry run)")
                out.extend(shlex.join(j.argv) for j in self.jobs)
            return out + list(self.tail)
        arrays = self.arrays
        if len(arrays) > 20:
            out.append(f"submitted {len(arrays)} arrays {arrays[0].job_id}..{arrays[-1].job_id}: "
                       f"{sum(len(a.tasks) for a in arrays)} elements (jobs.json lists each)")
        else:
            out += [f"submitted array {a.job_id}_[{a.array}] (offset {a.offset}): tasks {a.tasks_text}"
                    for a in arrays]
        for j in self.jobs:
            if j.kind in ("gather", "rerun-gather"):
                out.append(f"submitted gather {j.job_id} after {', '.join(str(a.job_id) for a in arrays)} (afterany)")
        return out + list(self.tail)

    def __repr__(self) -> str:
        if self.dry_run:
            return f"{self.kind} (dry run): {len(self.jobs)} sbatch call(s) planned, nothing submitted"
        arrays = self.arrays
        ids = few([str(a.job_id) for a in arrays])
        gather = f"; gather {self.gather_job}" if self.gather_job else ""
        where = f"; snapshot {self.snapshot}" if self.snapshot else ""
        if not self.jobs:
            return "\n".join(self.notes[-1:]) or f"{self.kind}: nothing submitted"
        return f"{self.kind}: arrays {ids}{gather}{where}"

    def rows(self) -> list[tuple[str, str]]:
        return [(j.kind, f"{j.job_id or '(dry run)'}" + (f"_[{j.array}]" if j.array else "")) for j in self.jobs] + (
            [("snapshot", str(self.snapshot))] if self.snapshot else [])


@dataclass(frozen=True, repr=False)
class MpiResult(Outcome):
    """What `Campaign.work_mpi()` did on this rank; rank 0 also has the rank table and the gather's lines."""

    rank: int
    code: int
    table: str = ""
    gather_lines: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def exit_code(self) -> int:
        return self.code

    def lines(self) -> list[str]:
        return ([self.table] if self.table else []) + list(self.gather_lines) or [f"rank {self.rank}: exit {self.code}"]
