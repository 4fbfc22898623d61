"""Merge per-ObsID light curves into one OGIP light curve per band (plus hardness ratios).

The traps of merging (LESSONS.md "Merging light curves") decide the shape:
every time goes through `lcfile` and onto one MJDREF by exact offsets, one
TIMEDEL or an error, the inputs' GTIs are unioned, each row keeps its ObsID,
and rows of two ObsIDs in the same time bin are reported and kept, never
averaged. Files are read one at a time into lists of small arrays that are
concatenated once, so memory follows the merged size, not the file count.
The pure part (`CurveAccumulator`, `hardness.hardness_ratio`) works on
`LightCurve` objects and is tested without files; `run_gather` adds the run
directory: each per-ObsID file's CHECKSUM is verified and a file that fails it,
or lacks a column, or has a non-finite TIME, makes that ObsID `failed` (data).
Every product written is listed in `products.ecsv` (`index.py`).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from astropy.io import fits

from rxte_hpc.core.config import BandConfig, Config
from rxte_hpc.core.errors import DataError, SiteError
from rxte_hpc.fits.lcfile import (
    LightCurve, TimeRef, bins_as_gti, lightcurve_hdulist, read_lightcurves,
)
from rxte_hpc.core.manifest import Manifest, read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import MISSING, RunSummary
from rxte_hpc.products.hardness import HardnessCurve, hardness_ratio, write_hardness, write_hdul
from rxte_hpc.products import headers
from rxte_hpc.products.headers import band_text, channel_keywords, value_of
from rxte_hpc.products.index import ProductEntry, clear_stale, write_index
from rxte_hpc.core.intervals import union

__all__ = ["CurveAccumulator", "GatherResult", "MergedCurve", "ObsOutcome", "hardness_ratio", "run_gather"]

log = logging.getLogger(__name__)

#: Columns carried into the merged curve only when every input has them.
OPTIONAL_COLUMNS = ("BACKV", "BACKE", "LiveTime")
#: Light-curve keywords carried when every input agrees on them (per-ObsID ones like ONTIME are not).
#: CHMIN/CHMAX are not among them: an energy band has other channels in each gain epoch, so the merged
#: file gives their range and the channels of each epoch (`channel_keywords`).
CARRIED_KEYWORDS = (
    "TELESCOP", "INSTRUME", "OBJECT", "HDUCLAS2", "BACKAPP", "DEADAPP", "VIGNAPP", "CLOCKAPP",
    "TIMEREF", "TASSIGN", "MINCHAN", "MAXCHAN", "E_MIN", "E_MAX", "PCULIST", "LAYERS", "RATEUNIT", "STDBAND",
    "ECHANRUL", "PCUCHRUL",  # how keV became channels and which channels PCU0 got (extract/std2.band_keywords)
)
#: Carried keywords whose disagreement is said ("varies per ObsID") rather than dropped silently.
_SAY_VARIES = ("PCULIST", "LAYERS", "RATEUNIT")
#: Gain-epoch keyword names the extractors use.
_EPOCH_KEYS = ("GAINEPOC", "GAINEPO")
#: Two bins closer than TIMEDEL minus this (s) share time; float noise at ~3e8 s is ~1e-7 s.
OVERLAP_TOLERANCE_S = 1e-6
#: How many ObsIDs a one-line summary names before it says "+N more".
SUMMARY_LIST = 5
#: OBSIDS-extension states (DESIGN: interrupted/running/missing all mean "not there yet").
OUT_STATES = {"done": "used", "failed": "failed", "no_data": "no_data", MISSING: "missing",
              "interrupted": "missing", "running": "missing"}


@dataclass(frozen=True)
class MergedCurve:
    """A merged light curve plus what the merge noticed.

    `curve.columns['OBSID']` names the ObsID of each row; `overlaps` lists the
    ObsID pairs with rows in the same time bin, `n_overlap_rows` how many row
    pairs (of two ObsIDs) share time.
    """

    curve: LightCurve
    obsids: tuple[str, ...]
    n_nan: int
    overlaps: tuple[tuple[str, str], ...]
    n_overlap_rows: int
    channels: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # ObsID -> CHMIN, CHMAX, epoch

    @property
    def n_rows(self) -> int:
        return self.curve.n_rows


@dataclass(frozen=True)
class GatherResult:
    outputs: tuple[Path, ...]
    plot: Path | None
    n_used: int
    n_missing: int
    n_failed: int
    n_no_data: int
    n_rows: int  # summed over band files
    n_nan: int  # summed over band files
    overlaps: int  # row pairs of two ObsIDs sharing a time bin, summed over band files
    exit_code: int
    summary: str  # one line for the CLI


@dataclass(frozen=True)
class ObsOutcome:
    """One manifest ObsID's fate in this gather (one row of the OBSIDS extension)."""

    obsid: str
    task: int
    state: str  # used | failed | missing | no_data
    error: str = ""
    n_rows: int = 0
    exposure: float = float("nan")  # EXPOSURE (s) of the ObsID's light curve, NaN when not used


