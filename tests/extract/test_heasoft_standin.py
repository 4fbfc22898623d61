"""The stand-in HEASoft tree itself (tests/heasoft_standin): how close it is to the real tasks.

What is checked against something outside the stand-in: its syspfiles are
HEASoft 6.20's own .par files, pcaprepobsid prints what real pcaprepobsid v1.3
printed (tests/data/real-heasoft, with its provenance), and maketime computes with its own
code (no rxte_hpc import), agreeing with the project's maketime rules.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from heasoftkit import FILTER, broken, good, records, standin_env, standin_run
from rxte_hpc.sim.simulate import SimArchive
from where import DATA, STANDIN

FIXTURES = DATA / "real-heasoft"
#: Expressions HEASARC's notebooks pass to maketime (docs/science.md#good-time-maketime).
NOTEBOOK_EXPRESSIONS = [
    FILTER,
    "(ELV > 4) .AND. (OFFSET < 0.1) .AND. (NUM_PCU_ON > 0 .AND. NUM_PCU_ON < 6)",
    "(ELV > 4) && (OFFSET < 0.1) && (NUM_PCU_ON > 0) && .NOT. ISNULL(ELV) && (NUM_PCU_ON < 6)",
    # CFITSIO's integer arithmetic (both sides integer: 3/2 == 1): the stand-in asks CFITSIO, the project its own code
    "(ELV > 4) && (NUM_PCU_ON/2 == 1)",
    "(ELV > 4) && (NUM_PCU_ON/2 > 1) || (OFFSET < 0.02)",
]


@pytest.fixture(scope="module")
def archive(simulated) -> SimArchive:
    return simulated(8, 7, with_broken=True)


def _obsid_dir(archive: SimArchive, row) -> Path:
    return archive.root / str(row.obsid.archive_dir(row.cycle))


# ---------------------------------------------------------------------------- parameter files


def test_syspfiles_are_heasoft_620s_own_par_files():
    real = sorted((FIXTURES / "par").glob("*.par"))
    assert {p.name for p in real} >= {"pcaprepobsid.par", "maketime.par", "pcaextlc2.par"}
    for par in real:
        assert (STANDIN / "syspfiles" / par.name).read_bytes() == par.read_bytes(), par.name


def test_standin_refuses_to_prompt_and_maketime_clobber_defaults_to_no(archive, tmp_path):
    pf = tmp_path / "pf"
    pf.mkdir()
    xfl = next((archive.root / "prepared" / good(archive)[0].obsid.text).glob("FP_*.xfl"))
    env = standin_env(pf, HEADASPROMPT="/dev/null")
    res = standin_run(["maketime", f"infile={xfl}", "outfile=g.fits"], env, tmp_path)
    assert res.returncode == 0
    assert "Unable to get parameter 'expr'" in res.stdout
    assert "Task maketime 2.2a terminating with status -1" in res.stdout
    args = ["maketime", f"infile={xfl}", "outfile=g.fits", f"expr={FILTER}", "name=NAME", "value=VALUE",
            "time=TIME", "compact=no"]
    assert "terminating" not in standin_run(args, env, tmp_path).stdout
    again = standin_run(args, env, tmp_path)
    assert again.returncode == 0 and "already exists" in again.stdout and "terminating with status 105" in again.stdout
    assert "terminating" not in standin_run([*args, "clobber=yes"], env, tmp_path).stdout


def test_standin_pcaextlc2_refuses_long_column_list_paths(archive, tmp_path):
    row = good(archive)[0]
    pf = tmp_path / "pf"
    pf.mkdir()
    prepared = archive.root / "prepared" / row.obsid.text
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    args = ["pcaextlc2", f"src_infile=@{prepared}/FP_dtstd2.lis", f"bkg_infile=@{prepared}/FP_dtbkg2.lis",
            f"outfile={deep}/RATE.lc", "gtiandfile=-", "pculist=ALL", "layerlist=ALL", "binsz=16"]
    res = standin_run(args, standin_env(pf), tmp_path)
    assert res.returncode == 0 and "COLUMNS parameter may be too long" in res.stdout
    assert "Task pcaextlc2 2.2 terminating with status -1" in res.stdout
    ok = standin_run([*args[:3], "outfile=RATE.lc", *args[4:]], standin_env(pf), deep)
    assert "terminating" not in ok.stdout, ok.stdout
    assert (deep / "RATE.lc").is_file()
    assert not (deep / "RATE.lc_cols.lis").exists()
    with fits.open(deep / "RATE.lc") as hdul:
        h = hdul["RATE"].header
        assert (h["TIMEZERI"], h["TIMEZERF"], h["TIMEPIXR"], h["DEADAPP"], h["BACKAPP"]) == (0, 0.0, 0.0, True, True)
        assert "TSTARTI" in h and "TSTART" not in h and hdul[2].name == "GTI"


def test_standin_reads_user_copy_and_falls_back_without_pfiles(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PFILES",)}
    env["HOME"] = str(home)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import standin; "
        "u, s = standin.pfiles_dirs(); print(u[0], s[0])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(STANDIN / "lib")], env=env, stdout=subprocess.PIPE,
                         text=True, check=True).stdout.split()
    assert out == [str(home / "pfiles"), str(STANDIN / "syspfiles")]




def test_fhelp_prints_the_parameters_and_is_recorded(tmp_path):
    env = standin_env(tmp_path, RXTE_STANDIN_RECORD=str(tmp_path / "rec"))
    res = subprocess.run([str(STANDIN / "bin" / "fhelp"), "task=maketime"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    assert res.returncode == 0 and "maketime" in res.stdout and "expr [s, a] Selection Expression" in res.stdout
    assert [r["task"] for r in records(tmp_path / "rec", "fhelp")] == ["maketime"]


# ---------------------------------------------------------------------------- pcaprepobsid as the real one prints

_LINE_SHAPES = [
    ("banner", re.compile(r"^Running pcaprepobsid v1\.3$")),
    ("dashes", re.compile(r"^-{40}$")),
    ("obsid", re.compile(r"^(\d{5}-\d{2}-\d{2}-\d{2}) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)$")),
    ("filt", re.compile(r"^  FILT: (\S+)/FP_([0-9a-f]{8})-([0-9a-f]{8})\.xfl$")),
    ("object", re.compile(r"^  OBJECT: '[^']*' \(RA=-?\d+\.\d\d,DEC=-?\d+\.\d\d\)$")),
    ("std2", re.compile(r"^  STD2: (\S+)/pca/(FS4a_[0-9a-f]+-[0-9a-f]+(\.gz)?)$")),
    ("std1", re.compile(r"^  STD1: (\S+)/pca/(FS46_[0-9a-f]+-[0-9a-f]+(\.gz)?)$")),
]


def _shapes(text: str) -> list[list[str]]:
    """Each `Running pcaprepobsid` block as the kinds of its lines (unknown lines are 'other: <text>')."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        kind = next((k for k, rx in _LINE_SHAPES if rx.match(line)), f"other: {line}")
        if kind == "banner":
            blocks.append([])
        if blocks:
            blocks[-1].append(kind)
    return blocks


