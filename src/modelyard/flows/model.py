"""The checked flow the engine runs: `Flow`, its inputs and outputs, and one node class per kind.

Everything here has been validated by `dag.py`: references point at declared
inputs and existing nodes, the graph has no cycle, templates compiled, python
functions exist with the right parameters, literals have the right types.
Node input values are either a `Reference` (resolve it in the run) or a
literal (use it as is)::

    for level in flow.levels():                 # lists of nodes that may run concurrently
        for node in level:
            if node.activate and not node.activate.is_met(node.activate.when.resolve(inputs, outputs)):
                ...                             # bypassed (see the package docstring)
            match node:
                case LLMNode():    ...          # node.endpoint, node.template, node.variables, node.params
                case PromptNode(): ...          # node.template.render_text(variables)
                case PythonNode(): ...          # node.tool.path / .function, node.args
                case EmbedNode():  ...          # node.endpoint, node.input
                case RetrieveNode(): ...        # node.index, node.query, node.top_k, node.filter

A node's output is a string for ``llm`` and ``prompt``, a list of floats for
``embed``, a list of hits for ``retrieve`` and whatever the function returns
for ``python``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .graph import levels as graph_levels
from .pysource import PythonTool
from .references import Reference
from .spec import ValueType
from .templates import Template
from .values import bind_inputs


class FlowInput(BaseModel):
    """One declared flow input. ``has_default`` tells an explicit ``default: null`` from none."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: ValueType
    default: Any = None
    has_default: bool = False
    description: str | None = None
    enum: list[Any] | None = None
    is_chat_input: bool = False
    is_chat_history: bool = False
    line: int | None = None


class FlowOutput(BaseModel):
    """One flow output: the value ``reference`` names once the run is done."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: ValueType
    reference: Reference
    description: str | None = None
    is_chat_output: bool = False
    evaluation_only: bool = False
    line: int | None = None


class Activation(BaseModel):
    """``activate``: the node runs only when ``when`` resolves to a value equal to ``equals`` (``is:``)."""

    model_config = ConfigDict(frozen=True)

    when: Reference
    equals: Any

    def is_met(self, value: Any) -> bool:
        return bool(value == self.equals)


class _NodeBase(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    line: int | None = None
    activate: Activation | None = None
    #: the variant this node is (None for a node without variants)
    variant: str | None = None
    #: prompt flow settings accepted and not used (``connection``, ``provider``, ``enable_cache``, ...)
    ignored: dict[str, Any] = Field(default_factory=dict)
    comment: str | None = None
    #: YAML line of each input as written (``inputs.<key>``) and of ``activate.when``, for run-time messages
    lines: dict[str, int] = Field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Every input value of the node by its modelyard name (references and literals)."""
        raise NotImplementedError

    def references(self) -> Iterator[Reference]:
        """The references the node reads: its inputs' and its activate condition's."""
        for value in self.values().values():
            if isinstance(value, Reference):
                yield value
        if self.activate is not None:
            yield self.activate.when

    @property
    def dependencies(self) -> frozenset[str]:
        """The nodes whose output this node needs before it can run (or decide to be bypassed)."""
        return frozenset(r.name for r in self.references() if r.source == "node")


class LLMNode(_NodeBase):
    """A chat or completion request to a modelyard endpoint, its prompt rendered from ``template``.

    ``params`` are request parameters (`values.LLM_PARAMS`; literals already
    converted, references to be converted with `values.coerce_llm_param`);
    ``variables`` are the template's inputs.
    """

    kind: Literal["llm"] = "llm"
    endpoint: Any  # Reference | str
    endpoint_input: str = "endpoint"  # the input that named it (``deployment_name`` in an Azure flow)
    api: Literal["chat", "completion"] = "chat"
    template: Template
    params: dict[str, Any] = Field(default_factory=dict)
    variables: dict[str, Any] = Field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, **self.params, **self.variables}


class PromptNode(_NodeBase):
    """A template rendered to a string; the string is the node's output."""

    kind: Literal["prompt"] = "prompt"
    template: Template
    variables: dict[str, Any] = Field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return dict(self.variables)


class PythonNode(_NodeBase):
    """A call of ``tool.function`` from ``tool.path`` with ``args`` as keyword arguments."""

    kind: Literal["python"] = "python"
    tool: PythonTool
    args: dict[str, Any] = Field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return dict(self.args)


