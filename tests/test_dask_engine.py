"""The Dask engine (``dipengine[dask]``) writes the single-process run's files, byte for byte.

Runs on a ``distributed.LocalCluster`` of 2 worker processes (one thread each), shared by the
module. Inputs hold rejected rows, ``case_id`` repeats across pieces and patients with
admissions in several pieces, so every cross-piece state (duplicates, benefits caps and repeat
admissions, totals) is exercised.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

distributed = pytest.importorskip("distributed", reason='the Dask engine needs pip install "dipengine[dask]"')

from dipengine import dask_engine, pipeline  # noqa: E402
from dipengine.cli import main  # noqa: E402
from dipengine.errors import DataError  # noqa: E402
from dipengine.synth import synth_region  # noqa: E402

RULES, PRICING = "demo", "440200/2026"


def digest(directory) -> dict:
    """sha256 of every file of an output directory."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(Path(directory).iterdir())}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    cases, hospitals = synth_region(2026, 4000, seed=5, bad_rows=0.03)
    # case_id repeats: rows far apart (other pieces) take the ids of early rows
    ids = cases["case_id"].to_pylist()
    for dst, src in ((3100, 10), (3999, 2500), (1500, 1499)):
        ids[dst] = ids[src]
    cases = cases.set_column(cases.schema.get_field_index("case_id"), "case_id", pa.array(ids, pa.string()))
    # patients with admissions spread over the year's rows (annual caps, repeat admissions)
    pids = cases["patient_id"].to_pylist()
    for k in range(0, 4000, 37):
        pids[k] = f"P-SPREAD-{k % 5}"
    cases = cases.set_column(cases.schema.get_field_index("patient_id"), "patient_id", pa.array(pids, pa.string()))
    # payments not recorded on a third of the cases: estimate mode computes them (benefits.csv)
    blank = pa.array(np.arange(cases.num_rows) % 3 == 0)
    for name in ("fund_paid", "patient_paid"):
        col = cases[name].combine_chunks()
        cases = cases.set_column(cases.schema.get_field_index(name), name,
                                 pc.if_else(blank, pa.nulls(len(col), col.type), col))
    one = root / "cases.parquet"
    pq.write_table(cases, one, row_group_size=700)
    split = root / "split"
    split.mkdir()
    for i, (a, b) in enumerate(((0, 1), (1, 500), (500, 2600), (2600, 4000))):
        pq.write_table(cases.slice(a, b - a), split / f"part-{i}.parquet", row_group_size=450)
    hosp = root / "hospitals.csv"
    import pyarrow.csv as pcsv

    pcsv.write_csv(hospitals, hosp)
    return {"one": one, "split": split, "hospitals": hosp, "root": root, "n": cases.num_rows}


def _local(region, out, period, source="one", **kw):
    pipeline.settle_to(out, str(region[source]), RULES, PRICING, str(region["hospitals"]), period, **kw)
    return digest(out)


def _dask(region, out, period, client, source="one", **kw):
    dask_engine.settle_to(out, str(region[source]), RULES, PRICING, str(region["hospitals"]), period,
                          client=client, **kw)
    return digest(out)


def test_pieces_join_row_groups_and_number_rows(region):
    parts = dask_engine.pieces([str(region["one"])], piece_rows=1500)
    assert [p.row_groups for p in parts] == [(0, 1), (2, 3), (4, 5)]
    assert [p.offset for p in parts] == [0, 1400, 2800]
    assert sum(p.rows for p in parts) == region["n"]
    files = sorted(str(f) for f in region["split"].iterdir())
    parts = dask_engine.pieces(files, piece_rows=1)  # one row group each, numbered across files
    assert [p.offset for p in parts][:4] == [0, 1, 451, 500]
    assert sum(p.rows for p in parts) == region["n"]
    with pytest.raises(ValueError):
        dask_engine.pieces(files, piece_rows=0)


@pytest.mark.parametrize("piece_rows", [1, 1500, 1 << 20])
def test_annual_with_benefits_is_byte_identical(region, client, tmp_path, piece_rows):
    want = _local(region, tmp_path / "local", "2026")
    got = _dask(region, tmp_path / "dask", "2026", client, piece_rows=piece_rows)
    assert got == want
    cases = pq.read_table(tmp_path / "dask" / "cases.parquet")
    assert cases.num_rows == region["n"]
    reasons = cases["reason"].to_pylist()
    assert all(reasons[r] == "DUPLICATE_CASE" for r in (1500, 3100, 3999))  # repeats across pieces found
    assert "estimated" in set(cases["paid_source"].to_pylist())  # estimate mode ran on the workers


