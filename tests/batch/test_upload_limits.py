"""Limits on what a client can make the gateway hold: every one answers an OpenAI-shaped 4xx naming the field.

- An upload is bounded part by part while it streams, with or without a Content-Length: the file
  (MODELYARD_BATCH_MAX_FILE_BYTES), the whole body (the file plus 64 KiB of form), each part's headers,
  the number of parts, a field's name and value. A refused upload leaves nothing on disk.
- An endpoint key keeps at most MODELYARD_BATCH_KEY_QUOTA_BYTES in MODELYARD_BATCH_KEY_QUOTA_FILES files
  (413 ``storage_quota_exceeded``); the admin key has no quota.
- Expired files are swept in the background, never the input of a batch that has not finished.
- Strings that end up in fixed-width columns (a filename, a deployment, a file id …) are checked at the
  API: SQLite would store them, PostgreSQL would refuse them with a 500.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.batch.batch_helpers import GATEWAY_ENV, chat_line, make_endpoint, stub_catalog, wait_batch, write_jsonl
from tests.live_gateway import Server, start_server
from tests.store.conftest import postgres_url  # noqa: F401 (a fixture: a fresh PostgreSQL schema, or a skip)

BOUNDARY = "b0undary"
LIMIT = 64 * 1024  # the test gateway's MODELYARD_BATCH_MAX_FILE_BYTES
QUOTA_ENV = {**GATEWAY_ENV, "MODELYARD_BATCH_KEY_QUOTA_BYTES": "4000", "MODELYARD_BATCH_KEY_QUOTA_FILES": "3",
             "MODELYARD_BATCH_SWEEP_INTERVAL_S": "0.2"}
LINE = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
        b'"body": {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}}\n')


def part(name: str, value: bytes, *, filename: str | None = None, headers: tuple[str, ...] = ()) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = "".join(f"{h}\r\n" for h in (f"Content-Disposition: {disposition}", *headers))
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + value + b"\r\n"


def form(*parts: bytes, closed: bool = True, epilogue: bytes = b"") -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if closed else b"") + epilogue


def upload(srv: Server, body: bytes, *, key: str | None = None, chunked: bool = True) -> httpx.Response:
    """POST /v1/files with a raw multipart body: chunked (a generator, no Content-Length) unless told."""

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    return httpx.post(srv.base_url + "/files", content=chunks() if chunked else body, timeout=60,
                      headers={"Authorization": f"Bearer {key or srv.admin_key}",
                               "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def batch_file(data: bytes = LINE, filename: str = "in.jsonl", **fields: str) -> bytes:
    return form(part("purpose", b"batch"), *(part(k, v.encode()) for k, v in fields.items()),
                part("file", data, filename=filename, headers=("Content-Type: application/jsonl",)))


def leftovers(srv: Server) -> list[str]:
    return [p.name for p in (srv.home / "files").iterdir() if p.name.startswith(".tmp-")]


def file_rows(srv: Server) -> int:
    with sqlite3.connect(srv.home / "modelyard.db") as db:
        return db.execute("SELECT count(*) FROM batch_files").fetchone()[0]


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


# --- 1. the multipart body, bounded while it streams -------------------------------------------------------------


def test_a_chunked_upload_within_the_limits_is_stored_as_before(gw):
    r = upload(gw, batch_file(LINE * 100, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}))
    assert r.status_code == 200, r.text
    stored = r.json()
    assert (stored["bytes"], stored["filename"], stored["purpose"]) == (len(LINE) * 100, "in.jsonl", "batch")
    assert stored["expires_at"] == stored["created_at"] + 3600


def test_a_chunked_file_over_the_limit_is_refused_and_leaves_nothing_on_disk(gw):
    rows = file_rows(gw)
    e = error(upload(gw, batch_file(LINE * (LIMIT // len(LINE) + 10))), 413)
    assert (e["code"], e["param"]) == ("file_too_large", "file") and "MODELYARD_BATCH_MAX_FILE_BYTES" in e["message"]
    assert leftovers(gw) == [] and file_rows(gw) == rows


def test_a_chunked_body_past_the_limit_outside_the_file_is_refused(gw):
    """Bytes after the closing boundary are not part of any field, but they are still read: they count."""
    rows = file_rows(gw)
    e = error(upload(gw, form(part("purpose", b"batch"), part("file", LINE, filename="in.jsonl"),
                              epilogue=b"x" * (3 * LIMIT))), 413)
    assert (e["code"], e["param"]) == ("file_too_large", "file")
    assert "upload" in e["message"] and "MODELYARD_BATCH_MAX_FILE_BYTES" in e["message"]
    assert leftovers(gw) == [] and file_rows(gw) == rows


@pytest.mark.parametrize("headers", [
    tuple(f"X-Padding-{i}: {'p' * 3000}" for i in range(6)),  # six headers of 3 kB: 18 kB in all
    (f"X-Padding: {'p' * 20_000}",),                           # one header of 20 kB
])
def test_oversized_part_headers_are_refused(gw, headers):
    body = form(part("purpose", b"batch"), part("file", LINE, filename="in.jsonl", headers=headers))
    e = error(upload(gw, body), 413)
    assert (e["code"], e["param"]) == ("part_headers_too_large", "file") and "16384 bytes" in e["message"]
    assert leftovers(gw) == []


def test_too_many_form_fields_are_refused(gw):
    fields = [part(f"field{i}", b"v") for i in range(40)]
    e = error(upload(gw, form(part("purpose", b"batch"), *fields, part("file", LINE, filename="in.jsonl"))), 400)
    assert (e["code"], e["param"]) == ("too_many_parts", "file") and "16 parts" in e["message"]
    assert leftovers(gw) == []


def test_a_long_field_name_and_a_long_field_value_are_refused(gw):
    e = error(upload(gw, form(part("n" * 2000, b"v"), part("purpose", b"batch"),
                              part("file", LINE, filename="in.jsonl"))), 400)
    assert e["code"] == "string_above_max_length" and "name" in e["message"] and "128" in e["message"]
    e = error(upload(gw, form(part("purpose", b"b" * 5000), part("file", LINE, filename="in.jsonl"))), 400)
    assert (e["code"], e["param"]) == ("string_above_max_length", "purpose") and "4096" in e["message"]
    assert leftovers(gw) == []


def test_an_upload_cut_short_is_refused_not_stored_half(gw):
    rows = file_rows(gw)
    e = error(upload(gw, form(part("purpose", b"batch"), part("file", LINE * 3, filename="in.jsonl"),
                              closed=False)[:-40]), 400)
    assert (e["code"], e["param"]) == ("invalid_multipart", "file") and "closing boundary" in e["message"]
    assert leftovers(gw) == [] and file_rows(gw) == rows


# --- 3. strings bound for fixed-width columns ------------------------------------------------------------------------


def test_a_filename_longer_than_255_characters_is_refused(gw):
    e = error(upload(gw, batch_file(filename="f" * 250 + ".jsonl"), chunked=False), 400)
    assert (e["code"], e["param"]) == ("string_above_max_length", "file")
    assert "filename" in e["message"] and "255" in e["message"] and "256" in e["message"]
    assert leftovers(gw) == []
    ok = upload(gw, batch_file(filename="f" * 249 + ".jsonl"), chunked=False)  # 255: the most a row holds
    assert ok.status_code == 200 and ok.json()["filename"] == "f" * 249 + ".jsonl"


def test_a_filename_with_a_nul_character_is_refused(gw):
    e = error(upload(gw, batch_file(filename="in\x00.jsonl")), 400)
    assert (e["code"], e["param"]) == ("invalid_value", "file") and "filename" in e["message"]


@pytest.fixture(scope="module")
def input_file(gw) -> str:
    return upload(gw, batch_file()).json()["id"]


@pytest.mark.parametrize("change, param, limit", [
    ({"extra_body": {"deployment": "d" * 65}}, "deployment", 64),
    ({"metadata": {"deployment": "d" * 65}}, "deployment", 64),
    ({"extra_body": {"model": "m" * 65}}, "model", 64),
    ({"extra_body": {"model": "chat", "deployment": "d" * 300}}, "deployment", 64),
    ({"input_file_id": "file-" + "0" * 60}, "input_file_id", 64),
])
def test_batch_strings_longer_than_their_columns_are_refused(gw, input_file, change, param, limit):
    args = {"input_file_id": input_file, "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
    with pytest.raises(openai.BadRequestError) as exc:
        gw.openai().batches.create(**args)
    body = exc.value.body
    assert (body["param"], body["code"]) == (param, "string_above_max_length")
    assert f"maximum length {limit}" in body["message"] and "d" * 65 not in body["message"]


@pytest.mark.parametrize("change, param", [
    ({"extra_body": {"deployment": "blue\x00"}}, "deployment"),
    ({"input_file_id": "file-\x00"}, "input_file_id"),
])
def test_batch_strings_with_control_characters_are_refused(gw, input_file, change, param):
    args = {"input_file_id": input_file, "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
    with pytest.raises(openai.BadRequestError) as exc:
        gw.openai().batches.create(**args)
    assert exc.value.body["param"] == param


def test_ids_and_filters_that_no_row_can_hold_are_4xx(gw):
    headers = {"Authorization": f"Bearer {gw.admin_key}"}
    for path in ("/files/file-%00", "/files/file-%00/content", "/batches/batch_%00", "/files/" + "f" * 300):
        r = httpx.get(gw.base_url + path, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["param"] in ("file_id", "batch_id"), (path, r.text)
    for query, param in (({"after": "file-\x00"}, "after"), ({"purpose": "batch\x00"}, "purpose"),
                         ({"purpose": "p" * 100}, "purpose")):
        r = httpx.get(gw.base_url + "/files", headers=headers, params=query)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    r = httpx.get(gw.base_url + "/batches", headers=headers, params={"after": "batch_\x00"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"


def test_a_custom_id_with_a_nul_character_fails_the_file_naming_the_line(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "nul.jsonl", [chat_line("ok"), chat_line("bad\x00id")])
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(client, batch.id)
    assert done.status == "failed", done
    [e] = done.errors.data
    assert (e.line, e.param, e.code) == (2, "custom_id", "invalid_request") and "NUL" in e.message


@pytest.fixture
def pg_gw(tmp_path, stub, postgres_url) -> Iterator[Server]:  # noqa: F811
    """The same gateway on PostgreSQL, where a value wider than its column is a database error."""
    home = tmp_path / "home"
    stub_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults", extra_env={**GATEWAY_ENV, "DATABASE_URL": postgres_url})
    make_endpoint(srv, "chat", ("blue", "stub-chat"))
    yield srv
    srv.stop()


def test_on_postgres_long_and_nul_strings_are_4xx_not_500(pg_gw):
    e = error(upload(pg_gw, batch_file(filename="f" * 300)), 400)
    assert e["param"] == "file"
    error(upload(pg_gw, batch_file(filename="a\x00b")), 400)
    uploaded = upload(pg_gw, batch_file()).json()["id"]
    client = pg_gw.openai()
    for extra in ({"deployment": "d" * 65}, {"deployment": "d\x00"}):
        with pytest.raises(openai.BadRequestError) as exc:
            client.batches.create(input_file_id=uploaded, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body=extra)
        assert exc.value.body["param"] == "deployment"
    headers = {"Authorization": f"Bearer {pg_gw.admin_key}"}
    assert httpx.get(pg_gw.base_url + "/files/file-%00", headers=headers).status_code == 404
    assert httpx.get(pg_gw.base_url + "/batches/batch_%00", headers=headers).status_code == 404
    assert httpx.get(pg_gw.base_url + "/files", headers=headers, params={"after": "\x00"}).status_code == 400


# --- 2. a quota per key, and the sweeper -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quota_gw(tmp_path_factory, stub) -> Iterator[Server]:
    """A gateway whose endpoint keys may keep 3 files of 4000 bytes in all, sweeping expired files every 0.2 s."""
    home = tmp_path_factory.mktemp("batch-quota") / "home"
    stub_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults", extra_env=QUOTA_ENV)
    make_endpoint(srv, "chat", ("blue", "stub-chat"), concurrency=1)
    yield srv
    srv.stop()


def endpoint_key(srv: Server, name: str) -> str:
    r = srv.api("POST", "/api/keys", json={"name": name, "endpoint": "chat"})
    assert r.status_code in (200, 201), r.text
    return r.json()["key"]


def test_a_key_past_its_storage_quota_gets_413_until_it_deletes_files(quota_gw):
    key = endpoint_key(quota_gw, "tenant")
    client = quota_gw.openai(key)
    first = client.files.create(file=("a.jsonl", LINE * 10), purpose="batch")  # 10 lines ≈ 1.3 kB each
    client.files.create(file=("b.jsonl", LINE * 10), purpose="batch")
    with pytest.raises(openai.APIStatusError) as exc:
        client.files.create(file=("c.jsonl", LINE * 12), purpose="batch")  # past 4000 bytes
    assert exc.value.status_code == 413
    body = exc.value.body
    assert (body["code"], body["param"], body["type"]) == ("storage_quota_exceeded", "file", "invalid_request_error")
    assert "4000 bytes" in body["message"] and "MODELYARD_BATCH_KEY_QUOTA_BYTES" in body["message"]
    assert "delete" in body["message"].lower()

    # Refused while it streams, too: a chunked upload stops at the quota and leaves nothing behind.
    e = error(upload(quota_gw, batch_file(LINE * 40), key=key), 413)
    assert e["code"] == "storage_quota_exceeded"
    assert leftovers(quota_gw) == [] and len(client.files.list().data) == 2

    client.files.delete(first.id)  # room again
    client.files.create(file=("c.jsonl", LINE * 12), purpose="batch")
    client.files.create(file=("d.jsonl", LINE), purpose="batch")
    with pytest.raises(openai.APIStatusError) as exc:  # a 4th file, however small
        client.files.create(file=("e.jsonl", LINE), purpose="batch")
    assert exc.value.status_code == 413 and exc.value.body["code"] == "storage_quota_exceeded"
    assert "3 files" in exc.value.body["message"] and "MODELYARD_BATCH_KEY_QUOTA_FILES" in exc.value.body["message"]

    # Another key has its own quota; the admin key has none.
    quota_gw.openai(endpoint_key(quota_gw, "other")).files.create(file=("x.jsonl", LINE * 10), purpose="batch")
    admin = quota_gw.openai()
    for i in range(5):
        admin.files.create(file=(f"admin{i}.jsonl", LINE * 10), purpose="batch")


def _expire(srv: Server, *file_ids: str) -> None:
    """Move the files' expiry into the past (the API allows at least an hour)."""
    with sqlite3.connect(srv.home / "modelyard.db") as db:
        db.executemany("UPDATE batch_files SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?",
                       [(fid,) for fid in file_ids])


