"""The Python API (rxte_hpc.Campaign / Products): what a notebook user does, in a fresh interpreter.

The oracle for the merged light curve is astropy reading the file the gather
wrote; the API's table must be exactly that, with the FITS header in `.meta`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

import rxte_hpc
from rxte_hpc import Campaign
from rxte_hpc.core.errors import ConfigError, RxteError, UsageError
from where import REPO



def demo_config(tmp_path: Path, n_obs: int = 6, **extract: object) -> Path:
    """configs/demo.yaml as shipped (a simulated archive), made small and pointed at tmp_path."""
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo["run_dir"] = str(tmp_path / "run")
    demo["scratch"] = {"root": str(tmp_path / "scratch")}
    demo["simulate"] = {"n_obs": n_obs, "seed": 3}
    demo["tasks"] = {"obs_per_task": 2}
    demo["extract"].update(extract)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def test_the_demo_through_campaign_in_a_fresh_interpreter(tmp_path):
    cfg = demo_config(tmp_path)
    script = (
        "import json, rxte_hpc\n"
        f"c = rxte_hpc.Campaign.from_config({str(cfg)!r})\n"
        "c.plan()\n"
        "summary = c.run(workers=2)\n"
        "p = c.gather()\n"
        "t = p.table()\n"
        "print(json.dumps({'rows': len(t), 'extname': t.meta['EXTNAME'], 'counts': dict(summary.counts()),\n"
        "                  'paths': [[str(x.path), x.kind, x.band] for x in p.paths], 'exit': p.exit_code,\n"
        "                  'first': float(t['RATE'][0]), 'cols': t.colnames}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    merged = tmp_path / "run" / "merged.lc"
    with fits.open(merged) as hdul:
        rate = hdul["RATE"].data
        assert out["rows"] == len(rate) > 0
        assert out["first"] == pytest.approx(float(rate["RATE"][0]), nan_ok=True)
        assert out["cols"] == list(rate.columns.names)
    assert out["extname"] == "RATE" and out["counts"] == {"done": 6} and out["exit"] == 0
    kinds = {kind: path for path, kind, _ in out["paths"]}
    assert kinds["lightcurve"] == str(merged) and Path(kinds["plot"]).is_file()


def test_products_table_per_band_and_a_clear_error_when_the_band_is_ambiguous(tmp_path):
    cfg = demo_config(tmp_path, n_obs=4, chmin=None, chmax=None, bands={"soft": [2, 4], "hard": [4, 9]})
    c = Campaign.from_config(cfg)
    c.run(workers=1)
    p = c.gather()
    soft, hard = p.table(band="soft"), p.table(band="hard")
    with fits.open(tmp_path / "run" / "merged_soft.lc") as hdul:
        np.testing.assert_array_equal(soft["TIME"], hdul[1].data["TIME"])
    assert len(soft) == len(hard)
    with pytest.raises(UsageError, match="several merged light curves.*soft.*hard|several merged light curves.*hard.*soft"):
        p.table()
    with pytest.raises(UsageError, match="no merged light curve for band=medium"):
        p.table(band="medium")


def test_the_api_raises_and_prints_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\nextract: {backend: bogus}\n")
    with pytest.raises(ConfigError) as caught:
        Campaign.from_config(bad)
    assert caught.value.exit_code == 2 and "bad.yaml" in str(caught.value)
    c = Campaign.from_config(demo_config(tmp_path))
    with pytest.raises(RxteError):
        c.status()  # not planned yet: an error, not a print
    assert capsys.readouterr() == ("", "")


def test_errors_carry_their_context_as_fields():
    from rxte_hpc.core.errors import DataError, NoDataError

    exc = DataError("corrupt", obsid="10019-01-01-00", path="/x/y.lc")
    assert (exc.obsid, exc.path, exc.url, str(exc)) == ("10019-01-01-00", "/x/y.lc", None, "corrupt")
    assert exc.fields() == {"obsid": "10019-01-01-00", "path": "/x/y.lc"}
    assert NoDataError("gone", url="https://h/x").with_context(obsid="A").fields() == {"obsid": "A", "url": "https://h/x"}


def test_the_package_import_is_light():
    """Workers import rxte_hpc.core.* first, which runs rxte_hpc/__init__: it must not pull in the API's layers."""
    done = subprocess.run([sys.executable, "-c", "import sys, rxte_hpc.core.obsid; print(sorted(m for m in sys.modules "
                           "if m.startswith('rxte_hpc')))"], capture_output=True, text=True, check=True)
    loaded = eval(done.stdout)  # a printed list of module names
    assert "rxte_hpc.api" not in loaded and "rxte_hpc.run.local" not in loaded
    assert rxte_hpc.Campaign is Campaign
