"""The click application of the ``dipengine`` command line: the command group and :func:`main`.

Kept apart from :mod:`dipengine.cli` so that importing the package's command line does not
import click (the program is :func:`dipengine.cli.run`).
"""
from __future__ import annotations

import importlib

import click

from dipengine.errors import DataError

# command name -> module under dipengine.cli
COMMANDS = {
    "demo": "demo",
    "synth": "synth",
    "validate": "validate",
    "catalog": "catalog",
    "rules": "rules",
    "group": "group",
    "settle": "settle",
    "benefits": "benefits",
    "estimate": "estimate",
    "audit": "audit",
    "report": "report",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None:
            return None
        return importlib.import_module(f"dipengine.cli.{mod}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dipengine")
def cli():
    """dipengine: DIP (按病种分值付费) grouping, scoring and settlement."""


def os_error_line(e: OSError) -> str:
    """An operating-system error as the contract's one line: ``<file>: <what failed>``."""
    what = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {what}"
    if e.filename is not None:
        return f"{e.filename}: {what}"
    return what


def _parse_error_types() -> tuple:
    """Parse errors of the file formats read (TOML, CSV, Arrow/Parquet), as exception types;
    only those modules already loaded (a command that read no TOML has imported no tomllib)."""
    import sys

    types = []
    if "tomllib" in sys.modules:
        types.append(sys.modules["tomllib"].TOMLDecodeError)
    if "csv" in sys.modules:
        types.append(sys.modules["csv"].Error)
    if "pyarrow" in sys.modules:
        types.append(sys.modules["pyarrow"].ArrowException)
    types.append(UnicodeDecodeError)
    return tuple(types)


def main(argv=None) -> int:
    """Console entry point: a :class:`DataError`, an operating-system error (``OSError``) or a
    file-format parse error (TOML, CSV, Arrow/Parquet) becomes one line ``error: ...`` on stderr
    and exit 1, without a traceback (``DIPENGINE_DEBUG=1`` shows it, for a bug report)."""
    import os

    debug = os.environ.get("DIPENGINE_DEBUG", "") not in ("", "0")
    try:
        return _main(argv)
    except OSError as e:
        if debug:
            raise
        click.echo(f"error: {os_error_line(e)}", err=True)
        return 1
    except Exception as e:
        if debug or not isinstance(e, _parse_error_types()):
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        click.echo(f"error: {text}", err=True)
        return 1


def _main(argv=None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="dipengine", standalone_mode=False)
    except DataError as e:
        click.echo(f"error: {e.one_line()}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0