def _row(srv: Server, file_id: str) -> bool:
    with sqlite3.connect(srv.home / "modelyard.db") as db:
        return db.execute("SELECT 1 FROM batch_files WHERE id = ?", (file_id,)).fetchone() is not None


def _gone(srv: Server, file_id: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _row(srv, file_id) and not (srv.home / "files" / file_id).exists():
            return True
        time.sleep(0.1)
    return False


def test_expired_files_are_swept_but_not_the_input_of_an_unfinished_batch(quota_gw, tmp_path):
    client = quota_gw.openai()
    expiry = {"anchor": "created_at", "seconds": 3600}
    idle = client.files.create(file=("idle.jsonl", LINE), purpose="batch", expires_after=expiry)
    kept = client.files.create(file=("kept.jsonl", LINE), purpose="batch")  # no expiry
    slow = [chat_line(f"s{i}", user="stub:delay_ms=3000") for i in range(3)]
    with open(write_jsonl(tmp_path / "slow.jsonl", slow), "rb") as f:
        busy = client.files.create(file=f, purpose="batch", expires_after=expiry)
    batch = client.batches.create(input_file_id=busy.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_batch(client, batch.id, {"in_progress"})

    _expire(quota_gw, idle.id, busy.id)
    assert _gone(quota_gw, idle.id)  # swept within a few intervals, row and bytes
    with pytest.raises(openai.NotFoundError):  # expired for the client …
        client.files.retrieve(busy.id)
    time.sleep(0.6)
    assert _row(quota_gw, busy.id) and (quota_gw.home / "files" / busy.id).exists()  # … but the batch reads it
    assert _row(quota_gw, kept.id)

    client.batches.cancel(batch.id)
    assert wait_batch(client, batch.id).status == "cancelled"
    assert _gone(quota_gw, busy.id)  # once the batch has finished, it goes too
    assert _row(quota_gw, kept.id) and (quota_gw.home / "files" / kept.id).exists()
