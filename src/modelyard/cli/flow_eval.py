"""``modelyard flow eval``: run a JSONL file of questions through a flow once per variant setting, and compare.

::

    modelyard flow eval ask-docs --data qa.jsonl --variant answer=with_docs --variant answer=no_docs \\
        [--metric metric.py:contains] [--answer-field answer] [--output answer] [--gold-doc-field section] \\
        [--concurrency 4] [-o report.json]

Each line holds the flow's inputs (its other fields are not sent) and the
expected answer (``answer`` or ``ground_truth``). Each ``--variant`` is one
setting — ``node=variant_id``, several nodes joined by ``,`` — and every line
runs once per setting through ``POST /api/flows/NAME/run`` (so each step is
routed, cached, budgeted and recorded like any request). Per setting:

- the score: exact match after `normalise` (case, blank space, punctuation
  at the ends), or the mean of your metric, a function ``f(prediction,
  expected, inputs) -> float`` loaded from your file and run here, on your
  machine; a run that fails scores 0;
- with ``--gold-doc-field``, the retrieval hit rate at k: how often a
  retrieve node's hits include the gold document (its path or title) or
  section (`retrieved_hits` reads them from the run's trace);
- USD and tokens per answer, and p50/p95 of the runs' latency (the trace's),
  over the runs that answered.
"""

from __future__ import annotations

import importlib.util
import json
import re
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import httpx
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .flow import Refused, api_client, check_variants, fail, flow_path, ms, parse_variants, usd
from .output import err, out
from .remote import call_api

Metric = Callable[[str, Any, dict[str, Any]], float]
_PUNCTUATION = string.punctuation + "“”‘’«»…"


def normalise(text: Any) -> str:
    """For exact match: lower case, runs of blank space as one space, punctuation at the ends dropped."""
    return " ".join(str(text).lower().split()).strip(_PUNCTUATION + " ")


def exact_match(prediction: str, expected: Any, inputs: dict[str, Any] | None = None) -> float:
    """1.0 when the prediction equals the expected answer (or one of a list of them) once normalised."""
    answers = expected if isinstance(expected, list) else [expected]
    return 1.0 if any(normalise(prediction) == normalise(a) for a in answers) else 0.0


def load_metric(spec: str) -> tuple[str, Metric]:
    """``metric.py:function`` -> the function, loaded from the file (your own code, run here)."""
    file, sep, function = spec.rpartition(":")
    if not sep or not file or not function:
        raise typer.BadParameter(f"{spec!r}: write FILE.py:FUNCTION", param_hint="--metric")
    path = Path(file)
    if not path.is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="--metric")
    module_spec = importlib.util.spec_from_file_location(f"modelyard_metric_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise typer.BadParameter(f"{file} cannot be loaded as Python", param_hint="--metric")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise typer.BadParameter(f"{file} failed to load: {type(exc).__name__}: {exc}", param_hint="--metric") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise typer.BadParameter(f"{file} has no function {function!r}", param_hint="--metric")
    return function, fn


@dataclass
class Case:
    """One line of the evaluation data: the flow's inputs, the expected answer, the gold document if any."""

    line: int
    inputs: dict[str, Any]
    expected: Any
    gold: Any = None


@dataclass
class Outcome:
    """One case run with one variant setting."""

    case: Case
    run_id: str | None = None
    prediction: str | None = None
    error: str | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    latency_ms: float | None = None
    #: each hit of the run's retrieve nodes, as its document's names; None when it retrieved nothing
    retrieved: list[list[str]] | None = None
    score: float = 0.0
    hit: bool | None = None


@dataclass
class Setting:
    variants: dict[str, str]
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.variants.items()) or "default"


def read_cases(path: Path, inputs: dict[str, Any], answer_field: str | None,
               gold_field: str | None) -> list[Case]:
    """The JSONL file's lines as cases: each line's fields that are flow inputs, and its answer."""
    cases: list[Case] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        fields = [answer_field] if answer_field else ["answer", "ground_truth"]
        key = next((f for f in fields if f in row), None)
        if key is None:
            raise ValueError(f"{path}:{number}: no {' or '.join(repr(f) for f in fields)} field (the expected answer;"
                             " --answer-field names another)")
        expected = row[key] if isinstance(row[key], (str, list)) else json.dumps(row[key])  # 384 -> "384"
        cases.append(Case(number, {k: v for k, v in row.items() if k in inputs}, expected,
                          row.get(gold_field) if gold_field else None))
    if not cases:
        raise ValueError(f"{path} holds no lines")
    return cases


_NAME_KEYS = ("path", "title", "document", "section")
_NAME = re.compile(r'"(?:' + "|".join(_NAME_KEYS) + r')":\s*"((?:[^"\\]|\\.)*)"')


