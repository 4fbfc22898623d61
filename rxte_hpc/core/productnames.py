"""The names of the files a gather writes, and the rule that none may collide (core/config.py checks it on load).

One owner for the names: gather writes `band_file_name(...)` and
`hardness_file_name(...)`, and the config is refused when any of them (or the
plot) repeats another or takes a name the run directory uses for itself
(`core.paths.RESERVED_NAMES`): `gather.output: manifest.ecsv` would replace the plan.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rxte_hpc.core.errors import ConfigError
from rxte_hpc.core.paths import RESERVED_NAMES


def band_file_name(output: str, band: str, n_bands: int) -> str:
    """The merged light curve of one band: `gather.output` itself, or `merged_<band>.lc` with several bands."""
    if n_bands == 1:
        return output
    stem, dot, suffix = output.rpartition(".")
    return f"{stem}_{band}.{suffix}" if dot and stem else f"{output}_{band}"


def hardness_file_name(hard: str, soft: str) -> str:
    return f"hardness_{hard}_{soft}.fits"


def product_names(config_path: Path, output: str, plot: str, bands: Sequence[str],
                  hardness: Sequence[Sequence[str]]) -> dict[str, str]:
    """Every file name a gather writes in the run directory (or each `targets/<target>/`) -> the key it comes
    from; ConfigError naming both keys when two collide, or the key and the name when the run directory uses it."""
    names: dict[str, str] = {}

    def add(name: str, key: str) -> None:
        if name in names:
            raise ConfigError(f"{config_path}: {key} and {names[name]} both name the file {name!r} in run_dir: "
                              "one would overwrite the other; rename one of them", path=config_path)
        if name in RESERVED_NAMES:
            raise ConfigError(f"{config_path}: {key} would write {name!r}, a name the run directory uses for "
                              f"its own {'file' if '.' in name else 'folder'}; choose another name", path=config_path)
        names[name] = key

    for band in bands:
        add(band_file_name(output, band, len(bands)), "gather.output" + (f" (band {band})" if len(bands) > 1 else ""))
    for hard, soft in hardness:
        add(hardness_file_name(hard, soft), f"gather.hardness [{hard}, {soft}]")
    add(plot, "gather.plot")
    return names
