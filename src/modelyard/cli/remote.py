"""Commands that talk to a running gateway: chat, invoke, usage, keys.

The server is found through ``MODELYARD_URL`` (default http://127.0.0.1:8400)
and the admin key through ``MODELYARD_ADMIN_KEY`` or ``MODELYARD_HOME/admin.key``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from ..settings import Settings, server_url

console = Console()
keys_app = typer.Typer(help="API keys: list, create and revoke.", no_args_is_help=True)


def admin_key() -> str:
    key = os.environ.get("MODELYARD_ADMIN_KEY")
    if key:
        return key.strip()
    path = Settings.from_env().admin_key_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        console.print(f"[red]No admin key:[/] set MODELYARD_ADMIN_KEY or start the server once (it writes {path}).")
        raise typer.Exit(2) from None


def call_api(method: str, path: str, **kwargs: Any) -> Any:
    """The server's JSON answer to one management request with the admin key; a readable message and exit
    code 1 when the server cannot be reached or refuses."""
    url = server_url().rstrip("/") + path
    try:
        r = httpx.request(method, url, headers={"Authorization": f"Bearer {admin_key()}"}, timeout=600, **kwargs)
    except httpx.ConnectError:
        console.print(f"[red]Cannot reach the modelyard server at {server_url()}[/] — start it with `modelyard up`.")
        raise typer.Exit(1) from None
    except httpx.TimeoutException:
        console.print(f"[red]The server at {server_url()} did not answer in time[/]; `modelyard endpoint show` tells "
                      "whether the change went through.")
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text
        console.print(f"[red]error {r.status_code}:[/] {message}")
        raise typer.Exit(1)
    return r.json()


def _client():
    from openai import OpenAI

    return OpenAI(base_url=server_url().rstrip("/") + "/v1", api_key=admin_key(), max_retries=0)


def invoke(
    endpoint: str = typer.Argument(..., help="endpoint name (the `model` field)"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="the user message"),
    deployment: str = typer.Option(None, "--deployment", "-d",
                                   help="send to this deployment only, whatever the traffic split"),
    max_tokens: int = typer.Option(128, help="most tokens to generate"),
    temperature: float = typer.Option(None, help="sampling temperature"),
) -> None:
    """Send one chat request to an endpoint and print the answer."""
    from openai import APIError

    try:
        reply = _client().chat.completions.create(
            model=endpoint, max_tokens=max_tokens, temperature=temperature,
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"modelyard-deployment": deployment} if deployment else None)
    except APIError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    print(reply.choices[0].message.content)
    if reply.usage:
        console.print(f"[dim]{reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens[/]")


def chat(
    endpoint: str = typer.Argument("default", help="endpoint name"),
    system: str = typer.Option(None, help="a system message"),
    max_tokens: int = typer.Option(256, help="most tokens per answer"),
    temperature: float = typer.Option(None, help="sampling temperature (0: always the likeliest token)"),
) -> None:
    """Chat with an endpoint interactively; answers stream as they are generated. Ctrl-D ends."""
    from openai import APIError

    client = _client()
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    console.print(f"[dim]chatting with {endpoint}; Ctrl-D to end[/]")
    while True:
        try:
            text = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        parts = []
        try:
            stream = client.chat.completions.create(model=endpoint, messages=messages, stream=True, max_tokens=max_tokens,
                                                    temperature=temperature)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    sys.stdout.write(chunk.choices[0].delta.content)
                    sys.stdout.flush()
        except APIError as exc:
            console.print(f"\n[red]error:[/] {exc.message}")
            messages.pop()
            continue
        print()
        messages.append({"role": "assistant", "content": "".join(parts)})


def usage(days: int = typer.Option(30, help="how many days back")) -> None:
    """Requests, tokens and cost by endpoint and day."""
    rows = call_api("GET", "/api/usage", params={"days": days})["data"]
    table = Table(title=f"usage, last {days} days")
    for col in ("day", "endpoint", "requests", "errors", "prompt tokens", "completion tokens", "cost (USD)"):
        table.add_column(col, justify="right" if col not in ("day", "endpoint") else "left")
    for r in rows:
        table.add_row(str(r["day"]), r["endpoint"], str(r["requests"]), str(r["errors"]), str(r["prompt_tokens"]),
                      str(r["completion_tokens"]), f"{r['cost_usd']:.6f}")
    console.print(table)


@keys_app.command("show")
def keys_show() -> None:
    """List the keys (prefixes only; a key is shown once, when created)."""
    rows = call_api("GET", "/api/keys")["data"]
    table = Table()
    for col in ("id", "name", "prefix", "endpoint", "admin", "created", "revoked"):
        table.add_column(col)
    for k in rows:
        table.add_row(str(k["id"]), k["name"], k["prefix"] + "…", k["endpoint"] or "(all)", "yes" if k["is_admin"] else "",
                      (k["created_at"] or "")[:19], "yes" if k["revoked"] else "")
    console.print(table)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="a name to tell the key apart"),
    endpoint: str = typer.Option(None, help="limit the key to one endpoint"),
) -> None:
    """Create an API key and print it once."""
    body = call_api("POST", "/api/keys", json={"name": name, "endpoint": endpoint})
    console.print(f"key [bold]{body['name']}[/] (id {body['id']}); it is shown only now:")
    print(body["key"])


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="the key's id (see `modelyard keys show`)")) -> None:
    """Revoke an API key: it stops working at once (on other gateways sharing the database within seconds)."""
    body = call_api("DELETE", f"/api/keys/{key_id}")
    console.print(f"key [bold]{body['name']}[/] (id {body['id']}) revoked")
