"""The README's Python tour runs as written, from a fresh working directory."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    """The ```python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) == 1, f"expected one python block in the Python API section, found {len(blocks)}"
    return blocks[0]


def test_tour_is_complete_code():
    code = python_api_block()
    compile(code, "README.md", "exec")  # no `...` placeholders or other pseudo-code
    assert "grouper_rules/" not in code and "pricing_tables/" not in code, "paths into a source checkout"


def test_tour_runs_in_a_fresh_directory(tmp_path):
    script = tmp_path / "tour.py"
    script.write_text(python_api_block(), encoding="utf-8")
    work = tmp_path / "fresh"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # it wrote what it says, into the working directory it ran in
    for name in ("cases.parquet", "hospitals.csv", "grouped.parquet", "annual/manifest.json",
                 "annual/hospitals.parquet"):
        assert (work / name).is_file(), name
    # the region fits the shipped budgets: both pools float, so Σ fund due = fund available, and the
    # clearing is explained in words
    assert proc.stdout.count("(= fund available, to the fen)") == 2, proc.stdout
    assert "overspend shared" in proc.stdout and "surplus withheld" in proc.stdout
