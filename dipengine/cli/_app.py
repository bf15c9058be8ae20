"""The click application of the ``dipengine`` command line: the command group and :func:`main`.

Kept apart from :mod:`dipengine.cli` so that the program can start reading its input before
click and the commands load (see :func:`dipengine.cli.read_ahead`).
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


def main(argv=None) -> int:
    """Console entry point; turns :class:`DataError` into one line on stderr and exit 1."""
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
