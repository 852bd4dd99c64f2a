"""One node of the file (`NodeSpec`) to one checked node (`LLMNode`, `PythonNode`, ...).

`compile_node()` applies the Azure mapping (`azure.py`), loads the node's
template or python file, parses its references and converts its literals. It
never raises for a problem in the flow: it records each one on the
`FlowContext` (with the node, the field and the YAML line) and returns None
when the node cannot be built, so one pass reports everything.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .azure import (
    DEFAULT_TOP_K,
    ENDPOINT_INPUTS,
    IGNORED_INPUTS,
    RETRIEVE_ALIASES,
    RETRIEVE_IGNORED,
    index_name_from_mlindex,
    package_tool_kind,
)
from .errors import FlowError
from .model import Activation, EmbedNode, LLMNode, Node, PromptNode, PythonNode, RetrieveNode
from .pysource import PythonTool, inspect_python_tool
from .references import Reference, ReferenceSyntaxError, embeds_reference, is_reference, parse_reference
from .spec import NodeSpec
from .templates import Template, compile_template
from .values import LLM_PARAMS, UNSET, coerce_llm_param, coerce_value
from .yamltext import YamlMap, line_at, plain

#: Stands in for an input whose reference was refused (and reported), so that the input still counts as
#: set and no follow-up problem ("template variable not set") is reported; a node holding it is never built.
_REFUSED = Reference(source="inputs", name="<refused reference>")

#: Python annotations whose literal inputs are converted (prompt flow converts them too).
_ANNOTATION_TYPES = {"int": "int", "float": "double", "bool": "bool"}


@dataclass
class FlowContext:
    """What a node is checked against, and where its problems and warnings go."""

    source: str
    base_dir: Path
    input_names: set[str]
    node_names: set[str]
    #: node name -> its type in the file (for hints about field paths into string outputs)
    node_types: dict[str, str | None] = field(default_factory=dict)
    problems: list[FlowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Site:
    """The node being compiled: its name, variant, raw YAML (for lines) and context."""

    ctx: FlowContext
    name: str
    variant: str | None
    raw: YamlMap

    def line(self, *path: Any) -> int | None:
        return line_at(self.raw, path) or self.raw.line

    def problem(self, message: str, field: str | None = None, *path: Any) -> None:
        """Record a problem at ``field`` (dotted); its line is that of ``path`` if given, else of ``field``."""
        if not path and field:
            path = tuple(field.split("."))
        line = self.line(*path)
        self.ctx.problems.append(FlowError(message, node=self.name, variant=self.variant, field=field,
                                           line=line, source=self.ctx.source))

    def adopt(self, error: FlowError, field: str | None = None) -> None:
        """A problem raised by a helper: give it this node and, unless it names its own file, a YAML line."""
        for p in error.problems:
            p.node, p.variant = self.name, self.variant
            p.field = p.field or field
            if p.source is None:
                p.source = self.ctx.source
                p.line = self.line(*(p.field.split(".") if p.field else ()))
            self.ctx.problems.append(p)

    def warn(self, message: str, *path: Any) -> None:
        who = f"node '{self.name}'" + (f" (variant '{self.variant}')" if self.variant else "")
        self.ctx.warnings.append(f"{self.ctx.source}:{self.line(*path)}: {who}: {message}")


def compile_node(ctx: FlowContext, spec: NodeSpec, raw: YamlMap, name: str, variant: str | None) -> Node | None:
    """The checked node for ``spec``, or None (problems recorded on ``ctx``)."""
    site = _Site(ctx, name, variant, raw)
    before = len(ctx.problems)
    if spec.aggregation or spec.reduce:
        key = "aggregation" if spec.aggregation else "reduce"
        site.problem("aggregation nodes are not supported: prompt flow runs them once over a whole batch "
                     "run, and modelyard runs a flow once per request", key)
    if spec.type is None:
        site.problem("is required (llm, prompt, python, embed or retrieve)", "type")
        return None
    if spec.api is not None and spec.type != "llm":
        site.problem(f"applies to llm nodes only, not to a {spec.type} node", "api")
    lines = {f"inputs.{key}": site.line("inputs", key) for key in spec.inputs}
    if spec.activate is not None:
        lines["activate.when"] = site.line("activate", "when")
    common: dict[str, Any] = {"name": name, "line": raw.line, "variant": variant, "comment": spec.comment,
                              "activate": _activation(site, spec), "ignored": _ignored(site, spec),
                              "lines": lines}
    inputs = _inputs(site, spec.inputs)
    node: Node | None
    if spec.type == "llm":
        node = _llm(site, spec, inputs, common)
    elif spec.type == "prompt":
        node = _prompt(site, spec, inputs, common)
    elif spec.type == "python":
        node = _python(site, spec, inputs, common)
    elif spec.type == "embed":
        node = _no_source(site, spec) and _embed(site, inputs, common, None)
    else:
        node = _no_source(site, spec) and _retrieve(site, inputs, common, None)
    return node if node and len(ctx.problems) == before else None


# -- what every node has ------------------------------------------------------


def _ignored(site: _Site, spec: NodeSpec) -> dict[str, Any]:
    ignored = {k: getattr(spec, k) for k in ("connection", "provider", "module") if getattr(spec, k) is not None}
    if spec.enable_cache:
        ignored["enable_cache"] = True
        site.warn("enable_cache is ignored: llm and embed calls are cached by their endpoint's response cache",
                  "enable_cache")
    return ignored


def _activation(site: _Site, spec: NodeSpec) -> Activation | None:
    if spec.activate is None:
        return None
    when = spec.activate.when
    if not is_reference(when):
        site.problem(f"must be a reference such as ${{node.output}} or ${{inputs.name}}, got {when!r} "
                     "(expressions are not supported: compute the value in a python node)",
                     "activate.when")
        return None
    ref = _reference(site, when, "activate.when")
    return Activation(when=ref, equals=plain(spec.activate.is_)) if ref else None


def _inputs(site: _Site, inputs: dict[str, Any]) -> dict[str, Any]:
    """The node's inputs with references parsed and checked; a bad one is reported and held as `_REFUSED`."""
    parsed: dict[str, Any] = {}
    for key, value in inputs.items():
        where = f"inputs.{key}"
        if is_reference(value):
            parsed[key] = _reference(site, value, where) or _REFUSED
            continue
        if embeds_reference(value):
            site.warn(f"input '{key}' holds ${{...}} inside other text; it is passed literally, not substituted",
                      "inputs", key)
        parsed[key] = plain(value)
    return parsed


