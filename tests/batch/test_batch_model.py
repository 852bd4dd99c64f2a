"""Batch jobs on the real embedded models: Gemma 3 270M (`default`) and all-MiniLM-L6-v2 (`embed`)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.batch.batch_helpers import read_jsonl, submit, wait_batch, write_jsonl
from tests.live_gateway import start_server

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("batch-model") / "home")
    yield srv
    srv.stop()


def test_a_chat_batch_on_gemma_with_a_live_request_beside_it(gemma, tmp_path):
    client = gemma.openai()
    questions = ["What is the capital of France?", "Name a colour.", "What is two plus two?", "Say hello."]
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "default", "messages": [{"role": "user", "content": q}], "max_tokens": 8,
                       "temperature": 0}} for i, q in enumerate(questions)]
    batch = submit(client, write_jsonl(tmp_path / "chat.jsonl", lines))
    live = client.chat.completions.create(model="default", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert live.choices[0].message.content  # live traffic is served while the job runs
    done = wait_batch(client, batch.id, timeout=240)
    assert done.status == "completed", done
    out = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == ["q0", "q1", "q2", "q3"]
    for o in out:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert 0 < body["usage"]["completion_tokens"] <= 8
    # Greedy decoding: the batch answer to the question asked live is the live answer.
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content

    time.sleep(0.5)
    with sqlite3.connect(gemma.home / "modelyard.db") as db:
        rows = db.execute("SELECT deployment, prompt_tokens, completion_tokens, status FROM usage_records "
                          "WHERE batch_id = ?", (batch.id,)).fetchall()
    assert len(rows) == 4 and {r[0] for r in rows} == {"gemma-3-270m"} and {r[3] for r in rows} == {200}
    extra = done.model_extra["modelyard"]
    assert extra["completion_tokens"] == sum(r[2] for r in rows) == done.usage.output_tokens


def test_an_embeddings_batch_on_minilm(gemma, tmp_path):
    client = gemma.openai()
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "embed", "input": text}} for i, text in enumerate(["a cat", "a dog", "the sea"])]
    done = wait_batch(client, submit(client, write_jsonl(tmp_path / "emb.jsonl", lines), endpoint="/v1/embeddings").id,
                      timeout=240)
    assert done.status == "completed"
    out = read_jsonl(client, done.output_file_id)
    assert [len(o["response"]["body"]["data"][0]["embedding"]) for o in out] == [384, 384, 384]
    assert done.usage.input_tokens > 0
