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
    from . import catalog, remote, up

    app.command()(up.up)
    app.command()(remote.chat)
    app.command()(remote.invoke)
    app.command()(remote.usage)
    app.add_typer(remote.keys_app, name="keys")
    app.add_typer(catalog.app, name="catalog")


_register()


def main() -> None:
    app()
