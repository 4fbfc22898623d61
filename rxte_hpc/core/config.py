"""YAML configuration -> frozen dataclasses; every error names the key and the file.

Each field carries its help text in `metadata['help']`, so an error can say
what a key means. Relative paths are relative to the config file's directory,
never to the current directory: a batch job starts wherever the scheduler puts
it (every key: docs/config.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from rxte_hpc.core.archiveconfig import S3Config, check_archive, is_remote_root
from rxte_hpc.core.errors import ConfigError
from rxte_hpc.core.productnames import product_names
from rxte_hpc.core.targetsfile import read_targets_csv

#: Values that end up in file names, FITS EXTNAMEs and shell scripts.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}")
_SIMPLE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ARCHIVE_SIMULATED = "simulated"
BACKENDS = ("heasoft", "native", "stdprod")
#: How HEASoft tasks are called (docs/science.md#heasoft-in-batch-pfiles-prompts-exit-status):
#: auto = heasoftpy when it imports, else exec.
RUNNERS = ("auto", "heasoftpy", "exec")
SOURCE_KINDS = ("tap", "table", "archive")
DEFAULT_TAP = "https://heasarc.gsfc.nasa.gov/xamin/vo/tap"


def _f(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TargetConfig:
    name: str | None = _f(None, "source name; resolved with astropy only when ra/dec are absent")
    ra: float | None = _f(None, "right ascension (deg, ICRS) of the target", lo=0.0, hi=360.0)
    dec: float | None = _f(None, "declination (deg, ICRS) of the target", lo=-90.0, hi=90.0)
    radius_deg: float = _f(0.1, "cone radius (deg) for pointings on the target", lo=0.0, hi=10.0, lo_open=True)


@dataclass(frozen=True)
class SourceConfig:
    kind: str = _f("archive", "where ObsIDs come from: tap | table | archive", choices=SOURCE_KINDS)
    service: str = _f(DEFAULT_TAP, "TAP service URL (kind: tap)")
    table: str = _f("xtemaster", "catalogue table (kind: tap)")
    min_exposure_s: float = _f(0.0, "keep ObsIDs with exposure > this (s)", lo=0.0)
    maxrec: int = _f(100000, "row limit asked of the TAP service; reaching it is an error", lo=1)
    path: Path | None = _f(None, "table file with obsid and cycle columns (kind: table)", path=True)
    time_range_mjd: tuple[float, float] | None = _f(None, "[start, stop] MJD range of observations (optional)")


@dataclass(frozen=True)
class SimulateConfig:
    n_obs: int = _f(200, "number of simulated ObsIDs (archive.root: simulated)", lo=1, hi=100000)
    seed: int = _f(1, "random seed of the simulated archive", lo=0)
    with_broken: bool = _f(False, "add deliberately broken ObsIDs")


@dataclass(frozen=True)
class ArchiveConfig:
    root: str = _f(ARCHIVE_SIMULATED, "archive root: a directory, an s3:// or https:// URL, or 'simulated'")
    cache: Path | None = _f(None, "download cache for an s3:// or https:// root (default <run_dir>/cache)", path=True)
    s3: S3Config = _f(S3Config(), "for an s3:// root: {endpoint_url, anon, region}")


@dataclass(frozen=True)
class BandConfig:
    """One energy band: a name plus an absolute channel range or a keV range."""

    name: str
    chmin: int | None = None
    chmax: int | None = None
    energy_kev: tuple[float, float] | None = None

    def describe(self) -> str:
        if self.energy_kev is not None:
            return f"{self.energy_kev[0]:g}-{self.energy_kev[1]:g} keV"
        return f"channels {self.chmin}-{self.chmax}"


@dataclass(frozen=True)
class ExtractConfig:
    backend: str = _f("native", "extractor: heasoft | native | stdprod", choices=BACKENDS)
    chmin: int | None = _f(None, "lowest absolute PCA channel (0-255)", lo=0, hi=255)
    chmax: int | None = _f(None, "highest absolute PCA channel (0-255)", lo=0, hi=255)
    energy_kev: tuple[float, float] | None = _f(None, "[lo, hi] keV, converted to channels per gain epoch")
    pculist: str = _f("ALL", "PCUs: ALL or e.g. '2' or '0,2-4'")
    layerlist: str = _f("ALL", "layers: ALL or e.g. '1' or '1-3'")
    binsz: float = _f(16.0, "light-curve bin size (s), a multiple of 16", lo=16.0)
    filter: str = _f("(ELV > 4) && (OFFSET < 0.1)", "maketime filter expression on the filter file")
    prepared: Path | None = _f(None, "where pcaprepobsid products live (default <run_dir>/prepared)", path=True)
    keep_prepared: bool = _f(False, "heasoft: keep pcaprepobsid products under <run_dir>/prepared/<obsid>")
    runner: str = _f("auto", "how HEASoft tasks are called: auto (heasoftpy when it imports, else exec) | heasoftpy | exec",
                     choices=RUNNERS)
    stdprod_band: str = _f("a", "stdprod backend: a 2-9, b 2-4, c 4-9, d 9-20, e 20-40 keV", choices=tuple("abcde"))
    bands: tuple[BandConfig, ...] | None = _f(None, "several bands in one pass: {name: [lo, hi] keV | {chmin, chmax}}")

    def band_list(self) -> tuple[BandConfig, ...]:
        """The bands to extract: `bands`, or the single chmin/chmax or energy_kev band."""
        if self.bands:
            return self.bands
        return (BandConfig("RATE", self.chmin, self.chmax, self.energy_kev),)


@dataclass(frozen=True)
class ScratchConfig:
    root: Path = _f(Path("/dev/shm"), "node-local scratch root; falls back to $TMPDIR", path=True)
    min_free_mb: int = _f(512, "free space needed on scratch before falling back", lo=0)


@dataclass(frozen=True)
class TasksConfig:
    obs_per_task: int = _f(8, "ObsIDs per task (one array element or local job)", lo=1, hi=100000)


@dataclass(frozen=True)
class SlurmConfig:
    partition: str | None = _f(None, "partition (-p)")
    time: str = _f("02:00:00", "time limit per array element")
    mem: str = _f("4G", "memory per array element")
    cpus_per_task: int = _f(1, "CPUs per array element", lo=1, hi=1024)
    throttle: int = _f(64, "at most this many elements at once (%P)", lo=1)
    account: str | None = _f(None, "account (-A)")
    extra: tuple[str, ...] = _f((), "extra #SBATCH options, e.g. ['--qos=normal']")
    setup: tuple[str, ...] = _f((), "shell lines run before the worker (trusted), e.g. ['module load heasoft']")
    signal_s: int = _f(120, "seconds before the time limit that Slurm sends SIGUSR1", lo=10, hi=3600)
    mpi_tasks: int = _f(2, "submit --mpi: ranks in the one allocation", lo=1)


@dataclass(frozen=True)
class GatherConfig:
    output: str = _f("merged.lc", "merged light curve file name in run_dir")
    plot: str = _f("merged.png", "plot file name in run_dir")
    hardness: tuple[tuple[str, str], ...] | None = _f(None, "hardness ratios [[hard, soft], ...]")


@dataclass(frozen=True)
class Config:
    """The whole configuration. `path` is the file it came from (for messages)."""

    path: Path
    run_dir: Path
    target: TargetConfig
    source: SourceConfig
    archive: ArchiveConfig
    simulate: SimulateConfig
    extract: ExtractConfig
    scratch: ScratchConfig
    tasks: TasksConfig
    slurm: SlurmConfig
    gather: GatherConfig
    #: several sources in one campaign (`targets:`); empty for the usual one `target:`
    targets: tuple[TargetConfig, ...] = ()

    def target_list(self) -> tuple[TargetConfig, ...]:
        """The configured targets: `targets:`, or the one `target:`."""
        return self.targets or (self.target,)

    def hash(self) -> str:
        """Hash of what decides an ObsID's light curve; a change makes old outputs stale."""
        science = {
            "extract": _plain(self.extract, drop=("keep_prepared", "prepared", "runner")),  # runner: same tasks either way
            "target": [self.target.ra, self.target.dec],
        }
        text = json.dumps(science, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_SECTIONS = {
    "target": TargetConfig,
    "source": SourceConfig,
    "archive": ArchiveConfig,
    "simulate": SimulateConfig,
    "extract": ExtractConfig,
    "scratch": ScratchConfig,
    "tasks": TasksConfig,
    "slurm": SlurmConfig,
    "gather": GatherConfig,
}


def _plain(obj: Any, drop: tuple[str, ...] = ()) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in drop}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (YAML says keys are unique)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: the base constructor reports it
            continue
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; ConfigError (exit 2) names the file and the key, and has it in `.path`."""
    path = Path(path)
    try:
        return _load(path)
    except ConfigError as exc:
        raise exc.with_context(path=path)


def _load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the config as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}:{line} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return config_from_mapping(raw if raw is not None else {}, path)


def config_from_mapping(raw: Any, path: Path) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = path.resolve().parent
    allowed = {"run_dir", "targets", *_SECTIONS}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    if "run_dir" not in raw:
        raise ConfigError(f"{path}: missing key 'run_dir' (where manifest, light curves and status go)")
    run_dir = _resolve_path(_expect_str(raw["run_dir"], "run_dir", path), base)
    sections = {name: _section(cls, raw.get(name), name, path, base) for name, cls in _SECTIONS.items()}
    root = sections["archive"].root
    if root != ARCHIVE_SIMULATED and not is_remote_root(root):
        sections["archive"] = dataclasses.replace(sections["archive"], root=str(_resolve_path(root, base)))
    targets: tuple[TargetConfig, ...] = ()
    if "targets" in raw:
        if "target" in raw:
            raise ConfigError(f"{path}: give either target (one source) or targets (several), not both")
        targets = _targets(raw["targets"], path, base)
    cfg = Config(path=path, run_dir=run_dir, targets=targets, **sections)
    _cross_checks(cfg)
    return cfg


#: A target name ends up in `<run_dir>/targets/<name>/`, FITS OBJECT keywords and log lines.
_TARGET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")


def target_key(name: str) -> str:
    """What makes two target names the same (case, blanks, '_' and '-' ignored): `ETA_CAR` == `eta car`."""
    return re.sub(r"[\s_-]+", "", name).lower()


def _targets(raw: Any, path: Path, base: Path) -> tuple[TargetConfig, ...]:
    """`targets: [{name, ra, dec[, radius_deg]}, ...]` or `targets: {path: targets.csv}` (name, ra, dec[, radius_deg])."""
    where = "targets"
    if isinstance(raw, Mapping):
        if set(raw) != {"path"}:
            raise ConfigError(f"{path}: targets must be a list of {{name, ra, dec[, radius_deg]}} or {{path: FILE.csv}}")
        file = _resolve_path(_expect_str(raw["path"], "targets.path", path), base)
        where = f"targets.path {file}"
        raw = read_targets_csv(file, path)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: targets must be a non-empty list of {{name, ra, dec[, radius_deg]}}")
    out: list[TargetConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        key = f"targets[{i}]"
        target = _section(TargetConfig, item, key, path, base)
        if not target.name or not _TARGET_NAME_RE.fullmatch(target.name):
            raise ConfigError(f"{path}: {key}.name must be 1-64 letters, digits, blanks or _ . + - "
                              f"(it names <run_dir>/targets/<name>/), not {target.name!r} ({where})")
        if target.ra is None or target.dec is None:
            raise ConfigError(f"{path}: {key} ({target.name}) needs ra and dec in degrees: several targets are "
                              f"assigned by position ({where})")
        norm = target_key(target.name)
        if norm in seen:
            raise ConfigError(f"{path}: {key}.name {target.name!r} repeats targets[{seen[norm]}] ({where})")
        seen[norm] = i
        out.append(target)
    return tuple(out)


def _expect_str(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: {key} must be a non-empty string, not {value!r}")
    if "\0" in value or "\n" in value:
        raise ConfigError(f"{path}: {key} contains a control character")
    return value


def _resolve_path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _section(cls: type, raw: Any, name: str, path: Path, base: Path) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: {name} must be a mapping, not {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key '{name}.{unknown[0]}' (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        values[key] = _convert(value, hints[key], fields[key], f"{name}.{key}", path, base)
    return cls(**values)


def _convert(value: Any, hint: Any, fld: dataclasses.Field, key: str, path: Path, base: Path) -> Any:
    meta = fld.metadata
    what = meta.get("help", "")
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{path}: {key} {msg}" + (f" ({what})" if what else ""))

    optional = type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise fail("must not be empty")
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if key == "extract.bands":
        return _bands(value, fail, path, key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a nested section such as archive.s3
        return _section(hint, value, key, path, base)
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(f"must be true or false, not {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and not float(value).is_integer()):
            raise fail(f"must be a {'whole ' if hint is int else ''}number, not {value!r}")
        number = hint(value)
        if not math.isfinite(number):
            raise fail(f"must be finite, not {value!r}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (number < lo or (meta.get("lo_open") and number == lo)):
            raise fail(f"must be {'>' if meta.get('lo_open') else '>='} {lo}, not {value!r}")
        if hi is not None and number > hi:
            raise fail(f"must be <= {hi}, not {value!r}")
        return number
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise fail(f"must be a string, not {value!r}")
        value = str(value)
        if "\0" in value or "\n" in value:
            raise fail("must not contain control characters")
        if "choices" in meta and value not in meta["choices"]:
            raise fail(f"must be one of {', '.join(meta['choices'])}, not {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise fail(f"must be a path, not {value!r}")
        return _resolve_path(value, base)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise fail(f"must be a list, not {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
            return tuple(_convert(v, inner, fld, f"{key}[{i}]", path, base) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"must be a list of {len(args)} values, not {value!r}")
        converted = tuple(_convert(v, a, _NO_LIMITS, f"{key}[{i}]", path, base) for i, (v, a) in enumerate(zip(value, args)))
        if all(isinstance(v, float) for v in converted) and len(converted) == 2 and not converted[0] < converted[1]:
            raise fail(f"must be [low, high] with low < high, not {value!r}")
        return converted
    raise fail(f"has an unsupported type {hint}")  # pragma: no cover - guards new fields


#: The field of an element inside a fixed-length list: no help text, no limits (field() types as its default).
_NO_LIMITS = typing.cast("dataclasses.Field[Any]", field(default=None))


def _bands(value: Any, fail: Any, path: Path, key: str) -> tuple[BandConfig, ...]:
    if not isinstance(value, Mapping) or not value:
        raise fail("must be a mapping of band name to [lo_keV, hi_keV] or {chmin: .., chmax: ..}")
    bands = []
    for name, spec in value.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.upper() in ("GTI", "OBSIDS", "PRIMARY"):
            raise ConfigError(
                f"{path}: {key} band name {name!r} must be a letter then letters/digits/_ (max 16), not a reserved EXTNAME"
            )
        if isinstance(spec, (list, tuple)):
            if len(spec) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
                raise ConfigError(f"{path}: {key}.{name} must be [lo_keV, hi_keV], not {spec!r}")
            lo, hi = float(spec[0]), float(spec[1])
            if not (0 < lo < hi <= 200):
                raise ConfigError(f"{path}: {key}.{name} must have 0 < lo < hi <= 200 keV, not {spec!r}")
            bands.append(BandConfig(name, energy_kev=(lo, hi)))
        elif isinstance(spec, Mapping):
            extra = set(spec) - {"chmin", "chmax"}
            if extra or set(spec) != {"chmin", "chmax"}:
                raise ConfigError(f"{path}: {key}.{name} must be {{chmin: N, chmax: M}}, not {dict(spec)!r}")
            lo, hi = spec["chmin"], spec["chmax"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in (lo, hi)) or lo > hi:
                raise ConfigError(f"{path}: {key}.{name} needs 0 <= chmin <= chmax <= 255, not {dict(spec)!r}")
            bands.append(BandConfig(name, chmin=lo, chmax=hi))
        else:
            raise ConfigError(f"{path}: {key}.{name} must be [lo_keV, hi_keV] or {{chmin, chmax}}, not {spec!r}")
    names_upper = [b.name.upper() for b in bands]
    if len(set(names_upper)) != len(names_upper):
        raise ConfigError(f"{path}: {key} has two bands whose names differ only in case")
    return tuple(bands)


def _cross_checks(cfg: Config) -> None:
    path = cfg.path
    ex = cfg.extract
    if ex.chmin is not None and ex.chmax is not None and ex.chmin > ex.chmax:
        raise ConfigError(f"{path}: extract.chmin ({ex.chmin}) is above extract.chmax ({ex.chmax})")
    if ex.energy_kev is not None and (ex.chmin is not None or ex.chmax is not None):
        raise ConfigError(f"{path}: extract.energy_kev and extract.chmin/chmax are alternatives; give one")
    if ex.bands and (ex.energy_kev is not None or ex.chmin is not None or ex.chmax is not None):
        raise ConfigError(f"{path}: extract.bands replaces chmin/chmax/energy_kev; give one form")
    if ex.binsz % 16:
        raise ConfigError(f"{path}: extract.binsz must be a multiple of 16 s (pcaextlc2), not {ex.binsz:g}")
    if ex.backend == "stdprod" and ex.bands:
        raise ConfigError(f"{path}: extract.bands needs the native or heasoft backend (stdprod has fixed bands)")
    for key in ("output", "plot"):
        value = getattr(cfg.gather, key)
        if not _SIMPLE_FILE_RE.fullmatch(value):
            raise ConfigError(f"{path}: gather.{key} must be a plain file name in run_dir, not {value!r}")
    if cfg.gather.hardness:
        names = {b.name for b in ex.band_list()}
        for pair in cfg.gather.hardness:
            missing = [n for n in pair if n not in names]
            if missing:
                raise ConfigError(f"{path}: gather.hardness names band {missing[0]!r}, not in extract.bands")
        pairs = [tuple(p) for p in cfg.gather.hardness]
        for i, (top, bottom) in enumerate(pairs):
            if top == bottom:
                raise ConfigError(f"{path}: gather.hardness[{i}] divides band {top!r} by itself")
            if (top, bottom) in pairs[:i]:
                raise ConfigError(f"{path}: gather.hardness[{i}] repeats the pair {[top, bottom]}")
    for i, band in enumerate(ex.band_list()):
        if band.energy_kev is None:
            continue
        lo, hi = (float(v) for v in band.energy_kev)
        key = f"extract.bands.{band.name}" if ex.bands else "extract.energy_kev"
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise ConfigError(f"{path}: {key}: energy band [{lo:g}, {hi:g}] keV needs 0 <= low < high")
    if cfg.source.kind == "table" and cfg.source.path is None:
        raise ConfigError(f"{path}: source.path is required for source.kind: table")
    check_archive(path, cfg.source.kind, cfg.archive.root, cfg.archive.s3)
    product_names(cfg.path, cfg.gather.output, cfg.gather.plot, [b.name for b in ex.band_list()],
                  cfg.gather.hardness or ())
