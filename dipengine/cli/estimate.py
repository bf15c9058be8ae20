"""``dipengine estimate``: one case (JSON) -> group, points, payment standard, shares (contract §1)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dipengine.errors import DataError


def _read_json(case_path: str, encoding: str | None):
    try:
        if case_path == "-":
            text = click.get_text_stream("stdin").read()
        else:
            with open(case_path, encoding=encoding or "utf-8-sig") as f:
                text = f.read()
    except OSError as e:
        raise DataError(f"cannot read the case file ({e.strerror})", file=case_path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"the case file is not {encoding or 'UTF-8'} text ({e.reason} at byte {e.start}); "
                        "pass --encoding", file=case_path) from None
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r} (use e.g. utf-8, gbk, gb18030)",
                        file=case_path) from None
    try:
        case = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno})", file=case_path) from None
    if not isinstance(case, dict):
        raise DataError("the case must be one JSON object", file=case_path)
    return case


@click.command("estimate")
@click.option("--rules", required=True, type=click.Path(), help="Rule-set dir.")
@click.option("--pricing", required=True, type=click.Path(),
              help="Pricing dir (policy.toml, same_level_avg.csv; benefits.csv optional: without it the "
                   "patient/fund split is omitted).")
@click.option("--hospitals", required=True, type=click.Path(), help="Hospital registry (hospitals.csv).")
@click.option("--case", "case_path", required=True, type=click.Path(),
              help="A JSON object with the contract §2 fields ('-' reads stdin). Many cases: settle or "
                   "benefits, which run on whole batches.")
@click.option("--benefits", multiple=True, type=click.Path(),
              help="Extra pricing dirs with benefits.csv of remote insured regions (repeatable).")
@click.option("--point-value", type=float, default=None, help="Yuan per point (default: the policy's budget value).")
@click.option("--schema", metavar="NAME|DIR",
              help="Layout of the case's keys: contract (default), nhsa (national settlement-list fields), "
                   "or a schema folder of your own.")
@click.option("--encoding", metavar="CODEC", help="Text encoding of the JSON file (default: UTF-8).")
def command(rules, pricing, hospitals, case_path, benefits, point_value, schema, encoding):
    """Estimate one case for a hospital at discharge time; prints JSON on stdout.

    A bad case still answers (with its reason, exit 0); a bad rule set, policy, registry or
    case file exits 1. Without a benefits table the answer has the group, points and payment
    standard, the patient/fund split null and a "note" saying so.
    """
    from dipengine.estimate import Estimator
    from dipengine.policy import resolve_pricing_dir
    from dipengine.rules import resolve_rules_dir

    rules, pricing = resolve_rules_dir(rules), resolve_pricing_dir(pricing)
    benefits = [resolve_pricing_dir(b) for b in benefits]

    case = _read_json(case_path, encoding)
    if benefits:
        own = Path(pricing) / "benefits.csv"
        bdirs = ([pricing] if own.exists() else []) + benefits
    else:
        bdirs = None  # the pricing dir's benefits.csv when it has one, else no split
    est = Estimator(rules, pricing, hospitals, point_value=point_value, benefits=bdirs, schema=schema)
    click.echo(json.dumps(est.estimate(case), ensure_ascii=False, indent=2))
