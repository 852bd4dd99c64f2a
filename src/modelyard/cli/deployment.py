"""`modelyard deployment`: the model instances behind an endpoint.

A deployment runs one catalog model on N instances; the endpoint's traffic
split decides how much live traffic it gets::

    modelyard deployment create chat blue --model gemma-3-270m --instances 2 --all-traffic
    modelyard deployment create chat green --model qwen2.5-0.5b-instruct      # 0% until the split changes
    modelyard deployment update chat blue --instances 3                       # no request is dropped
    modelyard deployment update chat blue --autoscale min=1,max=8,target-in-flight=4
    modelyard deployment events chat blue                                     # scaling and restarts
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

from .. import durations
from ..serving.spec import Autoscale, DeploymentSpec
from .endpoint import api_path, deployments_table, err, instances_table, out, ready_count, state_text
from .remote import call_api
from .specfile import SpecFileError, problem, read_spec_file, spec_errors_exit

app = typer.Typer(name="deployment", help="Deployments: create, scale, show, logs, delete.", no_args_is_help=True)

Instances = typer.Option(None, "--instances", min=1, max=64, help="how many instances to run")
TimeoutMs = typer.Option(None, "--timeout-ms", min=100, help="request timeout in milliseconds")
MaxConcurrent = typer.Option(None, "--max-concurrent", min=1, help="requests one instance works on at once")
AutoscaleOpt = typer.Option(
    None, "--autoscale", metavar="min=N,max=N[,target-in-flight=X,up-delay=10s,down-delay=60s]",
    help="follow the load between min and max instances (target-in-flight: requests in flight and waiting per "
         "instance; delays: how long a change must hold; min=0 scales to zero when idle, the next request "
         "waits for a cold start)")

#: ``--autoscale`` keys and the `Autoscale` fields they set
AUTOSCALE_KEYS = {"min": "min_instances", "max": "max_instances", "target-in-flight": "target_in_flight",
                  "up-delay": "upscale_delay_s", "down-delay": "downscale_delay_s"}


def parse_autoscale(text: str) -> dict[str, Any]:
    """``min=1,max=8,target-in-flight=4,up-delay=10,down-delay=60`` as `Autoscale` fields (delays in seconds,
    or with a unit: ``90s``, ``2m``), checked as the server will; `typer.BadParameter` naming the key otherwise."""
    fields: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise typer.BadParameter(f"{part!r} is not KEY=VALUE (keys: {', '.join(AUTOSCALE_KEYS)})",
                                     param_hint="--autoscale")
        field = AUTOSCALE_KEYS.get(key.replace("_", "-"))
        if field is None:
            raise typer.BadParameter(f"unknown key {key!r}; the keys are {', '.join(AUTOSCALE_KEYS)}",
                                     param_hint="--autoscale")
        try:
            if field.endswith("_delay_s"):
                fields[field] = 0.0 if value.rstrip("s") in ("0", "0.0") else durations.parse_duration(value)
            elif field == "target_in_flight":
                fields[field] = float(value)
            else:
                fields[field] = int(value)
        except ValueError as exc:
            kind = "a whole number" if field.endswith("instances") else \
                "a number of seconds (or 90s, 2m)" if field.endswith("_s") else "a number"
            raise typer.BadParameter(f"{key}={value!r} is not {kind} ({exc})", param_hint="--autoscale") from None
    if "max_instances" not in fields:
        raise typer.BadParameter("give max=N, the most instances to run", param_hint="--autoscale")
    fields.setdefault("min_instances", min(1, fields["max_instances"]))
    try:
        Autoscale.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        key = next((k for k, f in AUTOSCALE_KEYS.items() if f == field), None)
        where = f"{key} ({field}): " if key else ""
        raise typer.BadParameter(where + problem(first), param_hint="--autoscale") from None
    return fields


def autoscale_text(settings: dict[str, Any]) -> str:
    return (f"min={settings['min_instances']} max={settings['max_instances']} "
            f"target-in-flight={settings['target_in_flight']:g} up-delay={settings['upscale_delay_s']:g}s "
            f"down-delay={settings['downscale_delay_s']:g}s")


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
                "request_settings.max_concurrent_requests_per_instance": "--max-concurrent"}.get(
                    field, "--autoscale" if field.startswith("autoscale") else field)
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
    if desc.get("autoscale"):
        console.print(f"  autoscale: {autoscale_text(desc['autoscale'])}   instances now: {len(desc.get('instances') or [])}")
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
    autoscale: Optional[str] = AutoscaleOpt,
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
    if autoscale is not None:
        fields["autoscale"] = parse_autoscale(autoscale)
    spec = validated_deployment(fields)
    body = spec.model_dump(mode="json", exclude_unset=True, exclude={"endpoint_name"})
    starting = min(max(spec.instance_count, spec.autoscale.min_instances, 1), spec.autoscale.max_instances) \
        if spec.autoscale else spec.instance_count
    with out().status(f"starting {starting} instance(s) of {escape(spec.model)} for "
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
    autoscale: Optional[str] = AutoscaleOpt,
    no_autoscale: bool = typer.Option(False, "--no-autoscale", help="stop autoscaling: run --instances (or the "
                                      "deployment's instance_count) instances"),
) -> None:
    """Scale a deployment, turn autoscaling on or off, or change its request settings; live requests are not
    dropped."""
    body: dict[str, Any] = {}
    if instances is not None:
        body["instance_count"] = instances
    if autoscale is not None and no_autoscale:
        raise typer.BadParameter("give --autoscale or --no-autoscale, not both", param_hint="--no-autoscale")
    if autoscale is not None:
        # The whole setting: keys not given take their defaults, not the deployment's current values.
        body["autoscale"] = {**Autoscale(max_instances=1).model_dump(), **parse_autoscale(autoscale)}
    if no_autoscale:
        body["autoscale"] = None
    settings = request_settings(timeout_ms, max_concurrent)
    if not body and not settings:
        raise typer.BadParameter("nothing to change: give --instances, --autoscale, --no-autoscale, --timeout-ms "
                                 "or --max-concurrent", param_hint="options")
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


@app.command("events")
def events(
    endpoint: str = typer.Argument(..., help="endpoint name"),
    name: str = typer.Argument(..., help="deployment name"),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="the latest events to show"),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="only events this recent, e.g. 15m, 1h, 7d"),
) -> None:
    """What happened to the deployment's instances: scaling (from -> to, and why) and restarts, oldest first."""
    params: dict[str, Any] = {"limit": limit}
    if window:
        params["window"] = window
    body = call_api("GET", api_path(endpoint, "deployments", name, "events"), params=params)
    rows = body.get("data") or []
    if not rows:
        out().print(f"deployment {escape(endpoint)}/{escape(name)} has no events yet")
        return
    table = Table()
    for col in ("time", "event", "instances", "reason"):
        table.add_column(col)
    for row in rows:
        counts = f"{row['from']} -> {row['to']}" if row.get("from") is not None else escape(row.get("instance") or "")
        table.add_row(row["time"][:19].replace("T", " "), row["kind"], counts, escape(row.get("reason") or ""))
    out().print(table)


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