def _reference(site: _Site, text: str, where: str) -> Reference | None:
    """``text`` parsed, naming a declared flow input or an existing node; else reported at ``where``."""
    try:
        ref = parse_reference(text)
    except ReferenceSyntaxError as exc:
        site.problem(str(exc), where)
        return None
    ctx = site.ctx
    if ref.source == "inputs" and ref.name not in ctx.input_names:
        hint = known_hint("declared inputs", ctx.input_names, ref.name)
        site.problem(f"unknown flow input '{ref.name}' in {text}{hint}", where)
        return None
    if ref.source == "node" and ref.name not in ctx.node_names:
        site.problem(f"unknown node '{ref.name}' in {text}{known_hint('nodes', ctx.node_names, ref.name)}", where)
        return None
    if ref.path and ctx.node_types.get(ref.name) in ("llm", "prompt"):
        # not an error: prompt flow finds out at run time too, and the engine may parse JSON answers one day
        site.warn(f"{text} reads a field of node '{ref.name}', whose output is a string", *where.split("."))
    return ref


def known_hint(what: str, names: Iterable[str], wrong: str) -> str:
    """`` (did you mean 'x'?); <what>: a, b, c`` — the end of an unknown-name message."""
    names = sorted(names)
    close = difflib.get_close_matches(wrong, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; {what}: {', '.join(names) or 'none'}"


def _no_source(site: _Site, spec: NodeSpec) -> bool:
    if spec.source is not None:
        site.problem(f"a {spec.type} node takes no source; its inputs say what to do", "source")
        return False
    return True


def _file(site: _Site, path: str | None) -> Path | None:
    """A file next to the flow, named by ``source.path``: relative, inside the flow folder, existing."""
    if not path:
        site.problem("is required", "source.path")
        return None
    if Path(path).is_absolute():
        site.problem(f"must be relative to the flow folder, got {path!r}", "source.path")
        return None
    base = site.ctx.base_dir.resolve()
    full = (base / path).resolve()
    if not full.is_relative_to(base):
        site.problem(f"{path!r} is outside the flow folder; copy the file into it", "source.path")
        return None
    if not full.is_file():
        site.problem(f"file '{path}' does not exist in the flow folder ({site.ctx.base_dir})", "source.path")
        return None
    return full


# -- llm and prompt -----------------------------------------------------------


def _template(site: _Site, spec: NodeSpec) -> Template | None:
    source = spec.source
    if source is None:
        site.problem("is required: {type: code, path: <file>.jinja2} or {type: inline, content: ...}", "source")
        return None
    if source.function is not None:
        site.problem("applies to python nodes only", "source.function")
    if source.type == "inline":
        if source.content is None:
            site.problem("is required with source.type inline", "source.content")
            return None
        text, origin = source.content, f"<inline template of node '{site.name}'>"
    elif source.type in ("code", "package_with_prompt"):
        if source.content is not None:
            site.problem("applies to source.type inline only", "source.content")
        full = _file(site, source.path)
        if full is None:
            return None
        try:
            text = full.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            site.problem(f"template '{source.path}' cannot be read ({exc})", "source.path")
            return None
        origin = str(Path(source.path))
    else:
        site.problem(f"a {spec.type} node's template comes from source.type code (a .jinja2 file) or inline, "
                     f"not {source.type}", "source.type")
        return None
    try:
        return compile_template(text, origin)
    except FlowError as exc:
        site.adopt(exc, "source.path" if source.type != "inline" else "source.content")
        return None


def _template_variables(site: _Site, template: Template, variables: dict[str, Any],
                        reserved: frozenset[str] = frozenset()) -> None:
    """Every variable the template reads is an input; warn about inputs it does not read.

    ``reserved`` are an llm node's other inputs (endpoint, request parameters):
    set, but not passed to the template.
    """
    missing = sorted(template.variables - variables.keys() - reserved)
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        site.problem(f"template {template.origin} uses {names}, which the node's inputs do not set", "inputs")
    for name in sorted(template.variables & reserved):
        site.warn(f"template uses '{name}', which is an endpoint or request parameter input and is not passed "
                  "to the template (it renders empty, as in prompt flow)", "inputs", name)
    for name in sorted(variables.keys() - template.variables):
        extra = " and is not a known request parameter" if reserved else ""
        site.warn(f"input '{name}' is not used by template {template.origin}{extra}", "inputs", name)


def _endpoint(site: _Site, inputs: dict[str, Any], keys: tuple[str, ...]) -> tuple[Any, str | None]:
    """The endpoint an llm/embed node names, and the input it came from (see `ENDPOINT_INPUTS`)."""
    if "endpoint" in inputs and "deployment_name" in inputs:
        site.problem("set either inputs.endpoint or inputs.deployment_name, not both", "inputs.deployment_name")
        return None, None
    key = next((k for k in keys if k in inputs), None)
    if key is None:
        site.problem("names no endpoint: set inputs.endpoint (or prompt flow's inputs.deployment_name)", "inputs")
        return None, None
    value = inputs[key]
    if not isinstance(value, Reference) and not (isinstance(value, str) and value.strip()):
        site.problem(f"must be an endpoint name or a reference, got {value!r}", f"inputs.{key}")
        return None, None
    return (value.strip() if isinstance(value, str) else value), key


def _llm(site: _Site, spec: NodeSpec, inputs: dict[str, Any], common: dict[str, Any]) -> LLMNode | None:
    api = spec.api or "chat"
    endpoint, endpoint_key = _endpoint(site, inputs, ENDPOINT_INPUTS)
    template = _template(site, spec)
    params: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    ignored = dict(common.pop("ignored"))
    for key, value in inputs.items():
        if key == endpoint_key or (key in ENDPOINT_INPUTS[:2]):
            continue
        if key in IGNORED_INPUTS:
            ignored[f"inputs.{key}"] = value
        elif key in LLM_PARAMS:
            converted = _llm_param(site, key, value, api)
            if converted is not UNSET:
                params[key] = converted
        else:
            variables[key] = value
    if template is not None:
        _template_variables(site, template, variables, frozenset(inputs) - frozenset(variables))
    if endpoint is None or template is None:
        return None
    return LLMNode(endpoint=endpoint, endpoint_input=endpoint_key, api=api, template=template, params=params,
                   variables=variables, ignored=ignored, **common)


def _llm_param(site: _Site, key: str, value: Any, api: str) -> Any:
    if isinstance(value, Reference):
        return value
    try:
        return coerce_llm_param(key, value, api)
    except ValueError as exc:
        site.problem(f"{key}: {exc}", f"inputs.{key}")
        return UNSET


def _prompt(site: _Site, spec: NodeSpec, inputs: dict[str, Any], common: dict[str, Any]) -> PromptNode | None:
    template = _template(site, spec)
    if template is None:
        return None
    _template_variables(site, template, inputs)
    return PromptNode(template=template, variables=inputs, **common)


# -- python -------------------------------------------------------------------


def _python(site: _Site, spec: NodeSpec, inputs: dict[str, Any], common: dict[str, Any]) -> Node | None:
    source = spec.source
    if source is None:
        site.problem("is required: {type: code, path: <file>.py}", "source")
        return None
    if source.type == "package":
        kind = package_tool_kind(source.tool or "")
        if not source.tool or kind is None:
            site.problem(f"package tool {source.tool!r} is not supported: modelyard runs prompt flow's embedding "
                         "and index_lookup tools itself; for anything else use a python node with source.type "
                         "code", "source.tool")
            return None
        if kind == "embed":
            return _embed(site, inputs, common, source.tool)
        return _retrieve(site, inputs, common, source.tool)
    if source.type != "code":
        site.problem(f"a python node's source.type is code (a .py file) or package, not {source.type}",
                     "source.type")
        return None
    full = _file(site, source.path)
    if full is None:
        return None
    try:
        tool = inspect_python_tool(full, str(Path(source.path or "")), source.function)
    except FlowError as exc:
        site.adopt(exc)
        return None
    args = _python_args(site, tool, inputs)
    return PythonNode(tool=tool, args=args, **common)


def _python_args(site: _Site, tool: PythonTool, inputs: dict[str, Any]) -> dict[str, Any]:
    signature = f"{tool.function}({', '.join(p.name for p in tool.parameters)})"
    args: dict[str, Any] = {}
    for key, value in inputs.items():
        param = tool.parameter(key)
        if param is None and not tool.accepts_kwargs:
            site.problem(f"{tool.origin}: function {signature} has no parameter '{key}'", f"inputs.{key}")
            continue
        annotation = param.annotation if param else None
        kind = _ANNOTATION_TYPES.get(annotation or "")
        if kind and not isinstance(value, Reference) and value is not None:
            try:
                value = coerce_value(value, kind)
            except ValueError as exc:
                site.problem(f"parameter '{key}' of {tool.function} is {annotation}: {exc}", f"inputs.{key}")
                continue
        args[key] = value
    missing = [p.name for p in tool.parameters if p.required and p.name not in inputs]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        site.problem(f"{tool.origin}: function {signature} needs {names}, which the node's inputs do not set",
                     "inputs")
    return args


# -- embed and retrieve ---------------------------------------------------------


def _unknown_inputs(site: _Site, inputs: dict[str, Any], allowed: Iterable[str], what: str) -> None:
    allowed = set(allowed)
    for key in inputs:
        if key not in allowed:
            site.problem(f"unknown input '{key}' for {what}{known_hint('it reads', allowed, key)}", f"inputs.{key}")


def _embed(site: _Site, inputs: dict[str, Any], common: dict[str, Any], tool: str | None) -> EmbedNode | None:
    what = f"the embedding tool {tool}" if tool else "an embed node"
    _unknown_inputs(site, inputs, (*ENDPOINT_INPUTS, "input", *IGNORED_INPUTS), what)
    endpoint, endpoint_key = _endpoint(site, inputs, ENDPOINT_INPUTS)
    if "input" not in inputs:
        site.problem("is required: the text to embed", "inputs.input", "inputs")
    ignored = dict(common.pop("ignored"))
    ignored.update({f"inputs.{k}": inputs[k] for k in IGNORED_INPUTS if k in inputs})
    if endpoint is None or "input" not in inputs:
        return None
    return EmbedNode(endpoint=endpoint, endpoint_input=endpoint_key, input=inputs["input"], package_tool=tool,
                     ignored=ignored, **common)


def _retrieve(site: _Site, inputs: dict[str, Any], common: dict[str, Any], tool: str | None) -> RetrieveNode | None:
    aliases = RETRIEVE_ALIASES if tool else {k: (k,) for k in RETRIEVE_ALIASES}
    ignored_names = RETRIEVE_IGNORED if tool else IGNORED_INPUTS
    what = f"the index lookup tool {tool}" if tool else "a retrieve node"
    _unknown_inputs(site, inputs, (*(a for names in aliases.values() for a in names), *ignored_names), what)
    found: dict[str, Any] = {}
    for target, names in aliases.items():
        key = next((n for n in names if n in inputs), None)
        if key is None:
            continue
        value = inputs[key]
        if key == "mlindex_content":
            value = index_name_from_mlindex(value)
            if value is None:
                site.problem("holds no index name (index.index); set inputs.index to the modelyard index to search",
                             f"inputs.{key}")
                continue
        found[target] = value
    for required in ("index", "query"):
        if required not in found and not any(n in inputs for n in aliases[required]):
            site.problem(f"is required ({' or '.join(aliases[required])})", f"inputs.{required}", "inputs")
    top_k = found.get("top_k", DEFAULT_TOP_K)
    if not isinstance(top_k, Reference):
        try:
            top_k = coerce_value(top_k, "int")
            if top_k < 1:
                raise ValueError(f"expected at least 1, got {top_k}")
        except ValueError as exc:
            site.problem(f"top_k: {exc}", "inputs.top_k")
    ignored = dict(common.pop("ignored"))
    ignored.update({f"inputs.{k}": inputs[k] for k in ignored_names if k in inputs})
    if "index" not in found or "query" not in found:
        return None
    return RetrieveNode(index=found["index"], query=found["query"], top_k=top_k, filter=found.get("filter"),
                        package_tool=tool, ignored=ignored, **common)
