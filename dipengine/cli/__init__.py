"""The ``dipengine`` command line (contract §1).

One module per command under :mod:`dipengine.cli`, each exposing ``command`` (a click command),
loaded lazily so that ``dipengine --help`` stays fast; the click application is
:mod:`dipengine.cli._app` (``cli``, ``main`` and ``COMMANDS`` are importable from here too).
Exit codes: 0 success, 1 data error (one line naming file, column, value; no traceback),
2 usage error.
"""
from __future__ import annotations

import sys

_APP_NAMES = ("cli", "main", "COMMANDS")


def __getattr__(name):
    if name in _APP_NAMES:
        from dipengine.cli import _app

        return getattr(_app, name)
    raise AttributeError(f"module 'dipengine.cli' has no attribute {name!r}")


def run() -> None:
    """The ``dipengine`` program (the console entry point): :func:`main`, then a normal exit with
    its code (atexit hooks, logging and profilers' output run as in any Python program).

    It tunes nothing in its process (interpreter, allocators, environment): none of the settings
    it used to make was worth 5% on a 20M-case ``group`` (docs/grouping.md, "Process settings").
    """
    import warnings

    from dipengine.cli._app import main

    # the program's own process: a warning (e.g. a rules-cache entry not trusted) is one line,
    # "warning: ...", like the errors; the Python API keeps Python's default display
    warnings.showwarning = _one_line_warning
    sys.exit(main())


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    (file or sys.stderr).write(f"warning: {message}\n")
