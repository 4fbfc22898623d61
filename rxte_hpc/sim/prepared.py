"""The simulated sky and instrument model, and what pcaprepobsid makes of raw files.

`sim.py` writes raw archive files from this model; `prepare_obsid` turns the raw
files of one ObsID back into pcaprepobsid's products (filter-file copy, `_dt`,
`_bkg`, `_dtbkg`, list files) reading nothing but those raw files, so the
HEASoft stand-in and the simulator share one implementation. The background
model plays the role of pcabackest's CALDB model: code, not data.
"""
from __future__ import annotations

import gzip
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from astropy.io import fits

from rxte_hpc.core.errors import DataError, NoDataError
from rxte_hpc.fits.writer import Col, columns_of, copied_cards, primary_bytes, table_bytes
from rxte_hpc.fits.lcfile import RXTE_TIMEREF, read_timezero

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- instrument facts
N_PCU = 5
N_STD2 = 129
LAYERS = (1, 2, 3)
ANODES = tuple(f"X{layer}{side}" for layer in LAYERS for side in "LR")  # X1L X1R X2L ...
CPIX = "(0~4),(5:53),(54~135;2),(136~237;3),(238~249;4),(250~255)"
TIMEZERO = 3.37843167  # RXTE clock correction carried by raw files (docs/science.md#time)
TIMEDEL = 16.0
#: pcadeadcalc2 propane rule: PCU0 / PCU1 rows at or after these raw Times are bad.
PROPANE_LOSS_MET = {0: 201139200.0, 1: 409622400.0}
#: Gain-epoch starts (MET), rxte_hpc/data/pca_gain_epochs.csv; epoch 1 starts at launch.
EPOCH_STARTS_MET = (70050782.0, 72227102.0, 164741824.0, 200793604.0)
#: Linear gain per epoch fitted to the e-c table: upper energy edge of abs channel c = a*(c+1)+b.
_GAIN = {1: (0.2567, 0.22), 2: (0.3067, 0.07), 3: (0.3533, 0.17), 4: (0.4178, 0.033), 5: (0.4056, 0.037)}
#: VLE dead time per event for discriminator settings 0..3 (docs/science.md#dead-time).
TAU_VLE = np.array([12e-6, 60e-6, 150e-6, 500e-6])
TAU_EVENT = 10e-6
#: Rate columns of the simulated Standard-2 files: the ones pcadeadcalc2 and pcabackest read.
L7_RATES = ("X1LX1RCnt", "X2LX2RCnt", "X3LX3RCnt", "X1LX2LCnt", "X1RX2RCnt", "X2LX3LCnt", "X2RX3RCnt")
#: Summed into RemainingCnt: of the 27 'other' rates (docs/science.md#standard-2-data) the files carry these.
REMAINING_RATES = ("Q6VxVpXeCnt",) + L7_RATES
ALL_RATES = ("VLECnt", "VpX1LCnt", "VpX1RCnt") + REMAINING_RATES
#: Mean counts/s per on PCU of the rate columns (the L7 coincidences scale with background).
RATE_MEANS = {"VLECnt": 70.0, "VpX1LCnt": 22.0, "VpX1RCnt": 22.0, "Q6VxVpXeCnt": 300.0}
L7_RATE_PER_BKG = 0.12  # each L7 rate in counts/s per (counts/s of 2-9 keV background)
BKG_VP_COUNTS = 750.0  # pcadeadcalc2's fixed propane counts per 16 s for background files
BKG_REMAINING_PER_VLE = 7.91


