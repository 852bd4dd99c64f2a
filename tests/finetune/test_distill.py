"""Distillation from traffic: which kept answers become training rows (`modelyard.finetune.distill`), and the
whole loop through a real gateway — routed traffic, feedback, `finetune dataset --upload`, a fine-tuning job."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.errors import ModelyardError
from modelyard.finetune.data import load_examples
from modelyard.finetune.distill import DistillRequest, distill, jsonl, router_endpoint
from modelyard.serving.config import ConfigStore
from modelyard.serving.spec import EndpointSpec
from modelyard.store.db import Database
from modelyard.store.models import utcnow
from modelyard.store.responses import ResponseStore
from tests.cards import tier_cards
from tests.finetune.ft_helpers import BASE, GATEWAY_ENV, catalog, wait_job
from tests.live_gateway import start_server, write_catalog
from tests.openai_stub import Script

TIERS = ["small", "mid", "large"]


# --- the selection, on a real SQLite database filled through the stores ------------------------------------------


class Traffic:
    """A router endpoint's kept answers and ratings, written through `ResponseStore` as the gateway writes them."""

    def __init__(self, tmp_path: Path, endpoint: str = "assistant") -> None:
        self.db = Database(f"sqlite:///{tmp_path / 'modelyard.db'}")
        self.db.upgrade()
        self.responses = ResponseStore(self.db)
        self.config = ConfigStore(self.db)
        self.endpoint = endpoint
        self.config.save_endpoint(EndpointSpec(name=endpoint, policy="router", tiers=TIERS,
                                               router={"strategy": "cascade", "threshold": -1.0}))
        self.n = 0

    def answer(self, question: str, text: str, *, tier: str = "small", status: str = "answered",
               latest: tuple[str, str] | None = None, age: timedelta = timedelta(0), kind: str = "chat",
               request: dict[str, Any] | None = None, system: str | None = None) -> str:
        """Keep one answer (``latest``: the (tier, text) that replaced it); returns its id."""
        self.n += 1
        rid = f"chatcmpl-{self.n:04d}"
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        when = utcnow() - age + timedelta(milliseconds=self.n)  # of two answers of the same age, the later is newer
        self.responses.save_many([{
            "id": rid, "endpoint": self.endpoint, "key_id": None, "kind": kind,
            "request": request if request is not None else {"model": self.endpoint, "messages": messages},
            "prompt": question, "tier": tier, "tier_index": TIERS.index(tier), "content": text, "status": status,
            "latest_tier": latest[0] if latest else None, "latest_content": latest[1] if latest else None,
            "similarity": None, "created_at": when, "updated_at": when}])
        return rid

    def rate(self, rid: str, rating: int, tier: str) -> None:
        self.responses.add_feedback(response_id=rid, endpoint=self.endpoint, tier=tier, rating=rating, comment=None,
                                    key_id=None)

    def select(self, **options: Any):
        spec = router_endpoint(self.config.get_endpoint(self.endpoint), self.endpoint)
        return distill(self.db, spec, DistillRequest(endpoint=self.endpoint, **options))


def answers(rows: list[dict[str, Any]]) -> dict[str, str]:
    """{question: the assistant message} of training rows."""
    return {r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in rows}


@pytest.fixture
def traffic(tmp_path) -> Traffic:
    return Traffic(tmp_path)


def test_top_tier_answers_corrections_and_positively_rated_answers_are_selected(traffic):
    traffic.answer("cheap unrated", "meh")                                                   # no source: left out
    traffic.answer("hard question", "a strong answer", tier="large")                         # top
    traffic.answer("checked", "wrong fast answer", status="corrected", latest=("large", "checked answer"))
    down = traffic.answer("escalated", "Lyon.", status="improved", latest=("mid", "Paris."))
    traffic.rate(down, -1, "small")  # the rating that asked mid: the correction is taken, not the rated-down text
    liked = traffic.answer("liked cheap", "a good cheap answer", tier="small")
    traffic.rate(liked, 1, "small")                                                          # rated
    disliked = traffic.answer("disliked cheap", "a bad cheap answer")
    traffic.rate(disliked, -1, "small")                                                      # never
    bad_top = traffic.answer("top but disliked", "a bad strong answer", tier="large")
    traffic.rate(bad_top, -1, "large")                                                       # never, top or not

    result = traffic.select()
    assert answers(result.train) == {"hard question": "a strong answer", "checked": "checked answer",
                                     "escalated": "Paris.", "liked cheap": "a good cheap answer"}
    assert result.sources == {"top": 1, "corrections": 2, "rated": 1}
    assert (result.scanned, result.rated_down, result.not_selected, result.holdout) == (7, 2, 1, [])
    # newest first, each row the request's messages and the answer
    assert [r["messages"][0]["content"] for r in result.train] == ["liked cheap", "escalated", "checked",
                                                                  "hard question"]
    assert result.train[0]["messages"] == [{"role": "user", "content": "liked cheap"},
                                           {"role": "assistant", "content": "a good cheap answer"}]


