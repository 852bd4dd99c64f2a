"""``modelyard flow``: prompt flow DAGs served by the gateway — apply, test, evaluate, list, show, runs, delete.

::

    modelyard flow apply -f examples/ask-docs            # the folder (or its flow.dag.yaml); --check only validates
    modelyard flow test ask-docs --input question="What does modelyard up start?" [--variant answer=variant_1]
    modelyard flow eval ask-docs --data qa.jsonl --variant compose=variant_1 --variant compose=variant_2 \\
        [--metric metric.py:score] [--gold-doc-field doc] [-o report.json]
    modelyard flow list | show ask-docs | runs ask-docs [--id RUN] | delete ask-docs

``apply`` sends ``flow.dag.yaml`` and the folder's other text files (templates,
python tools, notes: see `TEXT_SUFFIXES`) to ``PUT /api/flows/NAME``; the
server checks the flow (every problem names its file and line) and, the first
time, makes the flow's two keys, printed here once. ``test`` runs the flow
streamed and prints each node as it ends: its status, output, the endpoint
and deployment (tier) that answered, the cache decision, tokens, USD and
milliseconds. ``eval`` (`cli.flow_eval`) runs a JSONL file of questions once
per variant setting and compares the settings: exact match (or your own
metric), the retrieval hit rate, cost, tokens and latency.

Every command calls the running server's flow API (``/api/flows``) with the
admin key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import httpx
import typer
import yaml
from rich.markup import escape
from rich.table import Table

from ..settings import server_url
from .output import err, out
from .remote import admin_key, call_api

app = typer.Typer(name="flow", no_args_is_help=True,
                  help="Prompt flow DAGs (flow.dag.yaml) served by the gateway: apply, test, eval, list, show, runs, "
                       "delete.")

FLOW_FILE = "flow.dag.yaml"
#: the files of a flow folder that are sent with its flow.dag.yaml (templates, python tools, data they read)
TEXT_SUFFIXES = frozenset({".jinja2", ".jinja", ".j2", ".txt", ".md", ".py", ".yaml", ".yml", ".json"})
#: how much of a node's output `flow test` prints
OUTPUT_CHARS = 160


class Refused(Exception):
    """The server could not be reached, or answered an error (``status`` 0: not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @classmethod
    def of(cls, response: httpx.Response) -> "Refused":
        """An error answer's message (the OpenAI-shaped body's, else its text)."""
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text[:500]
        return cls(response.status_code, message)


def flow_path(name: str, *rest: str) -> str:
    return "/api/flows/" + "/".join(quote(p, safe="") for p in (name, *rest))


def fail(message: str) -> typer.Exit:
    err().print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(1)


def api_client() -> httpx.Client:
    return httpx.Client(base_url=server_url().rstrip("/"), headers={"Authorization": f"Bearer {admin_key()}"},
                        timeout=httpx.Timeout(600, connect=10))


def usd(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "$0"
    return f"${value:.6f}" if abs(value) < 1 else f"${value:,.4f}"


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


# --- reading a flow folder --------------------------------------------------------------


def read_flow_folder(path: Path) -> tuple[Path, str, dict[str, str]]:
    """The folder, the flow.dag.yaml text and the other files it may need (``{"prompts/a.jinja2": text}``):
    every file with a suffix in `TEXT_SUFFIXES`, in subfolders too, except ``__pycache__`` and hidden folders.
    ``path`` is the folder or its flow.dag.yaml."""
    dag_file = path if path.is_file() else path / FLOW_FILE
    folder = dag_file.parent
    if not dag_file.is_file():
        raise ValueError(f"{path} has no {FLOW_FILE}")
    files: dict[str, str] = {}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if (file == dag_file or not file.is_file() or file.suffix.lower() not in TEXT_SUFFIXES
                or any(p == "__pycache__" or p.startswith(".") for p in rel.parts)):
            continue
        try:
            files[rel.as_posix()] = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{file} is not UTF-8 text") from None
    return folder, dag_file.read_text(encoding="utf-8"), files


def default_name(folder: Path) -> str:
    """A flow's name from its folder's: ``chat_with_retrieval`` -> ``chat-with-retrieval`` (names take letters,
    digits and dashes)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", folder.resolve().name).strip("-")


def parse_value(raw: str) -> Any:
    """A command-line value: JSON when it parses (``3``, ``true``, ``["a", "b"]``), else the text as written."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_inputs(values: list[str], types: dict[str, str] | None = None) -> dict[str, Any]:
    """``["question=Hi", "n=3"]`` -> ``{"question": "Hi", "n": 3}``; an input the flow declares a string keeps
    its text (``--input question=42`` is the string ``"42"``)."""
    found: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r}: write KEY=VALUE", param_hint="--input")
        key = key.strip()
        found[key] = raw if (types or {}).get(key) == "string" else parse_value(raw)
    return found


def parse_variants(value: str, option: str = "--variant") -> dict[str, str]:
    """``"compose=variant_1"`` or ``"a=variant_1,b=variant_2"`` -> ``{node: variant id}``."""
    found: dict[str, str] = {}
    for part in value.split(","):
        node, sep, variant = part.partition("=")
        if not sep or not node.strip() or not variant.strip():
            raise typer.BadParameter(f"{value!r}: write NODE=VARIANT_ID (several joined by ',')", param_hint=option)
        found[node.strip()] = variant.strip()
    return found


def check_variants(chosen: dict[str, str], desc: dict[str, Any]) -> None:
    """Refuse a node without variants or an unknown variant id here, before anything runs."""
    for node, variant in chosen.items():
        known = desc.get("variants", {}).get(node)
        if known is None:
            have = ", ".join(sorted(desc.get("variants", {}))) or "none"
            raise typer.BadParameter(f"flow '{desc['name']}' has no variants for node '{node}' (nodes with "
                                     f"variants: {have})", param_hint="--variant")
        if variant not in known["variants"]:
            raise typer.BadParameter(f"node '{node}' has no variant '{variant}' (it has "
                                     f"{', '.join(known['variants'])})", param_hint="--variant")


# --- printing ------------------------------------------------------------------------------


def _shorten(text: str, limit: int = OUTPUT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value_text(preview: Any) -> str:
    """A trace value (JSON text, possibly cut) as readable text: a string without its quotes."""
    if not isinstance(preview, str):
        return json.dumps(preview, ensure_ascii=False)
    try:
        value = json.loads(preview)
    except ValueError:
        return preview
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _nodes_table(desc: dict[str, Any]) -> Table:
    variants = _variant_targets(desc)
    table = Table(show_edge=False)
    for col in ("node", "type", "calls", "reads", "variants", "when"):
        table.add_column(col, overflow="fold")
    for node in desc["nodes"]:
        calls = node.get("endpoint") or (f"index {node['index']}" if node.get("index") else "")
        choices = variants.get(node["name"], [])
        activate = node.get("activate")
        table.add_row(escape(node["name"]), node["type"], escape(calls), escape(", ".join(node["depends_on"])),
                      escape(", ".join(choices)), escape(f"{activate['when']} is {activate['is']}") if activate else "")
    return table


def _variant_targets(desc: dict[str, Any]) -> dict[str, list[str]]:
    """Each node's variants as ``variant_1 → small`` (``*`` marks the default); the endpoints are read from the
    flow's YAML when the description carries it."""
    try:
        raw = (yaml.safe_load(desc.get("yaml") or "") or {}).get("node_variants") or {}
    except yaml.YAMLError:
        raw = {}
    found: dict[str, list[str]] = {}
    for node, info in desc.get("variants", {}).items():
        labels = []
        for vid in info["variants"]:
            label = vid + ("*" if vid == info["default"] else "")
            try:
                inputs = raw[node]["variants"][vid]["node"].get("inputs") or {}
                target = inputs.get("endpoint") or inputs.get("deployment_name")
            except (KeyError, TypeError, AttributeError):
                target = None
            labels.append(f"{label} → {target}" if isinstance(target, str) else label)
        found[node] = labels
    return found


def _print_span(span: dict[str, Any]) -> None:
    """One node of a run, as `flow test` shows it when the node's event arrives."""
    console = out()
    colour = {"ok": "green", "error": "red", "bypassed": "yellow", "cancelled": "yellow"}.get(span["status"], "white")
    head = f"[bold]{escape(span['node'])}[/] [{colour}]{span['status']}[/] [dim]{span['kind']}"
    if span.get("variant"):
        head += f" {escape(span['variant'])}"
    head += "[/]"
    facts = []
    if span.get("endpoint"):
        tier = f" → {span['deployment']}" if span.get("deployment") and span["deployment"] != span["endpoint"] else ""
        what = "index" if span["kind"] == "retrieve" else "endpoint"
        facts.append(f"{what} {escape(span['endpoint'])}{escape(tier)}")
    if span.get("cache"):
        facts.append(f"cache {escape(span['cache'])}")
    tokens = (span.get("prompt_tokens") or 0) + (span.get("completion_tokens") or 0)
    if tokens:
        facts.append(f"{span['prompt_tokens']}+{span['completion_tokens']} tokens")
    if span.get("cost_usd"):
        facts.append(usd(span["cost_usd"]))
    facts.append(f"{ms(span.get('latency_ms'))} ms")
    console.print(f"{head}  {' · '.join(facts)}", soft_wrap=True)
    if span["status"] == "ok" and span.get("output") is not None:
        console.print(f"  [dim]→[/] {escape(_shorten(_value_text(span['output'])))}", soft_wrap=True)
    if span.get("error"):
        console.print(f"  [red]{escape(span['error'])}[/]", soft_wrap=True)


def _print_totals(run_id: str | None, outputs: dict[str, Any] | None, trace: dict[str, Any]) -> None:
    console = out()
    for key, value in (outputs or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        console.print(f"[bold]{escape(key)}[/]: {escape(text)}", soft_wrap=True)
    console.print(f"[dim]run {escape(run_id or trace.get('run_id') or '?')}: {trace.get('prompt_tokens', 0)}+"
                  f"{trace.get('completion_tokens', 0)} tokens, {usd(trace.get('cost_usd'))}, "
                  f"{ms(trace.get('latency_ms'))} ms[/]")


# --- apply ---------------------------------------------------------------------------------


@app.command()
def apply(
    file: Path = typer.Option(..., "--file", "-f", exists=True, help="the flow folder, or its flow.dag.yaml"),
    name: Optional[str] = typer.Option(None, "--name", help="the flow's name (default: the folder's, '_' as '-')"),
    description: str = typer.Option("", "--description", help="what the flow is for"),
    check: bool = typer.Option(False, "--check", help="only check the flow; store nothing"),
) -> None:
    """Create or replace a flow from its folder. The first time, prints the flow's two keys (shown only now)."""
    try:
        folder, dag, files = read_flow_folder(file)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    name = name or default_name(folder)
    if check:
        body = call_api("POST", flow_path(name, "check"), json={"yaml": dag, "files": files})
        out().print(f"flow [bold]{escape(name)}[/] is valid: {len(body['nodes'])} nodes "
                    f"({escape(', '.join(body['nodes']))}); nothing stored")
        _print_warnings(body.get("warnings") or [])
        return
    desc = call_api("PUT", flow_path(name), json={"yaml": dag, "files": files, "description": description})
    console = out()
    console.print(f"flow [bold]{escape(name)}[/] {desc['result']} (version {desc['version']}, "
                  f"{len(files)} file{'s' if len(files) != 1 else ''} besides {FLOW_FILE})")
    console.print(_nodes_table(desc | {"yaml": dag}))
    _print_warnings(desc.get("warnings") or [])
    keys = desc.get("keys") or {}
    if keys:
        err().print("[yellow]The flow's keys are shown only now; store them.[/] (`modelyard keys create NAME "
                    f"--endpoint {escape(name)}` makes another one.)")
        for which in ("primary", "secondary"):
            if which in keys:
                print(f"{which}: {keys[which]}")


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err().print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


# --- test ----------------------------------------------------------------------------------


def stream_run(name: str, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events of a streamed run (``node``, ``delta``, ``done`` or ``error``) as they arrive; `Refused`
    when the run is refused before it starts."""
    try:
        with api_client() as client, client.stream("POST", flow_path(name, "run"), json={**body, "stream": True}) as r:
            if r.status_code >= 400:
                r.read()
                raise Refused.of(r)
            event, data = "message", []
            for line in r.iter_lines():
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
            if data:
                yield event, json.loads("\n".join(data))
    except httpx.ConnectError:
        raise Refused(0, f"cannot reach the modelyard server at {server_url()} — start it with "
                         "`modelyard up`") from None
    except httpx.TimeoutException:
        raise Refused(0, f"the server at {server_url()} did not answer in time") from None


@app.command("test")
def try_flow(
    name: str = typer.Argument(..., help="the flow"),
    inputs: list[str] = typer.Option([], "--input", "-i",
                                     help="KEY=VALUE, one per input (a value is read as JSON when it parses, so "
                                          "n=3 is a number and tags='[\"a\"]' a list; a string input keeps its text)"),
    variants: list[str] = typer.Option([], "--variant", "-v", help="NODE=VARIANT_ID: run this variant of the node"),
    as_json: bool = typer.Option(False, "--json", help="print the run's outputs and trace as JSON"),
) -> None:
    """Run a flow once and print each node as it ends: output, endpoint and tier, cache, tokens, cost, time."""
    desc = call_api("GET", flow_path(name))
    chosen: dict[str, str] = {}
    for value in variants:
        chosen |= parse_variants(value)
    check_variants(chosen, desc)
    body = {"inputs": parse_inputs(inputs, {k: v["type"] for k, v in desc["inputs"].items()}), "variants": chosen}
    if as_json:
        print(json.dumps(call_api("POST", flow_path(name, "run"), json=body), indent=2, ensure_ascii=False))
        return
    try:
        for event, data in stream_run(name, body):
            if event == "node":
                _print_span(data)
            elif event == "done":
                _print_totals(data.get("id"), data.get("outputs"), data["trace"])
            elif event == "error":
                trace = data.get("trace") or {}
                error = data.get("error") or {}
                where = f" (node {trace['failed_node']})" if trace.get("failed_node") else ""
                err().print(f"[red]the run failed{escape(where)}:[/] {escape(error.get('message', ''))}",
                            soft_wrap=True)
                raise typer.Exit(1)
    except Refused as exc:
        raise fail(f"error {exc.status}: {exc.message}" if exc.status else exc.message) from None


# --- list, show, delete, runs ------------------------------------------------------------------


@app.command("list")
def list_flows() -> None:
    """The flows: version, nodes, the endpoints and indexes they call, when they changed."""
    rows = call_api("GET", "/api/flows")["data"]
    table = Table(show_edge=False)
    for col in ("name", "version", "chat", "nodes", "calls", "updated"):
        table.add_column(col, justify="right" if col in ("version", "nodes") else "left", no_wrap=col != "calls")
    for f in rows:
        calls = sorted({n["endpoint"] for n in f["nodes"] if n.get("endpoint")}
                       | {f"index {n['index']}" for n in f["nodes"] if n.get("index")})
        table.add_row(escape(f["name"]), str(f["version"]), "yes" if f["is_chat"] else "", str(len(f["nodes"])),
                      escape(", ".join(calls)), _when(f["updated_at"]))
    out().print(table)


def _when(iso: str) -> str:
    return iso[5:16].replace("T", " ")


@app.command()
def show(name: str = typer.Argument(..., help="the flow")) -> None:
    """A flow's inputs, outputs, nodes (endpoints, what each reads, variants) and warnings."""
    desc = call_api("GET", flow_path(name))
    console = out()
    kind = "chat flow" if desc["is_chat"] else "flow"
    console.print(f"[bold]{escape(name)}[/]: {kind}, version {desc['version']}, updated "
                  f"{desc['updated_at'][:19].replace('T', ' ')}" + (f" — {escape(desc['description'])}"
                                                                    if desc.get("description") else ""))
    inputs = Table(title="inputs", show_edge=False, title_justify="left")
    for col in ("input", "type", "default", "required", "description"):
        inputs.add_column(col, overflow="fold")
    for key, info in desc["inputs"].items():
        role = " (chat input)" if info["is_chat_input"] else " (chat history)" if info["is_chat_history"] else ""
        default = "" if info["default"] is None else json.dumps(info["default"], ensure_ascii=False)
        inputs.add_row(escape(key + role), info["type"], escape(default), "yes" if info["required"] else "",
                       escape(info.get("description") or ""))
    console.print(inputs)
    outputs = Table(title="outputs", show_edge=False, title_justify="left")
    for col in ("output", "type", "reference"):
        outputs.add_column(col, overflow="fold")
    for key, info in desc["outputs"].items():
        outputs.add_row(escape(key + (" (chat output)" if info["is_chat_output"] else "")), info["type"],
                        escape(info["reference"]))
    console.print(outputs)
    table = _nodes_table(desc)
    table.title, table.title_justify = "nodes (* the default variant)", "left"
    console.print(table)
    _print_warnings(desc.get("warnings") or [])


@app.command()
def delete(
    name: str = typer.Argument(..., help="the flow"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Delete a flow and revoke its keys (its runs' usage records stay)."""
    if not yes:
        typer.confirm(f"Delete flow '{name}' and revoke its keys?", abort=True)
    call_api("DELETE", flow_path(name))
    out().print(f"flow {escape(name)} deleted; its keys are revoked")


@app.command()
def runs(
    name: str = typer.Argument(..., help="the flow"),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000, help="how many of the latest runs"),
    run_id: Optional[str] = typer.Option(None, "--id", help="one run: its trace, a row per node"),
) -> None:
    """The flow's latest runs, or one run's trace."""
    if run_id:
        _show_run(call_api("GET", flow_path(name, "runs", run_id)))
        return
    rows = call_api("GET", flow_path(name, "runs"), params={"limit": limit})["data"]
    table = Table(show_edge=False)
    for col in ("run", "started", "HTTP", "tokens", "USD", "ms"):
        table.add_column(col, justify="right" if col in ("tokens", "USD", "ms") else "left", no_wrap=True,
                         min_width=max((len(r["id"]) for r in rows), default=3) if col == "run" else None)
    for r in rows:
        status = str(r["status"]) + (f" {r['error_code']}" if r.get("error_code") else "")
        table.add_row(escape(r["id"]), _when(r["created_at"]),
                      f"[red]{escape(status)}[/]" if r["status"] >= 400 else status,
                      f"{r['prompt_tokens'] + r['completion_tokens']:,}", usd(r["cost_usd"]), ms(r["latency_ms"]))
    out().print(table)


def _show_run(run: dict[str, Any]) -> None:
    """A run's totals, a row per node, then each node's output (shortened) and the run's outputs."""
    trace = run.get("trace") or {}
    if isinstance(trace, str):
        trace = json.loads(trace)
    console = out()
    how = "streamed, " if run.get("stream") else ""
    console.print(f"run [bold]{escape(run['id'])}[/] ({run['created_at'][:19].replace('T', ' ')}): {how}status "
                  f"{run['status']}, {run['prompt_tokens']}+{run['completion_tokens']} tokens, {usd(run['cost_usd'])}, "
                  f"{ms(trace.get('latency_ms') or run.get('latency_ms'))} ms")
    if trace.get("error"):
        where = f" at node {trace['failed_node']}" if trace.get("failed_node") else ""
        console.print(f"[red]failed{escape(where)}:[/] {escape(trace['error'])}", soft_wrap=True)
    spans = trace.get("spans") or []
    cached = any(s.get("cache") for s in spans)
    table = Table(show_edge=False)
    for col in ("node", "kind", "status", "endpoint → deployment", *(("cache",) if cached else ()), "tokens", "USD",
                "ms"):
        table.add_column(col, justify="right" if col in ("tokens", "USD", "ms") else "left",
                         no_wrap=col in ("tokens", "USD", "ms"))
    for s in spans:
        node = escape(s["node"]) + (f" [dim]{escape(s['variant'])}[/]" if s.get("variant") else "")
        target = " → ".join(dict.fromkeys(x for x in (s.get("endpoint"), s.get("deployment")) if x))
        cache = (escape(s.get("cache") or ""),) if cached else ()
        table.add_row(node, s["kind"], s["status"], escape(target), *cache,
                      f"{s['prompt_tokens']}+{s['completion_tokens']}", usd(s["cost_usd"]), ms(s.get("latency_ms")))
    console.print(table)
    for s in spans:
        if s.get("error"):
            console.print(f"[bold]{escape(s['node'])}[/] [red]{escape(s['error'])}[/]", soft_wrap=True)
        elif s.get("output") is not None:
            console.print(f"[bold]{escape(s['node'])}[/] [dim]→[/] {escape(_shorten(_value_text(s['output'])))}",
                          soft_wrap=True)
    for key, value in (trace.get("outputs") or {}).items():
        console.print(f"[bold]output {escape(key)}[/]: {escape(_value_text(value))}", soft_wrap=True)
