"""`retrieve`: one query as the API and a flow's retrieve node run it."""

from __future__ import annotations

import pytest

from modelyard.errors import ModelyardError
from modelyard.index import build, retrieve

from .helpers import HashEmbedder, bag_of_words

pytestmark = pytest.mark.anyio


async def test_a_text_is_embedded_with_the_index_endpoint_and_a_vector_is_used_as_is(registry, settings, docs):
    index = registry.create("kb", settings)
    await build(index, [docs / "keys.md", docs / "backups.txt"], HashEmbedder())
    embedder = HashEmbedder()
    by_text = await retrieve(index, embedder, "rotate a key", top_k=2)
    assert embedder.texts == ["rotate a key"] and "rotate" in by_text[0].text.lower()
    by_vector = await retrieve(index, HashEmbedder(fail_from_call=1), bag_of_words("rotate a key").tolist(), top_k=2)
    assert [h.text for h in by_vector] == [h.text for h in by_text]


async def test_failures_name_the_field(registry, settings, docs):
    index = registry.create("kb", settings)
    await build(index, [docs / "keys.md"], HashEmbedder())
    with pytest.raises(ModelyardError) as wrong_size:
        await retrieve(index, HashEmbedder(), [0.5, 0.5])
    assert wrong_size.value.param == "vector" and wrong_size.value.status == 400
    with pytest.raises(ModelyardError) as bad_filter:
        await retrieve(index, HashEmbedder(), "key", filter={"section": {"nested": True}})
    assert bad_filter.value.param == "filter"
    with pytest.raises(ModelyardError) as down:
        await retrieve(index, HashEmbedder(fail_from_call=1, error=ConnectionError("refused")), "key")
    assert down.value.status == 502 and "ConnectionError" in down.value.message

    async def two_vectors(texts):
        return [[0.1] * 384, [0.2] * 384]

    with pytest.raises(ModelyardError) as nonsense:
        await retrieve(index, two_vectors, "key")
    assert nonsense.value.status == 502


async def test_an_empty_index_finds_nothing(registry, settings):
    assert await retrieve(registry.create("empty", settings), HashEmbedder(), "anything") == []
