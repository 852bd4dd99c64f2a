"""`modelyard apply -f` and `modelyard get`: endpoints and deployments as files.

``get`` writes the spec of what runs; ``apply`` makes the server match a
file, creating or updating, and says ``unchanged`` when it already does — so
the two round-trip::

    modelyard get endpoint chat -o yaml > chat.yml
    modelyard get deployment chat blue -o yaml >> chat.yml   # (after a `---` line)
    modelyard apply -f chat.yml
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import httpx
import typer
from rich.markup import escape

from .deployment import deployment_table
from .endpoint import api_path, endpoint_table, out, print_new_keys
from .remote import call_api, admin_key, server_url
from .specfile import SpecDocument, dump_yaml, read_spec_files, spec_dict, spec_errors_exit, spec_from_description

get_app = typer.Typer(name="get", help="Print an endpoint or deployment spec (yaml/json, for `apply -f`) or a summary.",
                      no_args_is_help=True)

ACTION_STYLE = {"created": "green", "updated": "yellow", "unchanged": "dim"}


class OutputFormat(str, Enum):
    """The -o values of get."""

    yaml = "yaml"
    json = "json"
    table = "table"


Output = typer.Option(OutputFormat.table, "--output", "-o",
                      help="yaml or json: the spec, which `apply -f` reads back; table: name and state")


def apply_order(docs: list[SpecDocument], exists=lambda name: False) -> list[SpecDocument]:
    """Endpoints before deployments (a deployment needs its endpoint); file order otherwise.

    A router endpoint that already exists is applied after the deployments:
    its new tiers may be deployments this same file creates.
    """
    later = [d for d in docs if d.kind == "endpoint" and d.spec.policy == "router" and exists(d.spec.name)]
    first = [d for d in docs if d.kind == "endpoint" and d not in later]
    return first + [d for d in docs if d.kind == "deployment"] + later


def apply(
    file: list[Path] = typer.Option(..., "--file", "-f", dir_okay=False,
                                    help="a spec file (YAML, `---` between documents); repeat for several"),
) -> None:
    """Create or update the endpoints and deployments in spec files; one line per document.

    Every file is checked before anything is sent. Endpoints are applied
    before deployments; a deployment that starts instances is waited for.
    """
    with spec_errors_exit():
        docs = read_spec_files(file)
    docs = apply_order(docs, _endpoint_exists)
    console = out()
    for doc in docs:
        try:
            if doc.kind == "deployment":
                with console.status(f"applying {escape(doc.label)}…"):
                    result = call_api("POST", "/api/apply", json={"kind": doc.kind, "spec": doc.body()})
            else:
                result = call_api("POST", "/api/apply", json={"kind": doc.kind, "spec": doc.body()})
        except typer.Exit:
            console.print(f"[red]stopped at {escape(doc.label)}[/] ({escape(doc.source)}:{doc.line}); "
                          "the documents above it were applied")
            raise
        action = result.get("action", "applied")
        console.print(f"{escape(doc.label)} [{ACTION_STYLE.get(action, 'bold')}]{escape(action)}[/]")
        keys = result.get("keys") or (result.get("description") or {}).get("keys")
        if keys:
            print_new_keys({"name": result.get("name", doc.spec.name), "keys": keys})


def _print_spec(description: dict, kind: str, output: OutputFormat, endpoint_name: str | None = None) -> None:
    if output is OutputFormat.yaml:
        print(dump_yaml(description, kind, endpoint_name), end="")  # type: ignore[arg-type]
    else:
        spec = spec_from_description(description, kind, endpoint_name)  # type: ignore[arg-type]
        print(json.dumps(spec_dict(spec), indent=2))


@get_app.command("endpoint")
def get_endpoint(name: str = typer.Argument(..., help="endpoint name"), output: OutputFormat = Output) -> None:
    """An endpoint's spec (yaml/json) or a one-line summary (table)."""
    desc = call_api("GET", api_path(name))
    if output is OutputFormat.table:
        out().print(endpoint_table([desc]))
    else:
        _print_spec(desc, "endpoint", output)


@get_app.command("deployment")
def get_deployment(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    name: str = typer.Argument(..., help="deployment name"),
    output: OutputFormat = Output,
) -> None:
    """A deployment's spec (yaml/json) or a one-line summary (table)."""
    desc = call_api("GET", api_path(endpoint, "deployments", name))
    if output is OutputFormat.table:
        out().print(deployment_table(desc))
    else:
        _print_spec(desc, "deployment", output, endpoint)


def _endpoint_exists(name: str) -> bool:
    try:
        r = httpx.get(server_url().rstrip("/") + api_path(name), headers={"Authorization": f"Bearer {admin_key()}"},
                      timeout=30)
    except httpx.HTTPError:
        return False
    return r.status_code == 200
