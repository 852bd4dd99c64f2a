"""YAML that remembers its lines.

`load_yaml()` reads a flow file into plain Python values, except that every
mapping is a `YamlMap` and every sequence a `YamlList`: a ``dict``/``list``
that also knows the 1-based line it starts on and the line of each key (or
item). Every later check can then say *where* a problem is, with no second
pass over the node tree. A key written twice in one mapping is an error here
(PyYAML would silently keep the last one).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from .errors import FlowError

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlMap(dict):
    """A mapping read from YAML: ``line`` is where it starts, ``key_lines[key]`` where each key is."""

    line: int = 0
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}

    def line_of(self, key: Any) -> int:
        """The line of ``key``, or of the mapping itself when the key is absent."""
        return self.key_lines.get(key, self.line)


class YamlList(list):
    """A sequence read from YAML: ``line`` is where it starts, ``item_lines[i]`` where each item is."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _Loader(yaml.SafeLoader):
    """SafeLoader building `YamlMap`/`YamlList` (no Python objects, no custom tags)."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            raise _DuplicateKey(key_node.value, line, seen[key_node.value])
        seen[key_node.value] = line
    loader.flatten_mapping(node)  # ``<<: *anchor`` merges come first, explicit keys override them
    data = YamlMap()
    data.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1
    return data


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> YamlList:
    data = YamlList(loader.construct_object(child, deep=True) for child in node.value)
    data.line = node.start_mark.line + 1
    data.item_lines = [child.start_mark.line + 1 for child in node.value]
    return data


_Loader.add_constructor(_MAP_TAG, _construct_map)
_Loader.add_constructor(_SEQ_TAG, _construct_seq)


def load_yaml(text: str, source: str) -> Any:
    """One YAML document with line-aware containers; a syntax error is a `FlowError` naming the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as exc:
        raise FlowError(f"key '{exc.key}' is given twice in one mapping (first on line {exc.first})",
                        line=exc.line, source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        text_ = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        raise FlowError(text_, line=mark.line + 1 if mark is not None else None, source=source) from None


def line_at(data: Any, path: Iterable[Any]) -> int | None:
    """The line of the key or item at ``path`` (a pydantic error location), or of the nearest parent."""
    line = getattr(data, "line", None) or None
    for part in path:
        if isinstance(data, YamlMap) and part in data:
            line, data = data.key_lines.get(part, line), data[part]
        elif isinstance(data, YamlList) and isinstance(part, int) and 0 <= part < len(data):
            line, data = data.item_lines[part], data[part]
        else:
            break
    return line


def plain(value: Any) -> Any:
    """``value`` with every `YamlMap`/`YamlList` inside it turned into a plain ``dict``/``list``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