def std2_abs_ranges() -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] absolute channels of each Standard-2 bin, from the CPIX grouping."""
    groups = ((0, 5, 5), (5, 54, 1), (54, 136, 2), (136, 238, 3), (238, 250, 4), (250, 256, 6))  # first, end, width
    lo = [c for first, end, width in groups for c in range(first, end, width)]
    hi = [c + width - 1 for first, end, width in groups for c in range(first, end, width)]
    return np.array(lo), np.array(hi)


def abs_channel_mask(chmin: int, chmax: int) -> np.ndarray:
    """Standard-2 bins that overlap absolute channels [chmin, chmax] (saextrct's rule)."""
    lo, hi = std2_abs_ranges()
    return (hi >= chmin) & (lo <= chmax)


def epoch_of(met: np.ndarray) -> np.ndarray:
    """Gain epoch (1..5) of absolute MET values."""
    return 1 + np.searchsorted(np.asarray(EPOCH_STARTS_MET), np.asarray(met, dtype=float), side="right")


# ---------------------------------------------------------------- sky model
CYCLE_DAYS = 2024.0  # Eta Car's 5.54-yr X-ray cycle
MINIMUM_MJD = 50799.0


def source_rate_2_9(met: np.ndarray) -> np.ndarray:
    """Source counts/s per PCU in 2-9 keV, all layers: slow rise, flares, deep minima.

    Minima recur every 2024 d from MJD 50799 (so near 52823, 54847); the
    ~85-d flares before each minimum give the campaign realistic structure.
    """
    mjd = RXTE_TIMEREF.mjd(met)
    phase = np.mod((mjd - MINIMUM_MJD) / CYCLE_DAYS, 1.0)
    rise = 14.0 + 22.0 * phase**4
    flares = 1.0 + 0.35 * np.clip((phase - 0.75) / 0.25, 0, 1) * np.sin(np.pi * mjd / 85.0) ** 2
    dist = np.minimum(np.abs(phase - 0.012), 1 - np.abs(phase - 0.012))
    dip = 1.0 - 0.88 * np.exp(-0.5 * (dist / 0.012) ** 2)
    return rise * flares * dip


def background_rate_2_9(met: np.ndarray) -> np.ndarray:
    """Background counts/s per PCU in 2-9 keV, all layers: orbital modulation, slow growth."""
    met = np.asarray(met, dtype=float)
    orbital = 1.0 + 0.25 * np.sin(2 * np.pi * met / 5760.0)
    secular = 1.0 + 0.15 * (met - 7e7) / 3.4e8
    return 7.0 * orbital * secular


def _bin_energy_edges(epoch: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = _GAIN[epoch]
    lo, hi = std2_abs_ranges()
    return a * lo + b, a * (hi + 1) + b


def _integrate_bins(shape: Callable[[np.ndarray], np.ndarray], epoch: int) -> np.ndarray:
    """∫ shape(E) dE over each Standard-2 bin's energy range, and over [2, 9] keV."""
    grid = np.linspace(0.05, 120.0, 24001)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (shape(grid[1:]) + shape(grid[:-1])) * np.diff(grid))])
    e_lo, e_hi = _bin_energy_edges(epoch)
    per_bin = np.interp(e_hi, grid, cum) - np.interp(e_lo, grid, cum)
    band = np.interp(9.0, grid, cum) - np.interp(2.0, grid, cum)
    return per_bin / band


def _layer_split(energy: np.ndarray, top: float, slope: float) -> np.ndarray:
    f1 = np.clip(top - slope * energy, 0.2, 0.95)
    return np.stack([f1, 0.6 * (1 - f1), 0.4 * (1 - f1)])


@lru_cache(maxsize=None)
def source_fractions(epoch: int) -> np.ndarray:
    """(3 layers, 129) share of the 2-9 keV source rate per Standard-2 bin (read-only)."""
    def spectrum(e: np.ndarray) -> np.ndarray:  # absorbed hot plasma + 6.7 keV iron line
        return e**-0.5 * np.exp(-e / 4.0) * np.exp(-12.0 * e**-2.6) + 0.02 * np.exp(-0.5 * ((e - 6.7) / 0.15) ** 2)

    e_lo, e_hi = _bin_energy_edges(epoch)
    out = _integrate_bins(spectrum, epoch) * _layer_split(0.5 * (e_lo + e_hi), 0.92, 0.02)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=None)
def background_fractions(epoch: int) -> np.ndarray:
    """(3 layers, 129) share of the 2-9 keV background rate per Standard-2 bin (read-only)."""
    def spectrum(e: np.ndarray) -> np.ndarray:  # particle continuum, soft excess, 30 keV bump
        return 1.0 + 2.5 * np.exp(-e / 2.5) + 0.8 * np.exp(-0.5 * ((e - 30.0) / 6.0) ** 2)

    out = _integrate_bins(spectrum, epoch)[None, :] * np.array([[0.45], [0.30], [0.25]])
    out.flags.writeable = False
    return out


