"""The archive's own standard-product light curve, normalised to this project's OGIP form.

`stdprod/xp<obsid-no-dashes>_n2<band>.lc.gz`: background-subtracted, 16-s bins,
fixed bands (a 2-9, b 2-4, c 4-9, d 9-20, e 20-40 keV). No HEASoft needed; the
quickest look at a campaign.
"""
from __future__ import annotations

from typing import TextIO

from rxte_hpc.fits.lcfile import LightCurve, read_lightcurve
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.obsid import STDPROD_BANDS
from rxte_hpc.core.scratch import Workspace
from rxte_hpc.archive.base import ArchiveNeeds
from rxte_hpc.extract.base import Extractor


class StdprodExtractor(Extractor):
    name = "stdprod"

    def _relpath(self, row: ManifestRow) -> str:
        return f"stdprod/{row.obsid.stdprod_lc_name(self.context.config.extract.stdprod_band)}"

    def archive_needs(self, row: ManifestRow) -> ArchiveNeeds:
        """One standard-product light curve."""
        return ArchiveNeeds(files=(self._relpath(row),))

    def extract(self, row: ManifestRow, workspace: Workspace, tool_log: TextIO) -> list[LightCurve]:
        band = self.context.config.extract.stdprod_band
        path = self.context.archive.file(row, self._relpath(row))
        tool_log.write(f"reading {path}\n")
        lc = read_lightcurve(path)
        keep = ("OBJECT", "CHMIN", "CHMAX", "BACKAPP", "DEADAPP")
        keywords = {k: lc.keywords[k] for k in keep if k in lc.keywords}
        lo, hi = STDPROD_BANDS[band]
        keywords["E_MIN"] = (lo, "[keV] lower edge of the standard-product band")
        keywords["E_MAX"] = (hi, "[keV] upper edge of the standard-product band")
        keywords["STDBAND"] = (band, "standard-product band letter")
        return [
            LightCurve(
                time=lc.time,
                rate=lc.rate,
                error=lc.error,
                fracexp=lc.fracexp,
                timedel=lc.timedel,
                ref=lc.ref,
                gti=lc.gti,
                name="RATE",
                keywords=keywords,
            )
        ]
