"""Fixtures for the batch tests: the OpenAI stub, keeping the bodies it is sent, and a gateway whose
deployments call it (see batch_helpers.py)."""

from __future__ import annotations


import pytest

from tests.batch.batch_helpers import GATEWAY_ENV, make_endpoint, stub_catalog
from tests.live_gateway import Server, start_server
from tests.openai_stub import stub_fixture

stub = stub_fixture(record=True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub) -> Server:
    """A gateway without default endpoints: `chat` (stub-chat, 4 at a time) and `embed` (stub-embed)."""
    home = tmp_path_factory.mktemp("batch") / "home"
    stub_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults", extra_env=GATEWAY_ENV)
    make_endpoint(srv, "chat", ("blue", "stub-chat"), ("green", "stub-chat"), concurrency=4,
                  traffic={"blue": 100})
    make_endpoint(srv, "embed", ("minilm", "stub-embed"))
    yield srv
    srv.stop()
