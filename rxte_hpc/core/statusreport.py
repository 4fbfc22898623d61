"""What `status` says: a structured summary of a run (counts per state and target, failures grouped by
error, why each non-done ObsID is not done) and its text form, short at any size.

`StatusReport.build(summary, ...)` is what the Python API returns; `format_status(report)` is what the
CLI prints. 100,000 ObsIDs give the same dozen lines as 100: groups of equal reasons with a few ObsIDs
each; `--tasks` adds one line per task; `--json` (RunSummary.to_json) has everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from rxte_hpc.core.status import FINISHED, MISSING, STATES, RunSummary, format_counts

#: ObsIDs shown per group of equal reasons.
EXAMPLES = 5


@dataclass(frozen=True)
class ReasonGroup:
    """ObsIDs that are not done for the same reason."""

    state: str
    reason: str
    error_kind: str | None
    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class StatusReport:
    run_dir: str
    n_obsids: int
    n_tasks: int
    counts: Mapping[str, int]
    targets: Mapping[str, Mapping[str, int]]  # target ("" for a one-target run) -> counts
    groups: tuple[ReasonGroup, ...]  # why ObsIDs are not done, largest group first
    tasks: Mapping[int, Mapping[str, int]]  # task -> counts
    complete: bool
    unreadable: int  # record files treated as missing
    opens: int  # record files opened to build it
    scheduler: Mapping[str, Any] | None = None
    exit_code: int = field(default=0)

    @classmethod
    def build(cls, summary: RunSummary, run_dir: object, n_tasks: int,
              scheduler: Mapping[str, Any] | None = None) -> "StatusReport":
        groups: dict[tuple[str, str, str | None], list[str]] = {}
        for s in summary.states:
            if s.state == "done":
                continue
            reason = summary.reason(s) or ""
            if s.state == "running":
                reason = "running"  # one group; host/start per ObsID are in --json
            kind = s.record.error_kind if s.record is not None and s.state == "failed" else None
            groups.setdefault((s.state, _generic(reason), kind), []).append(s.obsid)
        order = {k: i for i, k in enumerate(("failed", "interrupted", "running", MISSING, "no_data"))}
        built = sorted(
            (ReasonGroup(st, reason, kind, len(ids), tuple(ids[:EXAMPLES])) for (st, reason, kind), ids in groups.items()),
            key=lambda g: (order.get(g.state, 9), -g.count, g.reason),
        )
        counts = summary.counts()
        tasks = summary.per_task()
        complete = all(counts.get(k, 0) == 0 for k in counts if k not in FINISHED)
        return cls(
            run_dir=str(run_dir),
            n_obsids=len(summary.states),
            n_tasks=n_tasks,
            counts={k: counts.get(k, 0) for k in (*STATES, MISSING)},
            targets={t: dict(c) for t, c in summary.per_target().items()},
            groups=tuple(built),
            tasks=tasks,
            complete=complete,
            unreadable=sum(1 for s in summary.states if s.unreadable),
            opens=summary.opens,
            scheduler=scheduler,
            exit_code=0 if complete else 1,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "n_obsids": self.n_obsids,
            "n_tasks": self.n_tasks,
            "counts": dict(self.counts),
            "targets": {t: dict(c) for t, c in self.targets.items()},
            "groups": [g.__dict__ | {"examples": list(g.examples)} for g in self.groups],
            "complete": self.complete,
            "unreadable": self.unreadable,
        }


def _generic(reason: str) -> str:
    """Group errors that differ only in a path or an ObsID: keep the text, the group shows examples."""
    return reason if len(reason) <= 200 else reason[:197] + "..."


def format_status(report: StatusReport, tasks: bool = False) -> str:
    """The text `status` prints: a summary line, per-target counts, grouped reasons, the scheduler's view."""
    lines = [f"{report.run_dir}: {report.n_obsids} ObsIDs in {report.n_tasks} tasks: {format_counts(report.counts)}"]
    named = {t: c for t, c in report.targets.items() if t}
    if named:
        width = max(len(t) for t in named)
        for target, counts in named.items():
            lines.append(f"  target {target:<{width}}  {sum(counts.values()):6d} ObsIDs: {format_counts(counts)}")
    if report.unreadable:
        lines.append(f"  {report.unreadable} unreadable record(s), treated as missing (see below)")
    for g in report.groups:
        kind = f" [{g.error_kind}]" if g.error_kind else ""
        more = f" ... (+{g.count - len(g.examples)})" if g.count > len(g.examples) else ""
        lines.append(f"  {g.count:6d} {g.state}{kind}: {g.reason}")
        lines.append(f"         e.g. {', '.join(g.examples)}{more}")
    if tasks:
        for task, counts in report.tasks.items():
            lines.append(f"  task {task:5d}: {format_counts(counts)}")
    else:
        unfinished = sum(1 for c in report.tasks.values() if set(c) - set(FINISHED))
        if unfinished:
            lines.append(f"  {unfinished} of {report.n_tasks} task(s) not finished (--tasks lists every task)")
    if report.scheduler is not None:
        lines.extend(format_scheduler(report.scheduler))
    return "\n".join(lines)


def format_scheduler(scheduler: Mapping[str, Any]) -> list[str]:
    """The `--scheduler` part: queue summary, stale `running` records, elements that ended without records."""
    lines = [f"  scheduler: {scheduler.get('summary', '')}"]
    stale = list(scheduler.get("stale_running") or ())
    if stale:
        shown = ", ".join(str(s) for s in stale[:EXAMPLES])
        shown += f" ... (+{len(stale) - EXAMPLES})" if len(stale) > EXAMPLES else ""
        lines.append(f"  {len(stale)} stale 'running' record(s): their Slurm job has ended "
                     f"(the worker died; `rerun` resubmits them): {shown}")
    for e in list(scheduler.get("ended_without_records") or ())[:EXAMPLES]:
        lines.append(f"  task {e.get('task')} (element {e.get('element')}) ended without records; "
                     f"log {e.get('log')}:")
        for tail in e.get("tail") or ["(no log)"]:
            lines.append(f"      | {tail}")
    more = len(scheduler.get("ended_without_records") or ()) - EXAMPLES
    if more > 0:
        lines.append(f"  ... and {more} more such element(s) (--json lists them)")
    return lines
