"""The Ray runtime on a real multi-node cluster: a gateway (``MODELYARD_RUNTIME=ray``) serves Gemma 3 270M from
a Ray Serve replica, and keeps answering when the node holding that replica is killed.

The cluster (`ray.cluster_utils.Cluster`) is started once for the module: a head node with no CPUs (Ray's
own processes and Serve's controller and proxy; nothing of ours can be placed there) and two worker nodes
of one CPU each, told apart by a custom resource. A replica needs one CPU, so it runs on one worker node,
and after that node is killed Serve can only bring it back on the other.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.live_gateway import Server, start_server

pytestmark = [pytest.mark.ray, pytest.mark.model]

DEPLOYMENT = "/api/endpoints/chat/deployments/blue"


@pytest.fixture(scope="module")
def cluster():
    """A head node without CPUs and two one-CPU worker nodes; skipped where Ray cannot start."""
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the ray extra is not installed")
    try:
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": 80 * 1024**2, "include_dashboard": False,
            # a killed node is declared dead within ~3 s instead of ~15 s
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
        for name in ("node-a", "node-b"):
            cluster.add_node(num_cpus=1, resources={name: 1}, object_store_memory=80 * 1024**2)
        cluster.wait_for_nodes()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def gateway(cluster, tmp_path_factory):
    """A gateway on the cluster with endpoint `chat`: deployment `blue`, Gemma, one replica of one CPU."""
    home = tmp_path_factory.mktemp("ray-runtime") / "home"
    srv = start_server(home, "--no-defaults", extra_env={"MODELYARD_RUNTIME": "ray", "RAY_ADDRESS": cluster.address})
    try:
        assert srv.api("POST", "/api/endpoints", json={"name": "chat"}).status_code == 201
        r = srv.api("POST", "/api/endpoints/chat/deployments?all_traffic=true", json={
            "name": "blue", "model": "gemma-3-270m", "resources": {"num_cpus": 1},
            "request_settings": {"request_timeout_ms": 120_000, "max_queue_wait_ms": 120_000}})
        assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


def _replicas(srv: Server) -> list[dict]:
    r = srv.api("GET", DEPLOYMENT)
    assert r.status_code == 200, r.text
    return r.json()["instances"]


def _node_of(cluster, node_id: str):
    return next(n for n in cluster.list_all_nodes() if n.node_id == node_id)


def test_gemma_answers_through_a_ray_serve_replica_streaming_and_not(gateway):
    client = gateway.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0)
    answer = raw.parse()
    assert raw.headers["x-modelyard-deployment"] == "blue"
    assert answer.choices[0].message.content.strip()
    assert answer.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Count to five."}], max_tokens=16, temperature=0,
        stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streamed, piece by piece
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    [replica] = _replicas(gateway)
    assert replica["runtime"] == "ray" and replica["state"] == "ready"
    assert replica["replica_id"] and replica["node_id"]


def test_a_replica_reached_past_the_gateway_refuses_requests_without_the_instance_token(gateway):
    [replica] = _replicas(gateway)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(replica["url"] + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(replica["url"] + "/v1/chat/completions", json=body, timeout=30,
                   headers={"authorization": "Bearer not-the-token"})
    assert r.status_code == 401


def test_killing_the_node_of_the_replica_under_load_loses_no_plain_request_and_ends_a_cut_stream(gateway, cluster):
    [replica] = _replicas(gateway)
    doomed = _node_of(cluster, replica["node_id"])
    client = gateway.openai()

    stream_outcome: dict = {}
    first_text = threading.Event()

    def stream() -> None:
        chunks = 0
        try:
            for chunk in client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "Tell a long story about a dragon."}],
                    max_tokens=400, temperature=0, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks += 1
                    first_text.set()
            stream_outcome["ended"] = "finished"
        except Exception as exc:  # the gateway's error event ends the stream (the SDK raises it as an APIError)
            stream_outcome["ended"] = f"{type(exc).__name__}: {exc}"
            stream_outcome["error"] = exc
        stream_outcome["chunks"] = chunks
        first_text.set()

    answers: list[str] = []
    failures: list[str] = []

    def ask(i: int) -> None:
        try:
            r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"Say {i}."}],
                                               max_tokens=4, temperature=0)
            answers.append(r.choices[0].message.content)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert first_text.wait(60), "the stream never started"
    askers = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in askers:
        t.start()
    time.sleep(0.5)  # the plain requests are queued behind the stream, at the gateway or in Serve
    killed_at = time.monotonic()
    cluster.remove_node(doomed, allow_graceful=False)

    streamer.join(60)
    assert not streamer.is_alive(), "the cut stream hung instead of ending"
    assert stream_outcome["ended"] != "finished" and stream_outcome["chunks"] >= 1, stream_outcome
    # an error event from the gateway, not a dropped connection
    error = stream_outcome["error"]
    assert isinstance(error, openai.APIError) and not isinstance(error, openai.APIConnectionError), stream_outcome
    for t in askers:
        t.join(180)
    assert not failures, failures
    assert len(answers) == 4 and all(a is not None for a in answers)
    recovered_in = time.monotonic() - killed_at

    [back] = [r for r in _replicas(gateway) if r["state"] == "ready"]
    assert back["node_id"] != doomed.node_id
    assert back["replica_id"] != replica["replica_id"]
    # and the endpoint answers on the surviving node as before
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Name a fruit."}],
                                       max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None
    print(f"requests answered again {recovered_in:.1f}s after the node was killed")
