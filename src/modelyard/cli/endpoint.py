"""`modelyard endpoint`: endpoints, their traffic split, their keys, and how to call them.

An endpoint is a stable name (the ``model`` a client sends) in front of one
or more deployments; its traffic split says which deployment answers live
requests and its mirror sends a copy of some of them to another::

    modelyard endpoint create chat
    modelyard endpoint update chat --traffic blue=90,green=10
    modelyard endpoint update chat --mirror green=10
    modelyard endpoint keys chat
    modelyard endpoint consume chat

Every command calls the running server's management API with the admin key.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from ..serving.consume import KEY_VARIABLE, snippets
from ..serving.spec import NAME, EndpointSpec
from ..settings import server_url
from .output import err, out  # noqa: F401  (other command groups import them from here)
from .remote import call_api
from .specfile import SpecFileError, problem, read_spec_file, spec_errors_exit

app = typer.Typer(name="endpoint", help="Endpoints: create, list, show, update the traffic split, keys, delete.",
                  no_args_is_help=True)

DEPLOYMENT_HEADER = "modelyard-deployment"


class WhichKey(str, Enum):
    """The --which values of regenerate-key."""

    primary = "primary"
    secondary = "secondary"


def api_path(*parts: str) -> str:
    """``/api/endpoints/chat/deployments/blue`` with each name escaped."""
    return "/api/endpoints" + "".join("/" + quote(p, safe="") for p in parts)


# --- arguments ----------------------------------------------------------------------


def parse_split(value: str, option: str, *, allow_none: bool = False) -> dict[str, int]:
    """``blue=90,green=10`` -> ``{"blue": 90, "green": 10}``; ``none`` -> ``{}`` where allowed.

    Raises `typer.BadParameter` naming ``option`` (the command exits 2 before any request).
    """
    text = value.strip()
    if allow_none and text.lower() == "none":
        return {}
    if not text:
        raise typer.BadParameter("give NAME=PERCENT pairs, e.g. blue=90,green=10", param_hint=option)
    split: dict[str, int] = {}
    for item in text.split(","):
        name, sep, pct = (s.strip() for s in item.partition("="))
        if not sep or not name or not pct:
            raise typer.BadParameter(f"{item.strip()!r} is not NAME=PERCENT (e.g. blue=90)", param_hint=option)
        if not re.match(NAME, name):
            raise typer.BadParameter(f"{name!r} is not a deployment name", param_hint=option)
        if name in split:
            raise typer.BadParameter(f"{name!r} is given twice", param_hint=option)
        try:
            number = int(pct)
        except ValueError:
            raise typer.BadParameter(f"the percent for {name!r} must be a whole number, not {pct!r}",
                                     param_hint=option) from None
        if not 0 <= number <= 100:
            raise typer.BadParameter(f"the percent for {name!r} must be between 0 and 100, not {number}",
                                     param_hint=option)
        split[name] = number
    return split


def parse_traffic(value: str) -> dict[str, int]:
    """A ``--traffic`` value: the percents of live traffic, which add up to 100 (or 0: no live traffic)."""
    split = parse_split(value, "--traffic")
    total = sum(split.values())
    if total not in (0, 100):
        raise typer.BadParameter(f"the percents add up to {total}; live traffic must add up to 100",
                                 param_hint="--traffic")
    return split


def parse_mirror(value: str | None, no_mirror: bool) -> dict[str, int] | None:
    """``--mirror green=10`` / ``--mirror none`` / ``--no-mirror``; None when neither is given."""
    if no_mirror:
        if value is not None and value.strip().lower() != "none":
            raise typer.BadParameter("give either --mirror or --no-mirror", param_hint="--no-mirror")
        return {}
    if value is None:
        return None
    return parse_split(value, "--mirror", allow_none=True)


# --- showing ------------------------------------------------------------------------


def split_text(split: dict[str, int] | None) -> str:
    """``{"blue": 90, "green": 10}`` -> ``blue=90, green=10``; empty -> ``-``."""
    return ", ".join(f"{k}={v}" for k, v in (split or {}).items()) or "-"


def ready_count(dep: dict[str, Any]) -> str:
    """``2/3``: ready instances of the wanted count (hosted deployments have none)."""
    if dep.get("hosted"):
        return "hosted"
    ready = sum(1 for i in dep.get("instances") or [] if i.get("state") == "ready")
    return f"{ready}/{dep.get('instance_count', len(dep.get('instances') or []))}"


def state_text(state: str | None) -> str:
    colour = {"ready": "green", "failed": "red", "starting": "yellow", "scaling": "yellow"}.get(state or "", "")
    return f"[{colour}]{escape(state or '-')}[/]" if colour else escape(state or "-")


def endpoint_state(desc: dict[str, Any]) -> str:
    """One word for the endpoint: ready when every deployment is."""
    deps = desc.get("deployments") or []
    if not deps:
        return "no deployments"
    states = {d.get("state") for d in deps}
    if states == {"ready"}:
        return "ready"
    if "failed" in states:
        return "failed: " + ", ".join(d["name"] for d in deps if d.get("state") == "failed")
    return ", ".join(sorted(s for s in states if s))


def endpoint_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("name", "deployments", "traffic", "mirror", "state"):
        table.add_column(col, no_wrap=col == "name")
    for e in rows:
        deps = ", ".join(f"{d['name']} ({ready_count(d)})" for d in e.get("deployments") or []) or "-"
        table.add_row(escape(e["name"]), escape(deps), split_text(e.get("traffic")),
                      split_text(e.get("mirror_traffic")), state_text(endpoint_state(e)))
    return table


def deployments_table(desc: dict[str, Any]) -> Table:
    """The deployments of one endpoint with their share of traffic."""
    traffic, mirror = desc.get("traffic") or {}, desc.get("mirror_traffic") or {}
    table = Table(title="deployments", title_justify="left")
    for col in ("name", "model", "state", "instances", "traffic", "mirror", "error"):
        table.add_column(col, justify="right" if col in ("instances", "traffic", "mirror") else "left")
    for d in desc.get("deployments") or []:
        table.add_row(escape(d["name"]), escape(d.get("model") or "-"), state_text(d.get("state")), ready_count(d),
                      f"{traffic.get(d['name'], 0)}%", f"{mirror[d['name']]}%" if d["name"] in mirror else "-",
                      escape(d.get("error") or ""))
    return table


def instances_table(deployments: list[dict[str, Any]]) -> Table:
    """Every instance of these deployments: process, port, restarts, requests in flight."""
    table = Table(title="instances", title_justify="left")
    for col in ("deployment", "instance", "state", "port", "pid", "restarts", "in flight", "last error"):
        table.add_column(col, justify="right" if col in ("port", "pid", "restarts", "in flight") else "left")
    for d in deployments:
        for i in d.get("instances") or []:
            table.add_row(escape(d["name"]), escape(i.get("name") or "-"), state_text(i.get("state")),
                          str(i.get("port") or "-"), str(i.get("pid") or "-"), str(i.get("restarts", 0)),
                          str(i.get("in_flight", 0)), escape(i.get("last_error") or ""))
    return table


def print_endpoint(desc: dict[str, Any]) -> None:
    console = out()
    console.print(f"[bold]endpoint {escape(desc['name'])}[/]" +
                  (f" — {escape(desc['description'])}" if desc.get("description") else ""))
    console.print(f"  auth: {escape(str(desc.get('auth_mode', 'key')))}   "
                  f"policy: {escape(str(desc.get('policy', 'split')))}")
    console.print(f"  traffic: {split_text(desc.get('traffic'))}")
    console.print(f"  mirror:  {split_text(desc.get('mirror_traffic'))}")
    console.print(f"  url: {escape(server_url().rstrip('/'))}/v1   model: {escape(desc['name'])}")
    deps = desc.get("deployments") or []
    if not deps:
        console.print("  no deployments yet: [bold]modelyard deployment create "
                      f"{escape(desc['name'])} NAME --model MODEL --all-traffic[/]")
        return
    console.print(deployments_table(desc))
    if any(d.get("instances") for d in deps):
        console.print(instances_table(deps))


def print_new_keys(desc: dict[str, Any]) -> None:
    """The keys of a new endpoint: the server keeps only their hashes, so this is the one time they are seen."""
    keys = desc.get("keys") or {}
    if not keys:
        return
    err().print("[yellow]The endpoint's keys are shown only now; store them.[/] "
                f"(`modelyard endpoint regenerate-key {escape(desc['name'])} --which secondary` makes a new one.)")
    for which in ("primary", "secondary"):
        if which in keys:
            print(f"{which}: {keys[which]}")


# --- commands -----------------------------------------------------------------------


@app.command("create")
def create(
    name: Optional[str] = typer.Argument(None, help="endpoint name: what clients send as `model`"),
    description: Optional[str] = typer.Option(None, "--description", help="a line about what the endpoint is for"),
    traffic: Optional[str] = typer.Option(None, "--traffic", help="live traffic split, e.g. blue=90,green=10"),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="copy this percent of live traffic, e.g. green=10"),
    file: Optional[Path] = typer.Option(None, "--file", "-f", dir_okay=False,
                                        help="an endpoint spec file (YAML); NAME overrides its name"),
) -> None:
    """Create an endpoint and print its two keys (shown only this once)."""
    fields: dict[str, Any] = {}
    if file is not None:
        with spec_errors_exit():
            docs = read_spec_file(file)
            if len(docs) != 1 or docs[0].kind != "endpoint":
                raise SpecFileError(f"{file}: `endpoint create -f` takes a file with one endpoint; "
                                    "use `modelyard apply -f` for several documents or deployments")
        fields = docs[0].body()
    elif name is None:
        raise typer.BadParameter("give the endpoint's NAME or a spec file with -f", param_hint="NAME")
    if name is not None:
        fields["name"] = name
    if description is not None:
        fields["description"] = description
    if traffic is not None:
        fields["traffic"] = parse_traffic(traffic)
    if mirror is not None:
        fields["mirror_traffic"] = parse_split(mirror, "--mirror", allow_none=True)
    spec = validated_endpoint(fields)
    desc = call_api("POST", "/api/endpoints", json=spec.model_dump(mode="json", exclude_unset=True))
    out().print(f"[green]created[/] endpoint [bold]{escape(desc['name'])}[/] "
                f"({escape(server_url().rstrip('/'))}/v1, model \"{escape(desc['name'])}\")")
    print_new_keys(desc)


def validated_endpoint(fields: dict[str, Any]) -> EndpointSpec:
    """Check the fields as the server will, so a bad name fails here with exit 2."""
    try:
        return EndpointSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        hint = {"name": "NAME", "traffic": "--traffic", "mirror_traffic": "--mirror"}.get(field, field)
        raise typer.BadParameter(problem(first), param_hint=hint) from None


@app.command("list")
def list_endpoints() -> None:
    """The endpoints with their deployments, traffic split, mirror and state."""
    rows = call_api("GET", "/api/endpoints")["data"]
    if not rows:
        out().print("no endpoints yet: [bold]modelyard endpoint create NAME[/]")
        return
    out().print(endpoint_table(rows))


@app.command("show")
def show(name: str = typer.Argument(..., help="endpoint name")) -> None:
    """One endpoint: traffic, mirror, deployments and their instances."""
    print_endpoint(call_api("GET", api_path(name)))


@app.command("update")
def update(
    name: str = typer.Argument(..., help="endpoint name"),
    traffic: Optional[str] = typer.Option(None, "--traffic",
                                          help="the new live split, e.g. blue=90,green=10 (adds up to 100)"),
    mirror: Optional[str] = typer.Option(None, "--mirror",
                                         help="copy a percent of live traffic, e.g. green=10; `none` stops it"),
    no_mirror: bool = typer.Option(False, "--no-mirror", help="stop mirroring"),
    description: Optional[str] = typer.Option(None, "--description", help="a new description"),
) -> None:
    """Change the traffic split, the mirror or the description; requests in flight are not dropped."""
    body: dict[str, Any] = {}
    if traffic is not None:
        body["traffic"] = parse_traffic(traffic)
    mirror_split = parse_mirror(mirror, no_mirror)
    if mirror_split is not None:
        body["mirror_traffic"] = mirror_split
    if description is not None:
        body["description"] = description
    if not body:
        raise typer.BadParameter("nothing to change: give --traffic, --mirror, --no-mirror or --description",
                                 param_hint="options")
    desc = call_api("PATCH", api_path(name), json=body)
    out().print(f"[green]updated[/] endpoint [bold]{escape(desc['name'])}[/]: "
                f"traffic {split_text(desc.get('traffic'))}; mirror {split_text(desc.get('mirror_traffic'))}")


@app.command("delete")
def delete(
    name: str = typer.Argument(..., help="endpoint name"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Delete an endpoint, its deployments and its keys."""
    if not yes:
        typer.confirm(f"Delete endpoint {name!r}, its deployments and its keys?", abort=True)
    call_api("DELETE", api_path(name))
    out().print(f"[green]deleted[/] endpoint [bold]{escape(name)}[/]")


