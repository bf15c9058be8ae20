"""The compiled-rules cache of ``load_rules``: same result as a fresh load, verified inputs, safe failure."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import dipengine.rules as R
from dipengine.errors import RuleSetError
from dipengine.grouper import group
from dipengine.rules import check_rules, load_rules, write_rule_set

TABLE_NAMES = ("groups", "procedures", "excluded_dx", "excluded_proc", "aux_coefficients", "cci_weights",
               "severity_dx")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache folder for this test (the environment decides, as in real use)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("DIPENGINE_CACHE_DIR", str(d))
    monkeypatch.delenv("DIPENGINE_CACHE", raising=False)
    return d


@pytest.fixture
def rules_dir(tmp_path, rules_features) -> Path:
    """A private copy of the feature rule set (tests edit it)."""
    return Path(shutil.copytree(rules_features, tmp_path / "rules"))


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("rules-*.npz")) if cache.exists() else []


def hits() -> int:
    return R.cache_stats()["hits"]


def assert_same_rule_set(a: R.RuleSet, b: R.RuleSet):
    assert (a.name, a.version, a.options, a.sha256, a.manifest) == (b.name, b.version, b.options, b.sha256, b.manifest)
    for name in TABLE_NAMES:
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.schema.equals(tb.schema), name
        assert ta.equals(tb), name
    for f in dataclasses.fields(R.Compiled):
        x, y = getattr(a.compiled, f.name), getattr(b.compiled, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.flags.c_contiguous == y.flags.c_contiguous
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif isinstance(x, pa.Array):
            assert x.type == y.type and x.equals(y), f.name
        else:
            assert type(x) is type(y) and x == y, f.name


def cases(rs: R.RuleSet, n: int, seed: int) -> pa.Table:
    """``n`` cases over the rule set's own diagnoses and procedures (and some unknown codes)."""
    rng = np.random.default_rng(seed)
    g = rs.groups.to_pydict()
    keys = list(zip(g["dx_key"], g["group_type"]))
    dx_pool = sorted({k + "00" for k, t in keys if t in ("core", "basic")}
                     | {k + ".900" for k, t in keys if t == "comprehensive" and len(k) == 3}
                     | {"Q99.900", "A41.900", "Z00.000"})
    proc_pool = rs.compiled.proc_vocab.to_pylist() + ["88.0100", "01.0900", None]
    sec_pool = ["A41.900", "R57.100", "J96.000", "N17.900", "E11.900", "C78.000", "K21.000"]
    dx = np.array(dx_pool, dtype=object)[rng.integers(0, len(dx_pool), n)]
    mp = np.array(proc_pool, dtype=object)[rng.integers(0, len(proc_pool), n)]
    off = np.zeros(n + 1, np.int32)
    np.cumsum(rng.integers(0, 3, n), out=off[1:])
    soff = np.zeros(n + 1, np.int32)
    np.cumsum(rng.integers(0, 4, n), out=soff[1:])
    age = rng.integers(0, 100, n).astype(np.int32)
    return pa.table({
        "case_id": pa.array(np.char.add("c", np.arange(n).astype(str))),
        "main_dx": pa.array(dx, pa.string()),
        "main_proc": pa.array(mp, pa.string()),
        "other_procs": pa.ListArray.from_arrays(pa.array(off), pa.array(
            np.array(proc_pool[:-1], dtype=object)[rng.integers(0, len(proc_pool) - 1, off[-1])], pa.string())),
        "other_dx": pa.ListArray.from_arrays(pa.array(soff), pa.array(
            np.array(sec_pool, dtype=object)[rng.integers(0, len(sec_pool), soff[-1])], pa.string())),
        "total_cost_fen": pa.array(rng.integers(0, 5_000_000, n).astype(np.int64)),
        "discharge_mode": pa.array(rng.choice([1, 1, 1, 5], n).astype(np.int8)),
        "los": pa.array(rng.integers(0, 12, n).astype(np.int32)),
        "age": pa.array(age),
        "age_days": pa.array(rng.integers(0, 365, n).astype(np.int32), mask=age != 0),
        "reason": pa.array([None] * n, pa.string()),
        "reason_detail": pa.array([None] * n, pa.string()),
    })


# --------------------------------------------------------------------------- equality and hits


