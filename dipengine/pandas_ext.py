"""``DataFrame.dip``: thin pandas sugar over the Arrow batch functions.

Registered on import (``import dipengine.pandas_ext``; ``import dipengine`` registers it too when
pandas is already imported). Every method converts once to Arrow, calls the same batch function
the CLI uses and converts back; no logic lives here.

``rules`` and ``pricing`` are what the batch functions take: a directory, a loaded rule set or
policy, or a shipped name (``"demo"``, ``"440200/2026"``).

>>> import pandas as pd, dipengine.pandas_ext                              # doctest: +SKIP
>>> grouped = cases_df.dip.group("demo", hospitals="hospitals.csv")        # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

REQUIRED = ("case_id", "hospital_id", "insurance_type", "insured_region", "age", "admit_date",
            "discharge_date", "main_dx", "total_cost")
NORMALISED_MARKERS = ("total_cost_fen", "reason")


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


@pd.api.extensions.register_dataframe_accessor("dip")
class DipAccessor:
    """Validate, group, settle and compute benefits of a case DataFrame (contract §2 columns)."""

    def __init__(self, df: pd.DataFrame):
        cols = set(df.columns)
        normalised = all(c in cols for c in NORMALISED_MARKERS)
        required = [c if c != "total_cost" or not normalised else "total_cost_fen" for c in REQUIRED]
        missing = [c for c in required if c not in cols]
        if missing:
            # pandas requires AttributeError from an accessor that does not apply.
            raise AttributeError(f"DataFrame.dip needs the case columns {', '.join(missing)} (contract §2)")
        self._df = df
        self._normalised = normalised

    def _cases(self, hospitals=None, period=None) -> pa.Table:
        table = pa.Table.from_pandas(self._df, preserve_index=False)
        if self._normalised:
            return table
        from dipengine.reader import read_cases

        return read_cases(table, hospitals, period=period)

    def validate(self, hospitals=None, period=None) -> pd.DataFrame:
        """The normalised cases with ``reason``/``reason_detail`` (money as ``*_fen`` int64)."""
        return _to_pandas(self._cases(hospitals, period))

    def group(self, rules, hospitals=None, *, n_threads=None) -> pd.DataFrame:
        """Grouping output (contract §6.1), one row per case in order."""
        from dipengine.grouper import group

        return _to_pandas(group(self._cases(hospitals), rules, n_threads=n_threads))

    def settle(self, rules, pricing, hospitals, period, *, monthly=None):
        """Settle the cases of ``period`` (``YYYY-MM`` or ``YYYY``); returns a ``SettlementResult``
        whose ``.cases``/``.hospitals`` are Arrow tables (``.to_pandas()`` for frames)."""
        from dipengine.settlement import settle

        return settle(self._cases(hospitals, period), rules, pricing, hospitals, period, monthly=monthly)

    def benefits(self, pricing, hospitals) -> pd.DataFrame:
        """Patient-side benefits per case (contract §1 ``benefits`` columns).

        ``pricing``: pricing dir(s) holding ``benefits.csv`` (or shipped ``REGION/YEAR`` names,
        or the CSV files), or loaded ``BenefitRules``."""
        from dipengine.benefits import BenefitRules, compute_benefits, load_benefits
        from dipengine.policy import resolve_pricing_dir

        if isinstance(pricing, BenefitRules):
            rules = pricing
        else:
            dirs = [pricing] if isinstance(pricing, (str, Path)) else list(pricing)
            rules = load_benefits([resolve_pricing_dir(d) for d in dirs])
        return _to_pandas(compute_benefits(self._cases(hospitals), rules, hospitals))
