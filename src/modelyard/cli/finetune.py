"""Fine-tuning jobs from the command line: upload data and start a job, follow it, list, get, events, cancel.

::

    modelyard finetune create --model gemma-3-270m --data train.jsonl --validation val.jsonl --epochs 3 \\
        --suffix tickets --wait          # a progress bar: step/total, training and validation loss, ETA
    modelyard finetune list
    modelyard finetune get JOB
    modelyard finetune events JOB
    modelyard finetune checkpoints JOB
    modelyard finetune cancel JOB

The job runs in the server, which it survives (a restart resumes it from its
last checkpoint). Every command calls the server's OpenAI Files and
fine-tuning API (``/v1/files``, ``/v1/fine_tuning/jobs``) with the admin key,
as any `openai` client would.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .batch import _call
from .output import out
from .remote import _client

app = typer.Typer(name="finetune", no_args_is_help=True,
                  help="Fine-tuning: LoRA adapters for local models from chat data (the OpenAI fine-tuning API).")

_FINAL = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}
#: seconds between two looks at a job being followed
POLL_S = 1.0


def _status(status: str) -> str:
    return f"[{_FINAL.get(status, 'cyan')}]{escape(status)}[/]"


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _eta(job: Any) -> str:
    if job.status != "running" or not job.estimated_finish:
        return "-"
    left = max(0, int(job.estimated_finish - time.time()))
    return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


def _new_events(client: Any, job_id: str, seen: set[str]) -> list[Any]:
    """Events not seen yet, oldest first (the API lists them newest first)."""
    page = _call(client.fine_tuning.jobs.list_events, job_id, limit=100)
    fresh = [e for e in page.data if e.id not in seen]
    seen.update(e.id for e in fresh)
    return list(reversed(fresh))


def _follow(client: Any, job: Any) -> Any:
    """A progress bar (step of total, losses, ETA) and the job's messages, until it ends; Ctrl-C detaches."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[valid]}"),
               TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}")]
    console = out()
    seen: set[str] = set()
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(job.status, total=None, loss="-", valid="-", eta="-")
            while True:
                for event in _new_events(client, job.id, seen):
                    if event.type == "metrics" and event.data:
                        data = event.data
                        progress.update(task, total=data.get("total_steps") or None, completed=data.get("step", 0),
                                        loss=_loss(data.get("train_loss")), valid=_loss(data.get("valid_loss")))
                    else:
                        style = {"warn": "yellow", "error": "red"}.get(event.level, "dim")
                        progress.console.print(f"[{style}]{escape(event.message)}[/]")
                progress.update(task, description=job.status, eta=_eta(job))
                if job.status in _FINAL:
                    return job
                time.sleep(POLL_S)
                job = _call(client.fine_tuning.jobs.retrieve, job.id)
    except KeyboardInterrupt:
        console.print(f"\n[dim]detached; job {job.id} goes on in the server — "
                      f"`modelyard finetune get {job.id}` shows it[/]")
        raise typer.Exit(0) from None


def _summary(job: Any) -> None:
    console = out()
    console.print(f"fine-tuning job [bold]{job.id}[/] {_status(job.status)}")
    if job.fine_tuned_model:
        console.print(f"  model: [bold]{escape(job.fine_tuned_model)}[/] ({job.trained_tokens or 0} trained tokens)"
                      f" — deploy it: modelyard deployment create ENDPOINT NAME --model {escape(job.fine_tuned_model)}")
    if job.error:
        where = f" ({job.error.param})" if job.error.param else ""
        console.print(f"  [red]{escape(job.error.code or 'error')}{escape(where)}[/] {escape(job.error.message)}")


def _upload(client: Any, path: Path) -> Any:
    with open(path, "rb") as f:
        return _call(client.files.create, file=f, purpose="fine-tune")


