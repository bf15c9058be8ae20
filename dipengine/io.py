"""Table input and output: Parquet, CSV, Arrow IPC, Excel workbooks, datasets; atomic writes.

Readers return Arrow; CSV and workbook columns are read as text so that codes keep their leading
zeros and money is converted exactly later (:mod:`dipengine.money`). CSV text may be UTF-8 (with
or without BOM) or GBK/GB18030, detected; the file type comes from the name, else from the
first bytes. Writers go through a temporary sibling and an atomic rename (an exchange for
directories), so the final path always holds the old complete result or the new one; they never write
over a device node, a FIFO or a directory dipengine did not write (see "Writing outputs" below and
docs/formats.md "Where outputs go").
"""
from __future__ import annotations

import codecs
import contextlib
import contextvars
import datetime as _dt
import errno
import glob
import itertools
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
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


# --- Writing outputs -------------------------------------------------------------------------
#
# Every output goes through a temporary sibling named ``.<name>.<pid>-<host>.<random>.tmp`` and is
# then moved in: a file with rename(2), a directory with an atomic exchange (renameat2
# RENAME_EXCHANGE), so the final path always holds the old complete result or the new one. An
# existing directory is replaced only when it is a dipengine output (OUTPUT_MARKER, written into
# every output directory, lists the files written) or when forced. See docs/formats.md "Outputs".

OUTPUT_MARKER = ".dipengine-output"
"""Name of the marker file in every directory dipengine writes whole (JSON: the files written)."""

STALE_SECONDS = 3600
"""Age after which a temporary output of another machine (or of an older dipengine) is stale."""

_FORCE = contextvars.ContextVar("dipengine_replace_any", default=False)


@contextlib.contextmanager
def replace_allowed(force: bool = True):
    """While open, output directories are replaced even when they are not dipengine outputs
    (what ``--force`` does); device nodes and FIFOs are still refused."""
    token = _FORCE.set(bool(force))
    try:
        yield
    finally:
        _FORCE.reset(token)


# CSV cells a spreadsheet would evaluate as a formula (OWASP "CSV injection"): text starting with
# = + - @ TAB or CR. A text cell that is a plain decimal number (-12.50, +3) is left as it is:
# a spreadsheet reads it as that number, which is harmless.
_FORMULA_START = r"^[=+\-@\t\r]"
_PLAIN_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


def escape_formula_text(arr: pa.Array) -> pa.Array:
    """Text cells that a spreadsheet would run as a formula, prefixed with ``'`` (as exporters do)."""
    risky = pc.match_substring_regex(arr, _FORMULA_START)
    if not pc.any(risky).as_py():
        return arr
    risky = pc.fill_null(pc.and_(risky, pc.invert(pc.match_substring_regex(arr, _PLAIN_NUMBER))), False)
    if not pc.any(risky).as_py():
        return arr
    return pc.if_else(risky, pc.binary_join_element_wise("'", arr, ""), arr)


def _escape_name(name: str) -> str:
    return escape_formula_text(pa.array([name], pa.string()))[0].as_py()


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _csv_ready(table: pa.Table, escape: bool = False) -> pa.Table:
    """List columns joined with ``|`` so the CSV writer can take them; with ``escape`` (a CSV
    output), formula-like text cells and column names get a leading ``'``."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pa.chunked_array(
                [pc.binary_join(c.cast(pa.list_(pa.string())), "|") for c in col.chunks],
                type=pa.string(),
            ) if col.num_chunks else pa.chunked_array([], pa.string())
            if escape:
                col = pa.chunked_array([escape_formula_text(c) for c in col.chunks], type=col.type)
        elif pa.types.is_dictionary(col.type):
            if escape and _is_text(col.type.value_type):  # each distinct value once
                col = pa.chunked_array([pa.DictionaryArray.from_arrays(c.indices, escape_formula_text(c.dictionary))
                                        for c in col.chunks], type=col.type)
            col = col.cast(col.type.value_type)
        elif escape and _is_text(col.type):
            col = pa.chunked_array([escape_formula_text(c) for c in col.chunks], type=col.type)
        cols.append(col)
    names = [_escape_name(n) for n in table.column_names] if escape else table.column_names
    return pa.Table.from_arrays(cols, names=names)


# --- where an output may go ------------------------------------------------------------------

_HOST = None


def _host_tag() -> str:
    """Six hex digits naming this machine in temporary names (pids are only meaningful here)."""
    global _HOST
    if _HOST is None:
        import hashlib
        import socket

        _HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
    return _HOST


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-{_host_tag()}."


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def _remove(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def clean_stale(path) -> list[str]:
    """Remove the temporary outputs of killed runs beside ``path`` (only this module's own names,
    ``.<name>.<pid>-<host>.<random>.tmp``); returns what was removed.

    A temporary output is stale when the process that made it is gone (same machine), or, when
    it was made on another machine or by an older dipengine (``.<name>.<random>.tmp``), when it
    has not changed for :data:`STALE_SECONDS`. An old result set aside (``.old``) while its final
    path is missing is moved back instead.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:([0-9]+)-([0-9a-f]{{6}})\.)?[a-z0-9_]{{8}}\.(tmp|old)")
    removed = []
    try:
        entries = [e.name for e in os.scandir(path.parent) if e.name.startswith(f".{path.name}.")]
    except OSError:
        return removed
    now = time.time()
    for name in sorted(entries):
        m = pattern.fullmatch(name)
        if m is None:
            continue
        entry = os.path.join(path.parent, name)
        try:
            if m.group(1) is not None and m.group(2) == _host_tag():
                stale = not _pid_alive(int(m.group(1)))
            else:
                stale = now - os.lstat(entry).st_mtime > STALE_SECONDS
            if not stale:
                continue
            if m.group(3) == "old" and not os.path.lexists(path):
                os.rename(entry, path)  # the old result, set aside by a run killed before it moved the new one in
                continue
            _remove(entry)
            removed.append(entry)
        except OSError:
            continue
    return removed


