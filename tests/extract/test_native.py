"""The native extractor: pcaextlc2's rules on tiny hand-made files, then on the simulated archive.

Hand-computed expectations follow docs/science.md#native
items 1-8 (row selection start <= t < stop, file GTI AND user GTI, whole
Standard-2 bins overlapping the band, negative/NULL skipped, RATE = C/L - Cb/Lb,
bins anchored at the first file's TSTART + TIMEZERO). The simulated archive
checks the whole chain against the injected truth with a chi-square test.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rxte_hpc.sim import simulate as sim
from rxte_hpc.archive.local import LocalArchive
from rxte_hpc.core.config import config_from_mapping
from rxte_hpc.core.errors import DataError, NoDataError
from rxte_hpc.extract.base import ExtractContext
from rxte_hpc.extract.gti import filter_gti, intervals_from_flags, parse_filter
from rxte_hpc.extract.native import NativeExtractor
from rxte_hpc.fits.tableio import find_table, read_tables
from rxte_hpc.extract.std2 import bins_for_channels, parse_cpix
from rxte_hpc.fits.lcfile import lightcurve_bytes
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths

from filterkit import row_flags_from_hdu
from where import STANDIN

TZ = 3.0  # a round TIMEZERO keeps hand arithmetic exact
T0 = 1.0e8  # raw MET of the first row: gain epoch 3
EPOCH5 = 2.5e8
OBSID = "10000-01-01-00"
SPEC = [f"X{layer}{side}SpecPcu{pcu}" for pcu in range(5) for layer in (1, 2, 3) for side in "LR"]


# ---------------------------------------------------------------- tiny products
def std2_file(path: Path, times, spectra=None, live=None, gti=None, *, tstart=None, tstop=None,
              float_counts=False, tnull=None) -> Path:
    """A `_dt`-like file: Time, all 30 spectra (zeros unless given), LiveTimePcu0-4, STDGTI."""
    times = np.asarray(times, dtype=float)
    n = len(times)
    spectra = spectra or {}
    live = live or {}
    cols = [fits.Column(name="Time", format="D", array=times)]
    for name in SPEC:
        values = np.asarray(spectra.get(name, np.zeros((n, 129))))
        fmt = "129E" if float_counts else "129I"
        cols.append(fits.Column(name=name, format=fmt, array=values.astype(np.float32 if float_counts else np.int16),
                                null=tnull if not float_counts else None))
    for pcu in range(5):
        cols.append(fits.Column(name=f"LiveTimePcu{pcu}", format="D", array=np.asarray(live.get(pcu, np.zeros(n)), float)))
    table = fits.BinTableHDU.from_columns(cols, name="XTE_SA")
    tstart = times[0] if tstart is None else tstart
    tstop = times[-1] + 16.0 if tstop is None else tstop
    for hdr in (table.header,):
        hdr.update({"TIMEZERO": TZ, "TSTART": tstart, "TSTOP": tstop, "TIMEDEL": 16.0, "MJDREFI": 49353,
                    "MJDREFF": 6.965740740000e-04, "TIMESYS": "TT", "OBJECT": "TINY"})
    for i, name in enumerate(SPEC, start=2):
        table.header[f"1CPIX{i}"] = sim.CPIX
    gti = np.array([[tstart, tstop]]) if gti is None else np.asarray(gti, dtype=float)
    gti_hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name="START", format="D", array=gti[:, 0]), fits.Column(name="STOP", format="D", array=gti[:, 1])],
        name="STDGTI")
    gti_hdu.header["TIMEZERO"] = TZ
    fits.HDUList([fits.PrimaryHDU(), table, gti_hdu]).writeto(path, overwrite=True)
    return path


def filter_file(path: Path, times, elv) -> Path:
    cols = [fits.Column(name="Time", format="D", array=np.asarray(times, float)),
            fits.Column(name="ELV", format="E", array=np.asarray(elv, np.float32))]
    table = fits.BinTableHDU.from_columns(cols, name="XTE_MKF")
    table.header["TIMEZERO"] = TZ
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return path


def prepared(tmp: Path, sources: list[Path], backgrounds: list[Path], filter_times=None, elv=None) -> Path:
    """Lists (absolute paths of a vanished scratch dir, as pcaprepobsid leaves them), filter file, done file."""
    directory = tmp / "prep" / OBSID
    directory.mkdir(parents=True, exist_ok=True)
    for path in [*sources, *backgrounds]:
        shutil.copy(path, directory / path.name)
    (directory / "FP_dtstd2.lis").write_text("".join(f"/gone/scratch/{p.name}\n" for p in sources))
    (directory / "FP_dtbkg2.lis").write_text("".join(f"{p.name}\n" for p in backgrounds))
    if filter_times is None:
        filter_times = T0 + 16.0 * np.arange(-2, 40)
    filter_file(directory / "FP_1-2.xfl", filter_times, np.full(len(filter_times), 30.0) if elv is None else elv)
    (directory / "pcaprepobsid_done.txt").write_text("done\n")
    return directory


def extractor(tmp: Path, **extract) -> NativeExtractor:
    (tmp / "arch").mkdir(exist_ok=True)
    raw = {"run_dir": str(tmp / "run"), "archive": {"root": str(tmp / "arch")},
           "extract": {"backend": "native", "prepared": str(tmp / "prep"), "filter": "ELV > 4", **extract}}
    config = config_from_mapping(raw, tmp / "c.yaml")
    ex = NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(tmp / "arch")))
    ex.check_available()
    return ex


def run(ex: NativeExtractor, obsid: str = OBSID, cycle: int = 1):
    o = ObsID(obsid)
    return ex.extract(ManifestRow(0, o, cycle, o.prnb, "T", 0.0, 0.0, 0.0, 0.0, 0), None, io.StringIO())


def one_bin_counts(values_per_row, pcu=2, name="X1LSpecPcu2", channel=1):
    """Spectra with `values_per_row[i]` counts in one Std2 bin of one column."""
    n = len(values_per_row)
    spec = np.zeros((n, 129))
    spec[:, channel] = values_per_row
    return {name: spec}


def rows(n, start=T0):
    return start + 16.0 * np.arange(n)


# ---------------------------------------------------------------- unit rules
def test_row_selection_includes_gti_start_and_excludes_stop(tmp_path):
    t = rows(6)
    # file GTI on the raw scale: [t1, t4); with TIMEZERO added it is [t1+TZ, t4+TZ) and rows are t+TZ
    src = std2_file(tmp_path / "a_dt", t, one_bin_counts([1, 10, 100, 1000, 10000, 20000]),
                    {2: np.ones(6)}, gti=[[t[1], t[4]]])
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, {2: np.ones(6)}, gti=[[t[1], t[4]]], float_counts=True)
    prepared(tmp_path, [src], [bkg])
    (lc,) = run(extractor(tmp_path, chmin=5, chmax=5, binsz=64))
    assert lc.n_rows == 1
    assert lc.columns["LiveTime"][0] == 3.0
    assert lc.rate[0] * 3.0 == pytest.approx(10 + 100 + 1000)


def test_file_gti_and_user_gti_intersect_with_maketime_edges(tmp_path):
    t = rows(10)
    elv = np.where(np.arange(10) <= 5, 30.0, 0.0)  # rows 0-5 pass: maketime gives [t0, t5 + 8)
    counts = 2 ** np.arange(10)
    src = std2_file(tmp_path / "a_dt", t, one_bin_counts(counts), {2: np.ones(10)}, gti=[[t[2], t[9] + 16]])
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, {2: np.ones(10)}, float_counts=True)
    prepared(tmp_path, [src], [bkg], filter_times=t, elv=elv)
    (lc,) = run(extractor(tmp_path, chmin=5, chmax=5, binsz=256))
    assert lc.columns["LiveTime"][0] == 4.0  # rows 2, 3, 4, 5
    assert lc.rate[0] * 4.0 == pytest.approx(counts[2:6].sum())
    np.testing.assert_allclose(lc.gti, [[t[2] + TZ, t[5] + 8 + TZ]])


def test_channel_band_keeps_whole_overlapping_bins(tmp_path):
    t = rows(2)
    spec = np.zeros((2, 129))
    spec[:, 49:53] = [1, 10, 100, 1000]  # bins 49 (abs 53), 50 (54-55), 51 (56-57), 52 (58-59)
    src = std2_file(tmp_path / "a_dt", t, {"X1LSpecPcu2": spec}, {2: np.ones(2)})
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, {2: np.ones(2)}, float_counts=True)
    prepared(tmp_path, [src], [bkg])
    (lc,) = run(extractor(tmp_path, chmin=55, chmax=56, binsz=32))
    assert lc.rate[0] == pytest.approx(10 + 100)  # bins 50 and 51 whole; per row per live second
    assert (lc.keywords["MINCHAN"][0], lc.keywords["MAXCHAN"][0]) == (54, 57)
    assert (lc.keywords["CHMIN"][0], lc.keywords["CHMAX"][0]) == (55, 56)


def test_pculist_and_layerlist_select_columns_and_live_time(tmp_path):
    t = rows(1)
    spectra = {}
    for name, value in (("X1LSpecPcu0", 1), ("X2RSpecPcu1", 10), ("X3LSpecPcu2", 100), ("X1RSpecPcu1", 1000)):
        spectra[name] = np.full((1, 129), 0.0)
        spectra[name][0, 3] = value
    live = {0: np.array([50.0]), 1: np.array([2.0]), 2: np.array([3.0])}
    src = std2_file(tmp_path / "a_dt", t, spectra, live)
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, live, float_counts=True)
    prepared(tmp_path, [src], [bkg])
    (lc,) = run(extractor(tmp_path, pculist="1,2", layerlist="2-3"))
    assert lc.columns["LiveTime"][0] == 5.0
    assert lc.rate[0] == pytest.approx((10 + 100) / 5.0)


def test_negative_and_null_counts_are_skipped(tmp_path):
    t = rows(1)
    spec = np.zeros((1, 129))
    spec[0, 1:5] = [7, -3, 32767, 5]  # 32767 is the column's TNULL
    bspec = np.zeros((1, 129), dtype=np.float32)
    bspec[0, 1:4] = [2.0, np.nan, -1.0]
    src = std2_file(tmp_path / "a_dt", t, {"X1LSpecPcu2": spec}, {2: np.ones(1)}, tnull=32767)
    bkg = std2_file(tmp_path / "a_dtbkg", t, {"X1LSpecPcu2": bspec}, {2: np.ones(1)}, float_counts=True)
    prepared(tmp_path, [src], [bkg])
    (lc,) = run(extractor(tmp_path, chmin=5, chmax=8))
    assert lc.columns["BACKV"][0] == pytest.approx(2.0)
    assert lc.rate[0] == pytest.approx(12.0 - 2.0)


def test_live_time_and_background_formulae(tmp_path):
    t = rows(2)
    src = std2_file(tmp_path / "a_dt", t, one_bin_counts([30, 50]), {2: np.array([10.0, 6.0]), 3: np.array([4.0, 0.0])})
    bspec = one_bin_counts([8, 12])
    bkg = std2_file(tmp_path / "a_dtbkg", t, bspec, {2: np.array([16.0, 16.0]), 3: np.array([4.0, 4.0])},
                    float_counts=True)
    prepared(tmp_path, [src], [bkg])
    (lc,) = run(extractor(tmp_path, chmin=5, chmax=5, binsz=32))
    c, live, cb, live_b = 80.0, 20.0, 20.0, 40.0
    assert lc.rate[0] == pytest.approx(c / live - cb / live_b)
    assert lc.error[0] == pytest.approx(np.sqrt(c / live**2 + cb / live_b**2))
    assert lc.columns["BACKV"][0] == pytest.approx(cb / live_b)
    assert lc.columns["BACKE"][0] == pytest.approx(np.sqrt(cb) / live_b)
    assert lc.columns["LiveTime"][0] == live
    assert lc.fracexp[0] == 1.0
    assert lc.timedel == 32.0
    assert lc.keywords["DEADAPP"][0] is True and lc.keywords["BACKAPP"][0] is True
    assert lc.ref.mjdrefi == 49353 and lc.keywords["OBJECT"] == "TINY"
    assert lightcurve_bytes([lc])  # what the worker publishes: no card may warn (warnings are errors)


def test_binsz_32_anchored_at_first_file_start_across_two_files(tmp_path):
    ta = T0 + np.array([8.0, 24.0, 40.0])  # file starts 8 s before its first row
    tb = T0 + np.array([88.0, 104.0])
    live = {2: np.ones(3)}
    a = std2_file(tmp_path / "a_dt", ta, one_bin_counts([1, 2, 3]), live, tstart=T0, tstop=T0 + 56)
    b = std2_file(tmp_path / "b_dt", tb, one_bin_counts([4, 5]), {2: np.ones(2)}, tstart=T0 + 88, tstop=T0 + 120)
    ab = std2_file(tmp_path / "a_dtbkg", ta, None, live, tstart=T0, tstop=T0 + 56, float_counts=True)
    bb = std2_file(tmp_path / "b_dtbkg", tb, None, {2: np.ones(2)}, tstart=T0 + 88, tstop=T0 + 120, float_counts=True)
    prepared(tmp_path, [a, b], [ab, bb])
    (lc,) = run(extractor(tmp_path, chmin=5, chmax=5, binsz=32))
    start = T0 + TZ
    np.testing.assert_array_equal(lc.time, start + 32.0 * np.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(lc.fracexp, [1.0, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(lc.rate, [1.5, 3.0, 4.0, 5.0])


def test_bin_with_every_pcu_off_is_kept_as_nan(tmp_path):
    t = rows(3)
    src = std2_file(tmp_path / "a_dt", t, one_bin_counts([5, 0, 7]), {2: np.array([1.0, 0.0, 1.0])})
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, {2: np.array([1.0, 0.0, 1.0])}, float_counts=True)
    prepared(tmp_path, [src], [bkg])
    (lc,) = run(extractor(tmp_path, chmin=5, chmax=5))
    assert lc.n_rows == 3
    assert np.isnan(lc.rate[1]) and np.isnan(lc.error[1])
    assert lc.rate[0] == 5.0 and lc.rate[2] == 7.0


@pytest.mark.parametrize("start, pculist, expected, chmax", [
    (T0, "0,1", 20 * 2, 24),  # epoch 3: 5-24 for both PCUs
    (EPOCH5, "0,1", 17 * 2, 21),  # epoch 5: ONE range for all PCUs, 5-21, PCU0 included (pcaextlc2's one chmin/chmax)
    (EPOCH5, "0", 16, 20),  # PCU0 alone: its own gain column, 5-20 (the heasoft backend's rule too)
])
def test_energy_band_has_one_channel_range_for_all_pcus(tmp_path, start, pculist, expected, chmax):
    t = rows(1, start)
    ones = np.ones((1, 129))
    live = {0: np.array([1.0]), 1: np.array([1.0])}
    src = std2_file(tmp_path / "a_dt", t, {"X1LSpecPcu0": ones, "X1LSpecPcu1": ones}, live)
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, live, float_counts=True)
    prepared(tmp_path, [src], [bkg], filter_times=rows(5, start - 32))
    (lc,) = run(extractor(tmp_path, energy_kev=[2, 9], pculist=pculist))
    live_sum = 2.0 if pculist == "0,1" else 1.0
    assert lc.rate[0] * live_sum == pytest.approx(expected)
    kw = lc.keywords
    assert kw["E_MIN"][0] == 2.0 and kw["E_MAX"][0] == 9.0
    assert kw["GAINEPOC"][0] == (3 if start == T0 else 5)
    assert (kw["CHMIN"][0], kw["CHMAX"][0]) == (5, chmax)
    assert "CHMIN0" not in kw and "NOMINAL" in kw["ECHANRUL"][0] and "all PCUs" in kw["PCUCHRUL"][0]


def test_both_backends_resolve_a_kev_band_with_the_same_std2_call() -> None:
    from rxte_hpc.core.config import BandConfig
    from rxte_hpc.extract.native import band_for_pcus
    from rxte_hpc.extract.std2 import pcu0_energies, resolve_band

    band = BandConfig(name="a", energy_kev=(2.0, 9.0))
    for pcus in [(0,), (0, 1, 2), (1, 2), (0, 1, 2, 3, 4)]:
        # heasoft.py: resolve_band(energy_kev=..., met=..., pcu0=pcus == (0,)); native: band_for_pcus
        assert band_for_pcus(band, pcus, EPOCH5) == resolve_band(energy_kev=(2.0, 9.0), met=EPOCH5, pcu0=pcus == (0,))
        assert pcu0_energies(pcus) == (pcus == (0,))


def test_missing_prepared_products_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADAS", raising=False)
    ex = extractor(tmp_path, chmin=5, chmax=10)
    archive_pca = tmp_path / "arch" / ObsID(OBSID).archive_dir(1) / "pca"
    with pytest.raises(NoDataError, match="no Standard-2"):
        run(ex)
    archive_pca.mkdir(parents=True)
    (archive_pca / "FS4a_1-2.gz").write_bytes(b"")
    with pytest.raises(DataError, match="run the heasoft backend with extract.keep_prepared: true, or pcaprepobsid"):
        run(ex)


def test_truncated_and_incomplete_files_are_data_errors(tmp_path):
    t = rows(4)
    src = std2_file(tmp_path / "a_dt", t, one_bin_counts([1, 2, 3, 4]), {2: np.ones(4)})
    bkg = std2_file(tmp_path / "a_dtbkg", t, None, {2: np.ones(4)}, float_counts=True)
    prepared(tmp_path, [src], [bkg])
    ex = extractor(tmp_path, chmin=5, chmax=5)
    data = src.read_bytes()
    target = tmp_path / "prep" / OBSID / src.name
    target.write_bytes(data[: len(data) - 3000])
    with pytest.raises(DataError, match="a_dt: truncated"):
        run(ex)
    with fits.open(src) as hdul:
        hdul[:2].writeto(target, overwrite=True)  # GTI extension missing
    with pytest.raises(DataError, match="a_dt: missing extension STDGTI"):
        run(ex)
    with fits.open(src) as hdul:
        cols = [c for c in hdul[1].columns if c.name != "LiveTimePcu3"]
        fits.HDUList([hdul[0], fits.BinTableHDU.from_columns(cols, header=hdul[1].header), hdul[2]]).writeto(
            target, overwrite=True)
    with pytest.raises(DataError, match="missing column LiveTimePcu3"):
        run(ex)


# ---------------------------------------------------------------- simulated archive
@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    return sim.simulate_archive(tmp_path_factory.mktemp("simarch"), n_obs=8, seed=5, with_broken=True)


def sim_extractor(tmp: Path, archive, **extract) -> NativeExtractor:
    raw = {"run_dir": str(tmp / "run"), "archive": {"root": str(archive.root)},
           "extract": {"backend": "native", "prepared": str(archive.root / "prepared"), **extract}}
    config = config_from_mapping(raw, tmp / "c.yaml")
    return NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(archive.root)))


def sim_run(ex, obs):
    return ex.extract(ManifestRow(0, obs.obsid, obs.cycle, obs.prnb, obs.target_name, obs.time_mjd,
                                  obs.exposure_s, obs.ra, obs.dec, 0), None, io.StringIO())


def test_fast_reader_matches_astropy_on_simulated_products(archive):
    some = sorted((archive.root / "prepared").glob("*/FS4a_*_dt*"))[:2]
    for path in some:
        tables = read_tables(path)
        data = find_table(tables, path, "XTE_SA")
        with fits.open(path) as hdul:
            for name in ("Time", "X2RSpecPcu3", "LiveTimePcu1", "PCU0_ON"):
                if name in hdul[1].columns.names:
                    np.testing.assert_array_equal(data.raw(name), hdul[1].data[name])
            assert data.header["TIMEZERO"] == hdul[1].header["TIMEZERO"]
    for path in sorted((archive.root / "prepared").glob("*/FP_*.xfl"))[:3]:
        expr = parse_filter("(ELV > 4) && (OFFSET < 0.1) && (NUM_PCU_ON > 0)")
        with fits.open(path) as hdul:  # the fast reader against astropy's reading of the same table
            flags = row_flags_from_hdu(hdul[1], expr)
            expected = intervals_from_flags(np.asarray(hdul[1].data["Time"], float), flags) + hdul[1].header["TIMEZERO"]
        np.testing.assert_array_equal(filter_gti(path, expr), expected)


def test_native_screening_does_integer_arithmetic_as_cfitsio_does(tmp_path):
    """The fast reader keeps B columns integers: NUM_PCU_ON/2 == 1 selects rows with 2 or 3 PCUs, as CFITSIO does."""
    import fitsio

    num = np.array([0, 1, 2, 3, 3, 4, 5, 255, 2, 3, 1, 4], dtype=np.uint8)
    times = T0 + 16.0 * np.arange(len(num))
    cols = [fits.Column(name="Time", format="D", array=times),
            fits.Column(name="NUM_PCU_ON", format="B", null=255, array=num),
            fits.Column(name="ELV", format="E", array=np.full(len(num), 30.0, dtype=np.float32))]
    table = fits.BinTableHDU.from_columns(cols, name="XTE_MKF")
    table.header["TIMEZERO"] = TZ
    path = tmp_path / "FP_1-2.xfl"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    for text in ("NUM_PCU_ON/2 == 1 && ELV > 4", "NUM_PCU_ON/2 > 1", "NUM_PCU_ON % 2 == 1"):
        with fitsio.FITS(str(path)) as f:
            selected = f[1].where(f"({text}) && Time > -1e300")
        flags = np.zeros(len(num), dtype=bool)
        flags[selected] = True
        assert flags.any() and not flags.all()
        expected = intervals_from_flags(times, flags) + TZ
        np.testing.assert_array_equal(filter_gti(path, parse_filter(text)), expected)


def test_simulated_rates_recovered_within_errors(archive, tmp_path):
    ex = sim_extractor(tmp_path, archive, chmin=5, chmax=10)
    mask = bins_for_channels(parse_cpix(sim.CPIX), 5, 10)
    chi2, dof = 0.0, 0
    for obs in archive.observations:
        if str(obs.obsid) in archive.broken:
            continue
        (lc,) = sim_run(ex, obs)
        good = np.isfinite(lc.rate)
        truth = sim.expected_source_rate(lc.time[good], mask)
        chi2 += float((((lc.rate[good] - truth) / lc.error[good]) ** 2).sum())
        dof += int(good.sum())
    assert dof > 300
    print(f"chi2/dof = {chi2:.1f}/{dof} = {chi2 / dof:.3f}")
    assert abs(chi2 / dof - 1.0) < 4 * np.sqrt(2.0 / dof), (chi2, dof)


def test_broken_obsids_fail_the_right_way(archive, tmp_path):
    ex = sim_extractor(tmp_path, archive, chmin=5, chmax=10)
    expected = {"no_std2": NoDataError, "filtered_out": NoDataError, "corrupt": DataError}
    by_text = {str(o.obsid): o for o in archive.observations}
    kinds = {text: kind for kind, what in sim.BROKEN_KINDS.items() for text, w in archive.broken.items() if w == what}
    assert len(kinds) == 3
    for text, kind in kinds.items():
        with pytest.raises(expected[kind]) as info:
            sim_run(ex, by_text[text])
        assert type(info.value) is expected[kind]
    assert "every filter row fails" in str(pytest.raises(NoDataError, sim_run, ex, by_text[
        next(t for t, k in kinds.items() if k == "filtered_out")]).value)


def test_two_bands_in_one_pass_equal_separate_runs(archive, tmp_path):
    both = sim_extractor(tmp_path, archive, bands={"soft": {"chmin": 5, "chmax": 10}, "hard": [4, 9]})
    soft = sim_extractor(tmp_path, archive, chmin=5, chmax=10)
    hard = sim_extractor(tmp_path, archive, energy_kev=[4, 9])
    for obs in archive.observations[:4]:
        pair = sim_run(both, obs)
        assert lightcurve_bytes(pair)
        assert [c.name for c in pair] == ["soft", "hard"]
        for combined, single in zip(pair, (sim_run(soft, obs)[0], sim_run(hard, obs)[0])):
            for attr in ("time", "rate", "error", "fracexp"):
                assert np.array_equal(getattr(combined, attr), getattr(single, attr), equal_nan=True)




def test_missing_products_are_prepared_once_with_heasoft_and_kept(archive, tmp_path, monkeypatch):
    """No prepared tree but HEASoft present: pcaprepobsid runs once, its products are kept and reused."""
    import os

    from rxte_hpc.core.scratch import task_workspace

    monkeypatch.setenv("HEADAS", str(STANDIN))
    for key in [k for k in os.environ if k.startswith("RXTE_STANDIN")]:
        monkeypatch.delenv(key)
    obs = next(o for o in archive.observations if str(o.obsid) not in archive.broken)
    raw = {"run_dir": str(tmp_path / "run"), "archive": {"root": str(archive.root)},
           "extract": {"backend": "native", "prepared": str(tmp_path / "prepared"), "chmin": 5, "chmax": 10}}
    config = config_from_mapping(raw, tmp_path / "c.yaml")
    ex = NativeExtractor(ExtractContext(config, RunPaths(config.run_dir), LocalArchive(archive.root)))
    row = ManifestRow(0, obs.obsid, obs.cycle, obs.prnb, obs.target_name, obs.time_mjd, obs.exposure_s, 0.0, 0.0, 0)
    with task_workspace(tmp_path / "scratch", 0, "t") as ws:
        first_log, second_log = io.StringIO(), io.StringIO()
        (lc,) = ex.extract(row, ws, first_log)
        (again,) = ex.extract(row, ws, second_log)
    assert (tmp_path / "prepared" / obs.obsid.text / "pcaprepobsid_done.txt").is_file()
    assert "pcaprepobsid" in first_log.getvalue() and "pcaprepobsid" not in second_log.getvalue()
    (reference,) = sim_run(sim_extractor(tmp_path, archive, chmin=5, chmax=10), obs)
    for got in (lc, again):
        np.testing.assert_array_equal(got.time, reference.time)
        np.testing.assert_array_equal(got.rate, reference.rate)
        np.testing.assert_array_equal(got.error, reference.error)
