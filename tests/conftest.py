"""Every test gets its own MODELYARD_HOME, so nothing touches ~/.modelyard."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def modelyard_home(tmp_path, monkeypatch):
    home = tmp_path / "modelyard-home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MODELYARD_ADMIN_KEY", raising=False)
    return home
