"""The cache's `VectorIndex` as an index's search: top-k, allowed-ids filters, save and load."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.cache.index import VectorIndex

DIM = 32


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((n, DIM)).astype(np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def brute_force(block: np.ndarray, ids: list[str], q: np.ndarray, k: int, allowed=lambda i: True) -> list[str]:
    scores = block @ (q / np.linalg.norm(q))
    order = [ids[i] for i in np.argsort(-scores) if allowed(ids[i])]
    return order[:k]


@pytest.fixture(params=[10_000, 16], ids=["numpy", "hnsw"])
def filled(request):
    block = vectors(600)
    ids = [f"c{i}" for i in range(600)]
    index = VectorIndex(DIM, ann_min=request.param)
    index.add_many(ids, ["p"] * 600, block, threads=1)
    return index, block, ids


def test_top_k_is_best_first_and_matches_brute_force(filled):
    index, block, ids = filled
    q = block[7] + 0.05 * vectors(1, seed=9)[0]
    found = index.search_top("p", q, 5)
    assert [i for i, _ in found][0] == "c7"
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert len(set(i for i, _ in found) & set(brute_force(block, ids, q, 5))) >= 4
    everything = index.search_top("p", q, 10_000)  # more than there are: all of them (a graph: nearly all)
    assert len(everything) == 600 if index.ann_min > 600 else len(everything) >= 500
    assert index.search_top("nowhere", q, 3) == [] and index.search_top("p", q, 0) == []


def test_a_filter_returns_only_allowed_entries_even_when_few_pass(filled):
    index, block, ids = filled
    every_50th = {f"c{i}" for i in range(0, 600, 50)}  # 12 of 600: a graph's first candidates rarely hold them
    q = block[123]
    found = index.search_top("p", q, 5, allowed=every_50th.__contains__)
    assert len(found) == 5 and {i for i, _ in found} <= every_50th
    assert [i for i, _ in found] == brute_force(block, ids, q, 5, every_50th.__contains__)
    two = {"c3", "c400"}
    assert {i for i, _ in index.search_top("p", q, 5, allowed=two.__contains__)} == two
    assert index.search_top("p", q, 5, allowed=lambda i: False) == []


def test_exact_top_scores_a_subset(filled):
    index, block, ids = filled
    subset = [f"c{i}" for i in range(100, 200)] + ["unknown"]
    q = block[150]
    found = index.exact_top("p", subset, q, 3)
    assert found[0][0] == "c150" and found[0][1] == pytest.approx(1.0, abs=2e-3)
    assert [i for i, _ in found] == brute_force(block, ids, q, 3, lambda i: 100 <= int(i[1:]) < 200)


def test_removed_entries_are_never_returned(filled):
    index, block, ids = filled
    for i in range(0, 600, 2):
        index.remove(f"c{i}")
    found = index.search_top("p", block[10], 20)
    assert found and all(int(i[1:]) % 2 == 1 for i, _ in found)


@pytest.mark.parametrize("ann_min", [10_000, 16], ids=["numpy", "hnsw"])
def test_a_saved_index_loads_with_the_same_answers(tmp_path, ann_min):
    block = vectors(300)
    index = VectorIndex(DIM, ann_min=ann_min)
    index.add_many([f"c{i}" for i in range(300)], ["p"] * 300, block, threads=1)
    index.remove("c5")
    index.save(tmp_path / "saved", {"uid": "abc"})
    loaded, meta = VectorIndex.load(tmp_path / "saved", ann_min=ann_min)
    assert meta == {"uid": "abc"} and len(loaded) == 299 and "c5" not in loaded
    for q in block[:20]:
        assert loaded.search_top("p", q, 4) == index.search_top("p", q, 4)
    loaded.add("c5", "p", block[5])  # it goes on changing
    assert loaded.search_top("p", block[5], 1)[0][0] == "c5"


def test_a_damaged_save_is_refused(tmp_path):
    index = VectorIndex(DIM)
    index.add("a", "p", vectors(1)[0])
    index.save(tmp_path / "saved")
    (tmp_path / "saved" / "0.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError):
        VectorIndex.load(tmp_path / "saved")


def test_bulk_adds_grow_a_matrix_into_a_graph(tmp_path):
    block = vectors(100)
    index = VectorIndex(DIM, ann_min=40)
    index.add_many([f"c{i}" for i in range(30)], ["p"] * 30, block[:30])
    index.add_many([f"c{i}" for i in range(30, 100)], ["p"] * 70, block[30:])  # crosses ann_min: one graph
    assert len(index) == 100
    assert index.search_top("p", block[77], 1)[0][0] == "c77"
    assert index.search_top("p", block[3], 1)[0][0] == "c3"


def test_a_wider_graph_search_finds_more_of_the_exact_top_k_and_the_width_survives_a_reload(tmp_path):
    block = vectors(4000, seed=3)
    ids = [f"c{i}" for i in range(4000)]
    queries = vectors(100, seed=4)

    def recall(index: VectorIndex) -> float:
        found = [len({i for i, _ in index.search_top("p", q, 10)} & set(brute_force(block, ids, q, 10))) / 10
                 for q in queries]
        return float(np.mean(found))

    narrow = VectorIndex(DIM, ann_min=16, expansion_search=10)
    narrow.add_many(ids, ["p"] * 4000, block, threads=1)
    narrow.save(tmp_path / "saved")
    wide, _ = VectorIndex.load(tmp_path / "saved", ann_min=16, expansion_search=200)
    narrow_again, _ = VectorIndex.load(tmp_path / "saved", ann_min=16, expansion_search=10)
    assert recall(wide) >= 0.95
    assert recall(narrow) < recall(wide) - 0.05  # the same graph, searched less widely
    assert recall(narrow_again) == pytest.approx(recall(narrow))
