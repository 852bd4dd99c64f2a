"""Base against tuned on the same test prompts, as llama.cpp serves them: exact match and tokens per second.

Each test conversation's last assistant message is the expected answer; the
turns before it are rendered with the card's template and both models
answer greedily (temperature 0, the card's stop sequences). An answer
matches when it equals the expected text after trimming white space — or,
where both are JSON, when they are the same JSON value (so key spacing does
not count). A user metric can replace exact match: a Python function
``metric(expected: str, answer: str) -> float`` named as ``module:function``
(`load_metric`). Tokens per second are decoding speed: the tokens after
the first over the time between the first and the last (reading the prompt
comes before the first token and does not depend on the adapter), so base
and tuned compare fairly even when their answers differ in length.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.templates import get_template
from .data import Example

Metric = Callable[[str, str], float]


def exact_match(expected: str, answer: str) -> float:
    a, b = expected.strip(), answer.strip()
    if a == b:
        return 1.0
    try:
        return float(json.loads(a) == json.loads(b))
    except ValueError:
        return 0.0


def load_metric(spec: str | None) -> Metric:
    """``module:function`` (a file path ``path/to/metric.py:function`` works too), or exact match."""
    if not spec:
        return exact_match
    module, _, name = spec.rpartition(":")
    if not module or not name:
        raise ValueError(f"a metric is named as module:function, not {spec!r}")
    if module.endswith(".py"):
        loaded = importlib.util.spec_from_file_location("modelyard_user_metric", module)
        if loaded is None or loaded.loader is None:
            raise ValueError(f"cannot load {module}")
        mod = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ValueError(f"{spec}: no function {name!r}")
    return fn


@dataclass
class Score:
    model: str
    score: float
    examples: int
    completion_tokens: int
    #: seconds from each answer's first token to its last, and the tokens decoded in them
    seconds: float
    decode_tokens: int = 0
    answers: list[str] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 2)}


def score(model_path: Path, examples: Sequence[Example], *, chat_template: str, stop: Sequence[str],
          adapter: Path | None = None, metric: Metric = exact_match, name: str = "", threads: int | None = None,
          max_tokens: int = 96) -> Score:
    """One model (the base, or the base with an adapter) on every example."""
    from llama_cpp import Llama

    template = get_template(chat_template)
    extra: dict[str, Any] = {"lora_path": str(adapter)} if adapter else {}
    llm = Llama(model_path=str(model_path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False,
                **extra)
    total, tokens, decoded, seconds, answers = 0.0, 0, 0, 0.0, []
    try:
        for ex in examples:
            last = max(i for i, m in enumerate(ex.messages) if m.role == "assistant")
            prompt = template.render(ex.messages[:last])
            parts, t_first, t_last = [], 0.0, 0.0
            for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stop=list(stop),
                                               stream=True):
                choice = chunk["choices"][0]
                if choice.get("finish_reason") is not None or not choice["text"]:
                    continue  # the closing chunk carries no token
                t_last = time.perf_counter()
                t_first = t_first or t_last
                parts.append(choice["text"])
            # decoding speed: the tokens after the first over the time they took (the prompt is read before
            # the first, and its length does not depend on the model)
            tokens += len(parts)
            decoded += max(0, len(parts) - 1)
            seconds += t_last - t_first
            answer = "".join(parts)
            answers.append(answer)
            total += float(metric(ex.messages[last].text(), answer))
    finally:
        llm.close()
    return Score(name or str(model_path), total / max(len(examples), 1), len(examples), tokens, seconds, decoded,
                 answers)
