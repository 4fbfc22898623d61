"""The HEASARC TAP part of planning: the seed's ADQL, sent with pyvo, checked for truncation.

TAP results are silently truncated at a row limit (docs/architecture.md#why-it-is-built-this-way), so
the query carries an explicit MAXREC and a result that reached it, or that the
service marked OVERFLOW, is an error rather than a short manifest. Only
numbers and a checked identifier are formatted into the ADQL: nothing a user
typed goes into the query as text.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import DataError, SiteError, UsageError

log = logging.getLogger(__name__)

#: A table name, optionally schema-qualified (`xtemaster`, `public.xtemaster`).
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")
COLUMNS = ("target_name", "cycle", "prnb", "obsid", "time", "exposure", "ra", "dec")


@dataclass(frozen=True)
class TapResult:
    """What the service answered, with what is needed to record it in the manifest."""

    table: Table
    service: str
    adql: str
    maxrec: int
    query_status: str
    #: several targets: one query each (target, adql, n_rows, query_status), each checked against maxrec
    queries: tuple[dict[str, object], ...] = ()

    def meta(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": "tap",
            "service": self.service,
            "adql": self.adql,
            "maxrec": self.maxrec,
            "n_rows": len(self.table),
            "query_status": self.query_status,
        }
        if self.queries:
            out["queries"] = [dict(q) for q in self.queries]
        return out


def adql_number(value: float) -> str:
    """A finite float as an ADQL literal: shortest round-trip digits, never an exponent."""
    number = float(value)
    if not math.isfinite(number):
        raise UsageError(f"cannot put a non-finite number ({value!r}) into an ADQL query")
    return np.format_float_positional(number, trim="-")


def check_table_name(name: str, where: str) -> str:
    """The configured table, refused unless it is a plain (schema.)identifier."""
    if not isinstance(name, str) or not _TABLE_RE.fullmatch(name):
        raise UsageError(f"{where}: source.table must be a table name like xtemaster or public.xtemaster, not {name!r}")
    return name


def target_position(config: Config) -> tuple[float, float]:
    """RA/Dec (deg) from the config, or from the target name through astropy's resolver.

    The resolver needs the network; on a cluster node it usually has none, so
    failing says to write the coordinates into the config instead.
    """
    t = config.target
    if t.ra is not None and t.dec is not None:
        return float(t.ra), float(t.dec)
    if (t.ra is None) != (t.dec is None):
        raise UsageError(f"{config.path}: target.ra and target.dec go together; give both (degrees, ICRS)")
    if not t.name:
        raise UsageError(f"{config.path}: a TAP source needs target.ra/target.dec (degrees) or a target.name to resolve")
    from astropy.coordinates import SkyCoord
    from astropy.coordinates.name_resolve import NameResolveError

    try:
        coord = SkyCoord.from_name(t.name)
    except (NameResolveError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"{config.path}: cannot resolve target.name {t.name!r} ({reason[:160]}); "
            "put target.ra and target.dec (degrees, ICRS) in the config"
        ) from None
    log.info("resolved %r to RA %.5f Dec %.5f", t.name, coord.icrs.ra.deg, coord.icrs.dec.deg)
    return float(coord.icrs.ra.deg), float(coord.icrs.dec.deg)


def build_adql(config: Config, ra: float, dec: float, radius_deg: float | None = None) -> str:
    """The seed's query: the cone around the target, exposure cut, optional time range, by time."""
    src = config.source
    table = check_table_name(src.table, str(config.path))
    radius = config.target.radius_deg if radius_deg is None else radius_deg
    where = [
        "contains(point('ICRS',cat.ra,cat.dec), circle('ICRS',"
        f"{adql_number(ra)},{adql_number(dec)},{adql_number(radius)}))=1",
        f"cat.exposure > {adql_number(src.min_exposure_s)}",
    ]
    if src.time_range_mjd is not None:
        lo, hi = src.time_range_mjd
        where.append(f"cat.time BETWEEN {adql_number(lo)} AND {adql_number(hi)}")
    return f"SELECT {', '.join(COLUMNS)} FROM {table} AS cat WHERE {' AND '.join(where)} ORDER BY cat.time"


