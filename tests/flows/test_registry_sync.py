"""The flow registry's periodic sync with the database never drops a flow that is being applied."""

from __future__ import annotations

import asyncio
import threading

from modelyard.serving.flows import FlowRegistry
from modelyard.store import Database
from modelyard.store.flows import FlowStore

DAG = """
inputs:
  question: {type: string}
outputs:
  answer: {type: string, reference: "${ask.output}"}
nodes:
- name: ask
  type: llm
  source: {type: inline, content: "user:\\n{{question}}"}
  inputs: {endpoint: small, question: "${inputs.question}"}
"""


class SlowVersions(FlowStore):
    """`versions` reads the database, then holds its answer until `go` is set: an apply can finish meanwhile."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.read = threading.Event()
        self.go = threading.Event()
        self.slow = True

    def versions(self) -> dict[str, int]:
        found = super().versions()
        if self.slow:
            self.slow = False
            self.read.set()
            self.go.wait(10)
        return found


def test_a_flow_applied_while_the_registry_syncs_stays_served(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'modelyard.db'}")
    db.upgrade()
    store = SlowVersions(db)
    registry = FlowRegistry(store, tmp_path / "flows", endpoint_exists=lambda name: name == "small")

    async def main() -> None:
        sync = asyncio.create_task(registry.sync())
        await asyncio.to_thread(store.read.wait, 10)  # the sync has read the stored versions: no flows yet
        apply = asyncio.create_task(registry.apply("ask", DAG, {}))
        await asyncio.sleep(0.3)  # the apply runs as far as it may while the sync holds its answer
        store.go.set()
        await asyncio.gather(sync, apply)
        assert registry.get("ask") is not None, "the sync dropped the flow that was applied meanwhile"
        await registry.sync()
        assert [f.name for f in registry.all()] == ["ask"] and registry.get("ask").version == 1
        await registry.close()

    try:
        asyncio.run(main())
    finally:
        db.close()
