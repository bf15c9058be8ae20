"""The hospital registry (``hospitals.csv``, contract §3)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.errors import DataError
from dipengine.io import read_table

SCHEMA = pa.schema(
    [
        ("hospital_id", pa.string()),
        ("name", pa.string()),
        ("level", pa.int8()),
        ("region", pa.string()),
        ("coefficient", pa.float64()),
        ("assessment_coef", pa.float64()),
    ]
)


def _floats(table, name, path, default=None):
    if name not in table.column_names:
        return pa.array(np.full(table.num_rows, np.nan if default is None else default))
    col = pc.utf8_trim_whitespace(table[name].cast(pa.string()))
    col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    try:
        out = col.cast(pa.float64())
    except pa.ArrowInvalid:
        bad = [v for v in col.to_pylist() if v is not None and not _is_float(v)][0]
        raise DataError("not a number", file=path, column=name, value=bad) from None
    if default is not None:
        out = pc.fill_null(out, default)
    return out


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_hospitals(source) -> pa.Table:
    """Read and check the registry; returns columns of :data:`SCHEMA`, one row per hospital.

    ``coefficient`` is NaN where absent; ``assessment_coef`` defaults to 1.0. A registry with the
    optional column ``assessment_score`` (0..100, the annual assessment's score; empty = none)
    gets it as a last float64 column (null where empty): the annual clearing releases the quality
    deposit by it under ``[settlement] deposit_release = "by_score"``.
    """
    path = source if not isinstance(source, pa.Table) else "hospitals"
    table = read_table(source)
    for col in ("hospital_id", "level", "region"):
        if col not in table.column_names:
            raise DataError("required column missing", file=path, column=col)
    hid = pc.utf8_trim_whitespace(table["hospital_id"].cast(pa.string()))
    region = pc.utf8_trim_whitespace(table["region"].cast(pa.string()))
    for name, col in (("hospital_id", hid), ("region", region)):
        empty = pc.or_(pc.is_null(col), pc.equal(col, ""))
        if pc.any(empty).as_py():
            row = int(np.flatnonzero(np.asarray(empty.combine_chunks().fill_null(True)))[0])
            raise DataError("empty value", file=path, column=name, row=row + 2)
    level_txt = pc.utf8_trim_whitespace(table["level"].cast(pa.string()))
    ok = pc.is_in(level_txt, pa.array(["1", "2", "3"]))
    if not pc.all(pc.fill_null(ok, False)).as_py():
        bad_i = int(np.flatnonzero(~np.asarray(pc.fill_null(ok, False).combine_chunks()))[0])
        raise DataError("level must be 1, 2 or 3", file=path, column="level",
                        value=level_txt[bad_i].as_py(), row=bad_i + 2)
    dup = pc.count_distinct(hid).as_py() != len(hid)
    if dup:
        vc = pc.value_counts(hid)
        first = [d["values"] for d in vc.to_pylist() if d["counts"] > 1][0]
        raise DataError("duplicate hospital_id", file=path, column="hospital_id", value=first)
    name = table["name"].cast(pa.string()) if "name" in table.column_names else pa.nulls(table.num_rows, pa.string())
    out = pa.table(
        {
            "hospital_id": hid,
            "name": name,
            "level": level_txt.cast(pa.int8()),
            "region": region,
            "coefficient": _floats(table, "coefficient", path),
            "assessment_coef": _floats(table, "assessment_coef", path, default=1.0),
        },
        schema=SCHEMA,
    )
    coef = out["coefficient"].to_numpy()
    if np.any(coef[~np.isnan(coef)] <= 0):
        raise DataError("coefficient must be positive", file=path, column="coefficient")
    if np.any(out["assessment_coef"].to_numpy() <= 0):
        raise DataError("assessment_coef must be positive", file=path, column="assessment_coef")
    if "assessment_score" in table.column_names:
        score = _floats(table, "assessment_score", path)
        values = score.to_numpy(zero_copy_only=False)
        bad = ~np.isnan(values) & ((values < 0) | (values > 100))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError("assessment_score must lie in 0..100", file=path, column="assessment_score",
                            value=table["assessment_score"][i].as_py(), row=i + 2)
        out = out.append_column("assessment_score", score)
    return out.combine_chunks()