def test_a_correction_rated_down_is_left_out_and_the_latest_rating_of_an_answer_counts(traffic):
    fixed = traffic.answer("fixed badly", "first", status="improved", latest=("large", "second, also wrong"))
    traffic.rate(fixed, -1, "small")
    traffic.rate(fixed, -1, "large")  # the correction itself was rated down
    changed = traffic.answer("changed mind", "fine after all")
    traffic.rate(changed, -1, "small")
    traffic.rate(changed, 1, "small")
    regretted = traffic.answer("regretted", "not fine after all")
    traffic.rate(regretted, 1, "small")
    traffic.rate(regretted, -1, "small")

    result = traffic.select()
    assert answers(result.train) == {"changed mind": "fine after all"}
    assert result.rated_down == 2


def test_sources_tiers_and_min_rating_filter_the_rows(traffic):
    traffic.answer("top", "strong", tier="large")
    traffic.answer("corrected", "fast", status="corrected", latest=("large", "strong fix"))
    mid = traffic.answer("mid liked", "mid answer", tier="mid")
    traffic.rate(mid, 1, "mid")
    small = traffic.answer("small liked", "small answer")
    traffic.rate(small, 1, "small")

    assert set(answers(traffic.select(sources=["corrections"]).train)) == {"corrected"}
    only_top = traffic.select(sources=["top"])
    assert set(answers(only_top.train)) == {"top", "corrected"}  # a correction by the top tier is its answer too
    assert only_top.sources == {"top": 2, "corrections": 0, "rated": 0}
    assert set(answers(traffic.select(sources=["rated"]).train)) == {"mid liked", "small liked"}
    assert set(answers(traffic.select(tiers=["small", "mid"]).train)) == {"mid liked", "small liked"}
    assert set(answers(traffic.select(tiers=["large"], sources=["top", "rated"]).train)) == {"top", "corrected"}

    with pytest.raises(ValidationError, match="min_rating"):
        DistillRequest(endpoint="assistant", min_rating=0)  # would take answers nobody rated up
    with pytest.raises(ValidationError, match="sources"):
        DistillRequest(endpoint="assistant", sources=["everything"])
    with pytest.raises(ModelyardError) as err:
        traffic.select(tiers=["huge"])
    assert err.value.status == 400 and err.value.param == "tiers" and "'huge'" in err.value.message


def test_the_window_keeps_only_recent_answers(traffic):
    traffic.answer("last week", "old strong answer", tier="large", age=timedelta(days=8))
    traffic.answer("yesterday", "new strong answer", tier="large", age=timedelta(days=1))
    traffic.answer("an hour ago", "newest strong answer", tier="large", age=timedelta(minutes=61))

    assert set(answers(traffic.select(window="7d").train)) == {"yesterday", "an hour ago"}
    assert set(answers(traffic.select(window="2h").train)) == {"an hour ago"}
    assert set(answers(traffic.select().train)) == {"last week", "yesterday", "an hour ago"}
    for bad in ("7 days", "0d", "-1h", "12"):
        with pytest.raises(ValidationError, match="window"):
            DistillRequest(endpoint="assistant", window=bad)


def test_the_same_messages_are_one_row_the_newest_or_the_corrected_one(traffic):
    traffic.answer("same question", "older corrected", status="corrected", latest=("large", "the correction"),
                   age=timedelta(hours=3))
    newer = traffic.answer("same question", "newer plain answer", age=timedelta(hours=1))
    traffic.rate(newer, 1, "small")
    traffic.answer("asked twice", "first strong", tier="large", age=timedelta(hours=2))
    traffic.answer("asked twice", "second strong", tier="large", age=timedelta(hours=1))
    # the same text with another system prompt is another conversation
    traffic.answer("asked twice", "with a system prompt", tier="large", system="Be brief.")

    result = traffic.select()
    rows = {orjson.dumps(r["messages"][:-1]): r["messages"][-1]["content"] for r in result.train}
    assert sorted(rows.values()) == ["second strong", "the correction", "with a system prompt"]
    assert result.duplicates == 2 and result.sources == {"top": 2, "corrections": 1, "rated": 0}


