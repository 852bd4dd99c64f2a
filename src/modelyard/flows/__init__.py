"""Prompt flow DAG flows (``flow.dag.yaml``): the file format, read and checked, nothing run.

modelyard runs Azure ML prompt flow *DAG flows* unchanged, each node going
through modelyard's own request path, without the promptflow package. This
package is the first layer: it reads a flow folder into typed, validated
models that the engine and the serving layer build on::

    from modelyard.flows import load_flow, variant

    flow = load_flow("flows/chat", endpoint_exists=lambda name: name in endpoints)
    run_inputs = flow.bind_inputs({"question": "What is a DAG?"})   # defaults, types; a 400 if wrong
    for level in flow.levels():                                       # nodes that may run together
        ...
    tuned = variant(flow, {"summarize": "variant_1"})

Every problem is a `FlowError` naming the node, the field and the line
(``flow.dag.yaml:14: node 'answer': field 'inputs.question': unknown node
'rewrte' ...``); ``FlowError.to_error()`` is the OpenAI-shaped 400
(``code="invalid_flow"``).

The accepted subset
===================

Top level: ``inputs``, ``outputs``, ``nodes``, ``node_variants``,
``environment_variables`` (kept on `Flow` for the engine), ``name``,
``description``; ``$schema`` and ``environment`` are accepted and not used.
``additional_includes`` is refused (copy the files into the flow folder).
Any other key, anywhere in the file, is an error naming the key and its
line.

**inputs.<name>**: ``type`` (string, int, double, bool, list, object,
chat_history), ``default``, ``description``, ``enum``, ``is_chat_input``,
``is_chat_history``. A default must have the input's type (``"3"`` is
accepted for an int, as prompt flow writes it). An input without a default
is required at run time, except a chat history (starts empty).

**outputs.<name>**: ``type``, ``reference`` (``${node.output}``,
``${node.output.field}`` or ``${inputs.x}``), ``description``,
``is_chat_output``, ``evaluation_only``. A chat flow has exactly one
``is_chat_input`` and one ``is_chat_output``.

**nodes[]**: ``name`` (letters, digits, ``_``, ``-``; unique; not
``inputs``/``flow``), ``type``, ``source``, ``inputs``, ``activate``
(``when: ${...}``, ``is: <value>``), ``use_variants``, ``api`` (llm only:
``chat``, the default, or ``completion``), ``connection``, ``provider``,
``module``, ``comment``, ``enable_cache`` (accepted and ignored: llm and
embed calls already go through their endpoint's response cache, which the
operator configures; refusing it would break flows for a hint modelyard
covers elsewhere). ``aggregation`` (and its old name ``reduce``) is refused:
an aggregation node runs once over a whole batch run, and modelyard runs a
flow once per request.

Node types:

- ``llm`` — a chat or completion request to a modelyard **endpoint**
  (``inputs.endpoint``, see the mapping table). Its prompt is a Jinja2
  template: ``source: {type: code, path: x.jinja2}`` (or
  ``package_with_prompt``), or ``source: {type: inline, content: ...}``.
  Inputs named in `values.LLM_PARAMS` (max_tokens, temperature, top_p, stop,
  n, presence_penalty, frequency_penalty, logit_bias, seed, user,
  response_format, logprobs, top_logprobs, echo, suffix, best_of, tools,
  tool_choice, functions, function_call, max_completion_tokens) are request
  parameters: string spellings are converted (``'256'``, ``'0.2'``,
  ``'False'``) and ``''`` means unset. Every other input is a template
  variable; every variable the template reads must be set.
- ``prompt`` — a template rendered to a string (the node's output).
- ``python`` — ``source: {type: code, path: x.py}``; the function is the
  one decorated with ``@tool``, or ``source.function``. The file must exist
  and parse, the function's parameters must take every input, and every
  parameter without a default must be set. Nothing is imported.
  ``source: {type: package, tool: ...}`` is accepted for prompt flow's
  embedding and index-lookup tools only (they become ``embed`` and
  ``retrieve``, see below).
- ``embed`` — ``inputs: {endpoint, input}``: an embeddings request; the
  output is the vector.
- ``retrieve`` — ``inputs: {index, query, top_k (default 3), filter}``: the
  top-k hits of a modelyard index for a text or a vector.

A template or python file is named relative to the flow folder and must stay
inside it.

**References.** A value that is exactly ``${...}`` is a reference:
``${inputs.x}`` or ``${flow.x}`` (a flow input), ``${node}`` or
``${node.output}`` (a node's output), ``${node.output.a.b}`` (a field path:
dict keys, list indexes). Anything else is a literal, including text with
``${...}`` inside it (passed as written, as in prompt flow; a warning says
so). A field path into an llm/prompt/embed output is a warning, not an error
(the engine finds out at run time).

**node_variants.<node>**: ``default_variant_id`` and ``variants: {id: {node:
{...}, description}}``. A variant's node is the node of that name completed
by the variant: the variant's keys replace the node's (``inputs`` as a whole,
not merged). Every variant is checked when the flow loads; the default one
runs unless `variant()` picks another.

The Azure mapping
=================

=============================================  ===============================================
prompt flow (Azure ML)                         modelyard
=============================================  ===============================================
llm ``inputs.deployment_name``                 the endpoint of that name (``inputs.endpoint``
                                               is modelyard's own spelling; not both)
llm ``inputs.model`` (OpenAI provider)         the endpoint, when neither of the above is set;
                                               otherwise a template variable
node ``connection``, ``inputs.connection``     ignored (kept in ``node.ignored``): the
                                               endpoint holds the credentials
node ``provider``, ``module``                  ignored (kept in ``node.ignored``)
python ``promptflow.tools.embedding.embedding``  ``embed``: deployment_name/model → endpoint,
                                               input → input
python tool whose name contains                ``retrieve``: index ← ``index``, the
``index_lookup`` (e.g. ``promptflow_vectordb   ``index.index`` in ``mlindex_content``,
.tool.common_index_lookup.search``)            ``index_name`` or ``path``; query ← ``query``
                                               or ``queries``; ``top_k``; ``query_type``
                                               ignored. Create a modelyard index of that name.
``enable_cache``                               ignored (the endpoint's response cache)
``aggregation`` / ``reduce``                   refused
=============================================  ===============================================

Running a flow
==============

`FlowEngine` runs a checked flow (`engine`): model, embedding and index
steps through a `StepCalls` the gateway implements (`steps`: its router,
cache and budgets apply), python nodes in the flow's `PythonWorker` process
(`python_worker`), every run traced (`trace`: a `Span` per node, the run's
tokens and USD); `chat` maps the OpenAI chat API onto a chat flow. The
rules it follows:

- Each node starts as soon as every node it reads has finished (not level by
  level: `Flow.levels()` only groups nodes that may run together). Each
  node's `dependencies` are the nodes named by its references and its
  ``activate.when``.
- ``activate``: resolve ``when``; the node runs only if it equals ``is``
  (`Activation.is_met`); otherwise it is *bypassed* and its output is None.
  Prompt flow also bypasses a node without ``activate`` whose every
  node dependency was bypassed, and runs a node whose condition is met even
  if its dependencies were bypassed: a python input that reads a bypassed
  node gets the parameter's default when it has one
  (`PythonParameter.required` is False), else None; a flow output that
  reads one is None.
- Resolve references with `Reference.resolve`; convert resolved llm
  parameters with `values.coerce_llm_param`; render chat prompts with
  `render_chat` (a list of `wire.ChatMessage`) and completion/prompt
  templates with `render_text`.
- `check_endpoints` can be run again before each run, as endpoints come and
  go; an endpoint given by reference is only known at run time.
"""

