"""`targets: {path: targets.csv}`: the several-targets list as a CSV file (columns name, ra, dec[, radius_deg])."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rxte_hpc.core.errors import ConfigError


def read_targets_csv(file: Path, path: Path) -> list[dict[str, Any]]:
    """Rows of a targets CSV as mappings, numbers converted; a bad file is one line naming it."""
    try:
        with open(file, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: targets.path {file}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    out = []
    for n, row in enumerate(rows, start=2):
        item: dict[str, Any] = {}
        for k, v in row.items():
            name = (k or "").strip().lower()
            if name not in ("name", "ra", "dec", "radius_deg"):
                raise ConfigError(f"{path}: targets.path {file} line {n}: unknown column {k!r} "
                                  "(columns: name, ra, dec[, radius_deg])")
            value = (v or "").strip()
            if name == "name":
                item[name] = value
            elif value:
                try:
                    item[name] = float(value)
                except ValueError:
                    raise ConfigError(f"{path}: targets.path {file} line {n}: {name} is not a number: {value!r}") from None
        out.append(item)
    return out
