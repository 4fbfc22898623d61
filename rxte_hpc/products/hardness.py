"""Hardness ratios of two merged bands: H/S and (H-S)/(H+S) with propagated errors, and their FITS file.

Rows are matched by exact TIME and ObsID (both bands come from the same
per-ObsID files, so they share bins); rows where either net rate is zero,
negative or not finite are left out, since a ratio means nothing there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from astropy.io import fits

from rxte_hpc.core.errors import DataError
from rxte_hpc.core.fsutil import atomic_path
from rxte_hpc.fits.lcfile import LightCurve, TimeRef, set_card, time_cards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardnessCurve:
    """H/S and (H-S)/(H+S) with propagated 1-sigma errors, where both rates are > 0 and finite."""

    time: np.ndarray
    obsid: np.ndarray
    ratio: np.ndarray
    ratio_error: np.ndarray
    hr: np.ndarray
    hr_error: np.ndarray
    ref: TimeRef
    timedel: float
    hard: str
    soft: str


def hardness_ratio(hard: LightCurve, soft: LightCurve, hard_name: str = "hard", soft_name: str = "soft") -> HardnessCurve:
    """RATIO = H/S and HR = (H-S)/(H+S) on rows matched by exact TIME and ObsID.

    Rows where either rate is zero, negative or not finite are left out: a
    net (background-subtracted) rate can be <= 0 and the ratio means nothing there.
    """
    if hard.ref != soft.ref:
        raise DataError(f"bands {hard_name} and {soft_name} are on different time references")

    def keys(lc: LightCurve) -> np.ndarray:
        out = np.empty(lc.n_rows, dtype=[("t", "f8"), ("o", "S32")])
        out["t"] = lc.time
        out["o"] = lc.columns["OBSID"]
        return out

    kh, ks = keys(hard), keys(soft)
    _, ih, is_ = np.intersect1d(kh, ks, assume_unique=False, return_indices=True)
    h, s = hard.rate[ih], soft.rate[is_]
    eh, es = hard.error[ih], soft.error[is_]
    good = np.isfinite(h) & np.isfinite(s) & (h > 0) & (s > 0) & np.isfinite(eh) & np.isfinite(es)
    ih, is_, h, s, eh, es = ih[good], is_[good], h[good], s[good], eh[good], es[good]
    order = np.lexsort((kh["o"][ih], kh["t"][ih]))
    ih, h, s, eh, es = ih[order], h[order], s[order], eh[order], es[order]
    ratio = h / s
    total = h + s
    return HardnessCurve(
        time=hard.time[ih],
        obsid=np.asarray(hard.columns["OBSID"])[ih],
        ratio=ratio,
        ratio_error=ratio * np.hypot(eh / h, es / s),
        hr=(h - s) / total,
        hr_error=2.0 * np.hypot(s * eh, h * es) / total**2,
        ref=hard.ref,
        timedel=hard.timedel,
        hard=hard_name,
        soft=soft_name,
    )


def write_hardness(target: Path, hc: HardnessCurve, keywords: Mapping[str, Any]) -> None:
    """`hardness_<hard>_<soft>.fits`: a HARDNESS table (TIME, RATIO, HR and errors, OBSID), checksummed.

    `keywords` (provenance, TELESCOP/OBJECT, the two bands) go on both headers.
    """
    primary = fits.PrimaryHDU()
    width = max(1, int(hc.obsid.dtype.itemsize))
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column("TIME", "D", unit="s", array=hc.time),
            fits.Column("RATIO", "D", array=hc.ratio),
            fits.Column("RATIO_ERR", "D", array=hc.ratio_error),
            fits.Column("HR", "D", array=hc.hr),
            fits.Column("HR_ERR", "D", array=hc.hr_error),
            fits.Column("OBSID", f"{width}A", array=hc.obsid),
        ],
        name="HARDNESS",
    )
    tstart = float(hc.time[0]) if len(hc.time) else 0.0
    tstop = float(hc.time[-1] + hc.timedel) if len(hc.time) else 0.0
    for hdu in (primary, table):
        for key, value in keywords.items():
            set_card(hdu.header, key, value)
        set_card(hdu.header, "HARD", hc.hard, "band in the numerator")
        set_card(hdu.header, "SOFT", hc.soft, "band in the denominator")
        set_card(hdu.header, "DATE-OBS", hc.ref.isot(tstart), f"first bin start ({hc.ref.timesys})")
        set_card(hdu.header, "DATE-END", hc.ref.isot(tstop), f"last bin end ({hc.ref.timesys})")
    for key, value, comment in time_cards(hc.ref, tstart=tstart, tstop=tstop, timedel=hc.timedel, split=True):
        set_card(table.header, key, value, comment)
    table.header["COMMENT"] = f"RATIO = {hc.hard}/{hc.soft}, HR = ({hc.hard}-{hc.soft})/({hc.hard}+{hc.soft})"
    table.header["COMMENT"] = "only rows where both net rates are finite and > 0"
    write_hdul(target, fits.HDUList([primary, table]))


def write_hdul(target: Path, hdul: fits.HDUList) -> None:
    """Publish a product atomically, with CHECKSUM/DATASUM on every HDU."""
    with atomic_path(target) as tmp:
        hdul.writeto(tmp, checksum=True)
    log.info("wrote %s", target)
