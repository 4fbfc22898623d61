"""The exception hierarchy: each error knows its exit code and, for ObsIDs, its kind.

The CLI maps these to one-line messages and exit codes (2 usage/config, 1 data);
the worker maps them to status records (`failed` with `error_kind` data/site, or
`no_data`). Anything else reaching the CLI is a bug and keeps its traceback.
"""
from __future__ import annotations


class RxteError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


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
