"""Chat templates by name, for model files that carry none of their own.

A template turns OpenAI messages into the prompt text a model was trained
on, and names the stop sequences that end the assistant's turn. GGUF files
from the Hub usually embed a Jinja template; the packaged Gemma 3 270M is the
*base* model and embeds none, so its card names ``dialogue``: a plain
transcript with a one-line preamble and one example exchange, which the base
model continues sensibly ("…capital of France?" → "The capital of France is
Paris.") where the instruction-tuned Gemma turn markers make it babble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import invalid
from ..wire import ChatMessage

DIALOGUE_PREAMBLE = "A conversation between a user and a helpful, knowledgeable assistant who answers briefly."
DIALOGUE_EXAMPLE = ("What is the capital of Italy?", "The capital of Italy is Rome.")


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    render: Callable[[list[ChatMessage]], str]
    stop: tuple[str, ...]


def _system_and_turns(messages: list[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    system = [m.text() for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role not in ("system", "developer")]
    return ("\n".join(system) if system else None), turns


def _dialogue(messages: list[ChatMessage]) -> str:
    system, turns = _system_and_turns(messages)
    lines = [system or DIALOGUE_PREAMBLE, ""]
    question, answer = DIALOGUE_EXAMPLE
    lines += [f"User: {question}", f"Assistant: {answer}"]
    for m in turns:
        speaker = "Assistant" if m.role == "assistant" else "User"
        lines.append(f"{speaker}: {m.text().strip()}")
    lines.append("Assistant:")
    return "\n".join(lines)


def _chatml(messages: list[ChatMessage]) -> str:
    parts = [f"<|im_start|>{_role(m)}\n{m.text()}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def _llama3(messages: list[ChatMessage]) -> str:
    parts = [f"<|start_header_id|>{_role(m)}<|end_header_id|>\n\n{m.text().strip()}<|eot_id|>" for m in messages]
    return "".join(parts) + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _phi3(messages: list[ChatMessage]) -> str:
    parts = [f"<|{_role(m)}|>\n{m.text()}<|end|>\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def _gemma(messages: list[ChatMessage]) -> str:
    system, turns = _system_and_turns(messages)
    out = []
    for i, m in enumerate(turns):
        role = "model" if m.role == "assistant" else "user"
        text = m.text()
        if i == 0 and system:
            text = f"{system}\n\n{text}"
        out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    return "".join(out) + "<start_of_turn>model\n"


def _role(m: ChatMessage) -> str:
    return "system" if m.role == "developer" else m.role


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("dialogue", _dialogue, ("\nUser:",)),
        ChatTemplate("chatml", _chatml, ("<|im_end|>",)),
        ChatTemplate("llama3", _llama3, ("<|eot_id|>",)),
        ChatTemplate("phi3", _phi3, ("<|end|>",)),
        ChatTemplate("gemma", _gemma, ("<end_of_turn>",)),
    )
}


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise invalid(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}", param="chat_template") from None
