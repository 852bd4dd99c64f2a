"""Where the commands print: rich consoles for stdout and stderr, and errors as one line instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ModelyardError


def out() -> Console:
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Print a modelyard error (or a ValueError) as one line on stderr, naming the field, and exit 1."""
    try:
        yield
    except ModelyardError as exc:
        where = f" ({exc.param})" if exc.param else ""
        err().print(f"[red]error{escape(where)}:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        err().print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