def test_the_holdout_split_is_stable_when_run_again_and_when_traffic_grows(traffic):
    for i in range(200):
        traffic.answer(f"question {i}", f"answer {i}", tier="large")
    first = traffic.select(holdout=0.2)
    held = set(answers(first.holdout))
    assert 20 <= len(held) <= 60 and len(first.train) + len(held) == 200  # about a fifth, chosen by hash
    assert held.isdisjoint(answers(first.train))
    assert set(answers(traffic.select(holdout=0.2).holdout)) == held

    for i in range(200, 300):
        traffic.answer(f"question {i}", f"answer {i}", tier="large")
    grown = traffic.select(holdout=0.2)
    assert {q for q in answers(grown.holdout) if int(q.split()[1]) < 200} == held
    assert traffic.select(holdout=0).holdout == []


def test_answers_that_cannot_be_chat_training_lines_are_skipped_and_counted(traffic, tmp_path):
    traffic.answer("a completion", "text", tier="large", kind="completion",
                   request={"model": "assistant", "prompt": "a completion"})
    traffic.answer("too big", "text", tier="large", request={"model": "assistant", "_omitted_bytes": 2_000_000})
    traffic.answer("tool result", "It is sunny.", tier="large", request={"model": "assistant", "messages": [
        {"role": "user", "content": "weather?"}, {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]})
    traffic.answer("empty", "   ", tier="large")
    traffic.answer("fine", "a usable answer", tier="large")
    parts = {"model": "assistant", "messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]}
    traffic.answer("parts", "text parts are fine", tier="large", request=parts)

    result = traffic.select()
    assert [r["messages"][-1]["content"] for r in result.train] == ["text parts are fine", "a usable answer"]
    assert result.skipped == {"not_chat": 1, "request_not_kept": 1, "invalid": 2}
    assert "an assistant message must have text" in result.first_invalid  # the newest refusal is shown
    # what is selected is a training file the fine-tuning job accepts
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(result.train))
    assert [e.messages[-1].content for e in load_examples(path, min_examples=1)] == ["text parts are fine",
                                                                                    "a usable answer"]


def test_max_rows_takes_the_newest_and_says_it_stopped(traffic):
    for i in range(30):
        traffic.answer(f"question {i}", f"answer {i}", tier="large")
    result = traffic.select(max_rows=10)
    assert [r["messages"][-1]["content"] for r in result.train] == [f"answer {i}" for i in range(29, 19, -1)]
    assert result.truncated and not traffic.select(max_rows=30).truncated


def test_an_endpoint_that_keeps_no_answers_is_refused_naming_the_endpoint(traffic):
    with pytest.raises(ModelyardError) as err:
        router_endpoint(None, "nowhere")
    assert err.value.status == 404 and err.value.param == "endpoint"
    with pytest.raises(ModelyardError) as err:
        router_endpoint(EndpointSpec(name="plain", traffic={"m": 100}), "plain")
    assert err.value.status == 400 and err.value.param == "endpoint" and "not a router endpoint" in err.value.message
    with pytest.raises(ModelyardError) as err:
        traffic.select()  # a router endpoint that has answered nothing yet
    assert err.value.status == 400 and "kept no answers" in err.value.message


# --- through a real gateway: traffic → feedback → `finetune dataset --upload` → a fine-tuning job -------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub):
    home = tmp_path_factory.mktemp("distill") / "home"
    catalog(home)  # tiny-chat, the local model a job tunes (with the fake worker)
    write_catalog(home, tier_cards(stub, {"small": (0.1, 0.2), "large": (10.0, 30.0)}), name="tiers.yaml")
    srv = start_server(home, "--no-defaults", extra_env=GATEWAY_ENV)
    yield srv
    srv.stop()


def _router_endpoint(gw, name: str) -> dict[str, str]:
    """A router endpoint: tier `small`, and `large` for prompts that say "hard"; returns its keys."""
    r = gw.api("POST", "/api/endpoints", json={"name": name})
    assert r.status_code == 201, r.text
    keys = r.json()["keys"]
    for tier in ("small", "large"):
        r = gw.api("POST", f"/api/endpoints/{name}/deployments", json={"name": tier, "model": f"tier-{tier}"})
        assert r.status_code == 201, r.text
    spec = {"name": name, "policy": "router", "tiers": ["small", "large"],
            "router": {"strategy": "rules", "rules": [{"when": {"keywords": ["hard"]}, "tier": "large"}]}}
    r = gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec})
    assert r.status_code == 200, r.text
    return keys


