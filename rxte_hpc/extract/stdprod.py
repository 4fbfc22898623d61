"""The archive's own standard-product light curve, normalised to this project's OGIP form.

`stdprod/xp<obsid-no-dashes>_n2<band>.lc.gz`: background-subtracted, 16-s bins,
fixed bands (a 2-9, b 2-4, c 4-9, d 9-20, e 20-40 keV). No HEASoft needed; the
quickest look at a campaign. Its rates are not pcaextlc2's: HEASARC summed
layer 1 of the PCUs on (ROWIDn), did not correct for dead time (DEADAPP = F)
and rescaled the sum by about 1/NPCU (HISTORY `fcalc RATE * f`). The curves
say so (PCULIST, LAYERS, RATEUNIT), so nobody compares them with native or
heasoft rates (count/s per live PCU, all layers by default) by mistake.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, TextIO

from rxte_hpc.fits.lcfile import LightCurve, read_lightcurve
from rxte_hpc.core.manifest import ManifestRow
from rxte_hpc.core.obsid import STDPROD_BANDS
from rxte_hpc.core.scratch import Workspace
from rxte_hpc.archive.base import ArchiveNeeds
from rxte_hpc.extract.base import Extractor


_SPECTRAL = re.compile(r"X(\d)([LR])SpecPcu(\d)")


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
        keep = ("OBJECT", "CHMIN", "CHMAX", "BACKAPP", "DEADAPP", "RATESCAL")
        keywords = {k: lc.keywords[k] for k in keep if k in lc.keywords}
        keywords.update(product_keywords(lc.keywords))
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


def product_keywords(header: Mapping[str, Any]) -> dict[str, Any]:
    """PCULIST, LAYERS and RATEUNIT of a standard product, from its ROWIDn, DEADAPP and RATESCAL keywords."""
    columns = [str(header[k]) for k in header if re.fullmatch(r"ROWID\d+", k)]
    found = [m for m in (_SPECTRAL.fullmatch(c.strip()) for c in columns) if m]
    out: dict[str, Any] = {}
    if found:
        pcus = sorted({int(m.group(3)) for m in found})
        layers = sorted({int(m.group(1)) for m in found})
        out["PCULIST"] = (",".join(map(str, pcus)), "PCUs HEASARC summed (ROWIDn)")
        out["LAYERS"] = (",".join(map(str, layers)), "anode layers HEASARC summed (ROWIDn)")
    scale = header.get("RATESCAL")
    scale = scale[0] if isinstance(scale, tuple) else scale
    if found and scale is not None and abs(float(scale) * len(out["PCULIST"][0].split(",")) - 1) < 0.05:
        per = " per PCU"  # the fcalc factor is 1/NPCU to within the few per cent the real products show
    else:
        per = f" x {float(scale):.4g}" if scale is not None else ""
    dead = header.get("DEADAPP")
    dead = dead[0] if isinstance(dead, tuple) else dead
    tail = ", dead time not corrected" if dead is False else (", dead-time corrected" if dead is True else "")
    out["RATEUNIT"] = (f"net count/s{per}{tail}", "HEASARC standard product, not pcaextlc2")
    return out
