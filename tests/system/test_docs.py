"""docs/walkthrough.md runs as a notebook (jupytext -> nbclient, a real IPython kernel) on the demo
archive, and leaves the merged light curves, hardness ratio and figures it promises."""
from __future__ import annotations

import base64
import re

import jupytext
import nbclient
import nbformat
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from where import REPO

WALKTHROUGH = REPO / "docs" / "walkthrough.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow       # a kernel, a simulated archive and two campaigns: about 15 s


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The walkthrough executed from docs/ (as a user opens it), writing into a temporary folder."""
    work = tmp_path_factory.mktemp("walkthrough")
    notebook = jupytext.read(WALKTHROUGH)
    notebook.metadata["rxte_hpc_default_dir_existed"] = (REPO / "runs" / "walkthrough").exists()
    mp = pytest.MonkeyPatch()
    mp.setenv("RXTE_HPC_WALKTHROUGH_DIR", str(work))
    try:
        client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(WALKTHROUGH.parent)}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as exc:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))         # the kernel's traceback is coloured
            pytest.fail(f"{WALKTHROUGH.relative_to(REPO)}: a cell failed:\n{plain}", pytrace=False)
    finally:
        mp.undo()
        nbformat.write(notebook, work / "walkthrough.ipynb")     # to read when a test below fails
    return notebook, work


def _outputs(notebook, output_type=None):
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if output_type is None or o.output_type == output_type]


def test_every_cell_ran_without_error(executed):
    notebook, _ = executed
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code)
    assert not _outputs(notebook, "error")


def test_the_api_prints_nothing_unless_asked(executed):
    """docs/architecture.md#the-api-returns-the-cli-prints: no progress lines, warnings or log records reach the notebook."""
    notebook, _ = executed
    stderr = "".join(o["text"] for o in _outputs(notebook, "stream") if o["name"] == "stderr")
    assert not stderr, f"the walkthrough's cells wrote to stderr:\n{stderr[:2000]}"


def test_it_wrote_under_the_folder_it_was_given(executed):
    notebook, work = executed
    assert (work / "seed-band" / "manifest.ecsv").is_file() and (work / "two-bands" / "manifest.ecsv").is_file()
    assert notebook.metadata["rxte_hpc_default_dir_existed"] == (REPO / "runs" / "walkthrough").exists()


def test_the_seed_band_light_curve_is_merged_from_every_observation(executed):
    _, work = executed
    manifest = Table.read(work / "seed-band" / "manifest.ecsv", format="ascii.ecsv")
    assert len(manifest) > 0
    with fits.open(work / "seed-band" / "merged.lc", checksum=True) as hdul:
        rate = hdul["RATE"]
        assert rate.header["TIMEDEL"] == 16 and len(rate.data) > 0
        assert set(rate.data["OBSID"]) == set(manifest["obsid"])
        assert np.all(np.diff(rate.data["TIME"]) > 0)
        assert hdul["GTI"].data is not None and len(hdul["GTI"].data) >= len(manifest)
        n_merged = len(rate.data)
    # the per-observation files the merge was made of: their rows, all of them, and nothing else
    rows = 0
    for lc in (work / "seed-band" / "lc").rglob("*.lc"):
        with fits.open(lc) as hdul:
            rows += len(hdul[1].data)
    assert rows == n_merged


def test_the_two_band_campaign_reused_the_archive_and_wrote_a_hardness_ratio(executed):
    _, work = executed
    assert not (work / "two-bands" / "archive").exists()
    soft = Table.read(work / "two-bands" / "merged_soft.lc", hdu="RATE")
    hard = Table.read(work / "two-bands" / "merged_hard.lc", hdu="RATE")
    ratio = Table.read(work / "two-bands" / "hardness_hard_soft.fits", hdu=1)
    assert len(soft) == len(hard) > 0
    # the gathered ratio against the two merged bands, where both rates are positive
    rates = {t: dict(zip(zip(b["OBSID"], b["TIME"]), b["RATE"])) for t, b in (("soft", soft), ("hard", hard))}
    keys = list(zip(ratio["OBSID"], ratio["TIME"]))
    assert len(keys) > 0.9 * len(soft)
    expect = np.array([rates["hard"][k] / rates["soft"][k] for k in keys])
    assert np.allclose(ratio["RATIO"], expect, rtol=1e-6)


