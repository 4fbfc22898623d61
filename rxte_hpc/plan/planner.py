"""Build the manifest from HEASARC TAP, a table file, or a scan of a local archive; describe, write, plot it.

Every source yields the same `Observation` records and goes through the same
checks (strict ObsIDs, cycle, proposal number, slews, exposure and time cuts,
duplicates), so a TAP query, an exported table of the same rows and a scan
agree. A malformed row fails the plan with its row number: an ObsID silently
dropped at planning time would be a gap in the light curve nobody notices.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from astropy.table import Table

from rxte_hpc.core.version import __version__
from rxte_hpc.archive.local import ensure_simulated, simulated_ready
from rxte_hpc.core.config import ARCHIVE_SIMULATED, Config, target_key
from rxte_hpc.core.errors import DataError, RxteError, UsageError
from rxte_hpc.core.manifest import Manifest, Observation, build_manifest, check_run_dir, read_manifest, science_text
from rxte_hpc.core.obsid import InvalidObsID, ObsID, check_cycle, is_pointing
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.plan.tap import query_observations

log = logging.getLogger(__name__)

#: Column names accepted in table files (lower-cased) -> manifest field.
_ALIASES = {"time": "time_mjd", "exposure": "exposure_s", "target": "target_name", "name": "target_name"}
_FIELDS = ("obsid", "cycle", "prnb", "target_name", "time_mjd", "exposure_s", "ra", "dec")
_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".xml": "votable", ".vot": "votable",
            ".votable": "votable", ".fits": "fits", ".fit": "fits", ".fts": "fits"}
_FMI_NAME_COLUMNS = ("source", "target", "target_name", "object")


def _is_missing(value: Any) -> bool:
    return value is None or value is np.ma.masked or np.ma.is_masked(value)


def _text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip()
    return str(value).strip()


def _number(value: Any) -> float:
    if _is_missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


#: xtemaster `status` values of observations that happened (the others: accepted, scheduled, ... never observed).
OBSERVED_STATUSES = ("observed", "processed", "archived")


def observations_from_table(table: Table, where: str, error: type[RxteError] = DataError,
                            dropped: dict[str, int] | None = None) -> list[Observation]:
    """Rows with obsid and cycle (and optionally prnb, target_name, time, exposure, ra, dec) -> Observations.

    Column names are matched case-insensitively, xtemaster's `time`/`exposure`
    stand for `time_mjd`/`exposure_s`. A bad row raises `error` naming the row.
    A catalogue row that was never observed (xtemaster `status` other than
    observed/processed/archived, typically with no ObsID and masked time) is
    not an error: it is dropped and counted in `dropped["unobserved"]`. A
    masked exposure stays NaN (unknown), never 0.
    """
    columns: dict[str, str] = {}
    for name in table.colnames:
        key = name.strip().lower()
        columns.setdefault(_ALIASES.get(key, key), name)
    if "obsid" not in columns:
        raise UsageError(f"{where}: no 'obsid' column (columns: {', '.join(table.colnames) or 'none'})")
    if "cycle" not in columns:
        raise UsageError(
            f"{where}: no 'cycle' column (columns: {', '.join(table.colnames) or 'none'}); the archive path "
            "AO<cycle>/P<prnb>/<obsid> needs it: add `cycle` to the query's SELECT list (HEASARC's default "
            "xtemaster columns omit it; `SELECT *` or the seed's column list include it)"
        )
    present = [f for f in _FIELDS if f in columns]
    cells = {f: _cells(table, columns[f]) for f in present}  # plain Python values, masked -> None: 20x faster
    statuses = _cells(table, columns["status"]) if "status" in columns else None
    out = []
    for i in range(1, len(table) + 1):
        values = {f: cells[f][i - 1] for f in present}
        raw_obsid = _text(values["obsid"])
        if statuses is not None and _text(statuses[i - 1]).lower() not in OBSERVED_STATUSES:
            if dropped is not None:
                dropped["unobserved"] = dropped.get("unobserved", 0) + 1
            continue
        try:
            obsid = ObsID.parse(raw_obsid)
            if _is_missing(values["cycle"]):
                raise InvalidObsID("no AO cycle")
            cycle = check_cycle(values["cycle"])
            if "prnb" in values and not _is_missing(values["prnb"]) and int(values["prnb"]) != obsid.prnb:
                raise InvalidObsID(f"prnb {values['prnb']} disagrees with the ObsID's proposal {obsid.proposal}")
        except (InvalidObsID, TypeError, ValueError) as exc:
            raise error(f"{where}: row {i} (obsid {raw_obsid!r}): {exc}") from None
        out.append(
            Observation(
                obsid,
                cycle,
                target_name=_text(values.get("target_name")),
                time_mjd=_number(values.get("time_mjd")),
                exposure_s=_number(values.get("exposure_s")),
                ra=_number(values.get("ra")),
                dec=_number(values.get("dec")),
            )
        )
    return out


def _cells(table: Table, name: str) -> list[Any]:
    """A column's values as Python objects, None where masked."""
    col = table[name]
    mask = getattr(col, "mask", None)
    values = (col.data.data if mask is not None else np.asarray(col)).tolist()
    if mask is not None and np.any(mask):
        return [None if m else v for v, m in zip(values, np.asarray(mask).tolist())]
    return values


