"""Load a ``flow.dag.yaml`` into a checked `Flow`: `load_flow`, `parse_flow`, `variant`, `check_endpoints`.

Loading reads in this order, and stops after a step whose problems would
only cause confusing follow-up errors:

1. the YAML, with the line of every key (`yamltext`): syntax errors and
   keys written twice;
2. the shape (`spec.FlowSpec`): unknown keys, wrong scalar types, missing
   required keys — each with its line and, for a typo, the key it resembles;
3. everything else, collected in one pass: flow inputs (defaults of the
   right type), node names (valid, unique), node variants (each node with
   ``use_variants`` has them, the default id exists), each node and each
   variant (`nodes.compile_node`: references, templates, python functions,
   literals), the outputs' references, chat inputs/outputs, cycles (naming
   the cycle), and — when ``endpoint_exists`` is given — the endpoints.

Problems come back as one `FlowError` holding all of them; things that load
but look unintended (an input no template reads, ``enable_cache``) are
`Flow.warnings`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import FlowError
from .graph import find_cycle
from .model import EmbedNode, Flow, FlowInput, FlowOutput, LLMNode, Node, NodeVariants
from .nodes import FlowContext, compile_node, known_hint
from .references import NAME_PATTERN, Reference, ReferenceSyntaxError, is_reference, parse_reference
from .spec import FlowSpec, NodeSpec, validate_spec
from .values import coerce_value
from .yamltext import YamlList, YamlMap, line_at, load_yaml, plain

#: The file names a flow folder is searched for, in order.
FLOW_FILE_NAMES = ("flow.dag.yaml", "flow.dag.yml")
#: Names a node may not take, because references would read them as flow inputs.
RESERVED_NAMES = frozenset({"inputs", "flow"})

EndpointExists = Callable[[str], bool]

_NAME = re.compile(NAME_PATTERN)


def load_flow(path: str | Path, *, endpoint_exists: EndpointExists | None = None) -> Flow:
    """The flow in ``path``: a flow folder (holding ``flow.dag.yaml``) or the YAML file itself."""
    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in FLOW_FILE_NAMES if (path / n).is_file()), None)
        if found is None:
            raise FlowError(f"folder {path} holds no {FLOW_FILE_NAMES[0]}", source=str(path))
        path = found
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowError("no such file", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError(f"cannot be read ({exc})", source=str(path)) from None
    return parse_flow(text, path.parent, source=str(path), endpoint_exists=endpoint_exists)


def parse_flow(text: str, base_dir: str | Path, *, source: str = "flow.dag.yaml",
               endpoint_exists: EndpointExists | None = None) -> Flow:
    """The flow in ``text``; files it names (templates, python) are read from ``base_dir``.

    ``source`` names the text in messages. ``endpoint_exists``, when given, is
    asked about every endpoint an llm or embed node names literally (in every
    variant); an unknown one is a problem naming the node.
    """
    data = load_yaml(text, source)
    spec = validate_spec(data, source)
    flow = _Loader(spec, data, Path(base_dir), source).load()
    if endpoint_exists is not None:
        check_endpoints(flow, endpoint_exists)
    return flow


def check_endpoints(flow: Flow, endpoint_exists: EndpointExists) -> None:
    """A `FlowError` for every literal endpoint of an llm/embed node (any variant) that does not exist."""
    problems = []
    for node in _all_nodes(flow):
        if not isinstance(node, (LLMNode, EmbedNode)) or not isinstance(node.endpoint, str):
            continue  # an endpoint given by reference is known at run time only
        if not endpoint_exists(node.endpoint):
            field = f"inputs.{node.endpoint_input}"
            problems.append(FlowError(f"endpoint '{node.endpoint}' does not exist", node=node.name,
                                      variant=node.variant, field=field, line=node.lines.get(field, node.line),
                                      source=flow.source))
    if problems:
        raise FlowError.combine(problems)


def variant(flow: Flow, choice: Mapping[str, str]) -> Flow:
    """``flow`` with the given nodes switched to the given variant ids (``{"summarize": "variant_1"}``)."""
    problems = []
    chosen: dict[str, Node] = {}
    for name, variant_id in choice.items():
        variants = flow.variants.get(name)
        if variants is None:
            with_variants = ", ".join(flow.variants) or "none"
            problems.append(FlowError(f"node '{name}' has no variants (nodes with variants: {with_variants})",
                                      node=name, field="variant", source=flow.source))
        elif variant_id not in variants.nodes:
            problems.append(FlowError(f"node '{name}' has no variant '{variant_id}' (variants: "
                                      f"{', '.join(variants.nodes)})", node=name, field="variant",
                                      source=flow.source))
        else:
            chosen[name] = variants.nodes[variant_id]
    if problems:
        raise FlowError.combine(problems)
    nodes = [chosen.get(n.name, n) for n in flow.nodes]
    _check_cycle(nodes, flow.source)
    return flow.model_copy(update={"nodes": nodes})


def _all_nodes(flow: Flow) -> Iterator[Node]:
    """Every node, and every variant of a node with variants."""
    for node in flow.nodes:
        variants = flow.variants.get(node.name)
        yield from (variants.nodes.values() if variants else (node,))


def _check_cycle(nodes: list[Node], source: str) -> None:
    error = _cycle_error(nodes, source)
    if error is not None:
        raise error


def _cycle_error(nodes: list[Node], source: str, variant: tuple[str, str] | None = None) -> FlowError | None:
    deps = {n.name: n.dependencies for n in nodes}
    cycle = find_cycle(deps, [n.name for n in nodes])
    if cycle is None:
        return None
    first = next(n for n in nodes if n.name == cycle[0])
    what = "reads its own output" if len(cycle) == 2 else f"is in a cycle: {' → '.join(cycle)}"
    where = f" with variant '{variant[1]}' of node '{variant[0]}'" if variant else ""
    return FlowError(f"the nodes must form a DAG, but node '{first.name}' {what}{where}",
                     node=first.name, variant=first.variant, line=first.line, source=source)


class _Loader:
    """One pass over a valid `FlowSpec`, recording problems instead of stopping at the first."""

    def __init__(self, spec: FlowSpec, data: YamlMap, base_dir: Path, source: str) -> None:
        self.spec, self.data, self.source = spec, data, source
        self.ctx = FlowContext(source=source, base_dir=base_dir, input_names=set(spec.inputs),
                               node_names={n.name for n in spec.nodes if n.name})

    def problem(self, message: str, *path: Any, node: str | None = None, variant: str | None = None,
                field: str | None = None) -> None:
        self.ctx.problems.append(FlowError(message, node=node, variant=variant, field=field,
                                           line=line_at(self.data, path), source=self.source))

    def load(self) -> Flow:
        spec = self.spec
        if spec.additional_includes:
            self.problem("additional_includes is not supported: copy those files into the flow folder",
                         "additional_includes", field="additional_includes")
        inputs = self._inputs()
        self._node_names()
        variant_specs = self._variant_specs()
        nodes, variants = self._nodes(variant_specs)
        outputs = self._outputs()
        self._chat(inputs, outputs)
        if not self.ctx.problems:
            self._cycles(nodes, variants)
        if self.ctx.problems:
            raise FlowError.combine(self.ctx.problems)
        return Flow(name=spec.name or self.ctx.base_dir.resolve().name, description=spec.description,
                    source=self.source, base_dir=self.ctx.base_dir, inputs=inputs, outputs=outputs, nodes=nodes,
                    variants=variants, environment_variables=plain(spec.environment_variables),
                    warnings=self.ctx.warnings)

    # -- inputs and outputs -----------------------------------------------------

    def _inputs(self) -> dict[str, FlowInput]:
        found: dict[str, FlowInput] = {}
        for name, spec in self.spec.inputs.items():
            where = ("inputs", name)
            if not _NAME.fullmatch(name):
                self.problem(f"'{name}' is not a valid input name (letters, digits, _ and -)", *where,
                             field=f"inputs.{name}")
                continue
            has_default = "default" in spec.model_fields_set and spec.default is not None
            default = plain(spec.default)
            if has_default:
                try:
                    default = coerce_value(default, spec.type)
                except ValueError as exc:
                    self.problem(f"default of a {spec.type} input: {exc}", *where, "default",
                                 field=f"inputs.{name}.default")
                    continue
                if spec.enum is not None and default not in spec.enum:
                    self.problem(f"default {default!r} is not one of the enum values {plain(spec.enum)!r}", *where,
                                 "default", field=f"inputs.{name}.default")
            is_history = bool(spec.is_chat_history) or spec.type == "chat_history"
            if is_history and spec.type not in ("list", "chat_history"):
                self.problem(f"a chat history input is a list, not {spec.type}", *where, "type",
                             field=f"inputs.{name}.type")
            found[name] = FlowInput(name=name, type=spec.type, default=default, has_default=has_default,
                                    description=spec.description, enum=plain(spec.enum),
                                    is_chat_input=spec.is_chat_input, is_chat_history=is_history,
                                    line=line_at(self.data, where))
        return found

    def _outputs(self) -> dict[str, FlowOutput]:
        found: dict[str, FlowOutput] = {}
        for name, spec in self.spec.outputs.items():
            where = ("outputs", name, "reference")
            field = f"outputs.{name}.reference"
            if spec.reference is None:
                self.problem("is required: the ${node.output} this output returns", "outputs", name, field=field)
                continue
            if not is_reference(spec.reference):
                self.problem(f"must be a reference such as ${{node.output}}, got {spec.reference!r}", *where,
                             field=field)
                continue
            try:
                ref = parse_reference(spec.reference)
            except ReferenceSyntaxError as exc:
                self.problem(str(exc), *where, field=field)
                continue
            if not self._reference_exists(ref, where, field):
                continue
            found[name] = FlowOutput(name=name, type=spec.type, reference=ref, description=spec.description,
                                     is_chat_output=spec.is_chat_output, evaluation_only=spec.evaluation_only,
                                     line=line_at(self.data, ("outputs", name)))
        return found

    def _reference_exists(self, ref: Reference, where: tuple[Any, ...], field: str) -> bool:
        if ref.source == "inputs" and ref.name not in self.ctx.input_names:
            hint = known_hint("declared inputs", self.ctx.input_names, ref.name)
            self.problem(f"unknown flow input '{ref.name}' in {ref}{hint}", *where, field=field)
            return False
        if ref.source == "node" and ref.name not in self.ctx.node_names:
            hint = known_hint("nodes", self.ctx.node_names, ref.name)
            self.problem(f"unknown node '{ref.name}' in {ref}{hint}", *where, field=field)
            return False
        return True

    def _chat(self, inputs: dict[str, FlowInput], outputs: dict[str, FlowOutput]) -> None:
        chat_inputs = [i.name for i in inputs.values() if i.is_chat_input]
        chat_outputs = [o.name for o in outputs.values() if o.is_chat_output]
        histories = [i.name for i in inputs.values() if i.is_chat_history]
        for what, names, section in (("chat input", chat_inputs, "inputs"), ("chat output", chat_outputs, "outputs"),
                                     ("chat history", histories, "inputs")):
            if len(names) > 1:
                self.problem(f"a flow has at most one {what}, this one has {', '.join(names)}", section, names[1],
                             field=f"{section}.{names[1]}")
        if chat_inputs and not chat_outputs:
            self.problem(f"a chat flow (input '{chat_inputs[0]}' is_chat_input) needs an output with "
                         "is_chat_output: true", "outputs", field="outputs")
        if chat_outputs and not chat_inputs:
            self.problem(f"output '{chat_outputs[0]}' is_chat_output, but no input is_chat_input", "outputs",
                         chat_outputs[0], field=f"outputs.{chat_outputs[0]}")

    # -- nodes ------------------------------------------------------------------

    def _raw_node(self, index: int) -> YamlMap:
        nodes = self.data["nodes"]
        return nodes[index] if isinstance(nodes, YamlList) else YamlMap()

    def _node_names(self) -> None:
        seen: dict[str, int] = {}
        for i, spec in enumerate(self.spec.nodes):
            where = ("nodes", i, "name")
            if spec.name is None:
                self.problem("is required", "nodes", i, node=f"#{i + 1}", field="name")
            elif not _NAME.fullmatch(spec.name):
                self.problem(f"'{spec.name}' is not a valid node name (letters, digits, _ and -)", *where,
                             node=spec.name, field="name")
            elif spec.name in RESERVED_NAMES:
                self.problem(f"'{spec.name}' is reserved (${{{spec.name}.x}} names a flow input)", *where,
                             node=spec.name, field="name")
            elif spec.name in seen:
                self.problem(f"two nodes are called '{spec.name}' (the first is at line {seen[spec.name]})",
                             *where, node=spec.name, field="name")
            else:
                seen[spec.name] = line_at(self.data, where) or 0
        self.ctx.node_types = {n.name: n.type for n in self.spec.nodes if n.name}
        for name, variants in self.spec.node_variants.items():  # a node with variants has its default's type
            default = variants.variants.get(variants.default_variant_id)
            if default is not None and self.ctx.node_types.get(name) is None:
                self.ctx.node_types[name] = default.node.type

    def _variant_specs(self) -> dict[str, tuple[int, NodeSpec]]:
        """Name → (index, spec) of each node that uses variants; checks node_variants against the nodes."""
        by_name = {n.name: (i, n) for i, n in enumerate(self.spec.nodes) if n.name}
        using = {name: entry for name, entry in by_name.items() if entry[1].use_variants}
        for name, variants in self.spec.node_variants.items():
            where = ("node_variants", name)
            if name not in by_name:
                self.problem(f"node_variants names node '{name}', which the flow does not have", *where, node=name)
            elif name not in using:
                self.problem("has variants in node_variants but does not set use_variants: true", "nodes",
                             by_name[name][0], node=name, field="use_variants")
            elif variants.default_variant_id not in variants.variants:
                self.problem(f"default_variant_id '{variants.default_variant_id}' is not one of its variants "
                             f"({', '.join(variants.variants) or 'none'})", *where, "default_variant_id",
                             node=name, field="default_variant_id")
            for variant_id, entry in variants.variants.items():
                if entry.node.use_variants:
                    self.problem("a variant cannot itself use variants", *where, "variants", variant_id, "node",
                                 "use_variants", node=name, variant=variant_id, field="use_variants")
                if entry.node.name not in (None, name):
                    self.problem(f"a variant's node is named after its node ('{name}'), not '{entry.node.name}'",
                                 *where, "variants", variant_id, "node", "name", node=name, variant=variant_id,
                                 field="name")
        for name, (i, _) in using.items():
            if name not in self.spec.node_variants:
                self.problem("sets use_variants: true but node_variants has no entry for it", "nodes", i,
                             "use_variants", node=name, field="use_variants")
        return using

    def _nodes(self, using: dict[str, tuple[int, NodeSpec]]) -> tuple[list[Node], dict[str, NodeVariants]]:
        nodes: list[Node] = []
        variants: dict[str, NodeVariants] = {}
        for i, spec in enumerate(self.spec.nodes):
            if spec.name is None:
                continue
            if spec.name not in using:
                node = compile_node(self.ctx, spec, self._raw_node(i), spec.name, None)
                if node is not None:
                    nodes.append(node)
                continue
            entry = self.spec.node_variants.get(spec.name)
            if entry is None:
                continue
            compiled: dict[str, Node] = {}
            for variant_id, variant_spec in entry.variants.items():
                raw = self.data["node_variants"][spec.name]["variants"][variant_id]["node"]
                merged, merged_raw = _merge(spec, self._raw_node(i), variant_spec.node, raw)
                node = compile_node(self.ctx, merged, merged_raw, spec.name, variant_id)
                if node is not None:
                    compiled[variant_id] = node
            if entry.default_variant_id in compiled:
                nodes.append(compiled[entry.default_variant_id])
                variants[spec.name] = NodeVariants(
                    default=entry.default_variant_id, nodes=compiled,
                    descriptions={k: v.description for k, v in entry.variants.items() if v.description})
        return nodes, variants

    def _cycles(self, nodes: list[Node], variants: dict[str, NodeVariants]) -> None:
        error = _cycle_error(nodes, self.source)
        if error is not None:
            self.ctx.problems.append(error)
            return
        for name, entry in variants.items():  # each variant on its own; variant() checks a combination
            for variant_id, node in entry.nodes.items():
                if variant_id == entry.default:
                    continue
                swapped = [node if n.name == name else n for n in nodes]
                error = _cycle_error(swapped, self.source, (name, variant_id))
                if error is not None:
                    self.ctx.problems.append(error)


def _merge(base: NodeSpec, base_raw: YamlMap, variant: NodeSpec, variant_raw: YamlMap) -> tuple[NodeSpec, YamlMap]:
    """A variant's node completed from the node it varies: the variant's keys win, whole (inputs are not merged)."""
    keep = base.model_fields_set - {"use_variants", "name"}
    update = {k: getattr(variant, k) for k in variant.model_fields_set - {"name"}}
    merged = base.model_copy(update={**update, "use_variants": False})
    raw = YamlMap({k: v for k, v in base_raw.items() if k in keep} | dict(variant_raw))
    raw.key_lines = {k: v for k, v in base_raw.key_lines.items() if k in keep} | variant_raw.key_lines
    raw.line = variant_raw.line
    return merged, raw
