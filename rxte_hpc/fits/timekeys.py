"""FITS time keywords of RXTE files: the zero point, TIMEZERO, TSTART/TSTOP, TIMEDEL, TIMEUNIT, in every form.

The time half of `lcfile` (which re-exports all of it): `TIMEZERO` or
`TIMEZERI/TIMEZERF`, `MJDREF` or `MJDREFI/MJDREFF`, `TSTART` or
`TSTARTI/TSTARTF`, `TIMEUNIT` s or d. Reading only `TSTART`/`TIMEZERO` on
real saextrct output silently shifts times (docs/science.md#time), hence the care here.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rxte_hpc.core.errors import DataError

#: RXTE's reference epoch: 1994-01-01T00:00:00 UTC expressed in TT (docs/science.md#time).
RXTE_MJDREFI = 49353
RXTE_MJDREFF = 6.965740740000e-04
SECONDS_PER_DAY = 86400.0

_MJD_ZERO = dt.datetime(1858, 11, 17)


@dataclass(frozen=True)
class TimeRef:
    """The zero point of a time axis: MJDREFI + MJDREFF in the time system TIMESYS."""

    mjdrefi: int = RXTE_MJDREFI
    mjdreff: float = RXTE_MJDREFF
    timesys: str = "TT"

    @property
    def mjdref(self) -> float:
        return self.mjdrefi + self.mjdreff

    def seconds_to(self, other: "TimeRef") -> float:
        """Offset to add to times on this reference to put them on `other`.

        Integer and fractional days are differenced separately so that no
        microseconds are lost to a float MJD of ~5e4 days.
        """
        return (self.mjdrefi - other.mjdrefi) * SECONDS_PER_DAY + (self.mjdreff - other.mjdreff) * SECONDS_PER_DAY

    def mjd(self, seconds: np.ndarray | float) -> np.ndarray | float:
        """Times (s since this reference) as MJD in TIMESYS, for plots and summaries."""
        return self.mjdrefi + (self.mjdreff + np.asarray(seconds, dtype=float) / SECONDS_PER_DAY)

    def isot(self, seconds: float) -> str:
        """A time (s since this reference) as 'YYYY-MM-DDThh:mm:ss' in TIMESYS (DATE-OBS, DATE-END)."""
        # truncated to the second, as strftime does (a start stamp never moves into the next second)
        when = _MJD_ZERO + dt.timedelta(days=self.mjdrefi, seconds=self.mjdreff * SECONDS_PER_DAY + float(seconds))
        return when.strftime("%Y-%m-%dT%H:%M:%S")


RXTE_TIMEREF = TimeRef()


def _split(header: Mapping[str, Any], name: str, short: str) -> float | None:
    """Read `NAME` or its split form `SHORTI`+`SHORTF` (e.g. TIMEZERO / TIMEZERI+TIMEZERF)."""
    if name in header:
        return float(header[name])
    if short + "I" in header or short + "F" in header:
        return float(header.get(short + "I", 0)) + float(header.get(short + "F", 0.0))
    return None


def time_unit_seconds(header: Mapping[str, Any]) -> float:
    """Seconds per unit of TIME/TIMEZERO/TSTART (TIMEUNIT 's' or 'd')."""
    unit = str(header.get("TIMEUNIT", "s")).strip().lower()
    if unit in ("s", "sec", "second", "seconds"):
        return 1.0
    if unit in ("d", "day", "days"):
        return SECONDS_PER_DAY
    raise DataError(f"unsupported TIMEUNIT {unit!r}")


def read_time_ref(header: Mapping[str, Any]) -> TimeRef:
    """MJDREFI/MJDREFF or MJDREF; RXTE's reference when a file says nothing."""
    timesys = str(header.get("TIMESYS", "TT")).strip() or "TT"
    if "MJDREFI" in header or "MJDREFF" in header:
        return TimeRef(int(header.get("MJDREFI", 0)), float(header.get("MJDREFF", 0.0)), timesys)
    if "MJDREF" in header:
        value = float(header["MJDREF"])
        whole = math.floor(value)
        frac = value - whole
        # A plain MJDREF that is RXTE's reference (to float precision) is taken as exactly it.
        if whole == RXTE_MJDREFI and abs(frac - RXTE_MJDREFF) < 1e-9:
            frac = RXTE_MJDREFF
        return TimeRef(int(whole), frac, timesys)
    return TimeRef(timesys=timesys)


