"""The seed's HEASoft chain, unchanged in science, made safe to run many times at once.

Per ObsID: `pcaprepobsid` (once), `maketime` with the filter expression
(once), then one `pcaextlc2` per band (RXTE-PCA.md Q2-Q4). Every call is a
subprocess with an explicit environment from `scratch.heasoft_env` (private
PFILES, no prompting), stdin from /dev/null, every parameter as its own argv
item (never a shell), and the short scratch working directory as cwd with
relative file names, so long run-directory paths never reach the tools
("COLUMNS parameter may be too long", LESSONS.md).

HEASoft's Perl tasks exit 0 when they fail and only print `Task <name> <ver>
terminating with status -1` (RXTE-PCA.md Q8), so success here means: exit
status 0, no such line with a non-zero status, and the expected outputs exist
with rows.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, TextIO

import numpy as np
from astropy.io import fits

from rxte_hpc.core.config import BandConfig
from rxte_hpc.core.errors import DataError, NoDataError, SiteError, UsageError
from rxte_hpc.fits.lcfile import LightCurve, read_lightcurves, read_timezero, read_tstart
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.scratch import Workspace, heasoft_env
from rxte_hpc.extract.base import ExtractContext, Extractor

log = logging.getLogger(__name__)

TASKS = ("pcaprepobsid", "maketime", "pcaextlc2")
#: Seconds one task may take before it counts as hung (a site problem, retried by `rerun`).
TIMEOUTS_S = {"pcaprepobsid": 3600.0, "maketime": 600.0, "pcaextlc2": 1800.0}
#: Names inside the per-ObsID working directory; short and relative on purpose.
PREP_DIR = "prep"
GTI_FILE = "gti.fits"
DONE_FILE = "pcaprepobsid_done.txt"
SRC_LIST = "FP_dtstd2.lis"
BKG_LIST = "FP_dtbkg2.lis"
_STATUS_RE = re.compile(r"terminating with status\s+(-?\d+)", re.IGNORECASE)
_ERROR_RE = re.compile(r"error|unable|cannot|could not|failed", re.IGNORECASE)
#: Keywords of pcaextlc2's output worth carrying into the published light curve.
_KEEP_KEYWORDS = ("OBJECT", "BACKAPP", "DEADAPP", "MINCHAN", "MAXCHAN")


@dataclass(frozen=True)
class ToolRun:
    """What one task call printed and returned, kept for the ObsID's log and error messages."""

    task: str
    argv: tuple[str, ...]
    returncode: int
    output: str

    def failure(self) -> str | None:
        """Why the call failed (status line or last error line), or None when it looks successful."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        bad_status = [line for line in lines if (m := _STATUS_RE.search(line)) and int(m.group(1)) != 0]
        if self.returncode == 0 and not bad_status:
            return None
        errors = [line for line in lines if _ERROR_RE.search(line) and not _STATUS_RE.search(line)]
        parts = [errors[-1]] if errors else []
        parts += bad_status[-1:] or [f"exit status {self.returncode}"]
        return "; ".join(parts)


def _param(name: str, value: object) -> str:
    """One `par=value` argv item; values go to the task verbatim, so refuse what would change its meaning."""
    text = "yes" if value is True else "no" if value is False else str(value)
    if "\n" in text or "\0" in text or "\r" in text:
        raise UsageError(f"HEASoft parameter {name}={text!r} contains a control character")
    return f"{name}={text}"


def run_tool(
    task: str,
    params: Sequence[tuple[str, object]],
    *,
    headas: Path,
    env: Mapping[str, str],
    cwd: Path,
    tool_log: TextIO,
    timeout: float | None = None,
) -> ToolRun:
    """Run one HEASoft task as `$HEADAS/bin/<task> par=value ...` and return what happened.

    heasoftpy is deliberately not used even where it imports: its HSPTask reads
    PFILES from, and writes HEADASNOQUERY/HEADASPROMPT into, the process-wide
    os.environ, and its local_pfiles_context swaps os.environ too (RXTE-PCA.md
    Q8), so under threads one ObsID's call can run with another's PFILES. Its
    task call would also end in the same executable, whose exit status is just
    as unreliable. The plain executable with an explicit env is the one route;
    every caller shares the checks in `ToolRun.failure`.

    The task gets its own session so that on a timeout or a signal the whole
    process tree (Perl task, ftools it started) is killed, not only the top.
    """
    argv = [str(Path(headas) / "bin" / task), *(_param(k, v) for k, v in params)]
    tool_log.write(f"$ {' '.join(argv)}\n")
    tool_log.flush()
    limit = TIMEOUTS_S.get(task, 1800.0) if timeout is None else timeout
    log.debug("running %s in %s (PFILES=%s)", task, cwd, env.get("PFILES"))
    try:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise DataError(f"{task}: cannot start {argv[0]} ({exc.strerror or exc})") from exc
    try:
        raw, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        raw, _ = proc.communicate()
        tool_log.write(raw.decode("iso-8859-15", errors="replace"))
        raise SiteError(f"{task} did not finish within {limit:g} s (killed)") from None
    except BaseException:  # Interrupted by a signal, KeyboardInterrupt: leave no orphan behind
        _kill_tree(proc)
        proc.wait()
        raise
    output = raw.decode("iso-8859-15", errors="replace")
    tool_log.write(output)
    if output and not output.endswith("\n"):
        tool_log.write("\n")
    tool_log.write(f"# {task}: exit status {proc.returncode}\n")
    tool_log.flush()
    return ToolRun(task, tuple(argv), proc.returncode, output)


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_list(path: Path, cwd: Path) -> list[Path]:
    """Entries of a pcaprepobsid list file, resolved against the directory the tasks run in."""
    entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [p if p.is_absolute() else cwd / p for p in map(Path, entries)]


def _gti_rows(path: Path) -> int:
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul[1:]:
                if isinstance(hdu, fits.BinTableHDU) and {"START", "STOP"} <= {n.upper() for n in hdu.columns.names}:
                    return 0 if hdu.data is None else len(hdu.data)
    except (OSError, ValueError) as exc:
        raise DataError(f"maketime output {path.name} is not a readable GTI file ({exc})") from exc
    raise DataError(f"maketime output {path.name} has no START/STOP table")


class HeasoftExtractor(Extractor):
    """pcaprepobsid -> maketime -> pcaextlc2 per ObsID, each call isolated (see module docstring).

    `environ` is the environment the calls start from (default: this process's,
    read once); tests pass one with HEADAS pointing at the stand-in instead of
    changing os.environ, which threads share.
    """

    name = "heasoft"

    def __init__(self, context: ExtractContext, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(context)
        self._environ = dict(os.environ if environ is None else environ)

    # -- availability -----------------------------------------------------------
    def headas(self) -> Path:
        """$HEADAS with the three tasks in bin/; UsageError naming what is missing."""
        value = self._environ.get("HEADAS", "").strip()
        if not value:
            raise UsageError(
                "extract.backend heasoft needs HEASoft: HEADAS is not set "
                "(initialise HEASoft, e.g. `module load heasoft` or source $HEADAS/headas-init.sh)"
            )
        headas = Path(value)
        missing = [t for t in TASKS if not os.access(headas / "bin" / t, os.X_OK)]
        if missing:
            raise UsageError(
                f"extract.backend heasoft: HEADAS={value} has no executable "
                + ", ".join(f"$HEADAS/bin/{t}" for t in missing)
                + " (is HEADAS the HEASoft installation with the XTE ftools?)"
            )
        if not (headas / "syspfiles").is_dir():
            raise UsageError(f"extract.backend heasoft: HEADAS={value} has no syspfiles/ directory of parameter files")
        return headas

    def check_available(self) -> None:
        """HEASoft present, and the settings the tasks would reject valid, before any task starts."""
        from rxte_hpc.extract.filterexpr import parse_filter
        from rxte_hpc.extract.std2 import parse_layerlist, parse_pculist

        self.headas()
        ex = self.context.config.extract
        parse_pculist(ex.pculist)
        parse_layerlist(ex.layerlist)
        parse_filter(ex.filter)

    # -- extraction ---------------------------------------------------------------
    def extract(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> list[LightCurve]:
        headas = self.headas()
        config = self.context.config
        work = workspace.work
        work.mkdir(parents=True, exist_ok=True)
        env = heasoft_env(workspace, headas, base=self._environ)
        run = _Runner(headas, env, work, tool_log)

        prep = self._prepare(row, run)
        xfl = sorted(prep.glob("FP_*.xfl"))
        if len(xfl) != 1:
            raise DataError(f"pcaprepobsid left {len(xfl)} FP_*.xfl filter files in its output, expected one")
        src = self._list(prep / SRC_LIST, work)
        self._list(prep / BKG_LIST, work)

        expr = config.extract.filter
        run(
            "maketime",
            [("infile", f"{PREP_DIR}/{xfl[0].name}"), ("outfile", GTI_FILE), ("expr", expr),
             ("name", "NAME"), ("value", "VALUE"), ("time", "TIME"), ("compact", False), ("clobber", True)],
            expect=[work / GTI_FILE],
        )
        if _gti_rows(work / GTI_FILE) == 0:
            raise NoDataError(f"every filter row fails {expr!r}: maketime made an empty GTI")

        curves = []
        for band in config.extract.band_list():
            chmin, chmax, keywords = self._channels(band, src[0])
            out = f"{band.name}.lc"
            run(
                "pcaextlc2",
                [("src_infile", f"@{PREP_DIR}/{SRC_LIST}"), ("bkg_infile", f"@{PREP_DIR}/{BKG_LIST}"),
                 ("outfile", out), ("gtiandfile", GTI_FILE),
                 ("pculist", config.extract.pculist), ("layerlist", config.extract.layerlist),
                 ("binsz", f"{config.extract.binsz:g}"), ("chmin", chmin), ("chmax", chmax),
                 ("clobber", True)],
                expect=[work / out],
            )
            curves.append(self._light_curve(work / out, band, keywords))
        return curves

    def _prepare(self, row: ManifestRow, run: "_Runner") -> Path:
        """`<work>/prep` with pcaprepobsid's products: kept ones when present, else a fresh run."""
        prep = run.cwd / PREP_DIR
        kept = self._kept_dir(row)
        if kept is not None and (kept / DONE_FILE).is_file():
            run.log.write(f"# using prepared products in {kept} (pcaprepobsid skipped)\n")
            _copy_prepared(kept, prep, relative_to=PREP_DIR)
            return prep
        self._run_pcaprepobsid(row, run)
        if kept is not None:
            _keep(prep, kept, run.log)
        return prep

    def _run_pcaprepobsid(self, row: ManifestRow, run: "_Runner") -> Path:
        """A fresh pcaprepobsid into `<work>/prep` (relative outdir: list entries stay short)."""
        config = self.context.config
        prep = run.cwd / PREP_DIR
        if not any(name.startswith("FS4a_") for name in self.context.archive.listdir(row, "pca")):
            raise NoDataError(f"{row.obsid}: no Standard-2 data (pca/FS4a_*) in the archive")
        params: list[tuple[str, object]] = [("indir", self.context.archive.obsid_dir(row)), ("outdir", PREP_DIR)]
        if config.target.ra is not None and config.target.dec is not None:
            params += [("ra", repr(float(config.target.ra))), ("dec", repr(float(config.target.dec)))]
        run("pcaprepobsid", params, expect=[prep / DONE_FILE])
        return prep

    def _kept_dir(self, row: ManifestRow) -> Path | None:
        """<prepared>/<obsid> when extract.keep_prepared is on.

        Deliberately not `archive.prepared_root`: for a simulated archive that
        is the simulation's own products, and this backend's job is to run
        pcaprepobsid on the archive itself.
        """
        ex = self.context.config.extract
        if not ex.keep_prepared:
            return None
        return (ex.prepared or self.context.paths.prepared_dir) / row.obsid.text

    @staticmethod
    def _list(path: Path, cwd: Path) -> list[Path]:
        """A non-empty list file whose entries exist."""
        if not path.is_file():
            raise DataError(f"pcaprepobsid left no {path.name}")
        entries = _read_list(path, cwd)
        if not entries:
            raise DataError(f"pcaprepobsid left an empty {path.name} (no prepared Standard-2 files)")
        missing = [str(p) for p in entries if not p.is_file()]
        if missing:
            raise DataError(f"{path.name} names missing file(s): {', '.join(missing[:3])}")
        return entries

    def _channels(self, band: BandConfig, first_std2: Path) -> tuple[str, str, dict]:
        """pcaextlc2's chmin/chmax for a band (INDEF for an open side) and header keywords saying so."""
        from rxte_hpc.extract.std2 import parse_pculist, resolve_band

        if band.energy_kev is None:
            chmin = "INDEF" if band.chmin is None else str(band.chmin)
            chmax = "INDEF" if band.chmax is None else str(band.chmax)
            keywords = {"CHMIN": (0 if band.chmin is None else band.chmin, "lowest absolute PCA channel asked"),
                        "CHMAX": (255 if band.chmax is None else band.chmax, "highest absolute PCA channel asked")}
            return chmin, chmax, keywords
        pcus = parse_pculist(self.context.config.extract.pculist)
        resolved = resolve_band(energy_kev=band.energy_kev, met=_first_start(first_std2), pcu0=pcus == (0,))
        keywords = {
            "CHMIN": (resolved.chmin, "lowest absolute PCA channel"),
            "CHMAX": (resolved.chmax, "highest absolute PCA channel"),
            "E_MIN": (float(band.energy_kev[0]), "[keV] lower edge of the band asked"),
            "E_MAX": (float(band.energy_kev[1]), "[keV] upper edge of the band asked"),
        }
        if resolved.epoch is not None:
            keywords["GAINEPO"] = (resolved.epoch, "PCA gain epoch used for keV -> channels")
        return str(resolved.chmin), str(resolved.chmax), keywords

    @staticmethod
    def _light_curve(path: Path, band: BandConfig, keywords: dict) -> LightCurve:
        curves = read_lightcurves(path)
        lc = curves[0]
        if lc.n_rows == 0:
            raise DataError(f"pcaextlc2 wrote an empty light curve for band {band.name} ({band.describe()})")
        kept = {k: lc.keywords[k] for k in _KEEP_KEYWORDS if k in lc.keywords}
        return dataclasses.replace(lc, name=band.name, keywords={**kept, **keywords})


