"""Benchmark a campaign of 100,000 ObsIDs over several targets: plan, run (stdprod), status, rerun --dry-run.

Each stage runs as its own process (the CLI, as a user would run it) and is
printed beside a baseline measured in the same run:
- the CLI's own start-up (`rxte-hpc --version`): what no command can beat;
- reading the files the stage reads: the table for `plan`, every stdprod
  input for `run`, every status record for `status` (one open per record:
  what `status` cost before the index).
Opens are counted with an audit hook (`open` events under the run directory),
peak memory is each process's ru_maxrss.

The archive holds only what the stdprod backend reads (one standard-product
light curve per ObsID, copied from a simulated one: ~5 KB each). `run` is a
real local run of the first `--run-n` ObsIDs; with `--run-n` below `--n` the
other records and light curves are copies of the real run's outputs (their
obsid and task rewritten), and the output says so. Then 1% of the results
(record and light curve) are deleted and `status` / `rerun --dry-run` are
measured again: the first call after the loss re-reads the touched shards.

    python benchmarks/bench_scale.py [--n 100000] [--run-n 5000] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGETS = [
    {"name": "eta car", "ra": 161.2647, "dec": -59.6844, "radius_deg": 0.1},
    {"name": "gx 339-4", "ra": 255.7057, "dec": -48.7897, "radius_deg": 0.1},
    {"name": "ss cyg", "ra": 325.6784, "dec": 43.5862, "radius_deg": 0.1},
    {"name": "terzan 5", "ra": 267.0208, "dec": -24.7792, "radius_deg": 0.1},
]

_COUNTING = r"""
import os, resource, sys, time
run_dir = sys.argv[1]
opens = [0]
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0]) if not isinstance(args[0], int) else ""
        if path.startswith(run_dir):
            opens[0] += 1
sys.addaudithook(hook)
t0 = time.perf_counter()
from rxte_hpc.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(f"@@ {code} {wall:.4f} {opens[0]} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime:.4f}", file=sys.stderr)
"""

_CORE_STATUS = r"""
import os, resource, sys, time
t0 = time.perf_counter()
from rxte_hpc.core.config import load_config
from rxte_hpc.core.manifest import read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.status import RunSummary
from rxte_hpc.core.statusreport import StatusReport, format_status
config = load_config(sys.argv[1])
paths = RunPaths(config.run_dir)
manifest = read_manifest(paths.manifest)
summary = RunSummary.collect(manifest, paths, config.hash())
text = format_status(StatusReport.build(summary, paths.root, manifest.n_tasks))
ru = resource.getrusage(resource.RUSAGE_SELF)
print(f"@@ {len(text.splitlines())} {time.perf_counter() - t0:.4f} {summary.opens} {ru.ru_utime + ru.ru_stime:.4f}",
      file=sys.stderr)
"""

_READ_FILES = r"""
import os, sys, time
t0 = time.perf_counter()
n = size = 0
for line in open(sys.argv[1]):
    with open(line.rstrip("\n"), "rb") as fh:
        size += len(fh.read())
    n += 1
print(f"@@ {n} {time.perf_counter() - t0:.4f} {size}", file=sys.stderr)
"""

_READ_TABLE = r"""
import sys, time
t0 = time.perf_counter()
from astropy.table import Table
t = Table.read(sys.argv[1], format="ascii.ecsv")
print(f"@@ {len(t)} {time.perf_counter() - t0:.4f} 0", file=sys.stderr)
"""

_RUN_SUBSET = r"""
import resource, sys, time, dataclasses
from pathlib import Path
from rxte_hpc.core.config import load_config
from rxte_hpc.core.manifest import Manifest, read_manifest
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.run.local import run_local
config = load_config(sys.argv[1])
n_tasks, workers = int(sys.argv[2]), int(sys.argv[3])
full = read_manifest(RunPaths(config.run_dir).manifest)
rows = tuple(r for r in full.rows if r.task < n_tasks)
sub = Manifest(rows, {**full.meta, "n_tasks": n_tasks})
t0 = time.perf_counter()
counts = run_local(config, sub, workers=workers)
wall = time.perf_counter() - t0
import json
print(f"@@ {sum(counts.values())} {wall:.4f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} "
      f"{json.dumps(counts, separators=(',', ':'))}", file=sys.stderr)
