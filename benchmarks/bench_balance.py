"""How evenly the planner's task assignment spreads exposure: the Eta Car-like campaign, 8 ObsIDs per task.

Array elements that finish together waste no allocation; the figure of merit is
the heaviest/lightest task exposure ratio (target <= 1.10). Two naive baselines
from the same run: round-robin in time order, and consecutive blocks of 8.
Exposure is the proxy for extraction time (HEASoft time grows with data volume).

    python benchmarks/bench_balance.py [--n-obs 1370] [--obs-per-task 8] [--seed 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from rxte_hpc.core.manifest import build_manifest
from rxte_hpc.sim.simulate import campaign


def spread(loads: np.ndarray) -> str:
    return (f"max/min {loads.max() / loads.min():6.3f}   max {loads.max() / 1e3:6.1f} ks   "
            f"min {loads.min() / 1e3:6.1f} ks   std/mean {loads.std() / loads.mean():6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-obs", type=int, default=1370)
    parser.add_argument("--obs-per-task", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    observations = campaign(args.n_obs, args.seed)  # already the planner's Observations
    t0 = time.perf_counter()
    manifest = build_manifest(observations, args.obs_per_task, {})
    elapsed = time.perf_counter() - t0
    n_tasks = manifest.n_tasks
    exposure = np.array([r.exposure_s for r in manifest.rows])
    index = np.arange(len(exposure))
    lpt = np.asarray(manifest.task_exposures())
    round_robin = np.bincount(index % n_tasks, weights=exposure, minlength=n_tasks)
    blocks = np.bincount(index // args.obs_per_task, weights=exposure, minlength=n_tasks)
    counts = np.bincount([r.task for r in manifest.rows], minlength=n_tasks)

    print(f"{len(exposure)} ObsIDs, {exposure.sum() / 1e6:.2f} Ms, exposure {exposure.min():.0f}-{exposure.max():.0f} s, "
          f"{n_tasks} tasks (obs_per_task {args.obs_per_task}, seed {args.seed})")
    print(f"  planner (LPT)      {spread(lpt)}   ObsIDs/task {counts.min()}-{counts.max()}   built in {elapsed * 1e3:.0f} ms")
    print(f"  round-robin        {spread(round_robin)}")
    print(f"  blocks of {args.obs_per_task:<3d}     {spread(blocks)}")
    # No assignment can beat this: the biggest ObsID sits in some task, and the
    # lightest task holds at most an even share of everything else.
    bound = max(exposure.max(), exposure.sum() / n_tasks) / ((exposure.sum() - exposure.max()) / (n_tasks - 1))
    shared = lpt[[counts[t] > 1 for t in range(n_tasks)]]
    print(f"  lower bound on max/min for any assignment: {bound:.3f} "
          f"(largest ObsID {exposure.max() / 1e3:.1f} ks vs mean task {exposure.sum() / n_tasks / 1e3:.1f} ks)")
    print(f"  planner, tasks of more than one ObsID: max/min {shared.max() / shared.min():.3f}")
    ok = lpt.max() / lpt.min() <= max(1.10, 1.05 * bound)
    print(f"  target max/min <= max(1.10, 1.05 x bound): {'met' if ok else 'NOT met'}")
    for width in (4, 16, 32):
        m = build_manifest(observations, width, {})
        loads = np.asarray(m.task_exposures())
        print(f"  obs_per_task {width:<3d} {m.n_tasks:4d} tasks   {spread(loads)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
