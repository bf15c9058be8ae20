"""``dipengine rules check DIR`` and ``dipengine rules show DIR`` (contract §1, §4)."""
from __future__ import annotations

from collections import Counter

import click

from dipengine.errors import DataError


@click.group("rules")
def command():
    """Rule sets (grouper_rules/<name>/): check and summarise."""


@command.command("check")
@click.argument("rules_dir", type=click.Path(file_okay=False))
def check(rules_dir):
    """List every problem of the rule set in RULES_DIR as file:line:column: message; exit 1 if any."""
    from dipengine.rules import check_rules, load_rules, resolve_rules_dir

    rules_dir = resolve_rules_dir(rules_dir)
    problems = check_rules(rules_dir)
    if problems:
        for p in problems:
            click.echo(str(p))
        # A DataError, not click's Exit(1): the console entry point runs click with
        # standalone_mode=False, where an Exit code would be lost and the status would be 0.
        raise DataError(f"{len(problems)} problem(s) in the rule set", file=rules_dir)
    rs = load_rules(rules_dir)
    by_type = Counter(rs.groups["group_type"].to_pylist())
    counts = ", ".join(f"{by_type[t]} {t}" for t in ("core", "basic", "comprehensive", "blank") if by_type[t])
    click.echo(f"OK {rs.name} {rs.version}: {rs.groups.num_rows} groups ({counts})")


@command.command("show")
@click.argument("rules_dir", type=click.Path(file_okay=False))
def show(rules_dir):
    """Summarise the rule set in RULES_DIR: manifest, options, groups by type and class, tables."""
    from dipengine.rules import load_rules, resolve_rules_dir

    rs = load_rules(resolve_rules_dir(rules_dir))
    click.echo(f"{rs.name} {rs.version} ({rs.manifest.get('scheme', '-')}), "
               f"effective {rs.manifest.get('effective_from', '-')} to {rs.manifest.get('effective_to', '-')}")
    click.echo(f"source: {rs.manifest.get('source', '-')}")
    click.echo("options: " + ", ".join(f"{k}={v}" for k, v in rs.options.items()))
    kinds = Counter(zip(rs.groups["group_type"].to_pylist(), rs.groups["treat_class"].to_pylist()))
    click.echo(f"groups: {rs.groups.num_rows}")
    for (t, c), n in sorted(kinds.items()):
        click.echo(f"  {t:<14} {c or '-':<13} {n:>8,}")
    for name in ("procedures", "excluded_dx", "excluded_proc", "aux_coefficients", "cci_weights", "severity_dx"):
        click.echo(f"{name}.csv: {getattr(rs, name).num_rows} rows")