class EmbedNode(_NodeBase):
    """An embeddings request for ``input`` to a modelyard endpoint; the output is the vector.

    ``package_tool`` names the prompt flow tool it was mapped from, if any.
    """

    kind: Literal["embed"] = "embed"
    endpoint: Any  # Reference | str
    endpoint_input: str = "endpoint"  # the input that named it (``deployment_name`` in an Azure flow)
    input: Any
    package_tool: str | None = None

    def values(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "input": self.input}


class RetrieveNode(_NodeBase):
    """A search of a modelyard index: the ``top_k`` hits for ``query``, optionally filtered.

    ``query`` is text (the index embeds it with its own embedder) or a vector
    (a list of floats, e.g. an ``embed`` node's output). ``package_tool``
    names the prompt flow tool it was mapped from, if any.
    """

    kind: Literal["retrieve"] = "retrieve"
    index: Any  # Reference | str
    query: Any
    top_k: Any = 3  # Reference | int
    filter: Any = None
    package_tool: str | None = None

    def values(self) -> dict[str, Any]:
        found = {"index": self.index, "query": self.query, "top_k": self.top_k}
        if self.filter is not None:
            found["filter"] = self.filter
        return found


Node = Annotated[Union[LLMNode, PromptNode, PythonNode, EmbedNode, RetrieveNode], Field(discriminator="kind")]


class NodeVariants(BaseModel):
    """The variants of one node (each a complete node of the same name) and the default one."""

    model_config = ConfigDict(frozen=True)

    default: str
    nodes: dict[str, Node]
    descriptions: dict[str, str] = Field(default_factory=dict)


class Flow(BaseModel):
    """A checked flow. ``nodes`` are in file order, each node with variants as its selected variant
    (the default one, unless `dag.variant()` chose another)."""

    name: str | None = None
    description: str | None = None
    source: str  # the flow file, for messages
    base_dir: Path
    inputs: dict[str, FlowInput] = Field(default_factory=dict)
    outputs: dict[str, FlowOutput] = Field(default_factory=dict)
    nodes: list[Node]
    variants: dict[str, NodeVariants] = Field(default_factory=dict)
    environment_variables: dict[str, Any] = Field(default_factory=dict)
    #: things that load but probably are not what the author meant (``file:line: ...``)
    warnings: list[str] = Field(default_factory=list)

    def node(self, name: str) -> Node:
        """The node called ``name`` (a `KeyError` if there is none)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def dependencies(self) -> dict[str, frozenset[str]]:
        """Node name → the nodes it needs first, for every node (file order)."""
        return {n.name: n.dependencies for n in self.nodes}

    def dependents(self) -> dict[str, frozenset[str]]:
        """Node name → the nodes that read its output."""
        found: dict[str, set[str]] = {n.name: set() for n in self.nodes}
        for node in self.nodes:
            for dep in node.dependencies:
                found[dep].add(node.name)
        return {name: frozenset(names) for name, names in found.items()}

    def levels(self) -> list[list[Node]]:
        """The nodes grouped so that each group reads only earlier groups: a group may run concurrently."""
        by_name = {n.name: n for n in self.nodes}
        return [[by_name[name] for name in level]
                for level in graph_levels(self.dependencies(), list(by_name))]

    def order(self) -> list[Node]:
        """One topological order (the levels, flattened)."""
        return [node for level in self.levels() for node in level]

    def selected_variants(self) -> dict[str, str]:
        """Node name → the variant id it runs, for every node with variants."""
        return {n.name: n.variant for n in self.nodes if n.variant is not None}

    @property
    def chat_input(self) -> str | None:
        """The input that carries the user's message in a chat flow (``is_chat_input``)."""
        return next((i.name for i in self.inputs.values() if i.is_chat_input), None)

    @property
    def chat_history(self) -> str | None:
        """The input that carries earlier turns (``is_chat_history`` or type ``chat_history``)."""
        return next((i.name for i in self.inputs.values() if i.is_chat_history), None)

    @property
    def chat_output(self) -> str | None:
        """The output that is the assistant's reply in a chat flow (``is_chat_output``)."""
        return next((o.name for o in self.outputs.values() if o.is_chat_output), None)

    @property
    def is_chat(self) -> bool:
        return self.chat_input is not None

    def bind_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`values.bind_inputs` for this flow."""
        return bind_inputs(self, given)