@app.command("create")
def create(
    model: str = typer.Option(..., "--model", "-m", help="the base model's catalog id (a local GGUF chat model)"),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, readable=True,
                              help="training data: JSONL, one {\"messages\": [...]} conversation per line"),
    validation: Path = typer.Option(None, "--validation", exists=True, dir_okay=False, readable=True,
                                    help="validation data in the same format (validation loss per step)"),
    epochs: int = typer.Option(None, "--epochs", min=1, max=50, help="passes over the data (default: auto, 3)"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, max=256,
                                   help="examples per step (default: auto, up to 8)"),
    learning_rate_multiplier: float = typer.Option(None, "--learning-rate-multiplier", min=0.0,
                                                   help="scales the base learning rate (default: auto, 1.0)"),
    lora_rank: int = typer.Option(None, "--lora-rank", min=1, max=256, help="LoRA rank (default 8)"),
    suffix: str = typer.Option(None, "--suffix", help="part of the tuned model's name (up to 64 characters)"),
    seed: int = typer.Option(None, "--seed", min=0, help="for a repeatable run"),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="follow the job with a progress bar until it ends"),
) -> None:
    """Upload the data and start a fine-tuning job; with --wait, follow it (Ctrl-C detaches, the job goes on)."""
    client = _client()
    training = _upload(client, data)
    params: dict[str, Any] = {"model": model, "training_file": training.id}
    if validation is not None:
        params["validation_file"] = _upload(client, validation).id
    hyper = {name: value for name, value in (("n_epochs", epochs), ("batch_size", batch_size),
                                             ("learning_rate_multiplier", learning_rate_multiplier),
                                             ("lora_rank", lora_rank)) if value is not None}
    if hyper:
        params["method"] = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    if suffix is not None:
        params["suffix"] = suffix
    if seed is not None:
        params["seed"] = seed
    job = _call(client.fine_tuning.jobs.create, **params)
    console = out()
    console.print(f"fine-tuning job [bold]{job.id}[/] created on {escape(model)} (training file {training.id})")
    if not wait:
        console.print(f"[dim]follow it with `modelyard finetune events {job.id}` or `modelyard finetune get "
                      f"{job.id}`[/]")
        return
    final = _follow(client, job)
    _summary(final)
    if final.status != "succeeded":
        raise typer.Exit(1)