def dataset(gw, *args: str) -> str:
    result = CliRunner().invoke(app, ["finetune", "dataset", *args], env={**gw.env(), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_traffic_and_feedback_become_a_training_file_that_a_fine_tuning_job_takes(gw, stub, tmp_path):
    stub.tiers["small"] = Script(answers={"capital": "Lyon."}, answer="A quick answer.")
    stub.tiers["large"] = Script(answers={"capital": "Paris."}, answer="A careful answer.")
    keys = _router_endpoint(gw, "assistant")
    client = gw.openai()
    api = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.admin_key}"}, timeout=30)

    def ask(text: str) -> Any:
        return client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": text}])

    for i in range(8):
        assert ask(f"A hard question number {i}").choices[0].message.content == "A careful answer."  # top tier
    for i in range(8):
        answer = ask(f"An easy question number {i}")
        assert api.post("/v1/feedback", json={"response_id": answer.id, "rating": 1}).status_code == 201
    for i in range(3):
        ask(f"An unrated question number {i}")  # the cheap tier, never rated: not training data
    wrong = ask("What is the capital of France?")
    assert wrong.choices[0].message.content == "Lyon."
    assert api.post("/v1/feedback", json={"response_id": wrong.id, "rating": -1}).json()["escalated_to"] == "large"
    deadline = time.monotonic() + 30
    while api.get(f"/v1/responses/{wrong.id}").json()["status"] != "improved":
        assert time.monotonic() < deadline, "the escalation did not finish"
        time.sleep(0.1)

    local = tmp_path / "train.jsonl"
    output = dataset(gw, "--from-endpoint", "assistant", "--window", "1h", "--min-rating", "1", "--holdout", "0.2",
                     "--upload", "-o", str(local))
    train_id, valid_id = re.findall(r"file-[0-9a-f]{24}", output)[:2]
    assert "20 kept answers read" in output

    rows = [orjson.loads(line) for line in client.files.content(train_id).read().splitlines()]
    held = [orjson.loads(line) for line in client.files.content(valid_id).read().splitlines()]
    assert local.read_bytes() == client.files.content(train_id).read()
    assert len(rows) + len(held) == 17 and held  # 8 top-tier + 8 rated up + 1 correction
    everything = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in rows + held}
    assert everything["What is the capital of France?"] == "Paris."  # the correction, never the rated-down "Lyon."
    assert not any(q.startswith("An unrated") for q in everything)
    assert client.files.retrieve(train_id).purpose == "fine-tune"

    job = client.fine_tuning.jobs.create(model=BASE, training_file=train_id, validation_file=valid_id)
    assert job.status == "validating_files"
    assert wait_job(client, job.id).status == "succeeded"

    # Without --upload the same rows, split the same way, are written here.
    output = dataset(gw, "--from-endpoint", "assistant", "-o", str(tmp_path / "t.jsonl"), "--holdout-out",
                     str(tmp_path / "v.jsonl"), "--holdout", "0.2")
    assert (tmp_path / "t.jsonl").read_bytes() == local.read_bytes()
    assert (tmp_path / "v.jsonl").read_bytes() == client.files.content(valid_id).read()
    assert f"{len(rows)} rows" in output
    only_corrections = dataset(gw, "--from-endpoint", "assistant", "--source", "corrections", "-o",
                               str(tmp_path / "c.jsonl"))
    assert "only 1 training row(s)" in only_corrections  # too few for a job: said, not refused
    corrections = (tmp_path / "c.jsonl").read_text().splitlines()
    assert [orjson.loads(line)["messages"][-1]["content"] for line in corrections] == ["Paris."]

    # Nothing selected is nothing to upload; the rows are other keys' prompts: admin only.
    r = gw.api("POST", "/api/fine_tuning/datasets", json={"endpoint": "assistant", "sources": ["corrections"],
                                                          "tiers": ["small"], "upload": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "upload", r.text
    assert "20 in no requested source or tier" in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/api/fine_tuning/datasets", json={"endpoint": "assistant"},
                   headers={"Authorization": f"Bearer {keys['primary']}"})
    assert r.status_code == 403
    no_place = CliRunner().invoke(app, ["finetune", "dataset", "--from-endpoint", "assistant"], env=gw.env())
    assert no_place.exit_code == 1 and "-o train.jsonl, or --upload" in no_place.output


def test_the_dataset_api_refuses_bad_requests_naming_the_field(gw, stub):
    r = gw.api("POST", "/api/fine_tuning/datasets", json={"endpoint": "nowhere"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "endpoint"
    gw.api("POST", "/api/endpoints", json={"name": "plain"})
    r = gw.api("POST", "/api/fine_tuning/datasets", json={"endpoint": "plain"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"
    assert "not a router endpoint" in r.json()["error"]["message"]
    r = gw.api("POST", "/api/fine_tuning/datasets", json={"endpoint": "plain", "window": "a week"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "window"
    r = gw.api("POST", "/api/fine_tuning/datasets", json={"endpoint": "plain", "holdout": 0.9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "holdout"
    r = httpx.post(gw.url + "/api/fine_tuning/datasets", json={"endpoint": "plain"},
                   headers={"Authorization": "Bearer sk-not-a-key"})
    assert r.status_code == 401
