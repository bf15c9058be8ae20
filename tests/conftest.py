"""Shared fixtures: paths to the official code lists in ../shared/data (skipped when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"official code list {path} not present (../shared/data is outside the project)")
    return path


@pytest.fixture(scope="session")
def icd10_path() -> Path:
    return _shared("icd10_yb2.tsv")


@pytest.fixture(scope="session")
def icd9_path() -> Path:
    return _shared("icd9cm3_yb2.tsv")


RULES_FEATURES = REPO / "tests" / "data" / "rules_features"


@pytest.fixture(scope="session")
def rules_features() -> Path:
    """The hand-made rule set exercising every grouper feature (``tests/data/make_rules_features.py``)."""
    return RULES_FEATURES


@pytest.fixture(scope="session", autouse=True)
def _rules_cache_dir(tmp_path_factory):
    """Compiled rule sets go to a temporary folder (never the user's ~/.cache) for the whole run.

    Set in ``os.environ`` so that CLI subprocesses inherit it; restored afterwards.
    """
    import os

    old = os.environ.get("DIPENGINE_CACHE_DIR")
    os.environ["DIPENGINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dipengine-cache"))
    yield
    if old is None:
        os.environ.pop("DIPENGINE_CACHE_DIR", None)
    else:
        os.environ["DIPENGINE_CACHE_DIR"] = old
