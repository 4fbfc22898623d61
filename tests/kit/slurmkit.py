"""The live Slurm the tests use: started by scripts/start-slurm.sh, watched by polling squeue.

`sbatch --wait` polls after 2, 10, 42 s; squeue every 0.2 s and `scontrol -o show job` are what the
tests judge jobs by (no slurmdbd here, so never sacct).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from where import REPO

#: MaxArraySize of the live tests' Slurm: small, so that a 12-task run is cut into three arrays.
MAX_ARRAY = 5


def slurm_cmd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def max_array_now() -> str | None:
    if shutil.which("scontrol") is None:
        return None
    proc = slurm_cmd("scontrol", "show", "config")
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return m.group(1) if proc.returncode == 0 and m else None


def start_slurm(max_array: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_CI_MAX_ARRAY": max_array}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "start-slurm.sh")], capture_output=True, text=True, timeout=600, env=env
    )


def wait_jobs(ids: list[str], timeout: float = 120.0) -> None:
    """Poll squeue every 0.2 s until none of these jobs (or their elements) is queued."""
    deadline = time.monotonic() + timeout
    while True:
        proc = slurm_cmd("squeue", "-h", "-j", ",".join(ids))
        if not proc.stdout.strip():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"jobs {ids} still queued after {timeout} s:\n{proc.stdout}")
        time.sleep(0.2)


def job_states(job_id: str) -> dict[str, tuple[str, str]]:
    """{element or job id: (JobState, ExitCode)} from `scontrol -o show job`."""
    out = {}
    for line in slurm_cmd("scontrol", "-o", "show", "job", job_id).stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        name = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if "ArrayTaskId" in f else f["JobId"]
        out[name] = (f["JobState"], f["ExitCode"])
    return out
