"""The database handle: one engine, sessions, and migrations run in code.

`Database` wraps a SQLAlchemy engine for either backend modelyard supports:

- **SQLite** (the default, ``MODELYARD_HOME/modelyard.db``). Every new
  connection is switched to WAL mode with ``synchronous=NORMAL`` (readers never
  block the writer, and a commit does not wait for an fsync of the main file),
  gets a 30 s ``busy_timeout`` (a second process waits for the write lock
  instead of failing at once) and ``foreign_keys=ON``. SQLite answers
  "database is locked" at once, without waiting, when waiting could deadlock
  (switching a new file to WAL while another process holds its lock is the
  common case when processes start together); those PRAGMAs are tried again
  with jittered backoff for up to `SQLITE_LOCK_PATIENCE_S`.
- **Postgres**, when ``DATABASE_URL`` is set, e.g.
  ``postgresql+psycopg://user:pass@host/modelyard`` (``pip install
  'modelyard[postgres]'``).

The schema is owned by Alembic. `Database.upgrade()` builds the Alembic
configuration in code, points it at the migrations shipped inside this
package (so it works from an installed wheel, not only from a checkout) and
hands Alembic this database's own connection::

    db = Database.from_settings(Settings.from_env())
    db.upgrade()
    with db.session() as session:
        session.add(...)
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tenacity
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

    from ..settings import Settings

log = logging.getLogger(__name__)

#: The Alembic script directory that ships with the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: PRAGMAs applied to every new SQLite connection, in order.
SQLITE_PRAGMAS = (
    # The busy timeout comes first: switching to WAL needs a lock, and without a timeout a process that
    # opens the file while another migrates it fails at once with "database is locked".
    "PRAGMA busy_timeout=30000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

#: How long a new connection keeps trying its PRAGMAs while other processes hold the file's lock.
SQLITE_LOCK_PATIENCE_S = 60.0


def _is_lock_contention(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in ("database is locked", "database is busy", "database table is locked"))


# SQLite's busy handler is skipped where waiting could deadlock, so "locked" can come back at once:
# back off with jitter (processes that collided once should not collide again) and try again.
_retry_while_locked = tenacity.retry(
    retry=tenacity.retry_if_exception(_is_lock_contention),
    wait=tenacity.wait_random_exponential(multiplier=0.005, max=0.5),
    stop=tenacity.stop_after_delay(SQLITE_LOCK_PATIENCE_S),
    before_sleep=lambda state: log.debug("SQLite file is locked (try %d); waiting", state.attempt_number),
    reraise=True,
)


class Database:
    """An engine plus a session factory for one database URL.

    ``url`` is any SQLAlchemy URL; ``sqlite:///path/to/file.db`` and
    ``postgresql+psycopg://...`` are the ones modelyard is tested with.
    ``sqlite://`` (in memory) works too and keeps one shared connection, which
    is handy in tests of other packages.

    The object is safe to share between threads: sessions come from a pool.
    """

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.url: URL = make_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            database = self.url.database
            if not database or database == ":memory:":
                # One connection shared by every thread, or each would see its own empty database.
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _apply_sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        """Open the database named by ``settings.database_url``, creating MODELYARD_HOME first."""
        settings.ensure_home()
        return cls(settings.database_url)

    # -- properties ---------------------------------------------------------

    @property
    def dialect(self) -> str:
        """The backend's name: ``"sqlite"`` or ``"postgresql"``."""
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    # -- sessions -----------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error.

        Objects stay usable after the block (``expire_on_commit=False``)::

            with db.session() as s:
                s.add(Endpoint(name="chat", spec={...}))
        """
        with self._sessions() as session, session.begin():
            yield session

    # -- migrations ---------------------------------------------------------

    def alembic_config(self) -> Config:
        """An Alembic `Config` for this database, built in code (no alembic.ini needed).

        ``alembic.command.*`` functions accept it directly, e.g.
        ``command.current(db.alembic_config())``. To draft a new migration
        (then edit it by hand; shipped migrations are never changed)::

            command.revision(db.alembic_config(), message="add x", autogenerate=True, rev_id="0002")
        """
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        # ConfigParser interpolates '%', which URL-escaped passwords may contain.
        url = self.url.render_as_string(hide_password=False).replace("%", "%%")
        config.set_main_option("sqlalchemy.url", url)
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Run the migrations up to ``revision`` (default: the newest). Safe to repeat."""
        from alembic import command

        config = self.alembic_config()
        with self.engine.begin() as connection:
            if self.is_sqlite:
                # Take the write lock before reading the current revision, so that
                # processes starting together migrate one after the other instead of
                # all trying to create the same tables.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        log.debug("database %r upgraded to %s", self, revision)

    def current_revision(self) -> str | None:
        """The revision the database is at, or None before the first `upgrade()`."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def table_names(self) -> list[str]:
        """The tables that exist in the database (for diagnostics and tests)."""
        return sorted(inspect(self.engine).get_table_names())

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Close every pooled connection. The object may be used again afterwards."""
        self.engine.dispose()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _apply_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """Connect-event hook: WAL, relaxed fsync, a busy timeout and foreign keys on every connection."""
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            _retry_while_locked(cursor.execute)(pragma)
    finally:
        cursor.close()
