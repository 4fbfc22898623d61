"""pcaprepobsid and its products: the one place both the heasoft and native backends prepare an ObsID.

pcaprepobsid writes filter file, dead-time-corrected Standard-2 files and the
list files `FP_dtstd2.lis`/`FP_dtbkg2.lis` naming them, then a done file. This
module runs it (through `tools.TaskCaller`, so both backends get the same
checks), reads its list files one way, and keeps products atomically for
later native runs.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TextIO

from rxte_hpc.core.errors import DataError, NoDataError
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.scratch import Workspace, heasoft_env
from rxte_hpc.extract.base import ExtractContext
from rxte_hpc.extract.hsp_runner import task_calls
from rxte_hpc.extract.tools import TaskCaller, find_headas

#: Names pcaprepobsid writes into its output directory.
DONE_FILE = "pcaprepobsid_done.txt"
SOURCE_LIST = "FP_dtstd2.lis"
BACKGROUND_LIST = "FP_dtbkg2.lis"
#: pcaprepobsid's output directory inside a task's short working directory.
PREP_DIR = "prep"


def has_standard2(context: ExtractContext, row: ManifestRow) -> bool:
    """Whether the archive holds any Standard-2 file (pca/FS4a_*) for the row: without one there is nothing to prepare."""
    return any(name.startswith("FS4a_") for name in context.archive.listdir(row, "pca"))


def pcaprepobsid(context: ExtractContext, row: ManifestRow, call: TaskCaller) -> Path:
    """A fresh pcaprepobsid into `<cwd>/prep` (relative outdir: list entries stay short)."""
    prep = call.cwd / PREP_DIR
    if not has_standard2(context, row):
        raise NoDataError(f"{row.obsid}: no Standard-2 data (pca/FS4a_*) in the archive")
    params: list[tuple[str, object]] = [("indir", context.archive.obsid_dir(row)), ("outdir", PREP_DIR)]
    target = context.config.target
    if target.ra is not None and target.dec is not None:
        params += [("ra", repr(float(target.ra))), ("dec", repr(float(target.dec)))]
    call("pcaprepobsid", params, expect=[prep / DONE_FILE])
    return prep


def prepare_into(
    context: ExtractContext, row: ManifestRow, directory: Path, workspace: Workspace, tool_log: TextIO,
    environ: dict[str, str] | None = None,
) -> Path:
    """Prepare one ObsID into `directory` (for the native backend), exactly as the heasoft backend runs it.

    pcaprepobsid runs in the workspace (the ObsID's own new PFILES directory,
    short cwd, `extract.runner`) and the products are then published to
    `directory` atomically, list entries made absolute. HEADAS comes from
    `environ` (default: this process's environment).
    """
    env_base = dict(os.environ if environ is None else environ)
    headas = find_headas(env_base)
    work = workspace.work
    work.mkdir(parents=True, exist_ok=True)
    env = heasoft_env(workspace.obsid_pfiles(row.obsid.text), headas, base=env_base)
    with task_calls(context.config.extract.runner, headas, env, work, tool_log) as call:
        prep = pcaprepobsid(context, row, call)
    keep_prepared(prep, Path(directory), tool_log)
    if not (Path(directory) / DONE_FILE).is_file():
        raise DataError(f"pcaprepobsid left no {DONE_FILE} in {directory}")
    return Path(directory)


def read_list(list_path: Path, base: Path) -> list[Path]:
    """Entries of a pcaprepobsid list file, each found as written (relative to `base`) or by name beside the list.

    pcaprepobsid writes paths of wherever it ran (often a scratch directory
    since deleted), so an entry that does not exist as written is looked up by
    its basename in the list's own directory.
    """
    try:
        lines = list_path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{list_path}: cannot read list file ({exc.strerror or exc})", path=list_path) from exc
    out = []
    for line in lines:
        entry = line.strip()
        if not entry:
            continue
        path = Path(entry)
        if not path.is_absolute():
            path = base / path
        if not path.exists():
            path = list_path.parent / Path(entry).name
        out.append(path)
    return out


def listed_files(list_path: Path, base: Path) -> list[Path]:
    """A non-empty list file whose entries all exist (DataError otherwise)."""
    if not list_path.is_file():
        raise DataError(f"pcaprepobsid left no {list_path.name}", path=list_path)
    entries = read_list(list_path, base)
    if not entries:
        raise DataError(f"pcaprepobsid left an empty {list_path.name} (no prepared Standard-2 files)", path=list_path)
    missing = [str(p) for p in entries if not p.is_file()]
    if missing:
        raise DataError(f"{list_path.name} names missing file(s): {', '.join(missing[:3])}", path=list_path)
    return entries


def keep_prepared(prep: Path, kept: Path, tool_log: TextIO) -> None:
    """Copy fresh products to `kept` atomically: a temp dir beside it, then one rename.

    Another worker may have kept the same ObsID meanwhile (its rename won):
    then ours is discarded, since both came from the same inputs.
    """
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kept.name}.tmp.{socket.gethostname()}.", dir=kept.parent))
    try:
        copy_prepared(prep, tmp, relative_to=None, final=kept)
        try:
            os.rename(tmp, kept)
        except OSError:
            if (kept / DONE_FILE).is_file():
                tool_log.write(f"# {kept} was kept by another worker meanwhile; ours discarded\n")
                return
            # an unfinished directory (no done file) is never used: set it aside, publish ours
            stale = kept.with_name(f".{kept.name}.stale.{socket.gethostname()}.{os.getpid()}")
            os.rename(kept, stale)
            os.rename(tmp, kept)
            shutil.rmtree(stale, ignore_errors=True)
        tool_log.write(f"# kept prepared products in {kept}\n")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_prepared(src: Path, dst: Path, relative_to: str | None, final: Path | None = None) -> None:
    """Copy pcaprepobsid products, rewriting list entries that point into `src`.

    Entries become `<relative_to>/<name>` (for tasks running in the work dir) or
    `<final>/<name>` (absolute, for a kept copy read from anywhere); entries
    outside the products (raw archive files) are left as they are.
    """
    dst.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in src.iterdir() if p.is_file()}
    for path in src.iterdir():
        if not path.is_file():
            continue
        if path.suffix == ".lis":
            lines = []
            for entry in (line.strip() for line in path.read_text().splitlines() if line.strip()):
                base = Path(entry).name
                if base in names:
                    entry = f"{relative_to}/{base}" if relative_to is not None else str((final or dst) / base)
                lines.append(entry + "\n")
            (dst / path.name).write_text("".join(lines))
        else:
            shutil.copy2(path, dst / path.name)
