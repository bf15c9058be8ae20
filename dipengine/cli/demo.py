"""``dipengine demo``: the main job on an embedded default (synthetic region, end to end)."""
from __future__ import annotations

import click


def _yuan(fen) -> str:
    from dipengine.demo import yuan

    return yuan(fen)


def _budget_lines(s, p) -> list[str]:
    """A pool's budget identities in words: Σ standard vs the total-cost budget, Σ fund due vs the
    fund budget net of the reserve (equal to the fen when the point value floated)."""
    standard, budget = s.standard_fen[p], s.budget_fen[p]
    due, fund_budget, avail = s.fund_due_fen[p], s.fund_budget_fen.get(p), s.fund_available_fen.get(p)
    if s.clamped[p]:
        raw, used = s.settlement_value_raw.get(p), s.settlement_value[p]
        moved = f" ({raw:.4f} -> {used:.4f} yuan/point)" if raw is not None and used is not None else ""
        head = (f"{p}: settlement value clamped by the policy band{moved}; paid total follows the clamped "
                f"value, not the budget")
    else:
        same = budget == standard and (avail is None or avail == due)
        head = f"{p}: paid total = budget: {'yes, to the fen' if same else 'NO'}"

    def rel(a, name, b):
        if a is None or b is None or a == b:
            return f"= {name} {_yuan(b)}", ""
        return f"≠ {name} {_yuan(b)}", f"{_yuan(a - b)} apart; "

    eq, apart = rel(standard, "total-cost budget", budget)
    lines = [head, f"    Σ standard {_yuan(standard)} {eq}" + (f" ({apart[:-2]})" if apart else "")]
    if fund_budget is not None:
        eq, apart = rel(due, "fund available", avail)
        lines.append(f"    Σ fund due {_yuan(due)} {eq} ({apart}fund budget {_yuan(fund_budget)} − "
                     f"{s.reserve_rate * 100:.4g}% reserve {_yuan(fund_budget - avail)})")
    return lines


@click.command(name="demo")
@click.option("--out", default="dip-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for everything the demo writes; replaced whole if it is a dipengine output "
                   "(see --force).")
@click.option("--cases", "n_cases", default=200_000, show_default=True, type=click.IntRange(min=1000),
              help="Cases in the settled year (and in each of the three history years).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthetic region.")
@click.option("--year", default=2026, show_default=True, type=int, help="The settled year.")
@click.option("--force", is_flag=True,
              help="Replace OUT even when it is not a dipengine output (everything in it is deleted).")
def command(out, n_cases, seed, year, force):
    """Synthetic region -> catalogue from history -> group -> 12 monthly runs -> annual clearing.

    Writes OUT/rules, OUT/pricing, OUT/hospitals.csv, OUT/history_<year>.parquet, OUT/cases.parquet,
    OUT/monthly/<YYYY-MM>/, OUT/annual/ (each as `settle --out` writes it), OUT/benefits.parquet,
    OUT/audit/ (as `audit --out` writes it) and OUT/report/ (statements.xlsx, report.html),
    then prints the headline figures: Σ standard against the total-cost budget and Σ fund due
    against the fund budget net of the reserve (equal to the fen when the point value floats),
    and how the clearing relates to the fund budget (assessment, surplus retention and
    overspend sharing under the policy's bands).
    """
    from dipengine.demo import run_demo
    from dipengine.io import check_output, replace_allowed

    with replace_allowed(force):
        check_output(out, directory=True)
        s = run_demo(out, n_cases, seed, year=year, echo=lambda m: click.echo(m, err=True))
    click.echo(f"dipengine demo: region settled for {s.year}, written to {s.out}/")
    click.echo(f"  cases {s.n_cases:,} (history {', '.join(f'{n:,}' for n in s.n_history)} used)")
    click.echo(f"  groups in catalogue {s.groups_in_catalogue:,}, used {s.groups_used:,}")
    click.echo("  match path  " + ", ".join(f"{k} {v:,}" for k, v in s.match_path.items()))
    if s.reasons:
        click.echo("  rejected    " + ", ".join(f"{k} {v:,}" for k, v in s.reasons.items()))
    click.echo("  pool       budget value  settlement value   total-cost budget       Σ standard       Σ fund due")
    for p in ("employee", "resident"):
        bv = s.budget_value[p]
        sv = s.settlement_value[p]
        click.echo(f"  {p:<9} {bv:>13.4f} {'—' if sv is None else f'{sv:.4f}':>17} "
                   f"{_yuan(s.budget_fen[p]):>19} {_yuan(s.standard_fen[p]):>16} {_yuan(s.fund_due_fen[p]):>16}")
    for p in ("employee", "resident"):
        for line in _budget_lines(s, p):
            click.echo("  " + line)
    click.echo("  clearing vs fund budget (yuan):")
    for line in s.clearing_lines:
        click.echo("  " + line)
    click.echo(f"  clearing {_yuan(s.clearing_fen)} = monthly paid {_yuan(s.monthly_paid_fen)} "
               f"+ final transfers {_yuan(s.final_fen)} (yuan)")
    click.echo("  gain most (clearing − recorded, yuan): "
               + ", ".join(f"{h} {_yuan(v)}" for h, v in s.gainers))
    click.echo("  lose most: " + ", ".join(f"{h} {_yuan(v)}" for h, v in s.losers))
    click.echo("  policy-scope fund share: "
               + ", ".join(f"{p} {v:.1%}" for p, v in s.fund_share.items()))
    click.echo(f"  audit and reports: {s.out}/audit/worklist.csv, {s.out}/report/statements.xlsx, "
               f"{s.out}/report/report.html")
    click.echo(f"  done in {s.seconds:.1f} s")
