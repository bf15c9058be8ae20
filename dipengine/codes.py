"""Code normalisation to the 医保版 normal form (contract §2, dip-rules §1.3).

All functions work on whole Arrow arrays (usually a dictionary's uniques), never per row.
Normal form: NFKC (full-width to half-width), whitespace stripped, letters upper-case except
an ``x`` that is not the first character of the code or of the code after a dagger ``+``,
which is lower-case; empty strings become null.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# Well-formed 医保版 codes (shapes of the official 2.0 lists). Diagnoses: category letter + 2
# digits, optional "." + up to 4 characters ("x" is a placeholder there, "A33.x00"), optional
# "x###" extension, optional dagger/asterisk partner "+J17.0*". Procedures: 2 digits, optional
# "." + up to 5 characters, optional "x###" extension.
DX_PATTERN = (
    r"^[A-Z][0-9]{2}(\.[0-9A-Zx]{1,4})?(x[0-9]{3})?\*?"
    r"(\+[A-Z][0-9]{2}(\.[0-9A-Zx]{1,4})?(x[0-9]{3})?\*?)?$"
)
PROC_PATTERN = r"^[0-9]{2}(\.[0-9A-Zx]{1,5})?(x[0-9]{3,4})?$"


def normalize(arr) -> pa.Array:
    """Normalise an array of codes (string or dictionary array) to the 医保版 form.

    >>> normalize(pa.array([" k35.800X001", "x00.X00", "17.912a0", ""])).to_pylist()
    ['K35.800x001', 'X00.x00', '17.912A0', None]
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        return pa.DictionaryArray.from_arrays(arr.indices, normalize(arr.dictionary))
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    out = pc.utf8_normalize(arr, form="NFKC")
    out = pc.replace_substring_regex(out, r"\s+", "")
    out = pc.utf8_upper(out)
    # An X preceded by anything but "+" is an extension marker: lower-case it. Twice, because
    # matches do not overlap ("XX").
    out = pc.replace_substring_regex(out, r"([^+])X", r"\1x")
    out = pc.replace_substring_regex(out, r"([^+])X", r"\1x")
    out = pc.if_else(pc.equal(out, ""), pa.scalar(None, pa.string()), out)
    return out.cast(pa.string())


def main_code(dx) -> pa.Array:
    """The main code of a diagnosis: the part before a dagger ``+`` (``A01.000x005+J17.0*`` -> ``A01.000x005``)."""
    return pc.replace_substring_regex(dx, r"\+.*$", "")


def subcategory(dx) -> pa.Array:
    """亚目 key: the first 5 characters of the main code (``K35.800x001`` -> ``K35.8``)."""
    return pc.utf8_slice_codeunits(main_code(dx), 0, 5)


def category(dx) -> pa.Array:
    """类目 key: the first 3 characters (``K35.800x001`` -> ``K35``)."""
    return pc.utf8_slice_codeunits(main_code(dx), 0, 3)


def is_valid_dx(arr) -> pa.Array:
    """Boolean: well-formed ICD-10 医保版 diagnosis (null input -> null)."""
    return pc.match_substring_regex(arr, DX_PATTERN)


def is_valid_proc(arr) -> pa.Array:
    """Boolean: well-formed ICD-9-CM-3 医保版 procedure (null input -> null)."""
    return pc.match_substring_regex(arr, PROC_PATTERN)


TREAT_CLASSES = ("conservative", "diagnostic", "therapeutic", "surgery")
"""Treatment classes in ascending order (dip-rules §2.6); the index is the class rank."""


def proc_class_heuristic(procs) -> pa.Array:
    """Default treatment class of ICD-9-CM-3 医保版 procedure codes, when no ``procedures.csv`` says.

    Chapters 87-91 and 92.0-92.1 are diagnostic (imaging, tests); 92.2-99 and 00 are
    therapeutic (radiotherapy, physical, drug and other non-operative treatment); in the
    operative chapters 01-86 a ``.1x`` subcategory is the chapter's diagnostic procedures
    (biopsies, endoscopies), everything else is surgery. A rule set's ``procedures.csv``
    overrides this.
    """
    head = pc.utf8_slice_codeunits(procs, 0, 2)
    head = pc.if_else(pc.match_substring_regex(head, r"^[0-9]{2}$"), head, pa.scalar(None, pa.string()))
    chapter = pc.cast(head, pa.int32())
    sub = pc.utf8_slice_codeunits(procs, 3, 4)
    diagnostic = pc.or_(
        pc.and_(pc.greater_equal(chapter, 87), pc.less_equal(chapter, 91)),
        pc.and_(pc.equal(chapter, 92), pc.is_in(sub, pa.array(["0", "1"]))),
    )
    operative = pc.and_(pc.greater_equal(chapter, 1), pc.less_equal(chapter, 86))
    op_diag = pc.and_(operative, pc.equal(sub, "1"))
    return pc.case_when(
        pc.make_struct(pc.is_null(chapter), pc.or_(diagnostic, op_diag), operative),
        pa.scalar(None, pa.string()), "diagnostic", "surgery", "therapeutic",
    )
