"""The store: modelyard's database, its migrations and what lives in it.

- `Database` — one engine (SQLite in WAL mode under MODELYARD_HOME, or
  Postgres via DATABASE_URL), sessions, and `Database.upgrade()` which runs the
  Alembic migrations shipped in this package.
- `KeyStore` / `KeyInfo` — API keys, stored as sha256 digests, verified from
  memory on every request.
- `UsageWriter` — usage records queued in memory and written in batches by a
  background task; `usage_summary()` and `recent_usage()` read them back.

Typical start-up::

    db = Database.from_settings(settings)
    db.upgrade()
    keys = KeyStore(db)
    admin_key, created = keys.ensure_admin_key(settings.admin_key_file)
"""

from __future__ import annotations

from .db import Database
from .keys import KeyInfo, KeyStore, generate_key, hash_key
from .usage import UsageWriter, normalize_record, recent_usage, usage_summary

__all__ = [
    "Database",
    "KeyInfo",
    "KeyStore",
    "UsageWriter",
    "generate_key",
    "hash_key",
    "normalize_record",
    "recent_usage",
    "usage_summary",
]