def test_dataset_of_files_and_monthly_runs_are_byte_identical(region, client, tmp_path):
    assert _dask(region, tmp_path / "d1", "2026", client, source="split", piece_rows=1000) == \
        _local(region, tmp_path / "l1", "2026", source="split")
    assert _dask(region, tmp_path / "d2", "2026-05", client, piece_rows=900, benefits=False) == \
        _local(region, tmp_path / "l2", "2026-05", benefits=False)


def test_annual_clearing_nets_off_monthly_runs(region, client, tmp_path):
    months = []
    for m in ("2026-01", "2026-02"):
        pipeline.settle_to(tmp_path / m, str(region["one"]), RULES, PRICING, str(region["hospitals"]), m)
        months.append(str(tmp_path / m))
    assert _dask(region, tmp_path / "d", "2026", client, monthly=months, piece_rows=2000) == \
        _local(region, tmp_path / "l", "2026", monthly=months)


def test_clearing_inputs_are_byte_identical(region, client, tmp_path):
    """Prepayments and audit deductions (issue 17 item 7) are read by prepare and applied by finish
    on the client: the same files on both engines."""
    import pyarrow.csv as pcsv

    ids = pcsv.read_csv(region["hospitals"])["hospital_id"].to_pylist()
    (tmp_path / "pre.csv").write_text("hospital_id,amount,pool\n" + "".join(
        f"{h},{1000 + i}.5{i % 10},{'employee' if i % 2 else ''}\n" for i, h in enumerate(ids[:10])), encoding="utf-8")
    (tmp_path / "ded.csv").write_text("hospital_id,amount,reason\n" + "".join(
        f"{h},{i * 37}.01,audit {i % 3}\n" for i, h in enumerate(ids[::3])), encoding="utf-8")
    m = "2026-03"
    pipeline.settle_to(tmp_path / m, str(region["one"]), RULES, PRICING, str(region["hospitals"]), m)
    kw = dict(monthly=[str(tmp_path / m)], prepayments=str(tmp_path / "pre.csv"),
              deductions=str(tmp_path / "ded.csv"))
    want = _local(region, tmp_path / "l", "2026", **kw)
    assert _dask(region, tmp_path / "d", "2026", client, piece_rows=1500, **kw) == want
    stm = pq.read_table(tmp_path / "d" / "hospitals.parquet")
    assert {"deduction_fen", "fund_due_net_fen", "prepayment_fen"} <= set(stm.column_names)


