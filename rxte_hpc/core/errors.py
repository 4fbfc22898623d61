"""The exception hierarchy: each error knows its exit code and, for ObsIDs, its kind.

The CLI maps these to one-line messages and exit codes (2 usage/config, 1 data);
the worker maps them to status records (`failed` with `error_kind` data/site, or
`no_data`). Anything else reaching the CLI is a bug and keeps its traceback.

Like pyvo's DAL errors, each error carries its context as fields (`obsid`,
`path`, `url`, `cause`) besides the one-line message, so records, the API and
the CLI read them instead of parsing strings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


class RxteError(Exception):
    """Base of every error this package raises on purpose: a one-line message plus context fields."""

    exit_code = 1
    kind: str | None = None

    def __init__(
        self,
        message: str,
        *,
        obsid: Any = None,
        path: str | Path | None = None,
        url: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.obsid = None if obsid is None else str(obsid)
        self.path = None if path is None else str(path)
        self.url = url
        self.cause = cause

    def __str__(self) -> str:
        return self.message

    def with_context(self, *, obsid: Any = None, path: str | Path | None = None, url: str | None = None) -> "RxteError":
        """Fill context fields that are still empty (the message is left as it is); returns self."""
        if self.obsid is None and obsid is not None:
            self.obsid = str(obsid)
        if self.path is None and path is not None:
            self.path = str(path)
        if self.url is None and url is not None:
            self.url = url
        return self

    def fields(self) -> dict[str, str | None]:
        """The context as a plain dict (for status records and the API), empty fields left out."""
        out = {"obsid": self.obsid, "path": self.path, "url": self.url,
               "cause": None if self.cause is None else f"{type(self.cause).__name__}: {self.cause}"}
        return {k: v for k, v in out.items() if v is not None}


class UsageError(RxteError):
    """Bad command line, configuration or environment: the user must change something."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file problem; the message names the file and the key."""


class DataError(RxteError):
    """An input is present but unusable (corrupt FITS, tool failure, ...): needs a person."""

    kind = "data"


class NoDataError(RxteError):
    """The ObsID has nothing to extract (no file, empty GTI): reported, not a failure."""

    kind = "data"


class SiteError(RxteError):
    """The machine failed, not the data (disk full, network, node): safe to retry."""

    kind = "site"


class Interrupted(BaseException):
    """A signal asked the process to stop; carries the signal number.

    A BaseException so that no `except Exception` in extraction code swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Incomplete(RxteError):
    """Raised by a result's `raise_for_failures()` when ObsIDs failed or are missing; `.result` is that result.

    The API returns results rather than raising for failed ObsIDs (a run with
    failures still did useful work); a script that wants an exception asks for it.
    """

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result