class CurveAccumulator:
    """Collects per-ObsID curves as small arrays; `finish()` concatenates once and sorts.

    Mutable on purpose (a builder): holding lists of arrays instead of
    `LightCurve` objects drops each file's header and keywords as soon as it is read.
    """

    def __init__(self) -> None:
        self.ref: TimeRef | None = None
        self.obsids: list[str] = []
        self.timedels: dict[float, list[str]] = {}
        self.parts: dict[str, list[np.ndarray]] = {"TIME": [], "RATE": [], "ERROR": [], "FRACEXP": []}
        self.optional: dict[str, list[np.ndarray]] | None = None
        self.codes: list[np.ndarray] = []
        self.gtis: list[np.ndarray] = []
        self.keywords: dict[str, Any] | None = None
        #: per ObsID: (CHMIN, CHMAX, gain epoch), -1 where the file does not say
        self.channels: dict[str, tuple[int, int, int]] = {}

    def add(self, obsid: str, lc: LightCurve) -> None:
        if self.ref is None:
            self.ref = lc.ref
        elif lc.ref.timesys.upper() != self.ref.timesys.upper():
            raise DataError(
                f"{obsid}: TIMESYS {lc.ref.timesys} differs from {self.obsids[0]}'s {self.ref.timesys}; "
                "times in different systems are not a constant offset apart"
            )
        offset = lc.ref.seconds_to(self.ref)
        time = lc.time + offset if offset else np.asarray(lc.time, dtype=np.float64)
        gti = lc.gti if lc.gti is not None and len(lc.gti) else bins_as_gti(lc.time, lc.timedel)
        self.gtis.append(gti + offset if offset else gti)
        self.timedels.setdefault(float(lc.timedel), []).append(obsid)
        for name, values in (("TIME", time), ("RATE", lc.rate), ("ERROR", lc.error), ("FRACEXP", lc.fracexp)):
            self.parts[name].append(np.asarray(values, dtype=np.float64))
        present = [c for c in OPTIONAL_COLUMNS if c in lc.columns]
        if self.optional is None:
            self.optional = {c: [] for c in present}
        for name in list(self.optional):
            if name in lc.columns:
                self.optional[name].append(np.asarray(lc.columns[name]))
            else:
                del self.optional[name]
        self.codes.append(np.full(lc.n_rows, len(self.obsids), dtype=np.int32))
        self.obsids.append(obsid)
        epoch_key = next((e for e in _EPOCH_KEYS if e in lc.keywords), "GAINEPOC")
        lo, hi, epoch = (int(value_of(lc.keywords.get(k, -1))) for k in ("CHMIN", "CHMAX", epoch_key))
        self.channels[obsid] = (lo, hi, epoch)
        carried = {k: lc.keywords[k] for k in CARRIED_KEYWORDS if k in lc.keywords}
        if self.keywords is None:
            self.keywords = carried
        else:
            varied = {k: ("varies per ObsID", "differs between the merged ObsIDs") for k in _SAY_VARIES
                      if k in self.keywords and carried.get(k) != self.keywords[k]}
            self.keywords = {**{k: v for k, v in self.keywords.items() if carried.get(k) == v}, **varied}

    def finish(self, name: str = "RATE") -> MergedCurve:
        if not self.obsids or self.ref is None:
            raise DataError("nothing to merge: no usable per-ObsID light curve")
        timedel = _one_timedel(self.timedels)
        codes = np.concatenate(self.codes)
        time = np.concatenate(self.parts["TIME"])
        names = np.array(self.obsids)
        rank = np.empty(len(names), dtype=np.int32)
        rank[np.argsort(names, kind="stable")] = np.arange(len(names), dtype=np.int32)
        # lexsort is stable: equal TIME goes by ObsID, equal both keeps input order
        order = np.lexsort((rank[codes], time))
        time = time[order]
        codes = codes[order]
        columns: dict[str, np.ndarray] = {"OBSID": names.astype("S")[codes]}
        for col, parts in (self.optional or {}).items():
            columns[col] = np.concatenate(parts)[order]
        rate = np.concatenate(self.parts["RATE"])[order]
        curve = LightCurve(
            time=time,
            rate=rate,
            error=np.concatenate(self.parts["ERROR"])[order],
            fracexp=np.concatenate(self.parts["FRACEXP"])[order],
            timedel=timedel,
            ref=self.ref,
            columns=columns,
            gti=union(*self.gtis),
            name=name,
            keywords={**(self.keywords or {}), **channel_keywords(self.channels)},
        )
        pairs, n_overlap = find_overlaps(time, codes, timedel, names)
        return MergedCurve(curve, tuple(self.obsids), int(np.count_nonzero(~np.isfinite(rate))), pairs, n_overlap,
                           dict(self.channels))


