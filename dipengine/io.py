"""Table input and output: Parquet, CSV, Arrow IPC, Excel workbooks, datasets; atomic writes.

Readers return Arrow; CSV and workbook columns are read as text so that codes keep their leading
zeros and money is converted exactly later (:mod:`dipengine.money`). CSV text may be UTF-8 (with
or without BOM) or GBK/GB18030, detected; the file type comes from the name, else from the
first bytes. Writers go through a temporary
file and a rename, so a failed run never leaves half a result.
"""
from __future__ import annotations

import codecs
import contextlib
import datetime as _dt
import glob
import itertools
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


_CSV_NAMES = (".csv", ".csv.gz", ".txt", ".tsv")
_IPC_NAMES = (".arrow", ".feather", ".ipc", ".arrows")
_XLSX_NAMES = (".xlsx", ".xlsm")
_PARQUET_NAMES = (".parquet", ".pq", ".parq")

# What a file looks like, from its first bytes (see _looks): the end of "it looks like ...".
_LOOKS = {
    "parquet": "a Parquet file; name it .parquet",
    "ipc": "an Arrow IPC file; name it .arrow",
    "xlsx": "an Excel workbook (.xlsx); name it .xlsx",
    "zip": "a ZIP archive; unpack it first",
    "xls": "an old Excel .xls workbook; save it as .xlsx or CSV",
    "gzip": "a gzip-compressed file; name it .csv.gz if it holds CSV",
    "text": "a text (CSV) file; name it .csv",
    "binary": "none of Parquet, Arrow IPC, CSV or .xlsx",
    "empty": "an empty file",
}
_KIND_NAMES = {"parquet": "a Parquet file", "ipc": "an Arrow IPC file", "csv": "a CSV text file",
               "xlsx": "an .xlsx workbook"}
_KIND_LOOKS = {"parquet": "parquet", "ipc": "ipc", "csv": "text", "xlsx": "xlsx"}  # what each kind looks like


def _looks(head: bytes, path: str | None = None) -> str:
    """What a file whose first bytes are ``head`` looks like: a key of :data:`_LOOKS`."""
    if not head:
        return "empty"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((b"ARROW1", b"\xff\xff\xff\xff", b"FEA1")):  # IPC file, IPC stream, Feather v1
        return "ipc"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        if path is not None:
            import zipfile

            with contextlib.suppress(OSError, zipfile.BadZipFile):
                with zipfile.ZipFile(path) as z:
                    if "xl/workbook.xml" in z.namelist():
                        return "xlsx"
        return "zip"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # OLE2 compound file: .xls
        return "xls"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "text"
    return "binary" if b"\x00" in head[:4096] else "text"


def _sniff(path: str) -> str:
    """:func:`_looks` of a file on disk ("binary" when it cannot be opened)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "binary"
    return _looks(head, path)


def _kind(path: str) -> str:
    """How to read a file: ``csv``, ``ipc``, ``xlsx``, ``xls`` or ``parquet``.

    Decided by the name; a name without a known extension is read by its first bytes (Parquet or
    Arrow IPC), and anything else raises :class:`DataError` saying what the file looks like.
    """
    low = path.lower()
    if low.endswith(_CSV_NAMES):
        return "csv"
    if low.endswith(_IPC_NAMES):
        return "ipc"
    if low.endswith(_XLSX_NAMES):
        return "xlsx"
    if low.endswith(".xls"):
        return "xls"
    if low.endswith(_PARQUET_NAMES):
        return "parquet"
    looks = _sniff(path)
    if looks in ("parquet", "ipc"):
        return looks
    if looks == "empty":
        raise DataError("file is empty", file=path)
    raise DataError(f"cannot tell the file type from its name; it looks like {_LOOKS[looks]}", file=path)


def _misnamed(path: str, kind: str) -> DataError | None:
    """A DataError when a file that failed to read as ``kind`` looks like something else."""
    looks = _sniff(path)
    if looks == _KIND_LOOKS.get(kind) or looks == "binary":
        return None
    if looks == "empty":
        return DataError("file is empty", file=path)
    return DataError(f"not {_KIND_NAMES.get(kind, 'a table file')}: it looks like {_LOOKS[looks]}", file=path)


# --- CSV text: encoding ----------------------------------------------------------------------

CSV_SAMPLE_BYTES = 4 << 20
"""Bytes at the start of a CSV file decoded to detect its encoding (4 MiB)."""


class _NotUtf8(Exception):
    """A file detected as UTF-8 from its sample has invalid UTF-8 further on."""


def _codec(encoding: str, path: str) -> str:
    """The Python codec name of ``encoding`` (DataError when Python has no such codec)."""
    try:
        info = codecs.lookup(str(encoding))
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):  # not base64, rot13 ...
        raise DataError(f"unknown text encoding {encoding!r} (use e.g. utf-8, gbk, gb18030)", file=path)
    return info.name


def _detect(head: bytes, whole: bool) -> str:
    """Encoding of a CSV file from its first bytes: a UTF-16 byte-order mark, else UTF-8 when the
    sample decodes as UTF-8 (with or without BOM), else gb18030 (a superset of GBK)."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        # incremental and not final unless the sample is the whole file: a character cut at the
        # sample's end is not an error
        codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=whole)
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def _ascii_lines(codec: str) -> bool:
    return codecs.encode("\n", codec) == b"\n"


