"""Catalogue statistics in bounded memory, for :func:`dipengine.catalog.build_catalog`.

The whole-array build holds about 41 bytes per history case and sorts them all; this module gives
the same integer tables (and the same floating-point sums) from per-batch accumulation and spill
files, so that memory stays about flat in the number of history cases:

1. **Pass 1** (:class:`HistoryStats`, fed the reducer's compact columns batch by batch): each case
   is keyed by its *cell* ``(subcategory, main procedure, related candidate, treatment class)``
   (ids in order of first appearance, :class:`KeyIndex`); per cell and year it sums cases,
   cost (int fen) and level-1 cases, per year the pool budgets and discharge years; and it writes
   ``(cell, year, cost, level, subtype flags)`` per case, in run order, to an Arrow IPC spill file.
   Every group choice of the catalogue depends on a case only through its cell, so the group of
   each cell follows from these sums alone.
2. **Pass 2** (:func:`group_tables`): the spill file is read back, each case gets its group; the
   auxiliary-subtype counts and sums per (group, year) are summed, and ``(segment, cost, level)``
   is spread over partition files so that each (group, year) *segment* lies in one file, its
   cases in run order. A file holds about ``partition_rows`` cases (consecutive segments).
3. **Per partition**: the trimming of :func:`trim_mask` (the same stable sort by cost, ties in run
   order), the trimmed counts and sums, the squared deviations from the trimmed mean summed in
   run order within each segment (bit-identical to one ``bincount`` over all cases), and the last
   year's kept cases per hospital level.

Memory: one batch, the per-cell tables (3 int64 per cell and year) and one partition (about
``partition_rows`` cases, or the largest segment when that is bigger). Disk: about 15 bytes per
case (pass-1 file) plus 13 (partitions), in a folder removed on success and on error.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from dipengine.errors import DataError

PARTITION_ROWS = 500_000
"""Cases a partition file is planned to hold (its trimming sort: about 100 bytes per case, 50 MB)."""

MAX_PARTITIONS = 256
"""Most partition files open at once (``partition_rows`` grows beyond this many)."""

def mask_dtype(n_bands: int):
    """Smallest unsigned integer type with one bit per age band (at most 64 bands)."""
    return next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.dtype(t).itemsize * 8 >= n_bands)


def case_schema(n_bands: int = 7) -> pa.Schema:
    """Pass-1 spill file: cell id, history-year index, total cost (int fen), hospital level (0: not
    in the registry), the subtype flags (bit 0 death, bits 1-2 severity 0/2/3, bits 3-4 CCI level)
    and the age-band mask (bit b: the case is in age band b; the smallest unsigned type with
    ``n_bands`` bits), in run order."""
    return pa.schema([
        pa.field("cell", pa.int32(), nullable=False), pa.field("year", pa.int8(), nullable=False),
        pa.field("cost", pa.int64(), nullable=False), pa.field("level", pa.int8(), nullable=False),
        pa.field("flags", pa.uint8(), nullable=False),
        pa.field("bands", pa.from_numpy_dtype(mask_dtype(n_bands)), nullable=False),
    ], metadata={"dipengine": "catalog-cases/2"})


CASE_SCHEMA = case_schema()
"""The pass-1 spill schema under the default options (7 age bands: ``bands`` uint8)."""

PART_SCHEMA = pa.schema([
    pa.field("seg", pa.int64(), nullable=False), pa.field("cost", pa.int64(), nullable=False),
    pa.field("level", pa.int8(), nullable=False),
], metadata={"dipengine": "catalog-segments/1"})
"""Partition file: segment ``group * n_years + year``, cost (int fen), hospital level; run order."""

_WRITE = pa.ipc.IpcWriteOptions(compression="lz4")


# --------------------------------------------------------------------------------------------
# group-bys on compact columns (shared with the whole-array build)


def year_table(key: np.ndarray, year: np.ndarray, ny: int, k: int, values=None) -> np.ndarray:
    """(k, ny) int64 counts (``values`` None) or exact int64 sums of ``values`` per key and year."""
    flat = key.astype(np.int64) * ny + year
    if values is None:
        return np.bincount(flat, minlength=k * ny).reshape(k, ny).astype(np.int64)
    out = np.zeros(k * ny, dtype=np.int64)
    np.add.at(out, flat, values)
    return out.reshape(k, ny)


def factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 code per element, distinct keys in order of first appearance)."""
    codes_, uniques = pd.factorize(keys, sort=False)
    return codes_.astype(np.int64), np.asarray(uniques)


