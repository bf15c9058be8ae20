"""Helpers shared by the command modules: progress bars, summaries, options."""
from __future__ import annotations

import sys

import click


def progress_bar(total: int | None, desc: str):
    """A callback ``progress(done, total)`` drawing a tqdm bar on a terminal, silent otherwise.

    Returns ``(callback, close)``.
    """
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional
        return (lambda done, total=None: None), (lambda: None)
    bar = tqdm(total=total, desc=desc, unit="rec", unit_scale=True, disable=None, file=sys.stderr)
    state = {"done": 0}

    def callback(done: int, total: int | None = None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - state["done"])
        state["done"] = done

    return callback, bar.close


def echo_counts(title: str, counts: dict) -> None:
    """Print ``title`` then aligned ``name  count`` lines."""
    click.echo(title)
    width = max((len(str(k)) for k in counts), default=0)
    for k, v in counts.items():
        click.echo(f"  {str(k):<{width}}  {v:>12,}")


def spread_multi_values(args: list[str], names) -> list[str]:
    """Rewrite ``--opt A B C`` as ``--opt A --opt B --opt C`` for the options in ``names``.

    Lets a ``multiple=True`` option take several values after one flag, as the contract writes
    them (``--input F...``). A value is every following argument that does not start with
    ``-`` (a lone ``-``, stdin, is a value); ``--`` ends option parsing.
    """
    names = set(names)
    out: list[str] = []
    current = None  # the multi-value option whose values are being read
    have_value = False
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        if arg.startswith("-") and arg != "-":
            opt, eq, _ = arg.partition("=")
            current = opt if opt in names else None
            have_value = bool(eq)
            out.append(arg)
        elif current is not None and have_value:
            out.extend([current, arg])
        else:
            have_value = current is not None
            out.append(arg)
    return out


class MultiValueCommand(click.Command):
    """A click command whose ``multi_value`` options take several values after one flag.

    Use as ``@click.command("settle", cls=MultiValueCommand, multi_value=("--input",))`` on
    options declared with ``multiple=True``; repeating the flag keeps working.
    """

    def __init__(self, *args, multi_value=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.multi_value = tuple(multi_value)

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, spread_multi_values(list(args), self.multi_value))


def _sheet(ctx, param, value):
    """``--sheet``: digits are a 0-based index, anything else a sheet name."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def input_layout_options(f):
    """``--schema``, ``--encoding`` and ``--sheet``: how a command's case input is laid out."""
    f = click.option("--sheet", callback=_sheet, metavar="NAME|N",
                     help="Sheet of an .xlsx input: name or 0-based index (default: the first).")(f)
    f = click.option("--encoding", metavar="CODEC",
                     help="CSV text encoding: utf-8, gbk, gb18030 (default: detected).")(f)
    f = click.option("--schema", metavar="NAME|DIR",
                     help="Input layout: contract (default), nhsa (national settlement-list fields, "
                          "or a folder of its nested 4101 tables), or a schema folder of your own.")(f)
    return f