def read_table_file(path: Path) -> Table:
    """CSV, ECSV, VOTable or FITS table, by extension; a file that is not one is a one-line error."""
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    fmt = _FORMATS.get(ext)
    if not path.is_file():
        raise UsageError(f"{path}: source.path does not exist or is not a file")
    if fmt is None:
        raise UsageError(f"{path}: unknown table format {ext or '(no extension)'!r}; use .csv, .ecsv, .xml/.vot, or .fits")
    try:
        return Table.read(path, format=fmt)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:  # what astropy's readers raise on bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{path}: not a readable {fmt} table ({type(exc).__name__}: {reason[:160]})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fmi_info(obsid_dir: Path) -> tuple[float, float, str]:
    """(start MJD, span s, target name) from the ObsID's FMI, NaN/'' where it says nothing."""
    from astropy.io import fits

    from rxte_hpc.fits.lcfile import absolute_times, read_time_ref

    fmi = next((p for p in (obsid_dir / "FMI", obsid_dir / "FMI.gz") if p.is_file()), None)
    if fmi is None:
        return math.nan, math.nan, ""
    try:
        with fits.open(fmi) as hdus:
            hdu = hdus["XTE_MI"] if "XTE_MI" in hdus else hdus[1]
            names = {n.lower(): n for n in hdu.columns.names}
            row = hdu.data[0]
            met = np.array([row[names["startmet"]], row[names["stopmet"]]], dtype=float)
            start, stop = (float(t) for t in absolute_times(met, hdu.header))
            time_mjd = float(read_time_ref(hdu.header).mjd(start))
            target = next((_text(row[names[c]]) for c in _FMI_NAME_COLUMNS if c in names), "")
            target = target or _text(hdu.header.get("OBJECT")) or _text(hdus[0].header.get("OBJECT"))
    except (OSError, KeyError, IndexError, TypeError, ValueError, DataError) as exc:
        log.warning("%s: FMI unreadable (%s); time and exposure unknown", fmi, exc)
        return math.nan, math.nan, ""
    return time_mjd, float(stop - start), target


def _filter_file_target(obsid_dir: Path, obsid: ObsID) -> str:
    from astropy.io import fits

    path = obsid_dir / "stdprod" / obsid.filter_file_name()
    try:
        with fits.open(path) as hdus:
            return next((_text(h.header.get("OBJECT")) for h in hdus if _text(h.header.get("OBJECT"))), "")
    except (OSError, IndexError, ValueError):
        return ""


def scan_archive(root: Path) -> list[Observation]:
    """Every `AO*/P*/<obsid>` directory under a local archive root, with FMI times where readable.

    The exposure is the FMI's StopMET - StartMET: the pointing's span, an upper
    bound on good time, but right in proportion for balancing tasks.
    """
    found = []
    for ao in sorted(root.glob("AO*")):
        try:
            cycle = check_cycle(ao.name[2:])
        except InvalidObsID:
            continue
        for prop in sorted(p for p in ao.glob("P*") if p.is_dir()):
            for entry in sorted(os.scandir(prop), key=lambda e: e.name):
                if not entry.is_dir():
                    continue
                try:
                    obsid = ObsID.parse(entry.name)
                except InvalidObsID:
                    log.warning("%s: not an ObsID directory, skipped", entry.path)
                    continue
                time_mjd, span, target = _fmi_info(Path(entry.path))
                target = target or _filter_file_target(Path(entry.path), obsid)
                found.append(Observation(obsid, cycle, target, time_mjd, span))
    return found


def _angular_sep_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    cos_sep = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(r1 - r2)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos_sep))))


