"""Every FITS file a run writes, and every simulated archive file it reads, checked by HEASARC's fitsverify.

fitsverify (Debian package `fitsverify`, installed by scripts/test-all.sh) is
CFITSIO's own verifier: it checks the FITS standard and, where present,
CHECKSUM/DATASUM. It runs without `-e`, so warnings count too: 0 warnings and
0 errors per file. astropy's checksum verification (`checksum=True`, whose
mismatch warning is an error under this suite) checks the sums a second way
and that every HDU carries them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from astropy.io import fits

from rxte_hpc.cli import main
from rxte_hpc.sim.simulate import simulate_archive
from where import REPO, STANDIN

_SUMMARY = re.compile(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)")
#: FITS files in a simulated ObsID directory and its prepared products (the rest are list files and logs).
_ARCHIVE_FITS = ("FMI", "pca/*", "stdprod/*", "*_dt", "*_dtbkg", "*_bkg", "*.xfl")


def _fitsverify() -> str:
    path = shutil.which("fitsverify")
    if path is None:  # not a skip: the suite's installer provides it, and a missing oracle must not pass silently
        pytest.fail("fitsverify is not installed: run scripts/test-all.sh or apt-get install fitsverify")
    return path


def verify(paths: list[Path]) -> dict[str, str]:
    """fitsverify's verdict on each file that is not clean: {path: its warning and error lines}."""
    exe = _fitsverify()
    bad = {}
    for path in paths:
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
        found = _SUMMARY.search(proc.stdout)
        if found is None or found.groups() != ("0", "0"):
            lines = [ln.strip() for ln in proc.stdout.splitlines() if "***" in ln or "Warning" in ln or "Error" in ln]
            bad[str(path)] = "; ".join(lines[:6]) or proc.stdout[-300:] + proc.stderr[-300:]
    return bad


def assert_checksums(paths: list[Path]) -> None:
    for path in paths:
        with fits.open(path, checksum=True) as hdul:  # a mismatch warns, and warnings are errors here
            hdul.readall()
            missing = [i for i, hdu in enumerate(hdul) if "CHECKSUM" not in hdu.header or "DATASUM" not in hdu.header]
            assert not missing, f"{path}: HDU(s) {missing} without CHECKSUM/DATASUM"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """configs/demo.yaml with two keV bands and their hardness ratio, on a small simulated archive."""
    root = tmp_path_factory.mktemp("verify")
    archive = simulate_archive(root / "archive", n_obs=5, seed=11)
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo.update(run_dir=str(root / "run"), archive={"root": str(archive.root)}, scratch={"root": str(root / "scratch")})
    demo.pop("simulate", None)
    demo["extract"].pop("chmin")
    demo["extract"].pop("chmax")
    demo["extract"].update(prepared=str(archive.root / "prepared"), bands={"soft": [2, 4], "hard": [4, 9]})
    demo["gather"]["hardness"] = [["hard", "soft"]]
    cfg = root / "demo.yaml"
    cfg.write_text(yaml.safe_dump(demo))
    assert main(["run", str(cfg), "--workers", "1"]) == 0
    return archive, root / "run"


def _written(run: Path) -> list[Path]:
    files = sorted(run.glob("lc/**/*.lc")) + sorted(run.glob("*.lc")) + sorted(run.glob("*.fits"))
    return files


def test_everything_a_two_band_run_writes_passes_fitsverify(demo_run):
    archive, run = demo_run
    files = _written(run)
    assert {p.name for p in files} >= {"merged_soft.lc", "merged_hard.lc", "hardness_hard_soft.fits"}
    assert len([p for p in files if p.parent.parent.name == "lc"]) == len(archive.observations)
    assert verify(files) == {}
    assert_checksums(files)


def test_the_simulated_archive_files_the_run_read_pass_fitsverify(demo_run):
    archive, _ = demo_run
    files = []
    for obs in archive.observations:
        odir = archive.root / str(obs.obsid.archive_dir(obs.cycle))
        prepared = archive.root / "prepared" / str(obs.obsid)
        for base in (odir, prepared):
            files += sorted({p for pattern in _ARCHIVE_FITS for p in base.glob(pattern) if p.is_file()})
    assert len(files) > 10 * len(archive.observations)
    assert verify(files) == {}
    assert_checksums(files)


def test_a_stdprod_run_writes_files_that_pass_fitsverify(demo_run, tmp_path):
    archive, _ = demo_run
    cfg = tmp_path / "stdprod.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "source": {"kind": "archive"},
                                   "archive": {"root": str(archive.root)}, "scratch": {"root": str(tmp_path / "s")},
                                   "extract": {"backend": "stdprod"}}))
    assert main(["run", str(cfg), "--workers", "1"]) == 0
    files = _written(tmp_path / "run")
    assert (tmp_path / "run" / "merged.lc") in files and len(files) == len(archive.observations) + 1
    assert verify(files) == {}
    assert_checksums(files)


def test_a_heasoft_backend_run_writes_files_that_pass_fitsverify(demo_run, tmp_path):
    """The heasoft backend through the stand-in HEASoft (real task names, .par files, output formats)."""
    archive, _ = demo_run
    standin = STANDIN
    cfg = tmp_path / "heasoft.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "source": {"kind": "archive"}, "archive": {"root": str(archive.root)},
        "scratch": {"root": str(tmp_path / "s")}, "target": {"name": "eta car", "ra": 161.2647, "dec": -59.6844},
        "extract": {"backend": "heasoft", "runner": "exec", "bands": {"soft": [2, 4], "hard": [4, 9]}},
        "gather": {"hardness": [["hard", "soft"]]}}))
    env = {**os.environ, "HEADAS": str(standin), "PATH": f"{standin / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "rxte_hpc", "run", str(cfg), "--workers", "1"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = _written(tmp_path / "run")
    assert len(files) == len(archive.observations) + 3
    assert verify(files) == {}
    assert_checksums(files)


def test_fitsverify_catches_a_flipped_byte(demo_run, tmp_path):
    """The oracle can fail: one changed data byte in a per-ObsID file is a checksum warning."""
    _, run = demo_run
    victim = tmp_path / "flipped.lc"
    data = bytearray(sorted(run.glob("lc/**/*.lc"))[0].read_bytes())
    data[-2880 + 3] ^= 0x10
    victim.write_bytes(bytes(data))
    assert "checksum" in verify([victim]).get(str(victim), "").lower()
