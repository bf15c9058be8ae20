"""``dipengine rules check DIR``, ``rules show DIR`` and ``rules import --from F --map M --out DIR``
(contract §1, §4; docs/rules-import.md)."""
from __future__ import annotations

from collections import Counter

import click

from dipengine.errors import DataError


@click.group("rules")
def command():
    """Rule sets (grouper_rules/<name>/): check, summarise, import official catalogues."""


@command.command("check")
@click.argument("rules_dir", type=click.Path(file_okay=False))
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (unreachable groups, prefix-looking codes).")
def check(rules_dir, strict):
    """List every problem of the rule set in RULES_DIR as file:line:column: message; exit 1 if any.

    A rule set that loads is then checked for groups no case can reach and for prefix-looking
    procedure codes, printed as file:line:column: warning: message (exit 0, or 1 with --strict).
    It is also compiled afresh and compared with its entry in the compiled-rules cache, if
    there is one: a stale or tampered entry is reported and rewritten.
    """
    from dipengine.rules import check_cache, resolve_rules_dir

    path = resolve_rules_dir(rules_dir)
    _check_and_report(path, cache_check=check_cache, strict=strict)


def _check_and_report(rules_dir, where=None, cache_check=None, strict=False):
    """Print every problem and raise DataError (exit 1), else print the OK line with counts.

    ``where(problem)`` may add text to a problem's line (the catalogue line of an imported group).
    ``cache_check(rules_dir)`` (``rules check``: :func:`dipengine.rules.check_cache`) compares the
    cache entry with a fresh compile before the rule set is loaded; a repaired entry is a
    ``warning:`` line on stderr, the exit status stays 0 (the rule set itself is sound).
    """
    from dipengine.rules import check_reachable, check_rules, load_rules

    problems = check_rules(rules_dir)
    if problems:
        for p in problems:
            click.echo(str(p) + (where(p) if where else ""))
        # A DataError, not click's Exit(1): the console entry point runs click with
        # standalone_mode=False, where an Exit code would be lost and the status would be 0.
        raise DataError(f"{len(problems)} problem(s) in the rule set", file=rules_dir)
    found = cache_check(rules_dir) if cache_check is not None else None
    if found is not None and found.status in ("repaired", "unrepaired"):
        click.echo(f"warning: {found}", err=True)
    rs = load_rules(rules_dir)
    warned = check_reachable(rs)
    for w in warned:
        click.echo(f"{w.file}:{w.line}:{w.column}: warning: {w.message}" + (where(w) if where else ""))
    if warned and strict:
        raise DataError(f"{len(warned)} warning(s) in the rule set (--strict)", file=rules_dir)
    by_type = Counter(rs.groups["group_type"].to_pylist())
    counts = ", ".join(f"{by_type[t]} {t}" for t in ("core", "basic", "comprehensive", "blank") if by_type[t])
    tail = f", {len(warned)} warning(s)" if warned else ""
    click.echo(f"OK {rs.name} {rs.version}: {rs.groups.num_rows} groups ({counts}){tail}")


@command.command("show")
@click.argument("rules_dir", type=click.Path(file_okay=False))
def show(rules_dir):
    """Summarise the rule set in RULES_DIR: manifest, options, groups by type and class, tables."""
    from dipengine.rules import load_rules, resolve_rules_dir

    rs = load_rules(resolve_rules_dir(rules_dir))
    click.echo(f"{rs.name} {rs.version} ({rs.manifest.get('scheme', '-')}), "
               f"effective {rs.manifest.get('effective_from', '-')} to {rs.manifest.get('effective_to', '-')}")
    click.echo(f"source: {rs.manifest.get('source', '-')}")
    preset = (rs.manifest.get("options") or {}).get("preset")
    click.echo(f"preset: {preset}" if preset else "preset: none")
    click.echo("options: " + ", ".join(f"{k}={v}" for k, v in rs.options.items()))
    kinds = Counter(zip(rs.groups["group_type"].to_pylist(), rs.groups["treat_class"].to_pylist()))
    click.echo(f"groups: {rs.groups.num_rows}")
    for (t, c), n in sorted(kinds.items()):
        click.echo(f"  {t:<14} {c or '-':<13} {n:>8,}")
    for name in ("procedures", "excluded_dx", "excluded_proc", "aux_coefficients", "cci_weights", "severity_dx"):
        click.echo(f"{name}.csv: {getattr(rs, name).num_rows} rows")


