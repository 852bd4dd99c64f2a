"""``modelyard up``: start the gateway with the default endpoints."""

from __future__ import annotations

import logging
import time

import typer
from rich.console import Console

from ..settings import DEFAULT_PORT, Settings

console = Console()


def up(
    host: str = typer.Option(None, help="address to listen on (default 127.0.0.1, or MODELYARD_HOST)"),
    port: int = typer.Option(None, help=f"port (default {DEFAULT_PORT}, or MODELYARD_PORT)"),
    defaults: bool = typer.Option(True, "--defaults/--no-defaults", help="create the `default` and `embed` endpoints if missing"),
    log_level: str = typer.Option("info", help="log level"),
) -> None:
    """Start the gateway and its endpoints (default: Gemma 3 270M as `default`, all-MiniLM-L6-v2 as `embed`)."""
    import uvicorn

    from ..server.app import FastPath, create_app
    from ..server.state import Gateway

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env()
    host = host or settings.host
    port = port or settings.port
    t0 = time.monotonic()
    gateway = Gateway.open(settings)
    def announce() -> None:
        console.print(f"[green]ready[/] in {time.monotonic() - t0:.1f}s: "
                      + ", ".join(e.name for e in gateway.endpoints.all()))

    app = create_app(settings, defaults=defaults, gateway=gateway, on_ready=announce)
    url = f"http://{host}:{port}"
    _banner(url, gateway.admin_key if gateway.admin_key_created else None, settings)


    # No proxy-header rewriting: the gateway binds to 127.0.0.1 by default, and it costs every request.
    uvicorn.run(FastPath(app), host=host, port=port, log_level="warning", access_log=False, loop="uvloop", http="httptools",
                proxy_headers=False, timeout_graceful_shutdown=10)


def _banner(url: str, new_admin_key: str | None, settings: Settings) -> None:
    console.print(f"[bold]modelyard[/] gateway on [cyan]{url}[/]  (OpenAI base URL: {url}/v1)")
    if new_admin_key:
        console.print(f"admin key (shown once; kept in {settings.admin_key_file}): [bold yellow]{new_admin_key}[/]")
    else:
        console.print(f"admin key: in {settings.admin_key_file}")
    key = "$(cat " + str(settings.admin_key_file) + ")"
    console.print("\nTry it from another shell:\n", style="dim")
    console.print(
        f"curl {url}/v1/chat/completions -H \"Authorization: Bearer {key}\" \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        "  -d '{\"model\": \"default\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'\n",
        markup=False, highlight=False, soft_wrap=True)
    console.print(
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{url}/v1\", api_key=open(\"{settings.admin_key_file}\").read().strip())\n"
        "reply = client.chat.completions.create(model=\"default\", messages=[{\"role\": \"user\", \"content\": \"Hi!\"}])\n"
        "print(reply.choices[0].message.content)\n",
        markup=False, highlight=False, soft_wrap=True)
    console.print("A flow that answers questions about modelyard from its README: examples/ask-docs/README.md",
                  style="dim")