def _special(mode: int) -> str | None:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _not_replaceable(d: Path) -> str | None:
    """Why the existing directory ``d`` may not be replaced whole (None: it may)."""
    names = os.listdir(d)
    if not names:
        return None
    marker = d / OUTPUT_MARKER
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        files = doc["files"]
        if doc.get("written_by") != "dipengine" or not isinstance(files, dict):
            raise ValueError
        written = os.stat(marker).st_mtime_ns
    except FileNotFoundError:
        return f"it holds no {OUTPUT_MARKER} marker, so dipengine did not write it"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {OUTPUT_MARKER} marker is unreadable"
    for root, dirs, fnames in os.walk(d):
        for n in list(dirs):  # a nested output (rewritten on its own since, e.g. demo/rules): checked by its marker
            sub = Path(root, n)
            if not os.path.islink(sub) and (sub / OUTPUT_MARKER).is_file():
                dirs.remove(n)
                why = _not_replaceable(sub)
                if why is not None:
                    return why
        for n in dirs + fnames:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, d).replace(os.sep, "/")
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) or n == OUTPUT_MARKER:
                continue
            if rel not in files or not stat.S_ISREG(st.st_mode):
                return f"it holds {rel}, which dipengine did not write there"
            if st.st_size != files[rel] or st.st_mtime_ns > written + 2_000_000_000:
                return f"{rel} was changed after dipengine wrote it"
    return None


def _resolve_output(path, *, directory: bool, force: bool = False) -> Path:
    """The real path an output goes to, after checking what is there now (DataError if it may
    not be written)."""
    given = Path(path)
    if str(path) == "":
        raise DataError("empty output path")
    try:
        st = os.stat(given)  # follows links: /dev/stdout is a device or a FIFO
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise DataError("cannot write here: a parent of this path is a file, not a directory", file=given) from None
    if st is not None:
        kind = _special(st.st_mode)
        if kind is not None:
            raise DataError(f"is {kind}: outputs are written only as regular files and directories", file=given)
        if directory and not stat.S_ISDIR(st.st_mode) and not force:
            raise DataError("exists and is a file, not a directory; remove it, choose another path, or pass "
                            "--force to replace it", file=given)
        if not directory and stat.S_ISDIR(st.st_mode):
            raise DataError("is a directory; give the output file's name", file=given)
    real = Path(os.path.realpath(given))
    if st is not None and directory and stat.S_ISDIR(st.st_mode) and not force:
        why = _not_replaceable(real)
        if why is not None:
            raise DataError(f"exists and is not a dipengine output ({why}); it is replaced only with --force "
                            "(which deletes everything in it), or choose another directory", file=given)
    return real


