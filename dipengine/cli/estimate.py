"""``dipengine estimate``: one case (JSON) -> group, points, payment standard, shares (contract §1)."""
from __future__ import annotations

import json

import click

from dipengine.errors import DataError


@click.command("estimate")
@click.option("--rules", required=True, type=click.Path(), help="Rule-set dir.")
@click.option("--pricing", required=True, type=click.Path(), help="Pricing dir (policy.toml, same_level_avg.csv, benefits.csv).")
@click.option("--hospitals", required=True, type=click.Path(), help="Hospital registry (hospitals.csv).")
@click.option("--case", "case_path", required=True, type=click.Path(),
              help="A JSON object with the contract §2 fields ('-' reads stdin).")
@click.option("--benefits", multiple=True, type=click.Path(),
              help="Extra pricing dirs with benefits.csv of remote insured regions (repeatable).")
@click.option("--point-value", type=float, default=None, help="Yuan per point (default: the policy's budget value).")
def command(rules, pricing, hospitals, case_path, benefits, point_value):
    """Estimate one case for a hospital at discharge time; prints JSON on stdout.

    A bad case still answers (with its reason, exit 0); a bad rule set, policy, registry or
    case file exits 1.
    """
    from dipengine.estimate import Estimator
    from dipengine.policy import resolve_pricing_dir
    from dipengine.rules import resolve_rules_dir

    rules, pricing = resolve_rules_dir(rules), resolve_pricing_dir(pricing)
    benefits = [resolve_pricing_dir(b) for b in benefits]

    try:
        text = click.get_text_stream("stdin").read() if case_path == "-" else \
            open(case_path, encoding="utf-8").read()
    except OSError as e:
        raise DataError(f"cannot read the case file ({e.strerror})", file=case_path) from None
    try:
        case = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno})", file=case_path) from None
    if not isinstance(case, dict):
        raise DataError("the case must be one JSON object", file=case_path)
    bdirs = [pricing, *benefits] if benefits else None
    est = Estimator(rules, pricing, hospitals, point_value=point_value, benefits=bdirs)
    click.echo(json.dumps(est.estimate(case), ensure_ascii=False, indent=2))
