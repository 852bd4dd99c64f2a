"""Batch jobs from the command line: submit a JSONL file, follow it, list, show, cancel, download.

::

    modelyard batch submit requests.jsonl --endpoint chat [--deployment blue] \\
        --mini-batch-size 16 --max-retries 3 --error-threshold 10
    # a live progress bar: done/failed/total, tokens/s, ETA, cost so far; Ctrl-C detaches, the job goes on
    modelyard batch list
    modelyard batch show JOB
    modelyard batch cancel JOB
    modelyard batch download JOB --output results.jsonl [--errors errors.jsonl]

The job runs in the server, which it survives (a restart resumes it). Every
command calls the server's OpenAI Files and Batch API (``/v1/files``,
``/v1/batches``) with the admin key, as any `openai` client would.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .output import out
from .remote import _client

app = typer.Typer(name="batch", no_args_is_help=True,
                  help="Batch jobs: many requests from a JSONL file, on capacity live traffic leaves.")

_FINAL = {"completed": "green", "failed": "red", "cancelled": "yellow", "expired": "yellow"}
#: seconds between two looks at a job being followed
POLL_S = 0.5


def _fail(message: str) -> typer.Exit:
    out().print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(1)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the API; an error is printed as the server worded it and exits 1."""
    from openai import APIConnectionError, APIStatusError

    try:
        return fn(*args, **kwargs)
    except APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        raise _fail(f"{exc.status_code}: {body.get('message') or exc.message}") from None
    except APIConnectionError:
        raise _fail("cannot reach the modelyard server — start it with `modelyard up`") from None


def _status(status: str) -> str:
    return f"[{_FINAL.get(status, 'cyan')}]{escape(status)}[/]"


def _extra(batch: Any) -> dict[str, Any]:
    return (batch.model_extra or {}).get("modelyard") or {}


