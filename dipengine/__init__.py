"""dipengine: DIP (按病种分值付费) grouping, scoring and settlement with a Cython core.

The public functions take and return Arrow tables (pandas DataFrames are accepted too); see
``docs/`` for the formats. Names are imported lazily so that ``import dipengine`` is cheap.
"""
from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

_API = {
    "DataError": "dipengine.errors",
    "read_cases": "dipengine.reader",
    "read_hospitals": "dipengine.hospitals",
    "load_schema": "dipengine.schemas",
    "import_catalog": "dipengine.catalog_import",
    "synth_region": "dipengine.synth",
    "load_rules": "dipengine.rules",
    "check_rules": "dipengine.rules",
    "group": "dipengine.grouper",
    "group_file": "dipengine.stream",
    "build_catalog": "dipengine.catalog",
    "load_policy": "dipengine.policy",
    "settle": "dipengine.settlement",
    "compute_benefits": "dipengine.benefits",
    "load_benefits": "dipengine.benefits",
    "Estimator": "dipengine.estimate",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module 'dipengine' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


if "pandas" in sys.modules:  # register DataFrame.dip without paying for a pandas import otherwise
    importlib.import_module("dipengine.pandas_ext")
