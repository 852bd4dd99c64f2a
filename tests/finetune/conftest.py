"""Fixtures for the fine-tuning job tests (see ft_helpers.py)."""

from __future__ import annotations

import pytest

from tests.finetune.ft_helpers import start_gateway
from tests.live_gateway import Server


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Server:
    """A gateway without endpoints whose fine-tuning jobs run the fake worker."""
    srv = start_gateway(tmp_path_factory.mktemp("finetune") / "home")
    yield srv
    srv.stop()
