"""`rxte-hpc gather`: merge the run's per-ObsID light curves into one OGIP light curve per target and band.

A one-target run writes its products in the run directory (`merged.lc`, or
`merged_<band>.lc` per band, hardness files, the plot); a run of several
`targets:` writes the same products per target under `targets/<target>/`
(docs/architecture.md#the-run-directory), each from that target's manifest rows only:
targets are never merged together. The merge itself is `merge.py` (pure, on
`LightCurve` objects); the files are written by `outputs.py`. Each per-ObsID
file is read by `lcread.py` (the fast reader, checksums verified over the
bytes read) and a file that fails its CHECKSUM, lacks a column, or has a
non-finite TIME makes that ObsID `failed` (data). Targets are gathered one
after the other and each target's arrays are dropped once its files are
written, so memory follows the largest target's rows. Every product written
is listed in `products.ecsv` (`index.py`).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rxte_hpc.core.config import BandConfig, Config
from rxte_hpc.core.productnames import band_file_name, hardness_file_name
from rxte_hpc.core.errors import DataError
from rxte_hpc.core.manifest import Manifest, read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import MISSING, ObsState, RunSummary
from rxte_hpc.fits.lcfile import LightCurve
from rxte_hpc.products import headers
from rxte_hpc.products.hardness import hardness_ratio, write_hardness
from rxte_hpc.products.headers import band_text
from rxte_hpc.products.index import ProductEntry, clear_stale, write_index
from rxte_hpc.products.lcread import read_obsid_curves
from rxte_hpc.products.merge import CurveAccumulator, MergedCurve, first_few
from rxte_hpc.products.outputs import ObsOutcome, plot_products, write_merged

__all__ = ["CurveAccumulator", "GatherResult", "MergedCurve", "ObsOutcome", "TargetGather", "hardness_ratio",
           "run_gather"]

log = logging.getLogger(__name__)

#: How many ObsIDs a one-line summary names before it says "+N more".
SUMMARY_LIST = 5

#: OBSIDS-extension states (DESIGN: interrupted/running/missing all mean "not there yet").
OUT_STATES = {"done": "used", "failed": "failed", "no_data": "no_data", MISSING: "missing",
              "interrupted": "missing", "running": "missing"}
_COUNTED = ("used", "failed", "missing", "no_data")


@dataclass(frozen=True)
class TargetGather:
    """One target's part of a gather: its products (none when nothing of it could be merged) and counts."""

    target: str  # the configured target of a several-targets run; "" for a one-target run
    outputs: tuple[Path, ...]
    plot: Path | None
    entries: tuple[ProductEntry, ...]
    counts: dict[str, int]
    left_out: tuple[ObsOutcome, ...]  # its ObsIDs not merged
    n_rows: int  # summed over band files
    n_nan: int
    overlaps: int
    line: str


@dataclass(frozen=True)
class GatherResult:
    outputs: tuple[Path, ...]  # every merged light curve and hardness file, all targets
    plot: Path | None  # the plot of a one-target run (the first target's with several; see `targets`)
    n_used: int
    n_missing: int
    n_failed: int
    n_no_data: int
    n_rows: int  # summed over band files and targets
    n_nan: int  # summed over band files and targets
    overlaps: int  # row pairs of two ObsIDs sharing a time bin, summed over band files and targets
    exit_code: int
    summary: str  # for the CLI: one line for one target; one line per target and a total line for several
    targets: tuple[TargetGather, ...] = ()
    entries: tuple[ProductEntry, ...] = field(default=())  # what products.ecsv lists (paths relative to run_dir)
    plots: tuple[Path, ...] = ()  # every target's plot
    left_out: tuple[ObsOutcome, ...] = ()  # every ObsID not merged (failed, missing, no_data), all targets