def read_timezero(header: Mapping[str, Any]) -> float:
    """TIMEZERO (or TIMEZERI+TIMEZERF) in seconds; 0 when absent."""
    value = _split(header, "TIMEZERO", "TIMEZER")
    return 0.0 if value is None else value * time_unit_seconds(header)


def read_tstart(header: Mapping[str, Any]) -> float | None:
    """TSTART (or TSTARTI+TSTARTF) in seconds, on the file's raw scale (TIMEZERO not added)."""
    value = _split(header, "TSTART", "TSTART")
    return None if value is None else value * time_unit_seconds(header)


def read_tstop(header: Mapping[str, Any]) -> float | None:
    value = _split(header, "TSTOP", "TSTOP")
    return None if value is None else value * time_unit_seconds(header)


def read_timedel(header: Mapping[str, Any]) -> float | None:
    """TIMEDEL (or DELTAT, the ABC's name for it) in seconds."""
    for key in ("TIMEDEL", "DELTAT"):
        if key in header:
            return float(header[key]) * time_unit_seconds(header)
    return None


def absolute_times(raw: np.ndarray, header: Mapping[str, Any]) -> np.ndarray:
    """Column values on the raw scale -> seconds since the file's TimeRef, TIMEZERO added."""
    return np.asarray(raw, dtype=np.float64) * time_unit_seconds(header) + read_timezero(header)


def bin_start_times(raw: np.ndarray, header: Mapping[str, Any], where: str, extname: str) -> tuple[np.ndarray, float]:
    """A light curve's bin starts (TIMEZERO added, TIMEPIXR taken off) and its TIMEDEL, for every reader.

    No TIMEDEL, or a TIME that is not finite, is a DataError naming the file
    and extension: such a curve is never merged.
    """
    timedel = read_timedel(header)
    if timedel is None:
        raise DataError(f"{where}: light curve has no TIMEDEL")
    time = absolute_times(raw, header)
    bad_time = int(np.count_nonzero(~np.isfinite(time)))
    if bad_time:
        raise DataError(f"{where}: extension {extname} has {bad_time} non-finite TIME value(s)")
    timepixr = float(header.get("TIMEPIXR", 0.0))
    if timepixr:
        time = time - timepixr * timedel
    return time, timedel


def time_cards(
    ref: TimeRef,
    *,
    tstart: float,
    tstop: float,
    timezero: float = 0.0,
    timedel: float | None = None,
    split: bool = False,
    timepixr: float | None = 0.0,
) -> list[tuple[str, Any, str]]:
    """Header cards for a time axis, in plain (`TSTART`) or split (`TSTARTI/F`) form.

    Raw RXTE archive files use the plain form with TIMEZERO ~ 3.378 s;
    saextrct output uses the split form with TIMEZERI = TIMEZERF = 0.
    """
    cards: list[tuple[str, Any, str]] = [
        ("TIMESYS", ref.timesys, "time system"),
        ("TIMEUNIT", "s", "unit of TIME, TSTART, TSTOP, TIMEZERO"),
        ("MJDREFI", int(ref.mjdrefi), "integer part of MJD reference"),
        ("MJDREFF", float(ref.mjdreff), "fractional part of MJD reference"),
    ]
    if timepixr is not None:
        cards.append(("TIMEPIXR", float(timepixr), "time stamps give the leading edge of a bin"))
    if split:
        for name, value, what in (("TSTART", tstart, "start"), ("TSTOP", tstop, "stop"), ("TIMEZER", timezero, "zero")):
            whole = math.floor(value)
            cards.append((name + "I", int(whole), f"integer part of {what} time"))
            cards.append((name + "F", float(value - whole), f"fractional part of {what} time"))
    else:
        cards += [
            ("TSTART", float(tstart), "start time"),
            ("TSTOP", float(tstop), "stop time"),
            ("TIMEZERO", float(timezero), "clock correction added to TIME"),
        ]
    if timedel is not None:
        cards.append(("TIMEDEL", float(timedel), "bin size (s)"))
    return cards
