"""Real MPI for the tests: pip's MPICH `mpiexec` (beside the interpreter, else on PATH) and how to start ranks.

Under CI=true a missing mpiexec is an error, never a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from where import REPO


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
if MPIEXEC is None and os.environ.get("CI", "").lower() == "true":
    raise RuntimeError("CI=true but no mpiexec next to python or on PATH: `pip install mpi4py mpich`")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpi4py mpich)")


def mpi_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def mpi_work(cfg: Path, *args: str, n: int = 2, launcher: tuple[str, ...] = (), timeout: float = 40,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [MPIEXEC, *launcher, "-n", str(n), sys.executable, "-m", "rxte_hpc", "work", str(cfg), "--mpi", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or mpi_env(), cwd=cfg.parent)