def _decode_failure(chunks, codec: str, final: bool = True):
    """(byte offset, line or None, reason) of the first byte sequence in ``chunks`` (bytes) that
    does not decode as ``codec``; None when all decodes. ``final``: the chunks end the text."""
    dec = codecs.getincrementaldecoder(codec)("strict")
    count_lines = _ascii_lines(codec)
    pos = lines = 0
    for chunk in itertools.chain(chunks, [b""] if final else []):
        pending = dec.getstate()[0]  # bytes of a character begun in the previous chunk
        try:
            dec.decode(chunk, final=final and not chunk)
        except UnicodeDecodeError as e:  # e.start counts from the pending bytes
            line = None
            if count_lines:
                line = lines - pending.count(b"\n") + (pending + chunk).count(b"\n", 0, e.start) + 1
            return pos - len(pending) + e.start, line, e.reason
        pos += len(chunk)
        if count_lines:
            lines += chunk.count(b"\n")
    return None


def _file_failure(path: str, codec: str):
    """:func:`_decode_failure` of a whole file (decompressed when its name ends in .gz)."""
    with pa.input_stream(path) as f:
        return _decode_failure(iter(lambda: f.read(1 << 22), b""), codec)


def _undecodable(path: str, codec: str, failure, detected: bool, utf8_at=None) -> DataError:
    at, line, reason = failure
    where = f"byte {at}" + (f" (line {line})" if line is not None else "")
    if detected:
        not_utf8 = "" if utf8_at is None else f" at byte {utf8_at}"
        return DataError(f"text encoding not recognised: not UTF-8{not_utf8}, and cannot decode as {codec} at "
                         f"{where}: {reason}; pass its encoding", file=path)
    return DataError(f"cannot decode as {codec} at {where}: {reason}", file=path)


def _csv_head(path: str) -> tuple[bytes, bool]:
    """The first :data:`CSV_SAMPLE_BYTES` of a CSV file (decompressed) and whether that is all of it."""
    with pa.input_stream(path) as f:  # compression detected from the name (.gz)
        head = f.read(CSV_SAMPLE_BYTES)
        whole = len(head) < CSV_SAMPLE_BYTES or not f.read(1)
    return head, whole


def _read_csv(path: str, encoding: str | None = None) -> pa.Table:
    """A CSV file as an all-text table; ``encoding`` None: detected (UTF-8 or gb18030)."""
    head, whole = _csv_head(path)
    looks = _looks(head[:4096], path if head.startswith(b"PK") else None)
    if looks not in ("text", "empty", "binary"):  # a stray NUL byte does not make a CSV file binary
        raise DataError(f"not a CSV text file: it looks like {_LOOKS[looks]}", file=path)
    if encoding is not None:
        return _read_csv_as(path, head, whole, _codec(encoding, path), detected=False)
    codec = _detect(head, whole)
    try:
        return _read_csv_as(path, head, whole, codec, detected=True)
    except _NotUtf8 as e:  # UTF-8 in the sample, not further on: read it again as gb18030
        return _read_csv_as(path, head, whole, "gb18030", detected=True, utf8_at=e.args[0])


