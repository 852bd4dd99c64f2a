"""The endpoints' periodic sync with the database never drops an endpoint created through this gateway."""

from __future__ import annotations

import asyncio
import threading

from modelyard.catalog import Catalog
from modelyard.runtime.local import LocalRuntime
from modelyard.serving.config import ConfigStore
from modelyard.serving.endpoints import Endpoints
from modelyard.serving.spec import EndpointSpec
from modelyard.store import Database


class SlowList(ConfigStore):
    """`list_endpoints` reads the database, then holds its answer until `go` is set: a create can finish meanwhile."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.read = threading.Event()
        self.go = threading.Event()
        self.slow = True

    def list_endpoints(self) -> list[EndpointSpec]:
        found = super().list_endpoints()
        if self.slow:
            self.slow = False
            self.read.set()
            self.go.wait(10)
        return found


def test_an_endpoint_created_while_a_sync_reads_is_not_taken_for_deleted(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'modelyard.db'}")
    db.upgrade()
    store = SlowList(db)
    endpoints = Endpoints(store, Catalog([]), LocalRuntime(tmp_path / "logs"))

    async def main() -> None:
        sync = asyncio.create_task(endpoints.sync())
        await asyncio.to_thread(store.read.wait, 10)  # the sync has read the stored endpoints: none yet
        await endpoints.create_endpoint(EndpointSpec(name="fresh"))
        store.go.set()
        await sync
        assert [e.name for e in endpoints.all()] == ["fresh"], "the sync dropped the endpoint created meanwhile"
        await endpoints.sync()  # the next sync reads it back from the database
        assert endpoints.get("fresh").name == "fresh"

    asyncio.run(main())
