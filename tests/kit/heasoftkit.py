"""Helpers for the tests that run the heasoft extractor against the stand-in HEASoft tree.

Also run as a script by the concurrency tests (one ObsID per process, as every
executor runs its workers):

    python tests/kit/heasoftkit.py ARCHIVE_ROOT ROW_JSON BASE_DIR RUNNER GO_FILE [SHARED_PFILES]

extracts the manifest row ROW_JSON (`row_json`) with the workspace under
BASE_DIR: it writes BASE_DIR/ready once imported, starts when GO_FILE
exists, and writes BASE_DIR/result.json.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from where import REPO, STANDIN

if str(REPO) not in sys.path:  # when run as a script
    sys.path.insert(0, str(REPO))

from rxte_hpc.archive.local import LocalArchive  # noqa: E402
from rxte_hpc.core.config import config_from_mapping  # noqa: E402
from rxte_hpc.core.manifest import ManifestRow  # noqa: E402
from rxte_hpc.core.paths import RunPaths  # noqa: E402
from rxte_hpc.core.scratch import Workspace  # noqa: E402
from rxte_hpc.extract.base import ExtractContext  # noqa: E402
from rxte_hpc.extract.heasoft import HeasoftExtractor  # noqa: E402
from rxte_hpc.sim.simulate import SimArchive  # noqa: E402
ETACAR = REPO / "configs" / "etacar.yaml"
FILTER = "(ELV > 4) && (OFFSET < 0.1)"
TARGET = {"name": "eta car", "ra": 161.2647, "dec": -59.6844}


def standin_module():
    """The stand-in's PFILES module, for reading the .par files it wrote (it is not a package)."""
    name = "rxte_heasoft_standin"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, STANDIN / "lib" / "standin.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def rows(archive: SimArchive) -> list[ManifestRow]:
    return [
        ManifestRow(i, o.obsid, o.cycle, o.prnb, o.target_name, o.time_mjd, o.exposure_s, o.ra, o.dec, 0)
        for i, o in enumerate(archive.observations)
    ]


def good(archive: SimArchive) -> list[ManifestRow]:
    return [r for r in rows(archive) if r.obsid.text not in archive.broken]


def broken(archive: SimArchive, kind: str) -> ManifestRow:
    from rxte_hpc.sim.simulate import BROKEN_KINDS

    return next(r for r in rows(archive) if archive.broken.get(r.obsid.text) == BROKEN_KINDS[kind])


class SharedPfilesExtractor(HeasoftExtractor):
    """What the project must not do, for tests that must see it go wrong: one PFILES directory for everyone."""

    shared: Path

    def _pfiles(self, row: ManifestRow, workspace: Workspace) -> Path:
        self.shared.mkdir(parents=True, exist_ok=True)
        return self.shared


def extractor(archive_root: Path, tmp: Path, extract: dict | None = None, env: dict | None = None,
              run_dir: Path | None = None, shared_pfiles: Path | None = None) -> HeasoftExtractor:
    """A heasoft extractor on `archive_root` with HEADAS at the stand-in (its own environ, os.environ untouched)."""
    raw = {
        "run_dir": str(run_dir or tmp / "run"),
        "target": TARGET,
        "archive": {"root": str(archive_root)},
        "extract": {"backend": "heasoft", "chmin": 5, "chmax": 10, "filter": FILTER, **(extract or {})},
    }
    config = config_from_mapping(raw, tmp / "test.yaml")
    context = ExtractContext(config, RunPaths(config.run_dir), LocalArchive(Path(archive_root)))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RXTE_STANDIN")}
    environ.update({"HEADAS": str(STANDIN), **(env or {})})
    if shared_pfiles is None:
        return HeasoftExtractor(context, environ=environ)
    shared = SharedPfilesExtractor(context, environ=environ)
    shared.shared = shared_pfiles
    return shared


