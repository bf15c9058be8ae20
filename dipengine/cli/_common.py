"""Helpers shared by the command modules: progress bars and summaries."""
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
        return (lambda done, total: None), (lambda: None)
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
