"""A chat flow behind the OpenAI chat API: request → flow inputs, run → answer, both ways.

A chat flow (one input ``is_chat_input``, one output ``is_chat_output``) is
answered as ``POST /v1/chat/completions`` with ``model`` naming the flow:

- the **last user message** is the chat input (consecutive user messages are
  joined with a blank line);
- **earlier turns** become the chat history input, in prompt flow's shape:
  ``[{"inputs": {<chat input>: user text}, "outputs": {<chat output>: assistant
  text}}, ...]`` — a user message without an answer gets ``""``;
- **other flow inputs** come from the request's ``metadata`` (strings; the
  flow converts them to the input's type: ``"3"``, ``"true"``, JSON for a
  list or object); metadata keys the flow does not declare are left alone;
- ``system``/``developer``/``tool`` messages and sampling parameters
  (temperature, max_tokens …) are not used: the flow's own prompts and
  nodes set them.

The answer is a ``chat.completion`` whose content is the chat output and
whose ``usage`` sums the tokens of every node; streamed, the chunks of
`chat_chunks` (a role chunk, the deltas, the finish chunk, the usage chunk
when asked). A flow that is not a chat flow is a 400 here: it runs through
``POST /api/flows/<name>/run`` with ``{"inputs": {...}}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..errors import ModelyardError
from ..wire import ChatCompletionRequest, new_id, now, usage
from .engine import FlowEvent, FlowRun, output_text
from .model import Flow

#: Message roles that make up the conversation a chat flow sees.
_TURN_ROLES = ("user", "assistant")


def ensure_chat_flow(flow: Flow, name: str) -> None:
    """A 400 unless ``flow`` is a chat flow (the only kind the chat API can run)."""
    if not flow.is_chat:
        raise ModelyardError(f"flow '{name}' is not a chat flow (no input has is_chat_input: true); run it with "
                             f"POST /api/flows/{name}/run and a body {{\"inputs\": {{...}}}}", status=400,
                             param="model", code="not_a_chat_flow")


def chat_inputs(flow: Flow, request: ChatCompletionRequest, name: str | None = None) -> dict[str, Any]:
    """The flow inputs of one chat request (not yet bound: `FlowEngine.run` checks and converts them)."""
    name = name or flow.name or request.model
    ensure_chat_flow(flow, name)
    turns = [m for m in request.messages if m.role in _TURN_ROLES]
    if not turns or turns[-1].role != "user":
        raise ModelyardError(f"flow '{name}' answers the last message, which must be the user's (role 'user')",
                             status=400, param="messages", code="invalid_value")
    last = len(turns)
    while last > 0 and turns[last - 1].role == "user":
        last -= 1
    chat_input, chat_output = flow.chat_input, flow.chat_output
    assert chat_input is not None and chat_output is not None  # a checked chat flow has both
    inputs: dict[str, Any] = {chat_input: "\n\n".join(m.text() for m in turns[last:])}
    if flow.chat_history is not None:
        inputs[flow.chat_history] = chat_history(turns[:last], chat_input, chat_output)
    for key, value in (request.metadata or {}).items():
        if key in flow.inputs and key not in inputs:
            inputs[key] = value
    return inputs


def chat_history(messages: list[Any], chat_input: str, chat_output: str) -> list[dict[str, Any]]:
    """User and assistant messages as prompt flow's chat history: one turn per user message(s) and answer."""
    history: list[dict[str, Any]] = []
    asked: list[str] = []
    for message in messages:
        if message.role == "user":
            asked.append(message.text())
        elif message.role == "assistant":
            history.append({"inputs": {chat_input: "\n\n".join(asked)}, "outputs": {chat_output: message.text()}})
            asked = []
    if asked:
        history.append({"inputs": {chat_input: "\n\n".join(asked)}, "outputs": {chat_output: ""}})
    return history


def completion_body(flow: Flow, run: FlowRun, *, model: str, response_id: str | None = None) -> dict[str, Any]:
    """The ``chat.completion`` answering a chat request with a finished run."""
    chat_output = flow.chat_output
    text = output_text(run.outputs.get(chat_output)) if chat_output else ""
    trace = run.trace
    return {
        "id": response_id or new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": usage(trace.prompt_tokens, trace.completion_tokens),
    }


async def chat_chunks(events: AsyncIterator[FlowEvent], *, model: str, include_usage: bool = False,
                      response_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """`FlowEngine.run_stream` events as ``chat.completion.chunk`` objects (frame each with `wire.sse`).

    The role chunk goes first, as soon as the run has started (errors before it — bad inputs — come from
    the first ``__anext__``, before anything is sent); a node failing later raises `FlowRunError` from
    the iteration, for the caller to end the stream with an error event.
    """
    base = {"id": response_id or new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(),
            "model": model}
    started = False
    async for kind, value in events:
        if not started:
            started = True
            yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
        if kind == "delta":
            yield {**base, "choices": [{"index": 0, "delta": {"content": value}, "logprobs": None,
                                        "finish_reason": None}]}
        elif kind == "done":
            yield {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
            if include_usage:
                trace = value.trace
                yield {**base, "choices": [], "usage": usage(trace.prompt_tokens, trace.completion_tokens)}
