"""Manifests (issue 15, deliver 4 and 8): TOML written with tomli_w, byte-stable, any string or key
round-trips; ``[files]`` entries are relative paths inside the directory naming regular files."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dipengine.errors import DataError
from dipengine.io import sha256_file
from dipengine.manifest import (
    check_files, dumps_toml, key_line, read_manifest, read_manifest_text, verify_files, write_manifest)

# --------------------------------------------------------------------------- writing


def test_strings_with_newlines_and_non_bare_keys_round_trip():
    # The hand-written writer emitted a raw newline inside "..." and the key a.b bare (= a nested
    # table): invalid TOML, or another document.
    doc = {
        "name": "line one\nline two\ttab \"quoted\" back\\slash 中文 \x7f",
        "version": "1",
        "files": {"groups.csv": "0" * 64, "a b.csv": "1" * 64, "x.y": "2", "中文.csv": "3", "": "4"},
        "build": {"a.b": "c", "list": ["x\ny", "z"], "when": dt.date(2026, 1, 1), "n": 3, "f": 0.1,
                  "ok": True, "t": ("a", "b")},
    }
    text = dumps_toml(doc)
    back = tomllib.loads(text)
    assert back["name"] == doc["name"]
    assert back["files"] == doc["files"]
    assert back["build"] == {**doc["build"], "t": ["a", "b"]}


def test_written_manifest_is_byte_identical_across_runs(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "t.csv").write_text("x\n1\n", encoding="utf-8")
        write_manifest(tmp_path / d, {"name": "n", "version": "1", "effective_from": dt.date(2027, 1, 1),
                                      "build": {"years": [2023, 2024], "w": np.float64(2.0), "k": np.int64(5)}},
                       ["t.csv"])
    a, b = (tmp_path / "a" / "manifest.toml").read_bytes(), (tmp_path / "b" / "manifest.toml").read_bytes()
    assert a == b
    doc = tomllib.loads(a.decode())
    assert doc["build"] == {"years": [2023, 2024], "w": 2.0, "k": 5}
    assert doc["files"] == {"t.csv": sha256_file(tmp_path / "a" / "t.csv")}


def test_none_is_left_out_and_foreign_values_refused():
    assert tomllib.loads(dumps_toml({"a": None, "b": "x", "t": {"c": None, "d": 1}})) == {"b": "x", "t": {"d": 1}}
    with pytest.raises(ValueError, match="null"):
        dumps_toml({"a": [1, None]})
    with pytest.raises(ValueError, match="not a TOML value"):
        dumps_toml({"a": object()})


def test_key_line_finds_entries():
    text = dumps_toml({"name": "n", "files": {"groups.csv": "a", "a b.csv": "b", "sub/x.csv": "c"}})
    lines = text.splitlines()
    for key in ("groups.csv", "a b.csv", "sub/x.csv"):
        no = key_line(text, key)
        assert no and key in lines[no - 1]
    assert key_line(text, "name", None) == 1
    assert key_line(text, "missing.csv") == 0
    assert key_line("[files]\n'lit.csv' = 'x'\nbare = 'y'\n", "lit.csv") == 2


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("text", ["", "\n\n# only a comment\n"])
def test_empty_manifest_is_a_data_error_naming_the_file(tmp_path, text):
    (tmp_path / "manifest.toml").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_manifest(tmp_path)
    assert "manifest.toml" in str(e.value) and "empty manifest" in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_or_binary_manifest_is_a_data_error(tmp_path):
    (tmp_path / "manifest.toml").write_text("name = \n", encoding="utf-8")
    with pytest.raises(DataError, match="malformed TOML"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.toml").write_bytes(b"\xff\xfe name")
    with pytest.raises(DataError, match="not UTF-8"):
        read_manifest(tmp_path)


# --------------------------------------------------------------------------- [files] entries


def sealed(tmp_path, entries: dict) -> tuple[Path, dict, str]:
    d = tmp_path / "set"
    d.mkdir(exist_ok=True)
    (d / "groups.csv").write_text("x\n1\n", encoding="utf-8")
    doc = {"name": "n", "version": "1", "files": {"groups.csv": sha256_file(d / "groups.csv"), **entries}}
    text = dumps_toml(doc)
    (d / "manifest.toml").write_text(text, encoding="utf-8")
    return d, doc, text


@pytest.mark.parametrize("name, why", [
    ("../outside.csv", "inside the directory"),
    ("../../etc/shadow", "inside the directory"),
    ("sub/../../outside.csv", "inside the directory"),
    ("/etc/passwd", "absolute path"),
    ("./groups.csv", "inside the directory"),
    ("sub\\x.csv", "'/' separators"),
    ("C:/x.csv", "'/' separators"),
    ("", "non-empty"),
])
def test_entry_outside_the_directory_names_manifest_line_and_path(tmp_path, name, why):
    (tmp_path / "outside.csv").write_text("secret\n", encoding="utf-8")
    d, doc, text = sealed(tmp_path, {name: "0" * 64})
    (problem,) = check_files(d, doc, text)
    assert problem.file == "manifest.toml"
    assert problem.line == key_line(text, name) and problem.line > 0
    assert repr(name) in problem.message and why in problem.message
    assert verify_files(d, doc, text) == [("manifest.toml", f"line {problem.line}: {problem.message}")]


def test_symlink_leading_out_is_refused_and_one_inside_accepted(tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("secret\n", encoding="utf-8")
    d, _, _ = sealed(tmp_path, {})
    (d / "escape.csv").symlink_to(secret)
    (d / "alias.csv").symlink_to(d / "groups.csv")
    doc = {"name": "n", "files": {"groups.csv": sha256_file(d / "groups.csv"), "escape.csv": sha256_file(secret),
                                  "alias.csv": sha256_file(d / "groups.csv")}}
    text = dumps_toml(doc)
    (problem,) = check_files(d, doc, text)
    assert (problem.file, problem.line) == ("manifest.toml", key_line(text, "escape.csv"))
    assert "leads outside the directory" in problem.message


def test_fifo_is_refused_without_opening_it(tmp_path):
    d, _, _ = sealed(tmp_path, {})
    os.mkfifo(d / "pipe.csv")
    os.mkdir(d / "dir.csv")
    doc = {"name": "n", "files": {"groups.csv": sha256_file(d / "groups.csv"), "pipe.csv": "0" * 64,
                                  "dir.csv": "0" * 64}}
    text = dumps_toml(doc)
    result = []
    t = threading.Thread(target=lambda: result.append(check_files(d, doc, text)), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "check_files blocked on a FIFO"
    msgs = {p.message for p in result[0]}
    assert msgs == {"[files] 'pipe.csv': not a regular file (a FIFO)", "[files] 'dir.csv': not a regular file "
                                                                          "(a directory)"}
    assert all(p.file == "manifest.toml" and p.line > 0 for p in result[0])


def test_missing_file_and_mismatch_name_the_listed_file(tmp_path):
    d, doc, text = sealed(tmp_path, {"gone.csv": "0" * 64})
    doc["files"]["groups.csv"] = "f" * 64
    got = {(p.file, p.line, p.message.split(":")[0]) for p in check_files(d, doc, text)}
    assert got == {("gone.csv", 0, "listed in manifest.toml but missing"), ("groups.csv", 0, "sha256 mismatch")}


def test_files_must_be_a_table(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    text = 'name = "n"\nfiles = "groups.csv"\n'
    (problem,) = check_files(d, tomllib.loads(text), text)
    assert (problem.file, problem.line) == ("manifest.toml", 2) and "must be a table" in problem.message


def test_manifest_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "manifest.toml")
    with pytest.raises(DataError, match="not a regular file"):
        read_manifest_text(tmp_path)


def test_rules_check_refuses_a_fifo_and_a_path_outside_without_hanging(tmp_path, rules_features):
    """Before: ``rules check`` blocked forever on a FIFO listed in [files], and hashed ../../etc/shadow."""
    import shutil

    d = Path(shutil.copytree(rules_features, tmp_path / "rules"))
    os.mkfifo(d / "pipe.csv")
    (tmp_path / "outside.csv").write_text("secret\n", encoding="utf-8")
    text = (d / "manifest.toml").read_text(encoding="utf-8")
    text = text.replace("[files]\n", '[files]\n"pipe.csv" = "' + "0" * 64 + '"\n"../outside.csv" = "'
                        + sha256_file(tmp_path / "outside.csv") + '"\n')
    (d / "manifest.toml").write_text(text, encoding="utf-8")
    env = dict(os.environ, DIPENGINE_CACHE="0")
    res = subprocess.run([sys.executable, "-m", "dipengine", "rules", "check", str(d)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stdout.splitlines()
    pipe_line, out_line = key_line(text, "pipe.csv"), key_line(text, "../outside.csv")
    assert f"manifest.toml:{pipe_line}:files: [files] 'pipe.csv': not a regular file (a FIFO)" in lines
    assert any(ln.startswith(f"manifest.toml:{out_line}:files: [files] '../outside.csv': ") for ln in lines)
    assert sha256_file(tmp_path / "outside.csv") not in res.stdout


def test_rules_check_empty_manifest_is_one_line_without_traceback(tmp_path, rules_features):
    import shutil

    d = Path(shutil.copytree(rules_features, tmp_path / "rules"))
    (d / "manifest.toml").write_text("", encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "dipengine", "rules", "check", str(d)], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, DIPENGINE_CACHE="0"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stdout.splitlines()[0] == "manifest.toml:0:: empty manifest (no keys and no [files] table)"
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1
