"""Rollouts from the command line: shift traffic step by step, watch, roll back on a breach.

::

    modelyard deployment rollout chat green --steps 10,25,50,100 --interval 60s \\
        --max-error-rate 0.02 --max-p95-ms 3000          # follows it live; --no-wait returns at once
    modelyard rollout status chat                        # progress and history of the latest rollout
    modelyard rollout cancel 3                           # back to the split before rollout 3

The rollout itself runs in the server, so it goes on when the command ends
(or is interrupted) and survives a server restart. Every command calls the
running server's management API with the admin key.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from .. import durations
from ..errors import ModelyardError
from ..serving.rollout import validate_steps
from .output import out
from .remote import call_api

app = typer.Typer(name="rollout", no_args_is_help=True,
                  help="Rollouts: status and cancel (start one with `modelyard deployment rollout`).")

_FINAL_STYLE = {"succeeded": "green", "rolled_back": "red", "cancelled": "yellow", "reverted": "yellow"}


# --- arguments ----------------------------------------------------------------------


def parse_interval(value: str) -> float:
    """``30s``, ``2m``, ``1h``, ``1.5m`` or plain seconds (``90``) as seconds; `typer.BadParameter` otherwise."""
    try:
        return durations.parse_duration(value, units=("ms", "s", "m", "h"))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a duration like 30s, 2m, 1h or 90 (seconds): {exc}",
                                 param_hint="--interval") from None


def parse_steps(value: str) -> list[int]:
    """``10,25,50,100`` as ``[10, 25, 50, 100]``, checked as the server will; `typer.BadParameter` otherwise."""
    try:
        steps = [int(part) for part in value.replace(" ", "").split(",")]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a list of whole percentages like 10,25,50,100",
                                 param_hint="--steps") from None
    try:
        return validate_steps(steps)
    except ModelyardError as exc:
        raise typer.BadParameter(exc.message, param_hint="--steps") from None


# --- showing ------------------------------------------------------------------------


def _split(traffic: dict[str, int] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (traffic or {}).items()) or "-"


def _state(state: str) -> str:
    style = _FINAL_STYLE.get(state, "cyan")
    return f"[{style}]{escape(state)}[/]"


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


def _history_line(entry: dict[str, Any]) -> str:
    style = {"passed": "green", "breach": "red", "rolled_back": "red", "succeeded": "green"}.get(entry.get("event"), "")
    message = escape(entry.get("message", ""))
    return f"{_clock(entry.get('at'))}  " + (f"[{style}]{message}[/]" if style else message)


def print_rollout(r: dict[str, Any], *, history: bool = True) -> None:
    console = out()
    percent = f" ({r['percent']}%)" if r.get("percent") is not None else ""
    console.print(f"[bold]rollout {r['id']}[/]: {escape(r['endpoint'])}/{escape(r['deployment'])}  "
                  f"{_state(r['state'])}, step {r.get('step_label')}{percent} of "
                  f"{', '.join(f'{s}%' for s in r['steps'])}")
    console.print(f"  every {r['interval_s']:g} s; limits: error rate ≤ {r['max_error_rate']:.1%}, "
                  f"p95 ≤ {r['max_p95_ms']:g} ms")
    console.print(f"  traffic now: {escape(_split(r.get('traffic_now')))}   "
                  f"before: {escape(_split(r['from_traffic']))}")
    if r["state"] == "running" and r.get("next_check_at"):
        console.print(f"  this step is judged at {_clock(r['next_check_at'])}")
    if r.get("reason"):
        console.print(f"  reason: {escape(r['reason'])}")
    if history and r.get("history"):
        table = Table(title="history", title_justify="left", show_edge=False)
        for column in ("time", "event", "step", "traffic", "message"):
            table.add_column(column, overflow="fold")
        for entry in r["history"]:
            step = entry.get("step", -1)
            table.add_row(_clock(entry.get("at")), escape(entry.get("event", "")),
                          f"{step + 1}/{len(r['steps'])}" if step is not None and step >= 0 else "-",
                          escape(_split(entry.get("traffic"))) if "traffic" in entry else "",
                          escape(entry.get("message", "")))
        console.print(table)


def _follow(rollout: dict[str, Any], poll_s: float) -> dict[str, Any]:
    """Print each new history entry until the rollout ends; the final rollout."""
    console = out()
    seen = 0
    try:
        while True:
            for entry in rollout["history"][seen:]:
                console.print(_history_line(entry))
            seen = len(rollout["history"])
            if rollout["state"] != "running":
                return rollout
            time.sleep(poll_s)
            rollout = call_api("GET", f"/api/rollouts/{rollout['id']}")
    except KeyboardInterrupt:
        console.print(f"\n[dim]stopped following; rollout {rollout['id']} goes on in the server — "
                      f"`modelyard rollout status {rollout['endpoint']}` shows it[/]")
        raise typer.Exit(130) from None


# --- commands -----------------------------------------------------------------------


def rollout(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    deployment: str = typer.Argument(..., help="the deployment that takes over the traffic"),
    steps: str = typer.Option("10,25,50,100", "--steps",
                              help="its share of live traffic at each step, in percent, increasing"),
    interval: str = typer.Option("60s", "--interval", help="how long each step is watched: 30s, 2m, 1h or seconds"),
    max_error_rate: float = typer.Option(0.02, "--max-error-rate", min=0.0, max=1.0,
                                         help="roll back when its error rate (5xx, 408, 429) in a step is above this"),
    max_p95_ms: float = typer.Option(3000.0, "--max-p95-ms", min=0.001,
                                     help="roll back when its p95 latency in a step is above this many ms"),
    min_requests: int = typer.Option(1, "--min-requests", min=1,
                                     help="a step with fewer requests to it is not judged and the rollout moves on"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the rollout live until it ends"),
) -> None:
    """Shift live traffic to DEPLOYMENT step by step, and roll back to the previous split on a breach.

    At each step the deployment gets that share of live traffic and the others
    share the rest as before. After each interval its error rate and p95
    latency are checked; a breach restores the split from before the rollout.
    With --wait (the default) the command follows it and exits 0 only if it
    succeeded; the rollout runs in the server either way.
    """
    body = {"steps": parse_steps(steps), "interval_s": parse_interval(interval), "max_error_rate": max_error_rate,
            "max_p95_ms": max_p95_ms, "min_requests": min_requests}
    path = "/api/endpoints/" + quote(endpoint, safe="") + "/deployments/" + quote(deployment, safe="") + "/rollout"
    started = call_api("POST", path, json=body)
    console = out()
    if not wait:
        print_rollout(started, history=False)
        console.print(f"[dim]follow it with `modelyard rollout status {escape(endpoint)}`; "
                      f"cancel it with `modelyard rollout cancel {started['id']}`[/]")
        return
    console.print(f"[bold]rollout {started['id']}[/] of {escape(deployment)} on {escape(endpoint)} "
                  f"[dim](Ctrl-C stops following; `modelyard rollout cancel {started['id']}` stops the rollout)[/]")
    final = _follow(started, poll_s=min(2.0, max(0.2, body["interval_s"] / 10)))
    console.print(f"{_state(final['state'])}: traffic now {escape(_split(final.get('traffic_now')))}")
    if final["state"] != "succeeded":
        raise typer.Exit(1)


@app.command("status")
def rollout_status(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    all_rollouts: bool = typer.Option(False, "--all", help="list every rollout of the endpoint instead"),
) -> None:
    """Progress and history of the endpoint's latest rollout: step, live split, state and why."""
    rows = call_api("GET", "/api/endpoints/" + quote(endpoint, safe="") + "/rollouts")["data"]
    if not rows:
        out().print(f"endpoint {escape(endpoint)} has had no rollouts")
        return
    if not all_rollouts:
        print_rollout(rows[0])
        return
    table = Table(title=f"rollouts of {escape(endpoint)}", title_justify="left")
    for column in ("id", "deployment", "state", "step", "steps", "started", "reason"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), escape(r["deployment"]), _state(r["state"]), r.get("step_label") or "-",
                      ",".join(map(str, r["steps"])), escape((r.get("created_at") or "-")[:19]),
                      escape(r.get("reason") or ""))
    out().print(table)


@app.command("cancel")
def rollout_cancel(
    rollout_id: int = typer.Argument(..., help="the rollout's id (`modelyard rollout status` shows it)"),
) -> None:
    """Stop a running rollout and restore the traffic split from before it."""
    r = call_api("POST", f"/api/rollouts/{rollout_id}/cancel")
    out().print(f"rollout {r['id']} {_state(r['state'])}: traffic now {escape(_split(r.get('traffic_now')))}")
