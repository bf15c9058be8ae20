"""Decoding a single Parquet case file ahead of use, with pyarrow alone.

A caller may start a :class:`ParquetPrefetch` (or :func:`prefetch`) before the rest of its work
(``pyarrow.compute``, numpy work, the rule set), so that the first batches decode meanwhile in a
thread. This module imports nothing but pyarrow; :mod:`dipengine.reader` builds on it (same
columns, dictionaries and batch size as its own reads). ``dipengine group`` no longer uses it:
on 2M and 20M cases it was not measurably faster, and it held six batches ahead (docs/grouping.md).
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

BATCH_SIZE = 131_072
"""Rows per batch of a streaming read (also ``dipengine.io.BATCH_SIZE``)."""
PREFETCH_DEPTH = 6
"""Batches :func:`prefetch` decodes ahead: the decoder runs on while a fresh process imports."""

DICTIONARY_COLUMNS = (
    "hospital_id", "insurance_type", "person_type", "insured_region", "remote_filing", "sex", "age",
    "age_days", "los", "discharge_mode", "admit_date", "discharge_date", "main_dx", "main_proc",
)
"""Low-cardinality columns: read from Parquet as dictionaries and normalised per distinct value."""


def column_kind(t: pa.DataType) -> str:
    """Kind of an Arrow type as the reader sees it: text, int, float, date, list, null or other."""
    if pa.types.is_dictionary(t):
        return column_kind(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "date"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list" if column_kind(t.value_type) in ("text", "null", "int") else "other"
    return "other"


def lean_columns_of(names) -> list[str]:
    """Input columns a lean read needs: all but ``patient_id`` (which nothing checks)."""
    return [c for c in names if c != "patient_id"]


def parquet_batches(path, batch_size, pick, rename=None):
    """(schema, total rows, batch iterator) of one Parquet file; code lists are decoded straight
    to dictionaries, one row group at a time (a batch spanning two cannot hold nested dictionaries).
    ``rename``: contract column -> the file's column (an input schema's plan), so that a national
    extract's code columns are read as dictionaries too."""
    first = pq.read_schema(path)
    if rename:
        back = {v: k for k, v in rename.items()}
        as_contract = pa.schema([f.with_name(back.get(f.name, f.name)) for f in first])
        wanted = dictionary_columns(as_contract, nested=True)
        read = [(rename.get(c.split(".")[0], c.split(".")[0]) + c[len(c.split(".")[0]):]) for c in wanted]
    else:
        read = dictionary_columns(first, nested=True)
    f = pq.ParquetFile(path, read_dictionary=read)
    schema, total = f.schema_arrow, f.metadata.num_rows
    batches = (b for rg in range(f.num_row_groups)
               for b in f.iter_batches(batch_size=batch_size, row_groups=[rg], columns=pick(schema.names)))
    return schema, total, batches


class ParquetPrefetch:
    """Decode the batches of one Parquet file in a background thread, from the moment it is made.

    Made early (before the rest of a caller's imports), the first batches are decoded meanwhile;
    then reading (decoding) and the ordered duplicate pass run in different threads. Pass it as the
    ``source`` of :func:`dipengine.reader.map_cases`: the batches are exactly those it would read
    itself (same columns, dictionaries and batch size; it reads the
    file itself when this one could not open it, so errors are reported the usual way).

    Parameters
    ----------
    path : str
        A single ``.parquet`` file.
    batch_size : int
        Rows per batch (must equal ``map_cases``'s).
    lean : bool
        Read the columns of a lean read (:func:`lean_columns_of`), as ``map_cases(lean=True)``.
    depth : int
        Batches decoded ahead (bounds the memory).
    """

    def __init__(self, path, batch_size: int = BATCH_SIZE, *, lean: bool = True, depth: int = 4):
        import queue
        import threading

        self.path, self.batch_size, self.lean = str(path), int(batch_size), lean
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._info = None  # (schema, total) once opened
        self._thread = threading.Thread(target=self._run, name="dipengine-parquet", daemon=True)
        self._thread.start()

    _END = object()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            try:
                names = pq.read_schema(self.path).names
                cols = lean_columns_of(names) if self.lean else None
                schema, total, batches = parquet_batches(
                    self.path, self.batch_size, lambda ns: None if cols is None else [c for c in ns if c in set(cols)])
                self._info = (schema, total)
            finally:
                self._ready.set()  # opened, or not: map_cases then opens the file itself
            for b in batches:
                if not self._put((b, None)):
                    return
            self._put((self._END, None))
        except BaseException as e:  # re-raised in the consumer's thread (reading errors included)
            if self._info is not None:
                self._put((self._END, e))

    def opened(self):
        """``(schema, total rows, batch iterator)``, or None if the file could not be opened."""
        self._ready.wait()
        if self._info is None:
            return None
        return (*self._info, self._batches())

    def _batches(self):
        while True:
            item, err = self._queue.get()
            if item is self._END:
                if err is not None:
                    raise err
                return
            yield item

    def close(self) -> None:
        """Stop decoding (the thread ends at its next batch)."""
        self._stop.set()


def dictionary_columns(schema: pa.Schema, nested: bool = False) -> list[str]:
    """Columns to read as dictionaries; with ``nested``, also the elements of text code lists
    (``other_dx.list.element``: Parquet decodes them to codes, nothing is hashed per element)."""
    cols = [c for c in DICTIONARY_COLUMNS if c in schema.names and column_kind(schema.field(c).type) == "text"]
    if nested:
        for c in ("other_dx", "other_procs"):
            t = schema.field(c).type if c in schema.names else None
            if t is not None and pa.types.is_list(t) and column_kind(t.value_type) == "text" and \
                    not pa.types.is_dictionary(t.value_type):
                cols.append(f"{c}.list.{t.value_field.name}")
    return cols


def prefetch(source, batch_size: int = BATCH_SIZE):
    """``source`` with its decoding started now in a background thread, when it is a single
    Parquet file (a :class:`ParquetPrefetch` of a lean read, for ``stream.group_file``); else
    ``source`` itself."""
    path = str(source)
    if os.path.isfile(path) and path.lower().endswith((".parquet", ".pq")):
        return ParquetPrefetch(path, batch_size, lean=True, depth=PREFETCH_DEPTH)
    return source
