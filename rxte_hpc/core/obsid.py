"""RXTE ObsIDs: the one place that knows their rules.

An ObsID is `NNNNN-TT-VV-SS[X]`: proposal, target, viewing, sequence and an
optional event-flag character (docs/science.md#obsids). ObsIDs end up in paths, shell
scripts and ADQL, so parsing is strict: exactly that pattern, nothing else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from rxte_hpc.core.errors import DataError

_OBSID_RE = re.compile(r"([0-9]{5})-([0-9]{2})-([0-9]{2})-([0-9]{2})([0-9A-Z]?)")
MAX_CYCLE = 20  # RXTE flew AO0..AO16; leave room, refuse nonsense


class InvalidObsID(DataError, ValueError):
    """A string that is not an RXTE ObsID."""


@dataclass(frozen=True, order=True)
class ObsID:
    """A validated ObsID; `str()` gives it back exactly as the archive spells it."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not _OBSID_RE.fullmatch(self.text):
            raise InvalidObsID(f"not an RXTE ObsID (NNNNN-TT-VV-SS[X]): {str(self.text)!r}")

    @classmethod
    def parse(cls, value: object) -> "ObsID":
        """Parse a value from a table or the command line (surrounding blanks allowed)."""
        if isinstance(value, ObsID):
            return value
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="replace")
        if not isinstance(value, str):
            raise InvalidObsID(f"not an RXTE ObsID (NNNNN-TT-VV-SS[X]): {str(value)!r}")
        return cls(value.strip())

    def __str__(self) -> str:
        return self.text

    @property
    def proposal(self) -> str:
        """The five-digit proposal number as the archive's `P<prnb>` directory spells it."""
        return self.text[:5]

    @property
    def prnb(self) -> int:
        return int(self.text[:5])

    @property
    def flag(self) -> str:
        """The 15th character (event flag), or '' for a plain pointing."""
        return self.text[14:]

    @property
    def short(self) -> str:
        """The 14-character form that xtemaster stores."""
        return self.text[:14]

    @property
    def nodash(self) -> str:
        """The form used in standard-product file names (`xp<nodash>_n2a.lc.gz`)."""
        return self.text.replace("-", "")

    def archive_dir(self, cycle: int) -> PurePosixPath:
        """`AO<cycle>/P<prnb>/<obsid>` relative to the archive root."""
        return PurePosixPath(f"AO{check_cycle(cycle)}", f"P{self.proposal}", self.text)

    def filter_file_name(self) -> str:
        return f"x{self.nodash}.xfl.gz"

    def stdprod_lc_name(self, band: str) -> str:
        if band not in STDPROD_BANDS:
            raise ValueError(f"standard-product band must be one of {sorted(STDPROD_BANDS)}, not {band!r}")
        return f"xp{self.nodash}_n2{band}.lc.gz"


#: PCA standard-product light-curve bands (docs/science.md#obsids): letter -> keV range.
STDPROD_BANDS = {"a": (2.0, 9.0), "b": (2.0, 4.0), "c": (4.0, 9.0), "d": (9.0, 20.0), "e": (20.0, 40.0)}


def check_cycle(cycle: object) -> int:
    """An AO cycle number as an int in 0..MAX_CYCLE (it ends up in a path)."""
    try:
        number = int(cycle)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InvalidObsID(f"AO cycle is not a whole number: {str(cycle)!r}") from None
    if number != cycle and str(cycle).strip() != str(number):
        raise InvalidObsID(f"AO cycle is not a whole number: {str(cycle)!r}")
    if not 0 <= number <= MAX_CYCLE:
        raise InvalidObsID(f"AO cycle out of range 0..{MAX_CYCLE}: {cycle!r}")
    return number


def is_pointing(obsid: ObsID) -> bool:
    """False for slews and scans (flags A, Z, S, R), which have no pointed data."""
    return obsid.flag not in {"A", "Z", "S", "R"}
