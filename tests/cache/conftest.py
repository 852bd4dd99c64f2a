"""Fixtures for the cache tests: a throw-away redis-server, the OpenAI stub,
and a gateway whose catalog has a hosted card pointing at the stub."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.live_gateway import free_port
from tests.cache.cache_helpers import stub_gateway
from tests.openai_stub import stub_fixture


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A redis-server of its own on 127.0.0.1 (a free port, no persistence), for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; `make test` installs it)")
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_db(redis_url):
    """The shared redis-server, emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield redis_url
    client.close()


#: The OpenAI stub answering "answer to: <question>", for the whole session.
stub = stub_fixture("session", echo=True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub):
    """One gateway for a module's tests, no default endpoints, the stub card in its catalog."""
    srv = stub_gateway(tmp_path_factory.mktemp("cache-gw") / "home", stub)
    yield srv
    srv.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