def _shape_ok(kinds: list[str], n_std2: int, n_std1: int) -> bool:
    return kinds == ["banner", "dashes", "obsid", "filt", "object"] + ["std2"] * n_std2 + ["std1"] * n_std1


def test_the_line_shapes_match_real_pcaprepobsid_output():
    """The shapes used below, checked against what real pcaprepobsid v1.3 printed for 12 ObsIDs."""
    real = (FIXTURES / "pcaprepobsid-v1.3-stdout.txt").read_text()
    blocks = _shapes(real)
    assert len(blocks) == 11
    for kinds in blocks:
        assert _shape_ok(kinds, kinds.count("std2"), kinds.count("std1")), kinds
    assert max(k.count("std2") for k in blocks) == 2  # 10004-01-37-00 has two Standard-2 files


def test_pcaprepobsid_prints_the_real_banner_and_file_lines(archive, tmp_path):
    row = good(archive)[0]
    indir = _obsid_dir(archive, row)
    res = standin_run(["pcaprepobsid", f"indir={indir}", "outdir=prep"], standin_env(tmp_path / "pf"), tmp_path)
    assert "terminating" not in res.stdout, res.stdout
    pca = sorted((indir / "pca").iterdir())
    n_std2 = sum(p.name.startswith("FS4a_") for p in pca)
    n_std1 = sum(p.name.startswith("FS46_") for p in pca)
    (kinds,) = _shapes(res.stdout)
    assert n_std2 >= 1 and _shape_ok(kinds, n_std2, n_std1), res.stdout
    lines = res.stdout.splitlines()
    with fits.open(indir / "FMI") as fmi:
        start, stop = int(fmi[1].data["StartMET"][0]), int(fmi[1].data["StopMET"][0])
    filt = next(_LINE_SHAPES[3][1].match(line) for line in lines if line.startswith("  FILT:"))
    assert filt.groups() == ("prep", f"{start:08x}", f"{stop:08x}")
    assert (tmp_path / "prep" / f"FP_{start:08x}-{stop:08x}.xfl").is_file()
    obsid_line = next(_LINE_SHAPES[2][1].match(line) for line in lines if _LINE_SHAPES[2][1].match(line))
    assert obsid_line.group(1) == row.obsid.text
    std2 = [m.group(2) for m in map(_LINE_SHAPES[5][1].match, lines) if m]
    assert std2 == [p.name for p in pca if p.name.startswith("FS4a_")]
    assert (tmp_path / "prep" / "pcaprepobsid_done.txt").is_file()


