"""The native extractor: pcaextlc2's light curve computed in numpy from prepared products.

Follows docs/science.md#native (the rules of #good-time-maketime and #pcaextlc2-the-light-curve): maketime's GTI
from the filter file, each Standard-2 file's own GTI applied (gtiorfile=APPLY),
rows kept when start <= Time+TIMEZERO < stop, whole Standard-2 bins kept when
they overlap the absolute channel band, counts summed over the chosen PCUs,
layers and bins with negative and NULL values skipped, live time from the
`_dt` files' LiveTimePcu columns, the `_dtbkg` model subtracted, bins of binsz
anchored at the first file's start. Every file is read once per ObsID however
many bands are asked for: the per-PCU spectra summed over layers are kept, and
each band is one masked sum of them, so extra bands cost almost nothing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import numpy as np

from rxte_hpc.archive.local import prepared_root
from rxte_hpc.core.config import BandConfig
from rxte_hpc.core.errors import DataError, NoDataError
from rxte_hpc.fits.lcfile import LightCurve, absolute_times, read_time_ref, read_timedel, read_timezero, read_tstart, read_tstop
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.scratch import Workspace
from rxte_hpc.archive.base import ArchiveNeeds
from rxte_hpc.extract.base import Extractor
from rxte_hpc.extract.hsp_runner import resolve_runner
from rxte_hpc.extract.prepare import BACKGROUND_LIST, DONE_FILE, SOURCE_LIST, has_standard2, prepare_into, read_list
from rxte_hpc.extract.filterexpr import FilterExpr, parse_filter
from rxte_hpc.core.intervals import intersect, union
from rxte_hpc.extract.gti import filter_gti, select_rows
from rxte_hpc.fits.tableio import FitsTable, find_table, read_tables
from rxte_hpc.extract.std2 import (ChannelBand, band_keywords, bins_for_channels, channel_map_from_header, parse_layerlist,
                                   parse_pculist, pcu0_energies, resolve_band, spectral_columns)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Selection:
    """What to sum: PCUs, xenon layers and bands, validated once per extractor."""

    pcus: tuple[int, ...]
    layers: tuple[int, ...]
    bands: tuple[BandConfig, ...]
    binsz: float
    expr: FilterExpr


@dataclass(frozen=True)
class FileRows:
    """The selected rows of one `_dt` or `_dtbkg` file, reduced to what binning needs.

    `counts[b]` is band b's counts per row summed over PCUs, layers and bins;
    `bands[b]` is (the channel band, lowest, highest absolute channel of the
    Standard-2 bins summed), one for all PCUs as pcaextlc2 has it. Times are
    kept on the file's raw scale too (`t_raw`, `start_raw`, `timezero`), so
    binning never depends on how Time + TIMEZERO rounds.
    """

    t_row: np.ndarray
    timedel: float
    live: np.ndarray
    counts: np.ndarray  # (n_bands, n_rows)
    bands: tuple[tuple[ChannelBand, int, int], ...]
    gti: np.ndarray
    start: float
    header: Mapping[str, Any]
    t_raw: np.ndarray | None = None
    start_raw: float = 0.0
    timezero: float = 0.0
    path: str = ""


# ---------------------------------------------------------------- pure rules
def band_for_pcus(band: BandConfig, pcus: Sequence[int], met: float) -> ChannelBand:
    """Absolute channels of `band` for the PCUs summed at time `met`: ONE range for all of them, as pcaextlc2
    passes one chmin/chmax; keV bands depend on the gain epoch, and on PCU0's own gain only when PCU0 is
    summed alone (`std2.pcu0_energies`, the heasoft backend's rule too)."""
    if band.energy_kev is not None:
        return resolve_band(energy_kev=band.energy_kev, met=met, pcu0=pcu0_energies(pcus))
    return resolve_band(chmin=band.chmin, chmax=band.chmax, met=met, pcu0=pcu0_energies(pcus))


def effective_gti(file_gti: np.ndarray, user_gti: np.ndarray, tstart: float | None, tstop: float | None) -> np.ndarray:
    """saextrct's gtiorfile=APPLY: the file's GTI AND the user's, the latter clipped to the file's span."""
    gti = intersect(file_gti, user_gti)
    if tstart is not None and tstop is not None:
        gti = intersect(gti, np.array([[tstart, tstop]]))
    return gti


def bin_rows(t_row: np.ndarray, t0: float, binsz: float, zero_offset: float = 0.0) -> np.ndarray:
    """Bin number of each row: floor(((t - T0) + zero_offset) / binsz), the grid anchored at the first file's start.

    Give raw times (Time, TSTART without TIMEZERO) and `zero_offset` = this
    file's TIMEZERO minus the first file's: then t - T0 is exact (two nearby
    doubles, Sterbenz) and a row starting on a bin edge lands in that bin for
    any MET and TIMEZERO. Absolute times (Time + TIMEZERO) are rounded near
    2^28 s, and a row on an edge could fall one bin early.
    """
    offset = (np.asarray(t_row, dtype=np.float64) - t0) + zero_offset
    return np.floor(offset / binsz).astype(np.int64)


def bin_sums(k: np.ndarray, keys: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sums of `weights` (rows along the last axis) per bin number in sorted `keys`; bins without rows get 0."""
    weights = np.atleast_2d(weights)
    out = np.zeros((weights.shape[0], len(keys)))
    pos = np.searchsorted(keys, k)
    hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == k) if len(keys) else np.zeros(len(k), bool)
    for i in range(weights.shape[0]):
        out[i] = np.bincount(pos[hit], weights=weights[i][hit], minlength=len(keys))
    return out


def net_rates(c: np.ndarray, live: np.ndarray, cb: np.ndarray, live_b: np.ndarray) -> dict[str, np.ndarray]:
    """pcaextlc2's net result: RATE = C/L - Cb/Lb, ERROR = sqrt(C/L^2 + Cb/Lb^2); NaN where a live time is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        safe_l = np.where(live > 0, live, np.nan)
        safe_lb = np.where(live_b > 0, live_b, np.nan)
        backv = cb / safe_lb
        backe = np.sqrt(cb) / safe_lb
        return {
            "RATE": c / safe_l - backv,
            "ERROR": np.sqrt(c / safe_l**2 + cb / safe_lb**2),
            "BACKV": backv,
            "BACKE": backe,
        }


# ---------------------------------------------------------------- one file
def _channel_maps(table: FitsTable, names: Sequence[str]) -> list[np.ndarray]:
    """Each column's Standard-2 channel map, parsing each distinct CPIX string once."""
    cache: dict[Any, np.ndarray] = {}
    header = table.header
    out = []
    for name in names:
        index = table.column_index(name)
        key = next((header[k] for k in (f"1CPIX{index}", f"CPIX{index}", "CPIX") if k in header), None)
        if key not in cache:
            cache[key] = channel_map_from_header(header, index)
        out.append(cache[key])
    return out


def read_file_rows(path: Path, user_gti: np.ndarray, sel: Selection) -> FileRows:
    """One prepared Standard-2 file reduced to selected rows: times, live time, counts per band."""
    try:
        tables = read_tables(path)
        data = find_table(tables, path, "XTE_SA")
        gti_table = next((t for t in tables if t is not data and (
            t.extname.upper() in ("STDGTI", "GTI") or str(t.header.get("HDUCLAS1", "")).strip().upper() == "GTI")), None)
        if gti_table is None:
            raise DataError(f"{path}: missing extension STDGTI (the file's own good time intervals)")
        header = data.header
        file_gti = np.column_stack([absolute_times(gti_table.values("START"), gti_table.header),
                                    absolute_times(gti_table.values("STOP"), gti_table.header)])
        timezero = read_timezero(header)
        tstart, tstop = read_tstart(header), read_tstop(header)
        t_raw = data.values("Time")
        t_row = absolute_times(t_raw, header)
        start_raw = tstart if tstart is not None else (float(t_raw[0]) if len(t_raw) else np.nan)
        start = tstart + timezero if tstart is not None else (float(t_row[0]) if len(t_row) else np.nan)
        stop = tstop + timezero if tstop is not None else None
        gti = effective_gti(file_gti, user_gti, start if tstart is not None else None, stop)
        keep = select_rows(t_row, gti)
        timedel = read_timedel(header) or 16.0
        live = np.zeros(int(keep.sum()))
        for pcu in sel.pcus:
            values = data.values(f"LiveTimePcu{pcu}")[keep]
            live += np.where(np.isnan(values), 0.0, values)
        counts = np.zeros((len(sel.bands), len(live)))
        bands: list[tuple[ChannelBand, int, int]] = []
        all_names = spectral_columns(sel.pcus, sel.layers)
        maps = dict(zip(all_names, _channel_maps(data, all_names)))
        resolved = [band_for_pcus(band, sel.pcus, start) for band in sel.bands]  # one range for every PCU
        for pcu in sel.pcus:
            names = spectral_columns((pcu,), sel.layers)
            groups: list[tuple[np.ndarray, np.ndarray]] = []  # (channel map, spectra summed over its columns)
            for name, cmap in ((n, maps[n]) for n in names):
                spectra = data.counts(name, keep)
                if spectra.ndim != 2 or spectra.shape[1] != len(cmap):
                    raise DataError(f"{path}: column {name} has {spectra.shape[1:]} channels, its CPIX map {len(cmap)}")
                for gmap, total in groups:
                    if gmap is cmap or np.array_equal(gmap, cmap):
                        total += spectra
                        break
                else:
                    groups.append((cmap, spectra.copy()))
            for b, channels in enumerate(resolved):
                for cmap, total in groups:
                    mask = bins_for_channels(cmap, channels.chmin, channels.chmax)
                    counts[b] += total[:, mask].sum(axis=1)
        first_map = maps[all_names[0]]
        for channels in resolved:
            mask = bins_for_channels(first_map, channels.chmin, channels.chmax)
            lo, hi = (int(first_map[mask, 0].min()), int(first_map[mask, 1].max())) if mask.any() else (-1, -1)
            bands.append((channels, lo, hi))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise DataError(f"{path}: unusable prepared Standard-2 file ({type(exc).__name__}: {exc})") from exc
    return FileRows(t_row[keep], float(timedel), live, counts, tuple(bands), gti, float(start), header,
                    t_raw=t_raw[keep], start_raw=float(start_raw), timezero=float(timezero), path=str(path))


# ---------------------------------------------------------------- whole ObsID
def _concat(rows: Sequence[FileRows]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = np.concatenate([r.t_row for r in rows])
    exposure = np.concatenate([np.full(len(r.t_row), r.timedel) for r in rows])
    live = np.concatenate([r.live for r in rows])
    counts = np.concatenate([r.counts for r in rows], axis=1)
    return t, exposure, live, counts


def _bin_numbers(rows: Sequence[FileRows], binsz: float) -> np.ndarray:
    """Each row's bin on the grid anchored at rows[0]'s start (saextrct's T0), computed on the raw scale."""
    first = rows[0]
    parts = []
    for r in rows:
        if r.t_raw is None:  # built without raw times: absolute ones, as before
            parts.append(bin_rows(r.t_row, first.start, binsz))
        else:
            parts.append(bin_rows(r.t_raw, first.start_raw, binsz, r.timezero - first.timezero))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _binned(rows: Sequence[FileRows], binsz: float, n_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """saextrct on one file list: the bins with rows (keys) and their sums [exposure, live, counts...]."""
    _, exposure, live, counts = _concat(rows)
    k = _bin_numbers(rows, binsz)
    keys = np.unique(k)
    return keys, bin_sums(k, keys, np.vstack([exposure, live, counts.reshape(n_bands, -1)]))


def _paired_background(source: Sequence[FileRows], background: Sequence[FileRows], keys: np.ndarray,
                       binsz: float, n_bands: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The background light curve's (live, counts) per source bin, paired as pcaextlc2 pairs them.

    pcaextlc2 bins the `_dtbkg` list on its own (anchored at ITS first file's
    start) and `ftpaste`s BACKV/BACKE onto the source light curve row by row,
    by index. That equals pairing by time only when both curves have the same
    bins; when they do not, the index pairing would put background on the
    wrong bins, so that is refused, naming the files.
    """
    if not background:
        return np.zeros(len(keys)), np.zeros((n_bands, len(keys)))
    keys_b, sums_b = _binned(background, binsz, n_bands)
    first, first_b = source[0], background[0]
    anchor = (first_b.start_raw - first.start_raw) + (first_b.timezero - first.timezero)
    if first.t_raw is None or first_b.t_raw is None:
        anchor = first_b.start - first.start
    same = len(keys_b) == len(keys) and bool(np.all(np.abs(keys_b * binsz + anchor - keys * binsz) < 1e-3))
    if not same:
        files = ", ".join(Path(r.path).name or "?" for r in [*source, *background])
        raise DataError(
            f"{where}: the background light curve has {len(keys_b)} bins and the source {len(keys)}, not at the "
            f"same times: pcaextlc2 pastes background onto source rows by row number (ftpaste), which would "
            f"misplace it here; refused ({files})")
    return sums_b[1], sums_b[2:]


def light_curves(source: Sequence[FileRows], background: Sequence[FileRows], sel: Selection, where: str) -> list[LightCurve]:
    """Bin source and background rows as saextrct does and make one net light curve per band."""
    t0 = source[0].start
    if not sum(len(r.t_row) for r in source):
        raise NoDataError(f"{where}: no Standard-2 row falls in the good time")
    n_bands = len(sel.bands)
    keys, sums = _binned(source, sel.binsz, n_bands)
    realbin, live_k, c_k = sums[0], sums[1], sums[2:]
    live_bk, cb_k = _paired_background(source, background, keys, sel.binsz, n_bands, where)
    time = t0 + keys * sel.binsz
    fracexp = realbin / sel.binsz
    gti = union(*[r.gti for r in source])
    first = source[0]
    ref = read_time_ref(first.header)
    curves = []
    for b, band in enumerate(sel.bands):
        values = net_rates(c_k[b], live_k, cb_k[b], live_bk)
        curves.append(LightCurve(
            time=time, rate=values["RATE"], error=values["ERROR"], fracexp=fracexp, timedel=sel.binsz, ref=ref,
            columns={"BACKV": values["BACKV"], "BACKE": values["BACKE"], "LiveTime": live_k.copy()},
            gti=gti, name=band.name, keywords=_keywords(band, first.bands[b], first.header)))
    return curves


def _keywords(band: BandConfig, channels: tuple[ChannelBand, int, int], header: Mapping[str, Any]) -> dict:
    """Band and processing keywords: std2.band_keywords (shared with the heasoft backend) plus native's own."""
    resolved, lo, hi = channels
    out: dict[str, Any] = {
        "DEADAPP": (True, "dead time applied (LiveTimePcu)"),
        "BACKAPP": (True, "pcabackest model subtracted"),
        **band_keywords(resolved, band.energy_kev),
        "MINCHAN": (lo, "lowest abs channel of Std2 bins summed"),
        "MAXCHAN": (hi, "highest abs channel of Std2 bins summed"),
        "OBJECT": str(header.get("OBJECT", "")),
        "EXTRACTR": ("native", "rxte_hpc numpy pcaextlc2"),
    }
    return out


class NativeExtractor(Extractor):
    """pcaextlc2 semantics on pcaprepobsid products, without HEASoft at extraction time."""

    name = "native"

    def check_available(self) -> None:
        """Validate the extraction settings once, before any task starts (UsageError names the problem)."""
        self._selection()
        if os.environ.get("HEADAS"):  # pcaprepobsid may run for ObsIDs not yet prepared: its runner must work
            resolve_runner(self.context.config.extract.runner)

    def archive_needs(self, row: ManifestRow) -> ArchiveNeeds:
        """Nothing when the row's prepared products exist; else the whole ObsID, which pcaprepobsid will prepare."""
        ctx = self.context
        if (prepared_root(ctx.config, ctx.paths) / row.obsid.text / DONE_FILE).is_file():
            return ArchiveNeeds()
        return ArchiveNeeds(whole_tree=True)

    def _selection(self) -> Selection:
        ex = self.context.config.extract
        return Selection(parse_pculist(ex.pculist), parse_layerlist(ex.layerlist), tuple(ex.band_list()),
                         float(ex.binsz), parse_filter(ex.filter))

    def extract(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> list[LightCurve]:
        sel = self._selection()
        obsid = row.obsid.text
        prepared = self._prepared_dir(row, workspace, tool_log)
        sources = read_list(prepared / SOURCE_LIST, prepared)
        if not sources:
            raise NoDataError(f"{obsid}: no Standard-2 data ({prepared / SOURCE_LIST} is empty)")
        backgrounds = read_list(prepared / BACKGROUND_LIST, prepared) if (prepared / BACKGROUND_LIST).exists() else []
        if not backgrounds:
            raise DataError(f"{obsid}: no background files listed in {prepared / BACKGROUND_LIST}: rerun pcaprepobsid")
        user_gti = self._user_gti(prepared, sel.expr, obsid)
        src_rows = [read_file_rows(p, user_gti, sel) for p in sources]
        bkg_rows = [read_file_rows(p, user_gti, sel) for p in backgrounds]
        if not any(len(r.gti) for r in src_rows):
            raise NoDataError(f"{obsid}: no good time: the filter's intervals miss every Standard-2 file's own GTI")
        curves = light_curves(src_rows, bkg_rows, sel, obsid)
        tool_log.write(f"native: {len(sources)} Standard-2 + {len(backgrounds)} background files from {prepared}; "
                       f"{curves[0].n_rows} bins x {len(curves)} band(s)\n")
        return curves

    def _user_gti(self, prepared: Path, expr: FilterExpr, obsid: str) -> np.ndarray:
        filters = sorted(prepared.glob("FP_*.xfl")) or sorted(prepared.glob("FP_*.xfl.gz"))
        if not filters:
            raise DataError(f"{obsid}: no filter file FP_*.xfl in {prepared}: rerun pcaprepobsid")
        gti = union(*[filter_gti(path, expr) for path in filters])  # maketime, with CFITSIO's semantics
        if not len(gti):
            raise NoDataError(f"{obsid}: every filter row fails {expr.text}")
        return gti

    def _prepared_dir(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> Path:
        """The ObsID's prepared products; run pcaprepobsid when they are missing and HEASoft is here."""
        ctx = self.context
        root = prepared_root(ctx.config, ctx.paths)
        directory = root / row.obsid.text
        if (directory / DONE_FILE).is_file():
            return directory
        listed = directory / SOURCE_LIST
        if listed.is_file() and not listed.read_text().strip():
            raise NoDataError(f"{row.obsid.text}: no Standard-2 data ({listed} is empty)")
        if not has_standard2(ctx, row):
            raise NoDataError(f"{row.obsid.text}: no Standard-2 data (no pca/FS4a_* file in the archive)")
        headas = os.environ.get("HEADAS", "")
        if headas and (Path(headas) / "bin" / "pcaprepobsid").is_file():
            return prepare_into(ctx, row, directory, workspace, tool_log)
        raise DataError(
            f"no prepared products for {row.obsid.text} under {directory}: run the heasoft backend with "
            "extract.keep_prepared: true, or pcaprepobsid")
