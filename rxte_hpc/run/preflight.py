"""Everything that can be checked before a task runs, checked once per command, before any task runs.

`run`, `submit`, `work` and MPI rank 0 call `preflight(config, manifest)`
before writing a single record: a problem found here would otherwise fail
every ObsID the same way (and under Slurm only after queueing). Each problem
is a UsageError (exit 2) whose one line names the configuration key. The
checks open no archive, download nothing and write nothing.

Checked: the run directory's plan is this config's (`plan.planner.check_run_dir`),
the backend can run here (`Extractor.check_available`: HEASoft, PCU/layer
lists, the filter expression), and every keV band converts to channels in
every PCA gain epoch the manifest's ObsIDs fall in (a band valid in epoch 5
can reach above the PCA range in epoch 1). The rest of the configuration
(band shapes, hardness pairs, product names) is checked when it is loaded.

What passes is a `Checked`, which the executors hand to their task runners
(pool workers and MPI ranks included) instead of checking again per task.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rxte_hpc.core.config import BandConfig, Config
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.manifest import Manifest, check_run_dir
from rxte_hpc.extract import ExtractContext, Extractor, check_backend, make_extractor
from rxte_hpc.fits.lcfile import RXTE_TIMEREF, SECONDS_PER_DAY

log = logging.getLogger(__name__)

#: Epochs are looked up a little either side of each time so that the TT/UTC difference (about a minute)
#: can only add an epoch to the check, never miss one.
_MARGIN_DAYS = 0.002


@dataclass(frozen=True)
class Checked:
    """Proof that the preflight passed for one config (by its hash) and one plan (by its manifest's task count).

    Executors pass it to `TaskRunner`, which then skips the checks; it is
    small and picklable, so the pool sends it to its workers.
    """

    config_hash: str
    backend: str
    n_tasks: int | None


def preflight(config: Config, manifest: Manifest | None = None, *, backend_checked: bool = False,
              factory: Callable[[ExtractContext], Extractor] = make_extractor) -> Checked:
    """Raise UsageError (naming the key) when the configuration cannot work for this manifest here.

    `backend_checked`: the caller already ran `check_backend` (before planning, so that a TAP query is not
    made for a backend that cannot run), so only the manifest's part is checked here.
    """
    if manifest is not None:
        check_run_dir(config, manifest)
    if not backend_checked:
        check_backend(config, factory)
    check_manifest_bands(config, manifest)
    log.debug("preflight passed: %s backend, %s", config.extract.backend,
              "no manifest" if manifest is None else f"{len(manifest.rows)} ObsIDs")
    return Checked(config.hash(), config.extract.backend, None if manifest is None else manifest.n_tasks)


def check_manifest_bands(config: Config, manifest: Manifest | None) -> None:
    """The bands against every gain epoch the manifest spans, for the backends that turn keV into channels.

    It needs nothing of this machine, so `submit` runs it even where it only warns about the backend.
    """
    if config.extract.backend in ("heasoft", "native"):  # stdprod's bands are HEASARC's own
        check_bands(config, epochs_of(manifest))


def epochs_of(manifest: Manifest | None) -> tuple[int, ...]:
    """The PCA gain epochs the manifest's ObsIDs fall in; all of them when a time is unknown."""
    from rxte_hpc.extract import std2

    every = tuple(e.number for e in std2._gain_epochs())
    if manifest is None or not manifest.rows:
        return every
    mjd = np.array([row.time_mjd for row in manifest.rows], dtype=float)
    if not np.isfinite(mjd).all():
        return every
    found: set[int] = set()
    for edge in (mjd.min() - _MARGIN_DAYS, mjd.max() + _MARGIN_DAYS):
        found.add(_epoch_at(edge, every))
    lo, hi = min(found), max(found)
    return tuple(e for e in every if lo <= e <= hi)


def _epoch_at(mjd: float, every: Sequence[int]) -> int:
    from rxte_hpc.core.errors import DataError
    from rxte_hpc.extract import std2

    try:
        return std2.gain_epoch((mjd - RXTE_TIMEREF.mjdref) * SECONDS_PER_DAY)
    except DataError:  # before launch: a wrong time, reported by the worker; check the first epoch
        return every[0]


def check_bands(config: Config, epochs: Sequence[int]) -> None:
    """Every keV band must give a channel range in each of `epochs` (UsageError naming the key)."""
    from rxte_hpc.extract import std2

    ex = config.extract
    pcu0 = std2.parse_pculist(ex.pculist) == (0,)
    for key, band in _keyed_bands(config):
        if band.energy_kev is None:
            continue
        lo, hi = (float(v) for v in band.energy_kev)
        for epoch in epochs:
            try:
                std2.energy_to_channels(lo, hi, epoch, pcu0=pcu0)
            except UsageError as exc:
                span = ", ".join(map(str, epochs))
                raise UsageError(
                    f"{config.path}: {key}: {exc} (the manifest's ObsIDs fall in gain epoch(s) {span})"
                ) from None


def _keyed_bands(config: Config) -> list[tuple[str, BandConfig]]:
    ex = config.extract
    if ex.bands:
        return [(f"extract.bands.{b.name}", b) for b in ex.bands]
    return [("extract.energy_kev", b) for b in ex.band_list()]