def test_a_failing_pcaprepobsid_prints_error_then_status_and_leaves_no_done_file(archive, tmp_path):
    res = standin_run(["pcaprepobsid", f"indir={_obsid_dir(archive, broken(archive, 'corrupt'))}", "outdir=prep"],
                      standin_env(tmp_path / "pf"), tmp_path)
    assert res.returncode == 0
    tail = [line for line in res.stdout.splitlines() if line.strip()][-2:]
    assert tail[0].startswith("ERROR: ") and tail[1] == "Task pcaprepobsid 1.3 terminating with status -1", tail
    assert not (tmp_path / "prep" / "pcaprepobsid_done.txt").exists()


def test_pcaprepobsid_wants_a_one_row_fmi_and_five_housekeeping_files(archive, tmp_path):
    src = _obsid_dir(archive, good(archive)[1])
    hk = tmp_path / "hk" / src.name
    shutil.copytree(src, hk)
    next((hk / "pca").glob("FH5c_*")).unlink()
    res = standin_run(["pcaprepobsid", f"indir={hk}", "outdir=prep1"], standin_env(tmp_path / "pf"), tmp_path)
    assert "found 4 pca/FH5[abcde]_* housekeeping files" in res.stdout and "status -1" in res.stdout
    two = tmp_path / "fmi" / src.name
    shutil.copytree(src, two)
    with fits.open(src / "FMI") as hdul:
        table = hdul["XTE_MI"]
        doubled = fits.BinTableHDU.from_columns(table.columns, nrows=2, header=table.header)
        for name in table.columns.names:
            doubled.data[name][1] = table.data[name][0]
        fits.HDUList([hdul[0].copy(), doubled]).writeto(two / "FMI", overwrite=True)
    res = standin_run(["pcaprepobsid", f"indir={two}", "outdir=prep2"], standin_env(tmp_path / "pf"), tmp_path)
    assert "FMI has 2 rows: must be a single OBSID" in res.stdout and "status -1" in res.stdout
    assert not (tmp_path / "prep2" / "pcaprepobsid_done.txt").exists()


# ---------------------------------------------------------------------------- maketime and pcaextlc2: own code


def test_maketime_and_pcaextlc2_never_import_the_project(archive, tmp_path):
    """Run them with an rxte_hpc on PYTHONPATH that refuses to import: they must not notice."""
    trap = tmp_path / "trap" / "rxte_hpc"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise ImportError('the stand-in imported rxte_hpc')\n")
    env = standin_env(tmp_path / "pf", PYTHONPATH=str(trap.parent))
    prepared = archive.root / "prepared" / good(archive)[2].obsid.text
    xfl = next(prepared.glob("FP_*.xfl"))
    mk = standin_run(["maketime", f"infile={xfl}", "outfile=g.fits", f"expr={FILTER}", "name=NAME",
                      "value=VALUE", "time=TIME", "compact=no"], env, tmp_path)
    assert "terminating" not in mk.stdout, mk.stdout
    lc = standin_run(["pcaextlc2", f"src_infile=@{prepared}/FP_dtstd2.lis", f"bkg_infile=@{prepared}/FP_dtbkg2.lis",
                      "outfile=RATE.lc", "gtiandfile=g.fits", "pculist=ALL", "layerlist=ALL", "binsz=16"], env, tmp_path)
    assert "terminating" not in lc.stdout, lc.stdout
    for name in ("bin/maketime", "bin/pcaextlc2", "lib/calc.py", "lib/standin.py"):
        source = (STANDIN / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+rxte_hpc", source, re.MULTILINE), name


@pytest.mark.parametrize("expr", NOTEBOOK_EXPRESSIONS)
@pytest.mark.parametrize("fractions", [(), ("prefr=0.0", "postfr=1.0")])
def test_maketime_agrees_with_the_projects_maketime_rules(archive, tmp_path, expr, fractions):
    """Two implementations of maketime (the stand-in's and rxte_hpc.extract.gti) on every simulated filter file."""
    from rxte_hpc.extract import gti

    prefr, postfr = (0.0, 1.0) if fractions else (None, None)
    for row in [*good(archive)[:3], broken(archive, "filtered_out")]:
        xfl = next((archive.root / "prepared" / row.obsid.text).glob("FP_*.xfl"))
        out = tmp_path / f"{row.obsid.text}.gti"
        res = standin_run(["maketime", f"infile={xfl}", f"outfile={out}", f"expr={expr}", "name=NAME",
                           "value=VALUE", "time=TIME", "compact=no", *fractions], standin_env(tmp_path / "pf"), tmp_path)
        assert "terminating" not in res.stdout, res.stdout
        project = gti.read_filter_gti(xfl, expr, prefr, postfr)
        with fits.open(out) as hdul:
            table = hdul["STDGTI"]
            ours = np.column_stack([table.data["START"], table.data["STOP"]]) if len(table.data) else np.zeros((0, 2))
            assert table.columns["START"].unit == "sec" and table.header["HDUCLAS1"] == "GTI"
            with fits.open(xfl) as src:
                assert table.header["TIMEZERO"] == src[1].header["TIMEZERO"]
        np.testing.assert_array_equal(ours, np.asarray(project.raw, dtype=float).reshape(-1, 2))
