"""What a router endpoint answered, readable at ``GET /v1/responses/{id}``.

Every routed answer is logged: the request, the tier that answered and the
text. A speculative check or a feedback escalation may later replace the
text with a stronger tier's; the latest answer and whether it was corrected
are what ``GET /v1/responses/{id}`` shows.

Writes are off the request path: answers wait in memory (where a rating
that arrives at once finds them) and a background task stores them in
batches; `close()` stores the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import datetime
from typing import Any

from ..wire import AnyRequest, prompt_text
from ..store.models import utcnow

log = logging.getLogger(__name__)

#: answers kept in memory after they are stored, for a quick read-back
RECENT = 2048


class ResponseLog:
    def __init__(self, store: Any, *, flush_interval: float = 0.25) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._queue: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # an update waits for an insert in progress

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def answered(self, response_id: str | None, *, endpoint: str, key_id: int | None, request: AnyRequest,
                 kind: str, tier: str, tier_index: int, text: str, checking: bool) -> None:
        """Log the answer a call sent (its id is the response body's ``id``); ``checking``: a speculative
        check of it is under way."""
        if not response_id:
            return
        now = utcnow()
        row = {
            "id": response_id[:64], "endpoint": endpoint, "key_id": key_id,
            "kind": kind, "request": request.model_dump(mode="json", exclude_none=True),
            "prompt": prompt_text(request), "tier": tier, "tier_index": tier_index, "content": text,
            "status": "checking" if checking else "answered",
            "latest_tier": None, "latest_content": None, "similarity": None, "created_at": now, "updated_at": now,
        }
        self._remember(row)
        self._queue.append(row)
        if len(self._queue) >= 100:
            self._wake.set()

    def _remember(self, row: dict[str, Any]) -> None:
        self._recent[row["id"]] = row
        self._recent.move_to_end(row["id"])
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    async def get(self, response_id: str) -> dict[str, Any] | None:
        row = self._recent.get(response_id)
        if row is not None:
            return dict(row)
        return await asyncio.to_thread(self.store.get, response_id)

    async def change(self, response_id: str, **values: Any) -> None:
        """Update a logged answer (in memory at once, in the database in order after its insert)."""
        row = self._recent.get(response_id)
        if row is not None:
            row.update(values, updated_at=utcnow())
            if any(r is row for r in self._queue):
                return  # still waiting to be inserted: the insert carries the change
        await self.flush()
        async with self._lock:
            await asyncio.to_thread(self.store.update, response_id, **values)

    async def checked(self, response_id: str | None, tier: Any, corrected_text: str | None, similarity: float | None,
                      *, failed: str | None = None) -> None:
        """The speculative check's verdict."""
        if not response_id:
            return
        if failed is not None:
            await self.change(response_id, status="check_failed")
        elif corrected_text is not None:
            await self.change(response_id, status="corrected", latest_tier=tier.name, latest_content=corrected_text,
                              similarity=similarity)
        else:
            await self.change(response_id, status="confirmed", similarity=similarity)

    async def flush(self) -> None:
        async with self._lock:
            if not self._queue:
                return
            rows, self._queue = self._queue, []
            try:
                await asyncio.to_thread(self.store.save_many, [dict(r) for r in rows])
            except Exception:
                log.exception("could not store %d routed answers; will retry", len(rows))
                self._queue[:0] = rows

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()


def describe(row: dict[str, Any]) -> dict[str, Any]:
    """The ``GET /v1/responses/{id}`` body."""
    corrected = row["latest_content"] is not None
    created: datetime = row["created_at"]
    return {
        "id": row["id"],
        "object": "modelyard.response",
        "created": int(created.timestamp()),
        "endpoint": row["endpoint"],
        "status": row["status"],
        "corrected": corrected,
        "tier": row["latest_tier"] if corrected else row["tier"],
        "content": row["latest_content"] if corrected else row["content"],
        "original": {"tier": row["tier"], "content": row["content"]},
        "similarity": row["similarity"],
    }
