"""Every test gets its own MODELYARD_HOME, so nothing touches ~/.modelyard; a test module that asks for
`stub` gets the OpenAI stub (tests/openai_stub.py) on a free port."""

from __future__ import annotations

import pytest

from tests.openai_stub import stub_fixture

stub = stub_fixture()


@pytest.fixture(autouse=True)
def modelyard_home(tmp_path, monkeypatch):
    home = tmp_path / "modelyard-home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MODELYARD_ADMIN_KEY", raising=False)
    return home
