"""`modelyard deployment`: the model instances behind an endpoint.

A deployment runs one catalog model on N instances; the endpoint's traffic
split decides how much live traffic it gets::

    modelyard deployment create chat blue --model gemma-3-270m --instances 2 --all-traffic
    modelyard deployment create chat green --model qwen2.5-0.5b-instruct      # 0% until the split changes
    modelyard deployment update chat blue --instances 3                       # no request is dropped
    modelyard deployment logs chat blue
    modelyard deployment delete chat green

Every command calls the running server's management API with the admin key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from ..serving.spec import DeploymentSpec
from .endpoint import api_path, deployments_table, err, instances_table, out, ready_count, state_text
from .remote import call_api
from .specfile import SpecFileError, problem, read_spec_file, spec_errors_exit

app = typer.Typer(name="deployment", help="Deployments: create, scale, show, logs, delete.", no_args_is_help=True)

Instances = typer.Option(None, "--instances", min=1, max=64, help="how many instances to run")
TimeoutMs = typer.Option(None, "--timeout-ms", min=100, help="request timeout in milliseconds")
MaxConcurrent = typer.Option(None, "--max-concurrent", min=1, help="requests one instance works on at once")


def request_settings(timeout_ms: int | None, max_concurrent: int | None) -> dict[str, int]:
    settings: dict[str, int] = {}
    if timeout_ms is not None:
        settings["request_timeout_ms"] = timeout_ms
    if max_concurrent is not None:
        settings["max_concurrent_requests_per_instance"] = max_concurrent
    return settings


def validated_deployment(fields: dict[str, Any]) -> DeploymentSpec:
    """Check the fields as the server will, so a bad name or count fails here with exit 2."""
    try:
        return DeploymentSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        hint = {"endpoint_name": "ENDPOINT", "name": "NAME", "model": "--model", "instance_count": "--instances",
                "request_settings.request_timeout_ms": "--timeout-ms",
                "request_settings.max_concurrent_requests_per_instance": "--max-concurrent"}.get(field, field)
        raise typer.BadParameter(problem(first), param_hint=hint) from None


def print_deployment(desc: dict[str, Any], endpoint: str, traffic: dict[str, int], mirror: dict[str, int]) -> None:
    console = out()
    name = desc["name"]
    console.print(f"[bold]deployment {escape(endpoint)}/{escape(name)}[/]: {escape(desc.get('model') or '-')}, "
                  f"{state_text(desc.get('state'))}, {ready_count(desc)} instances ready")
    console.print(f"  traffic: {traffic.get(name, 0)}%" + (f"   mirror: {mirror[name]}%" if name in mirror else "") +
                  (f"   in flight: {desc['in_flight']}" if "in_flight" in desc else "") +
                  (f"   queued: {desc['queue_length']}" if "queue_length" in desc else ""))
    settings = desc.get("request_settings")
    if settings:
        console.print("  request settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if desc.get("error"):
        console.print(f"  [red]error:[/] {escape(desc['error'])}")
    if desc.get("instances"):
        console.print(instances_table([desc]))


def _endpoint_splits(endpoint: str) -> tuple[dict[str, int], dict[str, int]]:
    desc = call_api("GET", api_path(endpoint))
    return desc.get("traffic") or {}, desc.get("mirror_traffic") or {}


@app.command("create")
def create(
    endpoint: Optional[str] = typer.Argument(None, help="the endpoint it serves"),
    name: Optional[str] = typer.Argument(None, help="deployment name, e.g. blue"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="catalog model id (`modelyard catalog list`)"),
    instances: Optional[int] = Instances,
    all_traffic: bool = typer.Option(False, "--all-traffic", help="send all of the endpoint's live traffic to it"),
    timeout_ms: Optional[int] = TimeoutMs,
    max_concurrent: Optional[int] = MaxConcurrent,
    file: Optional[Path] = typer.Option(None, "--file", "-f", dir_okay=False,
                                        help="a deployment spec file (YAML); ENDPOINT and NAME override its names"),
) -> None:
    """Start a deployment and wait until its instances are ready.

    A new deployment gets no live traffic (unless it is the endpoint's first,
    or --all-traffic): try it with `modelyard invoke ENDPOINT --deployment NAME`.
    """
    fields: dict[str, Any] = {}
    if file is not None:
        with spec_errors_exit():
            docs = read_spec_file(file)
            if len(docs) != 1 or docs[0].kind != "deployment":
                raise SpecFileError(f"{file}: `deployment create -f` takes a file with one deployment; "
                                    "use `modelyard apply -f` for several documents or endpoints")
        fields = docs[0].body()
    else:
        given = (("ENDPOINT", endpoint), ("NAME", name), ("--model", model))
        missing = [hint for hint, value in given if value is None]
        if missing:
            raise typer.BadParameter(f"missing {', '.join(missing)} (or give a spec file with -f)",
                                     param_hint=missing[0])
    if endpoint is not None:
        fields["endpoint_name"] = endpoint
    if name is not None:
        fields["name"] = name
    if model is not None:
        fields["model"] = model
    if instances is not None:
        fields["instance_count"] = instances
    settings = request_settings(timeout_ms, max_concurrent)
    if settings:
        fields["request_settings"] = {**fields.get("request_settings", {}), **settings}
    spec = validated_deployment(fields)
    body = spec.model_dump(mode="json", exclude_unset=True, exclude={"endpoint_name"})
    with out().status(f"starting {spec.instance_count} instance(s) of {escape(spec.model)} for "
                      f"{escape(spec.endpoint_name)}/{escape(spec.name)}…"):
        desc = call_api("POST", api_path(spec.endpoint_name, "deployments"), json=body,
                    params={"all_traffic": "true"} if all_traffic else None)
    out().print(f"[green]created[/] deployment [bold]{escape(spec.endpoint_name)}/{escape(desc['name'])}[/]")
    print_deployment(desc, spec.endpoint_name, *_endpoint_splits(spec.endpoint_name))


@app.command("list")
def list_deployments(endpoint: str = typer.Argument(..., help="endpoint name")) -> None:
    """The endpoint's deployments with their state and share of traffic."""
    desc = call_api("GET", api_path(endpoint))
    if not desc.get("deployments"):
        out().print(f"endpoint {escape(endpoint)} has no deployments yet")
        return
    out().print(deployments_table(desc))


