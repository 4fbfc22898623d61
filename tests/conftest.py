"""Shared fixtures: every test folder (one per package layer) sees these; helper kits live in tests/kit/."""
from __future__ import annotations

import os
from typing import Callable

import pytest

from rxte_hpc.sim.simulate import SimArchive, simulate_archive

from slurmkit import MAX_ARRAY, max_array_now, start_slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    """A live Slurm with MaxArraySize=5; the previous MaxArraySize is restored afterwards."""
    in_ci = os.environ.get("CI", "").lower() == "true"
    why = None
    if os.geteuid() != 0:
        why = "scripts/start-slurm.sh needs root"
    else:
        before = max_array_now()
        proc = start_slurm(str(MAX_ARRAY))
        if proc.returncode != 0:
            why = f"scripts/start-slurm.sh failed: {proc.stderr.strip().splitlines()[-1:]}"
    if why is not None:
        if in_ci:
            pytest.fail(f"Slurm cannot be started under CI: {why}")
        pytest.skip(why)
    yield MAX_ARRAY
    if before is not None and before != str(MAX_ARRAY):
        start_slurm(before)


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SimArchive]:
    """Simulated archives shared read-only by the whole session, one per (n_obs, seed, with_broken).

    A test that changes an archive's files copies them first (or simulates its own).
    """
    made: dict[tuple[int, int, bool], SimArchive] = {}

    def get(n_obs: int, seed: int, with_broken: bool = False) -> SimArchive:
        key = (n_obs, seed, with_broken)
        if key not in made:
            root = tmp_path_factory.mktemp(f"sim-{n_obs}-{seed}{'-broken' if with_broken else ''}")
            made[key] = simulate_archive(root, n_obs=n_obs, seed=seed, with_broken=with_broken)
        return made[key]

    return get
