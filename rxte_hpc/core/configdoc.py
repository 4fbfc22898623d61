"""The configuration reference, generated from the config dataclasses (`rxte-hpc config --schema`).

Each field's help text, limits and choices live in its `metadata` in
core/config.py, where they also make the error messages; this module only
lays them out. docs/config.md is this text, and tests/system/test_docs.py
fails when the two differ, so the reference cannot drift from the code.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from rxte_hpc.core.config import _SECTIONS, TargetConfig

_INTRO = """\
# Configuration reference

Generated from the config dataclasses (`rxte_hpc/core/config.py`, `archiveconfig.py`) by `rxte-hpc config --schema`;
a test keeps this file equal to that output. A config is one YAML mapping. Unknown keys, wrong
types and values outside the limits below are refused when the config is loaded (exit 2, the
message names the file and the key). Relative paths are relative to the config file's folder,
never to the current directory. What decides the light curves (the `extract:` section and the
target's position) makes the config hash: a run directory holds the plan of one hash, and a
`done` record counts only for its own.

## Top level

| key | type | default | meaning |
|---|---|---|---|
| `run_dir` | path | required | where the manifest, light curves, records, logs and products go |
| `target` | mapping | see below | one source (the `target:` section) |
| `targets` | list, or `{path: FILE.csv}` | none | several sources instead of `target:`: a list of \
`{name, ra, dec[, radius_deg]}`, or a CSV with those columns; each gets its own products under `targets/<name>/` |
"""

_BANDS = """\
`extract.bands` takes `{name: [lo_keV, hi_keV]}` or `{name: {chmin: N, chmax: M}}` per band (names: a
letter, then letters, digits and `_`, at most 16; not GTI, OBSIDS or PRIMARY); it replaces
`chmin`/`chmax`/`energy_kev`. `gather.hardness` pairs name two of these bands.
"""


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args:
        return _type_name(next(a for a in args if a is not type(None)))
    origin = typing.get_origin(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    return {str: "string", int: "integer", float: "number", bool: "true/false", Path: "path"}.get(hint, "mapping")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[]" if not value else "[" + ", ".join(map(str, value)) + "]"
    return f"`{value}`"


def _limits(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None:
        parts.append(f"{'>' if meta.get('lo_open') else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return f" ({'; '.join(parts)})" if parts else ""


def _section(name: str, cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    lines = [f"## `{name}:`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        text = str(f.metadata.get("help", "")).replace("|", "\\|") + _limits(f.metadata)
        nested = hints[f.name]
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):  # a section inside one: archive.s3
            lines.append(f"| `{name}.{f.name}` | mapping | its keys below | {text} |")
            lines += _section(f"{name}.{f.name}", nested)[4:]
            continue
        lines.append(f"| `{name}.{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | {text} |")
    return lines


def config_reference() -> str:
    """The configuration reference as Markdown (what docs/config.md holds)."""
    out = [_INTRO]
    for name, cls in _SECTIONS.items():
        out += _section(name, cls) + [""]
        if name == "extract":
            out += [_BANDS]
    keys = ", ".join(f.name for f in dataclasses.fields(TargetConfig))
    out.append(f"Each entry of `targets:` takes the keys of `target:` ({keys}); `name`, `ra` and `dec` are required there.")
    return "\n".join(out).rstrip() + "\n"
