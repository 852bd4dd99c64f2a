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