def test_cli_engine_dask_with_a_scheduler_address(region, client, tmp_path):
    args = ["settle", "--rules", RULES, "--pricing", PRICING, "--hospitals", str(region["hospitals"]),
            "--input", str(region["one"]), "--period", "2026"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    assert main(args + ["--out", str(tmp_path / "dask"), "--engine", "dask",
                        "--scheduler", client.scheduler.address]) == 0
    assert digest(tmp_path / "dask") == digest(tmp_path / "local")


def test_cli_engine_options_are_checked(region, tmp_path, capsys):
    base = ["settle", "--rules", RULES, "--pricing", PRICING, "--hospitals", str(region["hospitals"]),
            "--period", "2026", "--out", str(tmp_path / "o")]
    assert main(base + ["--input", str(region["one"]), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "--engine dask" in capsys.readouterr().err
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id\nC1\n", encoding="utf-8")
    assert main(base + ["--input", str(csv), "--engine", "dask"]) == 1
    err = capsys.readouterr().err
    assert "Parquet" in err and "cases.csv" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_bad_row_group_stops_the_run_before_anything_is_written(region, client, tmp_path):
    bad = tmp_path / "bad.parquet"
    t = pq.read_table(region["one"]).slice(0, 50)
    pq.write_table(t.drop_columns(["main_dx"]), bad)
    with pytest.raises(DataError, match="main_dx"):
        dask_engine.settle_to(tmp_path / "o", str(bad), RULES, PRICING, str(region["hospitals"]), "2026",
                              client=client)
    assert not (tmp_path / "o").exists()


def test_repeats_given_to_the_reader_replace_its_duplicate_pass(region):
    from dipengine.reader import iter_cases, repeat_rows

    rows, n = repeat_rows(str(region["one"]))
    assert n == region["n"] and {1500, 3100, 3999} <= set(rows.tolist())
    assert (np.diff(rows) > 0).all()
    piece = pq.read_table(region["one"]).slice(1400, 1400)
    marked = pa.concat_tables(pa.Table.from_batches([b]) for b in
                              iter_cases(piece, repeats=np.array([100], np.int64)))
    assert marked["reason"][100].as_py() == "DUPLICATE_CASE"
    assert pc.sum(pc.equal(marked["reason"], "DUPLICATE_CASE")).as_py() == 1
    with pytest.raises(ValueError, match="repeats"):
        list(iter_cases(piece, repeats=np.array([5000], np.int64)))


def test_deviation_options_run_the_same_on_dask(region, client, tmp_path):
    """[deviation] high_inclusive and reference_by = "level_pool" (issue 17 item 3) on both engines."""
    import shutil

    from dipengine.policy import resolve_pricing_dir

    pricing = tmp_path / "pricing"
    shutil.copytree(resolve_pricing_dir(PRICING), pricing)
    (pricing / "manifest.toml").unlink()  # the copy is edited below
    toml = pricing / "policy.toml"
    text = "".join(line for line in toml.read_text(encoding="utf-8").splitlines(keepends=True)
                   if not line.startswith(("high_inclusive", "reference_by")))
    toml.write_text(text.replace("[deviation]", '[deviation]\nhigh_inclusive = true\nreference_by = "level_pool"'),
                    encoding="utf-8")
    sla = pricing / "same_level_avg.csv"
    lines = sla.read_text(encoding="utf-8").splitlines()
    rows = ["dip_code,level,pool,avg_cost"]
    for i, line in enumerate(lines[1:]):
        code, level, cost = line.split(",")
        rows.append(f"{code},{level},employee,{cost}")
        if i % 3:  # a third of the groups have no resident row: the group average is their reference
            rows.append(f"{code},{level},resident,{float(cost) * 0.8:.2f}")
    sla.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = (str(region["one"]), RULES, str(pricing), str(region["hospitals"]), "2026")
    pipeline.settle_to(tmp_path / "local", *args)
    dask_engine.settle_to(tmp_path / "dask", *args, client=client, piece_rows=1500)
    assert digest(tmp_path / "dask") == digest(tmp_path / "local")
    base = pq.read_table(_local_default(region, tmp_path / "default") / "cases.parquet")
    got = pq.read_table(tmp_path / "local" / "cases.parquet")
    resident = pc.equal(got["pool"], "resident")
    assert got["ratio"].filter(resident).to_pylist() != base["ratio"].filter(resident).to_pylist()
    assert got["ratio"].filter(pc.invert(resident)).to_pylist() == base["ratio"].filter(pc.invert(resident)).to_pylist()


def _local_default(region, out):
    pipeline.settle_to(out, str(region["one"]), RULES, PRICING, str(region["hospitals"]), "2026")
    return out


def test_special_review_decisions_are_byte_identical(region, client, tmp_path):
    """special_review.parquet and --reviewed (issue 17 item 6): the flagged cases are collected
    with the pass-1 totals and the decisions applied to every batch as it is scored, so both
    engines (and the in-memory run) write the same files."""
    base = tmp_path / "base"
    pipeline.settle_to(base, str(region["one"]), RULES, PRICING, str(region["hospitals"]), "2026")
    flagged = pq.read_table(base / "special_review.parquet")
    assert flagged.num_rows >= 2
    ids = flagged["case_id"].to_pylist()[:2]
    cases = pq.read_table(base / "cases.parquet", columns=["case_id", "in_pool", "special_review"])
    settled = pc.and_(cases["in_pool"], pc.invert(cases["special_review"]))
    ids.append(cases["case_id"].filter(settled)[7].as_py())  # a decision on a case not flagged: allowed
    (tmp_path / "reviewed.csv").write_text(
        "case_id,decision,approved_points,approved_amount\n"
        f"{ids[0]},approved,1234.5,\n{ids[1]},approved,,20000.00\n{ids[2]},rejected,,\n", encoding="utf-8")
    kw = dict(reviewed=str(tmp_path / "reviewed.csv"))
    want = _local(region, tmp_path / "l", "2026", **kw)
    assert _dask(region, tmp_path / "d", "2026", client, piece_rows=1500, **kw) == want
    mem = pipeline.settle(str(region["one"]), RULES, PRICING, str(region["hospitals"]), "2026", batch_size=700,
                          **kw)
    assert digest(mem.write(tmp_path / "m")) == want
    review = pq.read_table(tmp_path / "d" / "special_review.parquet")
    assert review["review"].drop_null().to_pylist() == ["approved_points", "approved_amount"]
