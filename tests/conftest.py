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
