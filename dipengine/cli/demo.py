"""``dipengine demo``: the main job on an embedded default (synthetic region, end to end)."""
from __future__ import annotations

import click


def _yuan(fen) -> str:
    return "—" if fen is None else f"{fen / 100:,.2f}"


@click.command(name="demo")
@click.option("--out", default="dip-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for everything the demo writes (replaced whole).")
@click.option("--cases", "n_cases", default=200_000, show_default=True, type=click.IntRange(min=1000),
              help="Cases in the settled year (and in each of the three history years).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthetic region.")
@click.option("--year", default=2026, show_default=True, type=int, help="The settled year.")
def command(out, n_cases, seed, year):
    """Synthetic region -> catalogue from history -> group -> 12 monthly runs -> annual clearing.

    Writes OUT/rules, OUT/pricing, OUT/hospitals.csv, OUT/history_<year>.parquet, OUT/cases.parquet,
    OUT/monthly/<YYYY-MM>/, OUT/annual/ (each as `settle --out` writes it) and OUT/benefits.parquet,
    then prints the headline figures.
    """
    from dipengine.demo import run_demo

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
        if s.clamped[p]:
            click.echo(f"  {p}: settlement value clamped by the policy band; paid total follows the clamped value")
        else:
            same = s.budget_fen[p] == s.standard_fen[p]
            click.echo(f"  {p}: paid total = budget: {'yes, to the fen' if same else 'NO'}")
    click.echo(f"  clearing {_yuan(s.clearing_fen)} = monthly paid {_yuan(s.monthly_paid_fen)} "
               f"+ final transfers {_yuan(s.final_fen)} (yuan)")
    click.echo("  gain most (clearing − recorded, yuan): "
               + ", ".join(f"{h} {_yuan(v)}" for h, v in s.gainers))
    click.echo("  lose most: " + ", ".join(f"{h} {_yuan(v)}" for h, v in s.losers))
    click.echo("  policy-scope fund share: "
               + ", ".join(f"{p} {v:.1%}" for p, v in s.fund_share.items()))
    click.echo(f"  done in {s.seconds:.1f} s")
