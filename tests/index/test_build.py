"""Building an index: batching across documents, skipping, resuming after the embedding endpoint fails."""

from __future__ import annotations

import sqlite3

import pytest

from modelyard.index import EmbeddingFailed, build, find_files, split
from modelyard.index.loaders import load_file

from .helpers import HashEmbedder, bag_of_words

pytestmark = pytest.mark.anyio


def sources(root):
    found, _ = find_files(root)
    return [(f, f.relative_to(root).as_posix()) for f in found]


def whole_documents_only(index) -> None:
    """Every stored document has all its chunks, and nothing else is stored."""
    db = sqlite3.connect(index.path)
    per_doc = dict(db.execute("SELECT document_id, COUNT(*) FROM chunks GROUP BY document_id"))
    stored = {row[0]: row[1] for row in db.execute("SELECT id, chunks FROM documents")}
    assert per_doc == {d: n for d, n in stored.items() if n}
    for doc in index.documents():
        expected = split(load_file(doc_file(index, doc.path)).text, index.settings.chunk_size, index.settings.overlap,
                         load_file(doc_file(index, doc.path)).sections)
        assert doc.chunks == len(expected)


_roots: dict[str, object] = {}


def doc_file(index, path):
    return _roots[index.name] / path


async def test_a_folder_is_indexed_and_the_unreadable_file_is_listed(registry, settings, docs, embedder):
    index = registry.create("handbook", settings)
    _roots["handbook"] = docs
    seen = []
    result = await build(index, sources(docs), embedder, batch_size=4, progress=seen.append)
    assert sorted(result.added) == ["backups.txt", "cafeteria.html", "guide/onboarding.md", "keys.md"]
    assert [(s.path, "binary" in s.reason) for s in result.skipped] == [("broken.txt", True)]
    assert result.chunks == index.chunk_count and result.chunks > 4
    assert all(size == 4 for size in embedder.batches[:-1])  # full batches, across documents
    assert seen[-1].done == seen[-1].total == 5
    hit = index.query(bag_of_words("how do I rotate a key"), 1)[0]
    assert hit.document["path"] == "keys.md" and hit.chunk["section"] == "Rotating keys"
    whole_documents_only(index)


async def test_a_second_build_embeds_only_what_changed(registry, settings, docs, embedder):
    index = registry.create("handbook", settings)
    await build(index, sources(docs), embedder)
    first = len(embedder.texts)
    (docs / "backups.txt").write_text("Backups now run every hour.")
    again = HashEmbedder()
    result = await build(index, sources(docs), again)
    assert result.added == ["backups.txt"] and len(result.unchanged) == 3
    assert again.texts == ["Backups now run every hour."] and first > 1
    assert index.query(bag_of_words("backups hour"), 1)[0].text == "Backups now run every hour."


async def test_an_embedding_endpoint_down_mid_build_leaves_whole_documents_and_a_rerun_completes(registry, settings,
                                                                                                 tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(8):  # three chunks each
        (root / f"doc{i}.md").write_text("\n\n".join(f"## Part {p}\n\nDocument {i} part {p} text." for p in range(3)))
    index = registry.create("many", settings)
    _roots["many"] = root
    failing = HashEmbedder(fail_from_call=3)  # two batches of 4 chunks work: documents 0 and 1, and 2 of doc2's 3
    with pytest.raises(EmbeddingFailed) as failed:
        await build(index, sources(root), failing, batch_size=4)
    err = failed.value
    assert err.status == 503 and err.code == "embedding_failed"
    assert "2 document(s) were added" in err.message and "Run the same command again" in err.message
    assert "No instance of endpoint 'embed' is ready" in err.message
    assert sorted(d.path for d in index.documents()) == ["doc0.md", "doc1.md"]
    assert err.result.added == ["doc0.md", "doc1.md"]
    whole_documents_only(index)

    working = HashEmbedder()
    result = await build(index, sources(root), working, batch_size=4)
    assert result.unchanged == ["doc0.md", "doc1.md"] and len(result.added) == 6
    assert len(working.texts) == 18  # nothing embedded twice
    assert len(index) == 8
    whole_documents_only(index)


async def test_an_embedder_that_answers_nonsense_stops_the_build_with_a_502(registry, settings, docs):
    index = registry.create("handbook", settings)

    async def wrong_count(texts):
        return [[1.0, 0.0]]

    with pytest.raises(EmbeddingFailed) as failed:
        await build(index, sources(docs), wrong_count)
    assert failed.value.status == 502 and "one vector per text" in failed.value.message
    assert len(index) == 0


async def test_an_endpoint_that_now_runs_another_model_is_refused(registry, settings, docs, embedder):
    index = registry.create("handbook", settings)
    await build(index, sources(docs)[:1], embedder)
    (docs / "backups.txt").write_text("changed")
    with pytest.raises(Exception) as refused:
        await build(index, sources(docs), HashEmbedder(dim=768))
    assert getattr(refused.value, "code", None) == "dimension_mismatch"
