"""Fault tests (issue 15, deliver 10): ``kill -9`` of a ``dipengine group`` and a ``dipengine settle``
at several points leaves, at the final path, the old complete result or the new complete one, never a
partial one, and the next run cleans what the killed one left; concurrent runs do not disturb each
other. Real processes on a 200,000-case synthetic region (about 20 s in all on 2 cores)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dipengine.io import OUTPUT_MARKER, _marker_text

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "grouper_rules" / "demo"
PRICING = ROOT / "pricing_tables" / "440200" / "2026"
N_CASES = 200_000


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "dipengine", *map(str, args)]


def _run(args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _kill_when(args, when) -> int | None:
    """Start ``args`` and SIGKILL it as soon as ``when(seconds since start)`` is true; its return
    code if it ended first."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while p.poll() is None:
        if when(time.perf_counter() - t0):
            p.send_signal(signal.SIGKILL)
            p.wait()
            return None
        time.sleep(0.002)
    return p.returncode


def _temporaries(path: Path) -> list[Path]:
    return [path.parent / n for n in _leftovers(path) if n.endswith(".tmp")]


def _size(paths) -> int:
    try:
        return sum(p.stat().st_size for p in paths)
    except FileNotFoundError:
        return 0


def _kill_points(out: Path, inner=None):
    """When to kill a run writing ``out``: during start-up, as soon as its temporary output exists,
    once that has grown (``inner``: a file written inside a temporary directory)."""
    def grown(_t):
        tmp = _temporaries(out)
        if inner is None:
            return _size(tmp) > 1 << 20
        return any((t / inner).exists() for t in tmp)

    return {"start-up": lambda t: t > 0.2, "temporary made": lambda t: bool(_temporaries(out)),
            "writing": grown}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path.parent) if n.startswith(f".{path.name}."))


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    _run(_cmd("synth", "--year", 2026, "--cases", N_CASES, "--out", d / "region", "--seed", 3))
    return d


def test_kill_9_during_group_leaves_the_old_or_the_new_result(region, tmp_path):
    src = region / "region" / "cases.parquet"
    ref = tmp_path / "ref.parquet"
    args = lambda out: _cmd("group", "--rules", RULES, "--input", src, "--out", out)  # noqa: E731
    _run(args(ref))
    new = pq.read_table(ref)
    assert new.num_rows == N_CASES

    out = tmp_path / "out" / "grouped.parquet"
    out.parent.mkdir()
    pq.write_table(new.slice(0, 1000), out)  # the result of an earlier run
    old_sha = _sha(out)
    outcomes, killed_mid_write = [], 0
    for point, when in _kill_points(out).items():
        rc = _kill_when(args(out), when)
        assert rc in (None, 0), point
        killed_mid_write += bool(_temporaries(out))
        if _sha(out) == old_sha:
            outcomes.append("old")
        else:
            got = pq.read_table(out)  # a partial file would not even open
            assert got.equals(new), f"killed at {point}: the final path holds neither the old nor the new result"
            outcomes.append("new")
            old_sha = _sha(out)
    assert killed_mid_write, "no kill landed while the output was being written"
    _run(args(out))  # the next run completes and removes what the killed ones left
    assert pq.read_table(out).equals(new)
    assert _leftovers(out) == []
    assert sorted(os.listdir(out.parent)) == ["grouped.parquet"]


def _settle_args(region, out, src=None):
    return _cmd("settle", "--rules", RULES, "--pricing", PRICING, "--hospitals", region / "region" / "hospitals.csv",
                "--input", src or region / "region" / "cases.parquet", "--period", 2026, "--out", out)


def _complete_settlement(d: Path, old: Path, ref: Path) -> str:
    """"old" when ``d`` is byte for byte the earlier result ``old``, "new" when it is a complete new
    one (the same tables as the completed run ``ref``)."""
    names = sorted(os.listdir(d))
    assert names == sorted(os.listdir(ref)), names
    if all(_sha(d / n) == _sha(old / n) for n in names):
        return "old"
    for n in names:
        if n.endswith(".parquet"):
            assert pq.read_table(d / n).equals(pq.read_table(ref / n)), n
    man, ref_man = json.loads((d / "manifest.json").read_text()), json.loads((ref / "manifest.json").read_text())
    assert man["counts"] == ref_man["counts"] and man.get("pools") == ref_man.get("pools")
    marker = json.loads((d / OUTPUT_MARKER).read_text())
    assert {k: (d / k).stat().st_size for k in marker["files"]} == marker["files"]
    return "new"


def test_kill_9_during_settle_leaves_the_old_or_the_new_result(region, tmp_path):
    ref = tmp_path / "ref"
    _run(_settle_args(region, ref))
    out = tmp_path / "runs" / "2026"
    out.parent.mkdir()
    shutil.copytree(ref, out)  # an earlier complete result, made different from the new one
    pq.write_table(pq.read_table(out / "cases.parquet").slice(0, 1000), out / "cases.parquet")
    (out / OUTPUT_MARKER).write_text(_marker_text(out), encoding="utf-8")
    old = tmp_path / "old"
    shutil.copytree(out, old)
    outcomes, killed_mid_write = [], 0
    for point, when in _kill_points(out, inner="hospitals.parquet").items():
        rc = _kill_when(_settle_args(region, out), when)
        assert rc in (None, 0), point
        killed_mid_write += bool(_temporaries(out))
        outcomes.append(_complete_settlement(out, old, ref))
        if outcomes[-1] == "new":
            shutil.rmtree(old)
            shutil.copytree(out, old)
    assert killed_mid_write, "no kill landed while the output was being written"
    _run(_settle_args(region, out))
    assert _complete_settlement(out, old, ref) in ("new", "old" if outcomes[-1] == "new" else "new")
    assert _leftovers(out) == [] and sorted(os.listdir(out.parent)) == ["2026"]


def test_concurrent_runs_both_succeed(region, tmp_path):
    src = region / "region" / "cases.parquet"
    outs = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    procs = [subprocess.Popen(_cmd("group", "--rules", RULES, "--input", src, "--out", o),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    a, b = pq.read_table(outs[0]), pq.read_table(outs[1])
    assert a.num_rows == N_CASES and a.equals(b)
    assert sorted(os.listdir(tmp_path)) == ["a.parquet", "b.parquet"]
