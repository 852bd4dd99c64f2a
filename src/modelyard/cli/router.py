"""``modelyard router``: train a learned router and measure routers offline.

``eval`` and ``train`` run here, on outcome data (RouteLLM's CSV format: a
prompt and the weak and the strong model's outcome), and need no server::

    modelyard router eval --data ../shared/data/routing/mmlu --strategy learned --plot curve.png
    modelyard router eval --data other.csv --train ../shared/data/routing/mmlu --json
    modelyard router train assistant --data outcomes.csv

The group object is `app`; other router commands (calibrate, report) attach
to it with ``app.command("NAME")(function)``.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ModelyardError
from .output import friendly_errors as _friendly_errors, out as _out

app = typer.Typer(name="router", help="Cost-aware routers: train, evaluate offline.", no_args_is_help=True)


class Strategy(str, Enum):
    """The --strategy values of `router eval`."""

    learned = "learned"
    length = "length"
    random = "random"


#: strong shares shown in the table of `router eval`
TABLE_SHARES = [i / 10 for i in range(11)]

DataOption = typer.Option(..., "--data", help="outcome data: a CSV/JSONL file, or a folder of them (one file per subject)")
WeakColumn = typer.Option(None, "--weak-column", help="the weak model's outcome column (default: found or guessed)")
StrongColumn = typer.Option(None, "--strong-column", help="the strong model's outcome column (default: found or guessed)")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def _embedder() -> Any:
    """The embedder `eval` and `train` use: all-MiniLM-L6-v2, cached under MODELYARD_HOME/cache/embeddings."""
    from ..routing.features import CachedEmbedder

    return CachedEmbedder.default()


def _load(path: str, weak: str | None, strong: str | None, param: str) -> Any:
    from ..routing.data import load_outcomes

    return load_outcomes(path, weak_column=weak, strong_column=strong, param=param)


# --- eval ------------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    data: str = DataOption,
    train: Optional[str] = typer.Option(None, "--train", help="train on this data and evaluate on --data "
                                        "(default: split --data 50/50 by subject, both ways)"),
    strategy: Strategy = typer.Option(Strategy.learned, "--strategy", help="the router to measure"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the quality and PGR curves to this PNG",
                                        dir_okay=False),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    weak_column: Optional[str] = WeakColumn,
    strong_column: Optional[str] = StrongColumn,
    seed: int = typer.Option(0, "--seed", help="which subjects fall in which half of the split"),
    gated: bool = typer.Option(True, "--gate/--no-gate", help="learned: measure it as `router train` would activate "
                               "it (inactive, so the length rule, unless it beats the rule on held-out subjects "
                               "of its training data)"),
    ood: bool = typer.Option(True, "--ood/--no-ood", help="learned: prompts out of the training distribution take "
                             "the length rule, as when serving"),
) -> None:
    """Measure a router offline: quality and strong-call share at each threshold, PGR, APGR, CPT(50%), CPT(80%).

    The random router and the oracle are shown for reference. Without --train
    the data is split by subject (each file of a folder is one; a single file
    is split by rows): half trains, half tests, then the other way round, and
    the two are averaged.
    """
    from ..routing.evaluate import evaluate, learned_router

    t0 = time.perf_counter()
    with _friendly_errors():
        outcomes = _load(data, weak_column, strong_column, "data")
        training = _load(train, weak_column, strong_column, "train") if train else None
        router = None
        embedder = None
        if strategy is Strategy.learned:
            embedder = _embedder()
            router = learned_router(embedder, gated=gated, ood=ood)
        result = evaluate(outcomes, strategy.value, train=training, router=router, seed=seed)
        if router is not None and router.gates:
            for fold, gate in zip(result.folds, router.gates):
                verdict = "passed" if gate.passed else "FAILED, so the learned router is inactive and the rule routes"
                result.notes.append(f"{fold.name}: gate {verdict}: {gate.reason}")
    body = result.to_json()
    body["data"] = {"path": outcomes.source, "rows": len(outcomes), "subjects": len(outcomes.group_names),
                    "weak_column": outcomes.weak_column, "strong_column": outcomes.strong_column,
                    "contaminated_dropped": outcomes.dropped_contaminated}
    if training is not None:
        body["train"] = {"path": training.source, "rows": len(training), "subjects": len(training.group_names)}
    if embedder is not None:
        body["embeddings"] = {"model": embedder.name, "cached": embedder.hits, "computed": embedder.misses}
    if router is not None:
        body["gated"], body["ood_fallback"] = gated, ood
        body["gates"] = [g.to_json() for g in router.gates]
    body["seconds"] = round(time.perf_counter() - t0, 3)
    if plot is not None:
        with _friendly_errors():
            write_plot(result, plot, title=f"{strategy.value} router on {Path(outcomes.source).name}")
        body["plot"] = str(plot)
    if as_json:
        print(json.dumps(body))
        return
    _print_eval(body, result)


def _print_eval(body: dict[str, Any], result: Any) -> None:
    out = _out()
    info = body["data"]
    where = f"{info['rows']:,} prompts in {info['subjects']} subject{'s' if info['subjects'] != 1 else ''}"
    if "train" in body:
        split = f"trained on {body['train']['path']} ({body['train']['rows']:,} prompts)"
    else:
        split = f"split 50/50 by {'subject' if result.split == 'subjects' else 'row'}, both ways, averaged"
    out.print(f"[bold]{escape(info['path'])}[/bold]: {where}; weak = {escape(info['weak_column'])}, "
              f"strong = {escape(info['strong_column'])}; {split}")
    for note in body["notes"]:
        out.print(f"[yellow]note:[/yellow] {escape(note)}")
    caption = None
    if body.get("gated") or body.get("ood_fallback"):
        caption = ("threshold: on the served scale, the share of training prompts ranked below (by the model, or "
                   "by length for prompts that take the rule); --no-gate --no-ood for the model's own scores")
    table = Table(title=f"{body['strategy']} router: quality against strong calls", caption=caption)
    for col in ("strong calls", "threshold", "quality", "PGR", "random PGR", "oracle PGR"):
        table.add_column(col, justify="right")
    points = {round(p["strong_share"], 6): p for p in result.points(shares=_np_shares())}
    oracle = {round(p["strong_share"], 6): p for p in result.points(shares=_np_shares(), which="oracle")}
    for share in TABLE_SHARES:
        p, o = points[round(share, 6)], oracle[round(share, 6)]
        threshold = "all weak" if p["threshold"] is None else f"{p['threshold']:.4g}"
        if body["strategy"] == "random":
            threshold = "–"
        table.add_row(_pct(share), threshold, _num(p["quality"], "{:.4f}"), _num(p["pgr"]), _num(share),
                      _num(o["pgr"]))
    out.print(table)
    summary = Table(title="summary (mean of the folds)")
    summary.add_column("")
    refs = ("length", "random", "oracle") if body["strategy"] != "length" else ("random", "oracle")
    for col in (body["strategy"],) + refs:
        summary.add_column(col if col != "length" else "length rule", justify="right")
    for label, key, fmt in (("APGR", "apgr", _num), ("CPT(50%)", "cpt50", _pct), ("CPT(80%)", "cpt80", _pct)):
        summary.add_row(label, fmt(body[key]), *(fmt(body[r][key]) for r in refs))
    summary.add_row("quality weak / strong", f"{body['q_weak']:.4f} / {body['q_strong']:.4f}", *([""] * len(refs)))
    out.print(summary)
    folds = ", ".join(f"{f['name']}: APGR {_num(f['apgr'])}, CPT(50%) {_pct(f['cpt50'])}" for f in body["folds"])
    out.print(f"folds: {folds}")
    tail = f"took {body['seconds']:.1f} s"
    if "embeddings" in body:
        emb = body["embeddings"]
        tail += f" (embeddings: {emb['cached']:,} from the cache, {emb['computed']:,} computed with {emb['model']})"
    out.print(tail)
    if "plot" in body:
        out.print(f"plot written to {escape(body['plot'])}")


def _np_shares() -> Any:
    import numpy as np

    return np.array(TABLE_SHARES)


def write_plot(result: Any, path: Path, *, title: str = "") -> None:
    """Quality and PGR against the share of strong calls, with the random router and the oracle, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModelyardError("--plot needs matplotlib: pip install 'modelyard[plot]'", param="plot",
                             code="missing_dependency") from None
    import numpy as np

    shares = np.linspace(0, 1, 201)
    fig, (ax_q, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for which, label, style in (("curve", result.strategy, "-"), ("random", "random", "--"), ("oracle", "oracle", ":")):
        pts = result.points(shares=shares, which=which)
        x = [p["strong_share"] * 100 for p in pts]
        ax_q.plot(x, [p["quality"] for p in pts], style, label=label)
        ax_p.plot(x, [p["pgr"] for p in pts], style, label=label)
    summary = result.summary()
    ax_p.axhline(0.5, color="grey", lw=0.5)
    if summary["cpt50"] is not None:
        ax_p.axvline(summary["cpt50"] * 100, color="grey", lw=0.5)
    ax_q.set(xlabel="strong calls (%)", ylabel="quality (mean outcome)", title="quality")
    ax_p.set(xlabel="strong calls (%)", ylabel="PGR", title=f"PGR (APGR {summary['apgr']:.3f})")
    for ax in (ax_q, ax_p):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise ModelyardError(f"cannot write the plot to {path}: {exc.strerror or exc}", param="plot") from None
    finally:
        plt.close(fig)


# --- train -----------------------------------------------------------------------------------


@app.command("train")
def train_command(
    endpoint: str = typer.Argument(..., help="the router endpoint whose learned strategy will use this model"),
    data: Optional[str] = typer.Option(None, "--data", help="outcome data: a CSV/JSONL file, or a folder of them"),
    from_feedback: bool = typer.Option(False, "--from-feedback", help="also train on the endpoint's feedback "
                                       "(rated answers, from the running server)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="save here instead of "
                                          "MODELYARD_HOME/routers/ENDPOINT.npz", dir_okay=False),
    weak_column: Optional[str] = WeakColumn,
    strong_column: Optional[str] = StrongColumn,
    answer_column: Optional[str] = typer.Option(None, "--answer-column", help="the weak model's answer: trains a "
                                                "verifier (for the cascade) that scores prompt + answer"),
    check_data: Optional[list[str]] = typer.Option(None, "--check-data", help="outcome data from outside the "
                                                   "training domain to measure the router on too (repeatable)"),
    force: bool = typer.Option(False, "--force", help="activate the router even if it does not beat the length rule"),
    ood_quantile: float = typer.Option(0.99, "--ood-quantile", min=0.5, max=0.999,
                                       help="out of distribution: farther from the training prompts than this share "
                                       "of them are from the others (lower: more prompts take the fallback)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Train the learned router from recorded outcomes and save it as ENDPOINT's router model.

    Before it goes live the router is measured against the length rule and
    random on held-out subjects of the data (and on --check-data): one that
    does not beat the rule is not activated (exit status 3; --force
    overrides). If the endpoint already has an active router it is kept and
    the new one is saved beside it as ENDPOINT.candidate.npz; otherwise it is
    saved inactive and the endpoint routes by the rule. The live `learned`
    strategy picks up a new file on its next request; choose its threshold
    with `modelyard router calibrate`.
    """
    from ..routing.data import load_outcomes
    from ..routing.gate import run_gate
    from ..routing.learned import LearnedRouter, candidate_path, router_path
    from ..settings import Settings

    t0 = time.perf_counter()
    with _friendly_errors():
        path = output if output is not None else router_path(Settings.from_env(), endpoint)
        if data is None and not from_feedback:
            raise ModelyardError("give --data, --from-feedback or both", status=400, param="data")
        outcomes = load_outcomes(data, weak_column=weak_column, strong_column=strong_column,
                                 answer_column=answer_column) if data is not None else None
        if from_feedback:
            outcomes = _with_feedback(outcomes, endpoint)
        outcomes.require_positive()
        checks = [load_outcomes(c, weak_column=weak_column, strong_column=strong_column, answer_column=answer_column,
                                param="check_data")
                  for c in check_data or ()]
        embedder = _embedder()

        def fit(rows: Any) -> Any:
            return LearnedRouter(embedder=embedder, ood_quantile=ood_quantile).fit(
                rows.prompts, rows.weak, rows.strong, answers=rows.answers)

        router = fit(outcomes)
        gate = run_gate(outcomes, fit, final=router, checks=checks)
        gate.forced = force and not gate.passed
        router.active = gate.passed or force
        router.gate = gate.to_json()
        kept_current = not router.active and _live_and_active(path)
        if kept_current:
            path = candidate_path(path)  # keep the endpoint's working router
        saved = router.save(path)
    body = {
        "endpoint": endpoint, "path": str(saved), "rows": len(outcomes), "positives": router.info["positives"],
        "weak_column": outcomes.weak_column, "strong_column": outcomes.strong_column,
        "verifier": router.uses_answers, "contaminated_dropped": outcomes.dropped_contaminated,
        "thresholds": {f"{s:g}": router.threshold_for_share(s) for s in (0.1, 0.2, 0.3, 0.5)},
        "activated": router.active, "gate": router.gate, "ood": {"threshold": router.ood.threshold,
                                                                 "quantile": router.ood.quantile, "k": router.ood.k},
        "notes": outcomes.notes, "seconds": round(time.perf_counter() - t0, 3),
    }
    if as_json:
        print(json.dumps(body))
        if not router.active:
            raise typer.Exit(NOT_ACTIVATED)
        return
    out = _out()
    for note in outcomes.notes:
        out.print(f"[yellow]note:[/yellow] {escape(note)}")
    kind = "verifier (prompt + weak answer)" if router.uses_answers else "router"
    out.print(f"trained a learned {kind} on {len(outcomes):,} prompts ({body['positives']:,} where the strong model "
              f"did better) in {body['seconds']:.1f} s")
    out.print(f"saved to [bold]{escape(str(saved))}[/bold] (+ .json)")
    table = Table(title="threshold for a share of strong calls (on the training prompts)")
    table.add_column("strong calls", justify="right")
    table.add_column("threshold", justify="right")
    for share, value in body["thresholds"].items():
        table.add_row(_pct(float(share)), f"{value:.4f}")
    out.print(table)
    out.print(gate_table(router.gate))
    if router.active and gate.forced:
        out.print(f"[yellow]activated with --force although {escape(gate.reason)}[/yellow]")
    elif router.active:
        out.print(f"[green]activated:[/green] {escape(gate.reason)}")
    else:
        where = ("the endpoint keeps its current router; this one is saved beside it for inspection" if kept_current
                 else "saved inactive: the endpoint routes every prompt by the length rule")
        out.print(f"[red]not activated:[/red] {escape(gate.reason)}; {where}. Pass --force to activate it anyway.")
        raise typer.Exit(NOT_ACTIVATED)


#: exit status of `router train` when the router was trained but not activated
NOT_ACTIVATED = 3


def gate_table(gate: dict[str, Any]) -> Table:
    """The gate's comparisons: learned (as served) against the length rule and random, per test set."""
    table = Table(title="learned router against the length rule (data it did not train on)")
    for col in ("test set", "prompts", "learned APGR", "length APGR", "random", "learned CPT(50%)",
                "length CPT(50%)", "out of distribution"):
        table.add_column(col, justify="right")
    for row in gate["folds"] + gate["checks"]:
        table.add_row(escape(row["name"]), f"{row['rows']:,}", _num(row["learned_apgr"]), _num(row["length_apgr"]),
                      _num(row["random_apgr"]), _pct(row["learned_cpt50"]), _pct(row["length_cpt50"]),
                      _pct(row["ood_share"]))
    return table


def _live_and_active(path: Path) -> bool:
    """Whether an active router is saved at ``path`` (one that went live and should not be replaced by a worse one)."""
    meta = Path(path).with_suffix(".json") if Path(path).suffix == ".npz" else Path(str(path) + ".json")
    try:
        return bool(json.loads(meta.read_text()).get("active", True))
    except (OSError, ValueError):
        return False


def _with_feedback(outcomes: Any, endpoint: str) -> Any:
    """The endpoint's feedback rows (``GET /api/endpoints/{name}/router/outcomes``), added to `outcomes`."""
    import numpy as np

    from ..routing.data import OutcomeData
    from .endpoint import api_path
    from .remote import call_api

    rows = call_api("GET", api_path(endpoint, "router", "outcomes"))["data"]
    if outcomes is not None and outcomes.answers is not None:
        raise ModelyardError("feedback rows have no weak answers; train a verifier from --data alone", status=400,
                             param="from_feedback")
    prompts = [r["prompt"] for r in rows]
    weak = np.array([float(r["weak_correct"]) for r in rows])
    strong = np.array([float(r["strong_correct"]) for r in rows])
    if outcomes is None:
        if not rows:
            raise ModelyardError(f"endpoint '{endpoint}' has no rated answers yet", status=400, param="from_feedback")
        return OutcomeData(prompts, weak, strong, ["feedback"] * len(rows), "weak_correct", "strong_correct",
                           source=f"feedback of {endpoint}")
    return OutcomeData(outcomes.prompts + prompts, np.concatenate([outcomes.weak, weak]),
                       np.concatenate([outcomes.strong, strong]), outcomes.groups + ["feedback"] * len(rows),
                       outcomes.weak_column, outcomes.strong_column, source=outcomes.source,
                       dropped_contaminated=outcomes.dropped_contaminated, skipped_rows=outcomes.skipped_rows,
                       notes=outcomes.notes + [f"added {len(rows)} rows from the feedback of {endpoint}"])