@dataclass(frozen=True)
class _Runner:
    """Runs tasks for one ObsID with one env and cwd, and turns failures into DataError."""

    headas: Path
    env: Mapping[str, str]
    cwd: Path
    log: TextIO

    def __call__(self, task: str, params: Sequence[tuple[str, object]], expect: Sequence[Path]) -> ToolRun:
        result = run_tool(task, params, headas=self.headas, env=self.env, cwd=self.cwd, tool_log=self.log)
        why = result.failure()
        if why is not None:
            raise DataError(f"{task} failed: {why}")
        missing = [p.name for p in expect if not p.is_file()]
        if missing:
            raise DataError(f"{task} reported success but did not write {', '.join(missing)}")
        return result


def _keep(prep: Path, kept: Path, tool_log: TextIO) -> None:
    """Copy fresh products to `kept` atomically: a temp dir beside it, then one rename.

    Another worker may have kept the same ObsID meanwhile (its rename won):
    then ours is discarded, since both came from the same inputs.
    """
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kept.name}.tmp.{socket.gethostname()}.", dir=kept.parent))
    try:
        _copy_prepared(prep, tmp, relative_to=None, final=kept)
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


def run_pcaprepobsid(
    context: ExtractContext, row: ManifestRow, directory: Path, workspace: Workspace, tool_log: TextIO
) -> Path:
    """Prepare one ObsID into `directory` for the native backend, exactly as this backend runs it.

    pcaprepobsid runs in the workspace (private PFILES, short cwd) and the
    products are then published to `directory` atomically, list entries made
    absolute. HEADAS comes from this process's environment.
    """
    extractor = HeasoftExtractor(context)
    headas = extractor.headas()
    work = workspace.work
    work.mkdir(parents=True, exist_ok=True)
    run = _Runner(headas, heasoft_env(workspace, headas), work, tool_log)
    prep = extractor._run_pcaprepobsid(row, run)
    _keep(prep, Path(directory), tool_log)
    return Path(directory)


def _first_start(std2: Path) -> float:
    """Absolute start (TSTART + TIMEZERO) of the first prepared Standard-2 file: picks the gain epoch."""
    try:
        with fits.open(std2, memmap=False) as hdul:
            header = hdul[1].header
            start = read_tstart(header)
            if start is None:
                start = float(np.asarray(hdul[1].data.field(0))[0])
            return start + read_timezero(header)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise DataError(f"{std2.name}: cannot read its start time ({exc})") from exc


def _copy_prepared(src: Path, dst: Path, relative_to: str | None, final: Path | None = None) -> None:
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
