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


# ------------------------------------------------------------------ results: short, typed, able to raise


def test_a_run_where_every_obsid_fails_is_visible_in_a_few_lines_and_can_raise(tmp_path, monkeypatch, capsys):
    """Native extraction without prepared products (and no HEASoft to make them): every ObsID fails the same way."""
    from rxte_hpc import Incomplete, RunResult

    monkeypatch.delenv("HEADAS", raising=False)
    empty = tmp_path / "no-prepared"
    empty.mkdir()
    c = Campaign.from_config(demo_config(tmp_path, n_obs=6, prepared=str(empty)))
    result = c.run(workers=2)
    assert isinstance(result, RunResult) and not result.ok and result.exit_code == 1
    assert result.counts()["failed"] == 6 and not result.complete
    lines = repr(result).splitlines()
    assert 2 <= len(lines) <= 5, repr(result)  # a notebook cell's last line: a few lines, not a dump
    assert "6 failed" in lines[0] and "no prepared products" in repr(result)
    html = result._repr_html_()
    assert html.startswith("<table") and "failed" in html and len(html) < 3000
    with pytest.raises(Incomplete) as caught:
        result.raise_for_failures()
    assert caught.value.result is result and caught.value.exit_code == 1
    assert "6 of 6 ObsIDs not done" in str(caught.value)
    assert c.status().groups and sum(g.count for g in c.status().groups) == 6
    assert capsys.readouterr().out == ""  # (stderr has log lines when an earlier test's main() set up logging)


def test_results_of_a_good_run_and_a_gather_with_one_obsid_left_out(tmp_path, capsys):
    from rxte_hpc import Products, RunStatus
    from rxte_hpc.core.paths import RunPaths

    c = Campaign.from_config(demo_config(tmp_path, n_obs=6))
    result = c.run(workers=2)
    assert result.ok and result.raise_for_failures() is result
    assert dict(result.counts()) == {"done": 6} and sum(result.processed.values()) == 6
    assert len(repr(result).splitlines()) == 1
    status = c.status()
    assert isinstance(status, RunStatus) and status.complete and status.drift is None
    # one light curve gone: gather merges the others and says which ObsID it left out, and why
    first = c.manifest().rows[0].obsid.text
    RunPaths(tmp_path / "run").lc(first).unlink()
    products = c.gather()
    assert isinstance(products, Products) and not products.ok and products.exit_code == 1
    assert [(o.obsid, o.state) for o in products.left_out] == [(first, "missing")]
    assert f"left out: {first} (missing)" in repr(products) and len(repr(products).splitlines()) <= 6
    with pytest.raises(rxte_hpc.Incomplete, match=f"1 missing.*{first}"):
        products.raise_for_failures()
    allowed = c.gather(allow_missing=True)
    assert allowed.ok and allowed.left_out == products.left_out
    assert capsys.readouterr().out == ""


def test_the_products_gather_wrote_are_the_names_the_config_checks(tmp_path):
    """core.config.product_names (what a config may not collide with) against the files a real gather wrote."""
    from rxte_hpc.core.config import load_config
    from rxte_hpc.core.productnames import product_names

    cfg = demo_config(tmp_path, n_obs=4, chmin=None, chmax=None, bands={"soft": [2, 4], "hard": [4, 9]})
    raw = yaml.safe_load(cfg.read_text())
    raw["gather"] = {"hardness": [["hard", "soft"]]}
    cfg.write_text(yaml.safe_dump(raw))
    c = Campaign.from_config(cfg)
    c.run(workers=1)
    written = {p.path.name for p in c.gather().paths}
    config = load_config(cfg)
    names = product_names(config.path, config.gather.output, config.gather.plot,
                          [b.name for b in config.extract.band_list()], config.gather.hardness or ())
    assert written == set(names) and len(written) == 4


def test_errors_are_importable_from_the_package():
    from rxte_hpc import ConfigError as C, DataError as D, RxteError as R, SiteError as S, UsageError as U

    assert issubclass(C, U) and issubclass(U, R) and issubclass(D, R) and issubclass(S, R)
    assert (C.exit_code, U.exit_code, D.exit_code, S.exit_code) == (2, 2, 1, 1)


def test_no_print_outside_the_cli():
    """The API returns and the CLI prints: no `print(` call anywhere in the package but cli.py."""
    import ast

    found = []
    for path in (REPO / "rxte_hpc").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "rxte_hpc":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []
