"""The repeated ``case_id`` rows of a whole run, found in bounded memory (``DUPLICATE_CASE``, contract §7).

A row is a repeat when its cleaned ``case_id`` was seen in an earlier row of the run (the first
occurrence is not; a null id never is, and is not remembered): what
:class:`dipengine._libs.validate.SeenSet` answers batch by batch. ``SeenSet`` holds every distinct id
(about 62 bytes per case: 1.6 GiB at 20M cases). :func:`find_repeats` gives the same answer from a
pre-pass over the ids alone, in memory that grows with the number of *repeats*, not of cases:

1. the ``(row, id)`` pairs are spread by a hash of the id over ``P`` spill files (Arrow IPC files in
   a temporary folder), ``P`` chosen so that a file holds about :data:`PARTITION_ROWS` rows; equal
   ids share a file, and each file holds its rows in run order;
2. each file is read back and run through a fresh ``SeenSet``, whose marks are exactly the run's
   repeats among those rows (a file that came out much larger than planned, from skew or more than
   ``MAX_PARTITIONS * PARTITION_ROWS`` rows, is split again with another hash first);
3. the marked row numbers of all files are merged into one sorted int64 array.

:class:`RepeatMarker` then answers the reader's batches, in order, from that array. The folder is
removed when the pass ends, on success or error. :func:`memory_repeats` is the plain ``SeenSet``
pass, the reference.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from dipengine.arrays import string_buffers
from dipengine.errors import DataError

PARTITION_ROWS = 1_000_000
"""Rows a spill partition is planned to hold (a fresh ``SeenSet`` over them: about 60 MiB)."""

MAX_PARTITIONS = 256
"""Most spill files written at once (each an open file while the ids are spread)."""

MAX_DEPTH = 2
"""How many times an oversized partition may be split again (each time with another hash)."""

SPILL_SCHEMA = pa.schema(
    [pa.field("row", pa.int64(), nullable=False), pa.field("id", pa.large_string(), nullable=False)],
    metadata={"dipengine": "duplicate-spill/1"},
)
"""Schema of a spill file: the run's row number (0-based) and the id, rows ascending."""

_SALTS = (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0)  # one hash per split level


