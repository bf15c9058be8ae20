"""Errors a user can act on.

A :class:`DataError` stops a run before anything is written; the CLI prints its one-line
message (file, column, value) and exits 1 without a traceback.
"""
from __future__ import annotations


class DataError(Exception):
    """A bad file, rule set or policy: the run stops, nothing is written.

    Parameters
    ----------
    message : str
        What is wrong, in words a bureau analyst understands.
    file, column, value, row : optional
        Where it is; each is added to the one-line message when given.
    """

    def __init__(self, message: str, *, file=None, column=None, value=None, row=None):
        self.message = message
        self.file = None if file is None else str(file)
        self.column = column
        self.value = value
        self.row = row
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.value is not None:
            where.append(f"value {self.value!r}")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        return (prefix + self.message).replace("\n", " ")


class RuleSetError(DataError):
    """A rule set or pricing table that does not load; ``problems`` lists every defect found."""

    def __init__(self, message: str, problems=(), **kw):
        self.problems = list(problems)
        super().__init__(message, **kw)