def _one_timedel(timedels: Mapping[float, list[str]]) -> float:
    if len(timedels) == 1:
        return next(iter(timedels))
    common = max(timedels, key=lambda t: len(timedels[t]))
    odd = "; ".join(f"TIMEDEL {t:g} s: {_first_few(ids)}" for t, ids in timedels.items() if t != common)
    raise DataError(
        f"light curves have different bin sizes: {len(timedels[common])} ObsIDs have TIMEDEL {common:g} s, but {odd}. "
        "Re-extract them with one extract.binsz (rxte-hpc work --obsid ID --force)"
    )


def find_overlaps(
    time: np.ndarray, codes: np.ndarray, timedel: float, names: np.ndarray
) -> tuple[tuple[tuple[str, str], ...], int]:
    """ObsID pairs with rows whose bins [t, t+TIMEDEL) intersect, and how many such row pairs.

    `time` is sorted, so the rows that start less than one bin before row i form
    the window start[i]..i-1; its depth is the number of ObsIDs stacked on one
    bin (1 or 2 in practice), which bounds the loop.
    """
    n = len(time)
    if n < 2:
        return (), 0
    start = np.searchsorted(time, time - (timedel - OVERLAP_TOLERANCE_S), side="right")
    depth = int(np.max(np.arange(n) - start))
    pairs: set[tuple[str, str]] = set()
    count = 0
    for k in range(1, depth + 1):
        i = np.arange(k, n)
        hit = i[(i - k >= start[k:]) & (codes[k:] != codes[:-k])]
        count += len(hit)
        for a, b in {(int(codes[j]), int(codes[j - k])) for j in hit}:
            pairs.add(tuple(sorted((str(names[a]), str(names[b])))))  # type: ignore[arg-type]
    return tuple(sorted(pairs)), count


# ---------------------------------------------------------------- the run directory


