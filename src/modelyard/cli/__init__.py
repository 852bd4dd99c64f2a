"""The `modelyard` command. Each command group is its own module; all of them
call the core (or the running server's management API) and only print."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="modelyard",
    help="Self-hosted model platform: catalog, OpenAI-compatible endpoints, cost-aware request path.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from . import apply, catalog, deployment, endpoint, metrics, remote, rollout, up

    app.command()(up.up)
    app.command()(remote.chat)
    app.command()(remote.invoke)
    app.command()(remote.usage)
    app.add_typer(remote.keys_app, name="keys")
    app.add_typer(catalog.app, name="catalog")
    app.command()(apply.apply)
    app.add_typer(apply.get_app, name="get")
    app.add_typer(endpoint.app, name="endpoint")
    endpoint.app.command("metrics")(metrics.endpoint_metrics)
    app.add_typer(deployment.app, name="deployment")
    deployment.app.command("rollout")(rollout.rollout)
    app.add_typer(rollout.app, name="rollout")
    from . import batch
    app.add_typer(batch.app, name="batch")
    from . import finetune
    app.add_typer(finetune.app, name="finetune")
    from . import cache
    app.add_typer(cache.app, name="cache")
    from . import router
    app.add_typer(router.app, name="router")
    from . import index
    app.add_typer(index.app, name="index")
    from . import flow, flow_eval
    app.add_typer(flow.app, name="flow")
    flow.app.command("eval")(flow_eval.evaluate)
    from . import router_report
    router.app.command("report")(router_report.report)
    from . import router_calibrate
    router.app.command("calibrate")(router_calibrate.calibrate)


_register()


def main() -> None:
    app()