def trim_mask(gid, year, cost, ny, trim, min_group) -> np.ndarray:
    """Cases kept after trimming per (group, year): bool per case.

    In a (group, year) with ``min_group`` cases or more the ``floor(n * lo)`` cheapest and
    ``floor(n * (1 - hi))`` dearest cases are left out; equal costs rank in input order (a stable
    sort), so the answer for a (group, year) depends only on its own cases in their order.

    Parameters
    ----------
    gid, year : numpy.ndarray
        Group id and history-year index (int) per case.
    cost : numpy.ndarray
        int64 fen per case.
    ny : int
        History years.
    trim : (float, float) or None
        Quantiles ``lo, hi`` kept; None keeps every case.
    min_group : int
        Cases a (group, year) needs before it is trimmed.
    """
    keep = np.ones(len(gid), dtype=bool)
    if trim is None or len(gid) == 0:
        return keep
    lo, hi = trim
    seg = gid.astype(np.int64) * ny + year
    if cost.min() >= 0 and cost.max() < (1 << 31) and seg.max() < (1 << 31):
        order = np.argsort((seg << 31) | cost, kind="stable")
    else:
        order = np.lexsort((cost, seg))
    s = seg[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, len(s)])
    seg_of = np.repeat(np.arange(len(starts)), sizes)
    rank = np.arange(len(s)) - starts[seg_of]
    n = sizes[seg_of]
    k_lo = np.floor(n * lo + 1e-9).astype(np.int64)
    k_hi = np.floor(n * (1.0 - hi) + 1e-9).astype(np.int64)
    kept = (n < min_group) | ((rank >= k_lo) & (rank < n - k_hi))
    keep[order] = kept
    return keep


class KeyIndex:
    """int64 keys -> ids 0, 1, ... in order of first appearance, over many batches.

    Known keys are held sorted (16 bytes per distinct key); a batch costs a factorisation of the
    batch and a binary search of its distinct keys.
    """

    def __init__(self):
        self._sorted = np.zeros(0, np.int64)
        self._ids = np.zeros(0, np.int64)
        self._new: list[np.ndarray] = []
        self.n = 0

    def encode(self, keys: np.ndarray) -> np.ndarray:
        """int64 id per key (new keys get the next ids, in order of first appearance)."""
        inv, uni = factorize(np.asarray(keys, np.int64))
        pos = np.searchsorted(self._sorted, uni)
        hit = pos < len(self._sorted)
        hit[hit] = self._sorted[pos[hit]] == uni[hit]
        ids = np.empty(len(uni), np.int64)
        ids[hit] = self._ids[pos[hit]]
        new = np.flatnonzero(~hit)
        if len(new):
            ids[new] = self.n + np.arange(len(new))
            order = np.argsort(uni[new])
            at = np.searchsorted(self._sorted, uni[new][order])
            self._sorted = np.insert(self._sorted, at, uni[new][order])
            self._ids = np.insert(self._ids, at, ids[new][order])
            self._new.append(uni[new])
            self.n += len(new)
        return ids[inv]

    def keys(self) -> np.ndarray:
        """The distinct keys in id order (int64)."""
        if len(self._new) != 1:
            self._new = [np.concatenate(self._new) if self._new else np.zeros(0, np.int64)]
        return self._new[0]


# --------------------------------------------------------------------------------------------
# spill folder and files


class SpillDir:
    """The temporary folder of one build (removed by :meth:`close`); turns I/O errors into DataError.

    Parameters
    ----------
    spill_dir : path, optional
        Where the folder is made (default :func:`tempfile.gettempdir`, i.e. ``TMPDIR``).
    """

    def __init__(self, spill_dir=None):
        where = tempfile.gettempdir() if spill_dir is None else os.fspath(spill_dir)
        try:
            self.root = tempfile.mkdtemp(prefix="dipengine-catalog-", dir=where)
        except OSError as e:
            raise DataError(f"cannot make a folder for the catalogue spill files ({e.strerror or e})",
                            file=where) from None
        self._n = 0

    def new_path(self, stem: str) -> str:
        self._n += 1
        return os.path.join(self.root, f"{stem}-{self._n:06d}.arrow")

    @contextlib.contextmanager
    def io(self):
        try:
            yield
        except DataError:
            raise
        except (OSError, pa.ArrowException) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"cannot use the catalogue spill files ({text})", file=self.root) from None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _Writer:
    """One Arrow IPC stream spill file being written (opened at the first batch)."""

    __slots__ = ("path", "schema", "rows", "sink", "writer")

    def __init__(self, path: str, schema: pa.Schema):
        self.path, self.schema, self.rows, self.sink, self.writer = path, schema, 0, None, None

    def write(self, arrays: list) -> None:
        if self.writer is None:
            self.sink = pa.OSFile(self.path, "wb")
            self.writer = pa.ipc.new_stream(self.sink, self.schema, options=_WRITE)
        self.writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self.rows += len(arrays[0])

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        finally:
            self.writer = None
            if self.sink is not None:
                self.sink.close()
                self.sink = None


