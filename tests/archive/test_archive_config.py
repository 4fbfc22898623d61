"""What a config may say about the archive, and what a local archive never loads.

`archive.root` is a directory, `simulated`, an https:// URL or an s3:// URL;
`archive.s3: {endpoint_url, anon, region}` belongs to an s3:// root. Mistakes are
one line with exit 2 before anything runs.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rxte_hpc.archive.remote import other_layout
from rxte_hpc.archive.s3 import split_s3_root
from rxte_hpc.cli import main
from rxte_hpc.core.archiveconfig import S3Config
from rxte_hpc.core.config import load_config
from rxte_hpc.core.errors import ConfigError, UsageError
from where import REPO


def config(tmp_path: Path, archive: str, source: str = "{kind: table, path: obs.ecsv}") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"run_dir: out\ntarget: {{ra: 161.26, dec: -59.68}}\nsource: {source}\narchive: {archive}\n")
    return path


def test_an_s3_root_with_its_settings_is_read_as_given(tmp_path):
    cfg = load_config(config(tmp_path, "{root: 's3://nasa-heasarc/xte/data/archive', "
                                       "s3: {endpoint_url: 'http://127.0.0.1:9000', anon: false, region: eu-west-2}}"))
    assert cfg.archive.root == "s3://nasa-heasarc/xte/data/archive"  # a URL, never made a path
    assert cfg.archive.s3 == S3Config(endpoint_url="http://127.0.0.1:9000", anon=False, region="eu-west-2")
    plain = load_config(config(tmp_path, "{root: 's3://nasa-heasarc/xte/data/archive'}"))
    assert plain.archive.s3 == S3Config(endpoint_url=None, anon=True, region="us-east-1")


@pytest.mark.parametrize("archive, says", [
    ("{root: 's3://b/x', s3: {anon: maybe}}", "archive.s3.anon must be true or false"),
    ("{root: 's3://b/x', s3: {secret: x}}", "unknown key 'archive.s3.secret'"),
    ("{root: 's3://b/x', s3: {region: 'US East'}}", "archive.s3.region must be an AWS region"),
    ("{root: 's3://b/x', s3: {endpoint_url: 'ftp://h'}}", "archive.s3.endpoint_url must be http(s)://host"),
    ("{root: 'https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive', s3: {anon: true, region: us-west-2}}",
     "archive.s3 applies to an s3:// archive.root only"),
])
def test_archive_s3_mistakes_are_config_errors_naming_the_key(tmp_path, archive, says):
    with pytest.raises(ConfigError, match=f"config.yaml: {says}".replace("(", r"\(").replace(")", r"\)")):
        load_config(config(tmp_path, archive))


@pytest.mark.parametrize("root", ["https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive", "s3://nasa-heasarc/xte/data/archive"])
def test_a_remote_root_cannot_be_scanned_and_says_how_to_plan(tmp_path, capsys, root):
    """The archive scan needs a directory; a URL is refused in one line, with its two slashes, before any work."""
    cfg = config(tmp_path, f"{{root: '{root}'}}", source="{kind: archive}")
    assert main(["plan", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert repr(root) in err and "source.kind: tap" in err and "source.kind: table" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("root, says", [
    ("s3://", "does not start with an S3 bucket name"),
    ("s3://Upper_Case/x", "does not start with an S3 bucket name"),
    ("s3://bucket/a/../b", r"'\.\.' component"),
    ("s3://bucket/a b", "without blanks"),
    ("s3://bucket/x?versionId=1", "without blanks, query or fragment"),
])
def test_bad_s3_roots_are_usage_errors(root, says):
    with pytest.raises(UsageError, match=says):
        split_s3_root(root)


def test_s3_roots_split_into_bucket_and_prefix():
    assert split_s3_root("s3://nasa-heasarc/xte/data/archive") == ("nasa-heasarc", "xte/data/archive/")
    assert split_s3_root("s3://nasa-heasarc/xte/data/archive/") == ("nasa-heasarc", "xte/data/archive/")
    assert split_s3_root("s3://my.mirror") == ("my.mirror", "")


def test_the_other_layout_swaps_xte_and_rxte_once():
    assert other_layout("s3://nasa-heasarc/xte/data/archive/") == "s3://nasa-heasarc/rxte/data/archive/"
    assert other_layout("https://heasarc.gsfc.nasa.gov/FTP/rxte/data/archive/") == \
        "https://heasarc.gsfc.nasa.gov/FTP/xte/data/archive/"
    assert other_layout("s3://xte/mirror/") is None  # the bucket's name is not a folder of the layout


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})


def test_a_run_on_a_local_archive_never_imports_the_remote_clients(tmp_path):
    """plan, work and gather on a mounted (here simulated) archive: fsspec, s3fs, aiohttp and botocore stay unloaded."""
    (tmp_path / "config.yaml").write_text(
        "run_dir: out\ntarget: {ra: 161.2647, dec: -59.6844, radius_deg: 0.1}\nsource: {kind: archive}\n"
        "archive: {root: simulated}\nsimulate: {n_obs: 3, seed: 2}\nextract: {backend: stdprod}\n"
        "scratch: {root: scratch, min_free_mb: 0}\n")
    (tmp_path / "scratch").mkdir()
    result = _python("""
        import sys
        from rxte_hpc.cli import main
        codes = [main(["plan", "config.yaml"]), main(["work", "config.yaml", "--task", "0"]), main(["gather", "config.yaml"])]
        loaded = sorted({m.split(".")[0] for m in sys.modules} & {"fsspec", "s3fs", "aiohttp", "botocore", "aiobotocore"})
        print("codes", codes, "loaded", loaded)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "codes [0, 0, 0] loaded []" in result.stdout, result.stdout + result.stderr[-2000:]


def test_an_s3_root_without_s3fs_installed_is_one_line_saying_what_to_install(tmp_path):
    (tmp_path / "obs.ecsv").write_text("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: obsid, datatype: string}\n"
                                       "# - {name: cycle, datatype: int64}\nobsid cycle\n90171-01-01-00 9\n")
    cfg = config(tmp_path, "{root: 's3://nasa-heasarc/xte/data/archive'}")
    result = _python(f"""
        import sys
        sys.modules["s3fs"] = None  # what `import s3fs` meets where the [s3] extra is not installed
        from rxte_hpc.cli import main
        sys.exit(main(["work", {str(cfg)!r}, "--task", "0"]) if main(["plan", {str(cfg)!r}]) == 0 else 9)
    """, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs s3fs: pip install 'rxte-hpc[s3]'" in lines[-1] and "Traceback" not in result.stderr
