"""The simulated campaign itself: which ObsIDs exist, when and how long, before any file is written.

`simulate.simulate_archive` writes these ObsIDs' files; a dry-run plan of a
simulated archive that does not exist yet reads them from here and writes nothing.
"""
from __future__ import annotations

import numpy as np

from rxte_hpc.core.manifest import Observation
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.sim.prepared import TIMEDEL

TARGET_NAME = "ETA_CAR"
TARGET_RA, TARGET_DEC = 161.2647, -59.6844
FIRST_MJD, LAST_MJD = 50200.0, 55900.0  # 1996-04 .. 2011-12


BROKEN_KINDS = {
    "no_std2": "no Standard-2 file (pca/ has no FS4a)",
    "filtered_out": "every filter-file row fails (ELV > 4) && (OFFSET < 0.1)",
    "corrupt": "truncated gzip: pca/FS4a_*.gz, stdprod n2a and prepared files",
}


def cycle_of(mjd: float) -> int:
    """AO cycle of a date: AO1 from early 1996, one per year, AO16 until the end in 2012."""
    return int(min(16, max(1, 1 + (mjd - 50100.0) // 365.25)))


def proposal_of(cycle: int) -> int:
    """An Eta Car monitoring proposal number whose first digit tracks the cycle up to AO9."""
    if cycle <= 9:
        return cycle * 10000 + 19
    return {10: 93002, 11: 94003, 12: 95002, 13: 96003, 14: 95366, 15: 96366, 16: 96401}[cycle]


def _exposures(rng: np.random.Generator, n: int) -> np.ndarray:
    """~100x spread: some 0.1-0.5 ks snapshots, most 1-3 ks, a few 6-9 ks deep looks.

    The deep looks stay below a mean 8-ObsID task (~9 ks), as in the real
    monitoring campaign, so exposure balancing is limited by the planner and
    not by one ObsID longer than a whole task.
    """
    kind = rng.random(n)
    exp = np.exp(rng.normal(np.log(1100.0), 0.3, n)).clip(750, 3000)
    exp = np.where(kind < 0.08, rng.uniform(96, 500, n), exp)
    exp = np.where(kind > 0.985, rng.uniform(6000, 9000, n), exp)
    return np.round(exp / TIMEDEL) * TIMEDEL


def campaign(n_obs: int, seed: int) -> list[Observation]:
    """The ObsIDs, dates and exposures of an Eta-Carinae-like monitoring campaign, as xtemaster would list them."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    mjds = np.sort(rng.uniform(FIRST_MJD, LAST_MJD, n_obs))
    exposures = _exposures(rng, n_obs)
    counters: dict[int, int] = {}
    out = []
    for mjd, exposure in zip(mjds, exposures):
        cycle = cycle_of(mjd)
        prnb = proposal_of(cycle)
        j = counters.get(prnb, 0)
        counters[prnb] = j + 1
        obsid = ObsID(f"{prnb:05d}-01-{j // 100:02d}-{j % 100:02d}")
        out.append(Observation(obsid, cycle, TARGET_NAME, round(float(mjd), 6), float(exposure), TARGET_RA, TARGET_DEC))
    return out


def _broken_obs(observations: list[Observation]) -> list[tuple[Observation, str]]:
    extra = []
    for i, kind in enumerate(BROKEN_KINDS):
        mjd = 53000.0 + 111.0 * i
        cycle = cycle_of(mjd)
        obsid = ObsID(f"{proposal_of(cycle):05d}-02-{i:02d}-00")
        extra.append((Observation(obsid, cycle, TARGET_NAME, mjd, 1200.0, TARGET_RA, TARGET_DEC), kind))
    return extra



def planned_observations(n_obs: int, seed: int, with_broken: bool = False) -> list[tuple[Observation, str | None]]:
    """The ObsIDs `simulate_archive` would write, with the broken kind of each (None when good), writing nothing."""
    work: list[tuple[Observation, str | None]] = [(obs, None) for obs in campaign(n_obs, seed)]
    if with_broken:
        work += _broken_obs([w[0] for w in work])
    return work
