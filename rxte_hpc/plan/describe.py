"""What `plan --dry-run` says: the source, counts, exposure, and the serial and parallel HEASoft time."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rxte_hpc.core.config import Config
from rxte_hpc.core.manifest import Manifest

#: Seconds one ObsID takes through pcaprepobsid + maketime + pcaextlc2: the middle of the seed's 10-20 s,
#: a figure from the seed notebook, not measured here (HEASoft cannot be installed on these machines).
HEASOFT_S_PER_OBSID = 15.0


def _makespan(durations: Sequence[float], workers: int) -> float:
    """Wall time of running the tasks on `workers` slots, longest first (what a scheduler roughly does)."""
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        i = loads.index(min(loads))
        loads[i] += d
    return max(loads, default=0.0)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def describe_plan(config: Config, manifest: Manifest, workers: int | None = None) -> str:
    """What `plan --dry-run` prints: the source, counts, exposure, and serial vs parallel HEASoft time."""
    src = manifest.meta.get("source", {})
    lines = []
    if src.get("kind") == "tap":
        lines += [f"source: TAP {src.get('service')} (maxrec {src.get('maxrec')}, {src.get('n_rows')} rows, "
                  f"status {src.get('query_status')})", f"ADQL: {src.get('adql')}"]
    elif src.get("kind") == "table":
        lines.append(f"source: table {src.get('path')} (sha256 {str(src.get('sha256'))[:16]}, {src.get('n_rows')} rows)")
    else:
        lines.append(f"source: archive scan of {src.get('root')} ({src.get('n_rows')} ObsID directories)"
                     if not src.get("note") else f"source: {src.get('root')}: {src.get('note')} ({src.get('n_rows')} ObsIDs)")
    dropped = {k: v for k, v in dict(src.get("dropped", {})).items() if v}
    if dropped:
        lines.append("dropped: " + ", ".join(f"{v} {k}" for k, v in dropped.items()))
    for t in manifest.meta.get("targets") or ():
        lines.append(f"target {t.get('name')}: {t.get('n_obsids')} ObsIDs within {t.get('radius_deg')} deg "
                     f"of RA {t.get('ra')} Dec {t.get('dec')}")
    n_obs, n_tasks = len(manifest.rows), manifest.n_tasks
    exposures = np.array([r.exposure_s for r in manifest.rows], dtype=float)
    known = np.isfinite(exposures)
    per_task = np.bincount([r.task for r in manifest.rows], minlength=n_tasks)
    lines.append(f"ObsIDs: {n_obs} in {n_tasks} tasks (obs_per_task {manifest.meta.get('obs_per_task')}; "
                 f"{per_task.min()}-{per_task.max()} per task, balanced by exposure)")
    total = f"total exposure: {exposures[known].sum() / 1e3:.1f} ks"
    lines.append(total + (f" ({int((~known).sum())} ObsIDs unknown)" if not known.all() else ""))
    times = np.array([r.time_mjd for r in manifest.rows], dtype=float)
    if np.isfinite(times).any():
        lines.append(f"time span: MJD {np.nanmin(times):.2f} to {np.nanmax(times):.2f}")
    loads = manifest.task_exposures()
    if n_tasks > 1 and min(loads) > 0:
        lines.append(f"task exposure: heaviest/lightest {max(loads) / min(loads):.3f}")
    if config.extract.backend != "heasoft":
        lines.append(f"time estimate: none for the {config.extract.backend} backend (the seed's 10-20 s per ObsID "
                     "is the HEASoft chain's; run benchmarks/ for measured figures)")
        return "\n".join(lines)
    width = workers or n_tasks
    counts = per_task * HEASOFT_S_PER_OBSID
    serial = n_obs * HEASOFT_S_PER_OBSID
    parallel = _makespan(list(counts), width)
    lines.append(f"serial HEASoft estimate: {n_obs} x {HEASOFT_S_PER_OBSID:g} s = {_hours(serial)} "
                 "(the seed's figure, not measured)")
    lines.append(f"parallel estimate at width {width}: {_hours(parallel)} (x{serial / parallel:.1f})")
    return "\n".join(lines)