def _assign_targets(observations: Sequence[Observation], config: Config) -> list[str | None]:
    """Several targets: per row, the configured target whose cone holds it (the nearest if several), else None.

    A row without a position is matched by name (`ETA_CAR` == `eta car`), since
    an archive scan knows names but not always positions. Vectorised: 100,000
    rows against a few targets in a few milliseconds.
    """
    n = len(observations)
    ra = np.radians(np.array([o.ra for o in observations], dtype=float))
    dec = np.radians(np.array([o.dec for o in observations], dtype=float))
    best = np.full(n, np.inf)
    which = np.full(n, -1)
    for k, t in enumerate(config.targets):
        assert t.ra is not None and t.dec is not None
        r0, d0 = math.radians(t.ra), math.radians(t.dec)
        cos_sep = np.sin(dec) * math.sin(d0) + np.cos(dec) * math.cos(d0) * np.cos(ra - r0)
        with np.errstate(invalid="ignore"):
            sep = np.degrees(np.arccos(np.clip(cos_sep, -1.0, 1.0)))
            hit = (sep <= t.radius_deg) & (sep < best)
        best = np.where(hit, sep, best)
        which = np.where(hit, k, which)
    names = [t.name for t in config.targets]
    by_key = {target_key(t.name): t.name for t in config.targets if t.name}
    located = np.isfinite(ra) & np.isfinite(dec)
    out: list[str | None] = []
    for i, obs in enumerate(observations):
        if located[i]:
            out.append(names[which[i]] if which[i] >= 0 else None)
        else:
            out.append(by_key.get(target_key(obs.target_name)) if obs.target_name else None)
    return out


def _warn_mixed_sources(kept: Sequence[Observation], config: Config) -> None:
    """One target, but rows of several names far apart: they would merge into one light curve."""
    where: dict[str, tuple[float, float]] = {}
    for obs in kept:
        if obs.target_name and math.isfinite(obs.ra) and math.isfinite(obs.dec):
            where.setdefault(obs.target_name, (obs.ra, obs.dec))
    limit = max(2 * config.target.radius_deg, 0.2)
    names = sorted(where)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sep = _angular_sep_deg(*where[a], *where[b])
            if sep > limit:
                log.warning(
                    "plan: the rows hold several sources (%s and %s are %.2f deg apart) but the config has one "
                    "target: they would merge into one light curve; configure `targets:` (one light curve each)",
                    a, b, sep,
                )
                return


def select(observations: Iterable[Observation], config: Config) -> tuple[list[Observation], dict[str, int]]:
    """Apply the plan's cuts where the values are known; count what each cut removed.

    Slews/scans have no pointed data; exposure must exceed source.min_exposure_s;
    time must lie in source.time_range_mjd; with target.ra/dec configured, rows
    with a position must lie in the cone. Unknown (NaN) values pass, since the
    archive scan cannot always know them. The first of duplicate ObsIDs is kept.
    With several `targets:`, each row goes to the target whose cone holds it
    (the nearest if several); rows in no cone are dropped (`cone`).
    """
    src, tgt = config.source, config.target
    cone = (tgt.ra, tgt.dec, tgt.radius_deg) if tgt.ra is not None and tgt.dec is not None else None
    several = bool(config.targets)
    dropped = {"duplicate": 0, "slew": 0, "exposure": 0, "time_range": 0, "cone": 0}
    seen: set[ObsID] = set()
    kept = []
    observations = list(observations)
    assigned = _assign_targets(observations, config) if several else [None] * len(observations)
    for obs, name in zip(observations, assigned):
        if obs.obsid in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(obs.obsid)
        if not is_pointing(obs.obsid):
            dropped["slew"] += 1
        elif math.isfinite(obs.exposure_s) and not obs.exposure_s > src.min_exposure_s:
            dropped["exposure"] += 1
        elif src.time_range_mjd and math.isfinite(obs.time_mjd) and not (
            src.time_range_mjd[0] <= obs.time_mjd <= src.time_range_mjd[1]
        ):
            dropped["time_range"] += 1
        elif several:
            if name is None:
                dropped["cone"] += 1
            else:
                kept.append(Observation(obs.obsid, obs.cycle, obs.target_name, obs.time_mjd, obs.exposure_s,
                                        obs.ra, obs.dec, name))
        elif cone and math.isfinite(obs.ra) and math.isfinite(obs.dec) and (
            _angular_sep_deg(obs.ra, obs.dec, cone[0], cone[1]) > cone[2]
        ):
            dropped["cone"] += 1
        else:
            kept.append(obs)
    for why, n in dropped.items():
        if n:
            log.info("plan: %d ObsID(s) dropped (%s)", n, why)
    if not several:
        _warn_mixed_sources(kept, config)
    return kept, dropped


