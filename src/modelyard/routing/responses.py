"""What a router endpoint answered, readable at ``GET /v1/responses/{id}``.

Every routed answer is logged: the request, the tier that answered and the
text. A speculative check or a feedback escalation may later replace the
text with a stronger tier's; the latest answer and whether it was corrected
are what ``GET /v1/responses/{id}`` shows.

Writes are off the request path: answers wait in memory (where a rating
that arrives at once finds them) and a background task stores them in
batches; `close()` stores the rest.

Memory is bounded whatever clients send: the recent answers kept for a quick
read-back hold at most `RECENT` rows and `RECENT_BYTES` of text; a request
larger than `MAX_KEPT_REQUEST_BYTES` is logged without its body (its prompt
cut to `MAX_KEPT_PROMPT_CHARS`), so it cannot be escalated later; and while
the database is unavailable at most `MAX_QUEUED` answers wait to be stored
(later ones are dropped and counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

import orjson

from ..wire import AnyRequest, prompt_text
from ..store.models import utcnow
from ..store.responses import UNFINISHED

log = logging.getLogger(__name__)

#: answers kept in memory after they are stored, for a quick read-back: at most this many ...
RECENT = 2048
#: ... holding at most this much request and answer text
RECENT_BYTES = 64 * 1024 * 1024
#: a request larger than this (as JSON) is logged without its body
MAX_KEPT_REQUEST_BYTES = 1024 * 1024
MAX_KEPT_PROMPT_CHARS = 64 * 1024
#: answers waiting for the database, at most
MAX_QUEUED = 20_000
#: a check or escalation not updated for this long was left running by a gateway that died
STALE_AFTER = timedelta(minutes=15)
#: what stands in for a request body that was too large to keep
OMITTED = "_omitted_bytes"


def kept_request(row: dict[str, Any]) -> bool:
    """Whether the logged answer kept its request (and so can be asked again of another tier)."""
    return OMITTED not in row["request"]


class ResponseLog:
    def __init__(self, store: Any, *, flush_interval: float = 0.25) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_bytes = 0
        self._sizes: dict[str, int] = {}
        self._queue: list[dict[str, Any]] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # an update waits for an insert in progress

    async def start(self) -> None:
        if self._task is None:
            try:
                stale = await asyncio.to_thread(self.store.fail_unfinished, STALE_AFTER)
                if stale:
                    log.warning("%d routed answers were left checking or improving by a gateway that stopped; "
                                "marked failed", stale)
            except Exception:
                log.exception("could not look for unfinished checks of routed answers")
            self._task = asyncio.create_task(self._run())

    async def interrupted(self) -> None:
        """The gateway is stopping and its checks and escalations were cancelled: say so on their answers
        (``check_failed``/``improve_failed``) rather than leaving them ``checking``/``improving`` forever."""
        for ident, row in list(self._recent.items()):
            failed = UNFINISHED.get(row["status"])
            if failed is not None:
                await self.change(ident, status=failed)

    def answered(self, response_id: str | None, *, endpoint: str, key_id: int | None, request: AnyRequest,
                 kind: str, tier: str, tier_index: int, text: str, checking: bool) -> None:
        """Log the answer a call sent (its id is the response body's ``id``); ``checking``: a speculative
        check of it is under way."""
        if not response_id:
            return
        now = utcnow()
        body = request.model_dump(mode="json", exclude_none=True)
        size = len(orjson.dumps(body))
        prompt = prompt_text(request)
        if size > MAX_KEPT_REQUEST_BYTES:
            body = {"model": body.get("model"), OMITTED: size}
            prompt = prompt[:MAX_KEPT_PROMPT_CHARS]
            size = 0
        row = {
            "id": response_id[:64], "endpoint": endpoint, "key_id": key_id,
            "kind": kind, "request": body,
            "prompt": prompt, "tier": tier, "tier_index": tier_index, "content": text,
            "status": "checking" if checking else "answered",
            "latest_tier": None, "latest_content": None, "similarity": None, "created_at": now, "updated_at": now,
        }
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("%d routed answers wait for the database; %d dropped so far", len(self._queue), self.dropped)
            return
        self._remember(row, size + len(prompt) + len(text))
        self._queue.append(row)
        if len(self._queue) >= 100:
            self._wake.set()

    def _remember(self, row: dict[str, Any], size: int) -> None:
        ident = row["id"]
        self._recent_bytes += size - self._sizes.get(ident, 0)
        self._sizes[ident] = size
        self._recent[ident] = row
        self._recent.move_to_end(ident)
        while len(self._recent) > 1 and (len(self._recent) > RECENT or self._recent_bytes > RECENT_BYTES):
            old, _ = self._recent.popitem(last=False)
            self._recent_bytes -= self._sizes.pop(old, 0)

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
