"""``modelyard cache``: an endpoint's response cache — stats, clear, and the offline evaluation.

``stats`` and ``clear`` call the running server's management API
(``/api/endpoints/{name}/cache``); ``eval`` runs here, on the packaged
embedding model, and needs no server.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from .remote import call_api, console

app = typer.Typer(help="Response cache: stats, clear, eval.", no_args_is_help=True)


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


@app.command()
def stats(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    window: str = typer.Option("24h", "--window", "-w", help="hit rates and savings over this long: 1h, 24h, 7d…"),
    as_json: bool = typer.Option(False, "--json", help="print the API's JSON"),
) -> None:
    """Entries, memory, hit rate (exact and semantic) and the tokens and USD the cache saved."""
    body = call_api("GET", f"/api/endpoints/{endpoint}/cache", params={"window": window})
    if as_json:
        print(json.dumps(body, indent=2))
        return
    table = Table(title=f"cache of {endpoint}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    setup = f"{body['mode']}"
    if body["mode"] == "semantic":
        setup += f" ≥ {body['similarity']:g}"
    table.add_row("mode", f"{setup}, ttl {body['ttl']}, scope {body['scope']}, backend {body['backend']}")
    if not body.get("available", True):
        table.add_row("store", f"[red]unavailable[/]: {body.get('error')}")
    table.add_row("entries", f"{_num(body.get('entries'))} of {body['max_entries']:,}")
    memory = body.get("memory_bytes")
    table.add_row("index memory", "–" if memory is None else f"{memory / 1e6:,.1f} MB")
    table.add_row(f"requests ({body['window']})", _num(body["requests"]))
    table.add_row("hit rate", f"{_pct(body['hit_rate'])}  (exact {_pct(body['exact_hit_rate'])}, "
                              f"semantic {_pct(body['semantic_hit_rate'])})")
    table.add_row("hits / misses", f"{body['hits']:,} + {body['semantic_hits']:,} semantic / {body['misses']:,}")
    table.add_row("not cacheable", _num(body["bypassed"]))
    if body["unavailable"] or body["warming"]:
        table.add_row("answered without the cache", f"{body['unavailable']:,} unavailable, {body['warming']:,} warming")
    table.add_row("saved", f"{body['saved_tokens']:,} tokens, ${body['saved_usd']:.6f}")
    console.print(table)


@app.command()
def clear(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    older_than: str = typer.Option(None, "--older-than", help="only entries stored longer ago than this: 30m, 1h, 7d…"),
) -> None:
    """Delete the endpoint's cached answers (all, or those older than --older-than)."""
    params = {"older_than": older_than} if older_than else None
    body = call_api("DELETE", f"/api/endpoints/{endpoint}/cache", params=params)
    console.print(f"deleted {body['deleted']:,} cached answer{'s' if body['deleted'] != 1 else ''} of {endpoint}")


