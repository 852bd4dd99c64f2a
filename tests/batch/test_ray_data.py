"""Batch jobs on Ray Data (``engine: "ray-data"``) on a real two-node Ray cluster and the real Gemma model.

The cluster (`ray.cluster_utils.Cluster`: two nodes of one CPU each) is started once for the module; the
gateway (`modelyard up`, a subprocess) joins it through RAY_ADDRESS, as it would join a real cluster, and
is driven through the official `openai` client's batches API. Skipped, with the reason, where Ray cannot
start here.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import time

import pytest

from tests.batch.batch_helpers import make_endpoint, read_jsonl, submit, wait_batch, write_jsonl
from tests.cards import hosted_card
from tests.live_gateway import Server, start_server, write_catalog

pytestmark = [pytest.mark.ray, pytest.mark.model]

QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is two plus two?", "Say hello.",
             "Name a fruit.", "What is the opposite of hot?", "Name an animal.", "What day comes after Monday?",
             "Name a planet.", "What is ice made of?"]
LINE_CLASS = "LineRunner"


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes with one CPU each; skipped where Ray cannot start."""
    ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the ray extra is not installed")
    try:
        cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": 100 * 1024**2, "include_dashboard": False})
        cluster.add_node(num_cpus=1, object_store_memory=100 * 1024**2)
        cluster.wait_for_nodes()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def gemma(cluster, tmp_path_factory):
    """A gateway with the default endpoints (`default`: Gemma 3 270M, one local instance for live traffic) that
    runs ray-data jobs on the cluster, with up to two actors (one per node); and `hosted`, two deployments
    of a hosted model."""
    home = tmp_path_factory.mktemp("ray-data") / "home"
    write_catalog(home, hosted_card("hosted-chat", "http://127.0.0.1:9/v1", price=(1.0, 2.0)))  # never called
    servers: list[Server] = [start_server(home, extra_env=_env(cluster))]
    make_endpoint(servers[0], "hosted", ("api-1", "hosted-chat"), ("api-2", "hosted-chat"),
                  traffic={"api-1": 50, "api-2": 50})
    yield servers
    for srv in servers:
        if srv.process.poll() is None:
            srv.stop()


def _env(cluster) -> dict[str, str]:
    return {"RAY_ADDRESS": cluster.address, "MODELYARD_BATCH_RAY_MAX_ACTORS": "2", "MODELYARD_USAGE_FLUSH_S": "0.1"}


