"""The tests' OpenAI stub as an upstream process, and hosted catalog cards that point at it.

The stub (``tests/openai_stub.py``) runs as its own process, so its work never
shares this load generator's event loop or the gateway's. It answers at once
unless a request asks otherwise: ``user: "stub:delay_ms=N"`` in the body waits
N ms (the gateway forwards ``user``), and a request under ``/{tier}/v1``
answers ``"Paris is the capital of France."`` as that tier. The cards are
written with the tests' own helpers (``tests/cards.hosted_card``,
``tests/live_gateway.write_catalog``), so a benchmark's hosted model is the
same card a test would make.

    stub = start_stub(log_dir)                       # a `_procs.Child`; stub.root = "http://127.0.0.1:PORT"
    write_stub_cards(home, {"bench-stub": (stub.root + "/v1", (1.0, 2.0))})
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

import _procs  # noqa: E402  (children are stopped at exit)
from _common import free_port  # noqa: E402


class StubProcess(_procs.Child):
    """`tests/openai_stub.py` on a free port; `root` is its URL (append ``/v1``, or ``/{tier}/v1``)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        super().__init__("stub", [sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--port", str(self.port)],
                         log=log, cwd=str(ROOT))

    def tier_url(self, tier: str) -> str:
        """The OpenAI base URL answered as tier `tier` (``/{tier}/v1``)."""
        return f"{self.root}/{tier}/v1"


def start_stub(log_dir: Path, timeout: float = 30.0) -> StubProcess:
    """Start the stub and wait until it answers ``/healthz``."""
    stub = StubProcess(log_dir / "stub.log")
    stub.wait_http(stub.root + "/healthz", timeout=timeout)
    return stub


def write_stub_cards(home: Path, cards: dict[str, tuple[str, tuple[float, float]]], *, name: str = "bench.yaml") -> None:
    """Hosted chat cards in `home`'s user catalog: ``{card_id: (base_url, (usd_in_per_1m, usd_out_per_1m))}``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.cards import hosted_card
    from tests.live_gateway import write_catalog

    write_catalog(home, *(hosted_card(card_id, url, price=price) for card_id, (url, price) in cards.items()), name=name)