def run_gather(config: Config, *, allow_missing: bool = False, manifest: Manifest | None = None) -> GatherResult:
    """Merge every `done` ObsID of the run, per target and band, into the configured products.

    Missing or failed ObsIDs (including unreadable light curves) still give
    outputs, but exit code 1 unless `allow_missing`. Nothing usable in the
    whole run -> DataError, nothing written; with several targets, a target
    with nothing usable gets no products and its line says why.
    """
    paths = RunPaths(config.run_dir)
    manifest = manifest if manifest is not None else read_manifest(paths.manifest)
    summary = RunSummary.collect(manifest, paths, config.hash())
    bands = config.extract.band_list()
    several = bool(manifest.targets)
    groups: dict[str, list[ObsState]] = {t: [] for t in manifest.targets} if several else {"": []}
    for st in summary.states:
        groups.setdefault(st.target if several else "", []).append(st)
    done: list[TargetGather] = []
    empty: list[tuple[str, list[ObsOutcome]]] = []
    digest = ""
    for target, states in groups.items():
        outcomes, accs = _read_target(paths, states, bands)
        if not any(o.state == "used" for o in outcomes):
            if not several:
                raise DataError(f"nothing to merge in {paths.root}: no ObsID is done ({_state_text(outcomes)})")
            empty.append((target, outcomes))
            continue
        digest = digest or manifest.digest()  # once for every target
        done.append(_write_target(config, paths, manifest, bands, target, outcomes, accs, digest))
        del accs  # one target's arrays at a time
    if not done:
        raise DataError(f"nothing to merge in {paths.root}: no ObsID of any target is done ("
                        + "; ".join(f"{t}: {_state_text(o)}" for t, o in empty) + ")")
    for target, outcomes in empty:
        counts = _counts(outcomes)
        done.append(TargetGather(target, (), None, (), counts, tuple(outcomes), 0, 0, 0, _target_line(
            target, f"nothing to merge ({_state_text(outcomes)})", outcomes, counts)))
    order = list(groups)
    done.sort(key=lambda t: order.index(t.target))

    outputs = tuple(p for t in done for p in t.outputs)
    plots = tuple(t.plot for t in done if t.plot is not None)
    entries = tuple(e for t in done for e in t.entries)
    stale = clear_stale(paths.root, [*outputs, *plots], config.gather.output, config.gather.plot)
    write_index(paths.root, entries, config.hash())

    totals = {s: sum(t.counts[s] for t in done) for s in _COUNTED}
    bad = bool(totals["failed"] or totals["missing"])
    exit_code = 1 if bad and not allow_missing else 0
    tail = []
    if stale.removed or stale.reported:
        tail.append(stale.describe(paths.root))
    if bad and allow_missing:
        tail.append("allowed (--allow-missing)")
    if several:
        total = (f"total: merged {totals['used']} ObsIDs of {sum(1 for t in done if t.outputs)} of {len(done)} "
                 f"targets into {len(outputs)} files ({sum(t.n_rows for t in done)} rows)")
        others = ", ".join(f"{totals[s]} {s}" for s in ("missing", "failed", "no_data") if totals[s])
        lines = [t.line for t in done] + ["; ".join([total + (f"; {others}" if others else ""), *tail])]
    else:
        lines = ["; ".join([done[0].line, *tail])]
    text = "\n".join(lines)
    for line in lines:  # returned as `summary` for the caller to show (the CLI prints it): logged at debug only
        log.debug("%s", line)
    return GatherResult(
        outputs=outputs,
        plot=plots[0] if plots else None,
        n_used=totals["used"],
        n_missing=totals["missing"],
        n_failed=totals["failed"],
        n_no_data=totals["no_data"],
        n_rows=sum(t.n_rows for t in done),
        n_nan=sum(t.n_nan for t in done),
        overlaps=sum(t.overlaps for t in done),
        exit_code=exit_code,
        summary=text,
        targets=tuple(done),
        entries=entries,
        plots=plots,
        left_out=tuple(o for t in done for o in t.left_out),
    )


def _read_target(
    paths: RunPaths, states: Sequence[ObsState], bands: Sequence[BandConfig]
) -> tuple[list[ObsOutcome], dict[str, CurveAccumulator]]:
    """Every ObsID of one target: its outcome, and the `done` ones' curves in one accumulator per band."""
    accs = {b.name: CurveAccumulator() for b in bands}
    outcomes: list[ObsOutcome] = []
    for st in states:
        state = OUT_STATES[st.state]
        error = (st.record.error or "") if st.record is not None and state != "used" else ""
        if st.state in ("interrupted", "running"):
            error = f"{st.state}: {error}".rstrip(": ")
        if state != "used":
            outcomes.append(ObsOutcome(st.obsid, st.task, state, error))
            continue
        lc_path = paths.lc(st.obsid)
        try:
            chosen = _band_curves(read_obsid_curves(lc_path), bands, str(lc_path))
        except DataError as exc:
            log.warning("%s: light curve not merged, counted as failed (%s)", st.obsid, exc)
            outcomes.append(ObsOutcome(st.obsid, st.task, "failed", f"gather: {exc}"))
            continue
        for band, lc in zip(bands, chosen):
            accs[band.name].add(st.obsid, lc)
        outcomes.append(ObsOutcome(st.obsid, st.task, "used", n_rows=chosen[0].n_rows, exposure=chosen[0].exposure))
    return outcomes, accs