def _read_csv_as(path, head, whole, codec, *, detected, utf8_at=None) -> pa.Table:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","

    def undecodable(failure):
        nonlocal utf8_at
        if detected and utf8_at is None:
            utf8_at = (_decode_failure([head], "utf-8", final=whole) or (None,))[0]
        return _undecodable(path, codec, failure, detected, utf8_at)

    dec, text, step = codecs.getincrementaldecoder(codec)("strict"), "", 1 << 16
    try:
        for at in range(0, len(head), step):  # up to the end of the header line
            text += dec.decode(head[at:at + step], final=whole and at + step >= len(head))
            if "\n" in text:
                break
    except UnicodeDecodeError:
        raise undecodable(_decode_failure([head], codec, final=whole)) from None
    first = text.split("\n", 1)[0].lstrip("\ufeff")
    if not first.strip():
        raise DataError("CSV file is empty (no header row)", file=path)
    names = pcsv.read_csv(
        pa.BufferReader((first + "\n").encode("utf-8")), parse_options=pcsv.ParseOptions(delimiter=delimiter)
    ).column_names
    arrow_encoding = "utf8" if codec in ("utf-8", "utf-8-sig") else codec  # Arrow skips a UTF-8 BOM itself
    try:
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=1 << 24, encoding=arrow_encoding),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except UnicodeDecodeError as e:  # met while transcoding, past the sample
        raise undecodable(_file_failure(path, codec) or ("?", None, e.reason)) from None
    except pa.ArrowInvalid as e:
        if arrow_encoding != "utf8" or "invalid UTF8" not in str(e):
            raise
        failure = _file_failure(path, "utf-8")
        if failure is None:
            raise
        if detected:
            raise _NotUtf8(failure[0]) from None
        raise undecodable(failure) from None


# --- Excel workbooks -------------------------------------------------------------------------

def _cell_text(v) -> str:
    """An Excel cell as the text a CSV export holds: numbers as Excel's General format shows
    them (up to 15 significant digits, no ``.0``), dates ISO, empty cells empty."""
    t = type(v)
    if t is str:
        return v
    if t is float:
        s = f"{v:.15g}"
        if "e" in s and v.is_integer():
            s = str(int(v))
        return s
    if t is bool:
        return "TRUE" if v else "FALSE"
    if t is int:
        return str(v)
    if t is _dt.datetime:  # midnight is a date cell (as python-calamine itself reads it)
        return v.date().isoformat() if v.time() == _dt.time() else v.isoformat(" ", "seconds")
    if t is _dt.date:
        return v.isoformat()
    if t is _dt.time:
        return v.isoformat("seconds")
    if v is None:
        return ""
    return str(v)