def retrieved_hits(trace: dict[str, Any]) -> list[list[str]] | None:
    """Each hit of every retrieve node of a run, as the names of its document and chunk (path; title and section
    where set); None when no retrieve node ran. A trace keeps a few KB of each output: from a cut one the names
    are read out of the text."""
    spans = [s for s in trace.get("spans") or [] if s.get("kind") == "retrieve" and s.get("status") == "ok"]
    if not spans:
        return None
    found: list[list[str]] = []
    for span in spans:
        text = span.get("output") or "[]"
        try:
            hits = json.loads(text) if isinstance(text, str) else text
        except ValueError:  # cut: each hit starts with its text (`Hit.as_dict`); quotes inside strings are escaped
            found += [[json.loads(f'"{m}"') for m in _NAME.findall(piece)] for piece in text.split('{"text":')[1:]]
            continue
        for hit in hits if isinstance(hits, list) else []:
            names: list[str] = []
            for meta in (hit.get("document"), hit.get("chunk"), hit.get("metadata")) if isinstance(hit, dict) else ():
                if isinstance(meta, dict):
                    names += [meta[k] for k in _NAME_KEYS if isinstance(meta.get(k), str)]
            found.append(names)
    return found


def is_hit(hits: list[list[str]], gold: Any) -> bool:
    """Whether any hit is of the gold document or section (or one of a list of them): the same path, title or
    section, or the same file name."""
    wanted = {str(g) for g in (gold if isinstance(gold, list) else [gold])}
    names = {PurePosixPath(w).name for w in wanted}
    return any(n in wanted or PurePosixPath(n).name in names for hit in hits for n in hit)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile, interpolated between the nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summarise(setting: Setting) -> dict[str, Any]:
    """A setting's numbers: a failed run scores 0; cost, tokens and latency are over the runs that answered."""
    outcomes = setting.outcomes
    answered = [o for o in outcomes if o.error is None]
    judged = [o for o in outcomes if o.hit is not None]
    latencies = [o.latency_ms for o in answered if o.latency_ms is not None]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {"variants": setting.variants, "label": setting.label, "n": len(outcomes),
            "errors": len(outcomes) - len(answered), "score": mean([o.score for o in outcomes]),
            "hit_rate": mean([1.0 if o.hit else 0.0 for o in judged]), "hit_n": len(judged),
            "k": max((len(o.retrieved) for o in judged if o.retrieved is not None), default=None),
            "mean_cost_usd": mean([o.cost_usd for o in answered]), "mean_tokens": mean([o.tokens for o in answered]),
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


def _prediction(outputs: dict[str, Any], output: str) -> str:
    value = outputs.get(output)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _run_case(client: httpx.Client, name: str, output: str, setting: Setting, case: Case) -> Outcome:
    outcome = Outcome(case)
    try:
        r = client.post(flow_path(name, "run"), json={"inputs": case.inputs, "variants": setting.variants})
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        return outcome
    if r.status_code >= 400:
        answer = Refused.of(r)
        outcome.error = f"error {answer.status}: {answer.message}"
        return outcome
    body = r.json()
    trace = body.get("trace") or {}
    outcome.run_id = body.get("id")
    outcome.prediction = _prediction(body.get("outputs") or {}, output)
    outcome.cost_usd = float(body.get("cost_usd") or 0.0)
    outcome.tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
    outcome.latency_ms = trace.get("latency_ms")
    outcome.retrieved = retrieved_hits(trace)
    return outcome


def _output_name(desc: dict[str, Any], given: str | None) -> str:
    outputs = desc["outputs"]
    if given:
        if given not in outputs:
            raise typer.BadParameter(f"flow '{desc['name']}' has no output '{given}' (it has "
                                     f"{', '.join(outputs)})", param_hint="--output")
        return given
    chat = [k for k, v in outputs.items() if v["is_chat_output"]]
    if chat:
        return chat[0]
    if len(outputs) == 1 or "answer" in outputs:
        return "answer" if "answer" in outputs else next(iter(outputs))
    raise typer.BadParameter(f"flow '{desc['name']}' has several outputs ({', '.join(outputs)}); name the "
                             "answer with --output", param_hint="--output")


def evaluate(
    name: str = typer.Argument(..., help="the flow"),
    data: Path = typer.Option(..., "--data", "-d", exists=True, dir_okay=False,
                              help="JSONL: each line the flow's inputs plus the expected answer"),
    variants: list[str] = typer.Option([], "--variant", "-v",
                                       help="one variant setting: NODE=VARIANT_ID, several nodes joined by ','; "
                                            "repeat to compare settings (none: the flow's defaults)"),
    metric: Optional[str] = typer.Option(None, "--metric",
                                         help="FILE.py:FUNCTION scoring each answer: f(prediction, expected, inputs) "
                                              "-> float (default: exact match, normalised)"),
    answer_field: Optional[str] = typer.Option(None, "--answer-field",
                                               help="the expected answer's field (default: answer, or ground_truth)"),
    output: Optional[str] = typer.Option(None, "--output", help="the flow output holding the answer (default: the "
                                                                 "chat output, 'answer', or the only one)"),
    gold_doc_field: Optional[str] = typer.Option(None, "--gold-doc-field",
                                                 help="the field naming the document (path or title) or section "
                                                      "that answers the question: reports how often a retrieve node "
                                                      "found it (hit rate at k)"),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=64, help="runs at a time"),
    report: Optional[Path] = typer.Option(None, "--report", "-o", help="write the report and every answer as JSON"),
) -> None:
    """Run every line of a JSONL file once per variant setting and compare the settings.

    Per setting: exact match (or your metric's mean), the retrieval hit rate, USD and tokens per answer, and
    p50/p95 latency. A run that fails scores 0."""
    desc = call_api("GET", flow_path(name))
    settings = [Setting(parse_variants(v)) for v in variants] or [Setting({})]
    for setting in settings:
        check_variants(setting.variants, desc)
    output_name = _output_name(desc, output)
    metric_name, score = load_metric(metric) if metric else ("exact match", exact_match)
    try:
        cases = read_cases(data, desc["inputs"], answer_field, gold_doc_field)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None

    jobs = [(s, c) for c in cases for s in settings]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with api_client() as client, ThreadPoolExecutor(concurrency) as pool, \
            Progress(*columns, console=out(), transient=True) as progress:
        task = progress.add_task(f"running {escape(name)}", total=len(jobs))
        futures = [pool.submit(_run_case, client, name, output_name, s, c) for s, c in jobs]
        for _ in as_completed(futures):
            progress.advance(task)
    for (setting, _), future in zip(jobs, futures):  # in the file's order
        setting.outcomes.append(future.result())

    for setting in settings:
        for o in setting.outcomes:
            if o.error is None:
                try:
                    o.score = float(score(o.prediction or "", o.case.expected, dict(o.case.inputs)))
                except Exception as exc:
                    raise fail(f"{metric} failed on {data}:{o.case.line}: {type(exc).__name__}: {exc}") from None
            if o.case.gold is not None and o.retrieved is not None:
                o.hit = is_hit(o.retrieved, o.case.gold)
    summaries = [summarise(s) for s in settings]
    out().print(_eval_table(name, metric_name, summaries, bool(gold_doc_field)))
    for setting in settings:
        for o in setting.outcomes:
            if o.error:
                err().print(f"[red]{escape(setting.label)}, line {o.case.line}:[/] {escape(o.error)}", soft_wrap=True)
    if report is not None:
        report.write_text(json.dumps({
            "flow": name, "data": str(data), "metric": metric_name, "output": output_name,
            "settings": [summary | {"answers": [_answer_row(o) for o in setting.outcomes]}
                         for summary, setting in zip(summaries, settings)]}, indent=2, ensure_ascii=False))
        out().print(f"[dim]report written to {escape(str(report))}[/]")