@app.command("eval")
def evaluate(
    pairs: str = typer.Option(..., "--pairs", help="pairs file: labeled pairs (CSV/TSV with question1, question2, "
                              "is_duplicate; JSON/JSONL with text_a, text_b, label) or a JSON list of "
                              '[{"origin": ..., "similar": ...}] paraphrases'),
    thresholds: str = typer.Option("0.8:0.99:0.01", "--thresholds", help="start:stop:step, or a list 0.85,0.9"),
    default: float = typer.Option(None, "--default", help="the threshold reported as default (default: the built-in one)"),
    plot_path: str = typer.Option(None, "--plot", help="write the precision/recall plot to this PNG"),
    seed: int = typer.Option(0, "--seed", help="(positive-only pairs) which half of the origins is withheld"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Precision, recall, false-hit rate and look-up time of semantic look-ups, per threshold.

    Labeled pairs are measured in a crowded cache (every first text stored), per verification layer:
    the vector search alone, each guard added in turn, and (``verify: judge``) the judge."""
    from ..cache import evaluate as ev
    from ..cache import labeled
    from ..cache.spec import DEFAULT_SIMILARITY

    try:
        values = ev.parse_thresholds(thresholds)
        chosen = DEFAULT_SIMILARITY if default is None else ev.parse_thresholds(str(default))[0]
        is_labeled = labeled.is_labeled(pairs)
        data = labeled.load_labeled(pairs) if is_labeled else ev.load_pairs(pairs)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if not as_json:
        console.print(f"[dim]embedding {len(data):,} pairs with all-MiniLM-L6-v2…[/]")
    if is_labeled:
        result = ev.evaluate_labeled(data, values, default=chosen)
        plot = labeled.plot_labeled
    else:
        result = ev.evaluate(data, values, default=chosen, seed=seed)
        plot = ev.plot
    if plot_path:
        try:
            plot(result, plot_path)
        except RuntimeError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if is_labeled:
        _print_labeled(result)
    else:
        _print_positive_only(result)
    if plot_path:
        console.print(f"plot: {plot_path}")


def _print_positive_only(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['pairs']:,} pairs; {result['withheld']:,} of {result['origins']:,} origins withheld",
                  caption=f"look-up excludes embedding (p50 {result['embedding_p50_ms']:.1f} ms per sentence)")
    for col in ("threshold", "precision", "recall", "false hits", "hits", "lookup p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for row in result["thresholds"]:
        style = "bold" if row["threshold"] == result["default"]["threshold"] else None
        table.add_row(f"{row['threshold']:g}", _pct(row["precision"]), _pct(row["recall"]), _pct(row["false_hit_rate"]),
                      f"{row['hits']:,}", f"{row['lookup_p50_ms']:.3f}", f"{row['lookup_p99_ms']:.3f}", style=style)
    console.print(table)
    d = result["default"]
    console.print(f"default {d['threshold']:g}: precision {_pct(d['precision'])}, recall {_pct(d['recall'])}, "
                  f"false hits {_pct(d['false_hit_rate'])}")


def _print_labeled(result: dict[str, Any]) -> None:
    default = result["default_threshold"]
    table = Table(title=f"{result['pairs']:,} labeled pairs ({result['duplicates']:,} duplicates), "
                        f"{result['stored']:,} questions stored; threshold {default:g}",
                  caption=f"store look-up p50 {result['lookup_p50_ms']:.3f} ms, with the guards "
                          f"{result['verified_lookup_p50_ms']:.3f} ms (embedding excluded)")
    for col in ("layer", "precision", "recall", "false-hit rate", "hits", "wrong hits"):
        table.add_column(col, justify="right")
    for name, row in result["default"].items():
        table.add_row(name, _pct(row["precision"]), _pct(row["recall"]), _pct(row["false_hit_rate"]),
                      f"{row['hits']:,}", f"{row['false_hits']:,}",
                      style="bold" if name in ("vector", "+terms", "+judge") else None)
    console.print(table)
    sweep = Table(title="per threshold: vector only / with the guards")
    for col in ("threshold", "precision", "recall", "false-hit rate"):
        sweep.add_column(col, justify="right")
    guarded = {r["threshold"]: r for r in result["layers"]["+terms"]}
    for row in result["layers"]["vector"]:
        g = guarded[row["threshold"]]
        sweep.add_row(f"{row['threshold']:g}", f"{_pct(row['precision'])} / {_pct(g['precision'])}",
                      f"{_pct(row['recall'])} / {_pct(g['recall'])}",
                      f"{_pct(row['false_hit_rate'])} / {_pct(g['false_hit_rate'])}",
                      style="bold" if row["threshold"] == default else None)
    console.print(sweep)
    refused = ", ".join(f"{guard} {c['wrong_refused']} wrong / {c['right_refused']} right"
                        for guard, c in result["rejected_at_default"].items())
    console.print(f"candidates refused at {default:g}: {refused or 'none'}")