def _lines(prefix: str, n: int) -> list[dict]:
    return [{"custom_id": f"{prefix}{i:02d}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "default", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                      "max_tokens": 8, "temperature": 0}} for i in range(n)]


def _usage_rows(home, batch_id: str) -> list[tuple]:
    time.sleep(0.3)  # the usage records of committed lines are in the same transaction; nothing to flush
    with sqlite3.connect(home / "modelyard.db") as db:
        return db.execute("SELECT request_id, deployment, prompt_tokens, completion_tokens, cost_usd, status, "
                          "batch_id FROM usage_records WHERE batch_id = ?", (batch_id,)).fetchall()


def _ray_actor_nodes(address: str) -> list[str]:
    """The node of each of the batch's model actors (alive or finished), asked of the cluster itself."""
    import ray
    from ray._private import state

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        actors = state.actors()
        return [a["Address"]["NodeID"] for a in actors.values() if LINE_CLASS in (a.get("ActorClassName") or "")]
    finally:
        ray.shutdown()


def test_a_ray_data_batch_on_gemma_answers_each_line_and_prices_it_like_the_local_engine(gemma, cluster, tmp_path):
    srv = gemma[0]
    client = srv.openai()
    batch = submit(client, write_jsonl(tmp_path / "in.jsonl", _lines("q", 10)),
                   extra_body={"engine": "ray-data", "mini_batch_size": 2})
    assert batch.model_extra["modelyard"]["engine"] == "ray-data"
    done = wait_batch(client, batch.id, timeout=240)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 10, 0)

    out = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"q{i:02d}" for i in range(10)]
    for o in out:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] and 0 < body["usage"]["completion_tokens"] <= 8
    # Greedy decoding: what Ray's actor answered is what the gateway's own instance answers live.
    live = client.chat.completions.create(model="default", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": QUESTIONS[0]}])
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content

    rows = _usage_rows(srv.home, batch.id)
    assert len(rows) == 10  # one usage record per line
    assert sorted(r[0] for r in rows) == sorted(o["response"]["request_id"] for o in out)
    assert {r[1] for r in rows} == {"gemma-3-270m"} and {r[5] for r in rows} == {200}
    assert all(r[2] > 0 and r[3] > 0 and r[4] > 0 for r in rows)  # tokens and the instance-time cost
    extra = done.model_extra["modelyard"]
    assert extra["requests"] == 10 and extra["engine"] == "ray-data"
    assert extra["completion_tokens"] == sum(r[3] for r in rows) == done.usage.output_tokens
    assert extra["cost_usd"] == pytest.approx(sum(r[4] for r in rows))
    # The work ran in Ray actors holding the model (the pool grows to two while mini-batches queue up; two
    # actors of one CPU each can only be on the two nodes of one CPU each).
    nodes = _ray_actor_nodes(cluster.address)
    print("actors on nodes:", nodes)
    assert 1 <= len(nodes) <= 2 and len(set(nodes)) == len(nodes)


def test_a_job_ray_data_cannot_run_is_refused_with_the_field_named(gemma, tmp_path):
    import openai

    srv = gemma[0]
    client = srv.openai()
    path = write_jsonl(tmp_path / "in.jsonl", _lines("r", 2))

    def refused(**extra) -> dict:
        with pytest.raises(openai.BadRequestError) as bad:
            submit(client, path, extra_body=extra)
        return bad.value.body

    assert refused(engine="spark")["param"] == "engine"
    # Ray runs one model per actor pool: an endpoint that splits its traffic needs the deployment named.
    assert refused(engine="ray-data", model="hosted")["param"] == "deployment"
    hosted = refused(engine="ray-data", model="hosted", deployment="api-1")
    assert hosted["param"] == "engine" and "hosted model" in hosted["message"]


def test_the_cli_submits_a_ray_data_job_and_cancels_it(gemma, tmp_path):
    from typer.testing import CliRunner

    from modelyard.cli import app

    srv = gemma[0]
    path = write_jsonl(tmp_path / "in.jsonl", _lines("c", 6))

    def cli(*args: str):
        return CliRunner().invoke(app, ["batch", *args], env={**srv.env(), "COLUMNS": "200"})

    bad = cli("submit", str(path), "--engine", "spark", "--no-wait")
    assert bad.exit_code == 2 and "--engine" in bad.output
    sent = cli("submit", str(path), "--engine", "ray-data", "--no-wait")
    assert sent.exit_code == 0, sent.output
    job = re.search(r"(batch_[0-9a-f]+)", sent.output).group(1)
    shown = cli("show", job)
    assert shown.exit_code == 0 and "engine ray-data" in shown.output
    assert cli("cancel", job).exit_code == 0
    client = srv.openai()
    done = wait_batch(client, job, timeout=120)
    assert done.status == "cancelled" and done.model_extra["modelyard"]["engine"] == "ray-data"
    not_run = read_jsonl(client, done.error_file_id)  # every line that did not run, named as cancelled
    assert done.request_counts.completed + len(not_run) == 6
    assert {o["error"]["code"] for o in not_run} <= {"batch_cancelled"}


def test_a_killed_gateway_resumes_a_ray_data_job_without_redoing_committed_lines(gemma, cluster, tmp_path):
    first = gemma[0]
    client = first.openai()
    total = 8
    batch = submit(client, write_jsonl(tmp_path / "in.jsonl", _lines("k", total)),
                   extra_body={"engine": "ray-data", "mini_batch_size": 2})
    deadline = time.monotonic() + 240
    while client.batches.retrieve(batch.id).request_counts.completed < 2:
        assert time.monotonic() < deadline, "no mini-batch was committed"
        time.sleep(0.1)
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(10) == -signal.SIGKILL
    with sqlite3.connect(first.home / "modelyard.db") as db:
        status, done_before = db.execute("SELECT status, completed FROM batch_jobs WHERE id = ?",
                                         (batch.id,)).fetchone()
        committed = dict(db.execute("SELECT custom_id, request_id FROM batch_lines WHERE batch_id = ? AND "
                                    "state = 'succeeded'", (batch.id,)).fetchall())
    assert status == "in_progress" and 2 <= done_before < total and len(committed) == done_before

    second = start_server(first.home, extra_env=_env(cluster))
    gemma.append(second)
    client = second.openai()
    done = wait_batch(client, batch.id, timeout=240)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (total, 0)
    out = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"k{i:02d}" for i in range(total)]  # every line once, in order
    # lines committed before the kill keep their answer; the restarted gateway ran only the others on Ray
    assert {o["custom_id"]: o["response"]["request_id"] for o in out if o["custom_id"] in committed} == committed
    ran = [int(n) for n in re.findall(rf"batch {batch.id}: (\d+) lines on Ray Data", (second.home / "server.log").read_text())]
    assert ran == [total - done_before]
    rows = _usage_rows(second.home, batch.id)
    assert len(rows) == total and {r[5] for r in rows} == {200}  # one usage record per line, none twice
    assert sorted(r[0] for r in rows) == sorted(o["response"]["request_id"] for o in out)
