"""The catalog: every ModelCard modelyard knows, from three layers of YAML.

`Catalog.load()` reads, in order, each layer overriding the one before by id:

1. the built-in file shipped with the package (`builtin.yaml` beside this module);
2. every ``*.yaml`` / ``*.yml`` in ``MODELYARD_HOME/catalog`` (sorted by name), the
   user's own cards: a card with a built-in id replaces the built-in card;
3. any extra files the caller names (``--catalog FILE`` on the command line).

A catalog file holds a YAML list of cards, or one card as a mapping. A file
that does not validate raises a `ModelyardError` naming the file, the card and
the field, e.g.::

    catalog file /home/me/.modelyard/catalog/mine.yaml, card 'my-model' (entry 1):
    field 'context_length': Input should be greater than or equal to 1 (got 0)

The catalog itself never touches the network or the model files; finding the
weights is `sources.py`'s job.
"""

from __future__ import annotations

import difflib
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ..errors import ModelyardError
from ..settings import Settings
from .card import ModelCard

log = logging.getLogger(__name__)

BUILTIN_FILE = Path(__file__).with_name("builtin.yaml")
"""The catalog file shipped with modelyard."""

CATALOG_SUFFIXES = (".yaml", ".yml")

_SOURCE_TAGS = {"package", "hub", "local", "hosted"}
_CARD = TypeAdapter(ModelCard)


def catalog_file_error(path: Path, message: str, *, param: str | None = None) -> ModelyardError:
    """The error for a catalog file that cannot be used (a 400: the user's input is wrong)."""
    return ModelyardError(f"catalog file {path}: {message}", status=400, param=param, code="invalid_catalog_file")


def _field_name(loc: Iterable[Any]) -> str:
    """A pydantic error location as a dotted field name, without union tags.

    A bad hub source reports ``('source', 'hub', 'repo')``; the user wrote
    ``source.repo``, so the discriminator tag is dropped.
    """
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "source" and parts[1] in _SOURCE_TAGS:
        del parts[1]
    return ".".join(parts)