def _read(w: _Writer, spill: SpillDir) -> Iterator[pa.RecordBatch]:
    """The batches of a closed spill file, checked against what was written."""
    got = 0
    if w.rows:
        with spill.io(), pa.OSFile(w.path, "rb") as src:  # read, not mapped: the pages are freed
            reader = pa.ipc.open_stream(src)
            if not reader.schema.equals(w.schema, check_metadata=True):
                raise DataError("a catalogue spill file was altered (schema)", file=w.path)
            for batch in reader:
                got += batch.num_rows
                yield batch
    if got != w.rows:
        raise DataError(f"a catalogue spill file holds {got} rows, {w.rows} were written", file=w.path)


# --------------------------------------------------------------------------------------------
# pass 1


class HistoryStats:
    """Pass 1 of the bounded build: per-cell sums and the run-order case spill file.

    Parameters
    ----------
    ny : int
        History years.
    spill : SpillDir
        Where the case file goes.

    Attributes
    ----------
    budgets : list of int
        Last year's fund payments (int fen) of in-pool cases, employee and resident pool.
    cal_years : list of dict
        Per history year: discharge calendar year -> cases (years > 0 only).
    """

    def __init__(self, ny: int, spill: SpillDir, n_bands: int = 7):
        self.ny = ny
        self.spill = spill
        self.pairs = KeyIndex()  # (main + 1, related + 1)
        self.cells = KeyIndex()  # (subcategory, pair, class)
        self._tab = np.zeros((3, ny, 0), np.int64)  # cases, cost fen, level-1 cases; per year and cell
        self.budgets = [0, 0]
        self.cal_years: list[dict] = [{} for _ in range(ny)]
        self.cases = _Writer(spill.new_path("cases"), case_schema(n_bands))

    def add(self, r: dict, yi: int) -> None:
        """Take one reduced batch (``_Reducer.reduce`` columns) of history year ``yi``."""
        main1 = r["main"].astype(np.int64) + 1
        rel1 = r["rel"].astype(np.int64) + 1
        pair = self.pairs.encode((main1 << 32) | rel1)
        sub = r["sub"].astype(np.int64)
        if self.pairs.n >= (1 << 31) or (len(sub) and sub.max() >= (1 << 30)):
            raise DataError("history: too many distinct diagnosis or procedure combinations")
        cell = self.cells.encode((sub << 33) | (pair << 2) | r["cls"].astype(np.int64))
        n = self.cells.n
        if n >= (1 << 31):
            raise DataError("history: too many distinct diagnosis or procedure combinations")
        if n > self._tab.shape[2]:
            grown = np.zeros((3, self.ny, max(n, 2 * self._tab.shape[2], 1024)), np.int64)
            grown[:, :, :self._tab.shape[2]] = self._tab
            self._tab = grown
        cost = r["cost"]
        self._tab[0, yi, :n] += np.bincount(cell, minlength=n)
        np.add.at(self._tab[1, yi], cell, cost)
        level = r["level"]
        self._tab[2, yi, :n] += np.bincount(cell[level == 1], minlength=n)
        if yi == self.ny - 1:
            for p in (0, 1):
                mk = r["in_pool"] & (r["pool"] == p)
                self.budgets[p] += int(r["fund"][mk].sum())
        cal = r["cal_year"]
        vals, cnt = np.unique(cal[cal > 0], return_counts=True)
        found = self.cal_years[yi]
        for v, c in zip(vals.tolist(), cnt.tolist()):  # loop over distinct discharge years
            found[v] = found.get(v, 0) + c
        flags = (r["death"].astype(np.uint8) | (r["sev"].astype(np.uint8) << 1)
                 | (r["cci"].astype(np.uint8) << 3))
        with self.spill.io():
            self.cases.write([pa.array(cell.astype(np.int32)), pa.array(np.full(len(cell), yi, np.int8)),
                              pa.array(cost, pa.int64()), pa.array(level.astype(np.int8)), pa.array(flags),
                              pa.array(r["age_mask"])])

    def finish(self) -> None:
        """Close the case file (call once, after the last batch)."""
        with self.spill.io():
            self.cases.close()

    def cell_columns(self) -> dict:
        """Per cell (id order): ``sub``, ``main``, ``rel`` (int64, -1 none), ``cls`` (int64) and
        ``cnt``, ``cost``, ``lvl1``: (cells, ny) int64 cases, cost fen, level-1 cases."""
        n = self.cells.n
        keys = self.cells.keys()
        pair_keys = self.pairs.keys()[keys >> 2 & ((1 << 31) - 1)]
        tab = self._tab[:, :, :n]
        return {
            "sub": keys >> 33, "cls": keys & 3,
            "main": (pair_keys >> 32) - 1, "rel": (pair_keys & ((1 << 32) - 1)) - 1,
            "cnt": np.ascontiguousarray(tab[0].T), "cost": np.ascontiguousarray(tab[1].T),
            "lvl1": np.ascontiguousarray(tab[2].T),
        }