def test_the_figures_were_drawn(executed):
    notebook, work = executed
    images = [o["data"]["image/png"] for o in _outputs(notebook, "display_data") if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    for name in ("seed-band.png", "two-bands.png", "seed-band/merged.png", "two-bands/merged.png"):
        path = work / name
        assert path.is_file() and path.read_bytes().startswith(PNG_MAGIC), name


# ------------------------------------------------------------------ the docs in the repository


def test_the_configuration_reference_is_the_code(capsys):
    """docs/config.md is `rxte-hpc config --schema` byte for byte: regenerate it when a config field changes."""
    from rxte_hpc.cli import main

    assert main(["config", "--schema"]) == 0
    generated = capsys.readouterr().out
    assert (REPO / "docs" / "config.md").read_text() == generated, \
        "docs/config.md is stale: rxte-hpc config --schema > docs/config.md"


def test_every_config_field_has_help_and_is_in_the_reference():
    import dataclasses

    from rxte_hpc.core.config import _SECTIONS

    text = (REPO / "docs" / "config.md").read_text()
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
            assert f"`{name}.{f.name}`" in text


#: What points outside the repository: the shared reference files and folders of the project's workspace.
#: (Built from pieces, so that this file does not match itself.)
OUTSIDE = re.compile("|".join(["RXTE-" + "PCA", r"DESIGN\." + "md", r"LESSONS\." + "md", r"(?<![\w.])\.\./" + "shared/",
                               "/work/" + "shared", r"(?<![\w/])" + "shared/(docs|data|fixtures|vendor)"]))


def test_nothing_in_the_repository_cites_a_file_outside_it():
    """Code, docs, README and tests cite only files a clone has (the test setup's installer is the one exception:
    it installs heasoftpy from the shared folder beside the checkout, and says so)."""
    found = []
    for folder in ("rxte_hpc", "docs", "tests", "benchmarks", "configs"):
        for path in (REPO / folder).rglob("*"):
            if not path.is_file() or path.suffix in (".lc", ".gz", ".fits", ".png", ".pyc"):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            found += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    found += [f"README.md:{n}" for n, line in enumerate((REPO / "README.md").read_text().splitlines(), 1)
              if OUTSIDE.search(line)]
    assert found == [], "\n".join(found)


def test_doc_links_inside_the_repository_resolve():
    """Every `docs/<file>.md#anchor` a docstring, doc or README names exists, anchor included."""
    targets = {p.name: p for p in (REPO / "docs").glob("*.md")}
    anchors = {name: {_anchor(line) for line in p.read_text().splitlines() if line.startswith("#")}
               for name, p in targets.items()}
    bad = []
    files = [*(REPO / "rxte_hpc").rglob("*.py"), *(REPO / "docs").glob("*.md"), REPO / "README.md"]
    for path in files:
        for name, anchor in re.findall(r"docs/([\w.-]+\.md)(?:#([\w-]+))?", path.read_text()):
            if name not in targets or (anchor and anchor not in anchors[name]):
                bad.append(f"{path.relative_to(REPO)}: docs/{name}" + (f"#{anchor}" if anchor else ""))
    for path in (REPO / "docs").glob("*.md"):  # relative links between the docs
        for name, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", path.read_text()):
            if name not in targets or (anchor and anchor not in anchors[name]):
                bad.append(f"{path.relative_to(REPO)}: ({name}#{anchor})")
    assert bad == [], "\n".join(bad)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, blanks as '-'."""
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_the_index_links_every_page_of_docs():
    index = (REPO / "docs" / "index.md").read_text()
    missing = [p.name for p in (REPO / "docs").glob("*.md") if p.name != "index.md" and f"]({p.name})" not in index]
    assert missing == [], f"docs/index.md does not link {missing}"
