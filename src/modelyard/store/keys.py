"""API keys: created once, stored as a sha256 digest, checked in one dict lookup.

A key looks like ``my-`` followed by 40 url-safe random characters (240 bits
from `secrets`). The plain key is shown exactly once, when it is created; the
database keeps only its sha256 hex digest and its first 8 characters (the
*prefix*, so a person can tell keys apart in a list).

`KeyStore.verify()` runs on every request, so it never touches the database:
the store keeps an in-memory dict ``sha256 -> KeyInfo`` of the active keys,
loaded when it is constructed and kept current by `create()` and `revoke()`.
Verifying costs one sha256, one dict lookup and one constant-time comparison
(`hmac.compare_digest`) of the stored digest. Keys created or revoked by
another process (a second server, the CLI writing to the database directly)
are seen after `reload()`, which a running gateway calls when another gateway's change notice
arrives (`store.notices`; `on_change` publishes this store's own) and every few seconds
(``MODELYARD_KEYS_RELOAD_S``) as the fallback. `is_active()` answers whether a key id is still
active (a batch job checks its owner's key before each request).

The admin key lives in a file (``MODELYARD_HOME/admin.key``, mode 0600) that
`ensure_admin_key()` creates on first start; the file is the authority, so a
key found there is always (re)registered as an active admin key. To rotate the
admin key, revoke it and delete the file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from .db import Database
from .models import ApiKey, utcnow

log = logging.getLogger(__name__)

#: Every generated key starts with this.
KEY_PREFIX = "my-"
#: How many leading characters of a key are kept for display.
DISPLAY_PREFIX_LENGTH = 8
#: ``secrets.token_urlsafe(30)`` is exactly 40 characters.
_TOKEN_BYTES = 30


def generate_key() -> str:
    """A new plain key: ``my-`` + 40 url-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_key(plain: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    """What is known about a key, without the key itself.

    ``endpoint`` is the one endpoint the key may call, or None for every
    endpoint. Admin keys may call every endpoint and the management API.
    """

    id: int
    name: str
    endpoint: str | None
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked: bool = False

    def allows(self, endpoint_name: str) -> bool:
        """Whether this key may call ``endpoint_name``."""
        if self.revoked:
            return False
        return self.is_admin or self.endpoint is None or self.endpoint == endpoint_name

    @classmethod
    def from_row(cls, row: ApiKey) -> "KeyInfo":
        return cls(
            id=row.id,
            name=row.name,
            endpoint=row.endpoint_name,
            prefix=row.prefix,
            is_admin=row.is_admin,
            created_at=row.created_at,
            revoked=row.revoked_at is not None,
        )


class KeyStore:
    """Create, list, revoke and verify API keys.

    The in-memory index is replaced as a whole on every change (never mutated
    in place), so `verify()` may run on any thread without a lock.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        #: sha256 hex -> (the digest as stored in the database, its KeyInfo), active keys only
        self._active: dict[str, tuple[str, KeyInfo]] = {}
        self._active_ids: frozenset[int] = frozenset()
        #: local changes to the index so far, so that `reload` knows when its read is out of date
        self._changes = 0
        self._change_lock = threading.Lock()
        #: called after a key was created or revoked here (the gateway publishes a change notice)
        self.on_change: Callable[[], None] = lambda: None
        self.reload()

    def reload(self) -> None:
        """Re-read the active keys from the database (after another process changed them).

        A key created or revoked here while the read was under way would be undone by what the read found
        (a new key refused, a revoked one accepted until the next reload), so the read is repeated when
        this process changed a key meanwhile."""
        for _ in range(5):
            changes = self._changes
            with self.db.session() as session:
                rows = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))).all()
            active = {row.key_hash: (row.key_hash, KeyInfo.from_row(row)) for row in rows}
            with self._change_lock:
                if self._changes == changes:
                    self._set_active(active)
                    break
        else:
            log.warning("api keys changed here during each of 5 reloads; keeping this process's keys until the "
                        "next reload")
            return
        log.debug("loaded %d active api keys", len(self._active))

    # -- the hot path -------------------------------------------------------

    def verify(self, plain: str) -> KeyInfo | None:
        """The active key ``plain`` names, or None when it is unknown or revoked."""
        if not plain:
            return None
        digest = hash_key(plain)
        entry = self._active.get(digest)
        if entry is None:
            return None
        stored, info = entry
        # The dict lookup found the bucket; the final equality check is done in constant time.
        return info if hmac.compare_digest(stored, digest) else None

    def is_active(self, key_id: int) -> bool:
        """Whether the key with this id exists and is not revoked (as of the last reload)."""
        return key_id in self._active_ids

    # -- management ---------------------------------------------------------

    def create(self, name: str, endpoint: str | None = None, *, is_admin: bool = False) -> tuple[str, KeyInfo]:
        """Make a new key; return the plain key (shown once, never stored) and its info."""
        plain = generate_key()
        info = self._insert(plain, name=name, endpoint=endpoint, is_admin=is_admin)
        log.info("api key %d (%s, %s...) created for %s", info.id, name, info.prefix, endpoint or "every endpoint")
        self.on_change()
        return plain, info

    def list(self) -> list[KeyInfo]:
        """Every key, revoked ones included, oldest first. Never the plain keys."""
        with self.db.session() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
        return [KeyInfo.from_row(row) for row in rows]

    def get(self, key_id: int) -> KeyInfo | None:
        """The key with this id, or None."""
        with self.db.session() as session:
            row = session.get(ApiKey, key_id)
        return None if row is None else KeyInfo.from_row(row)

    def revoke(self, key_id: int) -> bool:
        """Revoke a key; it stops verifying at once. True when the key exists (revoking twice is fine)."""
        with self.db.session() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            key_hash = row.key_hash
        with self._change_lock:
            active = dict(self._active)
            active.pop(key_hash, None)
            self._set_active(active)
            self._changes += 1
        log.info("api key %d revoked", key_id)
        self.on_change()
        return True

    # -- the admin key ------------------------------------------------------

    def ensure_admin_key(self, path: Path) -> tuple[str, bool]:
        """Return the admin key from ``path``, creating the file (mode 0600) on first use.

        Returns ``(key, created)``: ``created`` is True when a new key was
        generated and written. A key read from the file is registered as an
        active admin key if the database does not already hold it that way.
        """
        path = Path(path)
        plain = self._read_key_file(path)
        created = False
        if plain is None:
            plain, created = self._write_key_file(path)
        self._register_admin(plain)
        return plain, created

    def _read_key_file(self, path: Path) -> str | None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("admin key file %s is readable by others (mode %o); chmod 600 it", path, mode)
        if not text:
            log.warning("admin key file %s is empty; writing a new key", path)
            path.unlink()
            return None
        return text

    def _write_key_file(self, path: Path) -> tuple[str, bool]:
        """Create the file with a new key, or read the one a concurrent process just wrote."""
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            existing = self._read_key_file(path)
            if existing is not None:
                return existing, False
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(plain + "\n")
        log.info("wrote a new admin key to %s", path)
        return plain, True

    def _register_admin(self, plain: str) -> None:
        digest = hash_key(plain)
        with self.db.session() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
            if row is None:
                row = ApiKey(name="admin", prefix=plain[:DISPLAY_PREFIX_LENGTH], key_hash=digest, is_admin=True)
                session.add(row)
            else:
                if row.revoked_at is not None:
                    log.warning("admin key %d was revoked but is still in the key file; reactivating it", row.id)
                row.is_admin = True
                row.revoked_at = None
            session.flush()
            info = KeyInfo.from_row(row)
        self._remember(digest, info)

    # -- internals ----------------------------------------------------------

    def _insert(self, plain: str, *, name: str, endpoint: str | None, is_admin: bool) -> KeyInfo:
        digest = hash_key(plain)
        with self.db.session() as session:
            row = ApiKey(
                name=name,
                endpoint_name=endpoint,
                prefix=plain[:DISPLAY_PREFIX_LENGTH],
                key_hash=digest,
                is_admin=is_admin,
            )
            session.add(row)
            session.flush()
            info = KeyInfo.from_row(row)
        self._remember(digest, info)
        return info

    def _remember(self, digest: str, info: KeyInfo) -> None:
        with self._change_lock:
            active = dict(self._active)
            active[digest] = (digest, info)
            self._set_active(active)
            self._changes += 1

    def _set_active(self, active: dict[str, tuple[str, KeyInfo]]) -> None:
        self._active = active
        self._active_ids = frozenset(info.id for _, info in active.values())
