"""The synthetic archive: real layout and formats, determinism, and a model the data obey."""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from rxte_hpc.fits.lcfile import read_lightcurve, read_timezero
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.sim.simulate import (
    SimArchive, expected_background_rate, expected_source_rate, main_summary, prepare_obsid, simulate_archive,
)
from where import DATA

ANODES = [f"X{layer}{side}" for layer in (1, 2, 3) for side in "LR"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> SimArchive:
    return simulate_archive(tmp_path_factory.mktemp("sim") / "arch", n_obs=8, seed=3, with_broken=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> SimArchive:
    return simulate_archive(tmp_path_factory.mktemp("plain") / "arch", n_obs=6, seed=5)


def _good(archive: SimArchive):
    return [o for o in archive.observations if str(o.obsid) not in archive.broken]


def _odir(archive: SimArchive, obs) -> Path:
    return archive.root / str(obs.obsid.archive_dir(obs.cycle))


def _cpix_bins(text: str) -> list[tuple[int, int]]:
    """Parse a CPIX string independently of the simulator: a~b one bin, a:b one per channel, (a~b;n) groups of n."""
    bins = []
    for part in re.findall(r"\(?([0-9~:;]+)\)?", text):
        if ";" in part:
            rng, step = part.split(";")
            lo, hi = map(int, rng.split("~"))
            bins += [(c, c + int(step) - 1) for c in range(lo, hi + 1, int(step))]
        elif ":" in part:
            lo, hi = map(int, part.split(":"))
            bins += [(c, c) for c in range(lo, hi + 1)]
        else:
            lo, hi = map(int, part.split("~"))
            bins.append((lo, hi))
    return bins


def test_layout_and_names(archive):
    assert len(_good(archive)) == 8
    for obs in _good(archive):
        d = _odir(archive, obs)
        assert d.relative_to(archive.root).parts == (f"AO{obs.cycle}", f"P{obs.prnb:05d}", str(obs.obsid))
        assert (d / "FMI").is_file()
        std2 = sorted((d / "pca").glob("FS4a_*"))
        assert std2 and all(re.fullmatch(r"FS4a_[0-9a-f]{7,8}-[0-9a-f]{7,8}\.gz", p.name) for p in std2)
        assert sorted(p.name[:4] for p in (d / "pca").glob("FH5*")) == ["FH5a", "FH5b", "FH5c", "FH5d", "FH5e"]
        assert (d / "stdprod" / obs.obsid.filter_file_name()).is_file()
        assert (d / "stdprod" / obs.obsid.stdprod_lc_name("a")).is_file()
        prep = archive.root / "prepared" / str(obs.obsid)
        assert (prep / "pcaprepobsid_done.txt").is_file()
        dt = (prep / "FP_dtstd2.lis").read_text().split()
        assert [Path(p).name for p in dt] == [p.name.removesuffix(".gz") + "_dt" for p in std2]
        assert all(Path(p).is_file() for p in dt + (prep / "FP_dtbkg2.lis").read_text().split())
        assert len(list(prep.glob("FP_*-*.xfl"))) == 1
    master = Table.read(archive.root / "xtemaster.ecsv")
    assert {"target_name", "cycle", "prnb", "obsid", "time", "exposure", "ra", "dec"} <= set(master.colnames)
    assert (master["exposure"] == 0).sum() == 1
    sep = np.hypot((master["ra"] - 161.2647) * np.cos(np.radians(-59.6844)), master["dec"] + 59.6844)
    assert (sep > 0.1).sum() >= 2
    truth = Table.read(archive.root / "sim_truth.ecsv")
    assert len(truth) == len(archive.observations)
    assert "ObsIDs" in main_summary(archive)


def test_exposures_span_a_wide_range(tmp_path):
    from rxte_hpc.sim.simulate import campaign

    exp = np.array([o.exposure_s for o in campaign(400, 1)])
    assert exp.min() < 500 and exp.max() > 8000 and 0.5 < np.mean((exp >= 750) & (exp <= 3000))


def test_fmi_and_std2_headers(archive):
    obs = _good(archive)[0]
    d = _odir(archive, obs)
    with fits.open(d / "FMI") as fmi:
        row = fmi["XTE_MI"].data
        assert len(row) == 1 and row["ObsId"][0] == str(obs.obsid)
        for key in ("MJDREFI", "MJDREFF", "TIMESYS", "TIMEZERO"):
            assert key in fmi["XTE_MI"].header
        start, stop = int(row["StartMET"][0]), int(row["StopMET"][0])
    path = sorted((d / "pca").glob("FS4a_*"))[0]
    with fits.open(path) as hdul:
        sa = hdul["XTE_SA"]
        hdr = sa.header
        assert hdr["DATAMODE"].startswith("Standard2") and hdr["HDUCLAS2"] == "TOTAL"
        assert hdr["TIMEZERO"] == pytest.approx(3.37843167) and hdr["TIMEDEL"] == 16
        names = sa.columns.names
        for p in range(5):
            for a in ANODES:
                n = names.index(f"{a}SpecPcu{p}") + 1
                assert sa.columns[n - 1].format == "129I"
                assert hdr[f"TDDES{n}"] == f"D[{p}] & E[{a}] & C[0~255]"
                bins = _cpix_bins(hdr[f"1CPIX{n}"])
                assert len(bins) == 129 and bins[0] == (0, 4) and bins[-1] == (250, 255)
            for rate in ("VLECnt", "VpX1LCnt", "VpX1RCnt", "Q6VxVpXeCnt", "X1LX1RCnt", "X2RX3RCnt"):
                assert f"{rate}Pcu{p}" in names
        assert hdr["TSTART"] == sa.data["Time"][0]
        assert np.all(np.diff(sa.data["Time"]) >= 16)
        gti = hdul["STDGTI"]
        assert gti.header["TIMEZERO"] == pytest.approx(3.37843167)
        assert gti.data["START"][0] == sa.data["Time"][0]
    hexes = path.name[5:-3].split("-")
    assert start <= int(hexes[0], 16) < int(hexes[1], 16) <= stop


def test_filter_file_format_and_nulls(archive):
    saw_null_attitude = False
    for obs in _good(archive):
        with fits.open(_odir(archive, obs) / "stdprod" / obs.obsid.filter_file_name()) as hdul:
            mkf = hdul["XTE_MKF"]
            assert "Time" in mkf.columns.names
            assert mkf.header["TIMEPIXR"] == 0 and mkf.header["TIMEDEL"] == 16
            assert mkf.header["TSTART"] == mkf.data["Time"][0] and mkf.header["TSTOP"] == mkf.data["Time"][-1]
            assert mkf.columns["PCU0_ON"].format == "B" and mkf.columns["PCU0_ON"].null == 255
            elv = mkf.data["ELV"]
            saw_null_attitude |= bool(np.isnan(elv[0]))
            for col in ("OFFSET", "NUM_PCU_ON", "TIME_SINCE_SAA", "ELECTRON4"):
                assert col in mkf.columns.names
    assert saw_null_attitude


REAL_STDPROD = DATA / "xp5001101_e5_n2a.lc"


def _stdprod_facts(header: fits.Header) -> tuple[list[str], list[float]]:
    """The ROWIDn columns and the fcalc rescaling factors a standard product's header records."""
    rows = [str(header[k]) for k in header if k.startswith("ROWID")]
    factors = [float(m.group(1)) for h in header["HISTORY"] for m in [re.search(r"Expression: RATE \* ([0-9.]+)", str(h))] if m]
    return rows, factors


@pytest.mark.parametrize("obs_index", [0, 1, 2])
def test_stdprod_light_curve_like_the_real_ones(archive, obs_index):
    """As HEASARC's (tests/data): layer 1 only, DEADAPP = F, rescaled by fcalc RATE * f with f ~ 1/NPCU."""
    with fits.open(REAL_STDPROD) as hdul:
        real = hdul[1].header
        real_rows, real_factors = _stdprod_facts(real)
    assert real["DEADAPP"] is False and all(r.startswith("X1") for r in real_rows)
    assert len(real_factors) == 1 and abs(real_factors[0] * (len(real_rows) // 2) - 1) < 0.02
    obs = _good(archive)[obs_index]
    path = _odir(archive, obs) / "stdprod" / obs.obsid.stdprod_lc_name("a")
    with fits.open(path, checksum=True) as hdul:
        hdr = hdul[1].header
        assert hdr["EXTNAME"] == "RATE" and hdr["TIMEDEL"] == 16
        for key in ("TSTARTI", "TSTARTF", "TIMEZERI", "TIMEZERF", "MJDREFI", "MJDREFF"):
            assert key in hdr
        assert hdr["DEADAPP"] is False and hdr["BACKAPP"] is True and hdr["HDUCLAS2"] == "NET"
        rows, factors = _stdprod_facts(hdr)
        comments = " ".join(str(c) for c in hdr["COMMENT"])
        assert re.search(r"CHMIN for filtering was\s+5", comments)
        assert re.search(r"CHMAX for filtering was\s+(24|21)", comments)
    pcus = sorted({int(r[-1]) for r in rows})
    assert rows == [f"X1{side}SpecPcu{p}" for p in pcus for side in "LR"]
    assert factors == [pytest.approx(1.0 / len(pcus), rel=1e-12)]
    lc = read_lightcurve(path)
    assert np.all(np.isfinite(lc.rate)) and lc.n_rows > 5
    chmax = 24 if "24" in comments.split("CHMAX")[1] else 21
    mask = np.zeros(129, bool)
    mask[1:chmax - 3] = True  # abs channels 5..chmax are Standard-2 bins 1..chmax-4
    # not dead-time corrected: the per-live-PCU model times the live fraction pcadeadcalc2 gives (the _dt files)
    live = {}
    for dt in sorted((archive.root / "prepared" / str(obs.obsid)).glob("FS4a_*_dt")):
        with fits.open(dt) as hdul:
            t = np.asarray(hdul[1].data["Time"]) + read_timezero(hdul[1].header)
            frac = np.mean([hdul[1].data[f"LiveTimePcu{p}"] for p in pcus], axis=0) / 16.0
            live.update(zip(np.round(t, 3), frac))
    fraction = np.array([live[round(float(t), 3)] for t in lc.time])
    assert np.all((fraction > 0.5) & (fraction < 1.0))
    model = expected_source_rate(lc.time, mask, layers=(1,)) * fraction
    pull = (lc.rate.mean() - model.mean()) / (np.sqrt(np.sum(lc.error**2)) / lc.n_rows)
    assert abs(pull) < 5


def test_same_seed_same_bytes_other_seed_differs(tmp_path, plain):
    again = simulate_archive(tmp_path / "again", n_obs=6, seed=5)
    other = simulate_archive(tmp_path / "other", n_obs=6, seed=6)
    obs = plain.observations[2]
    rel = obs.obsid.archive_dir(obs.cycle)
    name = sorted((plain.root / str(rel) / "pca").glob("FS4a_*"))[0].name
    first = (plain.root / str(rel) / "pca" / name).read_bytes()
    assert first == (again.root / str(rel) / "pca" / name).read_bytes()
    for sub in ("xtemaster.ecsv", "sim_truth.ecsv"):
        assert (plain.root / sub).read_bytes() == (again.root / sub).read_bytes()
    dt = sorted((plain.root / "prepared" / str(obs.obsid)).glob("*_dt"))[0]
    assert dt.read_bytes() == (again.root / "prepared" / str(obs.obsid) / dt.name).read_bytes()
    assert (plain.root / "xtemaster.ecsv").read_bytes() != (other.root / "xtemaster.ecsv").read_bytes()


def test_prepare_obsid_reproduces_from_raw_files(tmp_path, plain):
    obs = plain.observations[0]
    out = tmp_path / "prep"
    prepare_obsid(_odir(plain, obs), out)
    ref = plain.root / "prepared" / str(obs.obsid)
    for path in ref.glob("FS4a_*_dt*"):
        assert (out / path.name).read_bytes() == path.read_bytes()


def _dt_rows(archive: SimArchive):
    for obs in _good(archive):
        for path in sorted((archive.root / "prepared" / str(obs.obsid)).glob("FS4a_*_dt")):
            with fits.open(path) as hdul:
                yield obs, hdul[1].header.copy(), hdul[1].data.copy()


def test_bad_pcu_rows_are_zeroed_with_no_live_time(archive):
    seen_bad = seen_transition = 0
    for _, hdr, data in _dt_rows(archive):
        for p in range(5):
            bad = data[f"BadPcu{p}"]
            spectra = sum(data[f"{a}SpecPcu{p}"].sum(axis=1) for a in ANODES)
            assert np.all(spectra[bad] == 0) and np.all(data[f"LiveTimePcu{p}"][bad] == 0)
            on = data[f"PCU{p}_ON"].astype(int)
            assert np.all(bad[on == 0])
            change = np.nonzero(np.diff(on))[0]
            assert np.all(bad[change]) and np.all(bad[change + 1])
            seen_transition += len(change)
            good = ~bad
            assert np.all(data[f"LiveTimePcu{p}"][good] > 15.5) and np.all(data[f"LiveTimePcu{p}"][good] < 16)
            seen_bad += bad.sum()
    assert seen_bad > 0


def test_propane_rule_after_may_2000(archive):
    late = [(obs, data) for obs, _, data in _dt_rows(archive) if data["Time"][0] >= 201139200]
    assert late, "the campaign must include post-2000 ObsIDs"
    for obs, data in late:
        assert np.all(data["BadPcu0"]) and np.all(data["LiveTimePcu0"] == 0)
        assert np.all(data["X1LSpecPcu0"] == 0)
        if data["Time"][0] >= 409622400:
            assert np.all(data["BadPcu1"])


def test_counts_follow_the_model(archive):
    """Chi-square of Standard-2 counts in abs channels 5-24 against model rate x live time."""
    mask = np.zeros(129, bool)
    mask[1:21] = True  # Standard-2 bins 1..20 = absolute channels 5..24
    chi2 = 0.0
    dof = 0
    for _, hdr, data in _dt_rows(archive):
        t = data["Time"] + read_timezero(hdr)
        rate = expected_source_rate(t, mask) + expected_background_rate(t, mask)
        assert np.all(expected_source_rate(t, mask) > 0) and np.all(expected_background_rate(t, mask) > 0)
        for p in range(5):
            live = data[f"LiveTimePcu{p}"]
            good = live > 0
            counts = sum(data[f"{a}SpecPcu{p}"][:, mask].sum(axis=1) for a in ANODES)[good]
            expect = rate[good] * live[good]
            chi2 += float(np.sum((counts - expect) ** 2 / expect))
            dof += int(good.sum())
    assert dof > 300
    assert abs(chi2 - dof) < 5 * np.sqrt(2 * dof), (chi2, dof)


def test_background_file_matches_background_model(archive):
    mask = np.zeros(129, bool)
    mask[1:21] = True
    obs = _good(archive)[1]
    path = sorted((archive.root / "prepared" / str(obs.obsid)).glob("FS4a_*_dtbkg"))[0]
    with fits.open(path) as hdul:
        hdr, data = hdul[1].header, hdul[1].data
        assert hdr["HDUCLAS2"] == "BACKGROUND" and data.columns["X1LSpecPcu2"].format == "129E"
        t = data["Time"] + hdr["TIMEZERO"]
        for p in range(5):
            live = data[f"LiveTimePcu{p}"]
            good = live > 0
            counts = sum(data[f"{a}SpecPcu{p}"][:, mask].sum(axis=1) for a in ANODES)
            np.testing.assert_allclose(counts[good] / live[good], expected_background_rate(t[good], mask), rtol=1e-4)


def test_broken_obsids_only_when_asked(archive, plain):
    assert not plain.broken and len(plain.observations) == 6
    assert len(archive.broken) == 3 and len(archive.observations) == 11
    by_text = {str(o.obsid): o for o in archive.observations}
    kinds = {what.split()[0]: ObsID(text) for text, what in archive.broken.items()}
    no_std2 = by_text[str(kinds["no"])]
    assert not list((_odir(archive, no_std2) / "pca").glob("FS4a*"))
    assert not (archive.root / "prepared" / str(no_std2.obsid) / "pcaprepobsid_done.txt").exists()
    filtered = by_text[str(kinds["every"])]
    with fits.open(_odir(archive, filtered) / "stdprod" / filtered.obsid.filter_file_name()) as hdul:
        d = hdul[1].data
        with np.errstate(invalid="ignore"):
            assert not np.any((d["ELV"] > 4) & (d["OFFSET"] < 0.1))
    corrupt = by_text[str(kinds["truncated"])]
    for path in (_odir(archive, corrupt) / "pca").glob("FS4a*"):
        with pytest.raises((EOFError, OSError, zlib.error)):
            gzip.decompress(path.read_bytes())
    for path in (archive.root / "prepared" / str(corrupt.obsid)).glob("FS4a_*_dt"):
        with pytest.raises((OSError, ValueError, TypeError)), pytest.warns(Warning):
            with fits.open(path) as hdul:
                hdul[1].data["Time"].sum()
