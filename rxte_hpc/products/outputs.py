"""Writing a target's merged products: the OGIP light curve per band (with its OBSIDS extension) and the figure.

`gather.py` decides what to merge; this module only turns a merged curve and
the fate of each ObsID (`ObsOutcome`) into files, so both stay readable.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from astropy.io import fits

from rxte_hpc.core.config import BandConfig, Config
from rxte_hpc.core.errors import SiteError
from rxte_hpc.fits.lcfile import LightCurve, lightcurve_hdulist
from rxte_hpc.products import headers
from rxte_hpc.products.hardness import HardnessCurve, write_hdul
from rxte_hpc.products.headers import band_text
from rxte_hpc.products.merge import MergedCurve

__all__ = ["ObsOutcome", "obsids_hdu", "plot_products", "write_merged"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObsOutcome:
    """One manifest ObsID's fate in this gather (one row of the OBSIDS extension)."""

    obsid: str
    task: int
    state: str  # used | failed | missing | no_data
    error: str = ""
    n_rows: int = 0
    exposure: float = float("nan")  # EXPOSURE (s) of the ObsID's light curve, NaN when not used


def write_merged(
    target: Path, merged: MergedCurve, band: BandConfig, provenance: Mapping[str, Any],
    outcomes: Sequence[ObsOutcome], config: Config,
) -> None:
    primary = {**provenance, **headers.band_keywords(band, config, merged.curve.keywords)}
    primary["N_ROWS"] = (merged.n_rows, "rows in the merged light curve")
    primary["N_NAN"] = (merged.n_nan, "rows with a NaN rate (no PCU on), kept")
    primary["OVERLAPS"] = (merged.n_overlap_rows, "row pairs of two ObsIDs in one time bin, kept")
    on_rate = {k: v for k, v in primary.items() if k in ("CHMIN", "CHMAX", "E_MIN", "E_MAX", "BAND", "BANDNAME")}
    curve = dataclasses.replace(merged.curve, keywords={**merged.curve.keywords, **on_rate})
    hdul = lightcurve_hdulist([curve], primary, extra_hdus=[obsids_hdu(outcomes, merged.channels)])
    for a, b in merged.overlaps[:50]:
        hdul[0].header.add_comment(f"overlap: ObsIDs {a} and {b} have rows in the same time bin")
    write_hdul(target, hdul)


def obsids_hdu(outcomes: Sequence[ObsOutcome], channels: Mapping[str, tuple[int, int, int]]) -> fits.BinTableHDU:
    chan = np.array([channels.get(o.obsid, (-1, -1, -1)) for o in outcomes], dtype=np.int64).reshape(-1, 3)
    cols = [
        fits.Column("OBSID", "16A", array=[o.obsid for o in outcomes]),
        fits.Column("TASK", "K", array=np.array([o.task for o in outcomes], dtype=np.int64)),
        fits.Column("STATE", "8A", array=[o.state for o in outcomes]),
        fits.Column("N_ROWS", "K", array=np.array([o.n_rows for o in outcomes], dtype=np.int64)),
        fits.Column("EXPOSURE", "D", unit="s", array=np.array([o.exposure for o in outcomes], dtype=np.float64)),
        fits.Column("CHMIN", "K", null=-1, array=chan[:, 0]),
        fits.Column("CHMAX", "K", null=-1, array=chan[:, 1]),
        fits.Column("GAINEPOC", "K", null=-1, array=chan[:, 2]),
        fits.Column("ERROR", f"{max([1, *(len(o.error) for o in outcomes)])}A", array=[o.error for o in outcomes]),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="OBSIDS")
    hdu.header["COMMENT"] = "every manifest ObsID: used, failed, missing or no_data, with the error"
    hdu.header["COMMENT"] = "EXPOSURE, CHMIN, CHMAX, GAINEPOC: the ObsID's curve in this band (-1/NaN: none)"
    return hdu


def plot_products(
    target: Path, merged: Mapping[str, MergedCurve], ratios: Sequence[HardnessCurve],
    outcomes: Sequence[ObsOutcome], bands: Sequence[BandConfig], target_name: str,
) -> Path | None:
    """The figure; a plotting failure is logged and leaves the merged files valid."""
    from rxte_hpc.products.plot import ExposurePoints, Series, plot_lightcurves

    def series(label: str, lc: LightCurve) -> Series:
        return Series(label, np.asarray(lc.ref.mjd(lc.time)), lc.rate, lc.error, lc.timedel)

    first = merged[bands[0].name]
    unit = headers.rate_unit(first.curve)
    panels = [series(f"{b.name}: {band_text(merged[b.name].curve.keywords, bands, b.name)}\n{unit}", merged[b.name].curve)
              for b in bands]
    hr = [Series(f"({h.hard}-{h.soft})/({h.hard}+{h.soft})\n(dimensionless)", np.asarray(h.ref.mjd(h.time)), h.hr, h.hr_error,
                 h.timedel) for h in ratios]
    # the EXPOSURE of each merged ObsID, drawn at its first bin; ObsIDs not merged have no exposure to draw
    names, index = np.unique(np.asarray(first.curve.columns["OBSID"]).astype(str), return_index=True)
    start = dict(zip(names.tolist(), np.atleast_1d(first.curve.ref.mjd(first.curve.time[index])).tolist()))
    exposures = ExposurePoints(
        mjd=np.array([start.get(o.obsid, np.nan) for o in outcomes], dtype=float),
        exposure_s=np.array([o.exposure for o in outcomes], dtype=float),
        state=np.array([o.state for o in outcomes]),
    )
    counts = {s: sum(1 for o in outcomes if o.state == s) for s in ("used", "failed", "missing", "no_data")}
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "used" and n)
    bands_text = "; ".join(band_text(merged[b.name].curve.keywords, bands, b.name) for b in bands)
    title = (f"{target_name or 'target not named'}, RXTE PCA {bands_text}: {counts['used']} ObsIDs merged"
             + (f" ({others} not merged)" if others else ""))
    try:
        return plot_lightcurves(target, panels, hr, exposures, title)
    except (ValueError, RuntimeError, SiteError) as exc:
        log.warning("%s: plot not written (%s)", target, exc)
        return None
