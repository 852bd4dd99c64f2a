"""The OpenAI-compatible API, driven by the official `openai` client against a
real gateway serving the embedded Gemma 3 270M and all-MiniLM-L6-v2."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

pytestmark = pytest.mark.model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_from_the_local_model(server):
    raw = server.openai().chat.completions.with_raw_response.create(
        model="default", messages=QUESTION, temperature=0, max_tokens=30)
    reply = raw.parse()
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "gemma-3-270m"
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens <= 30
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    headers = raw.headers
    assert headers["x-modelyard-endpoint"] == "default"
    assert headers["x-modelyard-deployment"] == "gemma-3-270m"
    assert headers["x-modelyard-route"] == "split:gemma-3-270m"
    assert headers["x-modelyard-cache"] == "off"
    assert float(headers["x-modelyard-cost-usd"]) > 0
    assert float(headers["x-modelyard-overhead-ms"]) >= 0


def test_streaming_chat_sends_chunks_then_usage_when_asked(server):
    stream = server.openai().chat.completions.create(
        model="default", messages=QUESTION, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "Paris" in "".join(content)
    assert len(content) > 3, "the answer arrives in several chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_streaming_without_include_usage_has_no_usage_chunk(server):
    stream = server.openai().chat.completions.create(
        model="default", messages=QUESTION, temperature=0, max_tokens=10, stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_sse_wire_format_ends_with_done(server):
    with httpx.stream("POST", server.base_url + "/chat/completions",
                      headers={"Authorization": f"Bearer {server.admin_key}"},
                      json={"model": "default", "messages": QUESTION, "max_tokens": 5, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_completions_continue_the_prompt(server):
    reply = server.openai().completions.create(model="default", prompt="Monday, Tuesday, Wednesday, Thursday,", max_tokens=5,
                                               temperature=0)
    assert reply.object == "text_completion"
    assert "Friday" in reply.choices[0].text
    assert reply.usage.completion_tokens == 5 or reply.choices[0].finish_reason == "stop"


def test_max_tokens_cuts_the_answer_with_finish_reason_length(server):
    reply = server.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
        max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4


def test_logprobs_are_reported_per_token(server):
    reply = server.openai().chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=8,
                                                    logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens or len(entries) >= 1
    for e in entries:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert math.isclose(e.logprob, tops[0], abs_tol=1e-6), "greedy decoding picks the most likely token"


def test_same_seed_same_answer(server):
    client = server.openai()
    ask = dict(model="default", messages=[{"role": "user", "content": "Write a sentence about the sea."}],
               temperature=1.0, max_tokens=20, seed=1234)
    first = client.chat.completions.create(**ask).choices[0].message.content
    second = client.chat.completions.create(**ask).choices[0].message.content
    assert first == second


def test_embeddings_from_minilm(server):
    reply = server.openai().embeddings.create(
        model="embed", input=["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell today."])
    vectors = [d.embedding for d in reply.data]
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 - vectors are normalised
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2
    assert reply.usage.prompt_tokens > 10


def test_models_lists_the_endpoints(server):
    ids = {m.id for m in server.openai().models.list().data}
    assert {"default", "embed"} <= ids
