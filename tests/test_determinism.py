"""Every output file is byte-identical across runs, thread counts and batch sizes (issue 15, item 5).

``group``, ``settle`` and ``catalog build`` run twice with 1 and 2 threads on the same small
synthetic inputs; the sha256 of each output file must agree. Timestamps may only sit in a
manifest's ``created`` field, which is removed
before hashing.
"""
from __future__ import annotations

import hashlib
import json
import re

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main
from dipengine.synth import synth_region

REPO_RULES = "demo"  # the shipped rule set, by name (any working directory)
TIMESTAMP_KEYS = ("created",)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    cases, hospitals = synth_region(2026, 20000, seed=3, bad_rows=0.01)
    pq.write_table(cases, d / "cases.parquet")
    pcsv.write_csv(hospitals, d / "hospitals.csv")
    history = []
    for year in (2023, 2024, 2025):
        h, _ = synth_region(year, 20000, seed=year)
        pq.write_table(h, d / f"history_{year}.parquet")
        history.append(str(d / f"history_{year}.parquet"))
    return {"dir": d, "cases": str(d / "cases.parquet"), "hospitals": str(d / "hospitals.csv"), "history": history}


def _content(path) -> bytes:
    data = path.read_bytes()
    if path.name == "manifest.json":
        doc = json.loads(data)
        for k in TIMESTAMP_KEYS:
            doc.pop(k, None)
        return json.dumps(doc, sort_keys=True).encode()
    if path.name == "manifest.toml":  # a rule set's / pricing manifest: drop the build time lines
        pattern = rb"(?m)^(" + b"|".join(k.encode() for k in TIMESTAMP_KEYS) + rb")\s*=.*\n"
        return re.sub(pattern, b"", data)
    return data


def _hashes(out) -> dict[str, str]:
    """relative path -> sha256 of every file under ``out`` (or of ``out`` itself)."""
    files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file())
    assert files, f"nothing written at {out}"
    return {str(p.relative_to(out.parent)): hashlib.sha256(_content(p)).hexdigest() for p in files}


def _same(runs: dict) -> None:
    """All runs (name -> {file: hash}) wrote the same files with the same bytes."""
    names = list(runs)
    ref = runs[names[0]]
    for name in names[1:]:
        strip = {k.split("/", 1)[-1]: v for k, v in runs[name].items()}
        want = {k.split("/", 1)[-1]: v for k, v in ref.items()}
        assert strip.keys() == want.keys(), (name, sorted(strip), sorted(want))
        diff = [k for k in want if strip[k] != want[k]]
        assert not diff, f"{name} differs from {names[0]} in {diff}"


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_group_output_is_byte_identical_across_runs_and_threads(inputs, suffix):
    d = inputs["dir"]
    runs = {}
    for rep in (1, 2):
        for threads in (1, 2):
            out = d / f"group_{rep}_{threads}{suffix}"
            assert main(["group", "--rules", REPO_RULES, "--input", inputs["cases"], "--hospitals",
                         inputs["hospitals"], "--out", str(out), "--threads", str(threads)]) == 0
            runs[f"run {rep}, {threads} thread(s)"] = {"group": _hashes(out)[out.name]}
    _same(runs)


def test_group_file_output_does_not_depend_on_the_batch_size(inputs):
    from dipengine.stream import group_file

    d = inputs["dir"]
    runs = {}
    for batch_size, threads in ((131072, 2), (4096, 2), (7001, 1), (20000, 2)):
        out = d / f"group_b{batch_size}_{threads}.parquet"
        group_file(inputs["cases"], REPO_RULES, out, hospitals=inputs["hospitals"], threads=threads,
                   batch_size=batch_size)
        runs[f"batch {batch_size}, {threads} thread(s)"] = {"group": _hashes(out)[out.name]}
    _same(runs)


def test_group_dictionary_pages_hold_no_leftover_bytes(inputs):
    # The rule set's group_type column repeats a few values once per group: handed to Arrow's
    # Parquet writer as such, it left unset memory in the dictionary page (and plain pages)
    out = inputs["dir"] / "group_dict.parquet"
    assert main(["group", "--rules", REPO_RULES, "--input", inputs["cases"], "--out", str(out)]) == 0
    md = pq.ParquetFile(out).metadata
    names = pq.read_schema(out).names
    for rg in range(md.num_row_groups):
        for name in ("group_type", "match_path", "treat_class"):
            col = md.row_group(rg).column(names.index(name))
            assert col.has_dictionary_page and "RLE_DICTIONARY" in col.encodings, (name, col.encodings)
            # dictionary indices of a few values: well under a byte per row (plain pages: 8 or more)
            assert col.total_uncompressed_size < col.num_values, (name, col.total_uncompressed_size)
    t = pq.read_table(out)
    assert set(t["group_type"].drop_null().to_pylist()) <= {"core", "basic", "comprehensive", "blank"}


def test_settle_outputs_are_byte_identical_across_runs_and_threads(inputs):
    d = inputs["dir"]
    runs = {}
    for rep in (1, 2):
        for threads in (1, 2):
            out = d / f"settle_{rep}_{threads}"
            assert main(["settle", "--rules", REPO_RULES, "--pricing", "440200/2026", "--hospitals",
                         inputs["hospitals"], "--input", inputs["cases"], "--period", "2026", "--out", str(out),
                         "--threads", str(threads)]) == 0
            runs[f"run {rep}, {threads} thread(s)"] = _hashes(out)
    assert {"cases.parquet", "manifest.json"} <= {k.split("/", 1)[-1] for k in runs["run 1, 1 thread(s)"]}
    _same(runs)


def test_catalog_build_outputs_are_byte_identical_across_runs_and_threads(inputs, monkeypatch):
    d = inputs["dir"]
    runs = {}
    for rep in (1, 2):
        for threads in ("1", "2"):
            monkeypatch.setenv("OMP_NUM_THREADS", threads)  # the reader's and grouper's worker threads
            out, pricing = d / f"catalog_{rep}_{threads}", d / f"pricing_{rep}_{threads}"
            assert main(["catalog", "build", "--history", *inputs["history"], "--hospitals", inputs["hospitals"],
                         "--out", str(out), "--pricing-out", str(pricing)]) == 0
            runs[f"run {rep}, {threads} thread(s)"] = {**_hashes(out), **{
                "pricing/" + k.split("/", 1)[-1]: v for k, v in _hashes(pricing).items()}}
    _same(runs)