def _write_target(
    config: Config, paths: RunPaths, manifest: Manifest, bands: Sequence[BandConfig], target: str,
    outcomes: list[ObsOutcome], accs: dict[str, CurveAccumulator], digest: str,
) -> TargetGather:
    """Finish one target's merge and write its products (in run_dir, or targets/<target>/ with several)."""
    merged = {name: acc.finish("RATE") for name, acc in accs.items()}
    accs.clear()
    if target:  # several targets: OBJECT is the configured target, whatever names the archive used
        merged = {name: dataclasses.replace(m, curve=dataclasses.replace(
            m.curve, keywords={**m.curve.keywords, "OBJECT": (target, "configured target (targets:)")}))
            for name, m in merged.items()}
    counts = _counts(outcomes)
    provenance = headers.provenance(config, manifest, counts, digest)
    target_name = target or headers.target_name(config, merged[bands[0].name].curve.keywords)
    where = (lambda name: paths.output(name, target)) if target else paths.output
    outputs: list[Path] = []
    entries: list[ProductEntry] = []
    for band in bands:
        out = where(band_file_name(config.gather.output, band.name, len(bands)))
        m = merged[band.name]
        write_merged(out, m, band, provenance, outcomes, config)
        outputs.append(out)
        entries.append(ProductEntry(_rel(paths, out), "lightcurve", target_name, band.name, m.n_rows, len(m.obsids)))
    ratios = []
    for hard, soft in config.gather.hardness or ():
        hc = hardness_ratio(merged[hard].curve, merged[soft].curve, hard, soft)
        out = where(hardness_file_name(hard, soft))
        common = {k: v for k, v in merged[hard].curve.keywords.items() if k in ("TELESCOP", "INSTRUME", "OBJECT")}
        write_hardness(out, hc, {**provenance, **common,
                                 "HARDBAND": (band_text(merged[hard].curve.keywords, bands, hard), "numerator band"),
                                 "SOFTBAND": (band_text(merged[soft].curve.keywords, bands, soft), "denominator band")})
        outputs.append(out)
        ratios.append(hc)
        entries.append(ProductEntry(_rel(paths, out), "hardness", target_name, f"{hard}/{soft}", len(hc.time),
                                    len(set(hc.obsid.tolist()))))
    plot = plot_products(where(config.gather.plot), merged, ratios, outcomes, bands, target_name)
    if plot is not None:
        entries.append(ProductEntry(_rel(paths, plot), "plot", target_name, "all", 0, counts["used"]))

    first = merged[bands[0].name]
    each = " per band" if len(bands) > 1 else ""  # bands share bins and live time: same rows, same NaNs
    head = (f"merged {counts['used']} ObsIDs ({first.n_rows} rows, {first.n_nan} NaN{each}) into "
            + ", ".join(_rel(paths, p) for p in outputs))
    overlap = (f"{first.n_overlap_rows} rows share a time bin with another ObsID: "
               + first_few(["/".join(p) for p in first.overlaps], SUMMARY_LIST)) if first.overlaps else ""
    return TargetGather(
        target=target,
        outputs=tuple(outputs),
        plot=plot,
        entries=tuple(entries),
        counts=counts,
        left_out=tuple(o for o in outcomes if o.state != "used"),
        n_rows=sum(m.n_rows for m in merged.values()),
        n_nan=sum(m.n_nan for m in merged.values()),
        overlaps=sum(m.n_overlap_rows for m in merged.values()),
        line=_target_line(target, head, outcomes, counts, overlap, plot is None),
    )


def _target_line(target: str, head: str, outcomes: Sequence[ObsOutcome], counts: dict[str, int],
                 overlap: str = "", no_plot: bool = False) -> str:
    parts = [f"target {target}: {head}" if target else head]
    missing = [o.obsid for o in outcomes if o.state == "missing"]
    failed = [o.obsid for o in outcomes if o.state == "failed"]
    if missing:
        parts.append(f"{len(missing)} missing: {first_few(missing, SUMMARY_LIST)}")
    if failed:
        parts.append(f"{len(failed)} failed: {first_few(failed, SUMMARY_LIST)}")
    if counts["no_data"] and counts["used"]:
        parts.append(f"{counts['no_data']} no_data")
    if overlap:
        parts.append(overlap)
    if no_plot:
        parts.append("no plot")
    return "; ".join(parts)


def _counts(outcomes: Sequence[ObsOutcome]) -> dict[str, int]:
    return {s: sum(1 for o in outcomes if o.state == s) for s in _COUNTED}


def _rel(paths: RunPaths, path: Path) -> str:
    """A product's path as products.ecsv and the summary give it: relative to the run directory."""
    try:
        return path.relative_to(paths.root).as_posix()
    except ValueError:
        return str(path)


def _band_curves(curves: list[LightCurve], bands: Sequence[BandConfig], where: str) -> list[LightCurve]:
    """The file's curve for each configured band; one band takes the first extension whatever its name."""
    if len(bands) == 1:
        return [curves[0]]
    by_name = {c.name.upper(): c for c in curves}
    missing = [b.name for b in bands if b.name.upper() not in by_name]
    if missing:
        raise DataError(f"{where}: no extension for band {missing[0]!r} (has {', '.join(by_name)})")
    return [by_name[b.name.upper()] for b in bands]


def _state_text(outcomes: Sequence[ObsOutcome]) -> str:
    states: dict[str, int] = {}
    for o in outcomes:
        states[o.state] = states.get(o.state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "empty manifest"


