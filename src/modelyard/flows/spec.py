"""The ``flow.dag.yaml`` file as written: one pydantic model per mapping, unknown keys refused.

These models check the *shape* of the file (which keys, which scalar types);
`dag.py` turns a valid `FlowSpec` into the typed, checked `Flow` the engine
runs. Every model forbids extra keys, so ``tempreature:`` is an error with a
line number (`spec_errors()`), never a silently ignored setting.

Field names are prompt flow's; the few modelyard additions are marked.
"""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import FlowError
from .yamltext import YamlList, YamlMap, line_at

#: The value types of flow inputs and outputs (prompt flow's names).
ValueType = Literal["string", "int", "double", "bool", "list", "object", "chat_history"]
#: The node types modelyard runs.
NodeType = Literal["llm", "prompt", "python", "embed", "retrieve"]
#: Where a node's code or template comes from. ``inline`` is a modelyard addition.
SourceType = Literal["code", "package", "package_with_prompt", "inline"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _empty_to_dict(value: Any) -> Any:
    # ``inputs:`` with nothing after it is YAML null; read it as "no inputs".
    return {} if value is None else value


class InputSpec(_Strict):
    """``inputs.<name>``: one flow input."""

    type: ValueType
    default: Any = None
    description: str | None = None
    enum: list[Any] | None = None
    is_chat_input: bool = False
    is_chat_history: bool | None = None


class OutputSpec(_Strict):
    """``outputs.<name>``: one flow output and the reference that fills it."""

    type: ValueType = "string"
    reference: Any = None
    description: str | None = None
    is_chat_output: bool = False
    evaluation_only: bool = False


class SourceSpec(_Strict):
    """``nodes[].source``: a file next to the flow (``code``), a packaged tool, or inline text."""

    type: SourceType = "code"
    path: str | None = None
    tool: str | None = None
    #: modelyard: the function of a python file to call (default: the one decorated with ``@tool``)
    function: str | None = None
    #: modelyard: the template text itself, with ``type: inline``
    content: str | None = None


class ActivateSpec(_Strict):
    """``nodes[].activate``: run the node only when ``when`` resolves to ``is``."""

    when: Any
    is_: Any = Field(alias="is")


class NodeSpec(_Strict):
    """``nodes[]`` (and ``node_variants.<node>.variants.<id>.node``): one step of the flow."""

    name: str | None = None  # required for nodes; a variant's node takes the name of the node it varies
    type: NodeType | None = None
    source: SourceSpec | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    activate: ActivateSpec | None = None
    use_variants: bool = False
    aggregation: bool = False
    reduce: bool = False  # prompt flow's old name for aggregation
    enable_cache: bool = False
    api: Literal["chat", "completion"] | None = None
    connection: str | None = None
    provider: str | None = None
    module: str | None = None
    comment: str | None = None

    _inputs_default = field_validator("inputs", mode="before")(_empty_to_dict)


class VariantSpec(_Strict):
    """``node_variants.<node>.variants.<id>``."""

    node: NodeSpec
    description: str | None = None


class NodeVariantsSpec(_Strict):
    """``node_variants.<node>``: the variants of one node and which one runs by default."""

    default_variant_id: str
    variants: dict[str, VariantSpec]


class FlowSpec(_Strict):
    """A whole ``flow.dag.yaml``."""

    schema_: str | None = Field(default=None, alias="$schema")
    name: str | None = None
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    nodes: list[NodeSpec] = Field(min_length=1)
    node_variants: dict[str, NodeVariantsSpec] = Field(default_factory=dict)
    #: prompt flow's container image / requirements: accepted, not used (modelyard runs in its own process)
    environment: dict[str, Any] | None = None
    environment_variables: dict[str, Any] = Field(default_factory=dict)
    #: refused with an explanation in dag.py (files from outside the flow folder)
    additional_includes: list[str] | None = None

    _dicts_default = field_validator("inputs", "outputs", "node_variants", "environment_variables",
                                     mode="before")(_empty_to_dict)


def validate_spec(data: Any, source: str) -> FlowSpec:
    """``data`` (from `load_yaml`) as a `FlowSpec`, or a `FlowError` with every shape problem and its line."""
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise FlowError(f"a flow file must be a mapping with inputs, outputs and nodes; this one is {what}",
                        line=getattr(data, "line", None), source=source)
    try:
        return FlowSpec.model_validate(data)
    except ValidationError as exc:
        raise FlowError.combine(_problem(data, err, source) for err in exc.errors()) from None


def _problem(data: YamlMap, err: Any, source: str) -> FlowError:
    loc = tuple(err["loc"])
    node, variant, field = _who(data, loc)
    line = line_at(data, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = sorted(_known_keys(loc[:-1]))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"unknown key '{key}'{hint}; known keys here: {', '.join(known)}"
        field = None if field == key else field.rpartition(".")[0] or None
        return FlowError(message, node=node, variant=variant, field=field, line=line, source=source)
    if kind == "missing":
        return FlowError("is required", node=node, variant=variant, field=field, line=line, source=source)
    message = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    if not isinstance(got, (dict, list)) and repr(got) not in message:
        message += f" (got {got!r})"
    return FlowError(message, node=node, variant=variant, field=field, line=line, source=source)


def _who(data: YamlMap, loc: tuple[Any, ...]) -> tuple[str | None, str | None, str | None]:
    """The node, variant and field a pydantic location points at."""
    node = variant = None
    rest = loc
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        nodes = data.get("nodes")
        item = nodes[loc[1]] if isinstance(nodes, YamlList) and loc[1] < len(nodes) else None
        name = item.get("name") if isinstance(item, dict) else None
        node = str(name) if name is not None else f"#{loc[1] + 1}"
        rest = loc[2:]
    elif len(loc) >= 2 and loc[0] == "node_variants":
        node = str(loc[1])
        if len(loc) >= 4 and loc[2] == "variants":
            variant = str(loc[3])
            rest = loc[5:] if len(loc) >= 5 and loc[4] == "node" else loc[4:]
        else:
            rest = loc[2:]
    field = ".".join(str(p) for p in rest) or None
    return node, variant, field


def _known_keys(loc: tuple[Any, ...]) -> set[str]:
    """The keys the model at ``loc`` accepts (by alias), found by walking FlowSpec's annotations."""
    tp: Any = FlowSpec
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return set()
    model = _model_of(tp)
    if model is None:
        return set()
    return {f.alias or name for name, f in model.model_fields.items()}


def _step(tp: Any, part: Any) -> Any:
    model = _model_of(tp)
    if model is not None:
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    origin = get_origin(tp)
    args = [a for a in get_args(tp) if a is not type(None)]
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    if origin in (Union, UnionType) and len(args) == 1:
        return _step(args[0], part)
    return None


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The model class of ``tp`` or of ``Optional[tp]``; None for anything else."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if get_origin(tp) not in (Union, UnionType):
        return None
    args = [a for a in get_args(tp) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None