def _pick_sheet(names: list[str], sheet, path: str) -> str:
    listed = ", ".join(repr(n) for n in names)
    if sheet is None:
        if not names:
            raise DataError("workbook has no sheet", file=path)
        return names[0]
    if isinstance(sheet, str):
        if sheet in names:
            return sheet
        folded = [n for n in names if n.casefold() == sheet.strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        if not sheet.strip().isdigit():
            raise DataError(f"no sheet named {sheet!r}; the sheets are {listed}", file=path)
        sheet = int(sheet.strip())
    if isinstance(sheet, int) and not isinstance(sheet, bool):
        if 0 <= sheet < len(names):
            return names[sheet]
        if str(sheet) in names:  # e.g. a sheet named 2026, given as a number
            return str(sheet)
        raise DataError(f"no sheet {sheet} (0-based); the workbook has {len(names)}: {listed}", file=path)
    raise TypeError(f"sheet must be a name or a 0-based index, not {sheet!r}")


def _read_xlsx(path: str, sheet=None) -> pa.Table:
    """The sheet of an .xlsx/.xlsm workbook as an all-text table (first row = header)."""
    try:
        from python_calamine import CalamineWorkbook
    except ImportError:
        raise DataError('reading .xlsx needs python-calamine: pip install "dipengine[excel]"', file=path) from None
    try:
        wb = CalamineWorkbook.from_path(path)
    except Exception as e:  # noqa: BLE001 - calamine raises its own kinds (zip, XML, password) and OSError
        bad = _misnamed(path, "xlsx")
        if bad is not None:
            raise bad from None
        raise DataError(f"cannot read workbook ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        file=path) from None
    try:
        name = _pick_sheet(list(wb.sheet_names), sheet, path)
        try:
            rows = wb.get_sheet_by_name(name).to_python()
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read sheet {name!r} ({type(e).__name__}: {e})", file=path) from None
    finally:
        with contextlib.suppress(Exception):
            wb.close()
    if not rows or not any(_cell_text(v) for v in rows[0]):
        raise DataError(f"sheet {name!r} is empty (no header row)", file=path)
    header = [_cell_text(v) for v in rows[0]]
    body = [r for r in rows[1:] if r.count("") < len(r)]  # wholly empty rows: used-range padding
    columns = list(zip(*body)) if body else [() for _ in header]
    names, arrays = [], []
    for h, col in zip(header, columns):
        col = _column_text(col)
        if h == "" and col.count("") == len(col):
            continue  # an unnamed empty column at the edge of the used range
        names.append(h)
        arrays.append(pa.array(col, pa.string()))
    return pa.Table.from_arrays(arrays, names=names)


_NUMBER_TYPES = frozenset((bool, int, float))


def _column_text(col: tuple):
    """:func:`_cell_text` of every cell of a column, once per distinct value."""
    types = set(map(type, col))
    if types <= {str}:
        return col
    if len(types & _NUMBER_TYPES) > 1:  # 1 == 1.0 == True: one text per distinct value would mix them
        return [_cell_text(v) for v in col]
    text = {v: _cell_text(v) for v in set(col)}
    return list(map(text.__getitem__, col))


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


def read_table(source, columns=None, *, encoding=None, sheet=None) -> pa.Table:
    """Read a table from a path, directory, glob, list of paths, DataFrame or Arrow object.

    Files are read by their extension: Parquet (``.parquet``, ``.pq``), CSV (``.csv``,
    ``.csv.gz``, ``.txt``; ``.tsv`` tab-separated), Arrow IPC (``.arrow``, ``.feather``,
    ``.ipc``, ``.arrows``) and Excel workbooks (``.xlsx``, ``.xlsm``; needs python-calamine);
    a name without a known extension is read as Parquet or Arrow IPC by its first bytes.
    CSV and workbook columns are all read as text (codes keep their leading zeros).

    Parameters
    ----------
    encoding : str, optional
        Text encoding of CSV inputs: any Python codec name (``utf-8``, ``gbk``, ``gb18030``, ...).
        None (default): detected from the first 4 MiB: UTF-8 (a byte-order mark is dropped) when
        they decode as UTF-8, else gb18030, a superset of GBK.
    sheet : str or int, optional
        Sheet of a workbook input: its name or 0-based index (a text of digits that is no
        sheet's name counts as an index). None (default): the first sheet.

    ``encoding`` and ``sheet`` apply to every CSV / workbook file of the source and are ignored
    for other files.

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
        kind = _kind(f)
        try:
            if kind == "csv":
                t = _read_csv(f, encoding)
            elif kind == "ipc":
                t = _read_ipc(f)
            elif kind == "xlsx":
                t = _read_xlsx(f, sheet)
            elif kind == "xls":
                raise DataError("old .xls workbooks are not read; save as .xlsx or CSV", file=f)
            else:
                t = pq.read_table(f)
        except DataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            bad = _misnamed(f, kind) if os.path.isfile(f) else None
            if bad is not None:
                raise bad from None
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


def iter_batches(source, columns=None, batch_size: int = BATCH_SIZE, *, encoding=None,
                 sheet=None) -> Iterator[pa.RecordBatch]:
    """Stream record batches from any source :func:`read_table` takes (Parquet streams lazily).

    ``encoding`` and ``sheet``: as :func:`read_table` (CSV and workbook inputs).
    """
    if not isinstance(source, (pa.Table, pa.RecordBatch)) and not _is_frame(source):
        files = _expand(source)
        if all(_kind(f) == "parquet" for f in files):
            try:
                import pyarrow.dataset as ds  # here, not at the top: it imports pandas (0.2 s)

                dataset = ds.dataset(files, format="parquet")
                yield from dataset.scanner(columns=columns, batch_size=batch_size).to_batches()
                return
            except (pa.ArrowException, OSError) as e:
                bad = _misnamed(files[0], "parquet") if len(files) == 1 else None
                if bad is not None:
                    raise bad from None
                raise DataError(f"cannot read dataset ({str(e).splitlines()[0]})", file=files[0]) from None
    table = read_table(source, columns=columns, encoding=encoding, sheet=sheet)
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