def run_gather(config: Config, *, allow_missing: bool = False, manifest: Manifest | None = None) -> GatherResult:
    """`rxte-hpc gather`: merge every `done` ObsID of the run into `<run_dir>/<gather.output>`.

    Missing or failed ObsIDs (including unreadable light curves) still give an
    output, but exit code 1 unless `allow_missing`. Nothing usable -> DataError,
    nothing written.
    """
    paths = RunPaths(config.run_dir)
    manifest = manifest if manifest is not None else read_manifest(paths.manifest)
    summary = RunSummary.collect(manifest, paths, config.hash())
    bands = config.extract.band_list()
    accs = {b.name: CurveAccumulator() for b in bands}
    outcomes: list[ObsOutcome] = []
    for st in summary.states:
        state = OUT_STATES[st.state]
        error = (st.record.error or "") if st.record is not None and state != "used" else ""
        if st.state in ("interrupted", "running"):
            error = f"{st.state}: {error}".rstrip(": ")
        if state != "used":
            outcomes.append(ObsOutcome(st.obsid, st.task, state, error))
            continue
        lc_path = paths.lc(st.obsid)
        try:
            chosen = _band_curves(read_lightcurves(lc_path, verify_checksum=True), bands, str(lc_path))
        except DataError as exc:
            log.warning("%s: light curve not merged, counted as failed (%s)", st.obsid, exc)
            outcomes.append(ObsOutcome(st.obsid, st.task, "failed", f"gather: {exc}"))
            continue
        for band, lc in zip(bands, chosen):
            accs[band.name].add(st.obsid, lc)
        outcomes.append(ObsOutcome(st.obsid, st.task, "used", n_rows=chosen[0].n_rows, exposure=chosen[0].exposure))
    counts = {s: sum(1 for o in outcomes if o.state == s) for s in ("used", "failed", "missing", "no_data")}
    if not counts["used"]:
        raise DataError(f"nothing to merge in {paths.root}: no ObsID is done ({_state_text(outcomes)})")
    merged = {name: acc.finish("RATE") for name, acc in accs.items()}
    del accs

    provenance = headers.provenance(config, manifest, counts)
    target_name = headers.target_name(config, merged[bands[0].name].curve.keywords)
    outputs: list[Path] = []
    entries: list[ProductEntry] = []
    for band in bands:
        out = paths.output(_band_file(config.gather.output, band.name, len(bands)))
        m = merged[band.name]
        _write_merged(out, m, band, provenance, outcomes, config)
        outputs.append(out)
        entries.append(ProductEntry(out.name, "lightcurve", target_name, band.name, m.n_rows, len(m.obsids)))
    ratios = []
    for hard, soft in config.gather.hardness or ():
        hc = hardness_ratio(merged[hard].curve, merged[soft].curve, hard, soft)
        out = paths.output(f"hardness_{hard}_{soft}.fits")
        common = {k: v for k, v in merged[hard].curve.keywords.items() if k in ("TELESCOP", "INSTRUME", "OBJECT")}
        write_hardness(out, hc, {**provenance, **common,
                                 "HARDBAND": (band_text(merged[hard].curve.keywords, bands, hard), "numerator band"),
                                 "SOFTBAND": (band_text(merged[soft].curve.keywords, bands, soft), "denominator band")})
        outputs.append(out)
        ratios.append(hc)
        entries.append(ProductEntry(out.name, "hardness", target_name, f"{hard}/{soft}", len(hc.time),
                                    len(set(hc.obsid.tolist()))))
    plot = _plot(paths.output(config.gather.plot), merged, ratios, outcomes, bands, target_name)
    if plot is not None:
        entries.append(ProductEntry(plot.name, "plot", target_name, "all", 0, counts["used"]))
    stale = clear_stale(paths.root, [*outputs, *([plot] if plot else [])], config.gather.output, config.gather.plot)
    write_index(paths.root, entries, config.hash())

    failed = [o.obsid for o in outcomes if o.state == "failed"]
    missing = [o.obsid for o in outcomes if o.state == "missing"]
    first = merged[bands[0].name]
    overlaps = sum(m.n_overlap_rows for m in merged.values())
    exit_code = 1 if (failed or missing) and not allow_missing else 0
    each = " per band" if len(bands) > 1 else ""  # bands share bins and live time: same rows, same NaNs
    parts = [f"merged {counts['used']} ObsIDs ({first.n_rows} rows, {first.n_nan} NaN{each}) into "
             + ", ".join(p.name for p in outputs)]
    if missing:
        parts.append(f"{len(missing)} missing: {_first_few(missing)}")
    if failed:
        parts.append(f"{len(failed)} failed: {_first_few(failed)}")
    if counts["no_data"]:
        parts.append(f"{counts['no_data']} no_data")
    if first.overlaps:
        parts.append(f"{first.n_overlap_rows} rows share a time bin with another ObsID: "
                     + _first_few(["/".join(p) for p in first.overlaps]))
    if plot is None:
        parts.append("no plot")
    if stale.removed or stale.reported:
        parts.append(stale.describe())
    if (failed or missing) and allow_missing:
        parts.append("allowed (--allow-missing)")
    line = "; ".join(parts)
    (log.warning if exit_code else log.info)("%s", line)
    return GatherResult(
        outputs=tuple(outputs),
        plot=plot,
        n_used=counts["used"],
        n_missing=counts["missing"],
        n_failed=counts["failed"],
        n_no_data=counts["no_data"],
        n_rows=sum(m.n_rows for m in merged.values()),
        n_nan=sum(m.n_nan for m in merged.values()),
        overlaps=overlaps,
        exit_code=exit_code,
        summary=line,
    )


