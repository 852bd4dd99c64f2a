"""The cache in front of the real embedded model (Gemma 3 270M via llama.cpp)."""

from __future__ import annotations

import time

import pytest

from tests.cache.cache_helpers import cached_endpoint, raw, usage_rows
from tests.live_gateway import start_server

pytestmark = pytest.mark.model

STORY = "Chapter One\n\nThe old lighthouse keeper had lived alone on the island for"


def test_a_gemma_answer_is_replayed_and_a_length_cut_one_is_not(tmp_path):
    srv = start_server(tmp_path / "home", "--no-defaults")
    try:
        cached_endpoint(srv, "gemma", {"mode": "exact"}, model="gemma-3-270m")
        client = srv.openai()
        body = {"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0, "max_tokens": 200}
        t0 = time.perf_counter()
        first = raw(client, "gemma", **body)
        generated_s = time.perf_counter() - t0
        answer = first.parse()
        assert first.headers["x-modelyard-cache"] == "miss" and answer.choices[0].finish_reason == "stop"
        t0 = time.perf_counter()
        again = raw(client, "gemma", **body)
        replayed_s = time.perf_counter() - t0
        assert again.headers["x-modelyard-cache"] == "hit"
        assert again.parse().choices[0].message.content == answer.choices[0].message.content
        assert replayed_s < generated_s  # generous: no speed figure is asserted here (see bench/cache_gateway.py)

        # A plain completion of a story runs to its token limit: cut by length, never stored.
        cut = client.completions.with_raw_response.create(model="gemma", prompt=STORY, max_tokens=4, temperature=0)
        assert cut.parse().choices[0].finish_reason == "length"
        again = client.completions.with_raw_response.create(model="gemma", prompt=STORY, max_tokens=4, temperature=0)
        assert again.headers["x-modelyard-cache"] == "miss"
        rows = usage_rows(srv, "gemma")
        assert [r["cache"] for r in rows] == ["miss", "hit", "miss", "miss"]
        assert rows[1]["saved_tokens"] == rows[0]["prompt_tokens"] + rows[0]["completion_tokens"] > 0
    finally:
        srv.stop()