def _make_parent(path: Path) -> None:
    """Create the directories above an output (missing parents are created, as ``mkdir -p``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"cannot create the directory {path.parent}: a part of it is a file", file=path) from None


def _input_paths(source) -> list[str]:
    if source is None or isinstance(source, (pa.Table, pa.RecordBatch)) or _is_frame(source):
        return []
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in _input_paths(s)]
    if not isinstance(source, (str, os.PathLike)):
        return []
    s = os.fspath(source)
    if any(ch in s for ch in "*?["):
        return sorted(glob.glob(s, recursive=True))
    return [s]


def _inside(a: str, b: str) -> bool:
    """``a`` is strictly inside the directory ``b``."""
    return a != b and a.startswith(b.rstrip(os.sep) + os.sep)


def check_output(out, inputs=(), *, directory: bool = False, force=None) -> Path:
    """Check, before a run does its work, that ``out`` may be written; returns its real path.

    Raises :class:`DataError` naming ``out`` when it is a device node, FIFO or socket; a
    directory where a file is written (or a file where a directory is, unless ``force``); an
    existing directory that is not a dipengine output (unless ``force``: see
    :func:`replace_allowed`); equal to one of ``inputs`` (paths, directories, globs or lists of
    them; ``None`` and in-memory tables are skipped) or inside an input directory; or, for a
    directory output, when an input lies inside it (it would be deleted with the old output).
    """
    force = _FORCE.get() if force is None else bool(force)
    real = _resolve_output(out, directory=directory, force=force)
    r_out = str(real)
    for f in _input_paths(list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]):
        if not os.path.exists(f):  # not a path (a shipped name such as "demo"), or missing: read later
            continue
        r_in = os.path.realpath(f)
        if r_in == r_out:
            raise DataError(f"the output is also an input ({f}); write it elsewhere", file=out)
        if _inside(r_out, r_in):
            raise DataError(f"the output is inside the input directory {f}; write it elsewhere", file=out)
        if directory and _inside(r_in, r_out):
            raise DataError(f"the input {f} is inside this output directory, which is replaced whole; "
                            "write it elsewhere", file=out)
    return real


# --- the writers -----------------------------------------------------------------------------

def _os_error(e: OSError, path) -> OSError:
    """``e`` as an OSError naming ``path`` and saying what failed in words (Arrow's messages
    carry the errno only in their text)."""
    if e.filename is not None and not os.path.basename(str(e.filename)).startswith("."):
        return e
    code, what = e.errno, e.strerror
    m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)  # Arrow: "Error writing bytes ... [errno 28] ..."
    if m:
        code, what = int(m.group(1)), None
    if code is not None and not what:
        what = os.strerror(code)
    if not what:
        what = (str(e).splitlines() or [type(e).__name__])[0]
    return OSError(code, f"cannot write: {what}", str(path))


@contextlib.contextmanager
def _atomic_file(path: Path):
    """Yield a temporary file name beside ``path``; on success it is renamed to ``path``.

    An OSError of the writing (not one marked as the input's, see :func:`write_batches`) is
    re-raised naming ``path``.
    """
    _make_parent(path)
    clean_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _os_error(e, path) from e
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not getattr(e, "_dipengine_input", False):
            raise _os_error(e, path) from e
        raise


def _pulled(tables):
    """The items of ``tables``; an OSError raised while producing one (reading the input) is
    marked so that it is not reported as the output's."""
    it = iter(tables)
    while True:
        try:
            t = next(it)
        except StopIteration:
            return
        except OSError as e:
            e._dipengine_input = True
            raise
        yield t


def write_table(table: pa.Table, path) -> None:
    """Write Parquet (or CSV when the name ends in ``.csv``) atomically: temp file, then rename.

    ``path`` may not be a directory, a device node or a FIFO (:class:`DataError`); missing parent
    directories are created. CSV text cells that a spreadsheet would evaluate (``=``, ``+``,
    ``-``, ``@``, tab, CR first) are written with a leading ``'``.
    """
    path = _resolve_output(path, directory=False)
    with _atomic_file(path) as tmp:
        if path.suffix.lower() == ".csv":
            pcsv.write_csv(_csv_ready(table, escape=True), tmp)
        else:
            pq.write_table(table, tmp)


# --- row groups -----------------------------------------------------------------------------

ROW_GROUP_BATCHES = 4
"""Batches per output row group: every row group repeats the group dictionaries (20,000 names for
a full catalogue), so four batches per row group write about 20% faster than one."""
ROW_GROUP_ROWS = ROW_GROUP_BATCHES * BATCH_SIZE
"""Rows per output row group (the last rows of a run excepted, see :func:`_row_groups`). Fixed in
rows, not batches, so that the file's bytes do not depend on ``batch_size``."""


def next_cut(pos: int, rows: int, last: int, total: int | None) -> int:
    """End (a row number) of the row group that starts at row ``pos``: the next multiple of
    ``rows``; when the ``total`` is known, also the last multiple of ``last`` before the end
    (so that the run's last rows are a row group of their own) and the end itself."""
    cut = (pos // rows + 1) * rows
    if total is not None and total > pos:
        tail = (total - 1) // last * last if last else 0
        if pos < tail < cut:
            cut = tail
        cut = min(cut, total)
    return cut


def row_groups(tables, rows: int = ROW_GROUP_ROWS, last: int = BATCH_SIZE, total=lambda: None):
    """The rows of ``tables`` (in order) cut into row groups at fixed row numbers: every ``rows``
    rows from the start and, once ``total()`` (the run's row count, None when unknown) is known,
    at the last multiple of ``last`` before the end, so that once the last batch is grouped little
    is left to write. The cuts depend on row numbers only, never on how ``tables`` were cut."""
    buf, n, pos = [], 0, 0  # buffered tables and their rows; rows yielded before them
    cache: dict = {}  # for unique_dictionaries
    for t in tables:
        at = 0
        while at < t.num_rows:
            cut = next_cut(pos, rows, last, total())
            if cut <= pos + n:  # a wrong total: fall back to the fixed cuts
                cut = (pos // rows + 1) * rows
            take = min(t.num_rows - at, cut - pos - n)
            buf.append(t if take == t.num_rows else t.slice(at, take))
            at += take
            n += take
            if pos + n == cut:
                yield unique_dictionaries(pa.concat_tables(buf), cache)
                buf, pos, n = [], pos + n, 0
    if buf:
        yield unique_dictionaries(pa.concat_tables(buf), cache)


def unique_dictionary(chunk: pa.DictionaryArray, cache: dict) -> pa.DictionaryArray:
    """``chunk`` with a dictionary of distinct values (the same one when it has them already).
    ``cache``: dictionary buffers -> (that dictionary, kept alive; its distinct values or None;
    old -> new index), so that the rule set's group columns are looked at once per run."""
    d = chunk.dictionary
    key = (str(d.type), d.offset, len(d), tuple(0 if b is None else b.address for b in d.buffers()))
    hit = cache.get(key)
    if hit is None or hit[0] is not d and not hit[0].equals(d):
        u = pc.unique(d)
        hit = (d, None, None) if len(u) == len(d) else (d, u, pc.index_in(d, value_set=u).cast(chunk.indices.type))
        if len(d) > 64:  # small vocabularies are made per batch: checked each time, not kept
            cache[key] = hit
    if hit[1] is None:
        return chunk
    return pa.DictionaryArray.from_arrays(hit[2].take(chunk.indices), hit[1], safe=False)


def unique_dictionaries(t: pa.Table, cache: dict) -> pa.Table:
    """``t`` with every dictionary column in the form whose Parquet bytes depend on its values only.

    Arrow's Parquet writer, given a dictionary that repeats a value (the rule set's ``group_type``
    column repeats four values 20,000 times, ``dip_name`` may repeat names), writes the dictionary
    page from a buffer sized for all the entries but fills it with the distinct ones only: the rest
    of the page (about 5 KB) is whatever memory held before, so the file differed from run to run;
    and the column fell back to plain pages. Here each dictionary is made unique (indices remapped;
    once per rule set), and a column whose chunks carry different dictionaries (where the writer
    would switch to plain pages at a place that depends on the batch size) is dictionary-encoded
    again in order of first appearance.
    """
    for i, f in enumerate(t.schema):
        col = t.column(i)
        if not pa.types.is_dictionary(f.type) or col.num_chunks == 0:
            continue
        chunks = [unique_dictionary(c, cache) for c in col.chunks]
        first = chunks[0].dictionary
        if all(c.dictionary is first or c.dictionary.equals(first) for c in chunks[1:]):
            new = pa.chunked_array(chunks, f.type)
        else:
            dense = pa.chunked_array([c.dictionary_decode() for c in chunks], f.type.value_type).combine_chunks()
            new = pa.chunked_array([pc.dictionary_encode(dense).cast(f.type)])
        t = t.set_column(i, f, new)
    return t


def write_batches(tables, path, schema: pa.Schema, *, write_statistics=True, use_dictionary=True) -> int:
    """Write a stream of tables/record batches to one file atomically; returns the row count.

    Parquet (one row group per item; dictionary columns are written as Parquet dictionaries but
    read back as their value type, as :func:`write_table` output would be) or CSV when the name
    ends in ``.csv``. Nothing appears at ``path`` unless the whole stream was written; with no
    items an empty file with ``schema`` is written. ``write_statistics`` (Parquet): True, False
    or the columns whose min/max statistics are written (as ``pyarrow.parquet.ParquetWriter``);
    ``use_dictionary`` likewise: True, False or the columns Parquet dictionary-encodes.
    """
    path = _resolve_output(path, directory=False)
    rows = 0
    with _atomic_file(path) as tmp:
        if path.suffix.lower() == ".csv":
            plain = _csv_ready(schema.empty_table(), escape=True).schema
            with pcsv.CSVWriter(tmp, plain) as w:
                for t in _pulled(tables):
                    t = t if isinstance(t, pa.Table) else pa.Table.from_batches([t])
                    w.write_table(_csv_ready(t, escape=True))
                    rows += t.num_rows
        else:
            with pq.ParquetWriter(tmp, schema, store_schema=False, write_statistics=write_statistics,
                                  use_dictionary=use_dictionary) as w:
                for t in _pulled(tables):
                    t = t if isinstance(t, pa.Table) else pa.Table.from_batches([t])
                    w.write_table(t)
                    rows += t.num_rows
    return rows


# --- directories -----------------------------------------------------------------------------

RENAME_EXCHANGE = 2
_renameat2 = None  # the libc function, False when there is none


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                f = libc.renameat2
                f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                f.restype = ctypes.c_int
                _renameat2 = f
            except (OSError, AttributeError):  # not glibc >= 2.28
                pass
    if not _renameat2:
        return False
    import ctypes

    at_fdcwd = -100
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # this file system cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, path: Path) -> Path | None:
    """Move ``new`` to ``path``; returns where the old content now is (to delete), or None.

    At every instant ``path`` holds the old complete result or the new one: an atomic exchange
    where the system has one; else the old is renamed aside (``.old``), the new renamed in, and
    a failure between the two renames puts the old back (a kill there is undone by the next run:
    :func:`clean_stale`).
    """
    if not os.path.lexists(path):
        os.rename(new, path)
        return None
    if _exchange(new, path):
        return new
    aside = Path(str(new)[: -len(".tmp")] + ".old")
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside, path)
        raise
    return aside


def _marker_text(d: Path) -> str:
    from dipengine import __version__

    files = {}
    for root, dirs, fnames in os.walk(d):
        dirs.sort()
        for n in sorted(fnames):
            if n == OUTPUT_MARKER:
                continue
            p = os.path.join(root, n)
            files[os.path.relpath(p, d).replace(os.sep, "/")] = os.lstat(p).st_size
    doc = {
        "written_by": "dipengine",
        "version": __version__,
        "about": "dipengine wrote this directory whole. The next run writing here replaces it whole, but only "
                 "while it holds just these files, unchanged (else it stops, unless --force).",
        "files": files,
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def _write_markers(top: Path) -> None:
    """Write :data:`OUTPUT_MARKER` in ``top`` and refresh it in every directory below that has one
    (a nested output, e.g. the demo's ``rules/``), deepest first so that each is newest."""
    nested = [Path(root) for root, _dirs, fnames in os.walk(top) if OUTPUT_MARKER in fnames and Path(root) != top]
    for d in sorted(nested, key=lambda p: -len(p.parts)) + [top]:
        (d / OUTPUT_MARKER).write_text(_marker_text(d), encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path, *, force=None):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    An existing ``path`` must be an empty directory or a dipengine output (it holds
    :data:`OUTPUT_MARKER`, listing the files written, and nothing else), else
    :class:`DataError` before anything is done; ``force`` (default: :func:`replace_allowed`)
    replaces any directory or file, never a device node or FIFO. The new directory gets its
    marker and is swapped in atomically (:func:`_swap_in`); the old is then deleted. On failure
    the temporary directory is removed and ``path`` is left as it was. Temporary outputs of
    killed runs beside ``path`` are removed first (:func:`clean_stale`).
    """
    force = _FORCE.get() if force is None else bool(force)
    path = _resolve_output(path, directory=True, force=force)
    _make_parent(path)
    clean_stale(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise _os_error(e, path) from e
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _resolve_output(path, directory=True, force=force)  # again: the run may have taken long
        _write_markers(tmp)
        old = _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _os_error(e, path) from e
        raise
    if old is not None:
        _remove(str(old))
