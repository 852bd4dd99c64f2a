"""The shipped example flow (examples/ask-docs) on the embedded default models, as its README runs it: the
project's README indexed through the `embed` endpoint (all-MiniLM-L6-v2), the flow applied with the CLI,
then asked through the official openai client and the run API — Gemma 3 270M answers through llama.cpp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **server.env(), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "modelyard.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def ask_docs(server):
    made = cli(server, "index", "create", "docs", "--from", "README.md", "--embed", "embed", "--chunk", "400",
               "--overlap", "50")
    assert made.returncode == 0, made.stdout + made.stderr
    applied = cli(server, "flow", "apply", "-f", "examples/ask-docs")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "created" in applied.stdout
    return "ask-docs"


def test_the_example_answers_from_the_readme_on_the_local_models(server, ask_docs):
    r = server.api("POST", f"/api/flows/{ask_docs}/run", json={"inputs": {"question": "How do I revoke an API key?"}})
    assert r.status_code == 200, r.text
    body = r.json()
    spans = {s["node"]: s for s in body["trace"]["spans"]}
    assert [s["node"] for s in body["trace"]["spans"]] == ["search", "context", "answer"]
    assert all(s["status"] == "ok" for s in spans.values())
    # the search found README sections through the embed endpoint; the answer came from the local default model
    assert spans["search"]["hits"] and all(h["path"] == "README.md" for h in spans["search"]["hits"])
    assert spans["search"]["deployment"] == "all-minilm-l6-v2" and spans["search"]["prompt_tokens"] > 0
    assert spans["answer"]["endpoint"] == "default" and spans["answer"]["deployment"] == "gemma-3-270m"
    assert spans["answer"]["completion_tokens"] > 0
    assert isinstance(body["outputs"]["answer"], str) and body["outputs"]["answer"].strip()


def test_the_example_streams_through_the_openai_client(server, ask_docs):
    client = server.openai()
    chunks = list(client.chat.completions.create(
        model=ask_docs, stream=True, messages=[{"role": "user", "content": "What does make test do?"}]))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2 and "".join(texts).strip()
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_flow_test_prints_each_node_with_its_tier_and_cost(server, ask_docs):
    shown = cli(server, "flow", "test", ask_docs, "--input", "question=What is modelyard?")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for node in ("search", "context", "answer"):
        assert node in shown.stdout
    assert "gemma-3-270m" in shown.stdout and "$" in shown.stdout
