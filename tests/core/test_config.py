"""Configuration: strict types, errors that name the key and the file, paths relative to the file."""

import pytest

from rxte_hpc.cli import main
from rxte_hpc.core.config import ConfigError, load_config
from where import REPO



def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_demo_config_loads_and_resolves_relative_to_its_file():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.run_dir == (REPO / "runs" / "demo").resolve()
    assert cfg.archive.root == "simulated"
    assert cfg.extract.chmin == 5 and cfg.extract.chmax == 10


def test_relative_paths_are_relative_to_config_not_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "cfgdir"
    sub.mkdir()
    (sub / "arch").mkdir()
    p = write(sub, "run_dir: out\narchive: {root: arch}\nsource: {kind: table, path: t.csv}\nscratch: {root: s}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(p)
    assert cfg.run_dir == sub / "out"
    assert cfg.archive.root == str(sub / "arch")
    assert cfg.source.path == sub / "t.csv"
    assert cfg.scratch.root == sub / "s"


@pytest.mark.parametrize(
    "text, key",
    [
        ("run_dir: r\nbogus: 1\n", "'bogus'"),
        ("run_dir: r\nextract: {chmn: 5}\n", "extract.chmn"),
        ("run_dir: r\nextract: {chmin: five}\n", "extract.chmin"),
        ("run_dir: r\nextract: {chmin: 300}\n", "extract.chmin"),
        ("run_dir: r\nextract: {binsz: 20}\n", "extract.binsz"),
        ("run_dir: r\nextract: {backend: magic}\n", "extract.backend"),
        ("run_dir: r\nextract: {chmin: 10, chmax: 5}\n", "extract.chmin"),
        ("run_dir: r\nextract: {energy_kev: [9, 2]}\n", "extract.energy_kev"),
        ("run_dir: r\nextract: {energy_kev: [2, 9], chmin: 5}\n", "extract.energy_kev"),
        ("run_dir: r\ntasks: {obs_per_task: 0}\n", "tasks.obs_per_task"),
        ("run_dir: r\ntasks: {obs_per_task: 2.5}\n", "tasks.obs_per_task"),
        ("run_dir: r\nslurm: {throttle: true}\n", "slurm.throttle"),
        ("run_dir: r\ntarget: {ra: 400}\n", "target.ra"),
        ("run_dir: r\nsource: {kind: ftp}\n", "source.kind"),
        ("run_dir: r\nsource: {kind: table}\n", "source.path"),
        ("run_dir: r\ngather: {output: ../../etc/x.lc}\n", "gather.output"),
        ("run_dir: r\nextract: {bands: {'a b': [2, 4]}}\n", "band name"),
        ("run_dir: r\nextract: {bands: {GTI: [2, 4]}}\n", "band name"),
        ("run_dir: r\nextract: {bands: {soft: [4, 2]}}\n", "extract.bands.soft"),
        ("run_dir: r\nextract: {bands: {soft: {chmin: 5}}}\n", "extract.bands.soft"),
        ("run_dir: r\nextract: {bands: {soft: [2, 4]}}\ngather: {hardness: [[hard, soft]]}\n", "'hard'"),
        ("extract: {}\n", "run_dir"),
        ("- a\n- b\n", "mapping"),
        ("run_dir: r\nextract: [1]\n", "extract must be a mapping"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert key in str(err.value)
    assert str(p) in str(err.value)


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "run_dir: r\nextract: {chmin: [\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(p)


def test_bands_parse_both_forms(tmp_path):
    p = write(tmp_path, "run_dir: r\nextract: {bands: {soft: [2, 4], hard: {chmin: 11, chmax: 20}}}\n"
                        "gather: {hardness: [[hard, soft]]}\n")
    cfg = load_config(p)
    soft, hard = cfg.extract.band_list()
    assert soft.name == "soft" and soft.energy_kev == (2.0, 4.0)
    assert hard.chmin == 11 and hard.chmax == 20
    assert cfg.gather.hardness == (("hard", "soft"),)


def test_hash_changes_with_science_not_with_slurm(tmp_path):
    a = load_config(write(tmp_path, "run_dir: r\nextract: {chmin: 5, chmax: 10}\n", "a.yaml"))
    b = load_config(write(tmp_path, "run_dir: r\nextract: {chmin: 5, chmax: 11}\n", "b.yaml"))
    c = load_config(write(tmp_path, "run_dir: r\nextract: {chmin: 5, chmax: 10}\nslurm: {mem: 8G}\n", "c.yaml"))
    d = load_config(write(tmp_path, "run_dir: r\nextract: {bands: {soft: [2, 4]}}\n", "d.yaml"))
    e = load_config(write(tmp_path, "run_dir: r\nextract: {bands: {soft: [2, 4], hard: [4, 9]}}\n", "e.yaml"))
    assert a.hash() != b.hash()
    assert a.hash() == c.hash()
    assert d.hash() != e.hash()


def test_cli_reports_config_error_in_one_line_exit_2(tmp_path, capsys):
    p = write(tmp_path, "run_dir: r\nextract: {chmn: 5}\n")
    assert main(["status", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extract.chmn" in err[0] and "Traceback" not in err[0]


def test_cli_missing_config_file_exit_2(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------ the one serializer (submission snapshots)


@pytest.mark.parametrize("name", ["demo.yaml", "etacar.yaml", "etacar-https.yaml"])
def test_a_dumped_config_loads_as_the_same_config_from_any_folder(tmp_path, name):
    import dataclasses

    from rxte_hpc.core.configio import dump_config

    shipped = load_config(REPO / "configs" / name)
    (tmp_path / "elsewhere").mkdir()
    again = load_config(write(tmp_path / "elsewhere", dump_config(shipped)))
    assert dataclasses.replace(again, path=shipped.path) == shipped
    assert again.hash() == shipped.hash()


def test_dumped_bands_targets_and_paths_round_trip(tmp_path):
    import dataclasses

    from rxte_hpc.core.configio import dump_config

    (tmp_path / "a").mkdir()
    p = write(tmp_path / "a", "run_dir: r\nscratch: {root: s}\nextract: {bands: {soft: [2, 4], hard: {chmin: 11, chmax: 20}}}\n"
                              "gather: {hardness: [[hard, soft]]}\n"
                              "targets: [{name: eta car, ra: 161.26, dec: -59.68}, {name: 'wr 140', ra: 305.1, dec: 43.85}]\n")
    cfg = load_config(p)
    (tmp_path / "b").mkdir()
    again = load_config(write(tmp_path / "b", dump_config(cfg)))
    assert dataclasses.replace(again, path=cfg.path) == cfg
    assert again.run_dir == tmp_path / "a" / "r" and again.scratch.root == tmp_path / "a" / "s"


def test_config_error_carries_the_file_as_a_field(tmp_path):
    from rxte_hpc import ConfigError as Exported

    p = write(tmp_path, "run_dir: r\nextract: {backend: bogus}\n")
    with pytest.raises(Exported) as caught:
        load_config(p)
    assert caught.value.path == str(p) and caught.value.exit_code == 2


# ------------------------------------------------------------------ product names cannot collide


@pytest.mark.parametrize("gather, both", [
    ("{output: manifest.ecsv}", ["gather.output", "'manifest.ecsv'"]),
    ("{output: products.ecsv}", ["gather.output", "'products.ecsv'"]),
    ("{plot: status}", ["gather.plot", "'status'"]),
    ("{output: lc}", ["gather.output", "'lc'"]),
    ("{output: slurm}", ["gather.output", "'slurm'"]),
    ("{plot: exposure.png}", ["gather.plot", "'exposure.png'"]),
    ("{output: x.png, plot: x.png}", ["gather.output", "gather.plot", "'x.png'"]),
])
def test_gather_names_that_collide_with_the_run_directory_or_each_other_are_refused(tmp_path, gather, both):
    p = write(tmp_path, f"run_dir: r\ngather: {gather}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(p)
    assert all(b in str(caught.value) for b in both), str(caught.value)
    assert str(p) in str(caught.value)


def test_derived_band_and_hardness_names_are_checked_too(tmp_path):
    # merged_soft.lc is the soft band's file: a plot of that name would overwrite it
    p = write(tmp_path, "run_dir: r\nextract: {bands: {soft: [2, 4], hard: [4, 9]}}\ngather: {plot: merged_soft.lc}\n")
    with pytest.raises(ConfigError, match=r"gather\.plot and gather\.output \(band soft\) both name the file 'merged_soft.lc'"):
        load_config(p)
    p = write(tmp_path, "run_dir: r\nextract: {bands: {soft: [2, 4], hard: [4, 9]}}\n"
                        "gather: {hardness: [[hard, soft]], plot: hardness_hard_soft.fits}\n")
    with pytest.raises(ConfigError, match=r"gather\.plot and gather\.hardness \[hard, soft\]"):
        load_config(p)
