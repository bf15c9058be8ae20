"""Manifests: sha256 of every table, written as TOML and checked on load.

Only a small TOML subset is written (strings, numbers, booleans, dates, flat tables), by hand,
so no TOML writer is needed; reading uses :mod:`tomllib`.
"""
from __future__ import annotations

import datetime as _dt
import tomllib
from pathlib import Path

from dipengine.errors import DataError
from dipengine.io import sha256_file


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (_dt.date, _dt.datetime)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dumps_toml(doc: dict) -> str:
    """Serialise a dict of scalars and one level of sub-tables to TOML."""
    lines = []
    tables = []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_fmt(v)}")
    for name, sub in tables:
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in sub.items():
            key = k if k.replace("_", "").isalnum() else _fmt(k)
            lines.append(f"{key} = {_fmt(v)}")
    return "\n".join(lines) + "\n"


def write_manifest(directory, meta: dict, files: list[str], name: str = "manifest.toml") -> Path:
    """Write ``manifest.toml`` with ``meta`` and a ``[files]`` table of sha256 per file."""
    directory = Path(directory)
    doc = dict(meta)
    doc["files"] = {f: sha256_file(directory / f) for f in sorted(files)}
    path = directory / name
    path.write_text(dumps_toml(doc), encoding="utf-8")
    return path


def read_manifest(directory, name: str = "manifest.toml") -> dict:
    """Read a manifest; :class:`DataError` naming the file when it is missing or malformed."""
    path = Path(directory) / name
    if not path.exists():
        raise DataError("manifest not found", file=path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"malformed TOML ({e})", file=path) from None


def verify_files(directory, manifest: dict) -> list[tuple[str, str]]:
    """Problems ``(file, message)`` where a listed table is missing or its sha256 differs."""
    problems = []
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        return [("manifest.toml", "[files] must be a table of file = sha256")]
    for fname, digest in files.items():
        p = Path(directory) / fname
        if not p.exists():
            problems.append((fname, "listed in manifest.toml but missing"))
        elif sha256_file(p) != digest:
            problems.append((fname, f"sha256 mismatch: manifest says {digest}, file is {sha256_file(p)}"))
    return problems
