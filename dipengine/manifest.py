"""Manifests: sha256 of every table, written as TOML and checked on load.

Written with :mod:`tomli_w` (a well-kept TOML writer: any string, any key, byte-stable output for
the same document), read with :mod:`tomllib`. The ``[files]`` table maps file names to sha256;
:func:`check_files` verifies it: every listed name must be a relative path inside the directory
(no ``..``, no absolute path, no symbolic link leading out) naming a regular file (never a FIFO or
a device: checked with ``os.stat`` before anything is opened), and its sha256 must match.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import tomli_w

from dipengine.errors import DataError
from dipengine.io import sha256_file


def _plain(v, where: str):
    """``v`` as a value tomli_w writes (numpy scalars -> Python; tuples -> lists); None dropped."""
    if isinstance(v, dict):
        return {str(k): _plain(x, f"{where}.{k}") for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        if any(x is None for x in v):
            raise ValueError(f"manifest value {where} holds None (TOML has no null)")
        return [_plain(x, where) for x in v]
    if hasattr(v, "item") and type(v).__module__ == "numpy":
        return v.item()
    if isinstance(v, Path):
        return v.as_posix()
    if isinstance(v, (str, bool, int, float, _dt.date, _dt.datetime, _dt.time)):
        return v
    raise ValueError(f"manifest value {where} = {v!r}: not a TOML value")


def dumps_toml(doc: dict) -> str:
    """Serialise a manifest document to TOML (:func:`tomli_w.dumps`).

    Top-level scalars first, then one ``[table]`` per dict, in the order given. Keys whose value
    is ``None`` are left out (TOML has no null). The text is a pure function of ``doc``: the same
    document always gives the same bytes; ``tomllib.loads(dumps_toml(doc)) == doc`` for every
    string (newlines, quotes, non-ASCII) and every key (``"groups.csv"``, spaces, dots).
    """
    return tomli_w.dumps(_plain(doc, "manifest"))


def write_manifest(directory, meta: dict, files: list[str], name: str = "manifest.toml") -> Path:
    """Write ``manifest.toml`` with ``meta`` and a ``[files]`` table of sha256 per file."""
    directory = Path(directory)
    doc = dict(meta)
    doc["files"] = {f: sha256_file(directory / f) for f in sorted(files)}
    path = directory / name
    path.write_text(dumps_toml(doc), encoding="utf-8")
    return path


def read_manifest_text(directory, name: str = "manifest.toml") -> tuple[dict, str]:
    """``(document, text)`` of a manifest.

    Raises
    ------
    DataError
        Naming the file, in one line: missing, not a regular file, unreadable, not UTF-8,
        malformed TOML, or empty (a manifest says at least what it seals).
    """
    path = Path(directory) / name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError("manifest not found", file=path) from None
    except OSError as e:
        raise DataError(f"cannot read the manifest ({e.strerror or e})", file=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError("the manifest is not a regular file", file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"manifest is not UTF-8 text ({e.reason})", file=path) from None
    except OSError as e:
        raise DataError(f"cannot read the manifest ({e.strerror or e})", file=path) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DataError(f"malformed TOML ({e})", file=path) from None
    if not doc:
        raise DataError("empty manifest (no keys and no [files] table)", file=path)
    return doc, text


def read_manifest(directory, name: str = "manifest.toml") -> dict:
    """Read a manifest; :class:`DataError` naming the file when it is missing, malformed or empty."""
    return read_manifest_text(directory, name)[0]


_KEY_LINE = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")
_TABLE_LINE = re.compile(r"""\s*\[\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_.-]+))\s*\]""")


def key_line(text: str, key: str, table: str | None = "files") -> int:
    """Line number (1-based) of ``key = ...`` inside ``[table]`` of a TOML text; 0 when not found.

    A light scan (bare, basic and literal keys; ``table=None`` = the top level), enough to point a
    reader at the line of a manifest entry.
    """
    current = None
    for no, ln in enumerate(text.splitlines(), 1):
        m = _TABLE_LINE.match(ln)
        if m and not ln.lstrip().startswith("[["):
            current = next(g for g in m.groups() if g is not None)
            continue
        if current != table:
            continue
        m = _KEY_LINE.match(ln)
        if m:
            basic, literal, bare = m.groups()
            k = bare if bare is not None else literal if literal is not None else _unescape(basic)
            if k == key:
                return no
    return 0


def _unescape(s: str) -> str:
    try:
        return tomllib.loads(f'k = "{s}"')["k"]
    except tomllib.TOMLDecodeError:
        return s


@dataclass(frozen=True)
class FileProblem:
    """One defect of a manifest's ``[files]``: ``file`` is ``manifest.toml`` (with its ``line``) when
    the entry itself is bad, else the listed file (line 0)."""

    file: str
    line: int
    message: str


def listed_path(directory, fname) -> tuple[Path | None, str | None]:
    """The file a ``[files]`` entry names, or ``(None, why)`` when the name is not acceptable.

    Acceptable: a relative path (``/`` separators) inside ``directory``, without ``..`` or empty
    parts, that stays inside after symbolic links are resolved. Nothing is opened.
    """
    if not isinstance(fname, str) or not fname:
        return None, "the name must be a non-empty relative path"
    if "\\" in fname or "\0" in fname or PureWindowsPath(fname).drive:
        return None, "the name must be a relative path with '/' separators"
    pp = PurePosixPath(fname)
    if pp.is_absolute():
        return None, "an absolute path is not allowed (names are relative to the directory)"
    if any(part in ("..", "") for part in fname.split("/")) or any(part == "." for part in fname.split("/")):
        return None, "the name must stay inside the directory (no '..', '.' or empty parts)"
    base = Path(directory)
    p = base / fname
    try:
        root = base.resolve(strict=True)
        real = p.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # a symlink loop
        return None, f"cannot resolve the path ({e})"
    if real != root and root not in real.parents:
        return None, f"the path leads outside the directory (to {real})"
    return p, None


def check_files(directory, manifest: dict, text: str = "", name: str = "manifest.toml") -> list[FileProblem]:
    """Every problem of a manifest's ``[files]`` table (empty when it is sound).

    An entry that is not a relative path inside ``directory``, or that names something other than
    a regular file (a directory, FIFO, socket, device), is a problem of ``manifest.toml`` at the
    entry's line (``text`` is the manifest's text); a missing file or a digest mismatch is a
    problem of the listed file. A FIFO is never opened (``os.stat`` first).
    """
    problems: list[FileProblem] = []
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        return [FileProblem(name, key_line(text, "files", None), "[files] must be a table of file = sha256")]
    for fname, digest in files.items():
        line = key_line(text, fname)
        p, why = listed_path(directory, fname)
        if p is None:
            problems.append(FileProblem(name, line, f"[files] {fname!r}: {why}"))
            continue
        if not isinstance(digest, str):
            problems.append(FileProblem(name, line, f"[files] {fname!r}: the value must be a sha256 text"))
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            problems.append(FileProblem(fname, 0, f"listed in {name} but missing"))
            continue
        except OSError as e:
            problems.append(FileProblem(name, line, f"[files] {fname!r}: cannot stat ({e.strerror or e})"))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(FileProblem(name, line, f"[files] {fname!r}: not a regular file "
                                                    f"({_kind(st.st_mode)})"))
            continue
        try:
            actual = sha256_file(p)
        except OSError as e:
            problems.append(FileProblem(fname, 0, f"cannot read ({e.strerror or e})"))
            continue
        if actual != digest:
            problems.append(FileProblem(fname, 0, f"sha256 mismatch: {name} says {digest}, file is {actual}"))
    return problems


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def verify_files(directory, manifest: dict, text: str = "") -> list[tuple[str, str]]:
    """Problems ``(file, message)`` of :func:`check_files` (kept for callers of the old form);
    a problem of the manifest itself reads ``manifest.toml``, ``"line N: ..."``."""
    return [(p.file, f"line {p.line}: {p.message}" if p.line else p.message)
            for p in check_files(directory, manifest, text)]