@app.command("list")
def list_jobs(limit: int = typer.Option(20, "--limit", min=1, max=100, help="how many, newest first")) -> None:
    """The newest fine-tuning jobs and where they are."""
    page = _call(_client().fine_tuning.jobs.list, limit=limit)
    table = Table(show_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("base model", overflow="fold")
    table.add_column("fine-tuned model", overflow="fold")
    table.add_column("created", no_wrap=True)
    for job in page.data:
        created = datetime.fromtimestamp(job.created_at).strftime("%m-%d %H:%M") if job.created_at else "-"
        table.add_row(job.id, _status(job.status), escape(job.model), escape(job.fine_tuned_model or "-"), created)
    out().print(table)


@app.command("get")
def get(job_id: str = typer.Argument(..., metavar="JOB", help="the job id (ftjob-…)")) -> None:
    """A job's status, files, hyperparameters, result or error, and times."""
    job = _call(_client().fine_tuning.jobs.retrieve, job_id)
    _summary(job)
    console = out()
    hyper = job.hyperparameters.model_dump() | (job.hyperparameters.model_extra or {})
    console.print(f"  base model: {escape(job.model)}; seed {job.seed}")
    console.print(f"  training file {job.training_file}; validation file {job.validation_file or '-'}")
    console.print("  hyperparameters: " + ", ".join(f"{k} {v}" for k, v in hyper.items() if v is not None))
    if job.result_files:
        console.print(f"  results file: {', '.join(job.result_files)} (CSV: the loss at each step)")
    console.print(f"  created:  {_when(job.created_at)}")
    if job.status == "running":
        console.print(f"  ETA:      {_eta(job)}")
    if job.finished_at:
        console.print(f"  finished: {_when(job.finished_at)}")


@app.command("events")
def events(
    job_id: str = typer.Argument(..., metavar="JOB", help="the job id"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="how many of the newest events"),
) -> None:
    """A job's events, oldest first: messages and the loss at each step."""
    page = _call(_client().fine_tuning.jobs.list_events, job_id, limit=limit)
    table = Table(show_edge=False)
    table.add_column("time", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("message", overflow="fold")
    for event in reversed(page.data):
        style = {"warn": "yellow", "error": "red"}.get(event.level, "")
        level = f"[{style}]{event.level}[/]" if style else event.level
        table.add_row(datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S"), level, escape(event.message))
    out().print(table)


@app.command("checkpoints")
def checkpoints(job_id: str = typer.Argument(..., metavar="JOB", help="the job id")) -> None:
    """A job's checkpoints, latest step first, with the loss at each."""
    page = _call(_client().fine_tuning.jobs.checkpoints.list, job_id, limit=100)
    table = Table(show_edge=False)
    table.add_column("step", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("valid loss", justify="right")
    table.add_column("checkpoint", overflow="fold")
    for ckpt in page.data:
        table.add_row(str(ckpt.step_number), _loss(ckpt.metrics.train_loss), _loss(ckpt.metrics.valid_loss),
                      escape(ckpt.fine_tuned_model_checkpoint))
    out().print(table)


@app.command("cancel")
def cancel(job_id: str = typer.Argument(..., metavar="JOB", help="the job id")) -> None:
    """Cancel a job that has not finished; its training process is stopped."""
    job = _call(_client().fine_tuning.jobs.cancel, job_id)
    out().print(f"fine-tuning job {job.id} {_status(job.status)}")



@app.command("eval")
def evaluate_job(
    job_id: str = typer.Argument(..., metavar="JOB", help="a succeeded job's id"),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, readable=True,
                              help="test conversations (the training format); the last assistant message is the "
                                   "expected answer"),
    metric: str = typer.Option(None, "--metric", help="module:function (or path/to/file.py:function) taking "
                                                       "(expected, answer) and returning a score; default exact match"),
    limit: int = typer.Option(None, "--limit", min=1, help="only the first N test conversations"),
    threads: int = typer.Option(None, "--threads", min=1, help="llama.cpp threads (default: every core)"),
    keep: bool = typer.Option(True, "--keep/--no-keep", help="store the result with the job (its events)"),
) -> None:
    """Base model against the tuned one on the same test prompts, through llama.cpp on this machine: the score
    (exact match, or --metric) and tokens per second; the result is kept with the job."""
    from ..catalog.card import ModelCard
    from ..catalog.sources import resolve_path
    from ..finetune.data import load_examples
    from ..finetune.evaluate import load_metric, score
    from ..finetune.process import sha256_of
    from ..settings import Settings
    from .remote import call_api

    client = _client()
    job = _call(client.fine_tuning.jobs.retrieve, job_id)
    if job.status != "succeeded" or not job.fine_tuned_model:
        out().print(f"[red]fine-tuning job {escape(job_id)} is {job.status}: only a succeeded job's model can be "
                    "evaluated[/]")
        raise typer.Exit(1)
    card = ModelCard.model_validate({k: v for k, v in call_api("GET", f"/api/catalog/{job.fine_tuned_model}").items()
                                     if k in ModelCard.model_fields})
    if card.adapter is None or not Path(card.adapter.path).is_file():
        out().print(f"[red]{escape(card.id)}'s adapter is not on this machine; run `finetune eval` where the "
                    "server keeps its models[/]")
        raise typer.Exit(1)
    try:
        examples = load_examples(data, param="data", min_examples=1)
        judge = load_metric(metric)
    except Exception as exc:  # noqa: BLE001 - a bad file or metric is the user's to fix: say what and stop
        out().print(f"[red]{escape(str(getattr(exc, 'message', exc)))}[/]")
        raise typer.Exit(1) from None
    examples = examples[:limit] if limit else examples
    base_path = resolve_path(card, Settings.from_env())
    results = {}
    for which, adapter in (("base", None), ("tuned", Path(card.adapter.path))):
        with out().status(f"{which}: {len(examples)} test prompts…"):
            results[which] = score(base_path, examples, chat_template=card.chat_template or "", stop=card.stop,
                                   adapter=adapter, metric=judge, threads=threads,
                                   name=card.adapter.base if which == "base" else card.id)
    table = Table("model", "score", "examples", "completion tokens", "tokens/s")
    for which, s in results.items():
        table.add_row(f"{which}: {s.model}", f"{s.score:.3f}", str(s.examples), str(s.completion_tokens),
                      f"{s.tokens_per_s:.1f}")
    out().print(table)
    if keep:
        body = {"data": data.name, "data_sha256": sha256_of(data), "metric": metric or "exact_match",
                **{which: {k: v for k, v in s.to_dict().items() if k != "answers"} for which, s in results.items()}}
        call_api("POST", f"/api/fine_tuning/jobs/{job_id}/evaluations", json=body)
        out().print(f"[dim]kept with {job_id}: `modelyard finetune events {job_id}`[/]")


@app.command("dataset")
def dataset(
    endpoint: str = typer.Option(..., "--from-endpoint", help="the router endpoint whose kept answers are distilled"),
    window: str = typer.Option(None, "--window", help="only answers this recent: 7d, 12h, 30m (default: every one)"),
    min_rating: int = typer.Option(1, "--min-rating",
                                   help="a rated answer needs at least this rating (ratings are -1 or 1: 1 is up)"),
    tiers: list[str] = typer.Option(None, "--tier", help="only answers this tier gave (repeat for several)"),
    sources: list[str] = typer.Option(None, "--source", help="top, corrections or rated (repeat; default: all)"),
    holdout: float = typer.Option(None, "--holdout", min=0.0, max=0.5,
                                  help="share held out for validation (default 0.1 with --holdout-out or --upload)"),
    output: Path = typer.Option(None, "--output", "-o", dir_okay=False, help="write the training rows here (JSONL)"),
    holdout_out: Path = typer.Option(None, "--holdout-out", dir_okay=False, help="write the held-out rows here"),
    max_rows: int = typer.Option(10_000, "--max-rows", min=1, help="at most this many rows, newest first"),
    upload: bool = typer.Option(False, "--upload", help="keep the rows in the server as fine-tune files"),
) -> None:
    """Training data from an endpoint's own traffic: its top tier's answers, the corrections stronger tiers made
    and positively rated answers — de-duplicated, with a held-out split."""
    from .batch import _fail
    from .remote import call_api

    if output is None and not upload:
        raise _fail("say where the rows go: -o train.jsonl, or --upload to keep them in the server")
    if holdout is None:
        holdout = 0.1 if holdout_out is not None or upload else 0.0
    if holdout > 0 and holdout_out is None and not upload:
        raise _fail("--holdout needs --holdout-out val.jsonl (or --upload): the held-out rows must go somewhere")
    body: dict[str, Any] = {"endpoint": endpoint, "window": window, "min_rating": min_rating, "holdout": holdout,
                            "max_rows": max_rows, "upload": upload}
    if tiers:
        body["tiers"] = tiers
    if sources:
        body["sources"] = sources
    result = call_api("POST", "/api/fine_tuning/datasets", json=body)
    counts = result["counts"]
    table = Table("top tier", "corrections", "rated", "train", "holdout", "duplicates", "rated down", "skipped",
                  title=f"{escape(endpoint)}: {counts['scanned']} kept answers read")
    table.add_row(str(counts["top"]), str(counts["corrections"]), str(counts["rated"]), str(counts["train"]),
                  str(counts["holdout"]), str(counts["duplicates"]), str(counts["rated_down"]), str(counts["skipped"]))
    console = out()
    console.print(table)
    if result.get("first_invalid"):
        console.print(f"[dim]skipped, e.g.: {escape(result['first_invalid'])}[/]")
    if counts.get("truncated"):
        console.print(f"[yellow]stopped at --max-rows {max_rows}: older answers were not read[/]")
    if result.get("warning"):
        console.print(f"[yellow]{escape(result['warning'])}[/]")
    if upload:
        train, held = result["training_file"], result.get("validation_file")
        if output is not None:
            output.write_bytes(_call(_client().files.content, train["id"]).content)
        if holdout_out is not None and held is not None:
            holdout_out.write_bytes(_call(_client().files.content, held["id"]).content)
        console.print(f"training file [bold]{train['id']}[/] ({counts['train']} rows)"
                      + (f", validation file [bold]{held['id']}[/] ({counts['holdout']} rows)" if held else ""))
        console.print("[dim]train on it: client.fine_tuning.jobs.create(model=…, training_file="
                      f"\"{train['id']}\"" + (f", validation_file=\"{held['id']}\"" if held else "") + ")[/]")
        return
    assert output is not None
    output.write_text(result["train"])
    written = f"{counts['train']} rows → {escape(str(output))}"
    if holdout_out is not None:
        holdout_out.write_text(result["holdout"])
        written += f", {counts['holdout']} held out → {escape(str(holdout_out))}"
    console.print(written)
