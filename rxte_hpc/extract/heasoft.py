"""The seed's HEASoft chain, unchanged in science, made safe to run many times at once.

Per ObsID: `pcaprepobsid` (once), `maketime` with the filter expression
(once), then one `pcaextlc2` per band (docs/science.md#what-each-extractor-computes). Each ObsID gets a
fresh, empty user PFILES directory (`Workspace.obsid_pfiles`), so nothing a
task learns on one ObsID reaches the next. The tasks are called through
heasoftpy or as executables (`extract.runner`, see `hsp_runner`); either way
every call is a subprocess with the ObsID's environment from
`scratch.heasoft_env` (its PFILES, no prompting), stdin from /dev/null, every
parameter as its own argv item (never a shell), and the short scratch working
directory as cwd with relative file names, so long run-directory paths never
reach the tools ("COLUMNS parameter may be too long", docs/science.md#heasoft-in-batch-pfiles-prompts-exit-status).

HEASoft's Perl tasks exit 0 when they fail and only print `Task <name> <ver>
terminating with status -1` (docs/science.md#heasoft-in-batch-pfiles-prompts-exit-status), so success here means: exit
status 0, no such line with a non-zero status, and the expected outputs exist
with rows.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Mapping, TextIO

import numpy as np
from astropy.io import fits

from rxte_hpc.core.config import BandConfig
from rxte_hpc.core.errors import DataError, NoDataError
from rxte_hpc.fits.lcfile import LightCurve, read_lightcurves, read_timezero, read_tstart
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.scratch import Workspace, heasoft_env
from rxte_hpc.archive.base import ArchiveNeeds
from rxte_hpc.extract.base import ExtractContext, Extractor
from rxte_hpc.extract.prepare import (
    BACKGROUND_LIST,
    DONE_FILE,
    PREP_DIR,
    SOURCE_LIST,
    copy_prepared,
    keep_prepared,
    listed_files,
    pcaprepobsid,
)
from rxte_hpc.extract.hsp_runner import resolve_runner, task_calls
from rxte_hpc.extract.tools import TaskCaller, find_headas

log = logging.getLogger(__name__)

#: The maketime output inside the per-ObsID working directory; short and relative on purpose.
GTI_FILE = "gti.fits"
#: Keywords of pcaextlc2's output worth carrying into the published light curve.
_KEEP_KEYWORDS = ("OBJECT", "BACKAPP", "DEADAPP", "MINCHAN", "MAXCHAN")


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
        """$HEADAS with the chain's tasks in bin/ (UsageError naming what is missing)."""
        return find_headas(self._environ)

    def check_available(self) -> None:
        """HEASoft present, and the settings the tasks would reject valid, before any task starts."""
        from rxte_hpc.extract.filterexpr import parse_filter
        from rxte_hpc.extract.std2 import parse_layerlist, parse_pculist

        self.headas()
        ex = self.context.config.extract
        resolve_runner(ex.runner)
        parse_pculist(ex.pculist)
        parse_layerlist(ex.layerlist)
        parse_filter(ex.filter)

    def archive_needs(self, row: ManifestRow) -> ArchiveNeeds:
        """pcaprepobsid reads the whole ObsID directory; kept prepared products need nothing from the archive."""
        kept = self._kept_dir(row)
        if kept is not None and (kept / DONE_FILE).is_file():
            return ArchiveNeeds()
        return ArchiveNeeds(whole_tree=True)

    # -- extraction ---------------------------------------------------------------
    def extract(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> list[LightCurve]:
        headas = self.headas()
        config = self.context.config
        work = workspace.work
        work.mkdir(parents=True, exist_ok=True)
        env = heasoft_env(self._pfiles(row, workspace), headas, base=self._environ)
        with task_calls(config.extract.runner, headas, env, work, tool_log) as run:
            return self._chain(row, run)

    def _pfiles(self, row: ManifestRow, workspace: Workspace) -> Path:
        """The ObsID's own, new user PFILES directory (a test overrides this to share one and see the swap)."""
        return workspace.obsid_pfiles(row.obsid.text)

    def _chain(self, row: ManifestRow, run: TaskCaller) -> list[LightCurve]:
        config = self.context.config
        work = run.cwd
        prep = self._prepare(row, run)
        xfl = sorted(prep.glob("FP_*.xfl"))
        if len(xfl) != 1:
            raise DataError(f"pcaprepobsid left {len(xfl)} FP_*.xfl filter files in its output, expected one")
        src = listed_files(prep / SOURCE_LIST, work)
        listed_files(prep / BACKGROUND_LIST, work)

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
                [("src_infile", f"@{PREP_DIR}/{SOURCE_LIST}"), ("bkg_infile", f"@{PREP_DIR}/{BACKGROUND_LIST}"),
                 ("outfile", out), ("gtiandfile", GTI_FILE),
                 ("pculist", config.extract.pculist), ("layerlist", config.extract.layerlist),
                 ("binsz", f"{config.extract.binsz:g}"), ("chmin", chmin), ("chmax", chmax),
                 ("clobber", True)],
                expect=[work / out],
            )
            curves.append(self._light_curve(work / out, band, keywords))
        return curves

    def _prepare(self, row: ManifestRow, run: TaskCaller) -> Path:
        """`<work>/prep` with pcaprepobsid's products: kept ones when present, else a fresh run."""
        prep = run.cwd / PREP_DIR
        kept = self._kept_dir(row)
        if kept is not None and (kept / DONE_FILE).is_file():
            run.log.write(f"# using prepared products in {kept} (pcaprepobsid skipped)\n")
            copy_prepared(kept, prep, relative_to=PREP_DIR)
            return prep
        pcaprepobsid(self.context, row, run)
        if kept is not None:
            keep_prepared(prep, kept, run.log)
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

    def _channels(self, band: BandConfig, first_std2: Path) -> tuple[str, str, dict]:
        """pcaextlc2's chmin/chmax for a band (INDEF for an open side) and the header keywords native writes too."""
        from rxte_hpc.extract.std2 import band_keywords, parse_pculist, pcu0_energies, resolve_band

        if band.energy_kev is None:
            chmin = "INDEF" if band.chmin is None else str(band.chmin)
            chmax = "INDEF" if band.chmax is None else str(band.chmax)
            pcus = parse_pculist(self.context.config.extract.pculist)
            resolved = resolve_band(chmin=band.chmin, chmax=band.chmax, met=_first_start(first_std2),
                                    pcu0=pcu0_energies(pcus))
            return chmin, chmax, band_keywords(resolved, None)
        pcus = parse_pculist(self.context.config.extract.pculist)
        resolved = resolve_band(energy_kev=band.energy_kev, met=_first_start(first_std2), pcu0=pcu0_energies(pcus))
        return str(resolved.chmin), str(resolved.chmax), band_keywords(resolved, band.energy_kev)

    @staticmethod
    def _light_curve(path: Path, band: BandConfig, keywords: dict) -> LightCurve:
        curves = read_lightcurves(path)
        lc = curves[0]
        if lc.n_rows == 0:
            raise DataError(f"pcaextlc2 wrote an empty light curve for band {band.name} ({band.describe()})")
        kept = {k: lc.keywords[k] for k in _KEEP_KEYWORDS if k in lc.keywords}
        return dataclasses.replace(lc, name=band.name, keywords={**kept, **keywords})


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


