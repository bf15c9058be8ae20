"""Table input and output: Parquet, CSV, Arrow IPC, datasets; atomic writes.

Readers return Arrow; CSV columns are read as text so that codes keep their leading zeros and
money is converted exactly later (:mod:`dipengine.money`). Writers go through a temporary
file and a rename, so a failed run never leaves half a result.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from dipengine.errors import DataError
from dipengine.parquet_source import BATCH_SIZE  # noqa: F401  (one definition; io.BATCH_SIZE is its public name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_frame(obj) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _expand(source) -> list[str]:
    """Files behind a path, directory or glob (sorted, so the order is stable)."""
    if isinstance(source, (list, tuple)):
        files: list[str] = []
        for s in source:
            files.extend(_expand(s))
        return files
    s = str(source)
    if any(ch in s for ch in "*?["):
        files = sorted(glob.glob(s, recursive=True))
        if not files:
            raise DataError("no file matches this pattern", file=s)
        return files
    p = Path(s)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if not files:
            raise DataError("directory holds no .parquet file", file=s)
        return files
    if not p.exists():
        raise DataError("file not found", file=s)
    return [s]


def _kind(path: str) -> str:
    low = path.lower()
    if low.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        return "csv"
    if low.endswith((".arrow", ".feather", ".ipc", ".arrows")):
        return "ipc"
    return "parquet"


def _read_csv(path: str) -> pa.Table:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, "rb") as f:
        head = f.readline()
    if not head.strip():
        raise DataError("CSV file is empty (no header row)", file=path)
    names = pcsv.read_csv(
        pa.BufferReader(head), parse_options=pcsv.ParseOptions(delimiter=delimiter)
    ).column_names
    return pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=1 << 24),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _read_ipc(path: str) -> pa.Table:
    try:
        with pa.memory_map(path) as src:
            return ipc.open_file(src).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(path) as src:
            return ipc.open_stream(src).read_all()


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as text, the way a CSV file holds it (lists joined with ``|``)."""
    return _csv_ready(pa.table({"c": col}))["c"].cast(pa.string())


def _unify_types(tables: list[pa.Table]) -> list[pa.Table]:
    """Make the files of one input agree on column types before they are concatenated.

    A column typed differently in different files (typically a CSV file, read as text, next to
    a typed Parquet file) becomes text in all of them; the case reader parses text and typed
    columns alike, so mixing file formats does not change any result.
    """
    types: dict[str, set] = {}
    for t in tables:
        for field in t.schema:
            types.setdefault(field.name, set()).add(field.type)
    mixed = {name for name, ts in types.items() if len(ts) > 1}
    if not mixed:
        return tables
    out = []
    for t in tables:
        for name in mixed & set(t.column_names):
            i = t.column_names.index(name)
            t = t.set_column(i, name, _as_text(t[name]))
        out.append(t)
    return out


def read_table(source, columns=None) -> pa.Table:
    """Read a table from a path, directory, glob, list of paths, DataFrame or Arrow object.

    Raises :class:`DataError` naming the file when it cannot be read.
    """
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    if _is_frame(source):
        return pa.Table.from_pandas(source, preserve_index=False)
    files = _expand(source)
    tables = []
    for f in files:
        try:
            kind = _kind(f)
            if kind == "csv":
                t = _read_csv(f)
            elif kind == "ipc":
                t = _read_ipc(f)
            else:
                t = pq.read_table(f)
        except DataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(f"cannot read file ({str(e).splitlines()[0]})", file=f) from None
        tables.append(t)
    if len(tables) == 1:
        table = tables[0]
    else:
        try:
            table = pa.concat_tables(_unify_types(tables), promote_options="permissive")
        except (pa.ArrowException, ValueError) as e:
            raise DataError(f"files do not share one schema ({e})", file=files[0]) from None
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def iter_batches(source, columns=None, batch_size: int = BATCH_SIZE) -> Iterator[pa.RecordBatch]:
    """Stream record batches from any source :func:`read_table` takes (Parquet streams lazily)."""
    if not isinstance(source, (pa.Table, pa.RecordBatch)) and not _is_frame(source):
        files = _expand(source)
        if all(_kind(f) == "parquet" for f in files):
            try:
                import pyarrow.dataset as ds  # here, not at the top: it imports pandas (0.2 s)

                dataset = ds.dataset(files, format="parquet")
                yield from dataset.scanner(columns=columns, batch_size=batch_size).to_batches()
                return
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"cannot read dataset ({str(e).splitlines()[0]})", file=files[0]) from None
    table = read_table(source, columns=columns)
    yield from table.to_batches(max_chunksize=batch_size)


def sha256_file(path) -> str:
    """sha256 hex digest of a file."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_files(source) -> list[str]:
    """The files behind a source (empty for in-memory objects)."""
    if isinstance(source, (pa.Table, pa.RecordBatch)) or _is_frame(source):
        return []
    return _expand(source)


def _csv_ready(table: pa.Table) -> pa.Table:
    """List columns joined with ``|`` so the CSV writer can take them."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pa.chunked_array(
                [pc.binary_join(c.cast(pa.list_(pa.string())), "|") for c in col.chunks],
                type=pa.string(),
            ) if col.num_chunks else pa.chunked_array([], pa.string())
        elif pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names)


def write_table(table: pa.Table, path) -> None:
    """Write Parquet (or CSV when the name ends in ``.csv``) atomically: temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        if path.suffix.lower() == ".csv":
            pcsv.write_csv(_csv_ready(table), tmp)
        else:
            pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    On failure the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / "x")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_batches(tables, path, schema: pa.Schema, *, write_statistics=True) -> int:
    """Write a stream of tables/record batches to one file atomically; returns the row count.

    Parquet (one row group per item; dictionary columns are written as Parquet dictionaries but
    read back as their value type, as :func:`write_table` output would be) or CSV when the name
    ends in ``.csv``. Nothing appears at ``path`` unless the whole stream was written; with no
    items an empty file with ``schema`` is written. ``write_statistics`` (Parquet): True, False
    or the columns whose min/max statistics are written (as ``pyarrow.parquet.ParquetWriter``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    rows = 0
    try:
        if path.suffix.lower() == ".csv":
            plain = _csv_ready(schema.empty_table()).schema
            with pcsv.CSVWriter(tmp, plain) as w:
                for t in tables:
                    t = t if isinstance(t, pa.Table) else pa.Table.from_batches([t])
                    w.write_table(_csv_ready(t))
                    rows += t.num_rows
        else:
            with pq.ParquetWriter(tmp, schema, store_schema=False, write_statistics=write_statistics) as w:
                for t in tables:
                    t = t if isinstance(t, pa.Table) else pa.Table.from_batches([t])
                    w.write_table(t)
                    rows += t.num_rows
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return rows
