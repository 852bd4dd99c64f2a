"""Fixtures for the store tests: a migrated SQLite file per test, and the same on Postgres.

``db`` is a fresh SQLite database in ``tmp_path``, migrated to head.
``any_db`` runs a test twice: on SQLite, and on Postgres when
``MODELYARD_TEST_POSTGRES_URL`` names a server (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) and psycopg is
installed (``pip install 'modelyard[postgres]'``); otherwise the Postgres run
is skipped with the reason. Each Postgres test gets its own schema, dropped
afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from modelyard.store import Database

POSTGRES_ENV = "MODELYARD_TEST_POSTGRES_URL"


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'modelyard.db'}"


@pytest.fixture
def db(sqlite_url) -> Iterator[Database]:
    database = Database(sqlite_url)
    database.upgrade()
    yield database
    database.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A Postgres URL whose search_path is a fresh, empty schema (dropped afterwards)."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"Postgres tests need {POSTGRES_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("Postgres tests need psycopg: pip install 'modelyard[postgres]'")
    schema = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        admin.dispose()
        pytest.skip(f"Postgres at {POSTGRES_ENV} is not reachable: {exc}")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request) -> Iterator[Database]:
    """A migrated database: SQLite, then Postgres where one is available."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    database = Database(url)
    database.upgrade()
    yield database
    database.close()
