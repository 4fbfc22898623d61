"""What a Slurm array costs over a local run: wall time of `submit` -> gather done vs `rxte-hpc run`.

Both runs use one simulated archive (demo-like: stdprod or native backend,
whichever is available) and the same tasks, on this machine; the Slurm run goes
through a real slurmctld/slurmd (start it first: `bash scripts/start-slurm.sh`).
The difference is the scheduler's share: sbatch, element start-up (a fresh
Python per element), dependency release of the gather job.

    python benchmarks/bench_slurm_overhead.py [--n-obs 64] [--obs-per-task 8]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _rxte(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rxte_hpc", *args], capture_output=True, text=True)


def _config(base: Path, name: str, archive: Path, backend: str, obs_per_task: int) -> Path:
    extract: dict = {"backend": backend}
    if backend == "native":
        extract.update(chmin=5, chmax=10, prepared=str(archive / "prepared"))
    raw = {
        "run_dir": str(base / name),
        "archive": {"root": str(archive)},
        "source": {"kind": "archive"},
        "extract": extract,
        "scratch": {"root": str(base / "scratch")},
        "tasks": {"obs_per_task": obs_per_task},
        "slurm": {"time": "00:10:00", "mem": "500M", "throttle": 64, "setup": [], "signal_s": 30},
    }
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _backend(base: Path, archive: Path, obs_per_task: int) -> str:
    """native when it runs here (it needs its module and prepared products), else stdprod."""
    probe = _config(base, "probe", archive, "native", obs_per_task)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from rxte_hpc.extract import check_backend;"
         " from rxte_hpc.core.config import load_config; check_backend(load_config(sys.argv[1]))", str(probe)],
        capture_output=True,
        text=True,
    )
    return "native" if proc.returncode == 0 else "stdprod"


def _wait_for(job_ids: list[str], timeout: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs {job_ids} still queued after {timeout} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-obs", type=int, default=64)
    parser.add_argument("--obs-per-task", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rxte-bench-") as tmp:
        base = Path(tmp)
        archive = base / "archive"
        proc = _rxte("simulate", str(archive), "--n-obs", str(args.n_obs), "--seed", "1")
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        backend = _backend(base, archive, args.obs_per_task)

        local_cfg = _config(base, "local", archive, backend, args.obs_per_task)
        slurm_cfg = _config(base, "slurm", archive, backend, args.obs_per_task)
        # plan both first, so neither timing includes planning
        for cfg in (local_cfg, slurm_cfg):
            proc = _rxte("plan", str(cfg))
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)

        t0 = time.monotonic()
        proc = _rxte("run", str(local_cfg))
        local_s = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"rxte-hpc run failed:\n{proc.stderr}")

        t0 = time.monotonic()
        proc = _rxte("submit", str(slurm_cfg))
        if proc.returncode != 0:
            raise SystemExit(f"rxte-hpc submit failed (is Slurm up? bash scripts/start-slurm.sh):\n{proc.stderr}")
        jobs = json.loads((base / "slurm" / "slurm" / "jobs.json").read_text())["submissions"]
        _wait_for([j["job_id"] for j in jobs])
        slurm_s = time.monotonic() - t0
        if not (base / "slurm" / "merged.lc").is_file():
            raise SystemExit("the gather job did not write merged.lc: see " + str(base / "slurm" / "slurm" / "logs"))
        n_arrays = sum(1 for j in jobs if j["kind"] == "array")

    n_tasks = -(-args.n_obs // args.obs_per_task)
    print(f"{args.n_obs} ObsIDs, {n_tasks} tasks, backend {backend}, {n_arrays} array(s) + gather")
    print(f"rxte-hpc run (local pool):        {local_s:7.1f} s")
    print(f"rxte-hpc submit -> gather done:   {slurm_s:7.1f} s")
    print(f"ratio slurm/local:                {slurm_s / local_s:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
