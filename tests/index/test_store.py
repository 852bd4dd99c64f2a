"""The index store: add, replace, remove, query, filters, top-k order, and what survives a restart."""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest

from modelyard.errors import ModelyardError
from modelyard.index import Document, DocumentIndex, IndexRegistry, split
from modelyard.index import store as store_module
from modelyard.index.chunk import Chunk
from modelyard.index.loaders import parse

from .helpers import bag_of_words


def add_text(index: DocumentIndex, path: str, text: str, **metadata):
    doc = parse(text.encode(), path)
    doc.metadata.update(metadata)
    chunks = split(doc.text, index.settings.chunk_size, index.settings.overlap, doc.sections)
    return index.add(doc, chunks, np.stack([bag_of_words(c.text) for c in chunks]))


def ask(index: DocumentIndex, text: str, top_k: int = 3, filter=None):
    return index.query(bag_of_words(text), top_k, filter)


@pytest.fixture
def handbook(registry, settings):
    index = registry.create("handbook", settings)
    add_text(index, "keys.md", "# Keys\n\n## Rotating keys\n\nRotate a key every month: create the new key, then "
                               "revoke the old key.\n\n## Storing keys\n\nStore keys in the vault.\n", team="ops")
    add_text(index, "backups.txt", "Backups run nightly at 2am and are kept for thirty days.", team="ops",
             tags=["storage", "nightly"])
    add_text(index, "lunch.md", "# Lunch\n\nThe cafeteria serves lunch from noon; soup on Fridays.", team="facilities")
    return index


def test_a_query_returns_the_nearest_chunks_best_first_with_their_metadata(handbook):
    hits = ask(handbook, "how do I rotate a key", top_k=3)
    assert len(hits) == 3
    assert hits[0].document["path"] == "keys.md" and "Rotate a key" in hits[0].text
    assert hits[0].chunk["section"] == "Rotating keys"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].document["team"] == "ops" and hits[0].document["title"] == "Keys"
    assert set(hits[0].chunk) >= {"id", "ordinal", "offset", "section"}
    assert len(ask(handbook, "anything", top_k=50)) == handbook.chunk_count


def test_filters_keep_exact_matches_only(handbook):
    assert {h.document["path"] for h in ask(handbook, "key", 10, {"team": "facilities"})} == {"lunch.md"}
    assert {h.document["path"] for h in ask(handbook, "key", 10, {"team": ["ops", "facilities"]})} == {
        "keys.md", "backups.txt", "lunch.md"}
    assert [h.chunk["section"] for h in ask(handbook, "key", 10, {"section": "Storing keys"})] == ["Storing keys"]
    assert {h.document["path"] for h in ask(handbook, "x", 10, {"path": "backups.txt"})} == {"backups.txt"}
    assert {h.document["path"] for h in ask(handbook, "x", 10, {"tags": "nightly"})} == {"backups.txt"}  # list value
    assert ask(handbook, "key", 10, {"team": "nobody"}) == []
    assert ask(handbook, "key", 10, {"no_such_key": "x"}) == []
    assert ask(handbook, "key", 10, {"team": "ops", "section": "Rotating keys"})[0].chunk["section"] == "Rotating keys"


@pytest.mark.parametrize("bad", [["team"], {"team": {"a": 1}}, {"": "x"}, {"team": []}])
def test_a_malformed_filter_is_a_value_error(handbook, bad):
    with pytest.raises(ValueError):
        ask(handbook, "key", 3, bad)


def test_the_same_version_is_not_stored_twice_and_a_new_version_replaces_the_old(handbook):
    before = handbook.document("backups.txt")
    assert add_text(handbook, "backups.txt", "Backups run nightly at 2am and are kept for thirty days.") is None
    assert handbook.document("backups.txt") == before
    changed = add_text(handbook, "backups.txt", "Backups now run hourly.")
    assert changed is not None and changed.id != before.id and len(handbook) == 3
    texts = [h.text for h in ask(handbook, "backups", 10, {"path": "backups.txt"})]
    assert texts == ["Backups now run hourly."]
    rows = sqlite3.connect(handbook.path).execute("SELECT COUNT(*) FROM chunks WHERE document_id = ?",
                                                  (before.id,)).fetchone()[0]
    assert rows == 0


