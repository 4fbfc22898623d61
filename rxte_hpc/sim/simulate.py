"""A synthetic RXTE archive in the real layout and file formats (demo, tests, benchmarks).

`simulate_archive` writes `AO<cycle>/P<prnb>/<obsid>/` trees (FMI, Standard-2,
housekeeping, filter file, standard-product light curve), what pcaprepobsid
would make of each under `prepared/<obsid>/`, an `xtemaster.ecsv` for the
planner and `sim_truth.ecsv` with what was injected. The science model lives in
`prepared.py` so the HEASoft stand-in prepares files with the same code; which ObsIDs exist is `campaign.py`.
Everything is derived from the seed: the same seed gives byte-identical files.
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
from astropy.io import fits
from astropy.table import Table

from rxte_hpc.core.errors import NoDataError
from rxte_hpc.core.manifest import Observation
from rxte_hpc.fits.writer import Col, primary_bytes, table_bytes
from rxte_hpc.fits.lcfile import RXTE_TIMEREF, LightCurve, lightcurve_hdulist, time_cards
from rxte_hpc.sim.campaign import (
    BROKEN_KINDS, FIRST_MJD, LAST_MJD, TARGET_DEC, TARGET_NAME, TARGET_RA, campaign, cycle_of, planned_observations,
    proposal_of,
)
from rxte_hpc.sim.prepared import (
    ALL_RATES, ANODES, CPIX, L7_RATE_PER_BKG, L7_RATES, N_PCU, N_STD2, PROPANE_LOSS_MET,
    RATE_MEANS, TIMEDEL, TIMEZERO, abs_channel_mask, background_rate_2_9, bad_rows, epoch_of, expected_background_rate,
    expected_live_time, expected_source_rate, expected_spectra, prepare_obsid,
)

__all__ = ["SimArchive", "campaign", "simulate_archive", "prepare_obsid", "expected_source_rate",
           "expected_background_rate", "main_summary"]

log = logging.getLogger(__name__)

ORBIT_S = 5760.0
VISIBLE_S = 3300.0  # longest stretch of Earth visibility per orbit
_EPOCH0 = dt.datetime(1994, 1, 1)


@dataclass(frozen=True)
class SimArchive:
    """What `simulate_archive` wrote; `broken` maps ObsID text to what is wrong with it."""

    root: Path
    observations: tuple[Observation, ...]
    broken: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# ---------------------------------------------------------------- one ObsID's timeline
@dataclass(frozen=True)
class _Timeline:
    """Rows of one ObsID on the 16-s grid (raw Time), and which rows each file has."""

    time_raw: np.ndarray  # every filter/HK row
    elv: np.ndarray
    offset: np.ndarray
    null_rows: np.ndarray  # whole-row NULL gap in the filter file (no HK, no Std-2 either)
    std2_rows: np.ndarray  # rows with Standard-2 data
    pcu_on: np.ndarray  # (n, 5) 0/1 from HK
    vle: np.ndarray  # (n, 5) VLE discriminator setting


def _timeline(obs: Observation, rng: np.random.Generator, kind: str | None) -> _Timeline:
    start = int((obs.time_mjd - RXTE_TIMEREF.mjdref) * 86400.0)
    n_win = max(1, int(np.ceil(obs.exposure_s / VISIBLE_S)))
    win_len = obs.exposure_s / n_win + 3 * TIMEDEL
    occult = ORBIT_S - VISIBLE_S
    lead = rng.integers(2, 5) * TIMEDEL  # attitude settles: ELV/OFFSET unknown, then slewing
    edge_occ = 8 * TIMEDEL if rng.random() < 0.3 else 0.0  # some start inside an occultation
    total = lead + edge_occ + n_win * win_len + (n_win - 1) * occult + TIMEDEL
    n = int(total // TIMEDEL)
    t_rel = np.arange(n) * TIMEDEL
    time_raw = start + t_rel
    # elevation: up in each visibility window, below the limb between windows
    cycle_pos = t_rel - lead - edge_occ
    k = np.floor(cycle_pos / (win_len + occult))
    in_cycle = cycle_pos - k * (win_len + occult)
    visible = (cycle_pos >= 0) & (in_cycle < win_len) & (k < n_win)
    elv = np.where(visible, 4.5 + 55.0 * np.sin(np.pi * np.clip(in_cycle / win_len, 0, 1)),
                   -5.0 - 40.0 * np.sin(np.pi * np.clip((in_cycle - win_len) / occult, 0, 1)))
    elv = np.where(cycle_pos < 0, 2.0 - 0.1 * (-cycle_pos), elv).astype(np.float32)
    offset = np.abs(rng.normal(0.004, 0.002, n)).astype(np.float32)
    settle = int(lead // TIMEDEL)
    offset[settle:settle + 2] = [0.35, 0.12]
    elv[:settle] = np.nan
    offset[:settle] = np.nan
    if kind == "filtered_out":
        offset[:] = np.float32(0.6)
    null_rows = np.zeros(n, dtype=bool)
    if n > 60 and rng.random() < 0.25:
        g0 = int(rng.integers(20, n - 30))
        null_rows[g0:g0 + int(rng.integers(5, 12))] = True
    # Standard-2 is recorded except deep inside occultations and in telemetry gaps
    deep = ~visible & (cycle_pos >= 0) & (in_cycle > win_len + 10 * TIMEDEL) & (in_cycle < win_len + occult - 10 * TIMEDEL)
    std2_rows = ~deep & ~null_rows
    pcu_on = _pcu_states(obs.time_mjd, n, rng)
    vle = np.full((n, N_PCU), 2, dtype=np.int16)
    return _Timeline(time_raw.astype(np.float64), elv, offset, null_rows, std2_rows, pcu_on, vle)


def _pcu_states(mjd: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Which PCUs are on, row by row: all five early on, 2-3 later, with mid-pointing switches."""
    p_on = [0.95, 0.8, 1.0, 0.8, 0.75] if mjd < 51700 else [0.6, 0.4, 1.0, 0.5, 0.35]
    on = np.array([rng.random() < p for p in p_on], dtype=np.int16)
    states = np.repeat(on[None, :], n, axis=0)
    if n > 20 and rng.random() < 0.35:
        pcu = int(rng.choice([0, 1, 3, 4]))
        row = int(rng.integers(5, n - 5))
        states[row:, pcu] = 1 - states[row, pcu]
    return states


