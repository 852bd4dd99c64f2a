"""Is a prompt like the ones the learned router was trained on? Distance to the nearest training prompts.

A learned router is only as good as its training data is like the traffic:
trained on exam questions, it scores a word problem or an open chat question
no better than a coin. `NearestNeighbours` keeps (a sample of) the training
prompts' vectors and measures a prompt's *distance to the training data* as
the mean cosine distance to its ``k`` nearest training prompts. The
threshold is calibrated on the training set itself: each training prompt's
distance to the *other* training prompts (leave one out), and the
``quantile`` of those (0.99 by default) is the limit — so about 1% of
prompts like the training data are called out of distribution, and a prompt
farther from the data than almost every training prompt is.

At serving time this is one matrix-vector product over at most
``max_reference`` rows (4,096 x 384 float32: about 6 MB, half a millisecond)
and a partial sort; no index is needed at that size::

    detector = NearestNeighbours.fit(train_embeddings)
    detector.distance(embedding_of_prompt)   # -> array([0.52])
    detector.outside(embedding_of_prompt)    # -> array([ True])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import invalid

#: neighbours averaged per distance
DEFAULT_K = 5
#: share of the training prompts' own (leave-one-out) distances under the threshold
DEFAULT_QUANTILE = 0.99
#: training vectors kept as the reference (a seeded sample when there are more)
MAX_REFERENCE = 4096
#: up to this many rows are compared without BLAS (see `NearestNeighbours.distance`)
SMALL_BATCH = 8


@dataclass
class NearestNeighbours:
    """Mean cosine distance to the ``k`` nearest reference vectors; above ``threshold`` is out of distribution."""

    reference: np.ndarray
    k: int
    threshold: float
    quantile: float

    @classmethod
    def fit(cls, vectors: np.ndarray, *, k: int = DEFAULT_K, quantile: float = DEFAULT_QUANTILE,
            max_reference: int = MAX_REFERENCE, seed: int = 0) -> "NearestNeighbours":
        """Keep (a sample of) ``vectors`` and set the threshold at ``quantile`` of their leave-one-out distances."""
        if not 0.5 <= quantile < 1.0:
            raise invalid(f"the out-of-distribution quantile must be in [0.5, 1), not {quantile}", param="ood_quantile")
        vectors = _unit(np.asarray(vectors, dtype=np.float32))
        n = len(vectors)
        if n < 2:
            raise invalid(f"the out-of-distribution check needs at least 2 training prompts, not {n}", param="data")
        k = max(1, min(k, n - 1))
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(n, size=max_reference, replace=False)) if n > max_reference else np.arange(n)
        reference = np.ascontiguousarray(vectors[keep])
        # every training vector's distance to the reference, leaving itself out when it is in it
        self_index = np.full(n, -1)
        self_index[keep] = np.arange(len(keep))
        distances = np.empty(n)
        for start in range(0, n, 1024):
            rows = slice(start, min(start + 1024, n))
            sims = vectors[rows] @ reference.T
            mine = self_index[rows]
            hit = mine >= 0
            sims[np.flatnonzero(hit), mine[hit]] = -np.inf
            distances[rows] = _mean_distance(sims, k)
        return cls(reference=reference, k=k, threshold=float(np.quantile(distances, quantile)), quantile=quantile)

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        """Per row of ``vectors``: the mean cosine distance (0..2) to its ``k`` nearest reference vectors."""
        vectors = _unit(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        if vectors.shape[1] != self.reference.shape[1]:
            raise ValueError(f"vectors of {vectors.shape[1]} dimensions against a reference of "
                             f"{self.reference.shape[1]}")
        if len(vectors) <= SMALL_BATCH:
            # a request's one prompt: a BLAS product of one row would wake every BLAS thread, and on a busy
            # machine waiting for them costs ten times the arithmetic (bench/router_decision.py)
            sims = np.einsum("ij,kj->ik", vectors, self.reference)
        else:
            sims = vectors @ self.reference.T
        return _mean_distance(sims, self.k)

    def outside(self, vectors: np.ndarray) -> np.ndarray:
        """Per row: whether it is farther from the training data than the threshold."""
        return self.distance(vectors) > self.threshold


def _mean_distance(sims: np.ndarray, k: int) -> np.ndarray:
    k = min(k, sims.shape[1])
    nearest = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return 1.0 - nearest.mean(axis=1).astype(np.float64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
