"""Standard-2 channel maps, energy bands and PCU/layer column selection.

saextrct's `chmin`/`chmax` are ABSOLUTE PCA channels (0-255), while a Standard-2
spectrum has 129 bins that group those channels (docs/science.md#standard-2-data). This
module turns a requested band (channels or keV) into the set of Standard-2 bins
saextrct would sum, and names the spectral columns for a PCU/layer selection.
Everything here is pure computation on small tables; the energy tables are the
packaged tables (rxte_hpc/data/README.md says where they come from).
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from rxte_hpc.core.errors import DataError, UsageError

log = logging.getLogger(__name__)

N_ABS_CHANNELS = 256
#: The documented Standard-2 grouping (docs/science.md#standard-2-data): 1+49+41+34+3+1 = 129 bins.
DEFAULT_CPIX = "(0~4),(5:53),(54~135;2),(136~237;3),(238~249;4),(250~255)"

_ALL_PCUS = (0, 1, 2, 3, 4)
_ALL_LAYERS = (1, 2, 3)

_CPIX_ELEMENT = re.compile(r"(\d+)(?:([~:])(\d+)(?:;(\d+))?)?")


def parse_cpix(cpix: str) -> np.ndarray:
    """The [lo, hi] absolute channels of every Standard-2 bin described by a CPIX string.

    Elements are comma-separated, each optionally in parentheses: `a` (one
    channel), `a~b` (a..b summed into one bin), `a:b` (one bin per channel),
    `a~b;n` (a..b in bins of n). Real product headers write the unparenthesised
    form (`0~4,5:53,(54~135;2),...`), the documentation the parenthesised one;
    both mean the same. Bins must ascend without overlap inside 0-255, because
    saextrct's overlap test assumes it; anything else is a DataError naming the
    string, since it comes from a file header.
    """
    def bad(why: str) -> DataError:
        return DataError(f"malformed CPIX channel grouping {cpix!r}: {why}")

    if not isinstance(cpix, str) or not cpix.strip():
        raise bad("empty")
    bins: list[tuple[int, int]] = []
    for raw in re.sub(r"\s+", "", cpix).split(","):
        element = raw
        if element.startswith("(") or element.endswith(")"):
            if not (element.startswith("(") and element.endswith(")")):
                raise bad(f"unbalanced parentheses in {raw!r}")
            element = element[1:-1]
        match = _CPIX_ELEMENT.fullmatch(element)
        if not match:
            raise bad(f"cannot read element {raw!r}")
        lo = int(match.group(1))
        op, hi_text, step_text = match.group(2), match.group(3), match.group(4)
        hi = int(hi_text) if hi_text is not None else lo
        if hi < lo:
            raise bad(f"element {raw!r} runs backwards")
        if step_text is not None and op != "~":
            raise bad(f"element {raw!r}: a group size ';n' needs '~'")
        if op is None or op == "~":
            step = int(step_text) if step_text is not None else hi - lo + 1
        else:
            step = 1
        if step <= 0 or (hi - lo + 1) % step:
            raise bad(f"element {raw!r}: {hi - lo + 1} channels do not split into groups of {step}")
        bins.extend((start, start + step - 1) for start in range(lo, hi + 1, step))
    result = np.array(bins, dtype=np.int64).reshape(-1, 2)
    if result[0, 0] < 0 or result[-1, 1] >= N_ABS_CHANNELS:
        raise bad(f"channels outside 0-{N_ABS_CHANNELS - 1}")
    if np.any(result[1:, 0] <= result[:-1, 1]):
        raise bad("bins overlap or are out of order")
    return result


DEFAULT_CHANNEL_MAP = parse_cpix(DEFAULT_CPIX)
DEFAULT_CHANNEL_MAP.setflags(write=False)


def channel_map_from_header(header: Mapping[str, Any], column_index: int) -> np.ndarray:
    """The channel map of table column `column_index` (1-based, as in TTYPEn).

    Read from `1CPIX<n>` (saextrct's `mCPIXn`), or `CPIX<n>`/`CPIX` as some
    tools write it. A file without one gets the documented grouping; that is
    the normal case for the archive's Standard-2, so it is logged at debug, not
    warned about.
    """
    for key in (f"1CPIX{column_index}", f"CPIX{column_index}", "CPIX"):
        if key in header:
            return parse_cpix(str(header[key]))
    log.debug("no 1CPIX%d keyword: using the documented Standard-2 grouping", column_index)
    return DEFAULT_CHANNEL_MAP


def bins_for_channels(channel_map: np.ndarray, chmin: int | None, chmax: int | None) -> np.ndarray:
    """Which Standard-2 bins saextrct sums for absolute channels chmin..chmax.

    A bin is kept WHOLE when it overlaps the range (hi_b >= chmin and
    lo_b <= chmax), so the effective band can be wider than asked (docs/science.md#standard-2-data
    Q4). None means INDEF: no limit on that side.
    """
    channel_map = np.asarray(channel_map)
    if chmin is not None and chmax is not None and chmin > chmax:
        raise UsageError(f"channel range {chmin}-{chmax} is empty: chmin must not exceed chmax")
    keep = np.ones(len(channel_map), dtype=bool)
    if chmin is not None:
        keep &= channel_map[:, 1] >= chmin
    if chmax is not None:
        keep &= channel_map[:, 0] <= chmax
    return keep


@dataclass(frozen=True)
class _GainEpoch:
    number: int
    start_met: float
    columns: tuple[str, ...]


@lru_cache(maxsize=None)
def _gain_epochs() -> tuple[_GainEpoch, ...]:
    """The packaged epoch table, read once on first use."""
    text = resources.files("rxte_hpc").joinpath("data/pca_gain_epochs.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return tuple(
        _GainEpoch(int(r["epoch"]), float(r["start_met_s"]), tuple(r["energy_columns"].split(";"))) for r in rows
    )


@lru_cache(maxsize=None)
def _energy_table() -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
    """(channel map from the table, {energy column: keV per Std2 bin}), read once."""
    text = resources.files("rxte_hpc").joinpath("data/pca_std2_energy.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    channel_map = np.array([[int(r["abs_chan_lo"]), int(r["abs_chan_hi"])] for r in rows], dtype=np.int64)
    energies = {
        name: np.array([float(r[name]) for r in rows]) for name in rows[0] if name.endswith("_kev")
    }
    channel_map.setflags(write=False)
    for values in energies.values():
        values.setflags(write=False)
    return channel_map, MappingProxyType(energies)


def gain_epoch(met: float) -> int:
    """The PCA gain epoch (1-5) of a time in RXTE MET seconds; an epoch starts at its boundary.

    A time before launch means a wrong time scale (relative times, days), so it
    is refused rather than silently mapped to epoch 1.
    """
    epochs = _gain_epochs()
    if not np.isfinite(met) or met < epochs[0].start_met:
        raise DataError(
            f"time {met} s is before RXTE's first gain epoch (MET {epochs[0].start_met:.0f}): "
            "expected RXTE mission elapsed time in seconds"
        )
    number = epochs[0].number
    for epoch in epochs:
        if met >= epoch.start_met:
            number = epoch.number
    return number


def _energy_column(epoch: int, pcu0: bool) -> str:
    for item in _gain_epochs():
        if item.number == epoch:
            if len(item.columns) > 1:
                # Epoch 5 lists PCU0's own column first (it lost its propane layer).
                return item.columns[0] if pcu0 else item.columns[1]
            return item.columns[0]
    raise UsageError(f"unknown PCA gain epoch {epoch}: expected 1-{len(_gain_epochs())}")


def energy_to_channels(lo_kev: float, hi_kev: float, epoch: int, pcu0: bool = False) -> tuple[int, int]:
    """Absolute channel range (chmin, chmax) for the band lo_kev-hi_kev in a gain epoch: the one rule.

    The rule (ENERGY_RULE, written into every keV band's header): each value
    of HEASARC's nominal energy-channel table is the UPPER edge of its
    Standard-2 bin (bin k covers (E[k-1], E[k]], bin 0 from 0 keV; see the
    data README), and each band edge snaps to the NEAREST bin boundary (ties
    to the lower one). Against HEASARC's own 2-9 keV standard products
    (tests/extract/test_std2.py reads them) it gives their 5-24 in epoch 3 and 5-21 in
    epoch 5, and 5-20 in epoch 4 where the product says 5-21: a known
    one-channel difference (no single snapping rule over the nominal table
    reproduces all three; the gain also drifts inside an epoch), recorded in
    the tests and README, never special-cased here. `pcu0` picks PCU0's own
    column in epoch 5 (see `pcu0_energies` for when).
    """
    band = f"{lo_kev:g}-{hi_kev:g} keV"
    if not (np.isfinite(lo_kev) and np.isfinite(hi_kev)) or lo_kev < 0 or hi_kev <= lo_kev:
        raise UsageError(f"energy band {band} is empty or negative: give low < high, both >= 0 keV")
    channel_map, energies = _energy_table()
    upper = energies[_energy_column(epoch, pcu0)]
    if hi_kev > upper[-1]:
        raise UsageError(
            f"energy band {band} reaches above the PCA range in gain epoch {epoch} "
            f"(top channel ends at {upper[-1]:g} keV)"
        )
    boundaries = np.concatenate([[0.0], upper])
    first = int(np.argmin(np.abs(boundaries - lo_kev)))
    stop = int(np.argmin(np.abs(boundaries - hi_kev)))
    if stop <= first:
        raise UsageError(
            f"energy band {band} is narrower than one Standard-2 bin in gain epoch {epoch}: widen it or give channels"
        )
    return int(channel_map[first, 0]), int(channel_map[stop - 1, 1])


def channels_to_kev(chmin: int, chmax: int, epoch: int, pcu0: bool = False) -> tuple[float, float]:
    """Nominal keV of an absolute channel range in a gain epoch: the edges of the Standard-2 bins holding chmin and chmax.

    The same nominal table and bin convention as `energy_to_channels` (bin k
    covers (E[k-1], E[k]]): what a channel band means in keV, for headers and
    plot titles; it changes from epoch to epoch as the gain did.
    """
    channel_map, energies = _energy_table()
    upper = energies[_energy_column(epoch, pcu0)]
    first = int(np.searchsorted(channel_map[:, 1], chmin))
    last = int(np.searchsorted(channel_map[:, 1], chmax))
    return (0.0 if first == 0 else float(upper[first - 1])), float(upper[min(last, len(upper) - 1)])


#: The keV -> channel rule and the PCU rule, as header comments say them (<= 68 characters each).
ENERGY_RULE = "NOMINAL e-c table; band edges to nearest Std2 bin edge"
CHANNEL_RULE = "NOMINAL e-c table; keV of the Std2 bins holding CHMIN/CHMAX"
PCU_RULE = "one chmin/chmax for all PCUs; PCU0 e-c column only if PCU0 alone"


def pcu0_energies(pcus: Sequence[int]) -> bool:
    """The one PCU0 rule, for both backends: PCU0's own epoch-5 energy column only when PCU0 is the only PCU.

    pcaextlc2 passes ONE chmin/chmax to saextrct for every column it sums
    (docs/science.md#pcaextlc2-the-light-curve), so a band has one channel range whatever PCUs are
    summed; in epoch 5 it comes from the PCUs 1-4 column (HEASARC's products
    say 5-21 for 2-9 keV) unless PCU0 alone is summed, whose own gain then
    applies (5-20).
    """
    return tuple(sorted(set(int(p) for p in pcus))) == (0,)


def band_keywords(band: "ChannelBand", energy_kev: Sequence[float] | None) -> dict[str, tuple[Any, str]]:
    """Header keywords of one band, the same for both backends: channels, keV edges, epoch and the rules."""
    out: dict[str, tuple[Any, str]] = {
        "CHMIN": (band.chmin, "lowest absolute PCA channel (all PCUs)"),
        "CHMAX": (band.chmax, "highest absolute PCA channel (all PCUs)"),
    }
    if energy_kev is not None:
        out["E_MIN"] = (float(energy_kev[0]), "[keV] lower edge of the band asked for")
        out["E_MAX"] = (float(energy_kev[1]), "[keV] upper edge of the band asked for")
        out["GAINEPOC"] = (int(band.epoch or 0), "PCA gain epoch of the keV -> channel table")
        out["ECHANRUL"] = (ENERGY_RULE, "")
        out["PCUCHRUL"] = (PCU_RULE, "")
    elif band.nominal_kev is not None:
        out["E_MIN"] = (band.nominal_kev[0], "[keV] nominal low edge of CHMIN's Std2 bin")
        out["E_MAX"] = (band.nominal_kev[1], "[keV] nominal high edge of CHMAX's Std2 bin")
        out["GAINEPOC"] = (int(band.epoch or 0), "PCA gain epoch of the nominal e-c table")
        out["ECHANRUL"] = (CHANNEL_RULE, "")
    return out


@dataclass(frozen=True)
class ChannelBand:
    """A resolved band in absolute channels, and what it was asked as (for headers and logs)."""

    chmin: int
    chmax: int
    epoch: int | None
    source: str
    #: A channel band's nominal keV in its epoch (None when no time was given, or for a keV band: that is asked).
    nominal_kev: tuple[float, float] | None = None


def resolve_band(
    *,
    chmin: int | None = None,
    chmax: int | None = None,
    energy_kev: tuple[float, float] | Sequence[float] | None = None,
    met: float | None,
    pcu0: bool = False,
) -> ChannelBand:
    """One band from either absolute channels or keV; `met` picks the gain epoch for keV.

    Channels pass through (INDEF = the full 0-255) and carry no epoch, since
    they mean the same in every epoch. Giving both forms is refused rather than
    guessing which one the user meant.
    """
    if energy_kev is not None:
        if chmin is not None or chmax is not None:
            raise UsageError("give either chmin/chmax or an energy band in keV, not both")
        try:
            lo_kev, hi_kev = (float(v) for v in energy_kev)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"energy band {energy_kev!r} must be two numbers (low, high) in keV") from exc
        if met is None:
            raise UsageError(f"energy band {lo_kev:g}-{hi_kev:g} keV needs a time to choose the gain epoch")
        epoch = gain_epoch(met)
        lo, hi = energy_to_channels(lo_kev, hi_kev, epoch, pcu0)
        which = " PCU0" if pcu0 and epoch == 5 else ""
        return ChannelBand(lo, hi, epoch, f"energy {lo_kev:g}-{hi_kev:g} keV epoch {epoch}{which}")
    lo = 0 if chmin is None else _channel(chmin, "chmin")
    hi = N_ABS_CHANNELS - 1 if chmax is None else _channel(chmax, "chmax")
    if lo > hi:
        raise UsageError(f"channel range {lo}-{hi} is empty: chmin must not exceed chmax")
    if met is None or not np.isfinite(met) or met < _gain_epochs()[0].start_met:
        return ChannelBand(lo, hi, None, "channels")  # channels need no epoch; without one there is no nominal keV
    epoch = gain_epoch(met)  # channels mean the same in every epoch; only their nominal keV changes
    return ChannelBand(lo, hi, epoch, "channels", channels_to_kev(lo, hi, epoch, pcu0))


def _channel(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"{name}={value!r} must be an absolute PCA channel, an integer 0-{N_ABS_CHANNELS - 1}")
    if not 0 <= value < N_ABS_CHANNELS:
        raise UsageError(f"{name}={value} is outside the absolute PCA channels 0-{N_ABS_CHANNELS - 1}")
    return int(value)


def spectral_columns(pculist: Sequence[int], layerlist: Sequence[int]) -> list[str]:
    """Standard-2 anode spectra for the selection: X{l}LSpecPcu{p}, X{l}RSpecPcu{p}, PCU-major."""
    return [f"X{layer}{side}SpecPcu{pcu}" for pcu in pculist for layer in layerlist for side in "LR"]


def _parse_list(value: Any, name: str, allowed: tuple[int, ...]) -> tuple[int, ...]:
    """'ALL', 'a,b', 'a-b' (mixed freely) or a sequence of ints -> sorted unique tuple."""
    lo_, hi_ = allowed[0], allowed[-1]
    hint = f"{name} must be ALL or numbers {lo_}-{hi_} like '{lo_},{hi_}' or '{lo_}-{hi_}'"
    items: list[int] = []
    if isinstance(value, str):
        text = value.strip()
        if text.upper() == "ALL":
            return allowed
        for part in text.split(","):
            match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not match:
                raise UsageError(f"cannot read {name} {value!r}: {hint}")
            lo = int(match.group(1))
            hi = int(match.group(2)) if match.group(2) is not None else lo
            if hi < lo:
                raise UsageError(f"{name} {value!r}: range {part.strip()} runs backwards")
            items.extend(range(lo, hi + 1))
    else:
        try:
            values = list(value)
        except TypeError as exc:
            raise UsageError(f"cannot read {name} {value!r}: {hint}") from exc
        for item in values:
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                raise UsageError(f"cannot read {name} {value!r}: {item!r} is not an integer; {hint}")
            items.append(int(item))
    if not items:
        raise UsageError(f"{name} {value!r} is empty: {hint}")
    outside = sorted({i for i in items if i not in allowed})
    if outside:
        raise UsageError(f"{name} {value!r} has {outside}, outside {allowed[0]}-{allowed[-1]}")
    return tuple(sorted(set(items)))


def parse_pculist(value: str | Sequence[int]) -> tuple[int, ...]:
    """PCUs as pcaextlc2 takes them ('ALL' = 0-4), validated, sorted, without repeats."""
    return _parse_list(value, "pculist", _ALL_PCUS)


def parse_layerlist(value: str | Sequence[int]) -> tuple[int, ...]:
    """Xenon layers ('ALL' = 1-3), validated, sorted, without repeats.

    pcaextlc2 also takes explicit anodes (X1L,...); the extractor selects whole
    layers only, so those are refused with the accepted forms.
    """
    return _parse_list(value, "layerlist", _ALL_LAYERS)
