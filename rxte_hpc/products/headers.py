"""Header keywords of the merged products: provenance, a band's channels and energies, rate units.

Kept apart from the merge itself so gather.py stays readable; every function
here is pure (keywords in, keywords out) and works on `LightCurve` keywords.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from rxte_hpc.core.version import __version__
from rxte_hpc.core.config import BandConfig, Config
from rxte_hpc.core.manifest import Manifest
from rxte_hpc.fits.lcfile import LightCurve, extraction_keywords

def value_of(value: Any) -> Any:
    """A keyword given as value or (value, comment)."""
    return value[0] if isinstance(value, tuple) else value


def channel_keywords(channels: Mapping[str, tuple[int, int, int]]) -> dict[str, Any]:
    """CHMIN/CHMAX of the merged band (their range over the ObsIDs) and CHAN_E<n> = 'lo-hi' per gain epoch."""
    known = [c for c in channels.values() if c[0] >= 0 and c[1] >= 0]
    if not known:
        return {}
    lo, hi = min(c[0] for c in known), max(c[1] for c in known)
    varies = len({c[:2] for c in known}) > 1
    out: dict[str, Any] = {
        "CHMIN": (lo, "lowest absolute channel, all ObsIDs" if varies else "lowest absolute PCA channel"),
        "CHMAX": (hi, "highest absolute channel, all ObsIDs" if varies else "highest absolute PCA channel"),
    }
    for epoch in sorted({c[2] for c in known if c[2] > 0}):
        ranges = sorted({c[:2] for c in known if c[2] == epoch})
        out[f"CHAN_E{epoch}"] = (",".join(f"{a}-{b}" for a, b in ranges), f"channels used in gain epoch {epoch}")
    return out


def rate_unit(lc: LightCurve) -> str:
    """The y-axis unit of a merged rate: per live PCU when dead time was applied (pcaextlc2), else as labelled."""
    unit = value_of(lc.keywords.get("RATEUNIT"))
    if unit == "varies per ObsID":
        return "net count/s, scale differs between ObsIDs (RATEUNIT per ObsID)"
    if unit:
        return str(unit)
    if value_of(lc.keywords.get("DEADAPP")) is True:
        return "net count/s per live PCU"
    return "net count/s" if value_of(lc.keywords.get("BACKAPP")) else "count/s"


def provenance(config: Config, manifest: Manifest, counts: Mapping[str, int], digest: str | None = None) -> dict[str, Any]:
    """CREATOR, CONFHASH, MANIFEST (its digest; pass `digest` to reuse one: it costs ~0.1 s per 1,000 rows)
    and the extraction keywords, with the ObsID counts of this product."""
    ex = config.extract
    return {
        "CREATOR": (f"rxte-hpc {__version__}", "tool that merged the light curves"),
        "CONFHASH": (config.hash(), "hash of the extraction config"),
        "MANIFEST": (digest or manifest.digest(), "digest of manifest.ecsv"),
        **extraction_keywords(ex.backend, ex.pculist, ex.layerlist, ex.filter),
        "N_USED": (counts["used"], "ObsIDs merged"),
        "N_MISS": (counts["missing"], "ObsIDs not extracted (yet) or interrupted"),
        "N_FAILED": (counts["failed"], "ObsIDs that failed or were unreadable"),
        "N_NODATA": (counts["no_data"], "ObsIDs with nothing to extract"),
    }


def band_keywords(band: BandConfig, config: Config, kw: Mapping[str, Any]) -> dict[str, Any]:
    """BANDNAME, BAND, and the channels/energies of the band (from the per-ObsID files where they vary)."""
    out: dict[str, Any] = {"BANDNAME": (band.name, "band name in extract.bands")}
    for key in ("CHMIN", "CHMAX", "E_MIN", "E_MAX"):
        if key in kw:
            out[key] = kw[key]
    if band.chmin is not None and band.chmax is not None:
        out["CHMIN"] = (band.chmin, "lowest absolute PCA channel")  # asked for: the same in every epoch
        out["CHMAX"] = (band.chmax, "highest absolute PCA channel")
        out["BAND"] = (band.describe(), "channel band")
    elif band.energy_kev is not None:
        out["E_MIN"] = (float(band.energy_kev[0]), "[keV] low energy of the band")
        out["E_MAX"] = (float(band.energy_kev[1]), "[keV] high energy of the band")
        out["BAND"] = (band.describe(), "energy band (nominal keV -> channels)")
    elif config.extract.backend == "stdprod":
        out["BAND"] = (f"stdprod band {config.extract.stdprod_band}", "standard-product band")
    return out


def band_text(kw: Mapping[str, Any], bands: Sequence[BandConfig], name: str) -> str:
    """A band for people: '2-9 keV (channels 5-21)', 'channels 5-10 (nominal 1.94-4.63 keV)', or 'channels 5-10'."""
    band = next(b for b in bands if b.name == name)
    lo, hi = band.energy_kev if band.energy_kev is not None else (value_of(kw.get("E_MIN")), value_of(kw.get("E_MAX")))
    kev = f"{float(lo):g}-{float(hi):g} keV" if lo is not None and hi is not None else ""
    chans = f"channels {value_of(kw['CHMIN'])}-{value_of(kw['CHMAX'])}" if "CHMIN" in kw and "CHMAX" in kw else ""
    if kev and chans and band.energy_kev is None:  # a channel band: its keV is nominal and moves with the gain epoch
        return f"{chans} (nominal {kev})"
    if kev and chans:
        return f"{kev} ({chans})"
    return kev or chans or band.describe()


def target_name(config: Config, kw: Mapping[str, Any]) -> str:
    return str(config.target.name or value_of(kw.get("OBJECT", "")) or "").strip()
