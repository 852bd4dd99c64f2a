"""``${...}`` references: how a node input, an output or an activate condition names a value.

A value that is *exactly* ``${...}`` is a reference; anything else is a
literal, passed as written (prompt flow does the same: ``"Hi ${inputs.x}"``
is the literal text, not an interpolation)::

    ${inputs.question}          the flow input ``question``
    ${flow.question}            the same (prompt flow's other spelling)
    ${rewrite}                  the output of node ``rewrite``
    ${rewrite.output}           the same
    ${search.output.0.text}     a field path into that output (dict keys, list indexes)

`parse_reference()` reads one; `Reference.resolve()` looks one up in a run's
flow inputs and node outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: A node or input name: letters, digits, ``_`` and ``-``, not starting with a digit or ``-``.
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"
_NAME = re.compile(NAME_PATTERN)
_WHOLE = re.compile(r"^\$\{(.*)\}$", re.DOTALL)
_EMBEDDED = re.compile(r"\$\{[^}]*\}")

#: Prefixes of a flow-input reference (``flow.`` is prompt flow's other spelling of ``inputs.``).
INPUT_PREFIXES = ("inputs", "flow")


class Reference(BaseModel):
    """A parsed ``${...}``: a flow input (``source="inputs"``) or a node's output (``source="node"``).

    ``path`` is the field path after ``.output`` (empty for the whole output);
    for a flow input it is always empty.
    """

    model_config = ConfigDict(frozen=True)

    source: Literal["inputs", "node"]
    name: str
    path: tuple[str, ...] = ()

    @property
    def node(self) -> str | None:
        """The node this reference depends on, or None for a flow input."""
        return self.name if self.source == "node" else None

    def __str__(self) -> str:
        if self.source == "inputs":
            return f"${{inputs.{self.name}}}"
        return "${" + ".".join((self.name, "output", *self.path)) + "}"

    def resolve(self, flow_inputs: Mapping[str, Any], node_outputs: Mapping[str, Any]) -> Any:
        """The value this names in a run; a `KeyError` names the missing piece.

        A field path walks dict keys, list/tuple indexes, then attributes.
        """
        if self.source == "inputs":
            if self.name not in flow_inputs:
                raise KeyError(f"flow input '{self.name}' has no value")
            return flow_inputs[self.name]
        if self.name not in node_outputs:
            raise KeyError(f"node '{self.name}' has no output")
        value = node_outputs[self.name]
        for i, part in enumerate(self.path):
            value = _field(value, part, lambda: ".".join((self.name, "output", *self.path[: i + 1])))
        return value


def _field(value: Any, part: str, where: Any) -> Any:
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
    elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit():
        index = int(part)
        if -len(value) <= index < len(value):
            return value[index]
    elif hasattr(value, part) and not part.startswith("_"):
        return getattr(value, part)
    raise KeyError(f"${{{where()}}}: {type(value).__name__} value has no field '{part}'")


class ReferenceSyntaxError(ValueError):
    """``${...}`` that does not name an input or a node output."""


def is_reference(value: Any) -> bool:
    """Whether ``value`` is written as a reference (a string that is exactly ``${...}``)."""
    return isinstance(value, str) and _WHOLE.match(value.strip()) is not None


def embeds_reference(value: Any) -> bool:
    """Whether a literal string carries ``${...}`` inside other text (which is *not* substituted)."""
    return isinstance(value, str) and not is_reference(value) and _EMBEDDED.search(value) is not None


def parse_reference(text: str) -> Reference:
    """``${inputs.x}`` / ``${flow.x}`` / ``${node}`` / ``${node.output[.field...]}`` as a `Reference`."""
    match = _WHOLE.match(text.strip())
    if match is None:
        raise ReferenceSyntaxError(f"{text!r} is not a reference: write ${{inputs.name}} or ${{node.output}}")
    body = match.group(1).strip()
    parts = body.split(".")
    if not body or any(not p for p in parts):
        raise ReferenceSyntaxError(f"{text!r} is not a valid reference: an empty name")
    head, rest = parts[0], parts[1:]
    if head in INPUT_PREFIXES:
        if not rest:
            raise ReferenceSyntaxError(f"{text!r} names no input: write ${{{head}.<input name>}}")
        if len(rest) > 1:
            raise ReferenceSyntaxError(f"{text!r}: a flow input has no fields; write ${{{head}.{rest[0]}}}")
        _check_name(rest[0], text)
        return Reference(source="inputs", name=rest[0])
    _check_name(head, text)
    if rest and rest[0] != "output":
        raise ReferenceSyntaxError(
            f"{text!r}: a node has only an output; write ${{{head}.output}} or ${{{head}.output.{'.'.join(rest)}}}")
    return Reference(source="node", name=head, path=tuple(rest[1:]))


def _check_name(name: str, text: str) -> None:
    if not _NAME.fullmatch(name):
        raise ReferenceSyntaxError(f"{text!r}: {name!r} is not a valid node or input name")

