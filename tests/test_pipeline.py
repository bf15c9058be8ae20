"""Settlement and grouping outputs do not depend on how the work is split (contract §8.3).

Every comparison is by the sha256 of each output file (:func:`digest`): ``cases.parquet``,
``hospitals.parquet``, ``hospitals.csv`` and ``manifest.json`` of a settlement, the Parquet / CSV file
of ``dipengine group``. Splits compared: batch sizes (1, 1,000, 1,000,000 rows and a few odd ones), one
Parquet file vs the same rows as a directory of files (even and odd boundaries, an empty file, a list
of files, small row groups), 1 vs 2 threads, the in-memory ``settle(...).write(dir)`` vs streaming
``settle_to(dir, ...)`` vs the CLI, the in-memory vs the spill-based duplicate pass and one vs many
estimate-mode benefit partitions; each in an annual clearing and a monthly run, with and without
estimate mode.

The manifest holds no timestamp or timing (docs/settlement.md "Outputs"), so runs on the *same input
path* are compared byte for byte, manifest included. It does name the run's input files:
``parameters.input`` (their paths) and ``sha256.inputs`` (path -> hash of each file), and, for an
annual clearing netting monthly runs, ``parameters.monthly`` / ``sha256.monthly`` (paths of the
monthly output directories). Those legitimately differ when the same cases come in other files or the
monthly runs sit in other directories, so only those keys are removed (:data:`INPUT_KEYS`,
:data:`MONTHLY_KEYS`) before the manifest is hashed in such comparisons; everything else in it must
agree byte for byte once re-serialised (``json.dumps(sort_keys=True)``).

The cases (a few thousand, generated once per module) contain planted bad rows of every reader
reason, duplicate ``case_id`` rows next to and far from their first occurrence (across file, batch and
row-group boundaries) and rows without recorded payments (estimated in estimate mode).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dipengine import benefits as benefits_mod
from dipengine import duplicates as duplicates_mod
from dipengine import reader
from dipengine.cli import cli
from dipengine.pipeline import settle, settle_to
from dipengine.policy import resolve_pricing_dir
from dipengine.rules import resolve_rules_dir
from dipengine.stream import group_file
from dipengine.synth import synth_region

YEAR = 2026
N_CASES = 2000  # the main input
N_SMALL = 80  # the input of the batch-size-1 runs (a batch costs some 30 ms)
RULES = str(resolve_rules_dir("demo"))  # the shipped rule set
PRICING = str(resolve_pricing_dir("440200/2026"))  # shipped tables, with a benefits.csv (estimate mode)

SETTLE_FILES = ("cases.parquet", "hospitals.parquet", "hospitals.csv", "special_review.parquet", "manifest.json")
MARKER = ".dipengine-output"
INPUT_KEYS = ("parameters.input", "sha256.inputs")
"""Manifest keys naming the input files (paths, and the hash of each file): run-dependent across file splits."""
MONTHLY_KEYS = ("parameters.monthly", "sha256.monthly")
"""Manifest keys naming the monthly output directories an annual clearing nets off."""

# (period, benefits): annual clearing and a monthly run, estimate mode on (the pricing dir's
# benefits.csv, the default) and off
MODES = [("2026", None), ("2026", False), ("2026-03", None), ("2026-03", False)]
MODE_IDS = ["annual", "annual-no-benefits", "monthly", "monthly-no-benefits"]


# ------------------------------------------------------------------------------------------ helpers

def _drop(doc: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        _drop(doc[head], rest)
    else:
        doc.pop(head)


def digest(out, drop=()) -> dict[str, str]:
    """name -> sha256 of each output file in ``out`` (a settlement directory, or one group output file).

    ``drop``: dotted manifest keys removed before ``manifest.json`` is hashed (it is then hashed as
    ``json.dumps(sort_keys=True)``); without it every file is hashed as written. A settlement
    directory must hold the four outputs and the output marker, nothing else (no spill left over);
    the marker only lists the files' sizes, so it is not hashed.
    """
    out = Path(out)
    if out.is_file():
        return {out.suffix: hashlib.sha256(out.read_bytes()).hexdigest()}
    assert sorted(p.name for p in out.iterdir()) == sorted((*SETTLE_FILES, MARKER)), sorted(out.iterdir())
    hashes = {}
    for name in SETTLE_FILES:
        data = (out / name).read_bytes()
        if name == "manifest.json" and drop:
            doc = json.loads(data)
            for key in drop:
                _drop(doc, key)
            data = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


def assert_same(runs: dict) -> None:
    """All runs (label -> :func:`digest`) agree with the first, file by file."""
    (ref_label, ref), *others = runs.items()
    for label, got in others:
        diff = sorted(k for k in ref if got.get(k) != ref[k])
        assert not diff, f"{label!r} differs from {ref_label!r} in {diff}"


def _manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))


class Runner:
    """Settlement runs of one input set into numbered directories under ``root``."""

    def __init__(self, root: Path, data: dict):
        self.root, self.data = root, data
        self.n = 0

    def _dir(self, label: str) -> Path:
        self.n += 1
        return self.root / f"{self.n:03d}-{label}"

    def to(self, source, period, benefits=None, *, batch_size=1_000_000, n_threads=1, **kw) -> Path:
        """Streaming :func:`settle_to`."""
        out = self._dir("stream")
        settle_to(out, self.data[source], RULES, PRICING, self.data["hospitals"], period, benefits=benefits,
                  batch_size=batch_size, n_threads=n_threads, **kw)
        return out

    def memory(self, source, period, benefits=None, *, batch_size=1_000_000, n_threads=1, **kw) -> Path:
        """In-memory :func:`settle`, written with ``SettlementResult.write``."""
        out = self._dir("memory")
        result = settle(self.data[source], RULES, PRICING, self.data["hospitals"], period, benefits=benefits,
                        batch_size=batch_size, n_threads=n_threads, **kw)
        result.write(out)
        return out

    def cli(self, source, period, benefits=None, *, n_threads=1, monthly=()) -> Path:
        """``dipengine settle`` (click's CliRunner)."""
        out = self._dir("cli")
        src = self.data[source]
        inputs = [str(s) for s in src] if isinstance(src, list) else [str(src)]
        args = ["settle", "--rules", RULES, "--pricing", PRICING, "--hospitals", str(self.data["hospitals"]),
                "--input", *inputs, "--period", period, "--out", str(out), "--threads", str(n_threads)]
        for d in monthly:
            args += ["--monthly", str(d)]
        if benefits is False:
            args.append("--no-benefits")
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, (res.output, res.exception)
        return out


def spill_duplicates(monkeypatch) -> list[str]:
    """Switch the reader to the spill-based duplicate pre-pass from 10 rows on (400 ids per
    partition, so several partitions); returns the list of the duplicate passes' kinds the runs then
    use (``RepeatMarker``: the pre-pass; ``SeenSet``: the in-memory set)."""
    kinds = []
    real = reader._duplicate_marker

    def marker(*args, **kwargs):
        m = real(*args, **kwargs)
        kinds.append(type(m).__name__)
        return m

    monkeypatch.setattr(reader, "DUPLICATE_SPILL_ROWS", 10)
    monkeypatch.setattr(duplicates_mod, "PARTITION_ROWS", 400)
    monkeypatch.setattr(reader, "_duplicate_marker", marker)
    return kinds


# ------------------------------------------------------------------------------------------ inputs

def _plant(cases: pa.Table, dups: dict[int, int], unpaid_every: int) -> pa.Table:
    """``cases`` with ``case_id[row] = case_id[first]`` for each ``row: first`` of ``dups``, and
    ``fund_paid`` / ``patient_paid`` null on every ``unpaid_every``-th row (from row 3; only
    ``fund_paid`` on every other one of those), so that estimate mode computes them."""
    ids = cases["case_id"].to_pylist()
    for row, first in dups.items():
        ids[row] = ids[first]
    n = cases.num_rows
    unpaid = np.zeros(n, bool)
    unpaid[3::unpaid_every] = True
    fund_only = unpaid.copy()
    fund_only[3::2 * unpaid_every] = False  # these lose both payments, the others fund_paid only
    out = cases.set_column(cases.schema.get_field_index("case_id"), "case_id", pa.array(ids, pa.string()))
    for name, mask in (("fund_paid", unpaid), ("patient_paid", unpaid & ~fund_only)):
        i = out.schema.get_field_index(name)
        col = out[name].combine_chunks()
        out = out.set_column(i, name, pc.if_else(pa.array(mask), pa.nulls(n, col.type), col))
    return out


def _write_parts(table: pa.Table, directory: Path, bounds) -> list[str]:
    """``table`` cut at ``bounds`` (row numbers) into ``directory/part-NNN.parquet``, in order."""
    directory.mkdir()
    cuts = [0, *bounds, table.num_rows]
    files = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        path = directory / f"part-{k:03d}.parquet"
        pq.write_table(table.slice(a, b - a), path)
        files.append(str(path))
    return files


# rows whose case_id repeats an earlier one: next to it across a file / batch boundary (1 after 0,
# 500 after 499, 1000 after 999), far from it (1500 <- 10, the last row <- 2), and a third
# occurrence (1800 <- 10); synth plants more, next to their first occurrence
DUPS = {1: 0, 500: 499, 1000: 999, 1500: 10, 1800: 10, N_CASES - 1: 2}
SMALL_DUPS = {1: 0, 40: 39, N_SMALL - 1: 5}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The module's inputs (generated once): name -> path, list of paths or glob."""
    d = tmp_path_factory.mktemp("pipeline-inputs")
    cases, hospitals = synth_region(YEAR, N_CASES, seed=21, bad_rows=0.03)
    pcsv.write_csv(hospitals, d / "hospitals.csv")
    main = _plant(cases, DUPS, unpaid_every=11)
    pq.write_table(main, d / "one.parquet")
    pq.write_table(main, d / "small-row-groups.parquet", row_group_size=97)
    _write_parts(main, d / "even", [500, 1000, 1500])
    odd = _write_parts(main, d / "odd", [1, 500])
    _write_parts(main, d / "ragged", [1, 1, 999, 1000, N_CASES - 1])  # an empty file, a one-row last file
    small_cases, _ = synth_region(YEAR, N_SMALL, seed=22, bad_rows=0.1, hospitals=hospitals)
    small = _plant(small_cases, SMALL_DUPS, unpaid_every=5)
    pq.write_table(small, d / "small.parquet")
    small_odd = _write_parts(small, d / "small-odd", [1, 40])
    return {
        "hospitals": str(d / "hospitals.csv"), "table": main,
        "one": str(d / "one.parquet"),  # the main input in one file
        "small_row_groups": str(d / "small-row-groups.parquet"),  # the same, in row groups of 97 rows
        "odd": str(d / "odd"),  # a directory of 3 files: 1, 499 and 1,500 rows
        "odd_list": odd,  # the same files as a list
        "ragged": str(d / "ragged"),  # 1, 0, 998, 1, 999 and 1 rows
        "even": str(d / "even"),  # 4 files of 500 rows
        "even_glob": str(d / "even" / "part-*.parquet"),  # the same as a glob
        "small": str(d / "small.parquet"),  # the 80-case input
        "small_odd": str(d / "small-odd"),  # the same in 1, 39 and 40 rows
        "small_odd_list": small_odd,
    }


@pytest.fixture()
def runner(data, tmp_path):
    return Runner(tmp_path, data)


# ------------------------------------------------------------------------------ the input is what we say

def test_inputs_hold_rejected_rows_duplicates_and_unpaid_rows(data, runner):
    """The comparisons below exercise the reader's edge cases: every planted reason is present,
    each planted duplicate is rejected as DUPLICATE_CASE (the first occurrence is kept), and estimate
    mode estimates the rows without recorded payments."""
    out = runner.to("one", "2026")
    cases = pq.read_table(out / "cases.parquet", columns=["case_id", "match_path", "reason", "paid_source"])
    assert cases["case_id"].equals(data["table"]["case_id"])
    reasons = cases["reason"].to_pylist()
    for row, first in DUPS.items():
        assert reasons[row] == "DUPLICATE_CASE", row
        assert reasons[first] != "DUPLICATE_CASE", first
    counts = _manifest(out)["counts"]
    assert {"BAD_DATES", "BAD_AMOUNT", "BAD_VALUE", "INVALID_DX", "INVALID_PROC", "MISSING_FIELD",
            "UNKNOWN_HOSPITAL", "DUPLICATE_CASE"} <= set(counts["reason"])
    assert counts["reason"]["DUPLICATE_CASE"] >= len(DUPS) + 5  # and those synth planted
    assert counts["match_path"]["rejected"] >= 0.025 * N_CASES
    assert counts["paid_source"]["estimated"] >= N_CASES // 11 - 10
    # a monthly run rejects the other months' cases (BAD_DATES): most rows
    assert _manifest(runner.to("one", "2026-03"))["counts"]["reason"]["BAD_DATES"] > N_CASES * 3 // 4


# ----------------------------------------------------------------------------------- settlement

@pytest.mark.parametrize("period,benefits", MODES, ids=MODE_IDS)
def test_settle_batch_size_and_threads(runner, period, benefits):
    """settle_to on one file: 1,000,000 rows per batch (one batch), 1,000 (1 and 2 threads) and 337
    (2 threads): every output file byte-identical, manifest included."""
    runs = {}
    for batch_size, n_threads in ((1_000_000, 1), (1000, 1), (1000, 2), (337, 2)):
        out = runner.to("one", period, benefits, batch_size=batch_size, n_threads=n_threads)
        runs[f"batch {batch_size}, {n_threads} thread(s)"] = digest(out)
    assert_same(runs)


def test_settle_batch_size_one(runner):
    """Annual clearing in estimate mode of an 80-case input (duplicates, bad rows, unpaid rows) one
    row per batch (2 threads), and one row per batch over three files (1, 39, 40 rows), vs 1,000,000
    rows per batch: identical outputs (byte for byte on the same file; across the files without
    the manifest's input keys). Batch size 1 makes every duplicate, every patient's admissions and
    every row group span batches."""
    outs = {
        "batch 1,000,000": runner.to("small", "2026", batch_size=1_000_000),
        "batch 1, 2 threads": runner.to("small", "2026", batch_size=1, n_threads=2),
    }
    assert_same({k: digest(v) for k, v in outs.items()})
    outs["batch 1, odd files"] = runner.to("small_odd", "2026", batch_size=1, n_threads=1)
    assert_same({k: digest(v, drop=INPUT_KEYS) for k, v in outs.items()})
    assert _manifest(outs["batch 1, 2 threads"])["counts"]["reason"]["DUPLICATE_CASE"] >= len(SMALL_DUPS)


@pytest.mark.parametrize("period,benefits", MODES, ids=MODE_IDS)
def test_settle_file_split(runner, data, period, benefits):
    """One Parquet file vs the same rows in files at odd boundaries (1, 499, rest), with an empty
    file and a one-row file, as a glob of 4 files of 500, and as one file of 97-row row groups, at
    several batch sizes and thread counts. All files identical once the manifest's input paths and
    per-file hashes (:data:`INPUT_KEYS`) are removed; the manifest names exactly the files read."""
    runs = {}
    for source, batch_size, n_threads in (("one", 1_000_000, 1), ("odd", 1000, 2), ("ragged", 337, 1),
                                          ("even_glob", 1_000_000, 2), ("small_row_groups", 1_000_000, 1)):
        out = runner.to(source, period, benefits, batch_size=batch_size, n_threads=n_threads)
        runs[f"{source}, batch {batch_size}, {n_threads} thread(s)"] = digest(out, drop=INPUT_KEYS)
        if source == "odd":
            m = _manifest(out)
            assert m["parameters"]["input"] == data["odd_list"]
            assert sorted(m["sha256"]["inputs"]) == data["odd_list"]
    assert_same(runs)


@pytest.mark.parametrize("period,benefits", MODES, ids=MODE_IDS)
def test_settle_memory_stream_and_cli(runner, period, benefits):
    """On the odd split: settle(...).write(dir) (1,000-row batches and one batch) vs settle_to(dir,
    ...) vs ``dipengine settle`` with the directory (2 threads) and with the same files as several
    ``--input`` values (1 thread): byte-identical outputs, manifest included (the same files)."""
    runs = {
        "settle_to": digest(runner.to("odd", period, benefits, batch_size=1000, n_threads=2)),
        "settle().write": digest(runner.memory("odd", period, benefits, batch_size=1000, n_threads=2)),
        "settle().write, one batch": digest(runner.memory("odd", period, benefits, n_threads=1)),
        "cli, directory, 2 threads": digest(runner.cli("odd", period, benefits, n_threads=2)),
        "cli, list of files, 1 thread": digest(runner.cli("odd_list", period, benefits, n_threads=1)),
    }
    assert_same(runs)


@pytest.mark.parametrize("period,benefits", [MODES[0], MODES[3]], ids=[MODE_IDS[0], MODE_IDS[3]])
def test_settle_duplicate_pass_memory_vs_spill(runner, monkeypatch, period, benefits):
    """The reader's duplicate pass: the in-memory set (the default below DUPLICATE_SPILL_ROWS rows)
    vs the spill-based pre-pass (DUPLICATE_SPILL_ROWS = 10, 400 ids per partition), on one file,
    the ragged split and 97-row row groups, streaming and in memory: identical outputs (byte for
    byte on the same file; across files without the manifest's input keys)."""
    base = {"memory pass, one file": runner.to("one", period, benefits, batch_size=1000, n_threads=2)}
    markers = spill_duplicates(monkeypatch)
    spilled = {
        "spill pass, one file": runner.to("one", period, benefits, batch_size=1000, n_threads=2),
        "spill pass, one file, in memory": runner.memory("one", period, benefits, batch_size=337, n_threads=1),
        "spill pass, ragged files": runner.to("ragged", period, benefits, batch_size=337, n_threads=2),
        "spill pass, small row groups": runner.to("small_row_groups", period, benefits, batch_size=1000),
    }
    assert len(markers) >= len(spilled) and set(markers) == {"RepeatMarker"}, markers  # the pre-pass ran
    same_file = {k: v for k, v in {**base, **spilled}.items() if "one file" in k}
    assert_same({k: digest(v) for k, v in same_file.items()})
    assert_same({k: digest(v, drop=INPUT_KEYS) for k, v in {**base, **spilled}.items()})


@pytest.mark.parametrize("period", ["2026", "2026-03"], ids=["annual", "monthly"])
def test_settle_benefit_partitions(runner, monkeypatch, period):
    """Estimate mode partitions the cases by patient (benefits.BenefitSpiller): 32 buckets joined
    into one partition (the default at this size) vs 3 buckets split into partitions of at most
    200 rows, walked on 2 threads: byte-identical outputs, streaming and in memory."""
    runs = {"default partitions": digest(runner.to("one", period, batch_size=1000, n_threads=2))}
    monkeypatch.setattr(benefits_mod, "SPILL_BUCKETS", 3)
    monkeypatch.setattr(benefits_mod, "PARTITION_ROWS", 200)
    runs["small partitions"] = digest(runner.to("one", period, batch_size=1000, n_threads=2))
    runs["small partitions, in memory"] = digest(runner.memory("one", period, batch_size=337))
    assert_same(runs)


@pytest.mark.parametrize("period", ["2026", "2026-03"], ids=["annual", "monthly"])
def test_estimate_mode_pays_what_the_whole_table_computes(runner, data, monkeypatch, period):
    """The streaming estimate mode (benefit terms on the pass-1 workers, admissions walked per
    patient partition, payments merged back in pass 2) pays every case exactly what
    ``apply_benefits`` on the whole normalised table does, and each statement's patient and fund
    payments are the sums of its in-pool cases' (the totals added per partition)."""
    from dipengine.benefits import load_benefits
    from dipengine.hospitals import read_hospitals
    from dipengine.settlement import apply_benefits

    monkeypatch.setattr(benefits_mod, "PARTITION_ROWS", 300)  # several partitions, joined and split
    out = runner.to("one", period, batch_size=337, n_threads=2)
    cases = pq.read_table(out / "cases.parquet")
    hosp = read_hospitals(data["hospitals"])
    whole = apply_benefits(reader.read_cases(data["one"], hosp, period=period), load_benefits([PRICING]), hosp)
    for name in ("patient_paid_fen", "fund_paid_fen", "paid_source", "fund_benefit_fen", "fund_diff_fen",
                 "benefit_note"):
        assert cases[name].to_pylist() == whole[name].to_pylist(), name
    assert "estimated" in cases["paid_source"].to_pylist()
    in_pool = cases.filter(pc.fill_null(cases["in_pool"], False))
    sums = in_pool.group_by(["hospital_id", "pool"]).aggregate([("patient_paid_fen", "sum"),
                                                                 ("fund_paid_fen", "sum")])
    expected = {(h, p): (a or 0, b or 0) for h, p, a, b in zip(*(sums[c].to_pylist() for c in (
        "hospital_id", "pool", "patient_paid_fen_sum", "fund_paid_fen_sum")))}
    statements = pq.read_table(out / "hospitals.parquet").to_pylist()
    assert statements
    for row in statements:
        # recorded_fen: what the fund recorded as paid (dip-rules §7)
        assert (row["patient_paid_fen"], row["recorded_fen"]) == expected.get((row["hospital_id"], row["pool"]),
                                                                              (0, 0)), row


def test_case_results_plain_encode_per_case_columns(runner):
    """cases.parquet dictionary-encodes codes, names and flags but not the columns with about one
    value per case (case_id, ratio, points, money): same values, a third less writing time."""
    out = runner.to("one", "2026")
    meta = pq.ParquetFile(out / "cases.parquet").metadata
    rg = meta.row_group(0)
    encodings = {rg.column(i).path_in_schema: rg.column(i).encodings for i in range(rg.num_columns)}
    for name in ("case_id", "ratio", "points_e4", "standard_fen", "fund_due_fen", "patient_paid_fen"):
        assert "RLE_DICTIONARY" not in encodings[name] and "PLAIN_DICTIONARY" not in encodings[name], name
    for name in ("dip_code", "hospital_id", "match_path", "pool"):
        assert "RLE_DICTIONARY" in encodings[name] or "PLAIN_DICTIONARY" in encodings[name], name


@pytest.mark.parametrize("benefits", [None, False], ids=["benefits", "no-benefits"])
def test_annual_clearing_over_monthly_runs(runner, benefits):
    """Monthly runs (January, February) of one file in one batch (settle_to) and of the odd split
    (CLI, 2 threads) give identical monthly outputs; the annual clearings netting each set (settle_to,
    in-memory settle, CLI) give identical outputs too, once the manifest's input and monthly paths
    (:data:`INPUT_KEYS`, :data:`MONTHLY_KEYS`) are removed; the monthly statements' hashes recorded
    in the manifest are then compared as a list."""
    months = ("2026-01", "2026-02")
    a = [runner.to("one", m, benefits) for m in months]
    b = [runner.cli("odd", m, benefits, n_threads=2) for m in months]
    for x, y in zip(a, b):
        assert_same({"one file": digest(x, drop=INPUT_KEYS), "odd files, cli": digest(y, drop=INPUT_KEYS)})
    annual = {
        "one file": runner.to("one", "2026", benefits, monthly=[str(p) for p in a]),
        "odd files, in memory": runner.memory("odd", "2026", benefits, batch_size=1000, n_threads=2,
                                              monthly=[str(p) for p in b]),
        "odd files, cli": runner.cli("odd", "2026", benefits, n_threads=2, monthly=b),
    }
    assert_same({k: digest(v, drop=INPUT_KEYS + MONTHLY_KEYS) for k, v in annual.items()})
    hashes = [sorted(_manifest(v)["sha256"]["monthly"].values()) for v in annual.values()]
    assert all(h == hashes[0] for h in hashes) and len(hashes[0]) == len(months)
    st = pq.read_table(annual["one file"] / "hospitals.parquet")
    assert pc.sum(st["monthly_paid_fen"]).as_py() > 0  # the months were netted off


# ------------------------------------------------------------------------------------------- group

@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_group_batch_size_threads_and_file_split(data, tmp_path, suffix):
    """``dipengine group`` output (Parquet and CSV) byte-identical across batch sizes 1,000,000,
    1,000 and 337, 1 and 2 threads, one file vs directories split evenly / at odd boundaries /
    with an empty file, a glob, small row groups, and the CLI."""
    runs = {}
    for k, (source, batch_size, threads) in enumerate((
            ("one", 1_000_000, 1), ("one", 1000, 2), ("one", 337, 1), ("even", 1_000_000, 2), ("odd", 1000, 1),
            ("ragged", 337, 2), ("even_glob", 1000, 2), ("small_row_groups", 1_000_000, 2))):
        out = tmp_path / f"{k}{suffix}"
        group_file(data[source], RULES, out, hospitals=data["hospitals"], threads=threads, batch_size=batch_size)
        runs[f"{source}, batch {batch_size}, {threads} thread(s)"] = digest(out)
    for source in ("one", "odd"):
        out = tmp_path / f"cli-{source}{suffix}"
        res = CliRunner().invoke(cli, ["group", "--rules", RULES, "--input", data[source], "--hospitals",
                                       data["hospitals"], "--out", str(out), "--threads", "2"])
        assert res.exit_code == 0, (res.output, res.exception)
        runs[f"cli, {source}"] = digest(out)
    assert_same(runs)


def test_group_batch_size_one(data, tmp_path):
    """``dipengine group`` of the 80-case input one row per batch (one file and three files) vs
    one batch: byte-identical Parquet output."""
    runs = {}
    for source, batch_size, threads in (("small", 1_000_000, 1), ("small", 1, 1), ("small", 1, 2),
                                        ("small_odd", 1, 2), ("small_odd_list", 1000, 1)):
        out = tmp_path / f"{source}-{batch_size}-{threads}.parquet"
        group_file(data[source], RULES, out, hospitals=data["hospitals"], threads=threads, batch_size=batch_size)
        runs[f"{source}, batch {batch_size}, {threads} thread(s)"] = digest(out)
    assert_same(runs)


def test_group_duplicate_pass_memory_vs_spill(data, tmp_path, monkeypatch):
    """``group`` with the in-memory vs the spill-based duplicate pass (DUPLICATE_SPILL_ROWS = 10):
    byte-identical output, on one file and on the odd split."""
    out = tmp_path / "memory.parquet"
    group_file(data["one"], RULES, out, hospitals=data["hospitals"], threads=2, batch_size=1000)
    runs = {"memory pass": digest(out)}
    markers = spill_duplicates(monkeypatch)
    for source in ("one", "odd", "ragged", "small_row_groups"):
        out = tmp_path / f"spill-{source}.parquet"
        group_file(data[source], RULES, out, hospitals=data["hospitals"], threads=2, batch_size=1000)
        runs[f"spill pass, {source}"] = digest(out)
    assert markers == ["RepeatMarker"] * 4, markers  # the pre-pass ran
    assert_same(runs)
