"""core/progress: sparse plain lines in batch logs, a redrawn bar on a terminal, silence when not asked."""
from __future__ import annotations

import io

from rxte_hpc.core.progress import ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def describe(done: int, elapsed: float) -> str:
    return f"{done} done"


def test_a_batch_log_gets_a_line_per_5_percent_not_per_step():
    log = io.StringIO()
    p = ProgressLine(10_000, describe, stream=log, min_interval_s=3600)
    for _ in range(10_000):
        p.advance()
    lines = log.getvalue().splitlines()
    assert 20 <= len(lines) <= 21, len(lines)  # 10,000 steps: one line per 500 (and the first)
    assert lines[-1] == "progress: 10000 done" and all(line.startswith("progress: ") for line in lines)


def test_a_batch_log_also_gets_a_line_when_the_interval_passed(monkeypatch):
    clock = iter(range(0, 10_000, 20))  # 20 s between steps
    monkeypatch.setattr("rxte_hpc.core.progress.time.monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    p = ProgressLine(1_000, describe, stream=log, min_interval_s=10)
    for _ in range(5):
        p.advance()
    assert log.getvalue().splitlines() == [f"progress: {n} done" for n in range(1, 6)]


def test_a_terminal_gets_one_redrawn_bar():
    term = Terminal()
    p = ProgressLine(3, describe, stream=term)
    for _ in range(3):
        p.advance()
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("] 3 done\n") and text.startswith("\r[")


def test_nothing_is_written_unless_asked():
    log = Terminal()
    p = ProgressLine(5, describe, stream=log, show=False)
    for _ in range(5):
        p.advance()
    p.note("an ObsID failed")
    assert log.getvalue() == "" and p.done == 5
