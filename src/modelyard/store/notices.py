"""Change notices: a gateway tells the others on its database that a config change was committed.

Several gateways on one database each hold the endpoints, keys and flows in
memory. After a change is committed through one of them it publishes a
`Notice` (what changed: ``endpoint`` NAME, ``keys``, ``flow`` NAME, and
which gateway made it); every other gateway's listener applies it within
milliseconds — reloads that endpoint's spec and deployments and reconciles,
reloads the keys, syncs the flows::

    notices = open_notices(settings, db, gateway_id)   # None: SQLite without Redis (one gateway)
    await notices.start(apply)                         # apply(notice) on each notice from another gateway
    notices.publish("endpoint", "chat")                # after the commit

Two carriers:

- **PostgreSQL** ``LISTEN``/``NOTIFY`` (the default when ``DATABASE_URL`` is
  PostgreSQL): a psycopg 3 async connection in autocommit mode listens on a
  channel named after the database's current schema, so gateways on the
  same database and schema hear each other and nobody else. ``pg_notify``
  is sent on a pooled connection right after the change committed.
- **Redis** pub/sub on ``modelyard:notices:<name>`` (when
  ``MODELYARD_REDIS_URL`` is set and the database is not PostgreSQL).

A listener whose connection drops reconnects with back-off and then asks
for a full resync (`Notice` kind ``resync``), since notices sent meanwhile
are lost. Gateways also re-read keys, flows and endpoints on a timer
(``MODELYARD_KEYS_RELOAD_S``), the fallback that needs no notices at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text

from .db import Database

log = logging.getLogger(__name__)

#: What a notice may say changed.
NOTICE_KINDS = ("endpoint", "keys", "flow", "catalog", "resync")
#: Back-off bounds of a listener that lost its connection.
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0


@dataclass(frozen=True, slots=True)
class Notice:
    """One committed change: ``kind`` (see `NOTICE_KINDS`), the name it concerns (an endpoint's or a flow's;
    empty for keys), the gateway that made it and when (``time.time()``, to measure how long it took)."""

    kind: str
    name: str = ""
    source: str = ""
    sent_at: float = 0.0

    def encode(self) -> str:
        return orjson.dumps({"k": self.kind, "n": self.name, "s": self.source, "t": self.sent_at}).decode()

    @classmethod
    def decode(cls, payload: str | bytes) -> "Notice | None":
        try:
            data = orjson.loads(payload)
            return cls(str(data["k"]), str(data.get("n") or ""), str(data.get("s") or ""), float(data.get("t") or 0))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed change notice: %r", payload[:200])
            return None


Apply = Callable[[Notice], Awaitable[None]]


class Notices:
    """Publishes this gateway's changes and hands other gateways' changes to ``apply`` (base of both carriers)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._task: asyncio.Task[None] | None = None
        #: set while the listener is connected (tests and `modelyard` status wait on it)
        self.connected = asyncio.Event()

    def publish(self, kind: str, name: str = "") -> None:
        """Tell the other gateways about a committed change. Never raises: they re-read on their timer anyway."""
        if kind not in NOTICE_KINDS:
            raise ValueError(f"unknown notice kind {kind!r}")
        notice = Notice(kind, name, self.source, time.time())
        try:
            self._send(notice.encode())
        except Exception as exc:
            log.warning("could not publish the change notice %s %s (%s: %s); other gateways see it on their "
                        "next reload", kind, name, type(exc).__name__, exc)

    async def start(self, apply: Apply) -> None:
        """Listen in the background until `close()`; reconnects on its own."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(apply), name="modelyard-notices")

    async def _run(self, apply: Apply) -> None:
        delay = RECONNECT_MIN_S
        first = True
        while True:
            try:
                async for payload in self._listen(first):
                    delay = RECONNECT_MIN_S
                    if payload is None:  # (re)connected
                        self.connected.set()
                        if not first:
                            await self._apply(apply, Notice("resync", source="listener", sent_at=time.time()))
                        first = False
                        continue
                    notice = Notice.decode(payload)
                    if notice is not None and notice.source != self.source:
                        await self._apply(apply, notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change notices: connection lost (%s: %s); reconnecting in %.1f s",
                            type(exc).__name__, exc, delay)
            self.connected.clear()
            first = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    @staticmethod
    async def _apply(apply: Apply, notice: Notice) -> None:
        try:
            await apply(notice)
        except Exception:
            log.exception("could not apply the change notice %s %s", notice.kind, notice.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self._close_sender)

    # -- carrier ----------------------------------------------------------------

    def _send(self, payload: str) -> None:
        raise NotImplementedError

    def _listen(self, first: bool) -> Any:
        """An async iterator: None once connected and listening, then each payload received."""
        raise NotImplementedError

    def _close_sender(self) -> None:
        pass


class PostgresNotices(Notices):
    """``LISTEN``/``NOTIFY`` on the gateways' own PostgreSQL database."""

    def __init__(self, db: Database, source: str) -> None:
        super().__init__(source)
        self.db = db
        self._channel: str | None = None

    def channel(self) -> str:
        """``modelyard_`` and the current schema (hashed when long or unusual): the same for every gateway whose
        tables are the same, whatever URL each connects with."""
        if self._channel is None:
            with self.db.engine.connect() as connection:
                schema = connection.execute(text("SELECT current_schema()")).scalar_one() or "public"
            tail = schema if schema.replace("_", "").isalnum() and len(schema) <= 40 and schema.isascii() \
                else hashlib.sha256(schema.encode()).hexdigest()[:16]
            self._channel = f"modelyard_{tail}".lower()
        return self._channel

    def _send(self, payload: str) -> None:
        channel = self.channel()
        with self.db.engine.begin() as connection:
            connection.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})

    def _conninfo(self) -> str:
        # psycopg takes a libpq URL: the SQLAlchemy one without its "+psycopg" (query options such as
        # search_path stay, so the listener sees the same schema).
        return self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def _listen(self, first: bool):
        import psycopg

        channel = await asyncio.to_thread(self.channel)
        connection = await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
        try:
            await connection.execute(f'LISTEN "{channel}"')
            yield None
            async for notify in connection.notifies():
                yield notify.payload
        finally:
            await connection.close()


class RedisNotices(Notices):
    """Pub/sub on one Redis channel, ``modelyard:notices:<name>`` (``name`` keeps two installations apart)."""

    def __init__(self, redis_url: str, source: str, *, name: str = "default") -> None:
        super().__init__(source)
        import redis

        self.redis_url = redis_url
        self.channel = f"modelyard:notices:{name}"
        self._client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)

    def _send(self, payload: str) -> None:
        self._client.publish(self.channel, payload)

    async def _listen(self, first: bool):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            yield None
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is None:
                    await client.ping()  # a dead connection shows up here instead of waiting forever
                    continue
                if message.get("type") == "message":
                    yield message["data"]
        finally:
            await pubsub.aclose()
            await client.aclose()

    def _close_sender(self) -> None:
        self._client.close()


def open_notices(db: Database, source: str, redis_url: str | None) -> Notices | None:
    """The carrier for this gateway: PostgreSQL's own notices, else Redis when set, else None (one gateway)."""
    if db.dialect == "postgresql":
        return PostgresNotices(db, source)
    if redis_url:
        return RedisNotices(redis_url, source, name=hashlib.sha256(str(db.url).encode()).hexdigest()[:12])
    return None
