"""API keys: shown once, stored only as sha256, verified from memory, scoped and revocable."""

from __future__ import annotations

import contextlib
import logging
import re
import stat
import threading

import pytest
from sqlalchemy import select

from modelyard.store import KeyStore, hash_key
from modelyard.store.models import ApiKey

KEY_FORMAT = re.compile(r"^my-[A-Za-z0-9_-]{40}$")


def test_admin_key_file_is_created_private_and_reused(db, tmp_path):
    path = tmp_path / "home" / "admin.key"

    key, created = KeyStore(db).ensure_admin_key(path)

    assert created is True
    assert KEY_FORMAT.match(key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key

    again, created_again = KeyStore(db).ensure_admin_key(path)  # a restart
    assert (again, created_again) == (key, False)
    with db.session() as session:
        admins = session.scalars(select(ApiKey).where(ApiKey.is_admin)).all()
    assert len(admins) == 1


def test_admin_key_from_an_existing_file_is_registered_in_a_new_database(db, tmp_path):
    path = tmp_path / "admin.key"
    path.write_text("my-handwritten-admin-key\n")
    path.chmod(0o600)
    keys = KeyStore(db)

    key, created = keys.ensure_admin_key(path)

    assert (key, created) == ("my-handwritten-admin-key", False)
    info = keys.verify(key)
    assert info is not None and info.is_admin and info.name == "admin"


def test_a_revoked_admin_key_still_in_its_file_is_reactivated(db, tmp_path, caplog):
    path = tmp_path / "admin.key"
    keys = KeyStore(db)
    key, _ = keys.ensure_admin_key(path)
    keys.revoke(keys.verify(key).id)
    assert keys.verify(key) is None

    with caplog.at_level(logging.WARNING, logger="modelyard.store.keys"):
        assert keys.ensure_admin_key(path) == (key, False)

    assert keys.verify(key).is_admin
    assert "reactivating" in caplog.text


def test_an_empty_admin_key_file_gets_a_new_key(db, tmp_path):
    path = tmp_path / "admin.key"
    path.touch(mode=0o600)
    key, created = KeyStore(db).ensure_admin_key(path)
    assert created is True and KEY_FORMAT.match(key)
    assert path.read_text().strip() == key


def test_plain_keys_are_nowhere_in_the_database_files(db, tmp_path):
    keys = KeyStore(db)
    admin, _ = keys.ensure_admin_key(tmp_path / "admin.key")
    user, _ = keys.create("ci", endpoint="chat")

    with db.session() as session:
        stored = set(session.scalars(select(ApiKey.key_hash)).all())
    assert stored == {hash_key(admin), hash_key(user)}

    db.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("modelyard.db")]
    contents = b"".join(p.read_bytes() for p in files)
    assert hash_key(user).encode() in contents  # the check below does look at the data
    for plain in (admin, user):
        assert plain.encode() not in contents


def test_create_returns_the_key_once_and_list_shows_only_prefixes(db):
    keys = KeyStore(db)
    plain, info = keys.create("ci")

    assert KEY_FORMAT.match(plain)
    assert info.prefix == plain[:8] and info.name == "ci" and info.endpoint is None
    assert not info.is_admin and not info.revoked
    assert info.created_at.tzinfo is not None

    listed = keys.list()
    assert listed == [info]
    assert plain not in repr(listed)


def test_verify_accepts_the_right_key_and_rejects_others(any_db):
    keys = KeyStore(any_db)
    plain, info = keys.create("ci")

    assert keys.verify(plain) == info
    assert keys.verify(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert keys.verify(plain + " ") is None
    assert keys.verify("my-" + "x" * 40) is None
    assert keys.verify("") is None
    assert keys.verify(hash_key(plain)) is None  # the stored digest is not a key


def test_a_revoked_key_stops_verifying_at_once_and_after_restart(any_db):
    keys = KeyStore(any_db)
    plain, info = keys.create("ci")
    other, _ = keys.create("other")

    assert keys.revoke(info.id) is True
    assert keys.verify(plain) is None
    assert keys.verify(other) is not None
    assert keys.revoke(info.id) is True  # revoking twice is fine
    assert keys.revoke(9999) is False

    restarted = KeyStore(any_db)
    assert restarted.verify(plain) is None
    assert restarted.verify(other) is not None
    assert [k.revoked for k in restarted.list()] == [True, False]
    assert not restarted.get(info.id).allows("chat")


def test_reload_sees_keys_created_by_another_process(db):
    server = KeyStore(db)
    plain, _ = KeyStore(db).create("from-the-cli")  # another process, same database
    assert server.verify(plain) is None

    server.reload()

    assert server.verify(plain) is not None


def test_a_key_created_or_revoked_while_a_reload_reads_is_not_undone_by_it(db, monkeypatch):
    store = KeyStore(db)
    old_plain, old = store.create("old")
    read, go = threading.Event(), threading.Event()
    real_session = db.session

    @contextlib.contextmanager
    def session():
        with real_session() as s:
            yield s
        if threading.current_thread().name == "reloader" and not read.is_set():
            read.set()  # the reload has read the keys as they were: "old" active, "new" not yet there
            go.wait(10)

    monkeypatch.setattr(db, "session", session)
    reloader = threading.Thread(target=store.reload, name="reloader")
    reloader.start()
    assert read.wait(10)
    new_plain, _ = store.create("new")
    store.revoke(old.id)
    go.set()
    reloader.join(10)

    assert store.verify(new_plain) is not None, "the reload dropped a key created while it read"
    assert store.verify(old_plain) is None, "the reload brought back a key revoked while it read"


@pytest.mark.parametrize(
    ("endpoint", "is_admin", "expected"),
    [
        ("chat", False, {"chat": True, "embed": False}),
        (None, False, {"chat": True, "embed": True}),
        ("chat", True, {"chat": True, "embed": True}),
    ],
    ids=["scoped", "every-endpoint", "admin"],
)
def test_keys_allow_the_endpoints_they_are_scoped_to(db, endpoint, is_admin, expected):
    keys = KeyStore(db)
    plain, _ = keys.create("k", endpoint=endpoint, is_admin=is_admin)
    info = keys.verify(plain)
    assert {name: info.allows(name) for name in expected} == expected