def _one_line(exc: BaseException) -> str:
    """A short reason from a requests/pyvo error whose text can be a page long."""
    text = str(exc)
    errno = _ERRNO_RE.search(text)
    if errno:
        return errno.group(0).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


def run_query(service: str, adql: str, maxrec: int, allow_empty: bool = False) -> TapResult:
    """Send the query synchronously; refuse a truncated or failed answer.

    pyvo's own overflow warning is recorded rather than raised: the status is
    checked here, and the check is an error with the remedy, not a warning.
    """
    import pyvo
    import requests
    from pyvo.dal.exceptions import DALAccessError, DALOverflowWarning, DALQueryError

    log.info("TAP %s (maxrec %d): %s", service, maxrec, adql)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DALOverflowWarning)
            result = pyvo.dal.TAPService(service).run_sync(adql, maxrec=maxrec)
            table = result.to_table()
    except DALQueryError as exc:
        raise DataError(f"TAP service {service} rejected the query ({_one_line(exc)}): {adql}") from None
    except (DALAccessError, requests.RequestException, OSError) as exc:
        raise SiteError(f"cannot query TAP service {service}: {_one_line(exc)}") from None
    status = str(result.query_status or "OK").upper()
    overflow = status == "OVERFLOW" or any(issubclass(w.category, DALOverflowWarning) for w in caught)
    if overflow or len(table) >= maxrec:
        why = "marked the result OVERFLOW" if overflow else f"returned maxrec={maxrec} rows"
        raise UsageError(
            f"TAP service {service} {why}: the result is truncated at {len(table)} rows; "
            f"raise source.maxrec (now {maxrec}) or narrow the query"
        )
    if len(table) == 0 and not allow_empty:
        raise UsageError(f"TAP service {service} found no observations; check target/source settings. Query: {adql}")
    return TapResult(table, service, adql, maxrec, status)


def query_observations(config: Config) -> TapResult:
    """Build the ADQL from the config and run it against source.service (one query per configured target).

    With several targets each cone is its own query, so the maxrec/OVERFLOW
    rule holds per query: one crowded field cannot silently truncate another.
    A target without rows is logged, not an error, unless every target has none.
    """
    if not config.targets:
        ra, dec = target_position(config)
        adql = build_adql(config, ra, dec)
        return run_query(config.source.service, adql, config.source.maxrec)
    from astropy.table import vstack

    results = []
    for t in config.targets:
        assert t.ra is not None and t.dec is not None  # the config requires positions for several targets
        adql = build_adql(config, t.ra, t.dec, t.radius_deg)
        try:
            result = run_query(config.source.service, adql, config.source.maxrec, allow_empty=True)
        except UsageError as exc:
            raise UsageError(f"target {t.name!r}: {exc}") from None
        if len(result.table) == 0:
            log.warning("TAP: no observations of target %r within %g deg", t.name, t.radius_deg)
        results.append((t, result))
    tables = [r.table for _, r in results if len(r.table)]
    if not tables:
        raise UsageError(f"TAP service {config.source.service} found no observations of any of the "
                         f"{len(config.targets)} targets; check their positions and radius_deg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # merging metadata of equal columns from several VOTables
        table = vstack(tables, join_type="outer", metadata_conflicts="silent")
    queries: tuple[dict[str, object], ...] = tuple(
        {"target": t.name, "adql": r.adql, "n_rows": len(r.table), "query_status": r.query_status} for t, r in results
    )
    status = "OK" if all(r.query_status == "OK" for _, r in results) else ",".join(r.query_status for _, r in results)
    return TapResult(table, config.source.service, results[0][1].adql, config.source.maxrec, status, queries)