@command.command("import")
@click.option("--from", "source", required=True, type=click.Path(exists=True, dir_okay=False),
              metavar="FILE", help="The published catalogue: .xlsx or .csv (UTF-8 or GBK), header row with the "
                                   "Chinese column names (DIP编码, 病种类型, 主要诊断编码, 病种分值 ...).")
@click.option("--map", "mapping", default="published", show_default=True, metavar="MAPPING",
              help="Which header feeds which rule-set column: a shipped mapping by name, or a CSV "
                   "'column,header' (values words in <stem>_values.csv beside it).")
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="RULES_DIR",
              help="Rule-set directory to write (groups.csv + manifest.toml); an existing one is replaced "
                   "atomically if it is a dipengine output (see --force).")
@click.option("--name", default=None, help="Rule-set name  [default: the directory's name].")
@click.option("--version", "version", default=None,
              help="Rule-set version  [default: <effective-from year>.1, else 1].")
@click.option("--effective-from", type=click.DateTime(["%Y-%m-%d"]), default=None, metavar="YYYY-MM-DD")
@click.option("--effective-to", type=click.DateTime(["%Y-%m-%d"]), default=None, metavar="YYYY-MM-DD")
@click.option("--source", "source_text", default=None, metavar="TEXT",
              help="Where the catalogue comes from, for the manifest (notice number, date, annex).")
@click.option("--sheet", default=None, help="Workbook sheet: name or 0-based index  [default: the first].")
@click.option("--encoding", default=None, help="CSV text encoding, e.g. gbk  [default: detected].")
@click.option("--proc-prefix", type=click.Choice(["refuse", "expand", "match"]), default="refuse",
              show_default=True,
              help="A procedure term that is a code prefix (47.01): refuse it, expand it into the any-of "
                   "list of the codes of --codes-icd9 that start with it, or keep it and match by prefix "
                   "(the rule set gets [options] proc_prefix = true).")
@click.option("--codes-icd9", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Procedure code list (TSV code<TAB>name, e.g. ICD-9-CM-3 医保版 2.0) for --proc-prefix expand.")
@click.option("--force", is_flag=True,
              help="Replace RULES_DIR even when it is not a dipengine output (everything in it is deleted).")
def import_(source, mapping, out, name, version, effective_from, effective_to, source_text, sheet, encoding,
            proc_prefix, codes_icd9, force):
    """Turn a region's published catalogue (FILE.xlsx or FILE.csv) into the rule set RULES_DIR, then check it.

    Rows that cannot be converted stop the import (error naming file, row, column and value; nothing
    written). The written rule set is then checked as 'rules check' does: its problems are listed (with
    the catalogue row of each group) and the exit status is 1, else an OK line with the counts.
    """
    from pathlib import Path

    from dipengine.catalog_import import read_catalog, write_catalog

    if effective_from and effective_to and effective_to < effective_from:
        raise click.BadParameter("--effective-to is before --effective-from")
    from dipengine.io import check_output, replace_allowed

    mapping_files = [mapping] if Path(mapping).suffix.lower() == ".csv" else []
    check_output(out, [source, codes_icd9] + mapping_files, directory=True, force=force)
    cat = read_catalog(source, mapping, sheet=sheet, encoding=encoding, proc_prefix=proc_prefix,
                       codes_icd9=codes_icd9)
    try:
        with replace_allowed(force):
            write_catalog(cat, out, name=name, version=version,
                          effective_from=effective_from.date() if effective_from else None,
                          effective_to=effective_to.date() if effective_to else None, source_text=source_text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    click.echo(f"read {cat.groups.num_rows} groups from {source} (mapping {cat.mapping.name}; "
               + ", ".join(f"{t} <- {h}" for t, h in cat.columns.items()) + ")")
    if cat.expanded:
        click.echo(f"expanded {len(cat.expanded)} code prefix(es) into "
                   f"{sum(cat.expanded.values())} codes of {codes_icd9}")
    click.echo(f"wrote {out}")

    def where(p):
        if p.file == "groups.csv" and 2 <= p.line <= len(cat.lines) + 1:
            return f" [{Path(source).name} row {cat.lines[p.line - 2]}]"
        return ""

    _check_and_report(out, where)