def _rate(batch: Any) -> float:
    """Tokens per second since the job started: generated tokens, or prompt tokens for embeddings."""
    extra = _extra(batch)
    tokens = extra.get("completion_tokens") or extra.get("prompt_tokens") or 0
    elapsed = extra.get("elapsed_s") or 0
    return tokens / elapsed if elapsed else 0.0


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _first_url(path: Path) -> str:
    """The ``url`` of the file's first request (every line of a batch has the same)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    return "/v1/chat/completions"  # the server names the bad line
                return url if isinstance(url, str) else "/v1/chat/completions"
    return "/v1/chat/completions"


# --- following a job -----------------------------------------------------------------


def _follow(client: Any, batch: Any) -> Any:
    """A progress bar until the job ends; Ctrl-C stops following (the job goes on)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[red]{task.fields[failed]} failed[/]"), TextColumn("{task.fields[rate]:.1f} tok/s"),
               TextColumn("${task.fields[cost]:.6f}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    console = out()
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(batch.status, total=None, failed=0, rate=0.0, cost=0.0)
            while True:
                counts = batch.request_counts
                extra = _extra(batch)
                progress.update(task, description=batch.status, total=(counts.total or None) if counts else None,
                                completed=(counts.completed + counts.failed) if counts else 0,
                                failed=counts.failed if counts else 0, rate=_rate(batch),
                                cost=extra.get("cost_usd") or 0.0)
                if batch.status in _FINAL:
                    return batch
                time.sleep(POLL_S)
                batch = _call(client.batches.retrieve, batch.id)
    except KeyboardInterrupt:
        console.print(f"\n[dim]detached; batch {batch.id} goes on in the server — "
                      f"`modelyard batch show {batch.id}` shows it[/]")
        raise typer.Exit(0) from None


def _download(client: Any, file_id: str | None, path: Path | None, what: str) -> None:
    if path is None:
        return
    if file_id is None:
        out().print(f"[dim]no {what} lines; {escape(str(path))} not written[/]")
        return
    data = _call(client.files.content, file_id).content
    path.write_bytes(data)
    lines = data.count(b"\n")
    out().print(f"{what}: {lines} lines written to {escape(str(path))}")


def _summary(batch: Any) -> None:
    counts = batch.request_counts
    extra = _extra(batch)
    console = out()
    console.print(f"batch [bold]{batch.id}[/] {_status(batch.status)}: {counts.completed} succeeded, "
                  f"{counts.failed} failed of {counts.total}; {extra.get('prompt_tokens', 0)} prompt + "
                  f"{extra.get('completion_tokens', 0)} completion tokens, ${extra.get('cost_usd', 0):.6f}")
    for error in (batch.errors.data if batch.errors and batch.errors.data else []):
        where = f"line {error.line}: " if error.line else ""
        console.print(f"  [red]{escape(error.code or 'error')}[/] {escape(where + (error.message or ''))}")


# --- commands --------------------------------------------------------------------------


@app.command("submit")
def submit(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                help="JSONL: one {custom_id, method, url, body} request per line"),
    endpoint: str = typer.Option(None, "--endpoint", "-e",
                                 help="the endpoint every line goes to (default: each line's body.model)"),
    deployment: str = typer.Option(None, "--deployment", "-d", help="send every line to this deployment only"),
    mini_batch_size: int = typer.Option(10, "--mini-batch-size", min=1, max=1000,
                                        help="lines a worker takes, runs and commits together"),
    max_retries: int = typer.Option(3, "--max-retries", min=1, max=10,
                                    help="attempts per line on a retryable error (408, 429, 5xx)"),
    error_threshold: int = typer.Option(-1, "--error-threshold", min=-1,
                                        help="more failed lines than this fail the job (-1: never)"),
    output_action: str = typer.Option("append_row", "--output-action",
                                      help="append_row: write every result; summary_only: only count them"),
    max_share: float = typer.Option(None, "--max-share", min=0.0, max=1.0,
                                    help="most of a deployment's capacity the job may hold (0-1]"),
    engine: str = typer.Option("local", "--engine",
                               help="local: the gateway's instances; ray-data: a Ray Dataset on the Ray cluster"),
    url: str = typer.Option(None, "--url", help="the API route of the lines (default: the first line's url)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the job with a progress bar until it ends"),
    output: Path = typer.Option(None, "--output", "-o", help="when it ends, write the results here"),
    errors: Path = typer.Option(None, "--errors", help="when it ends, write failed lines here"),
) -> None:
    """Upload FILE and run it as a batch job; follow it until it ends (Ctrl-C detaches, the job goes on)."""
    if output_action not in ("append_row", "summary_only"):
        raise typer.BadParameter("use append_row or summary_only", param_hint="--output-action")
    if engine not in ("local", "ray-data"):
        raise typer.BadParameter("use local or ray-data", param_hint="--engine")
    client = _client()
    with open(file, "rb") as f:
        uploaded = _call(client.files.create, file=f, purpose="batch")
    settings: dict[str, Any] = {"mini_batch_size": mini_batch_size, "max_retries": max_retries,
                                "error_threshold": error_threshold, "output_action": output_action}
    if engine != "local":
        settings["engine"] = engine
    for name, value in (("model", endpoint), ("deployment", deployment), ("max_share", max_share)):
        if value is not None:
            settings[name] = value
    batch = _call(client.batches.create, input_file_id=uploaded.id, endpoint=url or _first_url(file),
                  completion_window="24h", extra_body=settings)
    console = out()
    console.print(f"batch [bold]{batch.id}[/] submitted ({uploaded.bytes} bytes, file {uploaded.id}) "
                  "[dim](Ctrl-C detaches; the job goes on)[/]")
    if not wait:
        console.print(f"[dim]follow it with `modelyard batch show {batch.id}`[/]")
        return
    final = _follow(client, batch)
    _summary(final)
    _download(client, final.output_file_id, output, "results")
    _download(client, final.error_file_id, errors, "errors")
    if final.status != "completed":
        raise typer.Exit(1)