def _band_curves(curves: list[LightCurve], bands: Sequence[BandConfig], where: str) -> list[LightCurve]:
    """The file's curve for each configured band; one band takes the first extension whatever its name."""
    if len(bands) == 1:
        return [curves[0]]
    by_name = {c.name.upper(): c for c in curves}
    missing = [b.name for b in bands if b.name.upper() not in by_name]
    if missing:
        raise DataError(f"{where}: no extension for band {missing[0]!r} (has {', '.join(by_name)})")
    return [by_name[b.name.upper()] for b in bands]


def _band_file(output: str, band: str, n_bands: int) -> str:
    if n_bands == 1:
        return output
    stem, dot, suffix = output.rpartition(".")
    return f"{stem}_{band}.{suffix}" if dot and stem else f"{output}_{band}"


def _first_few(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SUMMARY_LIST])
    return shown + (f", ... (+{len(items) - SUMMARY_LIST} more)" if len(items) > SUMMARY_LIST else "")


def _state_text(outcomes: Sequence[ObsOutcome]) -> str:
    states: dict[str, int] = {}
    for o in outcomes:
        states[o.state] = states.get(o.state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "empty manifest"


def _write_merged(
    target: Path, merged: MergedCurve, band: BandConfig, provenance: Mapping[str, Any],
    outcomes: Sequence[ObsOutcome], config: Config,
) -> None:
    primary = {**provenance, **headers.band_keywords(band, config, merged.curve.keywords)}
    primary["N_ROWS"] = (merged.n_rows, "rows in the merged light curve")
    primary["N_NAN"] = (merged.n_nan, "rows with a NaN rate (no PCU on), kept")
    primary["OVERLAPS"] = (merged.n_overlap_rows, "row pairs of two ObsIDs in one time bin, kept")
    on_rate = {k: v for k, v in primary.items() if k in ("CHMIN", "CHMAX", "E_MIN", "E_MAX", "BAND", "BANDNAME")}
    curve = dataclasses.replace(merged.curve, keywords={**merged.curve.keywords, **on_rate})
    hdul = lightcurve_hdulist([curve], primary, extra_hdus=[_obsids_hdu(outcomes, merged.channels)])
    for a, b in merged.overlaps[:50]:
        hdul[0].header.add_comment(f"overlap: ObsIDs {a} and {b} have rows in the same time bin")
    write_hdul(target, hdul)


def _obsids_hdu(outcomes: Sequence[ObsOutcome], channels: Mapping[str, tuple[int, int, int]]) -> fits.BinTableHDU:
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


def _plot(
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
