"""Verification before serving: a near neighbour that asks something else is not served.

Fast tests (no model): the guards on their own, the look-up falling to the
next-nearest candidate, the feedback loop, and the labeled-pairs evaluation
on vectors made for the purpose.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from modelyard.cache import labeled
from modelyard.cache.embed import AsyncEmbedder
from modelyard.cache.entry import Entry
from modelyard.cache.keys import CacheKeys
from modelyard.cache.service import TIGHTEN_MAX, TIGHTEN_STEP, ResponseCache
from modelyard.cache.spec import CacheSpec
from modelyard.cache.verify import GUARDS, Verifier

V = Verifier()


@pytest.mark.parametrize("cached, query, guard", [
    ("How do I reset my password?", "How do I change my password?", "terms"),
    ("Can I make 50,000 a month by day trading?", "Can I make 30,000 a month by day trading?", "numbers"),
    ("How much does an iPhone 6 cost?", "How much does an iPhone 7 cost?", "numbers"),
    ("What is the best laptop under 50k?", "What is the best laptop under 50,000?", None),  # 50k is 50,000
    ("Can I pay with a credit card?", "Can I pay without a credit card?", "negation"),
    ("Why do people like cats?", "Why don't people like cats?", "negation"),
    ("Why is the sky blue?", "When is the sky blue?", "question"),
    ("Is the USA the most powerful country?", "Why is the USA the most powerful country?", "question"),
    ("What are some faux pas to avoid when visiting Somalia?",
     "What are some faux pas to avoid when visiting Sweden?", "names"),
    ("What is the step by step guide to invest in share market?",
     "What is the step by step guide to invest in share market in India?", "names"),
    ("What are the types of immunity?", "What are the types of immunity in our body for children?", "terms"),
])
def test_each_guard_refuses_a_near_duplicate_that_asks_something_else(cached, query, guard):
    verdict = V.check(cached, query)
    assert verdict.guard == guard, verdict
    assert verdict.same is (guard is None)
    assert V.check(query, cached).guard == guard  # whichever of the two was cached


@pytest.mark.parametrize("cached, query", [
    ("How do I reset my password?", "How can I reset my password?"),
    ("How do I reset my password?", "What is the way to reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("Which is the best fixed income fund?", "What is the best fixed income fund?"),
    ("How can I become more fluent in Chinese?", "How can I become fluent in chinese?"),
    ("Why nobody answer my questions in Quora?", "Why is no one answering my questions in Quora?"),
    ("What year was the letter J created?", "When was the letter J created?"),
    ("Are there any must watch TV shows?", "What are some must watch TV shows?"),
    ("What is the best phone to buy below 15k?", "Which is the best phone to buy under 15000?"),
])
def test_rewordings_of_one_question_pass_the_guards(cached, query):
    assert V.check(cached, query).same, V.check(cached, query)


def test_guards_cost_well_under_a_millisecond():
    questions = [f"How do I reset the password of account {i} on my laptop?" for i in range(300)]
    verifier = Verifier()
    t0 = time.perf_counter()
    for q in questions:
        verifier.check(q, "How can I change the password of my laptop account?")
    per_check_ms = (time.perf_counter() - t0) / len(questions) * 1000
    assert per_check_ms < 1.0, per_check_ms  # typically ~0.05 ms (first sight of a question included)


def test_an_unknown_guard_is_refused():
    with pytest.raises(ValueError, match="unknown guard"):
        Verifier(["numbers", "spelling"])
    assert Verifier(["terms", "numbers"]).guards == ("numbers", "terms")  # always run in GUARDS order


def test_verify_in_the_spec_defaults_to_guards_and_names_bad_values():
    assert CacheSpec(mode="semantic").verify == "guards"
    assert CacheSpec(mode="semantic", verify="OFF").verify == "off"
    with pytest.raises(ValueError, match="verify"):
        CacheSpec(mode="semantic", verify="maybe")


# --- the look-up ---------------------------------------------------------------------------------


class Table:
    """A fake embedder: a fixed unit vector per text."""

    name = "table"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def __call__(self, texts):
        return np.stack([self.vectors[t] for t in texts])


def _near(base: np.ndarray, rng: np.random.Generator, cosine: float) -> np.ndarray:
    """A unit vector at about `cosine` from `base`."""
    noise = rng.standard_normal(base.shape[0]).astype(np.float32)
    noise -= (noise @ base) * base
    noise /= np.linalg.norm(noise)
    v = cosine * base + np.sqrt(1 - cosine ** 2) * noise
    return (v / np.linalg.norm(v)).astype(np.float32)


QUERY = "How do I reset my password?"
WRONG = "How do I change my password?"  # nearest, but another question
RIGHT = "What is the way to reset my password?"  # a little further, the same question


def _vectors():
    rng = np.random.default_rng(7)
    q = rng.standard_normal(384).astype(np.float32)
    q /= np.linalg.norm(q)
    return {QUERY: q, WRONG: _near(q, rng, 0.97), RIGHT: _near(q, rng, 0.94)}


def _entry(i: int, text: str, vector: np.ndarray) -> Entry:
    now = time.time()
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer to: {text}"},
                         "finish_reason": "stop"}]}
    return Entry(f"e{i}", "p", "chat", text, body, 10, 20, 0.001, now, now + 3600, vector)


def _cache(tmp_path, vectors) -> ResponseCache:
    return ResponseCache(root=tmp_path, embedder=AsyncEmbedder(Table(vectors)))


def _keys(text: str) -> CacheKeys:
    return CacheKeys("p", f"exact:{text}", text)


def test_a_refused_neighbour_falls_to_the_next_nearest_that_asks_the_same(tmp_path):
    vectors = _vectors()

    async def go():
        cache = _cache(tmp_path, vectors)
        spec = CacheSpec(mode="semantic", similarity=0.9)
        store = await cache.store("ep", spec)
        await store.put(_entry(1, WRONG, vectors[WRONG]))
        found = await cache.lookup("ep", spec, _keys(QUERY))
        assert found.result == "miss" and found.rejected == ["terms"]  # only the wrong one: not served
        await store.put(_entry(2, RIGHT, vectors[RIGHT]))
        found = await cache.lookup("ep", spec, _keys(QUERY))
        assert found.result == "semantic-hit" and found.entry.query == RIGHT and found.rejected == ["terms"]
        assert found.similarity == pytest.approx(0.94, abs=0.01)
        off = CacheSpec(mode="semantic", similarity=0.9, verify="off")
        found = await cache.lookup("ep", off, _keys(QUERY))  # without verification the nearest is served
        assert found.result == "semantic-hit" and found.entry.query == WRONG
        await cache.close()

    asyncio.run(go())


def test_a_judge_has_the_last_word_and_a_failing_judge_says_no(tmp_path):
    vectors = _vectors()
    asked = []

    async def judge(cached: str, query: str) -> bool:
        asked.append((cached, query))
        return False

    async def broken(cached: str, query: str) -> bool:
        raise TimeoutError("the judge took too long")

    async def go():
        cache = _cache(tmp_path, vectors)
        spec = CacheSpec(mode="semantic", similarity=0.9, verify="judge")
        store = await cache.store("ep", spec)
        await store.put(_entry(2, RIGHT, vectors[RIGHT]))
        found = await cache.lookup("ep", spec, _keys(QUERY), judge)
        assert found.result == "miss" and found.rejected == ["judge"] and asked == [(RIGHT, QUERY)]
        assert (await cache.lookup("ep", spec, _keys(QUERY), broken)).result == "miss"
        guards_only = CacheSpec(mode="semantic", similarity=0.9)  # a judge is asked only with verify: judge
        assert (await cache.lookup("ep", guards_only, _keys(QUERY), judge)).result == "semantic-hit"
        assert len(asked) == 1
        await cache.close()

    asyncio.run(go())


def test_a_down_rated_semantic_hit_is_deleted_and_tightens_the_threshold(tmp_path):
    vectors = _vectors()

    async def go():
        cache = _cache(tmp_path, vectors)
        spec = CacheSpec(mode="semantic", similarity=0.9)
        store = await cache.store("ep", spec)
        await store.put(_entry(2, RIGHT, vectors[RIGHT]))
        found = await cache.lookup("ep", spec, _keys(QUERY))
        assert found.result == "semantic-hit"
        cache.remember("chatcmpl-1", "ep", found.entry.id, found.result, found.similarity)
        outcome = await cache.rated_down("chatcmpl-1", spec)
        assert outcome["entry_removed"] is True
        assert outcome["similarity_after"] == pytest.approx(0.9 + TIGHTEN_STEP)
        assert (await cache.lookup("ep", spec, _keys(QUERY))).result == "miss"  # the entry is gone
        stats = await cache.stats("ep", spec)
        assert stats["effective_similarity"] == pytest.approx(0.9 + TIGHTEN_STEP) and stats["removed_by_feedback"] == 1
        again_rated = await cache.rated_down("chatcmpl-1", spec)  # the same answer rated again: already gone
        assert again_rated["entry_removed"] is False
        assert cache.similarity("ep", spec) == pytest.approx(0.9 + TIGHTEN_STEP)  # not tightened twice
        for i in range(20):  # bounded: never more than TIGHTEN_MAX above the spec
            entry = _entry(2, RIGHT, vectors[RIGHT])
            await store.put(entry)
            cache.remember(f"chatcmpl-x{i}", "ep", entry.id, "semantic-hit", 0.95)
            await cache.rated_down(f"chatcmpl-x{i}", spec)
        assert cache.similarity("ep", spec) == pytest.approx(0.9 + TIGHTEN_MAX)
        assert await cache.rated_down("chatcmpl-unknown", spec) is None
        await cache.close()
        # kept across a restart of the gateway
        assert json.loads((tmp_path / "thresholds.json").read_text())["ep"] == pytest.approx(0.9 + TIGHTEN_MAX)
        again = _cache(tmp_path, vectors)
        assert again.similarity("ep", spec) == pytest.approx(0.9 + TIGHTEN_MAX)
        # a stricter spec than the tightened threshold wins; a lowered one lowers it too
        assert again.similarity("ep", CacheSpec(mode="semantic", similarity=0.98)) == 0.98
        assert again.similarity("ep", CacheSpec(mode="semantic", similarity=0.8)) == pytest.approx(0.8 + TIGHTEN_MAX)

    asyncio.run(go())


def test_a_down_rated_exact_hit_or_stored_answer_is_deleted_without_tightening(tmp_path):
    vectors = _vectors()

    async def go():
        cache = _cache(tmp_path, vectors)
        spec = CacheSpec(mode="semantic", similarity=0.9)
        store = await cache.store("ep", spec)
        await store.put(_entry(2, RIGHT, vectors[RIGHT]))
        cache.remember("chatcmpl-2", "ep", "e2", "stored", 1.0)
        outcome = await cache.rated_down("chatcmpl-2", spec)
        assert outcome["entry_removed"] is True and outcome["similarity_after"] == 0.9
        assert len(store) == 0
        await cache.close()

    asyncio.run(go())


# --- the labeled evaluation ----------------------------------------------------------------------


def test_labeled_pairs_are_read_from_tsv_csv_json_and_jsonl(tmp_path):
    (tmp_path / "p.tsv").write_text('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
                                    '0\t1\t2\t"Quoted" start?\tHow do I reset it?\t0\n1\t3\t4\tA?\tB?\t1\n')
    (tmp_path / "p.csv").write_text('question1,question2,is_duplicate\n"Is it, really?",Is it?,1\n')
    (tmp_path / "p.jsonl").write_text('{"text_a": "A?", "text_b": "B?", "label": 1}\n\n'
                                      '{"text_a": "C?", "text_b": "D?", "label": false}\n')
    (tmp_path / "p.json").write_text(json.dumps([{"text_a": "A?", "text_b": "B?", "label": "1"}]))
    tsv = labeled.load_labeled(tmp_path / "p.tsv")
    assert [(p.a, p.duplicate) for p in tsv] == [('"Quoted" start?', False), ("A?", True)]
    assert labeled.load_labeled(tmp_path / "p.csv")[0].a == "Is it, really?"
    assert [p.duplicate for p in labeled.load_labeled(tmp_path / "p.jsonl")] == [True, False]
    assert labeled.load_labeled(tmp_path / "p.json")[0].duplicate is True
    for name in ("p.tsv", "p.csv", "p.jsonl", "p.json"):
        assert labeled.is_labeled(tmp_path / name)
    (tmp_path / "old.json").write_text(json.dumps([{"origin": "A?", "similar": "B?"}]))
    assert not labeled.is_labeled(tmp_path / "old.json")


@pytest.mark.parametrize("name, content, why", [
    ("a.tsv", "q1\tq2\tlabel\nA\tB\t1\n", "header must name question1"),
    ("b.tsv", "question1\tquestion2\tis_duplicate\nA\tB\tmaybe\n", "line 2: the label must be 0/1"),
    ("c.jsonl", '{"text_a": "A", "text_b": "B", "label": 1}\n{oops\n', "line 2 is not JSON"),
    ("d.json", '[{"text_a": "A", "label": 1}]', "item 0 has none of the column sets"),
    ("e.csv", "question1,question2,is_duplicate\nA,B,0\n", "no pair is labeled a duplicate"),
])
def test_a_bad_labeled_file_is_refused_naming_the_line(tmp_path, name, content, why):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=why):
        labeled.load_labeled(tmp_path / name)


def test_the_crowded_evaluation_counts_hard_negatives_per_layer():
    rng = np.random.default_rng(11)
    vectors, pairs = {}, []
    for i in range(30):  # duplicates, worded apart: the vector search and the guards both serve them
        a = rng.standard_normal(384).astype(np.float32)
        a /= np.linalg.norm(a)
        qa, qb = f"How do I grow plant number {i}?", f"What is the way to grow plant number {i}?"
        vectors[qa], vectors[qb] = a, _near(a, rng, 0.95)
        pairs.append(labeled.LabeledPair(qa, qb, True))
    for i in range(10):  # hard negatives: one number apart, nearly the same vector
        a = rng.standard_normal(384).astype(np.float32)
        a /= np.linalg.norm(a)
        qa, qb = f"Can I make {i + 1}0,000 a month trading?", f"Can I make {i + 1}5,000 a month trading?"
        vectors[qa], vectors[qb] = a, _near(a, rng, 0.98)
        pairs.append(labeled.LabeledPair(qa, qb, False))
    result = labeled.evaluate_labeled(pairs, [0.9, 0.99], default=0.9, embedder=Table(vectors))
    assert result["pairs"] == 40 and result["duplicates"] == 30 and result["stored"] == 40
    vector, guarded = result["default"]["vector"], result["default"][f"+{GUARDS[-1]}"]
    assert vector["hits"] == 40 and vector["false_hits"] == 10
    assert vector["precision"] == pytest.approx(0.75) and vector["false_hit_rate"] == 1.0
    assert guarded["hits"] == 30 and guarded["false_hits"] == 0 and guarded["recall"] == 1.0
    assert guarded["false_hit_rate"] == 0.0
    assert result["rejected_at_default"]["numbers"] == {"right_refused": 0, "wrong_refused": 10}
    assert result["layers"]["vector"][-1]["hits"] == 0  # nothing reaches 0.99


def test_a_down_rated_entry_is_deleted_from_a_shared_redis_cache_for_every_gateway(redis_db):
    from modelyard.cache.redis_store import RedisStore

    vectors = _vectors()

    async def go():
        a = RedisStore(redis_db, "rated", ttl_s=3600, max_entries=10)
        b = RedisStore(redis_db, "rated", ttl_s=3600, max_entries=10)
        await a.open()
        await b.open()
        await a.put(_entry(1, RIGHT, vectors[RIGHT]))
        await b.sync()
        assert len(b) == 1
        assert await b.delete("e1") is True
        assert await a.get("e1") is None and await a.delete("e1") is False
        await a.sync()
        assert len(a) == 0  # the other gateway's index forgot it too
        await a.close()
        await b.close()

    asyncio.run(go())