@app.command("list")
def list_batches(limit: int = typer.Option(20, "--limit", min=1, max=100, help="how many, newest first")) -> None:
    """The newest batch jobs and where they are (`batch show JOB` has tokens and cost)."""
    client = _client()
    page = _call(client.batches.list, limit=limit)
    table = Table(show_edge=False, caption="lines: succeeded/failed/total", caption_justify="left")
    table.add_column("id", no_wrap=True)  # copied into other commands: never folded
    table.add_column("status", no_wrap=True)
    table.add_column("endpoint", overflow="fold")
    table.add_column("lines", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for b in page.data:
        counts = b.request_counts
        created = datetime.fromtimestamp(b.created_at).strftime("%m-%d %H:%M") if b.created_at else "-"
        table.add_row(b.id, _status(b.status), escape(b.model or "-"),
                      f"{counts.completed}/{counts.failed}/{counts.total}", created)
    out().print(table)


@app.command("show")
def show(job: str = typer.Argument(..., help="the batch id (batch_…)")) -> None:
    """A job's status, settings, progress, tokens and cost, and its files."""
    b = _call(_client().batches.retrieve, job)
    extra = _extra(b)
    counts = b.request_counts
    console = out()
    console.print(f"[bold]{b.id}[/] {_status(b.status)}  {escape(b.endpoint)} on "
                  f"{escape(b.model or 'each line’s model')}"
                  + (f", deployment {escape(extra['deployment'])}" if extra.get("deployment") else ""))
    console.print(f"  lines: {counts.completed} succeeded, {counts.failed} failed, "
                  f"{counts.total - counts.completed - counts.failed} to go, of {counts.total}")
    console.print(f"  usage: {extra.get('requests', 0)} requests (attempts), {extra.get('prompt_tokens', 0)} prompt "
                  f"+ {extra.get('completion_tokens', 0)} completion tokens, cost ${extra.get('cost_usd', 0):.6f}, "
                  f"{_rate(b):.1f} tok/s over {extra.get('elapsed_s', 0):.1f} s")
    console.print(f"  settings: mini_batch_size {extra.get('mini_batch_size')}, max_retries {extra.get('max_retries')}, "
                  f"error_threshold {extra.get('error_threshold')}, output_action {extra.get('output_action')}"
                  + (f", max_share {extra['max_share']}" if extra.get("max_share") else "")
                  + (f", engine {extra['engine']}" if extra.get("engine") not in (None, "local") else ""))
    console.print(f"  input {b.input_file_id}; output {b.output_file_id or '-'}; errors {b.error_file_id or '-'}")
    for name in ("created", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled", "expired"):
        ts = getattr(b, f"{name}_at", None)
        if ts:
            console.print(f"  {name + ':':13} {_when(ts)}")
    for error in (b.errors.data if b.errors and b.errors.data else []):
        where = f"line {error.line}: " if error.line else ""
        console.print(f"  [red]{escape(error.code or 'error')}[/] {escape(where + (error.message or ''))}")


@app.command("cancel")
def cancel(job: str = typer.Argument(..., help="the batch id")) -> None:
    """Stop a job: lines already done are kept (in its output file); the rest are not run."""
    b = _call(_client().batches.cancel, job)
    out().print(f"batch {b.id} {_status(b.status)} ({b.request_counts.completed} lines done so far)")


@app.command("download")
def download(
    job: str = typer.Argument(..., help="the batch id"),
    output: Path = typer.Option(..., "--output", "-o", help="where to write the results (JSONL)"),
    errors: Path = typer.Option(None, "--errors", help="where to write the failed lines (JSONL)"),
) -> None:
    """Write a finished job's results (and failed lines) to files."""
    client = _client()
    b = _call(client.batches.retrieve, job)
    if b.status not in _FINAL:
        raise _fail(f"batch {job} is {b.status}; its files are written when it ends")
    _download(client, b.output_file_id, output, "results")
    _download(client, b.error_file_id, errors, "errors")
