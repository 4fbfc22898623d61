"""Figures of a gathered run: light curve(s), hardness ratio, and exposure per ObsID.

matplotlib is imported inside the function (object-oriented Figure + Agg
canvas, no pyplot and no global backend switch), so the CLI starts fast and
nothing here touches process-wide state. Points are drawn as markers, never
joined by lines, so gaps between pointings stay gaps; beyond `MAX_POINTS` a
curve is shown as per-display-bin mean with a min/max envelope, so 200 and
200,000 points both read well and the PNG stays small.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.typing import ArrayLike

from rxte_hpc.core.fsutil import atomic_path
from rxte_hpc.core.manifest import Manifest

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

#: Above this many points a panel shows binned means and a min/max envelope.
MAX_POINTS = 5000
#: J2000.0 as MJD, and a Julian year in days: decimal year <-> MJD is then linear and invertible.
_J2000_MJD = 51544.5
_JULIAN_YEAR = 365.25
_STATE_COLOURS = {"used": "C0", "no_data": "0.6", "failed": "C3", "missing": "C1"}


@dataclass(frozen=True)
class Series:
    """One panel's points: MJD of each bin start, value, 1-sigma error (or None), bin size (s)."""

    label: str
    mjd: np.ndarray
    value: np.ndarray
    error: np.ndarray | None
    timedel: float


@dataclass(frozen=True)
class ExposurePoints:
    """Per-ObsID manifest exposure: MJD, seconds, and gather state (used/failed/missing/no_data)."""

    mjd: np.ndarray
    exposure_s: np.ndarray
    state: np.ndarray


def mjd_to_year(mjd: ArrayLike) -> np.ndarray:
    return 2000.0 + (np.asarray(mjd, dtype=float) - _J2000_MJD) / _JULIAN_YEAR


def year_to_mjd(year: ArrayLike) -> np.ndarray:
    return _J2000_MJD + (np.asarray(year, dtype=float) - 2000.0) * _JULIAN_YEAR


def envelope(x: np.ndarray, y: np.ndarray, n_bins: int = MAX_POINTS) -> tuple[np.ndarray, ...]:
    """Mean, min and max of finite `y` in up to `n_bins` equal bins of `x`; empty bins dropped.

    Returns (x_centre, mean, lo, hi). Empty bins vanish, so gaps stay visible.
    """
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    if not len(x):
        return (np.zeros(0),) * 4
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    edges = np.linspace(x[0], x[-1], n_bins + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    starts = np.concatenate([[0], np.nonzero(np.diff(idx))[0] + 1])
    counts = np.diff(np.concatenate([starts, [len(x)]]))
    centre = 0.5 * (edges[idx[starts]] + edges[idx[starts] + 1])
    mean = np.add.reduceat(y, starts) / counts
    return centre, mean, np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)


def _draw_series(ax: Axes, s: Series, colour: str) -> None:
    year = mjd_to_year(s.mjd + 0.5 * s.timedel / 86400.0)  # bin centres
    finite = np.isfinite(s.value)
    if finite.sum() <= MAX_POINTS:
        err = None if s.error is None else np.where(np.isfinite(s.error[finite]), s.error[finite], 0.0)
        ax.errorbar(year[finite], s.value[finite], yerr=err, fmt=".", ms=2.5, color=colour,
                    ecolor=colour, elinewidth=0.5, alpha=0.8, rasterized=True)
    else:
        x, mean, lo, hi = envelope(year, s.value)
        ax.vlines(x, lo, hi, color=colour, alpha=0.3, linewidth=0.6, rasterized=True, label="min-max")
        ax.plot(x, mean, ".", ms=1.5, color=colour, rasterized=True,
                label=f"mean of ~{finite.sum() / max(1, len(x)):.0f} bins")
        ax.legend(loc="upper right", fontsize=7, frameon=False)
    ax.set_ylabel(s.label, fontsize=8)
    ax.grid(alpha=0.3)


def _draw_exposure(ax: Axes, e: ExposurePoints) -> None:
    known = np.isfinite(e.mjd) & np.isfinite(e.exposure_s)
    year = mjd_to_year(e.mjd)
    for state, colour in _STATE_COLOURS.items():
        sel = known & (e.state == state)
        if sel.any():
            ax.vlines(year[sel], 0, e.exposure_s[sel] / 1000.0, color=colour, linewidth=0.8,
                      label=f"{state} ({int(sel.sum())})", rasterized=bool(sel.sum() > MAX_POINTS))
    ax.set_ylabel("EXPOSURE per\nmerged ObsID (ks)", fontsize=8)
    ax.set_ylim(bottom=0)
    if known.any():
        ax.legend(loc="upper right", fontsize=7, ncol=4, frameon=False)
    else:  # e.g. a table without exposures: say so instead of an empty legend
        ax.text(0.5, 0.5, "exposures unknown (not in the manifest)", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="0.4")
    ax.grid(alpha=0.3)


def plot_lightcurves(
    target: Path, bands: Sequence[Series], ratios: Sequence[Series], exposures: ExposurePoints, title: str = ""
) -> Path:
    """Bands stacked over time, hardness ratios below, exposure per ObsID at the bottom; PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = len(bands) + len(ratios) + 1
    heights = [3.0] * len(bands) + [2.0] * len(ratios) + [1.6]
    fig = Figure(figsize=(11, 1.2 + sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, gridspec_kw={"height_ratios": heights})
    axes = np.atleast_1d(axes)
    for i, s in enumerate(bands):
        _draw_series(axes[i], s, f"C{i}")
    for j, s in enumerate(ratios):
        _draw_series(axes[len(bands) + j], s, "k")
    _draw_exposure(axes[-1], exposures)
    axes[-1].set_xlabel("year (Julian epoch, TT)")
    top = axes[0].secondary_xaxis("top", functions=(year_to_mjd, mjd_to_year))
    top.set_xlabel("MJD (TT)")
    axes[-1].xaxis.get_major_formatter().set_useOffset(False)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    log.info("wrote %s", target)
    return target


def plot_exposure(manifest: Manifest, path: Path) -> Path:
    """The seed's exposure-versus-time figure (PNG): Julian year below, MJD above."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in manifest.rows if math.isfinite(r.time_mjd) and math.isfinite(r.exposure_s)]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    years = mjd_to_year([r.time_mjd for r in rows])
    ax.plot(years, [r.exposure_s / 1e3 for r in rows], "o", ms=3)
    ax.set_xlabel("year")
    ax.set_ylabel("exposure in the manifest (ks)")
    names = sorted({r.target_name for r in manifest.rows if r.target_name})
    ax.set_title(f"{', '.join(names[:3]) or 'RXTE PCA'}: {len(manifest.rows)} ObsIDs, {len(rows)} with time and exposure")
    ax.secondary_xaxis("top", functions=(year_to_mjd, mjd_to_year)).set_xlabel("MJD")
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