# ---------------------------------------------------------------- file writers
def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def _fits_bytes(hdul: fits.HDUList) -> bytes:  # astropy for the few small files lcfile builds
    for hdu in hdul:  # checksums without astropy's date in their comments: the same seed gives the same bytes
        hdu.add_checksum(when="HDU checksum")
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


def _date_time(met: float) -> tuple[str, str]:
    when = _EPOCH0 + dt.timedelta(seconds=float(met))
    return when.strftime("%d/%m/%y"), when.strftime("%H:%M:%S")


def _common(obs: Observation) -> list[tuple]:
    return [("TELESCOP", "XTE", "mission name"), ("INSTRUME", "PCA", "instrument"),
            ("OBS_ID", str(obs.obsid), "observation ID"), ("OBJECT", obs.target_name, "target name"),
            ("RA_OBJ", obs.ra, "[deg] target right ascension"), ("DEC_OBJ", obs.dec, "[deg] target declination"),
            ("ORIGIN", "rxte_hpc.sim.simulate", "synthetic archive")]


def _time(tstart: float, tstop: float, timedel: float | None = TIMEDEL) -> list[tuple]:
    return time_cards(RXTE_TIMEREF, tstart=tstart, tstop=tstop, timezero=TIMEZERO, timedel=timedel)


def _fmi(obs: Observation, start: float, stop: float) -> bytes:
    d0, t0 = _date_time(start)
    d1, t1 = _date_time(stop)
    cols = [
        Col("ObsId", "15A", np.array([str(obs.obsid)])),
        Col("StartMET", "D", np.array([start]), "s"),
        Col("StopMET", "D", np.array([stop]), "s"),
        Col("StartDate", "8A", np.array([d0])),
        Col("StopDate", "8A", np.array([d1])),
        Col("StartTime", "8A", np.array([t0])),
        Col("StopTime", "8A", np.array([t1])),
        Col("Std_Prod_Index_File", "40A", np.array([f"stdprod/FIST_{int(start):x}-{int(stop):x}"])),
    ]
    cards = _common(obs) + _time(start, stop, None)
    return primary_bytes(cards) + table_bytes("XTE_MI", cols, cards)