def _source(config: Config, unobserved: dict[str, int], dry_run: bool = False) -> tuple[list[Observation], dict[str, Any], str]:
    """Observations, the source's manifest metadata, and how to name it in messages (unobserved rows counted)."""
    src = config.source
    if src.kind == "tap":
        result = query_observations(config)
        obs = observations_from_table(result.table, f"TAP {result.service}", DataError, unobserved)
        return obs, result.meta(), f"the TAP query {result.adql}"
    if src.kind == "table":
        assert src.path is not None  # the config requires it for kind: table
        path = Path(src.path)
        table = read_table_file(path)
        obs = observations_from_table(table, str(path), UsageError, unobserved)
        return obs, {"kind": "table", "path": str(path), "sha256": _sha256(path), "n_rows": len(table)}, str(path)
    paths = RunPaths(config.run_dir)
    if config.archive.root == ARCHIVE_SIMULATED and dry_run and not simulated_ready(paths):
        return _simulation_model(config, paths)
    root = Path(ensure_simulated(config, paths) if config.archive.root == ARCHIVE_SIMULATED else config.archive.root)
    if not root.is_dir():
        raise UsageError(f"{config.path}: archive.root {str(root)!r} is not a directory (source.kind: archive)")
    obs = scan_archive(root)
    return obs, {"kind": "archive", "root": str(root), "n_rows": len(obs)}, f"archive {root}"


def _simulation_model(config: Config, paths: RunPaths) -> tuple[list[Observation], dict[str, Any], str]:
    """A dry run on a simulated archive not generated yet: the simulation's own list of ObsIDs, nothing written.

    Exposures are the simulated ones, not the FMI spans a scan would read, so
    task balancing can differ slightly from the real plan; the counts are the same.
    """
    from rxte_hpc.sim.campaign import planned_observations

    sim = config.simulate
    obs = [o for o, _ in planned_observations(sim.n_obs, sim.seed, sim.with_broken)]
    root = paths.simulated_archive
    meta = {"kind": "archive", "root": str(root), "n_rows": len(obs), "note": "simulation model: archive not generated"}
    return obs, meta, f"the simulation model for {root} (not generated: a dry run writes nothing)"


def plan(config: Config, *, dry_run: bool = False) -> Manifest:
    """Build the manifest for a config (nothing is written): source, cuts, balanced tasks, metadata.

    A dry run writes nothing anywhere: a simulated archive that does not exist
    yet is planned from the simulation's model instead of being generated.
    """
    unobserved: dict[str, int] = {}
    observations, source_meta, described = _source(config, unobserved, dry_run)
    kept, dropped = select(observations, config)
    dropped = {"unobserved": unobserved.get("unobserved", 0), **dropped}
    if not kept:
        raise UsageError(f"{config.path}: no ObsIDs left to plan from {described} (dropped: {dropped})")
    meta: dict[str, Any] = {
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config.hash(),
        "config_file": str(config.path.resolve()),
        "science": science_text(config),
        "source": {**source_meta, "dropped": dropped},
    }
    if unobserved.get("unobserved"):
        log.info("plan: %d catalogue row(s) never observed (no ObsID), dropped", unobserved["unobserved"])
    if config.targets:
        counts = {t.name: 0 for t in config.targets}
        for obs in kept:
            counts[obs.target] = counts.get(obs.target, 0) + 1
        meta["targets"] = [{"name": t.name, "ra": t.ra, "dec": t.dec, "radius_deg": t.radius_deg,
                            "n_obsids": counts.get(t.name or "", 0)} for t in config.targets]
        for name, n in counts.items():
            if not n:
                log.warning("plan: target %r has no ObsIDs", name)
    return build_manifest(kept, config.tasks.obs_per_task, meta)


def write_manifest(config: Config, manifest: Manifest, *, force: bool = False) -> Path:
    """Publish <run_dir>/manifest.ecsv atomically; refuse to replace it once tasks have run.

    Status records refer to the manifest's task numbers: a new plan under them
    would silently remap which array index does which ObsID.
    """
    paths = RunPaths(config.run_dir)
    ran = paths.has_records()
    if ran and not force:
        raise UsageError(
            f"{paths.manifest}: tasks already ran (status records in {paths.status_dir}); "
            "the manifest is immutable once tasks started. Use a new run_dir, or --force to replace it"
        )
    if ran and force:
        log.warning("replacing %s although status records exist (--force)", paths.manifest)
    manifest.write(paths.manifest)
    log.info("wrote %s: %d ObsIDs in %d tasks", paths.manifest, len(manifest.rows), manifest.n_tasks)
    return paths.manifest


def ensure_manifest(config: Config) -> Manifest:
    """The run's manifest, planning and writing it first when there is none (what `run` and `submit` need);
    a manifest planned by a config of other science is refused (`check_run_dir`)."""
    paths = RunPaths(config.run_dir)
    if paths.manifest.is_file():
        manifest = read_manifest(paths.manifest)
        check_run_dir(config, manifest)
        return manifest
    manifest = plan(config)
    write_manifest(config, manifest)
    log.info("planned %d ObsIDs in %d tasks: %s", len(manifest.rows), manifest.n_tasks, paths.manifest)
    return manifest