def workspace(base: Path) -> Workspace:
    ws = Workspace(root=base, pfiles=base / "pfiles", work=base / "w")
    ws.pfiles.mkdir(parents=True, exist_ok=True)
    ws.work.mkdir(parents=True, exist_ok=True)
    return ws


def par_values(pfiles: Path, task: str) -> dict[str, str]:
    return {p.name: p.value for p in standin_module().read_par(pfiles / f"{task}.par")}


def records(where: Path, kind: str | None = None) -> list[dict]:
    """What the stand-in's tasks (and fhelp, kind='fhelp') recorded under RXTE_STANDIN_RECORD, oldest first."""
    paths = sorted(where.glob("*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    out = [json.loads(p.read_text()) | {"kind": p.name.split("-", 1)[0]} for p in paths]
    if kind is None:
        return [r for r in out if r["kind"] != "fhelp"]
    return [r for r in out if r["kind"] == kind]


def user_pfiles(record: dict) -> str:
    return record["pfiles"].split(";", 1)[0]


def true_filter(archive_root: Path, row: ManifestRow) -> np.ndarray:
    """The ObsID's own filter-file rows (what pcaprepobsid must leave as FP_*.xfl)."""
    path = Path(archive_root) / str(row.obsid.archive_dir(row.cycle)) / "stdprod" / row.obsid.filter_file_name()
    with fits.open(io.BytesIO(gzip.decompress(path.read_bytes()))) as hdul:
        return np.asarray(hdul["XTE_MKF"].data["Time"])


def obs_window(archive_root: Path, row: ManifestRow) -> tuple[float, float]:
    with fits.open(Path(archive_root) / str(row.obsid.archive_dir(row.cycle)) / "FMI") as hdul:
        data = hdul["XTE_MI"].data
        return float(data["StartMET"][0]), float(data["StopMET"][0])


def own_filter_file(archive_root: Path, row: ManifestRow, work: Path) -> bool:
    xfl = sorted((work / "prep").glob("FP_*.xfl"))
    if len(xfl) != 1:
        return False
    with fits.open(xfl[0]) as hdul:
        return np.array_equal(np.asarray(hdul["XTE_MKF"].data["Time"]), true_filter(archive_root, row))


def standin_env(pfiles: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RXTE_STANDIN", "HEADAS"))}
    env.update(HEADAS=str(STANDIN), PFILES=f"{pfiles};{STANDIN / 'syspfiles'}", **extra)
    return env


def standin_run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(STANDIN / "bin" / args[0]), *args[1:]], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


def row_json(row: ManifestRow) -> str:
    return json.dumps([row.index, row.obsid.text, row.cycle, row.prnb, row.target_name, row.time_mjd,
                       row.exposure_s, row.ra, row.dec, row.task])


def _child(argv: list[str]) -> int:
    """Script mode: one ObsID in this process (see the module docstring)."""
    from rxte_hpc.core.errors import RxteError
    from rxte_hpc.core.obsid import ObsID

    archive_root, fields, base, runner, go = Path(argv[0]), json.loads(argv[1]), Path(argv[2]), argv[3], Path(argv[4])
    shared = Path(argv[5]) if len(argv) > 5 and argv[5] else None
    row = ManifestRow(fields[0], ObsID(fields[1]), *fields[2:])
    obsid = row.obsid.text
    hooks = {k: v for k, v in os.environ.items() if k.startswith("RXTE_STANDIN")}  # this child's stand-in hooks
    ex = extractor(archive_root, base, {"runner": runner}, env=hooks, shared_pfiles=shared)
    ws = workspace(base / "ws")
    (base / "ready").write_text("")
    deadline = time.monotonic() + 300
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    result: dict = {"obsid": obsid, "work": str(ws.work)}
    try:
        lc = ex.extract(row, ws, io.StringIO())[0]
        result.update(ok=True, n_rows=lc.n_rows, first=float(lc.time[0]), tmin=float(lc.time.min()),
                      tmax=float(lc.time.max()))
    except RxteError as exc:
        result.update(ok=False, error=str(exc))
    (base / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
