"""Shared sizes and cached input builders for the benchmark suite.

Profiles
--------
``DIPENGINE_BENCH_PROFILE`` picks the sizes of the asv parameter grids:

- ``small`` (default): CI-sized inputs, so that ``asv run --python=same --quick`` of the whole
  suite stays well under two minutes on a 2-core machine;
- ``large``: the issue-target sizes (1M-row reader, 2M-case grouping, 3 x 3M-case catalogue,
  5M-case settlement, 10k estimate calls, 1M-case synthesis).

Cache
-----
Inputs are written once, atomically, under ``DIPENGINE_BENCH_DIR`` (default
``<tmp>/dipengine-bench``), in files whose names carry every parameter they depend on (kind,
size, year, seed, defect share), and are reused by later runs and by every asv benchmark
process. Delete the directory to rebuild them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

PROFILE = os.environ.get("DIPENGINE_BENCH_PROFILE", "small").strip().lower() or "small"
if PROFILE not in ("small", "large"):
    raise ValueError(f"DIPENGINE_BENCH_PROFILE must be 'small' or 'large', not {PROFILE!r}")
LARGE = PROFILE == "large"

#: Root of the on-disk input cache.
CACHE_DIR = Path(os.environ.get("DIPENGINE_BENCH_DIR") or Path(tempfile.gettempdir()) / "dipengine-bench")
#: The seed of every generated input.
SEED = 42
#: Thread counts for benchmarks whose kernels run in parallel (the CI machine has 2 cores).
THREADS = [1, 2]
#: Repository root (the demo rule set lives in ``grouper_rules/demo``).
REPO = Path(__file__).resolve().parents[1]
DEMO_RULES = REPO / "grouper_rules" / "demo"
#: Years of the synthetic history behind a locally built catalogue (oldest first).
HISTORY_YEARS = (2023, 2024, 2025)
#: The year benchmarked cases are drawn from (after the history).
CASE_YEAR = 2026


def pick(small, large):
    """The ``small`` or the ``large`` value, by the active profile."""
    return large if LARGE else small


def cache_path(kind: str, suffix: str = "", **key) -> Path:
    """Path under :data:`CACHE_DIR` named by ``kind`` and every ``key=value`` (sorted)."""
    parts = [kind] + [f"{k}{v}" for k, v in sorted(key.items())]
    return CACHE_DIR / ("_".join(parts) + suffix)


def cached(path: Path, write: Callable[[Path], None]) -> Path:
    """Return ``path``, first calling ``write(tmp)`` and renaming ``tmp`` to it when absent.

    The rename is atomic, so concurrent or interrupted runs never see a half-written input.
    ``write`` may create a file or a directory at ``tmp``.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race for a directory: keep its copy
        if not path.exists():
            raise
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


def cached_table(kind: str, build: Callable[[], pa.Table], **key) -> Path:
    """Parquet file of ``build()``, cached under a name keyed by ``kind`` and ``key``."""
    return cached(cache_path(kind, ".parquet", **key), lambda tmp: pq.write_table(build(), tmp))


def hospitals_csv(seed: int = SEED) -> Path:
    """The synthetic registry (``synth_hospitals``, 60 hospitals) as contract §3 CSV."""
    from dipengine.synth import synth_hospitals

    return cached(cache_path("hospitals", ".csv", s=seed),
                  lambda tmp: pcsv.write_csv(synth_hospitals(seed=seed), tmp))


def synth_cases(n: int, year: int = CASE_YEAR, *, seed: int = SEED, bad_rows: float = 0.0) -> Path:
    """Parquet file of ``n`` raw (contract §2) synthetic cases of the :func:`hospitals_csv` region.

    Made by :func:`dipengine.synth.synth_region` with the packaged vocabularies; the
    ``planted_defect`` column is kept (``read_cases`` carries it through as an extra column).
    """
    from dipengine.synth import synth_region

    hosp = hospitals_csv(seed)
    return cached_table("synth", lambda: synth_region(year, n, seed=seed, hospitals=str(hosp),
                                                      bad_rows=bad_rows)[0],
                        n=n, y=year, s=seed, b=bad_rows)


def history(n: int, *, seed: int = SEED, years=HISTORY_YEARS) -> list[Path]:
    """Parquet files of ``n`` clean synthetic cases per history year, oldest first."""
    return [synth_cases(n, y, seed=seed) for y in years]


def local_catalogue(n_history: int, *, seed: int = SEED, threshold: float = 5) -> Path:
    """Rule-set directory built by ``build_catalog`` from :func:`history` (``n_history`` per year)."""
    from dipengine.catalog import build_catalog

    paths = history(n_history, seed=seed)
    hosp = hospitals_csv(seed)
    return cached(cache_path("catalogue", h=n_history, s=seed, t=threshold),
                  lambda tmp: build_catalog([str(p) for p in paths], str(hosp), tmp, threshold=threshold))


def policy_toml(employee_yuan: int, resident_yuan: int, budget_value: float) -> str:
    """A pricing policy (docs/policy-format.md) for region 440200, year 2027, with these pool
    budgets (yuan) and budget point value (``[point_value] budget_value``); the rest as the
    contract's example policy."""
    return f"""region = "440200"
year = 2027
score_scale = 1000
[budget]
employee = {int(employee_yuan)}
resident = {int(resident_yuan)}
reserve_rate = 0.03
include_remote = "in_province"
[point_value]
settlement_method = "fund_plus_personal"
budget_value = {budget_value}
[level_coefficients]
1 = 0.80
2 = 0.90
3 = 1.00
basic_group = 1.00
[deviation]
low_ratio = 0.5
high_ratio = 2.0
extreme_ratio = 5.0
high_formula = "ratio_minus_1"
apply_level_coef_to_outliers = false
blank_group_factor = 0.7
[settlement]
monthly_method = "points"
monthly_advance_rate = 0.95
quality_deposit = 0.05
bands = [
  {{ upper = 0.80, rule = "partial_retention", share = 0.80 }},
  {{ upper = 1.00, rule = "pay_due" }},
  {{ upper = 1.10, rule = "share_overspend", fund_share = 0.5 }},
  {{ rule = "cap", cap_over = 0.10, fund_share = 0.5 }},
]
"""


def run_process(cmd: list[str], env: dict | None = None, what: str = "process") -> dict:
    """Run ``cmd`` to the end: ``{"seconds": wall seconds of the whole process, "peak_mib": its
    peak RSS (os.wait4), "stdout": its output}``; raises RuntimeError with its stderr if it fails."""
    import subprocess
    import threading
    import time

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # drain both pipes while it runs (a full pipe would block it), then reap it for its rusage
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))
    reader.start()
    stdout = proc.stdout.read().decode()
    reader.join()
    stderr = err[0].decode()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {stderr.strip()}")
    return {"seconds": secs, "peak_mib": usage.ru_maxrss / 1024, "stdout": stdout}