def _answer_row(o: Outcome) -> dict[str, Any]:
    return {"line": o.case.line, "inputs": o.case.inputs, "expected": o.case.expected, "prediction": o.prediction,
            "score": o.score, "error": o.error, "run_id": o.run_id, "cost_usd": o.cost_usd, "tokens": o.tokens,
            "latency_ms": o.latency_ms, "gold": o.case.gold, "retrieved": o.retrieved, "hit": o.hit}


def _eval_table(name: str, metric_name: str, summaries: list[dict[str, Any]], with_hits: bool) -> Table:
    n = summaries[0]["n"]
    table = Table(title=f"{name}: {n} answer{'s' if n != 1 else ''} per setting; USD and tokens per answer",
                  show_edge=False, pad_edge=False, collapse_padding=True)  # fits 80 columns
    k = max((s["k"] or 0 for s in summaries), default=0)
    columns = ["setting", "errors", metric_name] + ([f"hit@{k or 'k'}"] if with_hits else []) + [
        "USD", "tokens", "p50 ms", "p95 ms"]
    for col in columns:
        table.add_column(col, justify="left" if col == "setting" else "right", no_wrap=True)
    for s in summaries:
        score = "–" if s["score"] is None else (f"{s['score'] * 100:.1f}%" if metric_name == "exact match"
                                                else f"{s['score']:.3f}")
        row = [escape(s["label"]), str(s["errors"]), score]
        if with_hits:  # how many runs it is of, when not every one retrieved (a failed run did not)
            hits = "–" if s["hit_rate"] is None else f"{s['hit_rate'] * 100:.1f}%"
            row.append(hits + (f" ({s['hit_n']})" if s["hit_rate"] is not None and s["hit_n"] < s["n"] else ""))
        row += [usd(s["mean_cost_usd"]), "–" if s["mean_tokens"] is None else f"{s['mean_tokens']:,.0f}",
                ms(s["p50_ms"]), ms(s["p95_ms"])]
        table.add_row(*row)
    return table
