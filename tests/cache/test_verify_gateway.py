"""Through the gateway, with the real embedding model: a near-duplicate that asks something else is not
served (verification is on by default), and a -1 rating of a cached answer removes it and tightens the
endpoint's threshold."""

from __future__ import annotations

import pytest

from tests.cache.cache_helpers import ask, cached_endpoint, calls, metric, raw, usage_rows

pytestmark = pytest.mark.model  # loads the embedding model in the gateway

RESET = "How do I reset my password?"
CHANGE = "How do I change my password?"  # cosine 0.87 with RESET: close, but another question
SAME = "How can I reset my password?"  # cosine 0.99: the same question
IPHONE6, IPHONE7 = "How much does an iPhone 6 cost?", "How much does an iPhone 7 cost?"  # cosine 0.85


def test_a_near_duplicate_that_asks_something_else_is_not_served_by_default(gw):
    # a low threshold, so that the vector search alone would serve the neighbours
    cached_endpoint(gw, "verified", {"mode": "semantic", "similarity": 0.8})
    client = gw.openai()
    for question in (RESET, IPHONE6):
        assert raw(client, "verified", **ask(question)).headers["x-modelyard-cache"] == "miss"

    change = raw(client, "verified", **ask(CHANGE))
    assert change.headers["x-modelyard-cache"] == "miss"
    assert change.headers["x-modelyard-cache-rejected"] == "terms"
    assert change.parse().choices[0].message.content == f"answer to: {CHANGE}"  # its own answer, generated
    iphone = raw(client, "verified", **ask(IPHONE7))
    assert iphone.headers["x-modelyard-cache"] == "miss" and iphone.headers["x-modelyard-cache-rejected"] == "numbers"
    assert iphone.parse().choices[0].message.content == f"answer to: {IPHONE7}"

    same = raw(client, "verified", **ask(SAME))  # a rewording of a cached question is still served
    assert same.headers["x-modelyard-cache"] == "semantic-hit"
    assert same.parse().choices[0].message.content == f"answer to: {RESET}"
    assert metric(gw, "modelyard_cache_rejected_total", endpoint="verified", guard="terms") >= 1
    assert gw.api("GET", "/api/endpoints/verified/cache").json()["verify"] == "guards"

    # the same neighbours with verification turned off: served, with the other question's answer
    cached_endpoint(gw, "unverified", {"mode": "semantic", "similarity": 0.8, "verify": "off"})
    assert raw(client, "unverified", **ask(RESET)).headers["x-modelyard-cache"] == "miss"
    wrong = raw(client, "unverified", **ask(CHANGE))
    assert wrong.headers["x-modelyard-cache"] == "semantic-hit"
    assert wrong.parse().choices[0].message.content == f"answer to: {RESET}"


def test_a_down_rated_semantic_hit_is_removed_and_tightens_the_threshold(gw):
    cached_endpoint(gw, "rated", {"mode": "semantic", "similarity": 0.9})
    client = gw.openai()
    assert raw(client, "rated", **ask(RESET)).headers["x-modelyard-cache"] == "miss"
    hit = raw(client, "rated", **ask(SAME))
    assert hit.headers["x-modelyard-cache"] == "semantic-hit"
    response_id = hit.parse().id

    r = gw.api("POST", "/v1/feedback", json={"response_id": response_id, "rating": -1, "comment": "wrong answer"})
    assert r.status_code == 201, r.text  # a rating is created, as for routed answers
    body = r.json()
    assert body["tier"] == "cache" and body["cache"]["entry_removed"] is True
    assert body["cache"]["similarity_before"] == 0.9 and body["cache"]["similarity_after"] == pytest.approx(0.91)

    stats = gw.api("GET", "/api/endpoints/rated/cache").json()
    assert stats["effective_similarity"] == pytest.approx(0.91) and stats["removed_by_feedback"] == 1
    again = raw(client, "rated", **ask(SAME))  # the entry is gone: generated afresh
    assert again.headers["x-modelyard-cache"] == "miss"
    assert again.parse().choices[0].message.content == f"answer to: {SAME}"

    # an id the gateway never gave out is not found
    assert gw.api("POST", "/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": -1}).status_code == 404


def test_a_judge_that_says_no_keeps_the_neighbour_from_being_served_and_its_tokens_are_billed(gw, stub):
    # the echo stub answers the judge's yes/no question with "answer to: …", which is not a yes
    cached_endpoint(gw, "judged", {"mode": "semantic", "similarity": 0.9, "verify": "judge"})
    client = gw.openai()
    assert raw(client, "judged", **ask(RESET)).headers["x-modelyard-cache"] == "miss"
    before = calls(stub)
    same = raw(client, "judged", **ask(SAME))  # passes the guards; the judge has the last word
    assert same.headers["x-modelyard-cache"] == "miss"
    assert same.headers["x-modelyard-cache-rejected"] == "judge"
    assert same.parse().choices[0].message.content == f"answer to: {SAME}"
    assert calls(stub) - before == 2  # the judge's question, then the answer
    rows = usage_rows(gw, "judged")
    answer = rows[-1]
    assert answer["request_id"] == same.headers["x-request-id"]
    first = rows[0]
    # the second request's record carries the judge's call on top of its own answer
    assert answer["prompt_tokens"] > first["prompt_tokens"]
    assert answer["cost_usd"] > first["cost_usd"]
    # the answer was stored at its own cost: a later hit saves that, not the judging too
    repeat = raw(client, "judged", **ask(SAME))
    assert repeat.headers["x-modelyard-cache"] == "hit"
    hit = usage_rows(gw, "judged")[-1]
    assert hit["cost_usd"] == 0 and hit["saved_usd"] == pytest.approx(first["cost_usd"])
