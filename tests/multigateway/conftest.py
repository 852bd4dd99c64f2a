"""Two gateways on one PostgreSQL (a schema of their own) and one Redis, as behind a load balancer.

Both run ``modelyard up`` in their own process with the same MODELYARD_HOME
(the shared folder batch files live in) and DATABASE_URL, a short lease
(MODELYARD_LEASE_TTL_S=3) and a slow fallback timer (MODELYARD_KEYS_RELOAD_S=60),
so what reaches gateway B within seconds came by change notice, not by timer.
Skips with the reason when PostgreSQL (``bash .ci/postgres.sh``,
MODELYARD_TEST_POSTGRES_URL) or redis-server is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.cards import hosted_card
from tests.live_gateway import Server, free_port, write_catalog
from tests.openai_stub import stub_fixture

POSTGRES_ENV = "MODELYARD_TEST_POSTGRES_URL"
#: the stub card's price: $1 / $2 per million tokens; the stub answers 10 prompt + 20 completion tokens
PRICE = (1.0, 2.0)
COST = (10 * PRICE[0] + 20 * PRICE[1]) / 1e6

stub = stub_fixture("module", echo=True)


@pytest.fixture(scope="module")
def postgres_base_url():
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"the multi-gateway tests need PostgreSQL: {POSTGRES_ENV} (`bash .ci/postgres.sh` starts one)")
    from sqlalchemy import create_engine, text

    schema = f"modelyard_mgw_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - no server
        admin.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is not reachable: {exc}")
    from sqlalchemy.engine import make_url

    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    yield url
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    import redis

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
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


def start_gateway(home: Path, name: str, env: dict[str, str]) -> Server:
    """`modelyard up` on a free port with its own log file (several gateways share ``home``)."""
    port = free_port()
    full = dict(os.environ, MODELYARD_HOME=str(home), **env)
    log = home / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "modelyard.cli", "up", "--port", str(port), "--no-defaults"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=full, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway {name} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"gateway {name} not ready: {log.read_text()[-3000:]}")
    return Server(url, home, (home / "admin.key").read_text().strip(), proc, log)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, postgres_base_url, redis_url, stub):
    """Gateways A and B on one database, one Redis and one home, the stub card ``stub-chat`` in the catalog."""
    home = tmp_path_factory.mktemp("mgw") / "home"
    home.mkdir()
    write_catalog(home, hosted_card("stub-chat", f"{stub.root}/v1", price=PRICE))
    env = {"DATABASE_URL": postgres_base_url, "MODELYARD_REDIS_URL": redis_url, "MODELYARD_LEASE_TTL_S": "3",
           "MODELYARD_KEYS_RELOAD_S": "60", "MODELYARD_USAGE_FLUSH_S": "0.1",
           "MODELYARD_BATCH_RETRY_BACKOFF_S": "0.05", "MODELYARD_FINETUNE_ENABLED": "false"}
    a = start_gateway(home, "a", env)
    try:
        b = start_gateway(home, "b", env)
    except Exception:
        a.stop()
        raise
    yield a, b
    for server in (a, b):
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in (a, b):
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
