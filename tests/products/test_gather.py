"""gather on real data: a real standard-product light curve cut at its gaps into
per-ObsID-like chunks, each written through lcfile into a fake run directory with
a manifest and status records, then merged and compared with the original.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from rxte_hpc.core.config import config_from_mapping
from rxte_hpc.core.errors import DataError
from rxte_hpc.core.fsutil import write_atomic
from rxte_hpc.core.intervals import union as gti_union_of
from rxte_hpc.products.gather import CurveAccumulator, MergedCurve, hardness_ratio, run_gather
from rxte_hpc.fits.lcfile import LightCurve, TimeRef, bins_as_gti, lightcurve_bytes, read_lightcurve
from rxte_hpc.core.manifest import Observation, build_manifest, read_manifest
from rxte_hpc.core.obsid import ObsID
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.products.plot import MAX_POINTS, envelope
from rxte_hpc.core.status import StatusRecord, write_record
from where import DATA

REAL = DATA / "xp5001101_e5_n2a.lc"
STINGRAY_WARNINGS = [
    "ignore:The recommended numba package is not installed:UserWarning",
    "ignore:.*FITS light curve handling is still under testing:UserWarning",
    "ignore:SIMON says. Stingray only uses poisson err_dist:UserWarning",
]


def merge_lightcurves(curves, name: str = "RATE") -> MergedCurve:
    """The merge of (obsid, curve) pairs, as run_gather does it file by file."""
    acc = CurveAccumulator()
    for obsid, lc in curves:
        acc.add(obsid, lc)
    return acc.finish(name)


def _real() -> LightCurve:
    return read_lightcurve(REAL)


def _chunks(lc: LightCurve) -> list[np.ndarray]:
    """Row indices of each stretch between gaps: one real observation each."""
    return np.split(np.arange(lc.n_rows), np.nonzero(np.diff(lc.time) > lc.timedel)[0] + 1)


def _part(lc: LightCurve, rows: np.ndarray, **changes) -> LightCurve:
    fields = dict(time=lc.time[rows], rate=lc.rate[rows], error=lc.error[rows], fracexp=lc.fracexp[rows],
                  timedel=lc.timedel, ref=lc.ref, keywords=lc.keywords,
                  columns={k: np.asarray(v)[rows] for k, v in lc.columns.items()})
    fields.update(changes)
    return LightCurve(**fields)


def _obsid(i: int) -> str:
    return f"50011-01-{i:02d}-00"


def _make_run(tmp_path: Path, parts: dict[str, list[LightCurve] | None], *, states: dict[str, str] | None = None,
              extract: dict | None = None, gather: dict | None = None):
    """A run directory: manifest of `parts`' ObsIDs, their lc files and status records.

    `parts[obsid]` is the list of band curves (None: no file); `states` overrides
    the record state ('done' by default; 'missing' writes no record).
    """
    cfg = config_from_mapping(
        {"run_dir": str(tmp_path / "run"), "extract": extract or {"backend": "stdprod"}, "gather": gather or {}},
        tmp_path / "config.yaml",
    )
    states = states or {}
    obs = []
    for obsid, curves in parts.items():
        mjd = float(curves[0].ref.mjd(curves[0].time[0])) if curves else float("nan")
        exposure = 16.0 * curves[0].n_rows if curves else 1000.0
        obs.append(Observation(ObsID.parse(obsid), cycle=5, target_name="SS Cyg", time_mjd=mjd, exposure_s=exposure))
    manifest = build_manifest(obs, 3, {"source": "test"})
    paths = RunPaths(cfg.run_dir)
    paths.make_dirs()
    manifest.write(paths.manifest)
    for row in manifest.rows:
        obsid = row.obsid.text
        state = states.get(obsid, "done")
        curves = parts[obsid]
        if curves is not None and state == "done":
            write_atomic(paths.lc(obsid), lightcurve_bytes(curves, {"OBS_ID": obsid, "CONFHASH": cfg.hash()}))
        if state != "missing":
            write_record(paths, StatusRecord(
                obsid, row.task, state, cfg.extract.backend, cfg.hash(), "2024-01-01T00:00:00", "2024-01-01T00:00:01",
                1.0, "testhost", n_rows=curves[0].n_rows if curves else None,
                error="tool failed" if state == "failed" else None, error_kind="data" if state == "failed" else None,
            ))
    return cfg, manifest, paths


def _split_run(tmp_path, **kw):
    lc = _real()
    parts = {_obsid(i): [_part(lc, rows)] for i, rows in enumerate(_chunks(lc))}
    return lc, parts, *_make_run(tmp_path, parts, **kw)


def test_real_chunks_merge_back_exactly(tmp_path):
    lc, parts, cfg, manifest, paths = _split_run(tmp_path)
    assert len(parts) == 50
    result = run_gather(cfg)
    assert result.exit_code == 0 and result.n_used == 50 and result.n_rows == lc.n_rows
    assert result.outputs == (paths.root / "merged.lc",) and result.plot == paths.root / "merged.png"
    assert result.plot.stat().st_size > 10_000
    merged = read_lightcurve(result.outputs[0])
    np.testing.assert_array_equal(merged.time, lc.time)
    np.testing.assert_array_equal(merged.rate, lc.rate)
    np.testing.assert_array_equal(merged.error, lc.error)
    np.testing.assert_array_equal(merged.fracexp, lc.fracexp)
    assert merged.ref == lc.ref and merged.timedel == 16.0
    expected_obsid = np.concatenate([[_obsid(i)] * len(r) for i, r in enumerate(_chunks(lc))])
    np.testing.assert_array_equal(np.asarray(merged.columns["OBSID"]).astype(str), expected_obsid)
    assert "BARYTIME" not in merged.columns  # only BACKV/BACKE/LiveTime are carried
    # GTI = union of the inputs' GTIs (each chunk's bins) = the original's bins
    np.testing.assert_array_equal(merged.gti, bins_as_gti(lc.time, 16.0))
    with fits.open(result.outputs[0]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "RATE", "GTI", "OBSIDS"]
        head = hdul[0].header
        assert head["N_USED"] == 50 and head["N_MISS"] == 0 and head["N_FAILED"] == 0 and head["N_NODATA"] == 0
        assert head["CONFHASH"] == cfg.hash() and head["MANIFEST"] == read_manifest(paths.manifest).digest()
        assert head["BACKEND"] == "stdprod" and head["CREATOR"].startswith("rxte-hpc")
        assert head["MJDREFI"] == 49353 and head["TIMESYS"] == "TT"
        rate = hdul["RATE"].header
        assert rate["HDUCLASS"] == "OGIP" and rate["HDUCLAS1"] == "LIGHTCURVE" and rate["OBJECT"] == "SS_CYGNI"
        assert set(hdul["OBSIDS"].data["STATE"]) == {"used"}
    table = Table.read(result.outputs[0], hdu="RATE")
    np.testing.assert_array_equal(table["TIME"], lc.time)
    np.testing.assert_array_equal(table["RATE"], lc.rate)


@pytest.mark.filterwarnings(*STINGRAY_WARNINGS)
def test_stingray_reads_the_output(tmp_path):
    from stingray import Lightcurve

    lc, parts, cfg, manifest, paths = _split_run(tmp_path)
    out = run_gather(cfg).outputs[0]
    slc = Lightcurve.read(str(out), fmt="hea")
    table = Table.read(out, hdu="RATE")
    np.testing.assert_array_equal(np.asarray(slc.time, dtype=float), np.asarray(table["TIME"]))
    full = np.asarray(table["FRACEXP"]) >= 0.9  # stingray zeroes bins below its fracexp_limit
    np.testing.assert_allclose(np.asarray(slc.countrate)[full], np.asarray(table["RATE"])[full] / table["FRACEXP"][full],
                               rtol=1e-12)
    assert slc.dt == 16.0 and abs(slc.mjdref - (49353 + 6.965740740e-4)) < 1e-12


def test_merge_sorts_by_time_then_obsid_and_keeps_overlaps():
    lc = _real()
    a, b = _chunks(lc)[:2]
    late = _part(lc, b)
    early = _part(lc, a)
    # an ObsID whose bins sit 8 s into `early`'s: same time bins, reported and kept
    shifted = _part(lc, a[:3], time=lc.time[a[:3]] + 8.0)
    same = _part(lc, a[:1])  # exactly the same stamp as early's first row: ties go by ObsID
    merged = merge_lightcurves([("50011-01-09-00", late), ("50011-01-05-00", shifted),
                                ("50011-01-07-00", early), ("50011-01-01-00", same)])
    t = merged.curve.time
    assert np.all(np.diff(t) >= 0) and merged.n_rows == len(a) + len(b) + 4
    obsids = np.char.decode(merged.curve.columns["OBSID"])
    assert list(obsids[:2]) == ["50011-01-01-00", "50011-01-07-00"] and t[0] == t[1]
    # every pair of rows of two ObsIDs whose [t, t+16) intervals intersect, by brute force
    ends = t + 16.0
    brute = [(i, j) for i in range(len(t)) for j in range(i) if obsids[i] != obsids[j] and t[j] < ends[i] and t[i] < ends[j]]
    assert merged.n_overlap_rows == len(brute) > 0
    assert set(merged.overlaps) == {tuple(sorted((obsids[i], obsids[j]))) for i, j in brute} == {
        ("50011-01-01-00", "50011-01-05-00"), ("50011-01-01-00", "50011-01-07-00"), ("50011-01-05-00", "50011-01-07-00")}


def test_overlap_is_reported_in_the_run(tmp_path):
    lc = _real()
    a, b = _chunks(lc)[:2]
    parts = {_obsid(0): [_part(lc, a)], _obsid(1): [_part(lc, a[-2:], time=lc.time[a[-2:]] + 4.0)], _obsid(2): [_part(lc, b)]}
    cfg, manifest, paths = _make_run(tmp_path, parts)
    result = run_gather(cfg)
    assert result.overlaps == 3 and result.n_rows == len(a) + 2 + len(b) and result.exit_code == 0
    assert f"{_obsid(0)}/{_obsid(1)}" in result.summary
    with fits.open(result.outputs[0]) as hdul:
        assert hdul[0].header["OVERLAPS"] == 3
        assert any(_obsid(1) in c for c in hdul[0].header["COMMENT"])


def test_different_timedel_names_the_odd_obsids(tmp_path):
    lc = _real()
    chunks = _chunks(lc)[:4]
    parts = {_obsid(i): [_part(lc, r)] for i, r in enumerate(chunks)}
    parts[_obsid(2)] = [_part(lc, chunks[2], timedel=32.0)]
    cfg, manifest, paths = _make_run(tmp_path, parts)
    with pytest.raises(DataError, match=r"TIMEDEL 32 s: 50011-01-02-00") as err:
        run_gather(cfg)
    assert "50011-01-01-00" not in str(err.value)
    assert not (paths.root / "merged.lc").exists()


def test_other_mjdref_is_brought_onto_the_first(tmp_path):
    lc = _real()
    chunks = _chunks(lc)[:3]
    other = TimeRef(51000, 0.25, "TT")
    shift = lc.ref.seconds_to(other)
    parts = {_obsid(i): [_part(lc, r)] for i, r in enumerate(chunks)}
    parts[_obsid(1)] = [_part(lc, chunks[1], time=lc.time[chunks[1]] + shift, ref=other)]
    cfg, manifest, paths = _make_run(tmp_path, parts)
    merged = read_lightcurve(run_gather(cfg).outputs[0])
    assert merged.ref == lc.ref
    np.testing.assert_allclose(merged.time, lc.time[np.concatenate(chunks)], rtol=0, atol=1e-6)


def test_nan_rates_are_kept_and_counted(tmp_path):
    lc = _real()
    chunks = _chunks(lc)[:3]
    parts = {_obsid(i): [_part(lc, r)] for i, r in enumerate(chunks)}
    rate = lc.rate[chunks[1]].copy()
    rate[[0, 5]] = np.nan  # every PCU off in two bins
    parts[_obsid(1)] = [_part(lc, chunks[1], rate=rate)]
    cfg, manifest, paths = _make_run(tmp_path, parts)
    result = run_gather(cfg)
    assert result.n_nan == 2 and "2 NaN" in result.summary
    merged = read_lightcurve(result.outputs[0])
    assert merged.n_rows == sum(len(c) for c in chunks) and np.isnan(merged.rate).sum() == 2
    with fits.open(result.outputs[0]) as hdul:
        assert hdul[0].header["N_NAN"] == 2


def test_missing_and_failed_still_write_but_exit_1(tmp_path):
    lc, parts, cfg, manifest, paths = _split_run(
        tmp_path, states={_obsid(3): "missing", _obsid(4): "failed", _obsid(5): "no_data", _obsid(6): "interrupted"})
    result = run_gather(cfg)
    assert (result.n_missing, result.n_failed, result.n_no_data, result.n_used) == (2, 1, 1, 46)
    assert result.exit_code == 1 and result.outputs[0].is_file()
    assert "2 missing: 50011-01-03-00, 50011-01-06-00" in result.summary
    assert "1 failed: 50011-01-04-00" in result.summary
    with fits.open(result.outputs[0]) as hdul:
        table = Table(hdul["OBSIDS"].data)
        state = dict(zip(table["OBSID"], table["STATE"]))
        error = dict(zip(table["OBSID"], table["ERROR"]))
        assert hdul[0].header["N_MISS"] == 2 and hdul[0].header["N_NODATA"] == 1
    assert state[_obsid(3)] == "missing" and state[_obsid(6)] == "missing" and state[_obsid(5)] == "no_data"
    assert state[_obsid(4)] == "failed" and error[_obsid(4)] == "tool failed" and error[_obsid(6)] == "interrupted"
    allowed = run_gather(cfg, allow_missing=True, manifest=manifest)
    assert allowed.exit_code == 0 and "allowed" in allowed.summary


def test_no_data_alone_is_not_a_failure(tmp_path):
    *_, cfg, manifest, paths = _split_run(tmp_path, states={_obsid(1): "no_data"})
    result = run_gather(cfg)
    assert result.exit_code == 0 and result.n_no_data == 1


def test_unreadable_file_is_reported_not_a_crash(tmp_path):
    lc, parts, cfg, manifest, paths = _split_run(tmp_path)
    paths.lc(_obsid(7)).write_bytes(b"SIMPLE  =                    T" + b" " * 50 + b"garbage")
    result = run_gather(cfg)
    assert result.exit_code == 1 and result.n_failed == 1 and result.n_used == 49
    assert _obsid(7) in result.summary
    with fits.open(result.outputs[0]) as hdul:
        row = [r for r in hdul["OBSIDS"].data if r["OBSID"] == _obsid(7)][0]
        assert row["STATE"] == "failed" and "not a readable FITS" in row["ERROR"]


def test_nothing_usable_is_an_error_and_writes_nothing(tmp_path):
    lc = _real()
    parts = {_obsid(0): [_part(lc, _chunks(lc)[0])], _obsid(1): None}
    cfg, manifest, paths = _make_run(tmp_path, parts, states={_obsid(0): "failed", _obsid(1): "missing"})
    with pytest.raises(DataError, match="nothing to merge"):
        run_gather(cfg)
    assert not (paths.root / "merged.lc").exists() and not (paths.root / "merged.png").exists()


def test_gti_union():
    got = gti_union_of(np.array([[0.0, 16.0], [32.0, 48.0]]), np.array([[16.0, 20.0], [40.0, 64.0]]), np.zeros((0, 2)))
    np.testing.assert_array_equal(got, [[0.0, 20.0], [32.0, 64.0]])


def _band_parts(lc: LightCurve, rows: np.ndarray, hard_rate: np.ndarray) -> list[LightCurve]:
    backv = {"BACKV": np.full(len(rows), 1.5), "BACKE": np.full(len(rows), 0.1)}
    soft = _part(lc, rows, name="soft", columns=backv)
    hard = _part(lc, rows, name="hard", rate=hard_rate, error=lc.error[rows] * 0.5, columns=backv)
    return [soft, hard]


def test_several_bands_and_hardness_ratio(tmp_path):
    lc = _real()
    a, b = _chunks(lc)[:2]
    hard_a = lc.rate[a] * 0.5
    hard_a[:3] = [0.0, -1.0, np.nan]  # zero, negative and NaN net rates: no ratio there
    parts = {_obsid(0): _band_parts(lc, a, hard_a), _obsid(1): _band_parts(lc, b, lc.rate[b] * 0.25)}
    soft_b = lc.rate[b].copy()
    soft_b[4] = -0.5  # a negative soft rate: no ratio either
    parts[_obsid(1)][0] = _part(lc, b, name="soft", rate=soft_b, columns={"BACKV": np.zeros(len(b)), "BACKE": np.zeros(len(b))})
    cfg, manifest, paths = _make_run(
        tmp_path, parts, extract={"backend": "native", "bands": {"soft": [2, 4], "hard": {"chmin": 11, "chmax": 20}}},
        gather={"hardness": [["hard", "soft"]]},
    )
    result = run_gather(cfg)
    names = [p.name for p in result.outputs]
    assert names == ["merged_soft.lc", "merged_hard.lc", "hardness_hard_soft.fits"] and result.exit_code == 0
    soft = read_lightcurve(paths.root / "merged_soft.lc")
    hard = read_lightcurve(paths.root / "merged_hard.lc")
    assert set(soft.columns) == {"OBSID", "BACKV", "BACKE"}
    np.testing.assert_array_equal(hard.rate[3:len(a)], lc.rate[a][3:] * 0.5)
    with fits.open(paths.root / "merged_soft.lc") as hdul:
        assert hdul[1].name == "RATE" and hdul[0].header["E_MIN"] == 2 and hdul[0].header["BANDNAME"] == "soft"
    with fits.open(paths.root / "merged_hard.lc") as hdul:
        assert hdul[0].header["CHMIN"] == 11 and hdul[0].header["CHMAX"] == 20
    table = Table.read(paths.root / "hardness_hard_soft.fits", hdu="HARDNESS")
    # hand-computed: rows 3.. of chunk a, and chunk b without its row 4
    keep_b = np.delete(np.arange(len(b)), 4)
    h = np.concatenate([hard_a[3:], lc.rate[b][keep_b] * 0.25])
    s = np.concatenate([lc.rate[a][3:], soft_b[keep_b]])
    eh = np.concatenate([lc.error[a][3:], lc.error[b][keep_b]]) * 0.5
    es = np.concatenate([lc.error[a][3:], lc.error[b][keep_b]])
    assert len(table) == len(a) - 3 + len(b) - 1
    np.testing.assert_array_equal(table["TIME"], np.concatenate([lc.time[a][3:], lc.time[b][keep_b]]))
    np.testing.assert_allclose(table["RATIO"], h / s, rtol=1e-14)
    np.testing.assert_allclose(table["RATIO_ERR"], (h / s) * np.sqrt((eh / h) ** 2 + (es / s) ** 2), rtol=1e-12)
    np.testing.assert_allclose(table["HR"], (h - s) / (h + s), rtol=1e-12)
    np.testing.assert_allclose(table["HR_ERR"], 2 * np.sqrt((s * eh) ** 2 + (h * es) ** 2) / (h + s) ** 2, rtol=1e-12)


@pytest.mark.filterwarnings(*STINGRAY_WARNINGS)
def test_stingray_reads_each_merged_band(tmp_path):
    from stingray import Lightcurve

    lc = _real()
    a, b = _chunks(lc)[:2]
    parts = {_obsid(0): _band_parts(lc, a, lc.rate[a] * 0.5), _obsid(1): _band_parts(lc, b, lc.rate[b] * 0.25)}
    cfg, manifest, paths = _make_run(
        tmp_path, parts, extract={"backend": "native", "bands": {"soft": [2, 4], "hard": {"chmin": 11, "chmax": 20}}})
    run_gather(cfg)
    for band, scale in (("soft", (1.0, 1.0)), ("hard", (0.5, 0.25))):
        slc = Lightcurve.read(str(paths.root / f"merged_{band}.lc"), fmt="hea")
        table = Table.read(paths.root / f"merged_{band}.lc", hdu="RATE")
        np.testing.assert_array_equal(np.asarray(slc.time, dtype=float), np.concatenate([lc.time[a], lc.time[b]]))
        full = np.asarray(table["FRACEXP"]) >= 0.9
        expected = np.concatenate([lc.rate[a] * scale[0], lc.rate[b] * scale[1]])
        np.testing.assert_allclose(np.asarray(slc.countrate)[full], (expected / table["FRACEXP"])[full], rtol=1e-12)


def test_hardness_by_hand():
    t = np.array([0.0, 16.0, 32.0, 48.0])
    ids = np.array([b"50011-01-01-00"] * 4)
    mk = lambda r, e: LightCurve(t, np.array(r), np.array(e), np.ones(4), 16.0, columns={"OBSID": ids})  # noqa: E731
    hc = hardness_ratio(mk([3.0, 1.0, 0.0, 2.0], [0.3, 0.1, 0.1, 0.2]), mk([1.0, 4.0, 1.0, -2.0], [0.1, 0.4, 0.1, 0.2]))
    np.testing.assert_array_equal(hc.time, [0.0, 16.0])
    np.testing.assert_allclose(hc.ratio, [3.0, 0.25])
    np.testing.assert_allclose(hc.ratio_error, [3.0 * np.sqrt(0.01 + 0.01), 0.25 * np.sqrt(0.01 + 0.01)])
    np.testing.assert_allclose(hc.hr, [0.5, -0.6])
    # d/dH (H-S)/(H+S) = 2S/(H+S)^2, d/dS = -2H/(H+S)^2
    np.testing.assert_allclose(hc.hr_error[0], np.hypot(2 * 1 / 16 * 0.3, 2 * 3 / 16 * 0.1))


def test_plot_envelope_for_huge_inputs(tmp_path):
    from rxte_hpc.products.plot import ExposurePoints, Series, plot_lightcurves

    rng = np.random.default_rng(1)
    n = 200_000
    mjd = 50100 + np.sort(rng.uniform(0, 5000, n))
    mjd[n // 2:] += 300  # a long gap
    y = rng.normal(10, 2, n)
    y[::1000] = np.nan
    x, mean, lo, hi = envelope(mjd, y)
    assert len(x) <= MAX_POINTS and np.all(lo <= mean) and np.all(mean <= hi)
    series = Series("RATE", mjd, y, np.ones(n), 16.0)
    exp = ExposurePoints(mjd[::100], np.full(n // 100, 2000.0), np.array(["used", "failed"] * (n // 200)))
    out = plot_lightcurves(tmp_path / "big.png", [series], [], exp, "huge")
    assert out.stat().st_size > 10_000


def _obsids_table(path: Path) -> dict[str, dict]:
    with fits.open(path) as hdul:
        data = hdul["OBSIDS"].data
        return {str(r["OBSID"]).strip(): {n: r[n] for n in data.names} for r in data}


def test_nan_time_or_flipped_byte_fails_that_obsid_with_exit_1(tmp_path):
    """Issue 15 item 8: NaN TIMEs and a changed byte are data failures, never merged silently."""
    lc = _real()
    chunks = _chunks(lc)[:3]
    parts = {_obsid(i): [_part(lc, rows)] for i, rows in enumerate(chunks)}
    cfg, manifest, paths = _make_run(tmp_path, parts)
    with fits.open(paths.lc(_obsid(1))) as hdul:  # a NaN TIME, the file otherwise sound (checksums updated)
        hdul[1].data["TIME"][2] = np.nan
        hdul.writeto(paths.lc(_obsid(1)), overwrite=True, checksum=True)
    data = bytearray(paths.lc(_obsid(2)).read_bytes())
    with fits.open(io.BytesIO(bytes(data))) as hdul:
        rate_data = len(hdul[0].header.tostring()) + len(hdul[1].header.tostring())
    data[rate_data + 10] ^= 0x01  # inside the first RATE value: still a readable FITS file
    paths.lc(_obsid(2)).write_bytes(bytes(data))
    result = run_gather(cfg)
    assert result.exit_code == 1 and result.n_used == 1 and result.n_failed == 2
    table = _obsids_table(paths.root / "merged.lc")
    assert table[_obsid(0)]["STATE"] == "used"
    assert table[_obsid(1)]["STATE"] == "failed" and "non-finite TIME" in table[_obsid(1)]["ERROR"]
    assert table[_obsid(2)]["STATE"] == "failed" and "verification failed" in table[_obsid(2)]["ERROR"]
    assert read_lightcurve(paths.root / "merged.lc").n_rows == len(chunks[0])


def test_products_index_lists_what_was_written_and_stale_products_go(tmp_path):
    lc = _real()
    chunks = _chunks(lc)[:3]
    parts = {_obsid(i): [_part(lc, rows)] for i, rows in enumerate(chunks)}
    cfg, manifest, paths = _make_run(tmp_path, parts, extract={"backend": "native", "chmin": 5, "chmax": 21})
    run_gather(cfg)
    index = Table.read(paths.root / "products.ecsv", format="ascii.ecsv")
    assert list(index["path"]) == ["merged.lc", "merged.png"]
    assert list(index["kind"]) == ["lightcurve", "plot"] and index["rows"][0] == sum(len(c) for c in chunks)
    assert index["obsids"][0] == 3 and index.meta["config_hash"] == cfg.hash()
    # the band changes: two bands now; merged.lc of the old config is removed, the index says what is there
    two = {o: [_part(lc, rows, name="soft"), _part(lc, rows, name="hard")] for o, rows in zip(parts, chunks)}
    cfg2, _, _ = _make_run(tmp_path, two, extract={"backend": "native",
                                                   "bands": {"soft": {"chmin": 5, "chmax": 10}, "hard": [4, 9]}})
    (paths.root / "merged_old.lc").write_bytes((paths.root / "merged.lc").read_bytes())  # a user's copy
    result = run_gather(cfg2)
    assert not (paths.root / "merged.lc").exists()
    assert "removed stale products of an earlier config: merged.lc" in result.summary
    assert "merged_old.lc" in result.summary and (paths.root / "merged_old.lc").exists()  # not ours: reported only
    index = Table.read(paths.root / "products.ecsv", format="ascii.ecsv")
    assert list(index["path"]) == ["merged_soft.lc", "merged_hard.lc", "merged.png"]
    assert list(index["band"]) == ["soft", "hard", "all"] and set(index["target"]) == {"SS_CYGNI"}  # OBJECT


def test_energy_band_merge_keeps_chmin_chmax_and_the_channels_of_each_epoch(tmp_path):
    lc = _real()
    chunks = _chunks(lc)[:3]
    kws = [{"CHMIN": 5, "CHMAX": 24, "GAINEPOC": 3, "E_MIN": 2.0, "E_MAX": 9.0},
           {"CHMIN": 5, "CHMAX": 21, "GAINEPOC": 5, "E_MIN": 2.0, "E_MAX": 9.0},
           {"CHMIN": 5, "CHMAX": 21, "GAINEPOC": 5, "E_MIN": 2.0, "E_MAX": 9.0}]
    parts = {_obsid(i): [_part(lc, rows, keywords={**lc.keywords, **kw})] for i, (rows, kw) in enumerate(zip(chunks, kws))}
    cfg, manifest, paths = _make_run(tmp_path, parts, extract={"backend": "native", "energy_kev": [2, 9]})
    run_gather(cfg)
    with fits.open(paths.root / "merged.lc") as hdul:
        for hdr in (hdul[0].header, hdul["RATE"].header):
            assert (hdr["CHMIN"], hdr["CHMAX"], hdr["E_MIN"], hdr["E_MAX"]) == (5, 24, 2.0, 9.0)
        rate = hdul["RATE"].header
        assert rate["CHAN_E3"] == "5-24" and rate["CHAN_E5"] == "5-21"
        assert (rate["TELESCOP"], rate["INSTRUME"], rate["BACKEND"]) == ("XTE", "PCA", "native")
        assert rate["PCULIST"] == "ALL" and rate["LAYERS"] == "ALL" and rate["FILTER"] == cfg.extract.filter
        assert rate["EXPOSURE"] == pytest.approx(16.0 * float(np.sum(lc.fracexp[np.concatenate(chunks)])))
        assert rate["DATE-OBS"] < rate["DATE-END"]
    table = _obsids_table(paths.root / "merged.lc")
    assert [int(table[_obsid(i)]["CHMAX"]) for i in range(3)] == [24, 21, 21]
    assert table[_obsid(0)]["EXPOSURE"] == pytest.approx(16.0 * float(np.sum(lc.fracexp[chunks[0]])))


def test_plot_title_names_target_and_band_and_exposure_panel_draws_exposure(tmp_path, monkeypatch):
    import rxte_hpc.products.plot as plot

    seen = {}

    def capture(target, bands, ratios, exposures, title=""):
        seen.update(bands=bands, exposures=exposures, title=title)
        return target

    monkeypatch.setattr(plot, "plot_lightcurves", capture)
    lc = _real()
    chunks = _chunks(lc)[:2]
    fracexp = np.full(len(chunks[1]), 0.25)
    parts = {_obsid(0): [_part(lc, chunks[0])], _obsid(1): [_part(lc, chunks[1], fracexp=fracexp)]}
    cfg, manifest, paths = _make_run(tmp_path, parts, extract={"backend": "native", "energy_kev": [2, 9]})
    cfg = dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, name="SS Cyg"))
    run_gather(cfg)
    assert seen["title"].startswith("SS Cyg, RXTE PCA 2-9 keV (channels 5-21): 2 ObsIDs merged")
    assert "count/s" in seen["bands"][0].label
    # EXPOSURE of each ObsID's curve (FRACEXP x TIMEDEL), not the manifest's 16 s x rows
    np.testing.assert_allclose(seen["exposures"].exposure_s, [16.0 * np.sum(lc.fracexp[chunks[0]]), 4.0 * len(chunks[1])])