def partition_count(n_rows: int, partition_rows: int | None = None, max_partitions: int | None = None) -> int:
    """Spill partitions for ``n_rows`` rows: ``ceil(n_rows / partition_rows)``, within ``[1, max_partitions]``."""
    per = PARTITION_ROWS if partition_rows is None else int(partition_rows)
    most = MAX_PARTITIONS if max_partitions is None else int(max_partitions)
    if per < 1 or most < 1:
        raise ValueError("partition_rows and max_partitions must be at least 1")
    return int(min(most, max(1, -(-max(int(n_rows), 0) // per))))


def _large(ids) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(ids, pa.string())
    return ids if pa.types.is_large_string(ids.type) else ids.cast(pa.large_string())


def memory_repeats(ids: Iterable) -> tuple[np.ndarray, int]:
    """The repeats by one in-memory ``SeenSet`` over the whole run (the reference of :func:`find_repeats`).

    Parameters
    ----------
    ids : iterable of pyarrow string arrays
        The run's ids batch by batch, in run order, as the reader's duplicate pass sees them
        (cleaned; null = no id).

    Returns
    -------
    rows : numpy.ndarray
        int64, sorted: the 0-based run row numbers of the repeats.
    n_rows : int
        Rows seen.
    """
    from dipengine._libs.validate import SeenSet

    seen, found, start = SeenSet(), [], 0
    for arr in ids:
        arr = _large(arr)
        out = np.zeros(len(arr), np.uint8)
        seen.mark(*string_buffers(arr), out)
        found.append(start + np.flatnonzero(out))
        start += len(arr)
    return (np.concatenate(found).astype(np.int64, copy=False) if found else np.zeros(0, np.int64)), start


def find_repeats(ids: Iterable, n_rows: int | None = None, *, spill_dir=None, partition_rows: int | None = None,
                 max_partitions: int | None = None) -> tuple[np.ndarray, int]:
    """The repeats of a run's ids, by hash-partitioned spill files (see the module docstring).

    The answer equals :func:`memory_repeats`'s on every input. Memory: one batch of ``ids``, a
    ``SeenSet`` over one partition (about ``partition_rows`` rows) and 8 bytes per repeat; disk:
    about (id bytes + 16) per non-null row, in a folder removed before returning or raising.

    Parameters
    ----------
    ids : iterable of pyarrow string arrays
        As for :func:`memory_repeats`. Errors raised while iterating it propagate unchanged.
    n_rows : int, optional
        Rows expected in all (chooses the partition count); None: ``max_partitions`` partitions.
    spill_dir : path, optional
        Where the temporary folder is made (default: :func:`tempfile.gettempdir`).
    partition_rows, max_partitions : int, optional
        Rows planned per partition and most partitions at once (default :data:`PARTITION_ROWS`,
        :data:`MAX_PARTITIONS`); small values only for tests.

    Returns
    -------
    rows : numpy.ndarray
        int64, sorted: the 0-based run row numbers of the repeats.
    n_rows : int
        Rows seen.

    Raises
    ------
    DataError
        The spill folder cannot be made (``spill_dir`` missing, not writable), or a spill file
        cannot be written or read back as it was written (disk full, removed meanwhile).
    """
    per = PARTITION_ROWS if partition_rows is None else int(partition_rows)
    most = MAX_PARTITIONS if max_partitions is None else int(max_partitions)
    n_parts = partition_count(most * per if n_rows is None else n_rows, per, most)
    where = tempfile.gettempdir() if spill_dir is None else os.fspath(spill_dir)
    try:
        root = tempfile.mkdtemp(prefix="dipengine-duplicates-", dir=where)
    except OSError as e:
        raise DataError(f"cannot make a folder for the duplicate-case_id pass ({e.strerror or e})",
                        file=where) from None
    try:
        spill = _Spill(root)
        counted = [0]

        def numbered() -> Iterator[tuple[np.ndarray, pa.Array]]:
            for arr in ids:
                arr = _large(arr)
                yield np.arange(counted[0], counted[0] + len(arr), dtype=np.int64), arr
                counted[0] += len(arr)

        parts = _write_parts(numbered(), n_parts, _SALTS[0], spill)
        found = []
        for part in parts:
            found.extend(_resolve(part, spill, counted[0], per, most, 0))
        rows = np.sort(np.concatenate(found)) if found else np.zeros(0, np.int64)
        return rows.astype(np.int64, copy=False), counted[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)


class RepeatMarker:
    """Answers the reader's duplicate pass from :func:`find_repeats`' rows, batch after batch.

    Has ``SeenSet.mark``'s signature, so the reader holds one or the other; ``mark`` must see
    the run's batches in order (a running row offset says where each starts).

    Parameters
    ----------
    rows : numpy.ndarray
        int64, sorted: the run's repeat rows.
    n_rows : int
        Rows of the run.
    label : str
        The source, named in the error raised when the batches do not fit the pre-pass.
    """

    def __init__(self, rows: np.ndarray, n_rows: int, label: str = "input"):
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.n_rows = int(n_rows)
        self.label = label
        self.offset = 0

    def __len__(self) -> int:
        return len(self.rows)

    def mark(self, data, offsets, valid, out) -> None:
        """Write into ``out`` (uint8, one per row of this batch) 1 where the row repeats an earlier id.

        ``data`` and ``offsets`` are not read (the pre-pass read the ids); ``valid`` (uint8, one
        per row) checks that a marked row has an id, as it must when the source was read twice
        alike.

        Raises
        ------
        ValueError
            ``valid`` not as long as ``out``.
        DataError
            The batches run past the pre-pass's rows, or a marked row has no id: the source
            changed between the two reads.
        """
        n = len(out)
        if len(valid) != n:
            raise ValueError(f"valid has length {len(valid)}, expected {n} (one per row, as out)")
        start, stop = self.offset, self.offset + n
        if stop > self.n_rows:
            raise DataError(f"the cases changed while being read ({stop:,} rows, {self.n_rows:,} before)",
                            file=self.label)
        lo, hi = np.searchsorted(self.rows, [start, stop])
        at = self.rows[lo:hi] - start
        out[:] = 0
        out[at] = 1
        if len(at) and not np.asarray(valid)[at].all():
            raise DataError("the cases changed while being read (a repeated case_id is now empty)",
                            file=self.label)
        self.offset = stop


# --------------------------------------------------------------------------------------------
# spill files

class _Spill:
    """The temporary folder: names the files, turns their I/O errors into :class:`DataError`."""

    def __init__(self, root: str):
        self.root = root
        self._n = 0

    def new_path(self) -> str:
        self._n += 1
        return os.path.join(self.root, f"part-{self._n:06d}.arrow")

    @contextlib.contextmanager
    def io(self):
        try:
            yield
        except DataError:
            raise
        except (OSError, pa.ArrowException) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"cannot use the duplicate-case_id spill files ({text})", file=self.root) from None


class _Part:
    """One spill file being written, then read: its path, rows and id bytes."""

    __slots__ = ("path", "rows", "nbytes", "writer", "sink")

    def __init__(self, path: str):
        self.path, self.rows, self.nbytes, self.writer, self.sink = path, 0, 0, None, None

    def write(self, batch: pa.RecordBatch, nbytes: int) -> None:
        if self.writer is None:
            self.sink = pa.OSFile(self.path, "wb")
            self.writer = pa.ipc.new_file(self.sink, SPILL_SCHEMA)
        self.writer.write_batch(batch)
        self.rows += batch.num_rows
        self.nbytes += nbytes

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        finally:
            self.writer = None
            if self.sink is not None:
                self.sink.close()
                self.sink = None


def _write_parts(chunks, n_parts: int, salt: int, spill: _Spill) -> list[_Part]:
    """Spread ``(rows int64, ids large_string)`` chunks over ``n_parts`` spill files (the
    non-empty ones are returned, closed)."""
    from dipengine._libs.duplicates import partition_rows

    parts = [_Part(spill.new_path()) for _ in range(n_parts)]
    try:
        for rows, ids in chunks:  # errors of the source itself propagate unchanged
            data, offsets, valid = string_buffers(ids)
            order = np.empty(len(ids), np.int64)
            starts = np.empty(n_parts + 1, np.int64)
            k = partition_rows(data, offsets, valid, salt, order, starts)
            if k == 0:
                continue
            sel = order[:k]
            batch = pa.record_batch([pa.array(rows[sel]), ids.take(pa.array(sel))], schema=SPILL_SCHEMA)
            ends = offsets[sel + 1] - offsets[sel]  # bytes per taken row
            byte_at = np.zeros(k + 1, np.int64)
            np.cumsum(ends, out=byte_at[1:])
            with spill.io():
                for p in np.flatnonzero(starts[1:] > starts[:-1]):
                    a, b = int(starts[p]), int(starts[p + 1])
                    parts[p].write(batch.slice(a, b - a), int(byte_at[b] - byte_at[a]))
    finally:
        with spill.io():
            for part in parts:
                part.close()
    return [part for part in parts if part.rows]


def _read_part(part: _Part, spill: _Spill, n_rows: int) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """The ``(rows, ids)`` batches of a spill file, checked against what was written."""
    got, last = 0, -1
    with spill.io(), pa.memory_map(part.path) as src:
        reader = pa.ipc.open_file(src)
        if not reader.schema.equals(SPILL_SCHEMA, check_metadata=True):
            raise DataError("a duplicate-case_id spill file was altered (schema)", file=part.path)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            rows = batch.column(0).to_numpy()
            ids = batch.column(1)
            if len(rows) and (rows[0] <= last or rows[-1] >= n_rows or ids.null_count
                              or (len(rows) > 1 and not (rows[1:] > rows[:-1]).all())):
                raise DataError("a duplicate-case_id spill file was altered (rows)", file=part.path)
            got += len(rows)
            last = int(rows[-1]) if len(rows) else last
            yield rows, ids
    if got != part.rows:
        raise DataError(f"a duplicate-case_id spill file holds {got} rows, {part.rows} were written",
                        file=part.path)


def _resolve(part: _Part, spill: _Spill, n_rows: int, per: int, most: int, depth: int) -> list[np.ndarray]:
    """The repeat rows of one spill file (splitting it again first when it is far over size)."""
    from dipengine._libs.validate import SeenSet

    if part.rows > 2 * per and depth < MAX_DEPTH:
        children = _write_parts(_read_part(part, spill, n_rows), partition_count(part.rows, per, most),
                                _SALTS[depth + 1], spill)
        with spill.io():
            os.remove(part.path)  # disk use stays about one copy of the ids
        if len(children) > 1 or (children and children[0].rows < part.rows):
            found = []
            for child in children:
                found.extend(_resolve(child, spill, n_rows, per, most, depth + 1))
            return found
        part = children[0]  # one id or few, repeated: no hash splits it, and a SeenSet of it is small
    seen = SeenSet()
    seen.reserve(part.rows, part.nbytes)
    found = []
    for rows, ids in _read_part(part, spill, n_rows):
        out = np.zeros(len(rows), np.uint8)
        seen.mark(*string_buffers(ids), out)
        found.append(rows[out.view(bool)])
    with spill.io():
        os.remove(part.path)
    return found