"""


def _python(code: str, *args: str, quiet: bool = True) -> list[str]:
    """Run a snippet in a fresh interpreter; the fields of its '@@' line."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("@@ ")), None)
    if line is None:
        raise SystemExit(f"benchmark step failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return line[3:].split(" ", 4 if code is _COUNTING else 3)


def cli(run_dir: Path, *argv: str) -> tuple[int, float, int, int, float]:
    """(exit code, wall s, opens under run_dir, peak RSS MB, CPU s) of one CLI command in a fresh process.

    Wall and CPU are measured inside the process from before the CLI's import: the CPU time is the
    figure to trust on a shared machine, where the wall time also counts other users' load.
    """
    code, wall, opens, rss, cpu = _python(_COUNTING, str(run_dir), *argv)
    return int(code), float(wall), int(opens), int(rss) // 1024, float(cpu)


def startup() -> tuple[float, float]:
    """(wall, CPU) of `rxte-hpc --version` measured the same way as `cli`."""
    _, wall, _, _, cpu = cli(Path("/nonexistent"), "--version")
    return wall, cpu


def show(label: str, result: tuple[int, float, int, int, float]) -> None:
    code, wall, opens, rss, cpu = result
    print(f"{label:34s} {wall:5.2f} s wall, {cpu:5.2f} s CPU, {opens:6d} opens under run_dir, "
          f"exit {code}, peak {rss} MB")


def stages(run_dir: Path, cfg: Path, root: Path, seed: int, fresh: bool) -> None:
    """status and rerun --dry-run on a finished run, then after losing 1% of the results."""
    from rxte_hpc.core.paths import RunPaths

    base = min(startup() for _ in range(3))
    print(f"baseline: CLI start-up (rxte-hpc --version) {base[0]:.2f} s wall, {base[1]:.2f} s CPU")
    records = sorted(RunPaths(run_dir).status_files())
    _, rec_wall = read_files(records, root)
    print(f"baseline: reading all {len(records)} records (one open each) {rec_wall:.2f} s")
    first = "status (first: builds the index)" if fresh else "status"
    for label in (first, "status (warm)", "status (warm)"):
        show(label, cli(run_dir, "status", str(cfg)))
    lines, wall, opens, cpu = _python(_CORE_STATUS, str(cfg))
    print(f"{'core status (collect+report+format)':34s} {float(wall):5.2f} s wall, {float(cpu):5.2f} s CPU, "
          f"{int(opens):6d} record opens, {lines} lines of output")
    show("rerun --dry-run (warm)", cli(run_dir, "rerun", str(cfg), "--dry-run"))
    lost = lose(cfg, 0.01, seed)
    time.sleep(3)
    print(f"lost 1% of the results: {lost} records and light curves deleted")
    for label in ("status (first after the loss)", "status (warm)", "status (warm)"):
        show(label, cli(run_dir, "status", str(cfg)))
    for label in ("rerun --dry-run (warm)", "rerun --dry-run (warm)"):
        show(label, cli(run_dir, "rerun", str(cfg), "--dry-run"))
    widest = max(len(os.listdir(d)) for d, _, _ in os.walk(run_dir))
    print(f"largest folder under run_dir: {widest} entries")


def read_files(paths: list[Path], scratch: Path) -> tuple[int, float]:
    listing = scratch / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    n, wall, _ = _python(_READ_FILES, str(listing))[:3]
    return int(n), float(wall)


def make_campaign(root: Path, n: int, seed: int) -> Path:
    """The source table (n ObsIDs near 4 targets, 1% in no cone), an archive of stdprod files, the config."""
    from astropy.table import Table

    from rxte_hpc.sim.simulate import simulate_archive

    rng = random.Random(seed)
    template_dir = root / "templates"
    sim = simulate_archive(template_dir, n_obs=6, seed=seed)
    templates = [p.read_bytes() for o in sim.observations
                 if (p := template_dir / str(o.obsid.archive_dir(o.cycle)) / "stdprod" / o.obsid.stdprod_lc_name("a")).is_file()]
    rows = []
    for i in range(n):
        prnb = 10000 + i // 1000  # 1,000 ObsIDs per proposal: a monitoring campaign's size
        obsid = f"{prnb:05d}-{i // 100 % 10:02d}-{i % 100:02d}-00"
        t = TARGETS[i % len(TARGETS)]
        far = rng.random() < 0.01
        ra = t["ra"] + (5.0 if far else rng.uniform(-0.03, 0.03))
        rows.append((t["name"].upper().replace(" ", "_"), 1 + i // 8000, prnb, obsid, 50100.0 + i * 0.05,
                     round(rng.uniform(500, 3000), 1), ra, t["dec"] + rng.uniform(-0.03, 0.03)))
    table = Table(rows=rows, names=["target_name", "cycle", "prnb", "obsid", "time", "exposure", "ra", "dec"])
    table.write(root / "obsids.ecsv", format="ascii.ecsv", overwrite=True)
    archive = root / "archive"
    for r in rows:
        d = archive / f"AO{r[1]}" / f"P{r[2]:05d}" / r[3] / "stdprod"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"xp{r[3].replace('-', '')}_n2a.lc.gz").write_bytes(templates[hash(r[3]) % len(templates)])
    config = {
        "run_dir": str(root / "run"),
        "targets": TARGETS,
        "source": {"kind": "table", "path": str(root / "obsids.ecsv")},
        "archive": {"root": str(archive)},
        "extract": {"backend": "stdprod"},
        "scratch": {"root": str(root / "scratch")},
        "tasks": {"obs_per_task": 10},
        "slurm": {"setup": []},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def clone_results(cfg_path: Path, n_tasks_run: int) -> int:
    """Records and light curves of the ObsIDs the real run did not do: copies of real ones, obsid/task rewritten."""
    from rxte_hpc.core.config import load_config
    from rxte_hpc.core.manifest import read_manifest
    from rxte_hpc.core.paths import RunPaths

    config = load_config(cfg_path)
    paths = RunPaths(config.run_dir)
    manifest = read_manifest(paths.manifest)
    real = next(r for r in manifest.rows if r.task < n_tasks_run)
    record = json.loads(paths.status(real.obsid).read_text())
    lc_bytes = paths.lc(real.obsid).read_bytes()
    n = 0
    for row in manifest.rows:
        if row.task < n_tasks_run:
            continue
        rec = {**record, "obsid": row.obsid.text, "task": row.task,
               "output": str(paths.lc(row.obsid).relative_to(paths.root))}
        paths.lc(row.obsid).write_bytes(lc_bytes)
        paths.status(row.obsid).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        n += 1
    return n


def lose(cfg_path: Path, fraction: float, seed: int) -> int:
    from rxte_hpc.core.config import load_config
    from rxte_hpc.core.manifest import read_manifest
    from rxte_hpc.core.paths import RunPaths

    config = load_config(cfg_path)
    paths = RunPaths(config.run_dir)
    rows = [r for r in read_manifest(paths.manifest).rows if paths.status(r.obsid).is_file()]
    victims = random.Random(seed).sample(rows, int(len(rows) * fraction))
    for row in victims:
        paths.status(row.obsid).unlink()
        paths.lc(row.obsid).unlink(missing_ok=True)
    return len(victims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--run-n", type=int, default=5_000, help="ObsIDs the real run extracts (the rest are copies)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="build in (and keep) this directory")
    ap.add_argument("--reuse", action="store_true", help="with --keep: only the status/rerun stages, on the kept run")
    args = ap.parse_args()
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep DIR")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / "run"
    try:
        t0 = time.perf_counter()
        if args.reuse:
            cfg = root / "config.yaml"
        else:
            cfg = make_campaign(root, args.n, args.seed)
            print(f"campaign: {args.n} ObsIDs over {len(TARGETS)} targets, archive of stdprod files "
                  f"({time.perf_counter() - t0:.0f} s to write) under {root}")
        if args.reuse:
            stages(run_dir, cfg, root, int(time.time()), fresh=False)
            return
        code, wall, opens, rss, cpu = cli(run_dir, "plan", str(cfg))
        _, table_wall, _ = _python(_READ_TABLE, str(root / "obsids.ecsv"))[:3]
        print(f"plan:     {wall:5.2f} s wall, {cpu:5.2f} s CPU (exit {code}, peak {rss} MB); baseline: astropy "
              f"reads the table {float(table_wall):.2f} s")

        from rxte_hpc.core.manifest import read_manifest
        from rxte_hpc.core.paths import RunPaths

        manifest = read_manifest(RunPaths(run_dir).manifest)
        per_target: dict[str, int] = {}
        for r in manifest.rows:
            per_target[r.target] = per_target.get(r.target, 0) + 1
        print(f"          {len(manifest.rows)} ObsIDs in {manifest.n_tasks} tasks; per target {per_target}; "
              f"dropped {manifest.meta['source']['dropped']}")

        n_tasks_run = min(manifest.n_tasks, max(1, -(-args.run_n // 10)))
        n_run, run_wall, run_rss, counts = _python(_RUN_SUBSET, str(cfg), str(n_tasks_run), str(args.workers))
        ran = [r for r in manifest.rows if r.task < n_tasks_run]
        inputs = [root / "archive" / str(r.obsid.archive_dir(r.cycle)) / "stdprod" / r.obsid.stdprod_lc_name("a")
                  for r in ran]
        _, read_wall = read_files(inputs, root)
        print(f"run:      {float(run_wall):5.2f} s for {n_run} ObsIDs ({float(run_wall) / int(n_run) * 1e3:.1f} ms each "
              f"on {args.workers} workers; {counts}; peak of the parent {int(run_rss) // 1024} MB); "
              f"baseline: reading their inputs {read_wall:.2f} s")
        if n_tasks_run < manifest.n_tasks:
            n_cloned = clone_results(cfg, n_tasks_run)
            print(f"          the other {n_cloned} records and light curves are copies of the real run's outputs")
        time.sleep(3)  # a finished run: every shard quiet for longer than the index's grace period
        stages(run_dir, cfg, root, args.seed, fresh=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
