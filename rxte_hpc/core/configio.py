"""The one serializer of a Config: plain YAML values, every path absolute (submission snapshots write it).

`load_config` of `dump_config(c)` gives a Config equal to `c` (its `path`
aside) from any folder: relative paths were resolved against the original
file when it was loaded, so the copy needs no folder of its own.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from rxte_hpc.core.config import _SECTIONS, BandConfig, Config


def config_to_mapping(config: Config) -> dict[str, Any]:
    """The config as plain YAML values, every path absolute: loaded from any folder it means the same.

    The one serializer of a Config (submission snapshots write it; `load_config`
    of its YAML gives an equal Config, `path` aside). Generic over the
    dataclasses, so a new field needs nothing here.
    """
    out: dict[str, Any] = {"run_dir": str(config.run_dir)}
    for name in _SECTIONS:
        if name == "target" and config.targets:
            continue  # `targets:` replaces `target:`; giving both is refused
        out[name] = _yaml_value(getattr(config, name))
    if config.targets:
        out["targets"] = [_yaml_value(t) for t in config.targets]
    return out


def dump_config(config: Config) -> str:
    """`config_to_mapping` as YAML text, with a comment naming the file it was resolved from."""
    head = f"# {json.dumps(str(config.path.resolve()))} as rxte-hpc resolved it (every path absolute)\n"
    return head + yaml.safe_dump(config_to_mapping(config), sort_keys=False, allow_unicode=True)


def _yaml_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            out[f.name] = _yaml_bands(item) if f.name == "bands" and item else _yaml_value(item)
        return out
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_yaml_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _yaml_value(v) for k, v in value.items()}
    return value


def _yaml_bands(bands: tuple[BandConfig, ...]) -> dict[str, Any]:
    """`extract.bands` in the form the config reads: {name: [lo, hi] keV | {chmin, chmax}}."""
    return {b.name: list(b.energy_kev) if b.energy_kev is not None else {"chmin": b.chmin, "chmax": b.chmax}
            for b in bands}