# --------------------------------------------------------------------------------------------
# pass 2 and the partitions


def _plan(seg_sizes: np.ndarray, partition_rows: int, max_partitions: int) -> tuple[np.ndarray, int]:
    """Partition of each segment (consecutive segments, about ``partition_rows`` cases a file)."""
    total = int(seg_sizes.sum())
    per = max(int(partition_rows), -(-total // max(int(max_partitions), 1)), 1)
    start = np.cumsum(seg_sizes) - seg_sizes
    raw = start // per
    used, part = np.unique(raw[seg_sizes > 0], return_inverse=True)
    out = np.zeros(len(seg_sizes), np.int64)
    out[seg_sizes > 0] = part
    return out, len(used)


def group_tables(stats: HistoryStats, cell_gid: np.ndarray, n_groups: int, n_core: int, seg_sizes: np.ndarray,
                 trim, min_trim_group: int, *, subtypes: tuple, partition_rows: int | None = None,
                 max_partitions: int | None = None) -> dict:
    """The per-(group, year) tables that need each case's group: passes 2 and 3.

    Parameters
    ----------
    stats : HistoryStats
        Pass 1, finished.
    cell_gid : numpy.ndarray
        int64 group id of each cell.
    n_groups, n_core : int
        Groups in all; core groups (ids ``0 .. n_core - 1``).
    seg_sizes : numpy.ndarray
        (n_groups, ny) int64 cases per group and year (plans the partitions).
    trim, min_trim_group
        As for :func:`trim_mask`.
    subtypes : tuple of str
        The auxiliary subtypes (``catalog.subtypes(options)``: death, severity_III, severity_II,
        cci_3, cci_2, cci_1, then one per age band, in the order of the band mask's bits).
    partition_rows, max_partitions : int, optional
        Default :data:`PARTITION_ROWS`, :data:`MAX_PARTITIONS`; small values only for tests.

    Returns
    -------
    dict
        ``k_cnt``, ``k_sum`` (n_groups, ny) int64 kept cases and their cost fen; ``ss`` (n_groups,
        ny) float64 squared deviations (fen²) of kept cases from their (group, year) mean;
        ``sub``: list of ``(subtype, counts, cost sums)`` ((n_groups, ny) int64, core cases only;
        subtypes without a core case left out); ``sl_cnt``, ``sl_sum``: (n_groups, 4) int64 last
        year's kept cases and cost fen per hospital level.
    """
    ny, G = stats.ny, n_groups
    spill = stats.spill
    per = PARTITION_ROWS if partition_rows is None else int(partition_rows)
    most = MAX_PARTITIONS if max_partitions is None else int(max_partitions)
    sizes = np.ascontiguousarray(seg_sizes, np.int64).ravel()
    part_of, n_parts = _plan(sizes, per, most)
    s_cnt = np.zeros((len(subtypes), G * ny), np.int64)
    s_sum = np.zeros((len(subtypes), G * ny), np.int64)
    parts = [_Writer(spill.new_path("segments"), PART_SCHEMA) for _ in range(n_parts)]
    n_cells = len(cell_gid)
    try:
        for batch in _read(stats.cases, spill):
            cell = batch.column(0).to_numpy().astype(np.int64)
            if len(cell) and (cell.min() < 0 or cell.max() >= n_cells):
                raise DataError("a catalogue spill file was altered (cells)", file=stats.cases.path)
            year = batch.column(1).to_numpy().astype(np.int64)
            cost = batch.column(2).to_numpy()
            level = batch.column(3).to_numpy()
            flags = batch.column(4).to_numpy()
            bands = batch.column(5).to_numpy()
            gid = cell_gid[cell]
            seg = gid * ny + year
            _subtype_sums(s_cnt, s_sum, seg, cost, flags, bands, gid < n_core, len(subtypes))
            p = part_of[seg]
            order = np.argsort(p, kind="stable")
            bounds = np.searchsorted(p[order], np.arange(n_parts + 1))
            seg_o, cost_o, level_o = seg[order], cost[order], level[order]
            with spill.io():
                for j in np.flatnonzero(bounds[1:] > bounds[:-1]):  # loop over partitions
                    a, b = bounds[j], bounds[j + 1]
                    parts[j].write([pa.array(seg_o[a:b]), pa.array(cost_o[a:b]), pa.array(level_o[a:b])])
    finally:
        with spill.io():
            for w in parts:
                w.close()
    with spill.io():
        os.remove(stats.cases.path)  # disk use stays about one copy of the cases
    out = {
        "k_cnt": np.zeros(G * ny, np.int64), "k_sum": np.zeros(G * ny, np.int64),
        "ss": np.zeros(G * ny, np.float64),
        "sl_cnt": np.zeros(G * 4, np.int64), "sl_sum": np.zeros(G * 4, np.int64),
    }
    planned = np.bincount(part_of[sizes > 0], weights=sizes[sizes > 0], minlength=n_parts).astype(np.int64)
    for j, w in enumerate(parts):  # loop over partitions
        if w.rows != planned[j]:
            raise DataError(f"a catalogue spill file holds {w.rows} rows, {planned[j]} were planned", file=w.path)
        _partition(w, spill, out, ny, trim, min_trim_group)
        with spill.io():
            if os.path.exists(w.path):
                os.remove(w.path)
    res = {k: out[k].reshape(G, 4 if k.startswith("sl") else ny) for k in out}
    res["sub"] = [(st, s_cnt[i].reshape(G, ny), s_sum[i].reshape(G, ny))
                  for i, st in enumerate(subtypes) if s_cnt[i].any()]
    return res


def _subtype_sums(s_cnt, s_sum, seg, cost, flags, bands, core, n_subtypes) -> None:
    """Add one batch's core cases to the subtype counts and cost sums (rows: subtypes, flat segments)."""
    death = (flags & 1).astype(bool)
    sev = (flags >> 1) & 3
    cci = (flags >> 3) & 3
    masks = [death, sev == 3, sev == 2, cci == 3, cci == 2, cci == 1]
    masks += [((bands >> bands.dtype.type(b)) & 1).astype(bool) for b in range(n_subtypes - len(masks))]
    for i, mk in enumerate(masks):  # loop over subtypes
        mk = mk & core
        if mk.any():
            s_cnt[i] += np.bincount(seg[mk], minlength=s_cnt.shape[1])
            np.add.at(s_sum[i], seg[mk], cost[mk])


def _partition(w: _Writer, spill: SpillDir, out: dict, ny: int, trim, min_trim_group) -> None:
    """Trim one partition's segments and add their tables to ``out`` (flat arrays)."""
    batches = list(_read(w, spill))
    if not batches:
        return
    table = pa.Table.from_batches(batches)
    del batches
    seg = table.column(0).to_numpy()
    cost = table.column(1).to_numpy()
    level = table.column(2).to_numpy().astype(np.int64)
    del table
    gid, year = seg // ny, seg % ny
    keep = trim_mask(gid, year, cost, ny, trim, min_trim_group)
    sk, ck = seg[keep], cost[keep]
    out["k_cnt"] += np.bincount(sk, minlength=len(out["k_cnt"]))
    np.add.at(out["k_sum"], sk, ck)
    # the same float operations as the whole-array build; each segment's squares are summed
    # in run order, as one bincount over all cases sums them
    dev = ck - out["k_sum"][sk] / np.maximum(out["k_cnt"][sk], 1)
    out["ss"] += np.bincount(sk, weights=dev * dev, minlength=len(out["ss"]))
    last = keep & (year == ny - 1)
    key = gid[last] * 4 + level[last]
    out["sl_cnt"] += np.bincount(key, minlength=len(out["sl_cnt"]))
    np.add.at(out["sl_sum"], key, cost[last])
