"""A real gateway for the server tests: `modelyard up` in a subprocess, the
embedded default models behind it, driven by the official `openai` client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live_gateway import Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One gateway with the default endpoints for the whole session (1 MiB body limit)."""
    srv = start_server(tmp_path_factory.mktemp("gateway") / "home", extra_env={"MODELYARD_MAX_BODY_BYTES": str(1 << 20)})
    yield srv
    srv.stop()


@pytest.fixture
def start_gateway(tmp_path):
    """Start extra gateways for one test; they are stopped after it."""
    started: list[Server] = []

    def start(home: Path | None = None, *args: str, **kwargs) -> Server:
        srv = start_server(home or tmp_path / f"home{len(started)}", *args, **kwargs)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
