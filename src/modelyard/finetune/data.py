"""Training data for fine-tuning: OpenAI's chat format, checked line by line, rendered with the card's template.

A training file is JSON Lines, one conversation per line, as OpenAI's chat
fine-tuning takes it::

    {"messages": [{"role": "system", "content": "…"},
                  {"role": "user", "content": "…"},
                  {"role": "assistant", "content": "…", "weight": 1}]}

Every line must be an object with a non-empty ``messages`` list whose roles
are system/developer/user/assistant, whose ``content`` is text, and which has
at least one assistant message; ``weight`` (assistant messages only) is 0 or
1. A file that breaks any of this is refused before training, naming the
line and the field (`validate_file`), as is a file with fewer than
`MIN_EXAMPLES` conversations.

**Rendering.** A conversation becomes one training text the way the served
model will see it: the card's chat template (`backends.templates`) renders
the turns before each trained assistant message, and the message's text
follows with the template's stop sequence — so the tuned model learns to
answer *and* to stop. Only those answer spans carry loss (`encode`); the
prompt, the system text and messages with ``weight: 0`` are context only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..backends.templates import ChatTemplate
from ..errors import ModelyardError
from ..wire import ChatMessage

#: OpenAI's own minimum for a training file
MIN_EXAMPLES = 10
#: a line longer than this is not a conversation a small model is tuned on
MAX_LINE_BYTES = 1 << 20
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One conversation: its messages and which assistant messages are trained (weight 1)."""

    line: int
    messages: list[ChatMessage]
    trained: tuple[bool, ...]


def _bad(param: str, line: int, field: str, why: str, code: str) -> ModelyardError:
    where = f"line {line}" + (f", {field}" if field else "")
    return ModelyardError(f"Invalid {param.replace('_', ' ')}: {where}: {why}.", status=400, param=param, code=code)


def parse_line(raw: bytes, line: int, *, param: str = "training_file") -> Example:
    """One line of a training file, checked; a 400 naming the line and field when it is wrong."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(param, line, "", f"not valid JSON ({exc})", "invalid_json") from None
    if not isinstance(obj, dict):
        raise _bad(param, line, "", "each line must be a JSON object with 'messages'", "invalid_format")
    unknown = sorted(set(obj) - {"messages", "tools", "functions", "parallel_tool_calls"})
    if unknown:
        raise _bad(param, line, unknown[0], "unknown field (a line holds 'messages')", "invalid_format")
    if obj.get("tools") or obj.get("functions"):
        raise _bad(param, line, "tools", "tool-calling examples are not supported for local models yet",
                   "unsupported_format")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad(param, line, "messages", "must be a non-empty list of messages", "invalid_format")
    parsed: list[ChatMessage] = []
    trained: list[bool] = []
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(param, line, field, "must be an object with 'role' and 'content'", "invalid_format")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(param, line, f"{field}.role", f"must be one of {', '.join(ROLES)}, not {role!r}",
                       "invalid_role")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text") or "") for p in content)
        if not isinstance(content, str):
            raise _bad(param, line, f"{field}.content", "must be text", "invalid_content")
        if role == "assistant" and not content.strip():
            raise _bad(param, line, f"{field}.content", "an assistant message must have text", "invalid_content")
        extra = sorted(set(m) - {"role", "content", "weight", "name"})
        if extra:
            raise _bad(param, line, f"{field}.{extra[0]}", "unknown field", "invalid_format")
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
            raise _bad(param, line, f"{field}.weight", "only assistant messages have a weight, and it is 0 or 1",
                       "invalid_weight")
        parsed.append(ChatMessage(role=role, content=content))
        trained.append(role == "assistant" and weight == 1)
    if not any(m.role == "assistant" for m in parsed):
        raise _bad(param, line, "messages", "has no assistant message to learn from", "missing_assistant")
    if not any(trained):
        raise _bad(param, line, "messages", "every assistant message has weight 0: nothing to learn", "no_weight")
    return Example(line, parsed, tuple(trained))


def read_examples(path: Path, *, param: str = "training_file") -> Iterator[Example]:
    """Every conversation in a JSONL file, checked (blank lines are skipped)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise _bad(param, number, "", f"longer than {MAX_LINE_BYTES} bytes", "line_too_long")
            if raw.strip():
                yield parse_line(raw, number, param=param)


def load_examples(path: Path, *, param: str = "training_file", min_examples: int = MIN_EXAMPLES) -> list[Example]:
    """The file's conversations, or a 400: the first bad line, or too few conversations."""
    try:
        examples = list(read_examples(path, param=param))
    except UnicodeDecodeError as exc:
        raise ModelyardError(f"Invalid {param.replace('_', ' ')}: not UTF-8 text ({exc.reason})", param=param,
                             code="invalid_file") from None
    if len(examples) < min_examples:
        raise ModelyardError(
            f"Invalid {param.replace('_', ' ')}: it has {len(examples)} example(s); at least {min_examples} are "
            f"needed", status=400, param=param, code="too_few_examples")
    return examples


def validate_file(path: Path, *, param: str, min_examples: int = MIN_EXAMPLES) -> int:
    """Check a training or validation file; return its number of conversations."""
    return len(load_examples(Path(path), param=param, min_examples=min_examples))


# -- rendering -----------------------------------------------------------------------------


def answer_text(template: ChatTemplate, text: str) -> str:
    """An assistant message as the template writes it after its assistant cue, stop sequence included."""
    stop = template.stop[0] if template.stop else ""
    if template.name == "dialogue":
        return f" {text.strip()}{stop}"
    if template.name in ("llama3", "gemma"):
        return f"{text.strip()}{stop}"
    return f"{text}{stop}"


def render(example: Example, template: ChatTemplate) -> tuple[str, list[tuple[int, int]]]:
    """The training text and the character spans that carry loss (each trained answer with its stop).

    The text is the template's prompt up to the last trained answer, then that answer. An earlier trained
    answer is kept only where the template writes it exactly as `answer_text` does; otherwise that turn is
    context only (no template here differs, but a custom one might)."""
    last = max(i for i, t in enumerate(example.trained) if t)
    prefix = template.render(example.messages[:last])
    answer = answer_text(template, example.messages[last].text())
    text = prefix + answer
    spans: list[tuple[int, int]] = []
    for i in range(last):
        if not example.trained[i]:
            continue
        start = template.render(example.messages[:i])
        piece = answer_text(template, example.messages[i].text())
        if text.startswith(start) and text.startswith(piece, len(start)):
            spans.append((len(start), len(start) + len(piece)))
    spans.append((len(prefix), len(text)))
    return text, spans


@dataclass(frozen=True)
class Encoded:
    """Token ids and, per token, whether it is learned (an answer's token)."""

    ids: list[int]
    learned: list[bool]

    @property
    def n_learned(self) -> int:
        return sum(self.learned)


def encode(tokenizer: Any, example: Example, template: ChatTemplate, max_length: int) -> Encoded | None:
    """Tokenise a rendered conversation (a fast tokenizer's offsets mark the answer tokens), cut to
    ``max_length`` tokens; None when nothing learned is left after the cut."""
    text, spans = render(example, template)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids: list[int] = list(enc["input_ids"])
    learned = []
    for start, end in enc["offset_mapping"]:
        learned.append(end > start and any(s <= start < e for s, e in spans))
    ids, learned = ids[:max_length], learned[:max_length]
    if not any(learned[1:]):
        return None
    return Encoded(ids, learned)
