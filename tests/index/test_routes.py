"""The index API (/api/indexes) with the gateway faked at its seams: keys, endpoints, `index_embedder`."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from modelyard.index import IndexRegistry

from .helpers import ADMIN_KEY, USER_KEY, HashEmbedder, fake_gateway, index_app

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def gateway(tmp_path):
    registry = IndexRegistry(tmp_path / "indexes")
    yield fake_gateway(registry, HashEmbedder(), endpoints={"embed", "chat"})
    registry.close()


@pytest.fixture
def api(gateway):
    with TestClient(index_app(gateway), headers=ADMIN) as client:
        yield client


def error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    if param is not None:
        assert body["param"] == param, body
    if code is not None:
        assert body["code"] == code, body
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


DOCS = [
    {"path": "keys.md", "text": "# Keys\n\nRotate a key every month.\n\n# Vault\n\nStore keys in the vault.",
     "sections": [{"offset": 0, "section": "Keys"}, {"offset": 35, "section": "Vault"}],
     "metadata": {"team": "ops", "title": "Keys"}},
    {"path": "lunch.html", "content": b64(b"<title>Lunch</title><h1>Menu</h1><p>Soup on Fridays at noon.</p>")},
    {"path": "notes.bin", "content": b64(b"\x00\x01\x02"), "filename": "notes.txt"},
]


def test_create_add_query_and_delete_an_index(api, gateway):
    r = api.post("/api/indexes", json={"name": "handbook", "embed": "embed", "chunk_size": 300, "overlap": 50})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "handbook" and r.json()["documents"] == 0 and r.json()["dimensions"] is None

    r = api.post("/api/indexes/handbook/documents", json={"documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == ["keys.md", "lunch.html"]
    assert body["skipped"] == [{"path": "notes.bin", "reason": "is binary, not text"}]
    assert body["index"]["documents"] == 2 and body["index"]["dimensions"] == 384
    assert gateway.embedded_for and set(gateway.embedded_for) == {"embed"}  # through the gateway's embedder

    r = api.post("/api/indexes/handbook/query", json={"query": "how do I rotate a key", "top_k": 2})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert hits[0]["document"]["path"] == "keys.md" and hits[0]["chunk"]["section"] == "Keys"
    assert hits[0]["score"] >= hits[1]["score"]
    assert hits[0]["document"]["team"] == "ops"

    filtered = api.post("/api/indexes/handbook/query", json={"query": "key", "filter": {"format": "html"}}).json()
    assert [h["document"]["path"] for h in filtered["data"]] == ["lunch.html"]
    assert filtered["data"][0]["document"]["title"] == "Lunch"

    listed = api.get("/api/indexes").json()["data"]
    assert [(i["name"], i["documents"], i["embed"]) for i in listed] == [("handbook", 2, "embed")]
    info = api.get("/api/indexes/handbook").json()
    assert info["chunks"] >= 3 and info["disk_bytes"] > 0 and info["memory_bytes"] > 0
    docs = api.get("/api/indexes/handbook/documents").json()["data"]
    assert [d["path"] for d in docs] == ["keys.md", "lunch.html"] and len(docs[0]["sha256"]) == 64

    # the same documents again: nothing is embedded twice
    calls = gateway.embedder.calls
    again = api.post("/api/indexes/handbook/documents", json={"documents": DOCS[:2]}).json()
    assert again["unchanged"] == ["keys.md", "lunch.html"] and gateway.embedder.calls == calls

    r = api.delete("/api/indexes/handbook/documents", params={"path": "keys.md"})
    assert r.status_code == 200 and r.json()["deleted"] is True
    error(api.delete("/api/indexes/handbook/documents", params={"path": "keys.md"}), 404, "path", "document_not_found")

    assert api.delete("/api/indexes/handbook").json()["deleted"] is True
    error(api.get("/api/indexes/handbook"), 404, "name", "index_not_found")
    assert api.get("/api/indexes").json()["data"] == []


def test_an_index_survives_a_restart_of_the_gateway(tmp_path):
    first = fake_gateway(IndexRegistry(tmp_path / "indexes"), HashEmbedder())
    with TestClient(index_app(first), headers=ADMIN) as api:
        api.post("/api/indexes", json={"name": "kb", "embed": "embed"})
        api.post("/api/indexes/kb/documents", json={"documents": DOCS[:2]})
        before = api.post("/api/indexes/kb/query", json={"query": "soup"}).json()["data"]
    first.indexes.close()
    second = fake_gateway(IndexRegistry(tmp_path / "indexes"), HashEmbedder())
    with TestClient(index_app(second), headers=ADMIN) as api:
        assert api.post("/api/indexes/kb/query", json={"query": "soup"}).json()["data"] == before
    second.indexes.close()


@pytest.mark.parametrize("body, status, param", [
    ({"name": "../x", "embed": "embed"}, 400, "name"),
    ({"name": "kb", "embed": "nope"}, 404, "embed"),
    ({"name": "kb", "embed": "embed", "chunk_size": 50}, 400, "chunk_size"),
    ({"name": "kb", "embed": "embed", "chunk_size": 400, "overlap": 300}, 400, "overlap"),
    ({"name": "kb", "embed": "embed", "colour": "red"}, 400, "colour"),
    ({"embed": "embed"}, 400, "name"),
])
def test_a_bad_create_names_the_field(api, body, status, param):
    error(api.post("/api/indexes", json=body), status, param)


def test_an_index_name_is_taken_once(api):
    assert api.post("/api/indexes", json={"name": "kb", "embed": "embed"}).status_code == 201
    error(api.post("/api/indexes", json={"name": "kb", "embed": "embed"}), 409, "name", "index_exists")


@pytest.mark.parametrize("documents, param", [
    ([{"path": "a.md"}], "documents.0"),
    ([{"path": "a.md", "text": "x", "content": b64(b"x")}], "documents.0"),
    ([{"path": "a.md", "content": "not base64!"}], "documents.0.content"),
    ([{"path": "a.md", "text": "x", "metadata": {"path": "b.md"}}], "documents.0.metadata"),
    ([{"path": "a.md", "text": "x", "metadata": {"deep": {"a": 1}}}], "documents.0.metadata.deep"),
    ([], "documents"),
])
def test_bad_documents_name_the_field(api, documents, param):
    api.post("/api/indexes", json={"name": "kb", "embed": "embed"})
    body = error(api.post("/api/indexes/kb/documents", json={"documents": documents}), 400)
    assert body["param"] is not None and body["param"].startswith(param), body


def test_bad_queries_name_the_field(api):
    api.post("/api/indexes", json={"name": "kb", "embed": "embed"})
    api.post("/api/indexes/kb/documents", json={"documents": DOCS[:1]})
    error(api.post("/api/indexes/kb/query", json={"query": "x", "filter": {"team": {"a": 1}}}), 400, "filter")
    error(api.post("/api/indexes/kb/query", json={"vector": [0.1, 0.2]}), 400, "vector")
    error(api.post("/api/indexes/kb/query", json={"query": "x", "top_k": 0}), 400, "top_k")
    error(api.post("/api/indexes/kb/query", json={"query": "x", "vector": [1.0]}), 400)
    error(api.post("/api/indexes/nope/query", json={"query": "x"}), 404, "name")
    error(api.delete("/api/indexes/kb/documents"), 400, "path")
    vector = api.post("/api/indexes/kb/query", json={"vector": [0.01] * 384, "top_k": 1})
    assert vector.status_code == 200 and len(vector.json()["data"]) == 1


def test_the_embedding_endpoint_down_is_a_503_that_says_how_to_continue(api, gateway):
    api.post("/api/indexes", json={"name": "kb", "embed": "embed", "chunk_size": 100, "overlap": 0})
    # about 30 chunks each: the first batch of 64 holds two whole documents
    many = [{"path": f"d{i}.txt", "text": f"Document {i}. " + "Words of text here. " * 150} for i in range(6)]
    gateway.embedder = HashEmbedder(fail_from_call=2)
    body = error(api.post("/api/indexes/kb/documents", json={"documents": many}), 503, code="embedding_failed")
    assert "2 document(s) were added" in body["message"] and "Run the same command again" in body["message"]
    assert [d["path"] for d in api.get("/api/indexes/kb/documents").json()["data"]] == ["d0.txt", "d1.txt"]
    gateway.embedder = HashEmbedder()
    again = api.post("/api/indexes/kb/documents", json={"documents": many}).json()
    assert again["unchanged"] == ["d0.txt", "d1.txt"] and len(again["added"]) == 4

    gateway.embedder = HashEmbedder(fail_from_call=1)  # a query needs the endpoint too
    error(api.post("/api/indexes/kb/query", json={"query": "document"}), 503, code="no_instance_ready")


def test_the_api_needs_the_admin_key(gateway):
    with TestClient(index_app(gateway)) as client:
        error(client.get("/api/indexes", headers={"Authorization": f"Bearer {USER_KEY}"}), 403)
        error(client.get("/api/indexes", headers={"Authorization": "Bearer wrong"}), 401)
