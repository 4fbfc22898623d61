"""Everything that can be checked before a task runs, checked before any task runs.

`run`, `submit`, `work` and MPI rank 0 call `preflight(config, manifest)`
before writing a single record: a problem found here would otherwise fail
every ObsID the same way (and under Slurm only after queueing). Each problem
is a UsageError (exit 2) whose one line names the configuration key.

Checked: the backend can run here (`Extractor.check_available`: HEASoft,
prepared products, PCU/layer lists, the filter expression), and every keV
band converts to channels in every PCA gain epoch the manifest's ObsIDs fall
in (a band valid in epoch 5 can reach above the PCA range in epoch 1).
The rest of the configuration (band shapes, hardness pairs) is checked when it
is loaded.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from rxte_hpc.core.config import BandConfig, Config
from rxte_hpc.core.errors import UsageError
from rxte_hpc.core.manifest import Manifest
from rxte_hpc.extract import Extractor, check_backend

log = logging.getLogger(__name__)

#: RXTE MET zero (MJDREF, TT) in days; epochs are looked up a little either side of each time
#: so that the TT/UTC difference (about a minute) can only add an epoch to the check, never miss one.
_MJDREF = 49353.000696574074
_MARGIN_DAYS = 0.002


def preflight(config: Config, manifest: Manifest | None = None, extractor: Extractor | None = None) -> None:
    """Raise UsageError (naming the key) when the configuration cannot work for this manifest here."""
    if extractor is None:
        extractor = check_backend(config)
    else:
        extractor.check_available()
    check_manifest_bands(config, manifest)


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
        return std2.gain_epoch((mjd - _MJDREF) * 86400.0)
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