def _validation_message(exc: ValidationError) -> tuple[str, str]:
    """(field, readable message) for the first error of a ValidationError."""
    first = exc.errors()[0]
    field = _field_name(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "missing":
        return field, f"missing required field '{field}'"
    if kind == "extra_forbidden":
        return field, f"unknown field '{field}' (check the spelling; see `modelyard catalog show gemma-3-270m` for an example card)"
    if kind == "union_tag_invalid":
        return field, f"field '{field}': source type must be one of package, hub, local, hosted"
    value = first.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    more = f"; {len(exc.errors()) - 1} more error(s)" if len(exc.errors()) > 1 else ""
    return field, f"field '{field}': {first.get('msg', 'invalid value')}{shown}{more}"


def load_cards_file(path: Path) -> list[ModelCard]:
    """Read and validate one catalog file.

    Raises `ModelyardError` (status 400, code ``invalid_catalog_file``) naming
    the file, and for a bad card its id, position and field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise catalog_file_error(path, "no such file") from None
    except OSError as exc:
        raise catalog_file_error(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise catalog_file_error(path, f"is not valid YAML{where}: {problem}") from None
    if data is None:
        return []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise catalog_file_error(path, f"must hold a list of model cards, not a {type(data).__name__}")

    cards: list[ModelCard] = []
    seen: set[str] = set()
    for index, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise catalog_file_error(path, f"entry {index} must be a mapping (a model card), not a {type(entry).__name__}")
        label = f"card '{entry['id']}' (entry {index})" if isinstance(entry.get("id"), str) else f"entry {index}"
        try:
            card = _CARD.validate_python(entry)
        except ValidationError as exc:
            field, message = _validation_message(exc)
            raise catalog_file_error(path, f"{label}: {message}", param=field or None) from None
        if card.id in seen:
            raise catalog_file_error(path, f"{label}: the id '{card.id}' appears twice in this file", param="id")
        seen.add(card.id)
        cards.append(card)
    return cards


def user_catalog_files(settings: Settings) -> list[Path]:
    """The user's catalog files in MODELYARD_HOME/catalog, in the order they are applied."""
    folder = settings.catalog_dir
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CATALOG_SUFFIXES)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def format_size(size: int) -> str:
    """``253113024`` -> ``253 MB`` (decimal units, as download sizes are quoted); the inverse of `parse_size`."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def parse_size(text: str | int) -> int:
    """Bytes in a human size: ``500MB`` -> 500_000_000, ``2GiB`` -> 2_147_483_648, ``1024`` -> 1024.

    Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB,
    GiB, TiB) powers of 1024; the ``B`` is optional and case does not matter.
    """
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 500MB, 2GB or 1.5GiB)")
    number, unit = match.groups()
    unit = (unit or "").lower().removesuffix("b")
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit in {text!r} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    return int(float(number) * _UNITS[unit])


class Catalog:
    """The model cards modelyard knows, by id.

    Build one with `Catalog.load(settings)`; tests and other modules may use
    `Catalog(cards)` directly. Iterating yields the cards in catalog order
    (built-in order first, then cards the user added).
    """

    def __init__(self, cards: Iterable[ModelCard] = (), *, settings: Settings | None = None) -> None:
        self.settings = settings
        self._cards: dict[str, ModelCard] = {}
        self._origins: dict[str, Path | None] = {}
        for card in cards:
            self._put(card, None)

    @classmethod
    def load(cls, settings: Settings, extra_files: Iterable[Path] = ()) -> "Catalog":
        """The built-in cards, overridden and extended by the user's files, then by `extra_files`."""
        catalog = cls(settings=settings)
        for path in [BUILTIN_FILE, *user_catalog_files(settings), *map(Path, extra_files)]:
            catalog._merge_file(path)
        log.debug("catalog loaded: %d cards", len(catalog))
        return catalog

    def refresh(self) -> list[str]:
        """Read the user's catalog files again (another gateway sharing MODELYARD_HOME added a card, e.g. a
        fine-tuned model); returns the ids of the cards that are new here."""
        if self.settings is None:
            return []
        fresh = Catalog.load(self.settings)
        new = sorted(set(fresh._cards) - set(self._cards))
        self._cards.update(fresh._cards)
        self._origins.update(fresh._origins)
        return new

    def _put(self, card: ModelCard, origin: Path | None) -> None:
        if card.id in self._cards:
            log.info("catalog: card %r from %s overrides the one from %s", card.id, origin, self._origins[card.id])
        self._cards[card.id] = card
        self._origins[card.id] = origin

    def _merge_file(self, path: Path) -> list[ModelCard]:
        cards = load_cards_file(path)
        for card in cards:
            self._put(card, path)
        return cards

    # --- reading ------------------------------------------------------------

    def get(self, card_id: str) -> ModelCard:
        """The card with this id; a 404 `ModelyardError` (code ``model_not_found``) if there is none."""
        card = self._cards.get(card_id)
        if card is not None:
            return card
        close = difflib.get_close_matches(card_id, list(self._cards), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelyardError(
            f"The model '{card_id}' is not in the catalog.{hint} "
            "Run `modelyard catalog list` to see the models, or add a card with `modelyard catalog add FILE`.",
            status=404,
            param="model",
            code="model_not_found",
        )

    def cards(self) -> list[ModelCard]:
        """Every card, in catalog order."""
        return list(self._cards.values())

    def ids(self) -> list[str]:
        """Every card id, in catalog order."""
        return list(self._cards)

    def origin(self, card_id: str) -> Path | None:
        """The file a card was read from (None for cards passed to the constructor)."""
        self.get(card_id)
        return self._origins[card_id]

    def is_builtin(self, card_id: str) -> bool:
        """Whether the card in force comes from the built-in file (and not a user override)."""
        return self.origin(card_id) == BUILTIN_FILE

    def filter(
        self,
        task: str | None = None,
        format: str | None = None,
        max_size_bytes: int | None = None,
    ) -> list[ModelCard]:
        """The cards that match every given criterion.

        - `task`: the card answers that kind of request (a chat model also
          answers ``completion``);
        - `format`: ``gguf``, ``transformers`` or ``hosted``;
        - `max_size_bytes`: the download is known and at most this big. Cards
          without a size, hosted ones included, are left out: nothing says they fit.
        """
        out = []
        for card in self._cards.values():
            if task is not None and task not in card.tasks:
                continue
            if format is not None and card.format != format:
                continue
            if max_size_bytes is not None and (card.size_bytes is None or card.size_bytes > max_size_bytes):
                continue
            out.append(card)
        return out

    def __iter__(self) -> Iterator[ModelCard]:
        return iter(list(self._cards.values()))

    def __len__(self) -> int:
        return len(self._cards)

    def __contains__(self, card_id: object) -> bool:
        return card_id in self._cards

    # --- writing ------------------------------------------------------------

    def add_file(self, path: Path) -> list[ModelCard]:
        """Validate a user's catalog file and install it into MODELYARD_HOME/catalog.

        The file is checked first (a bad file raises and nothing is copied),
        then copied under its own name (a ``.yaml`` suffix is added when it has
        neither ``.yaml`` nor ``.yml``), replacing an earlier file of that name.
        Its cards take effect in this catalog at once and in every later
        `Catalog.load()`. Returns the cards the file holds.
        """
        if self.settings is None:
            raise ValueError("this catalog has no settings; build it with Catalog.load(settings)")
        source = Path(path).expanduser()
        cards = load_cards_file(source)
        if not cards:
            raise catalog_file_error(source, "holds no model cards")
        folder = self.settings.catalog_dir
        folder.mkdir(parents=True, exist_ok=True)
        name = source.name if source.suffix.lower() in CATALOG_SUFFIXES else f"{source.name}.yaml"
        target = folder / name
        if target.exists() and target.resolve() == source.resolve():
            log.info("catalog: %s is already in %s", source, folder)
        else:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)  # atomic: a concurrent load sees the old file or the new one
            log.info("catalog: installed %s as %s (%d cards)", source, target, len(cards))
        for card in cards:
            self._put(card, target)
        return cards
