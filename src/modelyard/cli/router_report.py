"""``modelyard router report ENDPOINT``: spend, tier mix, escalations and savings, as tables and a plot.

Thin: one call to ``GET /api/endpoints/{name}/router/report`` (definitions in
`modelyard.telemetry.router_report`), then rich tables; ``--plot FILE.png`` draws
spend per hour or day against the "everything to the top tier"
counterfactual, and the tier mix over time (matplotlib, imported only then).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .remote import call_api, console


def _usd(value: float | None) -> str:
    if value is None:
        return "–"
    return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def summary_table(body: dict[str, Any]) -> Table:
    """The headline numbers: requests, spend, escalations, cache, counterfactual and savings."""
    top = body.get("top_tier")
    table = Table(title=f"{body['endpoint']} ({body['policy']}), last {body['window']}", show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", justify="right")
    table.add_row("requests", f"{body['requests']:,} ({body['errors']:,} errors)")
    table.add_row("spend", _usd(body["spend_usd"]))
    if body.get("mirror_spend_usd"):
        table.add_row("  of which mirrored copies", _usd(body["mirror_spend_usd"]))
    if body.get("follow_up_spend_usd"):
        table.add_row("  of which follow-up work", _usd(body["follow_up_spend_usd"]))
    table.add_row("escalation rate", f"{body['escalation_rate'] * 100:.1f}% ({body['escalations']:,})")
    table.add_row("cache hits", f"{body['cache_hits']:,}, saved {_usd(body['cache_saved_usd'])}")
    fallbacks = body.get("learned_fallbacks")
    if fallbacks:
        table.add_row("learned router fell back", f"{fallbacks['ood'] + fallbacks['inactive']:,} of "
                      f"{fallbacks['learned_requests']:,} ({fallbacks['fallback_share'] * 100:.1f}%): "
                      f"{fallbacks['ood']:,} out of distribution, {fallbacks['inactive']:,} router inactive")
    if top is not None:
        where = "card price" if top["price_from"] == "card" else "observed cost per token"
        table.add_row("top tier", f"{top['deployment']} ({top.get('model') or '?'}, {where})")
    else:
        table.add_row("top tier", "unknown price")
    table.add_row("all to the top tier", _usd(body["counterfactual_usd"]))
    table.add_row("savings", f"{_usd(body['savings_usd'])} ({_pct(body['savings_pct'])})")
    return table


def tier_table(body: dict[str, Any]) -> Table:
    """One row per tier that answered: answers, share, spend and tokens."""
    table = Table(title="tier mix", caption="share of answered requests by the tier that answered; "
                                            "spend: those requests, every tier they called")
    for col in ("tier", "model", "answers", "share", "spend", "tokens in", "tokens out"):
        table.add_column(col, justify="left" if col in ("tier", "model") else "right", no_wrap=col == "tier")
    for row in body["tier_mix"]:
        table.add_row(row["deployment"], row.get("model") or "", f"{row['answers']:,}", f"{row['share'] * 100:.1f}%",
                      _usd(row["spend_usd"]), f"{row['prompt_tokens']:,}", f"{row['completion_tokens']:,}")
    return table


def feedback_table(body: dict[str, Any]) -> Table | None:
    rows = body.get("feedback")
    if not rows:
        return None
    table = Table(title="feedback")
    for col in ("tier", "ratings", "good", "bad", "positive"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for row in rows:
        share = row.get("positive_share")
        table.add_row(row["tier"], f"{row['ratings']:,}", f"{row['positive']:,}", f"{row['negative']:,}",
                      "–" if share is None else f"{share * 100:.0f}%")
    return table


def plot(body: dict[str, Any], path: Path) -> None:
    """Spend against the counterfactual per bucket (top) and the tier mix per bucket (bottom), as a PNG."""
    try:
        import matplotlib
    except ImportError:
        console.print("[red]--plot needs matplotlib:[/] pip install 'modelyard[plot]'")
        raise typer.Exit(2) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = body["series"]
    times = [datetime.fromisoformat(p["t"]) for p in points]
    bucket = timedelta(seconds=body["bucket_s"])
    width = bucket.total_seconds() / 86400 * 0.9  # bar width in days (matplotlib's date unit), from the bucket start
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.bar(times, [p["spend_usd"] for p in points], width=width, align="edge", label="actual spend", color="#2b7bba")
    if body.get("counterfactual_usd") is not None:
        top.plot([t + bucket / 2 for t in times], [p["counterfactual_usd"] for p in points], marker="o",
                 color="#d9534f", label=f"everything to {body['top_tier']['deployment']}")
    top.set_ylabel("USD per bucket")
    saved = body.get("savings_pct")
    top.set_title(f"{body['endpoint']}: spend, last {body['window']}"
                  + (f" — {saved:.0f}% saved against the top tier" if saved is not None else ""))
    top.legend(loc="upper left")
    tiers = [row["deployment"] for row in body["tier_mix"]]
    bottoms = [0] * len(points)
    for tier in tiers:
        counts = [p["tiers"].get(tier, 0) for p in points]
        bottom.bar(times, counts, width=width, align="edge", bottom=bottoms, label=tier)
        bottoms = [b + c for b, c in zip(bottoms, counts)]
    bottom.set_ylabel("answers per bucket")
    bottom.set_title("tier mix")
    bottom.set_xlabel("UTC")
    if tiers:
        bottom.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    window: str = typer.Option("7d", "--window", "-w", help="how far back: 15m, 1h, 24h, 7d, 30d…"),
    plot_file: Path = typer.Option(None, "--plot", help="also draw spend vs the top tier and the tier mix to this PNG"),
    as_json: bool = typer.Option(False, "--json", help="print the API's JSON instead of tables"),
) -> None:
    """Spend, tier mix, escalation rate and savings against sending everything to the top tier."""
    body = call_api("GET", f"/api/endpoints/{endpoint}/router/report", params={"window": window})
    if plot_file is not None:
        plot(body, plot_file)
    if as_json:
        print(json.dumps(body, indent=2))
        return
    console.print(summary_table(body))
    console.print(tier_table(body))
    table = feedback_table(body)
    if table is not None:
        console.print(table)
    if plot_file is not None:
        console.print(f"plot written to {plot_file}")