def _expected(time_met: np.ndarray, std2_mask: np.ndarray, layers: Sequence[int],
              fractions: Callable[[int], np.ndarray], norm: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    time_met = np.asarray(time_met, dtype=float)
    mask = np.asarray(std2_mask, dtype=bool)
    if mask.shape != (N_STD2,):
        raise ValueError(f"std2_mask must have {N_STD2} booleans, got shape {mask.shape}")
    rows = [layer - 1 for layer in layers]
    if not rows or min(rows) < 0 or max(rows) > 2:
        raise ValueError(f"layers must be among 1, 2, 3: {layers!r}")
    epochs = epoch_of(time_met)
    share = np.zeros(time_met.shape)
    for epoch in np.unique(epochs):
        share[epochs == epoch] = fractions(int(epoch))[rows][:, mask].sum()
    return norm(time_met) * share


def expected_source_rate(time_met: np.ndarray, std2_mask: np.ndarray, layers: Sequence[int] = LAYERS) -> np.ndarray:
    """Model source counts/s per live PCU in the selected bins and layers at absolute MET."""
    return _expected(time_met, std2_mask, layers, source_fractions, source_rate_2_9)


def expected_background_rate(time_met: np.ndarray, std2_mask: np.ndarray, layers: Sequence[int] = LAYERS) -> np.ndarray:
    """Model background counts/s per live PCU in the selected bins and layers at absolute MET."""
    return _expected(time_met, std2_mask, layers, background_fractions, background_rate_2_9)


def expected_spectra(time_met: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-anode (n, 6, 129) source and background counts/s per PCU, anodes in ANODES order."""
    time_met = np.asarray(time_met, dtype=float)
    src = np.zeros((len(time_met), 3, N_STD2))
    bkg = np.zeros_like(src)
    epochs = epoch_of(time_met)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        src[sel] = source_rate_2_9(time_met[sel])[:, None, None] * source_fractions(int(epoch))
        bkg[sel] = background_rate_2_9(time_met[sel])[:, None, None] * background_fractions(int(epoch))
    # each layer's counts split evenly between its left and right anode chains
    return np.repeat(src, 2, axis=1) / 2.0, np.repeat(bkg, 2, axis=1) / 2.0



# ---------------------------------------------------------------- pcadeadcalc2
def bad_rows(time_raw: np.ndarray, pcu_on: np.ndarray) -> np.ndarray:
    """(n, 5) bad flags as pcadeadcalc2 defaults evaluate them, NULL (-1) counting as bad.

    A row is bad when the PCU is off or unknown, when a neighbouring row's
    state differs or is unknown (so a file's first and last rows are bad:
    `DEFNULL(..., T)` of an expression on a missing neighbour), or under the
    propane rule.
    """
    on = np.asarray(pcu_on)
    unknown = on < 0
    bad = unknown | (on == 0)
    prev = np.vstack([np.full((1, on.shape[1]), -1), on[:-1]])
    nxt = np.vstack([on[1:], np.full((1, on.shape[1]), -1)])
    bad |= (prev < 0) | (nxt < 0) | (prev != on) | (nxt != on)
    for pcu, met in PROPANE_LOSS_MET.items():
        bad[:, pcu] |= np.asarray(time_raw) >= met
    return bad


def dead_time_columns(xe_cnt: np.ndarray | float, vp_cnt: np.ndarray | float, remaining_cnt: np.ndarray | float,
                      vle_cnt: np.ndarray | float, vle_setting: np.ndarray | int, bad: np.ndarray) -> dict[str, np.ndarray]:
    """pcadeadcalc2's per-PCU dead-time quantities (arrays (n, 5)), docs/science.md#dead-time."""
    on_time = np.where(bad, 0.0, TIMEDEL)
    tau = TAU_VLE[np.clip(np.asarray(vle_setting, dtype=int), 0, 3)]
    good = ~bad
    xe_dead = np.where(good, xe_cnt * TAU_EVENT, 0.0)
    vp_dead = np.where(good, vp_cnt * TAU_EVENT, 0.0)
    rem_dead = np.where(good, remaining_cnt * TAU_EVENT, 0.0)
    vle_dead = np.where(good, vle_cnt * tau, 0.0)
    count_dead = xe_dead + vp_dead + rem_dead
    dead = count_dead + vle_dead
    live = on_time - dead
    return {
        "VLEEventDeadTime": np.where(good, tau, 0.0),
        "VLEDeadTime": vle_dead,
        "VpCnt": np.where(good, vp_cnt, 0),
        "VpDeadTime": vp_dead,
        "RemainingCnt": np.where(good, remaining_cnt, 0),
        "RemainingDeadTime": rem_dead,
        "XeCnt": np.where(good, xe_cnt, 0),
        "XeDeadTime": xe_dead,
        "OnTime": on_time,
        "CountDeadTime": count_dead,
        "DeadTime": dead,
        "LiveTime": live,
        "LiveFrac": np.where(good, live / TIMEDEL, 0.0),
    }


def expected_live_time(time_met: np.ndarray, on: np.ndarray, vle_setting: np.ndarray) -> np.ndarray:
    """(n, 5) live time the rate model implies, for drawing raw counts before any HK logic."""
    src, bkg = expected_spectra(time_met)
    xe = (src + bkg).sum(axis=(1, 2))[:, None] * TIMEDEL * np.ones((1, N_PCU))
    vp = np.full_like(xe, (RATE_MEANS["VpX1LCnt"] + RATE_MEANS["VpX1RCnt"]) * TIMEDEL)
    for pcu, met in PROPANE_LOSS_MET.items():
        vp[np.asarray(time_met) - TIMEZERO >= met, pcu] = 0.0
    remaining = (expected_rate_means(time_met)[:, None] * TIMEDEL) * np.ones((1, N_PCU))
    vle = RATE_MEANS["VLECnt"] * TIMEDEL
    cols = dead_time_columns(xe, vp, remaining, vle, vle_setting, np.asarray(on) <= 0)
    return cols["LiveTime"]


def expected_rate_means(time_met: np.ndarray) -> np.ndarray:
    """Sum of the mean 'remaining' rate columns (counts/s per PCU) at each time."""
    bkg = background_rate_2_9(time_met)
    return RATE_MEANS["Q6VxVpXeCnt"] + len(L7_RATES) * L7_RATE_PER_BKG * bkg


# ---------------------------------------------------------------- pcaprepobsid stand-in
_STD2_RE = re.compile(r"^FS4a_[0-9a-f]+-[0-9a-f]+(\.gz)?$")
APPIDS = ("14", "15", "16", "17", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "5a", "5b", "5c", "5d", "5e")


def _hk_pcu_on(hk_dir: Path, time_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCUn_ON (1/0, -1 for NULL) and VLE setting at each row, from the 5 HK files (finterp-like)."""
    on = np.full((len(time_raw), N_PCU), -1, dtype=np.int16)
    vle = np.full((len(time_raw), N_PCU), 2, dtype=np.int16)
    files = sorted(hk_dir.glob("FH5[abcde]_*"))
    if len(files) != N_PCU:
        raise DataError(f"{hk_dir}: expected 5 FH5[a-e] housekeeping files, found {len(files)}")
    for pcu, path in enumerate(files):
        with fits.open(path, memmap=False) as hdul:
            data = hdul[1].data
            t = np.asarray(data["Time"], dtype=float)
            state = (data[f"cmdhvXE_PCU{pcu}"] != 0) & (data[f"hvXEon_PCU{pcu}"] != 0) & (data[f"hvXErly_PCU{pcu}"] != 0)
            setting = np.asarray(data[f"dsVle_PCU{pcu}"], dtype=np.int16)
        if not len(t):
            continue
        idx = np.clip(np.searchsorted(t, time_raw), 0, len(t) - 1)
        alt = np.clip(idx - 1, 0, len(t) - 1)
        idx = np.where(np.abs(t[alt] - time_raw) < np.abs(t[idx] - time_raw), alt, idx)
        near = np.abs(t[idx] - time_raw) <= TIMEDEL / 2
        on[:, pcu] = np.where(near, state[idx].astype(np.int16), -1)
        vle[:, pcu] = setting[idx]
    return on, vle


def _spectra(data: Any, prefix: str = "") -> np.ndarray:
    """(n, 5, 6, 129) spectra in PCU, ANODES order."""
    return np.stack([np.stack([np.asarray(data[f"{a}SpecPcu{p}"]) for a in ANODES], axis=1) for p in range(N_PCU)], axis=1)


def _added_columns(on: np.ndarray, bad: np.ndarray, dead: dict[str, np.ndarray], vle_setting: np.ndarray) -> list[Col]:
    """pcadeadcalc2's columns: PCUn_ON, NUM_PCU_ON, then per PCU Bad/Breakdown/VLEDesc and dead time."""
    n = len(on)
    cols = [Col(f"PCU{p}_ON", "B", np.where(on[:, p] < 0, 255, on[:, p]).astype(np.uint8), tnull=255) for p in range(N_PCU)]
    num = np.where((on < 0).any(axis=1), 255, np.clip(on, 0, 1).sum(axis=1)).astype(np.uint8)
    cols.append(Col("NUM_PCU_ON", "B", num, tnull=255))
    for p in range(N_PCU):
        cols.append(Col(f"BadPcu{p}", "L", bad[:, p]))
        cols.append(Col(f"BreakdownPcu{p}", "L", np.zeros(n, dtype=bool)))
        cols.append(Col(f"VLEDescPcu{p}", "B", np.asarray(vle_setting[:, p], dtype=np.uint8)))
        for name, values in dead.items():
            if name.endswith("Cnt"):
                cols.append(Col(f"{name}Pcu{p}", "J", np.rint(values[:, p]).astype(np.int32), "count"))
            else:
                cols.append(Col(f"{name}Pcu{p}", "D", values[:, p], "s" if name.endswith("Time") else None))
    return cols


def _write(path: Path, parts: list[bytes]) -> None:
    path.write_bytes(b"".join(parts))


def prepare_obsid(obsid_dir: Path, outdir: Path) -> None:
    """Write what `pcaprepobsid indir=obsid_dir outdir=outdir` leaves, from the raw files only.

    Raises NoDataError (after writing the filter file and lists) when pca/ has
    no Standard-2 file, as pcaprepobsid then has nothing to prepare, and
    DataError when a raw file is unreadable. `pcaprepobsid_done.txt` is
    written last and only on success.
    """
    obsid_dir, outdir = Path(obsid_dir), Path(outdir)
    if not (obsid_dir / "pca").is_dir():
        raise DataError(f"{obsid_dir}: no pca/ subdirectory")
    outdir.mkdir(parents=True, exist_ok=True)
    done = outdir / "pcaprepobsid_done.txt"
    done.unlink(missing_ok=True)
    try:
        with fits.open(obsid_dir / "FMI", memmap=False) as fmi:
            row = fmi["XTE_MI"].data
            if len(row) != 1:
                raise DataError(f"{obsid_dir}/FMI: {len(row)} rows, pcaprepobsid needs a single ObsID")
            obsid = str(row["ObsId"][0]).strip()
            start, stop = int(row["StartMET"][0]), int(row["StopMET"][0])
        (outdir / "appid.lis").write_text("".join(f"{a}\n" for a in APPIDS))
        xfl_name = f"FP_{start:08x}-{stop:08x}.xfl"
        stdprod = obsid_dir / "stdprod" / f"x{obsid.replace('-', '')}.xfl.gz"
        (outdir / xfl_name).write_bytes(gzip.decompress(stdprod.read_bytes()))
        (outdir / "xtefilt.log").write_text(f"xtefilt: {obsid} -> {outdir}/{xfl_name}\n")
        (outdir / "FP_xtefilt.lis").write_text(f"{outdir}/{xfl_name}\n")
        hk = sorted((obsid_dir / "pca").glob("FH5[abcde]_*"))
        (outdir / "FP_pcahk.lis").write_text("".join(f"{p}\n" for p in hk))
        std2 = sorted(p for p in (obsid_dir / "pca").glob("FS4a*") if _STD2_RE.match(p.name))
        lists: dict[str, list[str]] = {"FP_std2.lis": [], "FP_bkg2.lis": [], "FP_dtstd2.lis": [], "FP_dtbkg2.lis": []}
        for path in std2:
            base = outdir / path.name.removesuffix(".gz")
            _prepare_file(path, obsid_dir / "pca", base)
            lists["FP_std2.lis"].append(str(path))
            lists["FP_bkg2.lis"].append(f"{base}_bkg")
            lists["FP_dtstd2.lis"].append(f"{base}_dt")
            lists["FP_dtbkg2.lis"].append(f"{base}_dtbkg")
        for name, entries in lists.items():
            (outdir / name).write_text("".join(f"{e}\n" for e in entries))
    except (OSError, EOFError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{obsid_dir}: raw files unreadable ({type(exc).__name__}: {exc})") from exc
    if not std2:
        raise NoDataError(f"{obsid}: no Standard-2 (pca/FS4a_*) file in {obsid_dir}")
    done.write_text(f"pcaprepobsid finished for {obsid}\n")


def _prepare_file(path: Path, hk_dir: Path, base: Path) -> None:
    """`_bkg`, `_dt`, `_dtbkg` for one Standard-2 file (pcabackest + 2 x pcadeadcalc2)."""
    with fits.open(path, memmap=False) as hdul:
        primary = primary_bytes(copied_cards(hdul[0].header))
        sa = hdul["XTE_SA"]
        sa_cards = copied_cards(sa.header)
        sa_cols = columns_of(sa)
        gti = table_bytes(hdul[2].name, columns_of(hdul[2]), copied_cards(hdul[2].header))
        data = sa.data
        time_raw = np.asarray(data["Time"], dtype=float)
        timezero = read_timezero(sa.header)
        spectra = _spectra(data)
        rates = {name: np.stack([np.asarray(data[f"{name}Pcu{p}"], dtype=float) for p in range(N_PCU)], axis=1)
                 for name in ALL_RATES}
    on, vle_setting = _hk_pcu_on(hk_dir, time_raw)
    bad = bad_rows(time_raw, on)
    zeroed = np.where(bad[:, :, None, None], 0, spectra)
    vp = rates["VpX1LCnt"] + rates["VpX1RCnt"]
    remaining = sum(rates[name] for name in REMAINING_RATES)
    dead = dead_time_columns(zeroed.sum(axis=(2, 3)), vp, remaining, rates["VLECnt"], vle_setting, bad)
    replace = {f"{a}SpecPcu{p}": zeroed[:, p, i] for p in range(N_PCU) for i, a in enumerate(ANODES)}
    dt_cols = [Col(c.name, c.tform, replace.get(c.name, c.array), c.unit, c.tnull) for c in sa_cols]
    dt_cards = [c for c in sa_cards if c[0] != "HDUCLAS2"] + [("HDUCLAS2", "TOTAL", "gross counts")]
    extra = _added_columns(on, bad, dead, vle_setting)
    _write(Path(f"{base}_dt"), [primary, table_bytes("XTE_SA", dt_cols + extra, dt_cards), gti])

    # background: model counts such that counts / LiveTime equals the model rate
    _, bkg_rate = expected_spectra(time_raw + timezero)
    bkg_vp = np.full_like(vp, BKG_VP_COUNTS)
    bkg_rem = BKG_REMAINING_PER_VLE * rates["VLECnt"]
    live = np.full(bad.shape, TIMEDEL)
    for _ in range(2):  # the background's own Xe counts enter its dead time; converges at once
        counts = bkg_rate[:, None] * live[:, :, None, None]
        live = dead_time_columns(counts.sum(axis=(2, 3)), bkg_vp, bkg_rem, rates["VLECnt"], vle_setting,
                                 np.zeros_like(bad))["LiveTime"]
    counts = (bkg_rate[:, None] * live[:, :, None, None]).astype(np.float32)
    keep = ("TIMESYS", "TIMEUNIT", "MJDREFI", "MJDREFF", "TIMEPIXR", "TSTART", "TSTOP", "TIMEZERO", "TIMEDEL", "DELTAT",
            "OBJECT", "OBS_ID", "TELESCOP", "INSTRUME", "DATAMODE", "HDUCLASS", "HDUCLAS1", "RA_OBJ", "DEC_OBJ")
    spec_names = [f"{a}SpecPcu{p}" for p in range(N_PCU) for a in ANODES]
    bkg_cards = [c for c in sa_cards if c[0] in keep] + [("HDUCLAS2", "BACKGROUND", "pcabackest model estimate")]
    bkg_cards += [(f"1CPIX{i}", CPIX, "") for i in range(2, 2 + len(spec_names))]
    bkg_cards.append(("CREATOR", "rxte_hpc.sim.prepared (pcabackest stand-in)", ""))

    def bkg_table(spec: np.ndarray, extra_cols: list[Col]) -> bytes:
        cols = [Col("Time", "D", time_raw, "s")]
        cols += [Col(name, f"{N_STD2}E", spec[:, k // 6, k % 6], "count") for k, name in enumerate(spec_names)]
        cols += [Col(f"VLECntPcu{p}", "I", rates["VLECnt"][:, p].astype(np.int16), "count") for p in range(N_PCU)]
        return table_bytes("XTE_SA", cols + extra_cols, bkg_cards)

    zeroed_bkg = np.where(bad[:, :, None, None], np.float32(0), counts)
    bdead = dead_time_columns(zeroed_bkg.sum(axis=(2, 3)), bkg_vp, bkg_rem, rates["VLECnt"], vle_setting, bad)
    _write(Path(f"{base}_dtbkg"), [primary, bkg_table(zeroed_bkg, _added_columns(on, bad, bdead, vle_setting)), gti])
    # pcabackest's intermediate `_bkg` is the same spectra without dead-time columns; a hard
    # link to `_dtbkg` keeps the listed file readable without doubling the largest file on disk
    bkg_path = Path(f"{base}_bkg")
    bkg_path.unlink(missing_ok=True)
    try:
        os.link(f"{base}_dtbkg", bkg_path)
    except OSError:
        _write(bkg_path, [primary, bkg_table(counts, []), gti])