def _hk_file(obs: Observation, tl: _Timeline, pcu: int) -> bytes:
    keep = ~tl.null_rows
    on = tl.pcu_on[keep, pcu].astype(np.uint8)
    cols = [Col("Time", "D", tl.time_raw[keep], "s")]
    cols += [Col(f"{name}_PCU{pcu}", "B", on) for name in ("cmdhvXE", "hvXEon", "hvXErly")]
    cols.append(Col(f"dsVle_PCU{pcu}", "B", tl.vle[keep, pcu].astype(np.uint8)))
    cards = _common(obs) + _time(tl.time_raw[0], tl.time_raw[-1] + TIMEDEL)
    ext_cards = cards + [("APPID", 90 + pcu, f"PCU{pcu} housekeeping")]
    return _gz(primary_bytes(cards) + table_bytes("XTE_HK", cols, ext_cards))


def _gti_intervals(times: np.ndarray) -> np.ndarray:
    if not len(times):
        return np.zeros((0, 2))
    breaks = np.nonzero(np.diff(times) > TIMEDEL * 1.5)[0]
    starts = np.concatenate([[times[0]], times[breaks + 1]])
    stops = np.concatenate([times[breaks], [times[-1]]]) + TIMEDEL
    return np.column_stack([starts, stops])


def _std2_file(obs: Observation, tl: _Timeline, rows: np.ndarray, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """One gzipped Standard-2 file for `rows` of the timeline, and its (n, 5, 6, 129) spectra."""
    time_raw = tl.time_raw[rows]
    t_abs = time_raw + TIMEZERO
    on = tl.pcu_on[rows]
    live = expected_live_time(t_abs, on, tl.vle[rows])
    src, bkg = expected_spectra(t_abs)
    mean = (src + bkg)[:, None] * live[:, :, None, None]
    counts = rng.poisson(np.where(on[:, :, None, None] > 0, mean, 0.0)).astype(np.int16)
    cols = [Col("Time", "D", time_raw, "s")]
    cards: list[tuple] = []
    for p in range(N_PCU):
        for i, anode in enumerate(ANODES):
            cols.append(Col(f"{anode}SpecPcu{p}", f"{N_STD2}I", counts[:, p, i], "count"))
            cards += [(f"TDDES{len(cols)}", f"D[{p}] & E[{anode}] & C[0~255]", ""), (f"1CPIX{len(cols)}", CPIX, "")]
    vp_lost = np.stack([time_raw >= PROPANE_LOSS_MET.get(p, np.inf) for p in range(N_PCU)], axis=1)
    vp_on = (on > 0) & ~vp_lost
    vp_spec = rng.poisson(np.where(vp_on, 44.0 * TIMEDEL / N_STD2, 0.0)[:, :, None] * np.ones(N_STD2)).astype(np.int16)
    for p in range(N_PCU):
        cols.append(Col(f"VpSpecPcu{p}", f"{N_STD2}I", vp_spec[:, p], "count"))
        cards += [(f"TDDES{len(cols)}", f"D[{p}] & E[VPR] & C[0~255]", ""), (f"1CPIX{len(cols)}", CPIX, "")]
    bkg29 = background_rate_2_9(t_abs)
    for name in ALL_RATES:
        mean_rate = L7_RATE_PER_BKG * bkg29[:, None] if name in L7_RATES else np.full((len(rows), 1), RATE_MEANS[name])
        lam = np.where(vp_on if name.startswith("VpX1") else on > 0, mean_rate * TIMEDEL, 0.0)
        values = rng.poisson(lam).astype(np.int16)
        for p in range(N_PCU):
            cols.append(Col(f"{name}Pcu{p}", "I", values[:, p], "count"))
            cards.append((f"TDDES{len(cols)}", f"D[{p}] & E[{name.removesuffix('Cnt')}]", ""))
    tstart, tstop = float(time_raw[0]), float(time_raw[-1] + TIMEDEL)
    head = _common(obs) + [("DATAMODE", "Standard2f", "science data mode"),
                           ("HDUCLASS", "OGIP", "format conforms to OGIP standard"),
                           ("HDUCLAS1", "ARRAY", "binned science array"),
                           ("HDUCLAS2", "TOTAL", "gross counts, source + background")]
    head += _time(tstart, tstop) + [("DELTAT", TIMEDEL, "[s] accumulation time of a row")]
    gti = _gti_intervals(time_raw)
    gti_cols = [Col("START", "D", gti[:, 0], "s"), Col("STOP", "D", gti[:, 1], "s")]
    gti_cards = [("HDUCLASS", "OGIP", ""), ("HDUCLAS1", "GTI", ""), ("HDUCLAS2", "STANDARD", "")] + _time(tstart, tstop, None)
    data = (primary_bytes(_common(obs) + _time(tstart, tstop, None)) + table_bytes("XTE_SA", cols, head + cards)
            + table_bytes("STDGTI", gti_cols, gti_cards))
    return _gz(data), counts


def _filter_file(obs: Observation, tl: _Timeline) -> bytes:
    nul = tl.null_rows
    t_abs = tl.time_raw + TIMEZERO

    def b(values: np.ndarray) -> np.ndarray:
        return np.where(nul, 255, values).astype(np.uint8)

    def e(values: np.ndarray) -> np.ndarray:
        return np.where(nul, np.nan, values).astype(np.float32)

    cols = [Col("Time", "D", tl.time_raw, "s"), Col("ELV", "E", e(tl.elv), "deg"), Col("OFFSET", "E", e(tl.offset), "deg"),
            Col("NUM_PCU_ON", "B", b(tl.pcu_on.sum(axis=1)), tnull=255)]
    cols += [Col(f"PCU{p}_ON", "B", b(tl.pcu_on[:, p]), tnull=255) for p in range(N_PCU)]
    saa = np.mod((t_abs + 1234.0 * (obs.prnb % 7)) / 60.0, ORBIT_S / 60.0 * 3) - 5.0
    cols.append(Col("TIME_SINCE_SAA", "E", e(saa), "min"))
    ratio = (RATE_MEANS["VpX1LCnt"] + RATE_MEANS["VpX1RCnt"]) / RATE_MEANS["Q6VxVpXeCnt"]
    for p in range(N_PCU):
        lost = tl.time_raw >= PROPANE_LOSS_MET.get(p, np.inf)
        electron = np.where(tl.pcu_on[:, p] > 0, np.where(lost, 0.0, ratio * (1 + 0.1 * np.sin(t_abs / 900.0))), np.nan)
        cols.append(Col(f"ELECTRON{p}", "E", e(electron)))
    cards = _common(obs) + _time(float(tl.time_raw[0]), float(tl.time_raw[-1]))
    ext = cards + [("CREATOR", "rxte_hpc.sim.simulate (xtefilt stand-in)", "program that made this file")]
    return _gz(primary_bytes(cards) + table_bytes("XTE_MKF", cols, ext))


def _stdprod(obs: Observation, tl: _Timeline, std2_rows: np.ndarray, counts: np.ndarray) -> bytes | None:
    """`xp<obsid>_n2a.lc.gz` as HEASARC made them (the real ones' headers and HISTORY, tests/data): layer 1
    of the PCUs on throughout (ROWIDn), no dead-time correction (DEADAPP = F), background subtracted, rescaled
    by `fcalc RATE * f` (about 1/NPCU in the real files, exactly 1/NPCU here): net count/s per PCU, not per live PCU.
    """
    time_raw = tl.time_raw[std2_rows]
    t_abs = time_raw + TIMEZERO
    chmax = 24 if epoch_of(t_abs[:1])[0] <= 3 else 21
    mask = abs_channel_mask(5, chmax)
    bad = bad_rows(time_raw, tl.pcu_on[std2_rows])
    pcus = [p for p in range(N_PCU) if not bad[1:-1, p].any()] or [int(np.argmin(bad.sum(axis=0)))]
    with np.errstate(invalid="ignore"):
        keep = (tl.elv[std2_rows] > 4) & (tl.offset[std2_rows] < 0.1) & ~bad[:, pcus].any(axis=1)
    if not keep.any():
        return None
    layer1 = [i for i, anode in enumerate(ANODES) if anode.startswith("X1")]
    c = counts[keep][:, pcus][:, :, layer1][..., mask].sum(axis=(1, 2, 3)).astype(float)
    scale = 1.0 / len(pcus)
    live_fraction = expected_live_time(t_abs[keep], tl.pcu_on[std2_rows][keep], tl.vle[std2_rows][keep])[:, pcus] / TIMEDEL
    # the background model is per live PCU; the product subtracts it as it was accumulated (dead time not removed)
    background = expected_background_rate(t_abs[keep], mask, (1,)) * live_fraction.mean(axis=1)
    rate, error = c / TIMEDEL * scale - background, np.sqrt(c) / TIMEDEL * scale
    rows = {f"ROWID{2 * i + j + 1}": f"X1{side}SpecPcu{p}" for i, p in enumerate(pcus) for j, side in enumerate("LR")}
    lc = LightCurve(time=t_abs[keep], rate=rate.astype(np.float32), error=error.astype(np.float32),
                    fracexp=np.ones(int(keep.sum()), dtype=np.float32), timedel=TIMEDEL,
                    keywords={"OBJECT": obs.target_name, "HDUCLAS2": "NET", "BACKAPP": True, "DEADAPP": False,
                              "VIGNAPP": False, "MINCHAN": 0, "MAXCHAN": 255, "TELESCOP": "XTE", "INSTRUME": "PCA",
                              "CPIX": "0~4,5:53,(54~135;2),(136~237;3),(238~249;4),250~255", **rows,
                              "CREATOR": "rxte_hpc.sim.simulate (SAEXTRCT stand-in)"})
    hdul = lightcurve_hdulist([lc], {"OBJECT": obs.target_name, "RA_PNT": obs.ra, "DEC_PNT": obs.dec,
                                     "ORIGIN": "rxte_hpc.sim.simulate", "CREATOR": "rxte_hpc.sim.simulate (standard products)"})
    header = hdul[1].header
    for text in (f"CHMIN for filtering was {5:20d}", f"CHMAX for filtering was {chmax:20d}",
                 "simulated: RATE = layer-1 counts/16 s/NPCU - background, dead time kept"):
        header.add_comment(text)
    for column in ("RATE", "ERROR"):
        for text in ("TASK: fcalc on FILENAME: std2_chanband.lc", f"Resultant column name: {column}",
                     f"Expression: {column} * {scale:.15f}"):
            header.add_history(text)
    return _gz(_fits_bytes(hdul))


# ---------------------------------------------------------------- one ObsID
def _truth_row(obs: Observation, tl: _Timeline) -> dict:
    rows = tl.std2_rows
    t_abs = tl.time_raw[rows] + TIMEZERO
    bad = bad_rows(tl.time_raw[rows], tl.pcu_on[rows])
    good = (~bad).any(axis=1)
    rate = expected_source_rate(t_abs[good], abs_channel_mask(5, 24)) if good.any() else np.array([np.nan])
    return {"obsid": str(obs.obsid), "epoch": int(epoch_of(t_abs[:1])[0]) if len(t_abs) else 0,
            "mean_net_rate": float(np.mean(rate)),
            "pcus_on": ",".join(str(p) for p in range(N_PCU) if tl.pcu_on[:, p].any()),
            "pcus_good": ",".join(str(p) for p in range(N_PCU) if (~bad[:, p]).any())}


def _simulate_one(root: Path, obs: Observation, seed: int, index: int, kind: str | None) -> dict:
    """Write one ObsID's raw files and prepared products; returns its truth row."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
    tl = _timeline(obs, rng, kind)
    odir = root / str(obs.obsid.archive_dir(obs.cycle))
    (odir / "pca").mkdir(parents=True, exist_ok=True)
    (odir / "stdprod").mkdir(parents=True, exist_ok=True)
    start, stop = float(tl.time_raw[0]), float(tl.time_raw[-1] + TIMEDEL)
    (odir / "FMI").write_bytes(_fmi(obs, start, stop))
    for pcu in range(N_PCU):
        (odir / "pca" / f"FH5{'abcde'[pcu]}_{int(start):x}-{int(stop):x}.gz").write_bytes(_hk_file(obs, tl, pcu))
    (odir / "stdprod" / obs.obsid.filter_file_name()).write_bytes(_filter_file(obs, tl))
    idx = np.nonzero(tl.std2_rows)[0]
    split = len(idx) > 150 and rng.random() < 0.5
    parts = np.array_split(idx, 2) if split else [idx]
    all_counts = []
    corrupt: list[Path] = []
    if kind != "no_std2":
        for part in parts:
            data, counts = _std2_file(obs, tl, part, rng)
            t0, t1 = tl.time_raw[part[0]], tl.time_raw[part[-1]] + TIMEDEL
            path = odir / "pca" / f"FS4a_{int(t0):x}-{int(t1):x}.gz"
            path.write_bytes(data)
            corrupt.append(path)
            all_counts.append(counts)
        lc = _stdprod(obs, tl, idx, np.concatenate(all_counts))
        if lc is not None:
            path = odir / "stdprod" / obs.obsid.stdprod_lc_name("a")
            path.write_bytes(lc)
            corrupt.append(path)
    prepared = root / "prepared" / str(obs.obsid)
    if kind == "corrupt":
        prepare_obsid(odir, prepared)
        for path in corrupt + sorted(p for p in prepared.iterdir() if p.name.startswith("FS4a_")):
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    else:
        try:
            prepare_obsid(odir, prepared)
        except NoDataError as exc:
            log.info("prepared products incomplete, as pcaprepobsid would leave them: %s", exc)
    row = _truth_row(obs, tl)
    row["broken"] = kind or ""
    return row


# ---------------------------------------------------------------- public API
def simulate_archive(outdir: Path, n_obs: int = 200, seed: int = 1, with_broken: bool = False) -> SimArchive:
    """Write a synthetic archive of `n_obs` ObsIDs (plus 3 broken ones if asked) under `outdir`."""
    if n_obs < 1:
        raise ValueError(f"n_obs must be at least 1, not {n_obs}")
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    work = planned_observations(n_obs, seed, with_broken)
    jobs = [(root, obs, seed, i, kind) for i, (obs, kind) in enumerate(work)]
    workers = min(len(jobs) // 20, os.cpu_count() or 1, 8)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            truth = list(pool.map(_simulate_star, jobs, chunksize=4))
    else:
        truth = [_simulate_star(job) for job in jobs]
    observations = tuple(obs for obs, _ in work)
    _write_master(root / "xtemaster.ecsv", observations, seed)
    Table(rows=truth, names=list(truth[0])).write(root / "sim_truth.ecsv", format="ascii.ecsv", overwrite=True)
    broken = MappingProxyType({str(obs.obsid): BROKEN_KINDS[kind] for obs, kind in work if kind is not None})
    log.info("simulated %d ObsIDs under %s (%d broken)", len(observations), root, len(broken))
    return SimArchive(root=root, observations=observations, broken=broken)


def _simulate_star(job: tuple) -> dict:
    return _simulate_one(*job)


def _write_master(path: Path, observations: tuple[Observation, ...], seed: int) -> None:
    """xtemaster rows; plus off-target and zero-exposure rows a planner must drop."""
    rows = [(o.target_name, o.cycle, o.prnb, o.obsid.short, o.time_mjd, o.exposure_s, o.ra, o.dec) for o in observations]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    for i, sep in enumerate((0.15, 0.3, 0.6)):
        mjd = float(rng.uniform(FIRST_MJD, LAST_MJD))
        cyc = cycle_of(mjd)
        angle = rng.uniform(0, 2 * np.pi)
        ra = TARGET_RA + sep * np.cos(angle) / np.cos(np.radians(TARGET_DEC))
        dec = TARGET_DEC + sep * np.sin(angle)
        rows.append((f"HD_9{3129 + i}", cyc, proposal_of(cyc), f"{proposal_of(cyc):05d}-07-0{i}-00", round(mjd, 6),
                     1500.0, round(float(ra), 5), round(float(dec), 5)))
    cyc = cycle_of(52000.0)
    rows.append((TARGET_NAME, cyc, proposal_of(cyc), f"{proposal_of(cyc):05d}-09-00-00", 52000.0, 0.0, TARGET_RA, TARGET_DEC))
    rows.sort(key=lambda r: r[4])
    table = Table(rows=rows, names=["target_name", "cycle", "prnb", "obsid", "time", "exposure", "ra", "dec"])
    table["time"].unit, table["exposure"].unit = "d", "s"
    table["ra"].unit = table["dec"].unit = "deg"
    table.meta["description"] = "simulated xtemaster rows (time = start MJD)"
    table.write(path, format="ascii.ecsv", overwrite=True)


def main_summary(archive: SimArchive) -> str:
    """What `rxte-hpc simulate` prints: counts, span, exposure range, broken ObsIDs."""
    obs = archive.observations
    exp = np.array([o.exposure_s for o in obs])
    lines = [
        f"simulated archive: {archive.root}",
        f"  {len(obs)} ObsIDs, MJD {min(o.time_mjd for o in obs):.1f}-{max(o.time_mjd for o in obs):.1f}, "
        f"cycles AO{min(o.cycle for o in obs)}-AO{max(o.cycle for o in obs)}",
        f"  exposure {exp.min():.0f}-{exp.max():.0f} s (total {exp.sum() / 1e3:.1f} ks)",
        f"  xtemaster table: {archive.root / 'xtemaster.ecsv'}; prepared products: {archive.root / 'prepared'}",
    ]
    lines.append(f"  broken ObsIDs ({len(archive.broken)}):" if archive.broken else "  broken ObsIDs: none")
    lines += [f"    {obsid}: {what}" for obsid, what in sorted(archive.broken.items())]
    return "\n".join(lines)
