"""Named presets of regional rule variants (issue 17; docs/presets.md).

A preset is data, ``dipengine/data/presets/<name>.toml``: a ``[preset]`` table (``name``,
``description``, ``source``), the grouping ``[options]`` a rule set's ``manifest.toml`` may
give, and the ``[deviation]`` keys a ``policy.toml`` may give. A rule set names one with
``[options] preset = "<name>"``, a policy with a top-level ``preset = "<name>"``; the keys the
manifest or policy gives themselves override the preset's. Checking the values is left to the
rule-set and policy parsers, which see the merged keys exactly as if they had been written out.
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources

SECTIONS = ("preset", "options", "deviation")


class PresetError(ValueError):
    """An unknown preset name, or a preset file that does not parse (the message says which)."""


@dataclass(frozen=True)
class Preset:
    """One parsed preset: its grouping ``options`` and policy ``deviation`` keys (plain dicts)."""

    name: str
    description: str
    source: str
    options: dict = field(default_factory=dict)
    deviation: dict = field(default_factory=dict)
    sha256: str = ""


def _folder():
    return resources.files("dipengine.data") / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".toml"))


def load_preset(name) -> Preset:
    """The shipped preset ``name``.

    Raises
    ------
    PresetError
        ``name`` is not a shipped preset (the message lists them), or its file is malformed.
    """
    names = preset_names()
    if not isinstance(name, str) or name not in names:
        raise PresetError(f"unknown preset {name!r} (one of {', '.join(names)})")
    raw = (_folder() / f"{name}.toml").read_bytes()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"preset {name}: {e}") from None
    extra = sorted(set(doc) - set(SECTIONS))
    if extra:
        raise PresetError(f"preset {name}: unknown section {extra[0]!r} (one of {', '.join(SECTIONS)})")
    head = doc.get("preset", {})
    if head.get("name") != name:
        raise PresetError(f"preset {name}: [preset] name is {head.get('name')!r}, expected {name!r}")
    for section in ("options", "deviation"):
        if not isinstance(doc.get(section, {}), dict):
            raise PresetError(f"preset {name}: [{section}] must be a table")
    if "preset" in doc.get("options", {}):
        raise PresetError(f"preset {name}: a preset cannot name another preset")
    return Preset(name=name, description=str(head.get("description", "")), source=str(head.get("source", "")),
                  options=dict(doc.get("options", {})), deviation=dict(doc.get("deviation", {})),
                  sha256=hashlib.sha256(raw).hexdigest())
