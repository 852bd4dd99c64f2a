"""Several gateways on one Ray cluster: each deploys the same Serve application, so none restarts the others'
replicas, and a gateway that shuts down leaves the applications running for the rest.

One Ray node (one CPU: one Gemma replica), two gateways with ``RAY_ADDRESS`` pointing at it, on one SQLite
database and with the same admin key (the shared ``MODELYARD_HOME`` contents of a multi-gateway setup). The
second gateway learns of a deployment made through the first by its endpoint sync (``MODELYARD_KEYS_RELOAD_S``).
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.live_gateway import Server, start_server

pytestmark = [pytest.mark.ray, pytest.mark.model]

DEPLOYMENT = "/api/endpoints/chat/deployments/blue"


@pytest.fixture(scope="module")
def cluster():
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the ray extra is not installed")
    try:
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": 80 * 1024**2, "include_dashboard": False})
        cluster.wait_for_nodes()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    yield cluster
    cluster.shutdown()


def _gateway(home, cluster, database: str) -> Server:
    return start_server(home, "--no-defaults", extra_env={
        "MODELYARD_RUNTIME": "ray", "RAY_ADDRESS": cluster.address, "DATABASE_URL": database,
        "MODELYARD_KEYS_RELOAD_S": "0.5"})


def _ready_replica(srv: Server, timeout_s: float = 90) -> dict:
    """The deployment's one replica once this gateway sees it ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = srv.api("GET", DEPLOYMENT)
        if r.status_code == 200:
            ready = [i for i in r.json()["instances"] if i["state"] == "ready"]
            if ready:
                assert len(ready) == 1, ready
                return ready[0]
        assert time.monotonic() < deadline, f"{srv.url} never saw the deployment ready: {r.status_code} {r.text}"
        time.sleep(0.5)


def _ask(srv: Server) -> str:
    raw = srv.openai().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6, temperature=0)
    assert raw.headers["x-modelyard-deployment"] == "blue"
    answer = raw.parse().choices[0].message.content
    assert answer.strip()
    return answer


def test_two_gateways_share_one_serve_application_and_one_leaving_does_not_take_it_down(cluster, tmp_path):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    a = _gateway(tmp_path / "a", cluster, database)
    b = None
    try:
        (tmp_path / "b").mkdir(mode=0o700)
        shutil.copy2(a.home / "admin.key", tmp_path / "b" / "admin.key")  # the shared home's admin key
        b = _gateway(tmp_path / "b", cluster, database)

        assert a.api("POST", "/api/endpoints", json={"name": "chat"}).status_code == 201
        r = a.api("POST", "/api/endpoints/chat/deployments?all_traffic=true", json={
            "name": "blue", "model": "gemma-3-270m", "resources": {"num_cpus": 1},
            "request_settings": {"request_timeout_ms": 120_000, "max_queue_wait_ms": 120_000}})
        assert r.status_code == 201, r.text
        replica = _ready_replica(a)
        _ask(a)

        # B deploys the same application when its sync finds the deployment: no second replica, no restart
        # (on one CPU a redeploy could not even start a second replica beside the first)
        seen_by_b = _ready_replica(b)
        assert seen_by_b["replica_id"] == replica["replica_id"]
        _ask(b)
        assert _ready_replica(a)["replica_id"] == replica["replica_id"]
        # both gateways watch the cluster; one of them (the lease holder) writes its changes to the event log
        time.sleep(2.5)  # each polls Serve every second; events are written within moments
        events = a.api("GET", "/api/endpoints/chat/deployments/blue/events").json()["data"]
        assert [e["kind"] for e in events].count("scale_up") == 1, events

        # A shuts down (gracefully: uvicorn exits by re-raising the SIGTERM once it has shut down), leaving the
        # application to B, which keeps answering from the very same replica
        a.stop()
        log = a.log.read_text()
        assert "SIGTERM received" not in log  # Ray's crash handler did not kill it before its shutdown ran
        assert "leaving 1 Serve application(s) running" in log
        _ask(b)
        assert _ready_replica(b)["replica_id"] == replica["replica_id"]

        # deleting the deployment (its endpoint) through B deletes the application: its URL stops answering
        r = httpx.post(replica["url"] + "/v1/chat/completions", json={"model": "chat", "messages": []}, timeout=30)
        assert r.status_code == 401  # the replica, refusing a caller without its token
        assert b.api("DELETE", "/api/endpoints/chat").status_code == 200
        deadline = time.monotonic() + 30
        while httpx.post(replica["url"] + "/v1/chat/completions", json={}, timeout=30).status_code != 404:
            assert time.monotonic() < deadline, "the Serve application outlived its deleted deployment"
            time.sleep(0.5)
    finally:
        for srv in (b, a):
            if srv is not None:
                srv.stop()
