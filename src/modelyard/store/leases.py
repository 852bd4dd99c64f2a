"""Leases: one owner at a time for a piece of background work, shared through the database.

Several gateways on one database must not all drive the same rollout or run
the same batch or fine-tuning job. Each such piece of work has a *lease*, a
row in ``leases`` named after it (``rollout:7``, ``batch:batch_ab12…``,
``finetune:ftjob-…``) that says which gateway owns it until when::

    leases = LeaseStore(db, owner="gw-host-4242-1a2b3c", ttl_s=15)
    if leases.acquire("batch:batch_ab12"):      # free, expired, or already ours
        ...                                      # run it, renewing every ttl/3
        leases.renew("batch:batch_ab12")         # False: it expired and another gateway took it
        leases.release("batch:batch_ab12")       # done: the next one may take it at once

`acquire` is one atomic upsert (``INSERT … ON CONFLICT DO UPDATE … WHERE``
the row is ours or expired), so two gateways asking at the same moment get
one yes and one no, on PostgreSQL and on SQLite alike. A gateway that dies
stops renewing; its leases expire after ``ttl_s`` and the others' periodic
look for unowned work takes them over, resuming from the durable state the
work keeps anyway (committed batch lines, checkpoints, the rollout's record).

Expiry is judged on each gateway's own clock (UTC), so the machines' clocks
must agree to well within the TTL (NTP does).

`LeaseKeeper` renews the leases a gateway holds in the background and says
when one was lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .db import Database
from .models import Lease, utcnow

log = logging.getLogger(__name__)

#: How long a lease lasts without a renewal (MODELYARD_LEASE_TTL_S).
DEFAULT_TTL_S = 15.0


def gateway_id() -> str:
    """A name for this gateway process, unique across machines and restarts: ``host-pid-random``."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaseStore:
    """Acquire, renew, release and read leases for one owner (a gateway)."""

    def __init__(self, db: Database, owner: str, *, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be above 0")
        self.db = db
        self.owner = owner
        self.ttl_s = ttl_s
        self._now = clock
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    def acquire(self, name: str) -> bool:
        """Take the lease ``name`` if it is free, expired or already ours (then it is extended). True when ours."""
        now = self._now()
        expires = now + timedelta(seconds=self.ttl_s)
        table = Lease.__table__
        statement = self._insert(table).values(name=name, owner=self.owner, expires_at=expires, acquired_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={"owner": self.owner, "expires_at": expires,
                  # a lease taken over starts anew; one renewed keeps when it was first taken
                  "acquired_at": _case_taken_over(table, self.owner, now)},
            where=(table.c.owner == self.owner) | (table.c.expires_at < now),
        )
        with self.db.session() as session:
            session.execute(statement)
            owner = session.scalars(select(Lease.owner).where(Lease.name == name)).one_or_none()
        if owner == self.owner:
            log.debug("lease %s held by %s until %s", name, self.owner, expires.isoformat())
            return True
        return False

    def renew(self, name: str) -> bool:
        """Extend our lease ``name`` by the TTL; False when it is not ours (any more)."""
        expires = self._now() + timedelta(seconds=self.ttl_s)
        with self.db.session() as session:
            changed = session.execute(update(Lease).where(Lease.name == name, Lease.owner == self.owner)
                                      .values(expires_at=expires)).rowcount
        return bool(changed)

    def release(self, name: str) -> None:
        """Give up our lease ``name`` (nothing happens when it is not ours)."""
        with self.db.session() as session:
            session.execute(delete(Lease).where(Lease.name == name, Lease.owner == self.owner))

    def holder(self, name: str) -> tuple[str, datetime] | None:
        """Who holds ``name`` and until when, or None when nobody does (an expired lease counts as free)."""
        with self.db.session() as session:
            row = session.execute(select(Lease.owner, Lease.expires_at).where(Lease.name == name)).one_or_none()
        if row is None or row[1] < self._now():
            return None
        return row[0], row[1]


def _case_taken_over(table: Any, owner: str, now: datetime) -> Any:
    return case((table.c.owner == owner, table.c.acquired_at), else_=now)


class LeaseKeeper:
    """Renews the leases this gateway holds every ``ttl/3`` seconds, in one background task.

    ``hold(name, on_lost)`` adds a lease that was acquired; ``on_lost(name)`` is called (once) when a
    renewal finds it is no longer ours — the work must stop without touching its shared state, since
    another gateway owns it now. ``drop(name)`` stops renewing and releases it.
    """

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self._held: dict[str, Callable[[str], Any]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def owner(self) -> str:
        return self.store.owner

    def held(self, name: str) -> bool:
        return name in self._held

    async def acquire(self, name: str, on_lost: Callable[[str], Any]) -> bool:
        """Acquire ``name`` (off the event loop) and keep it renewed; True when this gateway holds it now."""
        try:
            ok = await asyncio.to_thread(self.store.acquire, name)
        except Exception as exc:  # the database is away: someone else may run it; we try again later
            log.warning("could not acquire lease %s (%s: %s)", name, type(exc).__name__, exc)
            return False
        if ok:
            self._held[name] = on_lost
            self._ensure_task()
        return ok

    async def drop(self, name: str) -> None:
        """Stop renewing ``name`` and release it, so another gateway may take it at once."""
        if self._held.pop(name, None) is None:
            return
        try:
            await asyncio.to_thread(self.store.release, name)
        except Exception as exc:  # it expires by itself
            log.warning("could not release lease %s (%s); it expires in %.0f s", name, exc, self.store.ttl_s)

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew_loop(), name="modelyard-leases")

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.store.ttl_s / 3)
            for name in list(self._held):
                try:
                    ok = await asyncio.to_thread(self.store.renew, name)
                except Exception as exc:  # the database is away: keep working; the lease may still be ours
                    log.warning("could not renew lease %s (%s: %s)", name, type(exc).__name__, exc)
                    continue
                if not ok and name in self._held:
                    callback = self._held.pop(name)
                    log.warning("lease %s was taken over by another gateway; stopping that work here", name)
                    try:
                        result = callback(name)
                        if asyncio.iscoroutine(result):
                            await result
                    except Exception:
                        log.exception("stopping the work of lost lease %s failed", name)

    async def close(self, *, release: bool = True) -> None:
        """Stop renewing; with ``release`` (a clean shutdown) give the leases up so others take over at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        names, self._held = list(self._held), {}
        if release:
            for name in names:
                try:
                    await asyncio.to_thread(self.store.release, name)
                except Exception:
                    pass