from __future__ import annotations

from .dag import check_endpoints, load_flow, parse_flow, variant
from .engine import FlowEngine, FlowEvent, FlowRun, FlowRunError
from .errors import FlowError
from .graph import find_cycle
from .model import (
    Activation,
    EmbedNode,
    Flow,
    FlowInput,
    FlowOutput,
    LLMNode,
    Node,
    NodeVariants,
    PromptNode,
    PythonNode,
    RetrieveNode,
)
from .pysource import PythonParameter, PythonTool
from .python_worker import PythonNodeError, PythonWorker, PythonWorkerDied
from .references import Reference, parse_reference
from .spec import FlowSpec
from .steps import StepCalls, StepResult, StepStream
from .templates import Template, compile_template, render_chat, render_text, split_chat
from .trace import Span, Trace
from .values import LLM_PARAMS, UNSET, bind_inputs, coerce_llm_param, coerce_value

__all__ = [
    "LLM_PARAMS",
    "UNSET",
    "Activation",
    "EmbedNode",
    "Flow",
    "FlowEngine",
    "FlowError",
    "FlowEvent",
    "FlowInput",
    "FlowOutput",
    "FlowRun",
    "FlowRunError",
    "FlowSpec",
    "LLMNode",
    "Node",
    "NodeVariants",
    "PromptNode",
    "PythonNode",
    "PythonNodeError",
    "PythonParameter",
    "PythonTool",
    "PythonWorker",
    "PythonWorkerDied",
    "Reference",
    "RetrieveNode",
    "Span",
    "StepCalls",
    "StepResult",
    "StepStream",
    "Template",
    "Trace",
    "bind_inputs",
    "check_endpoints",
    "coerce_llm_param",
    "coerce_value",
    "compile_template",
    "find_cycle",
    "load_flow",
    "parse_flow",
    "parse_reference",
    "render_chat",
    "render_text",
    "split_chat",
    "variant",
]
