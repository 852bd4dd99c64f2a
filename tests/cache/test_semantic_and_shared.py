"""Semantic hits with the real embedding model (all-MiniLM-L6-v2, in the
gateway), and one cache shared by two gateway processes through Redis."""

from __future__ import annotations

import pytest

from tests.cache.cache_helpers import ask, cached_endpoint, calls, metric, raw, stub_gateway, usage_rows

pytestmark = pytest.mark.model  # loads the embedding model in the gateway

QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"  # cosine 0.96 with QUESTION
OTHER = "What is the capital of Germany?"  # cosine 0.66: a different question


def test_a_paraphrase_is_a_semantic_hit_within_its_conversation(gw, stub):
    cached_endpoint(gw, "semantic", {"mode": "semantic"})
    client = gw.openai()
    assert raw(client, "semantic", **ask(QUESTION)).headers["x-modelyard-cache"] == "miss"
    before = calls(stub)

    para = raw(client, "semantic", **ask(PARAPHRASE))
    assert para.headers["x-modelyard-cache"] == "semantic-hit"
    assert 0.92 <= float(para.headers["x-modelyard-cache-similarity"]) < 1
    assert para.parse().choices[0].message.content == f"answer to: {QUESTION}"  # the earlier answer

    other = raw(client, "semantic", **ask(OTHER))
    assert other.headers["x-modelyard-cache"] == "miss"
    assert float(other.headers["x-modelyard-cache-similarity"]) < 0.92  # the nearest entry, not close enough
    assert other.parse().choices[0].message.content == f"answer to: {OTHER}"

    # Another system prompt, another conversation: never answered from the first one.
    french = ask(PARAPHRASE, messages=[{"role": "system", "content": "Answer in French."},
                                       {"role": "user", "content": PARAPHRASE}])
    assert raw(client, "semantic", **french).headers["x-modelyard-cache"] == "miss"
    # nor with other parameters
    assert raw(client, "semantic", **ask(PARAPHRASE, max_tokens=7)).headers["x-modelyard-cache"] == "miss"

    with client.chat.completions.with_streaming_response.create(model="semantic", stream=True,
                                                                 **ask(PARAPHRASE)) as response:
        assert response.headers["x-modelyard-cache"] in ("semantic-hit", "hit")
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == f"answer to: {QUESTION}"
    assert calls(stub) == before + 3  # OTHER, the French conversation and max_tokens=7

    rows = usage_rows(gw, "semantic")
    assert [r["cache"] for r in rows][:3] == ["miss", "semantic-hit", "miss"]
    assert rows[1]["saved_tokens"] == 30 and rows[1]["cost_usd"] == 0
    assert metric(gw, "modelyard_cache_lookups_total", endpoint="semantic", result="semantic-hit") >= 1
    stats = gw.api("GET", "/api/endpoints/semantic/cache").json()
    assert stats["semantic_hits"] >= 1 and stats["semantic_hit_rate"] > 0 and stats["memory_bytes"] > 0


def test_the_semantic_index_is_rebuilt_after_a_restart(tmp_path, stub):
    home = tmp_path / "home"
    srv = stub_gateway(home, stub)
    try:
        cached_endpoint(srv, "remember", {"mode": "semantic", "ttl": "1h"})
        assert raw(srv.openai(), "remember", **ask(QUESTION)).headers["x-modelyard-cache"] == "miss"
    finally:
        srv.stop()
    srv = stub_gateway(home, stub)
    try:
        hit = raw(srv.openai(), "remember", **ask(PARAPHRASE))
        assert hit.headers["x-modelyard-cache"] == "semantic-hit"
        assert hit.parse().choices[0].message.content == f"answer to: {QUESTION}"
    finally:
        srv.stop()


def test_two_gateways_share_one_cache_through_redis(tmp_path, stub, redis_db):
    a = stub_gateway(tmp_path / "a", stub)
    b = stub_gateway(tmp_path / "b", stub)
    try:
        for srv in (a, b):
            cached_endpoint(srv, "shared", {"mode": "semantic", "backend": redis_db})
        ca, cb = a.openai(), b.openai()
        assert raw(ca, "shared", **ask(QUESTION)).headers["x-modelyard-cache"] == "miss"
        before = calls(stub)
        exact = raw(cb, "shared", **ask(QUESTION))  # stored by a, served by b
        assert exact.headers["x-modelyard-cache"] == "hit"
        assert exact.parse().choices[0].message.content == f"answer to: {QUESTION}"
        para = raw(cb, "shared", **ask(PARAPHRASE))  # b learned a's vector from the change stream
        assert para.headers["x-modelyard-cache"] == "semantic-hit"
        assert raw(cb, "shared", **ask(OTHER)).headers["x-modelyard-cache"] == "miss"
        assert raw(ca, "shared", **ask(OTHER)).headers["x-modelyard-cache"] == "hit"  # and the other way round
        assert calls(stub) == before + 1
        assert b.api("DELETE", "/api/endpoints/shared/cache").json()["deleted"] == 2
        assert raw(ca, "shared", **ask(PARAPHRASE)).headers["x-modelyard-cache"] == "miss"
        assert metric(a, "modelyard_cache_backend_up", endpoint="shared") == 1
    finally:
        a.stop()
        b.stop()
