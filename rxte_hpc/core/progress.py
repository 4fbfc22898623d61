"""Progress display, the one owner: a redrawn bar on a terminal, sparse plain lines in batch logs.

A batch log must stay readable at 10,000 tasks, so off a terminal a line is
written only when `min_interval_s` has passed or another 5% is done (and at the
end); a terminal gets a bar redrawn at most every 0.2 s.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

#: Off a terminal: at most one line this often, or every `step_fraction` of the work, whichever comes first.
DEFAULT_INTERVAL_S = 10.0
DEFAULT_STEP_FRACTION = 0.05
_BAR_WIDTH = 30
_REDRAW_S = 0.2


class ProgressLine:
    """Progress of `total` units of work; `describe(done, elapsed_s)` gives the text after the bar.

    Thread-safe: the fetch threads and the pool's result loop call it concurrently.
    """

    def __init__(
        self,
        total: int,
        describe: Callable[[int, float], str],
        *,
        prefix: str = "progress",
        stream: TextIO | None = None,
        min_interval_s: float = DEFAULT_INTERVAL_S,
        step_fraction: float = DEFAULT_STEP_FRACTION,
        show: bool = True,
    ) -> None:
        self.total = total
        self._show = show
        self.done = 0
        self._describe = describe
        self._prefix = prefix
        self._stream = stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = min_interval_s
        self._step = max(1, int(total * step_fraction))
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last_time = -float("inf")
        self._last_done = 0

    @property
    def stream(self) -> TextIO:
        """The stream, resolved when writing (a test or the CLI may replace sys.stderr meanwhile)."""
        return self._stream if self._stream is not None else sys.stderr

    def advance(self, n: int = 1) -> None:
        """`n` more units are done; draw if it is time."""
        with self._lock:
            self.done += n
            self._draw(force=self.done >= self.total)

    def redraw(self) -> None:
        """Something changed besides the count (bytes arrived): redraw a terminal bar, if it is time."""
        if self.tty:
            with self._lock:
                self._draw(force=False)

    def note(self, text: str) -> None:
        """A line of its own (an ObsID that failed), keeping a terminal bar intact."""
        if not self._show:
            return
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(f"{self._prefix}: {text}\n")
            if self.tty:
                self._draw(force=True)
            self.stream.flush()

    def _draw(self, force: bool) -> None:
        if not self._show:  # counting only (the Python API prints nothing unless asked)
            return
        now = time.monotonic()
        elapsed = now - self._t0
        if self.tty:
            if not force and now - self._last_time < _REDRAW_S:
                return
            filled = int(_BAR_WIDTH * self.done / max(1, self.total))
            self.stream.write(f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {self._describe(self.done, elapsed)}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            due = now - self._last_time >= self._interval or self.done - self._last_done >= self._step
            if not (force or due) or self.done == self._last_done:
                return
            self.stream.write(f"{self._prefix}: {self._describe(self.done, elapsed)}\n")
            self._last_done = self.done
        self._last_time = now
        self.stream.flush()