@app.command("show")
def show(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    name: str = typer.Argument(..., help="deployment name"),
) -> None:
    """One deployment: model, state, request settings and every instance."""
    desc = call_api("GET", api_path(endpoint, "deployments", name))
    print_deployment(desc, endpoint, *_endpoint_splits(endpoint))


@app.command("update")
def update(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    name: str = typer.Argument(..., help="deployment name"),
    instances: Optional[int] = Instances,
    timeout_ms: Optional[int] = TimeoutMs,
    max_concurrent: Optional[int] = MaxConcurrent,
) -> None:
    """Scale a deployment or change its request settings; live requests are not dropped."""
    body: dict[str, Any] = {}
    if instances is not None:
        body["instance_count"] = instances
    settings = request_settings(timeout_ms, max_concurrent)
    if not body and not settings:
        raise typer.BadParameter("nothing to change: give --instances, --timeout-ms or --max-concurrent",
                                 param_hint="options")
    if settings:
        # The PATCH replaces request_settings as a whole: keep the fields not given here.
        current = call_api("GET", api_path(endpoint, "deployments", name)).get("request_settings") or {}
        body["request_settings"] = {**current, **settings}
    doing = f"scaling to {instances} instance(s)" if instances is not None else "updating"
    with out().status(f"{doing} {escape(endpoint)}/{escape(name)}…"):
        desc = call_api("PATCH", api_path(endpoint, "deployments", name), json=body)
    out().print(f"[green]updated[/] deployment [bold]{escape(endpoint)}/{escape(desc['name'])}[/]")
    print_deployment(desc, endpoint, *_endpoint_splits(endpoint))


@app.command("delete")
def delete(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    name: str = typer.Argument(..., help="deployment name"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Stop and remove a deployment. One that still gets live traffic is refused: move its traffic first."""
    if not yes:
        typer.confirm(f"Delete deployment {endpoint}/{name} and stop its instances?", abort=True)
    call_api("DELETE", api_path(endpoint, "deployments", name))
    out().print(f"[green]deleted[/] deployment [bold]{escape(endpoint)}/{escape(name)}[/]")


@app.command("logs")
def logs(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    name: str = typer.Argument(..., help="deployment name"),
    lines: int = typer.Option(100, "--lines", "-n", min=1, help="last lines of each instance's log"),
) -> None:
    """The last lines of each instance's log."""
    body = call_api("GET", api_path(endpoint, "deployments", name, "logs"), params={"lines": lines})
    instances = body.get("instances") or {}
    if not instances:
        err().print(f"deployment {escape(endpoint)}/{escape(name)} has no instance logs (hosted, or no instances)")
        return
    console = out()
    for instance, text in instances.items():
        console.rule(escape(instance))
        print(text.rstrip("\n") if text else "(empty)")


def deployment_table(desc: dict[str, Any]) -> Table:
    """One deployment as a table row (for `get deployment -o table`)."""
    table = Table()
    for col in ("name", "model", "state", "instances", "error"):
        table.add_column(col)
    table.add_row(escape(desc["name"]), escape(desc.get("model") or "-"), state_text(desc.get("state")),
                  ready_count(desc), escape(desc.get("error") or ""))
    return table
