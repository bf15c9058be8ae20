"""The program tunes only itself; the library leaves its caller's process alone (issue 15, item 6).

After ``dipengine.cli.main([...])`` in a caller's process, pandas and pyarrow work as usual, and
nothing of the interpreter (switch interval, import machinery), pyarrow's memory pool or the
environment has changed; ``stream.group_file`` keeps the switch interval; the ``dipengine``
program ends normally, so ``atexit`` hooks run and ``python -m cProfile -o F`` writes ``F``.
"""
from __future__ import annotations

import os
import pstats
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dipengine.cli
from dipengine.synth import synth_region

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    path = tmp_path_factory.mktemp("process") / "cases.parquet"
    pq.write_table(synth_region(2026, 3000, seed=5, bad_rows=0.01)[0], path)
    return str(path)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _group_args(cases, out) -> list[str]:
    return ["group", "--rules", "demo", "--input", cases, "--out", str(out)]


def test_main_in_a_fresh_process_leaves_pandas_working_with_pyarrow(cases, tmp_path):
    # pandas not loaded before the command (as in a caller's script): it used to be hidden from
    # pyarrow for the rest of the process, and a nullable Int64 Series raised
    code = f"""
import sys
import dipengine, dipengine.cli
assert "pandas" not in sys.modules
rc = dipengine.cli.main({_group_args(cases, tmp_path / "o.parquet")!r})
import pandas as pd
import pyarrow as pa
print(rc, pa.array(pd.Series([1, None], dtype="Int64")).to_pylist(),
      pa.Table.from_pandas(pd.DataFrame({{"x": pd.Series([2, None], dtype="Int64")}}))["x"].to_pylist())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[-2] == "0 [1, None] [2, None]"


def test_main_in_process_changes_nothing_of_the_callers_process(cases, tmp_path):
    import pandas as pd

    before = (sys.getswitchinterval(), list(sys.meta_path), pa.default_memory_pool().backend_name, dict(os.environ))
    assert dipengine.cli.main(_group_args(cases, tmp_path / "o.parquet")) == 0
    after = (sys.getswitchinterval(), list(sys.meta_path), pa.default_memory_pool().backend_name, dict(os.environ))
    assert after == before
    assert pa.array(pd.Series([1, None], dtype="Int64")).to_pylist() == [1, None]


def test_group_file_leaves_the_switch_interval_alone(cases, tmp_path):
    from dipengine.stream import group_file

    old = sys.getswitchinterval()
    during = []
    try:
        sys.setswitchinterval(0.007)
        group_file(cases, "demo", tmp_path / "o.parquet", threads=2, batch_size=1000,
                   progress=lambda done, total: during.append(sys.getswitchinterval()))
        assert sys.getswitchinterval() == pytest.approx(0.007)
    finally:
        sys.setswitchinterval(old)
    assert during and all(v == pytest.approx(0.007) for v in during)


def test_the_program_ends_normally_so_atexit_hooks_run(cases, tmp_path):
    out = tmp_path / "o.parquet"
    code = ("import atexit, sys, dipengine.cli; atexit.register(lambda: print('atexit hook ran', flush=True)); "
            f"sys.argv = ['dipengine'] + {_group_args(cases, out)!r}; dipengine.cli.run()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("grouped 3,000 cases") and res.stdout.rstrip().endswith("atexit hook ran")
    assert out.exists()
    # the command's exit code is kept, and the hooks run on an error too
    bad = code.replace(repr(cases), repr(str(tmp_path / "missing.parquet")))
    res = subprocess.run([sys.executable, "-c", bad], capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert res.returncode == 1 and res.stdout.rstrip().endswith("atexit hook ran"), (res.stdout, res.stderr)


def test_cprofile_writes_its_output_after_a_command(cases, tmp_path):
    prof = tmp_path / "group.prof"
    res = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "dipengine",
                          *_group_args(cases, tmp_path / "o.parquet")], capture_output=True, text=True, env=_env(),
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert prof.exists() and pstats.Stats(str(prof)).total_calls > 0


def test_no_read_ahead_and_no_process_tuning_helpers_remain():
    # the read-ahead was a second argument parser in front of click; the pandas hider leaked
    from dipengine import parquet_source
    from dipengine.cli import _common

    for name in ("read_ahead", "exit_now", "allocators_for_streaming", "one_malloc_arena", "single_threaded_blas"):
        assert not hasattr(dipengine.cli, name), name
    assert not hasattr(parquet_source, "read_ahead") and not hasattr(parquet_source, "_AHEAD")
    assert not hasattr(_common, "without_pandas") and not hasattr(_common, "retaining_memory_pool")


def test_the_program_sets_no_allocator_or_thread_environment(cases, tmp_path):
    code = ("import atexit, os, sys, dipengine.cli; names = ('ARROW_DEFAULT_MEMORY_POOL', 'OPENBLAS_NUM_THREADS', "
            "'MALLOC_ARENA_MAX'); before = {k: os.environ.get(k) for k in names}; "
            "atexit.register(lambda: print('same' if before == {k: os.environ.get(k) for k in names} else 'changed', "
            "sys.getswitchinterval())); sys.argv = ['dipengine'] + sys.argv[1:]; dipengine.cli.run()")
    env = {k: v for k, v in _env().items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "OPENBLAS_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", code, *_group_args(cases, tmp_path / "o.parquet")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[-2] == "same 0.005"  # the interpreter's default switch interval


def test_the_program_prints_a_warning_as_one_line(tmp_path):
    """A warning reaching the program (not the Python API) is one 'warning: ...' line, no source line."""
    import subprocess
    import sys

    code = ("import sys, warnings, dipengine.cli as c, dipengine.cli._app as a\n"
            "a.main = lambda: (warnings.warn('cache entry not trusted'), 0)[1]\n"
            "c.run()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert res.stderr == "warning: cache entry not trusted\n"