@app.command("keys")
def keys(name: str = typer.Argument(..., help="endpoint name")) -> None:
    """The endpoint's two keys, by prefix (a key is shown in full only when it is made)."""
    body = call_api("GET", api_path(name, "keys"))
    table = Table(title=f"keys of {escape(name)}", title_justify="left")
    for col in ("which", "prefix", "created"):
        table.add_column(col)
    for which in ("primary", "secondary"):
        k = body.get(which)
        if k:
            table.add_row(which, escape(k.get("prefix", "")) + "…", escape((k.get("created_at") or "")[:19]))
    out().print(table)
    out().print(f"[dim]a lost key: modelyard endpoint regenerate-key {escape(name)} --which primary|secondary[/]")


@app.command("regenerate-key")
def regenerate_key(
    name: str = typer.Argument(..., help="endpoint name"),
    which: WhichKey = typer.Option(..., "--which", help="the key to replace; the other keeps working"),
) -> None:
    """Replace one of the endpoint's keys and print the new one (shown only now)."""
    body = call_api("POST", api_path(name, "keys", "regenerate"), json={"which": which.value})
    err().print(f"[yellow]New {escape(body.get('which', which.value))} key of {escape(name)}, shown only now;[/] "
                "the old one no longer works:")
    print(body["key"])


@app.command("consume")
def consume(name: str = typer.Argument(..., help="endpoint name")) -> None:
    """How to call the endpoint: Python (openai), curl and JavaScript, with its URL."""
    desc = call_api("GET", api_path(name))
    console = out()
    deployments = [d["name"] for d in desc.get("deployments") or []]
    for snippet in snippets(desc["name"], server_url().rstrip("/") + "/v1"):
        console.rule(f"{snippet['title']} ({snippet['hint']})" if snippet["hint"] else snippet["title"])
        print(snippet["code"])
    console.rule()
    console.print(f"Set {KEY_VARIABLE} to a key of this endpoint (shown once when made; "
                  f"`modelyard endpoint regenerate-key {escape(name)} --which secondary` makes a new one).")
    example = deployments[0] if deployments else "NAME"
    listed = f" (deployments: {escape(', '.join(deployments))})" if deployments else ""
    console.print(f"The header `{DEPLOYMENT_HEADER}: {escape(example)}` sends a request to that deployment only, "
                  f"whatever the traffic split{listed}.")
