"""The S3 server of the archive tests: moto's, in a child process for the session, holding a simulated archive."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

from s3server import HEASARC_BUCKET, HEASARC_PREFIX, MotoServer, fill_bucket, moto_server, tree_files
from rxte_hpc.sim.simulate import SimArchive


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's standalone S3 server on 127.0.0.1 (a port the OS picked), for the whole session."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3sim(moto: MotoServer, simulated: Callable[..., SimArchive]) -> SimArchive:
    """Six good and three broken simulated ObsIDs, also uploaded to s3://nasa-heasarc/xte/data/archive/ (public)."""
    sim = simulated(6, 7, True)
    fill_bucket(moto, HEASARC_BUCKET, tree_files(sim.root, HEASARC_PREFIX))
    return sim