def test_cached_load_equals_fresh_load_and_groups_identically(cache, rules_dir):
    fresh = load_rules(rules_dir, cache=False)
    assert entries(cache) == []
    first = load_rules(rules_dir)  # miss: checks, compiles, writes the entry
    assert len(entries(cache)) == 1
    before = hits()
    cached = load_rules(rules_dir)
    assert hits() == before + 1
    assert_same_rule_set(fresh, first)
    assert_same_rule_set(fresh, cached)
    assert cached.compiled.proc_class == fresh.compiled.proc_class and cached.compiled.proc_class
    batch = cases(fresh, 3000, 11)
    out_fresh, out_cached = group(batch, fresh), group(batch, cached, n_threads=2)
    assert set(out_fresh["match_path"].to_pylist()) >= {"core", "comprehensive"}
    assert out_cached.equals(out_fresh)


def test_second_load_skips_checks_and_compilation(cache, rules_dir, monkeypatch):
    load_rules(rules_dir)

    def boom(*a, **k):
        raise AssertionError("rows checked or compiled on a cache hit")

    monkeypatch.setattr(R, "_check", boom)
    monkeypatch.setattr(R, "compile_rules", boom)
    rs = load_rules(rules_dir)
    assert rs.groups.num_rows > 100 and rs.compiled.g_type.size == rs.groups.num_rows
    with pytest.raises(AssertionError, match="cache hit"):
        load_rules(rules_dir, cache=False)


def test_entry_is_shared_by_copies_and_keeps_the_callers_path(cache, rules_dir, tmp_path):
    load_rules(rules_dir)
    other = Path(shutil.copytree(rules_dir, tmp_path / "elsewhere"))
    before = hits()
    rs = load_rules(other)
    assert hits() == before + 1 and rs.path == other
    assert len(entries(cache)) == 1


# --------------------------------------------------------------------------- inputs always verified


def test_edited_table_without_manifest_still_fails_with_a_cache_entry(cache, rules_dir):
    load_rules(rules_dir)
    assert len(entries(cache)) == 1
    groups = rules_dir / "groups.csv"
    groups.write_text(groups.read_text(encoding="utf-8").replace("650.0", "651.0", 1), encoding="utf-8")
    with pytest.raises(RuleSetError) as err:
        load_rules(rules_dir)
    assert err.value.problems == check_rules(rules_dir)
    assert any(p.file == "groups.csv" and "sha256 mismatch" in p.message for p in err.value.problems)


def test_unlisted_table_still_fails_with_a_cache_entry(cache, rules_dir):
    load_rules(rules_dir)
    manifest = rules_dir / "manifest.toml"
    manifest.write_text("\n".join(ln for ln in manifest.read_text(encoding="utf-8").splitlines()
                                  if not ln.startswith('"severity_dx.csv"')) + "\n", encoding="utf-8")
    with pytest.raises(RuleSetError) as err:
        load_rules(rules_dir)
    assert [str(p) for p in err.value.problems] == [
        "severity_dx.csv:0:: not listed in manifest.toml [files] (no sha256)"]


def test_valid_change_makes_a_new_entry_with_the_new_behaviour(cache, rules_dir):
    old = load_rules(rules_dir)
    meta = {k: old.manifest[k] for k in ("name", "version")}
    meta["options"] = dict(old.manifest["options"])
    tables = {n + ".csv": getattr(old, n) for n in ("groups", "procedures", "excluded_dx", "excluded_proc",
                                                   "aux_coefficients", "cci_weights")}
    tables["severity_dx.csv"] = pa.table({"dx_prefix": old.severity_dx["dx_prefix"], "level": pa.array(
        ["II" if v == 2 else "III" for v in old.severity_dx["level"].to_pylist()])})
    tables["groups.csv"] = old.groups.set_column(
        old.groups.schema.get_field_index("score"), "score", pc.multiply(old.groups["score"], 2.0))
    # (into a new directory: write_rule_set replaces only a directory dipengine wrote)
    changed = write_rule_set(rules_dir.parent / "changed", tables, meta)
    new = load_rules(changed)
    assert len(entries(cache)) == 2
    np.testing.assert_array_equal(new.groups["score"].to_numpy(), 2.0 * old.groups["score"].to_numpy())
    assert_same_rule_set(new, load_rules(changed, cache=False))
    assert load_rules(changed).groups.equals(new.groups)

    # An option is part of the key too: same tables, other match mode -> another entry.
    meta["options"]["match_mode"] = "all_listed"
    tables["groups.csv"] = new.groups
    jn = load_rules(write_rule_set(rules_dir.parent / "jn", tables, meta))
    assert len(entries(cache)) == 3 and jn.compiled.match_all == 1 and new.compiled.match_all == 0


