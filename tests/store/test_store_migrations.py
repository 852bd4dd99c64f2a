"""The schema comes from Alembic migrations, matches models.py, and SQLite runs in WAL mode."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from modelyard.settings import Settings
from modelyard.serving.config import ConfigStore
from modelyard.store import Database
from modelyard.store.db import MIGRATIONS_DIR
from modelyard.store.models import Base, Endpoint
from modelyard.serving.spec import EndpointSpec

TABLES = {"endpoints", "deployments", "api_keys", "usage_records", "flows"}


def _schema_diffs(db: Database) -> list:
    with db.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def _head() -> str:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def test_upgrade_creates_the_tables_in_a_fresh_sqlite_file(tmp_path):
    path = tmp_path / "fresh.db"
    db = Database(f"sqlite:///{path}")
    assert db.current_revision() is None

    db.upgrade()

    assert path.exists()
    assert TABLES <= set(db.table_names())
    assert db.current_revision() == _head() == "0009"
    db.close()


def test_sqlite_connections_use_wal_and_the_configured_pragmas(db):
    with db.engine.connect() as connection:
        def pragma(name: str):
            return connection.execute(text(f"PRAGMA {name}")).scalar()

        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("busy_timeout") == 30000
        assert pragma("foreign_keys") == 1


def test_wal_mode_is_recorded_in_the_database_file(db, tmp_path):
    db.close()
    # A plain sqlite3 connection, without modelyard's connect hook, still sees WAL.
    with sqlite3.connect(tmp_path / "modelyard.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_upgrading_twice_is_harmless_and_keeps_data(any_db):
    ConfigStore(any_db).save_endpoint(EndpointSpec(name="chat"))

    any_db.upgrade()
    any_db.upgrade()

    assert any_db.current_revision() == _head()
    assert ConfigStore(any_db).get_endpoint("chat") == EndpointSpec(name="chat")


def test_migrated_schema_matches_the_models(any_db):
    assert _schema_diffs(any_db) == []


def test_schema_comparison_notices_drift(db):
    # Guard for the test above: the comparison really looks at indexes and columns.
    with db.engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_usage_records_created_at"))
    diffs = _schema_diffs(db)
    assert any(diff[0] == "add_index" and diff[1].name == "ix_usage_records_created_at" for diff in diffs)


def test_downgrade_to_base_removes_every_table(any_db):
    config = any_db.alembic_config()
    with any_db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    assert not TABLES & set(inspect(any_db.engine).get_table_names())
    any_db.upgrade()  # and back up again
    assert TABLES <= set(any_db.table_names())


def test_from_settings_creates_home_and_keeps_the_database_there(tmp_path, monkeypatch):
    home = tmp_path / "home" / ".modelyard"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)

    db = Database.from_settings(Settings.from_env())
    db.upgrade()

    assert (home / "modelyard.db").is_file()
    assert db.dialect == "sqlite"
    db.close()


def test_sessions_commit_on_success_and_roll_back_on_error(db):
    with db.session() as session:
        session.add(Endpoint(name="kept", spec={"name": "kept"}))
    try:
        with db.session() as session:
            session.add(Endpoint(name="lost", spec={"name": "lost"}))
            raise RuntimeError("boom")
    except RuntimeError:
        pass

    with db.session() as session:
        names = session.scalars(select(Endpoint.name)).all()
    assert names == ["kept"]


def test_in_memory_sqlite_is_one_database_for_every_thread():
    import threading

    db = Database("sqlite://")
    db.upgrade()
    seen: list[set[str]] = []
    thread = threading.Thread(target=lambda: seen.append(set(db.table_names())))
    thread.start()
    thread.join()
    assert TABLES <= seen[0]
    db.close()


def test_processes_starting_together_migrate_one_after_the_other(sqlite_url):
    # Several server workers may call upgrade() on a fresh file at the same moment.
    from concurrent.futures import ThreadPoolExecutor

    def start() -> str | None:
        db = Database(sqlite_url)
        try:
            db.upgrade()
            return db.current_revision()
        finally:
            db.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        revisions = list(pool.map(lambda _: start(), range(6)))
    assert revisions == [_head()] * 6



# One process of the gateway, an instance or the CLI, told when to open which fresh file: all of them open it
# at the same moment, migrate it, and open one more connection (each applies the PRAGMAs) while the others
# are still at it. Answers the revision it sees, or the error.
_STARTING_PROCESS = """
import sys
from modelyard.store import Database
print("ready", flush=True)
for line in sys.stdin:
    try:
        db = Database(line.strip())
        db.upgrade()
        Database(line.strip()).close()
        print(db.current_revision(), flush=True)
        db.close()
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], flush=True)
"""

# Keeps one core busy for at most two minutes, like another job on a shared machine.
_CPU_BURNER = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass\n"


def test_processes_started_together_on_a_busy_machine_never_see_database_is_locked(tmp_path):
    rounds, processes = 12, 6
    burners = [subprocess.Popen([sys.executable, "-c", _CPU_BURNER]) for _ in range(2)]
    starters = [subprocess.Popen([sys.executable, "-c", _STARTING_PROCESS], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    seen: list[list[str]] = []
    try:
        for process in starters:
            assert process.stdout.readline().strip() == "ready"
        for round_ in range(rounds):
            url = f"sqlite:///{tmp_path / f'round-{round_}.db'}"
            for process in starters:
                process.stdin.write(url + "\n")
                process.stdin.flush()
            seen.append([process.stdout.readline().strip() for process in starters])
    finally:
        for process in burners + starters:
            process.kill()
            process.wait()

    assert seen == [[_head()] * processes] * rounds


# A migration is never edited once it has shipped: a database stamped at its revision would never see the edit.
# A change goes into a new migration; add the new file's sha256 here when it ships.
SHIPPED_MIGRATIONS = {
    "0001_initial.py": "276fa217d7aa6ceb7cc604b6086a169b369352f741b0364f13e3856cf3e2f532",
    "0002_rollouts.py": "38cd7a78bffba84f66afca5e332d492ccceddda7dcd791d4b21645fa7f9f8ecb",
    "0003_batch.py": "7550f369cbae4df3b363872712abe0afdb1b3bfcfe09219dcf6292e23d47902f",
    "0004_router.py": "e754bbdc6fc82daa1d62919f19974bdff2892efe0e139b9f6e9773cda6861250",
    "0005_flows.py": "dac564e0e8480e1fa5a7b2f0e8d6d831f14bc7fb2563b74dc471c78134ca43d5",
    "0006_fine_tuning.py": "8826d713c139a7d86696c134a71312e8de1b3c1058002b42da17a44495f14146",
    "0007_deployment_events.py": "d85fc4b44b59f7caa6252e236dfefac44d444d20530c377a2efe74db66b3d97a",
}


def test_shipped_migrations_are_never_edited_or_removed():
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (MIGRATIONS_DIR / "versions").glob("*.py")}
    assert {name: files.get(name) for name in SHIPPED_MIGRATIONS} == SHIPPED_MIGRATIONS
    unlisted = sorted(set(files) - set(SHIPPED_MIGRATIONS) - {"__init__.py"})
    assert unlisted == [] or max(unlisted) > max(SHIPPED_MIGRATIONS), f"new migrations must come last: {unlisted}"
