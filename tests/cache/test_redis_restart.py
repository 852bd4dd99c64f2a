"""A shared cache whose Redis dies and comes back: requests keep being answered, and the cache comes back by itself."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.cache.cache_helpers import ask, cached_endpoint, metric, raw, stub_gateway
from tests.live_gateway import free_port

QUESTION = "What is the capital of France?"


def start_redis(port: int, workdir) -> subprocess.Popen:
    import redis

    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def test_requests_are_answered_while_redis_is_dead_and_the_cache_comes_back_with_it(tmp_path, stub):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; `make test` installs it)")
    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    srv = stub_gateway(tmp_path / "home", stub)
    try:
        cached_endpoint(srv, "shared", {"mode": "exact", "backend": f"redis://127.0.0.1:{port}/0"})
        client = srv.openai()
        assert raw(client, "shared", **ask(QUESTION)).headers["x-modelyard-cache"] == "miss"
        assert raw(client, "shared", **ask(QUESTION)).headers["x-modelyard-cache"] == "hit"

        redis_proc.kill()  # the cache's server dies
        redis_proc.wait(10)
        for _ in range(5):
            answer = raw(client, "shared", **ask(QUESTION))
            assert answer.parse().choices[0].message.content == f"answer to: {QUESTION}"
            assert answer.headers["x-modelyard-cache"] == "unavailable"
        assert metric(srv, "modelyard_cache_backend_up", endpoint="shared") == 0

        redis_proc = start_redis(port, tmp_path)  # back, empty: the gateway reconnects by itself
        deadline = time.monotonic() + 30
        while raw(client, "shared", **ask(QUESTION)).headers["x-modelyard-cache"] != "hit":
            assert time.monotonic() < deadline, "the cache did not come back after Redis did"
            time.sleep(0.5)
        assert metric(srv, "modelyard_cache_backend_up", endpoint="shared") == 1
    finally:
        srv.stop()
        redis_proc.kill()