def test_rule_set_with_row_problems_is_never_cached(cache, tmp_path):
    bad = write_rule_set(tmp_path / "bad", {"groups.csv": [
        {"dip_code": "A", "dip_name": "a", "group_type": "core", "dx_key": "K35.8", "proc_expr": "47.0100",
         "treat_class": "surgery", "score": "-1", "avg_cost": "10"}]}, {"name": "b", "version": "1"})
    for _ in range(2):
        with pytest.raises(RuleSetError) as err:
            load_rules(bad)
        assert [(p.file, p.line, p.column) for p in err.value.problems] == [("groups.csv", 2, "score")]
    assert entries(cache) == []


# --------------------------------------------------------------------------- damaged entries, switches


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_entry_is_ignored_and_rebuilt(cache, rules_dir, damage):
    fresh = load_rules(rules_dir, cache=False)
    load_rules(rules_dir)
    (entry,) = entries(cache)
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        for k in range(1000, len(data) - 1000, len(data) // 7):
            data[k] ^= 0x5A
    elif damage == "garbage":
        data = bytearray(b"PK\x03\x04 not a zip file" * 10)
    else:
        data = bytearray()
    entry.write_bytes(bytes(data))
    before = hits()
    with pytest.warns(R.CacheWarning, match="not trusted"):
        rs = load_rules(rules_dir)
    assert hits() == before
    assert_same_rule_set(fresh, rs)
    assert entry.read_bytes() != bytes(data)  # rewritten
    assert_same_rule_set(fresh, load_rules(rules_dir))
    assert hits() == before + 1


def test_entry_under_another_key_is_not_used(cache, rules_dir, tmp_path):
    load_rules(rules_dir)
    (entry,) = entries(cache)
    stray = entry.with_name("rules-" + "0" * 64 + ".npz")
    entry.rename(stray)
    before = hits()
    load_rules(rules_dir)
    assert hits() == before and len(entries(cache)) == 2


def test_disabled_by_environment_or_argument(cache, rules_dir, monkeypatch):
    load_rules(rules_dir, cache=False)
    assert entries(cache) == []
    monkeypatch.setenv("DIPENGINE_CACHE", "0")
    load_rules(rules_dir)
    load_rules(rules_dir)
    assert entries(cache) == []
    load_rules(rules_dir, cache=True)
    assert len(entries(cache)) == 1
    before = hits()
    load_rules(rules_dir)  # still disabled: not read either
    assert hits() == before


def test_unwritable_location_means_no_cache(tmp_path, rules_dir, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("DIPENGINE_CACHE_DIR", str(blocker / "cache"))  # under a file: never creatable
    fresh = load_rules(rules_dir, cache=False)
    writes = R.cache_stats()["writes"]
    assert_same_rule_set(fresh, load_rules(rules_dir))
    assert_same_rule_set(fresh, load_rules(rules_dir))
    assert R.cache_stats()["writes"] == writes
    assert not list(tmp_path.rglob(".tmp-rules-*"))


def test_cache_location_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DIPENGINE_CACHE_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert R.cache_dir() == tmp_path / "d"
    monkeypatch.delenv("DIPENGINE_CACHE_DIR")
    assert R.cache_dir() == tmp_path / "x" / "dipengine" / "rules"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert R.cache_dir() == tmp_path / "h" / ".cache" / "dipengine" / "rules"


def test_entry_holds_no_pickled_objects(cache, rules_dir):
    load_rules(rules_dir)
    (entry,) = entries(cache)
    with np.load(entry, allow_pickle=False) as z:
        for name in z.files:
            assert z[name].dtype != object, name


# --------------------------------------------------------------------------- verified entries (issue 15, deliver 3)


def rewrite_entry(entry: Path, edit, *, redigest: bool = False) -> None:
    """Re-save ``entry`` under its own name after ``edit(members, meta)``; the stored digest is kept
    (what a careless tamperer does) unless ``redigest`` (what a careful one does)."""
    import json

    with np.load(entry, allow_pickle=False) as z:
        members = {name: z[name] for name in z.files}
    meta = json.loads(members["meta"].tobytes().decode())
    edit(members, meta)
    if redigest:
        meta["digest"] = R._content_digest(members, meta)
    members["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    with open(entry, "wb") as fh:
        np.savez(fh, **members)


def scores_times_10(members, meta):
    groups = R._ipc_table(members["table.groups"])
    i = groups.schema.get_field_index("score")
    members["table.groups"] = R._ipc_bytes(groups.set_column(i, "score", pc.multiply(groups["score"], 10.0)))


def test_tampered_entry_is_not_trusted_results_unchanged_and_said_once(cache, rules_dir):
    # Before: an entry whose scores were multiplied by 10 (same key) was read as is: every score x10.
    fresh = load_rules(rules_dir, cache=False)
    batch = cases(fresh, 2000, 5)
    expected = group(batch, fresh)
    load_rules(rules_dir)
    (entry,) = entries(cache)
    rewrite_entry(entry, scores_times_10)
    tampered = entry.read_bytes()
    rejected = R.cache_stats()["rejected"]
    with pytest.warns(R.CacheWarning) as caught:
        rs = load_rules(rules_dir)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert str(entry) in msg and "does not match the sha256 it stores" in msg and "rewrote" in msg
    assert R.cache_stats()["rejected"] == rejected + 1
    assert_same_rule_set(fresh, rs)
    assert group(batch, rs).equals(expected)
    # Rewritten: the next load is a verified hit, without a word.
    assert entry.read_bytes() != tampered
    before = hits()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_rules(rules_dir)
    assert hits() == before + 1
    assert group(batch, again).equals(expected)


def test_every_stored_field_is_covered_by_the_digest(cache, rules_dir):
    fresh = load_rules(rules_dir, cache=False)
    load_rules(rules_dir)
    (entry,) = entries(cache)

    def bump_array(members, meta):
        a = members["array.g_avg_fen"].copy()
        a[0] += 1
        members["array.g_avg_fen"] = a

    def bump_meta(members, meta):
        meta["blank"] = 0

    for edit in (bump_array, bump_meta):
        load_rules(rules_dir)
        rewrite_entry(entry, edit)
        with pytest.warns(R.CacheWarning, match="sha256"):
            assert_same_rule_set(fresh, load_rules(rules_dir))


def test_entry_compiled_from_other_tables_is_not_trusted(cache, rules_dir):
    fresh = load_rules(rules_dir, cache=False)
    load_rules(rules_dir)
    (entry,) = entries(cache)

    def other_sources(members, meta):
        meta["sources"]["files"]["groups.csv"] = "0" * 64

    rewrite_entry(entry, other_sources, redigest=True)
    with pytest.warns(R.CacheWarning, match="compiled from other tables"):
        assert_same_rule_set(fresh, load_rules(rules_dir))


def test_entry_with_an_object_array_is_never_unpickled(cache, rules_dir):
    fresh = load_rules(rules_dir, cache=False)
    load_rules(rules_dir)
    (entry,) = entries(cache)

    def pickled(members, meta):
        members["array.g_type"] = np.array([object()] * 3, dtype=object)

    import json

    with np.load(entry, allow_pickle=False) as z:
        members = {name: z[name] for name in z.files}
    pickled(members, json.loads(members["meta"].tobytes().decode()))
    with open(entry, "wb") as fh:
        np.savez(fh, **members)  # allow_pickle defaults to True on write
    with pytest.warns(R.CacheWarning, match="pickled objects"):
        assert_same_rule_set(fresh, load_rules(rules_dir))


def test_rules_check_compares_the_entry_with_a_fresh_compile_and_repairs_it(cache, rules_dir):
    # A careful tamperer recomputes the stored digest: a load trusts the entry's own sha256, but
    # `rules check` compiles afresh and compares field by field.
    from click.testing import CliRunner

    from dipengine.cli import cli

    fresh = load_rules(rules_dir, cache=False)
    res = CliRunner().invoke(cli, ["rules", "check", str(rules_dir)])
    assert res.exit_code == 0 and res.output.splitlines()[-1].startswith("OK features")
    assert R.check_cache(rules_dir).status == "ok"
    (entry,) = entries(cache)
    rewrite_entry(entry, scores_times_10, redigest=True)
    res = CliRunner().invoke(cli, ["rules", "check", str(rules_dir)])
    assert res.exit_code == 0, res.output
    warning = [ln for ln in res.output.splitlines() if ln.startswith("warning: ")]
    assert warning == [f"warning: cache: {entry} was stale or tampered with (differs from a fresh compile in "
                       "groups); rewritten"]
    assert R.check_cache(rules_dir) == R.CacheCheck("ok", entry)
    assert_same_rule_set(fresh, load_rules(rules_dir))


def test_check_cache_statuses(cache, rules_dir, tmp_path):
    assert R.check_cache(rules_dir).status == "absent"
    load_rules(rules_dir)
    (entry,) = entries(cache)
    entry.write_bytes(b"garbage")
    got = R.check_cache(rules_dir)
    assert got.status == "repaired" and "unreadable" in got.detail and "rewritten" in str(got)
    assert R.check_cache(rules_dir).status == "ok"
    (rules_dir / "manifest.toml").write_text("", encoding="utf-8")
    assert R.check_cache(rules_dir) is None