def test_removing_a_document_removes_its_chunks(handbook):
    removed = handbook.remove("keys.md")
    assert removed is not None and removed.chunks >= 2
    assert handbook.remove("keys.md") is None
    assert all(h.document["path"] != "keys.md" for h in ask(handbook, "rotate key", 10))
    db = sqlite3.connect(handbook.path)
    assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == handbook.chunk_count
    assert [d.path for d in handbook.documents()] == ["backups.txt", "lunch.md"]


def test_an_index_reopened_from_disk_answers_the_same(registry, handbook, tmp_path):
    questions = ["rotate a key", "when do backups run", "soup", "vault"]
    before = [[(h.text, h.score, h.document, h.chunk) for h in ask(handbook, q, 4)] for q in questions]
    registry.close()
    reopened = IndexRegistry(registry.root).get("handbook")
    after = [[(h.text, h.score, h.document, h.chunk) for h in ask(reopened, q, 4)] for q in questions]
    assert after == before
    assert reopened.settings.dimensions == 384 and reopened.settings.chunk_size == 200
    reopened.close()


def test_a_write_that_fails_half_way_leaves_nothing(handbook):
    doc = Document("odd.md", "one two", "f" * 64, {"title": "odd"})
    chunks = [Chunk(0, "one", 0, {}), Chunk(1, "two", 4, {"x": object()})]  # the second cannot be written
    with pytest.raises(TypeError):
        handbook.add(doc, chunks, np.stack([bag_of_words("one"), bag_of_words("two")]))
    assert handbook.document("odd.md") is None
    db = sqlite3.connect(handbook.path)
    assert db.execute("SELECT COUNT(*) FROM documents WHERE path = 'odd.md'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == handbook.chunk_count


def test_vectors_of_another_size_are_refused(handbook):
    doc = parse(b"other model", "other.txt")
    with pytest.raises(ModelyardError) as refused:
        handbook.add(doc, split(doc.text, 200, 0), np.ones((1, 768)))
    assert refused.value.status == 409 and refused.value.code == "dimension_mismatch"
    with pytest.raises(ModelyardError):
        handbook.query(np.ones(768))


def test_the_registry_lists_creates_and_deletes(registry, settings):
    registry.create("b-index", settings)
    registry.create("a.index", settings)
    with pytest.raises(ModelyardError) as exists:
        registry.create("a.index", settings)
    assert exists.value.status == 409
    with pytest.raises(ModelyardError) as bad:
        registry.create("../escape", settings)
    assert bad.value.status == 400 and bad.value.param == "name"
    assert registry.names() == ["a.index", "b-index"]
    summary = {s["name"]: s for s in registry.summaries()}
    assert summary["a.index"]["documents"] == 0 and summary["a.index"]["embed"] == "embed"
    registry.delete("a.index")
    assert registry.names() == ["b-index"] and not list(registry.root.glob("a.index*"))
    with pytest.raises(ModelyardError) as missing:
        registry.get("a.index")
    assert missing.value.status == 404 and missing.value.code == "index_not_found"


def test_queries_while_a_writer_adds_documents_see_whole_documents(registry, settings):
    index = registry.create("busy", settings)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                for hit in ask(index, "document number words", 5):
                    # each hit's text, chunk and document belong together
                    number = hit.document["path"].removeprefix("doc").removesuffix(".txt")
                    assert f"number {number}." in hit.text
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(40):
        add_text(index, f"doc{i}.txt", f"Document number {i}. Some words here. " * 20)
        if i % 3 == 0:
            index.remove(f"doc{i - 1}.txt")
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    db = sqlite3.connect(index.path)
    per_doc = dict(db.execute("SELECT document_id, COUNT(*) FROM chunks GROUP BY document_id"))
    assert all(per_doc[d.id] == d.chunks for d in index.documents())


# --- large indexes: the HNSW graph ----------------------------------------------------------


@pytest.fixture
def big(tmp_path, settings, monkeypatch):
    """An index past its (lowered) ANN threshold: queries go through the HNSW graph."""
    registry = IndexRegistry(tmp_path / "big", ann_min=32)
    index = registry.create("big", settings)
    for i in range(120):
        add_text(index, f"doc{i:03}.txt", f"Topic {i} alpha{i} beta{i % 7} gamma{i % 3}. " * 3,
                 group=f"g{i % 10}", parity=i % 2)
    assert index.stats()["search"] == "hnsw"
    yield registry, index
    registry.close()


def exact(index: DocumentIndex, text: str, k: int, keep) -> list[float]:
    """The brute-force answer's scores: every chunk scored, the filter applied."""
    db = sqlite3.connect(index.path)
    q = bag_of_words(text)
    scored = []
    for text_, vector, meta in db.execute(
            "SELECT c.text, c.vector, d.metadata FROM chunks c JOIN documents d ON d.id = c.document_id"):
        v = np.frombuffer(vector, dtype=np.float16).astype(np.float32)
        if keep(json.loads(meta)):
            scored.append((float(v @ q / np.linalg.norm(v)), text_))
    return [score for score, _ in sorted(scored, reverse=True)[:k]]


@pytest.mark.parametrize("subset_limit", [store_module.EXACT_SUBSET, 0], ids=["subset-exact", "graph-overfetch"])
def test_graph_queries_with_filters_return_only_matches(big, monkeypatch, subset_limit):
    registry, index = big
    monkeypatch.setattr(store_module, "EXACT_SUBSET", subset_limit)
    hits = ask(index, "Topic 42 alpha42 beta0 gamma0", 3)
    assert hits[0].document["path"] == "doc042.txt"
    narrow = ask(index, "Topic 42 alpha42 beta0 gamma0", 3, {"group": "g7"})  # 12 of 120 documents
    assert len(narrow) == 3 and all(h.document["group"] == "g7" for h in narrow)
    best = exact(index, "Topic 42 alpha42 beta0 gamma0", 3, lambda m: m["group"] == "g7")
    assert [h.score for h in narrow] == pytest.approx(best, abs=2e-3)  # (ties may come in any order)
    one = ask(index, "anything at all", 5, {"path": "doc117.txt"})
    assert {h.document["path"] for h in one} == {"doc117.txt"}
    wide = ask(index, "Topic 5 alpha5", 4, {"parity": 1})
    assert len(wide) == 4 and all(h.document["parity"] == 1 for h in wide)


def test_a_large_index_reopens_from_its_saved_graph_and_catches_up(big, caplog):
    registry, index = big
    caplog.set_level("INFO", logger="modelyard.index.store")
    index.save()
    assert index.path.with_suffix(".vectors").is_dir()
    # changes after the last save, then a "crash": the saved graph is behind the file
    add_text(index, "late.txt", "A late document about zebras and zeppelins.")
    index.remove("doc000.txt")
    again = DocumentIndex(index.path, ann_min=32)
    try:
        assert "saved vectors loaded, 1 added and 1 dropped since" in caplog.text
        assert again.query(bag_of_words("zebras zeppelins"), 1)[0].document["path"] == "late.txt"
        assert all(h.document["path"] != "doc000.txt" for h in again.query(bag_of_words("Topic 0 alpha0"), 5))
        assert again.chunk_count == index.chunk_count
    finally:
        again.close()


def test_a_damaged_saved_graph_is_rebuilt_from_the_file(big, caplog):
    registry, index = big
    question = bag_of_words("Topic 77 alpha77")
    expected = index.query(question, 1)[0].document["path"]
    registry.close()  # saves
    saved = index.path.with_suffix(".vectors")
    for file in saved.glob("*.usearch"):
        file.write_bytes(b"not a graph")
    again = DocumentIndex(index.path, ann_min=32)
    try:
        assert "cannot be used" in caplog.text
        assert again.query(question, 1)[0].document["path"] == expected
    finally:
        again.close()


def test_a_damaged_index_file_is_a_clear_error(registry, settings):
    registry.root.mkdir(parents=True, exist_ok=True)
    (registry.root / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ModelyardError) as refused:
        registry.get("junk")
    assert refused.value.status == 500 and refused.value.code == "index_unreadable"
    assert {s["name"]: "error" in s for s in registry.summaries()} == {"junk": True}
