"""The learned router: predict, from the prompt, whether the strong tier is needed.

`LearnedRouter` is a multinomial logistic regression over two kinds of signal:

* surface features of the prompt (`features.prompt_features`: length, numbers
  and mathematics, code, lists, negations...), standardised;
* the prompt's sentence embedding (all-MiniLM-L6-v2 by default, through the
  `Embedder` seam).

The label is the sign of the gain, ``strong - weak`` (booleans or judge
scores alike): the strong model did better, the same, or worse. The score is
how much more likely the strong model is to do better than worse::

    score = max(0, P(strong better) - P(strong worse))

in [0, 1]: for correct/incorrect outcomes it is the expected gain in
accuracy from sending the prompt to the strong tier, and where the strong
model is never worse it is simply P(strong better). Prompts are so ranked by
what the strong tier is expected to add, which is what routing at a
threshold needs (a plain "strong better" classifier ignores the prompts where
the strong model does worse); 0 means "expected to add nothing". When the
training data carries the
weak model's answer, the router becomes a *verifier*: it also sees the
answer's features, its embedding and its similarity to the prompt, and must
then be given the answer when scoring (the cascade does).

Outside its training data a learned router is no better than a coin, so it
knows where its data is: `ood.NearestNeighbours` keeps (a sample of) the
training prompts' embeddings — what a prompt is about — and of their
standardised surface features — its shape: length, numbers, a list of
choices... — and calls a prompt *out of distribution* when it is farther
from the training prompts than 99% of them are from each other, in either.
(The shape catches what the topic misses: a word problem is close to MMLU's
mathematics questions by topic, but it has no lettered choices.) `assess` says, per prompt, the score and whether the prompt is
outside; the serving strategy routes such a prompt by its fallback (the
length rule by default), and `guarded_scores` puts both on one scale (the
share of training prompts ranked below) for offline evaluation. A router
whose held-out evaluation did not beat the length rule (`gate`) is saved
*inactive*: every prompt then takes the fallback.

Scoring is numpy only: the model is a handful of arrays, saved as ``.npz``
with a ``.json`` description beside it (no pickle), so a saved router loads
fast and safely::

    router = LearnedRouter()
    router.fit(prompts, weak_correct, strong_correct)
    router.save(router_path(settings, "assistant"))
    LearnedRouter.load(router_path(settings, "assistant")).score(["What is 2+2?"])  # -> array([0.08])
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ModelyardError, invalid
from ..extras import require
from .features import FEATURE_NAMES, MiniLMEmbedder, embedder_name, feature_matrix
from .ood import DEFAULT_K, DEFAULT_QUANTILE, NearestNeighbours

log = logging.getLogger(__name__)

FORMAT = "modelyard.learned-router"
#: 2 added the out-of-distribution reference, the training prompts' lengths and the gate; 1 still loads
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: quantiles kept of the training scores and prompt lengths (to put both on one "share ranked below" scale)
N_QUANTILES = 1001
#: features of the weak model's answer, used by the verifier variant
ANSWER_FEATURE_NAMES = ("answer_log_chars", "answer_hedges", "answer_prompt_similarity")
_HEDGES = ("i don't know", "i do not know", "not sure", "i cannot", "i can't", "unable to", "as an ai",
           "i'm sorry", "i am sorry", "unclear", "it depends", "cannot determine", "not enough information")


def router_path(settings: Any, endpoint: str) -> Path:
    """Where ``modelyard router train ENDPOINT`` saves an endpoint's router: ``MODELYARD_HOME/routers/ENDPOINT.npz``."""
    if not endpoint or "/" in endpoint or "\\" in endpoint or endpoint.startswith("."):
        raise invalid(f"invalid endpoint name {endpoint!r}", param="endpoint")
    return Path(settings.home) / "routers" / f"{endpoint}.npz"


def candidate_path(path: str | Path) -> Path:
    """Where a router that was not activated is saved when the endpoint already has an active one."""
    npz, _ = _paths(path)
    return npz.with_name(npz.name.removesuffix(".npz") + ".candidate.npz")


class LearnedRouter:
    """Logistic regression on prompt features + embeddings; `score` says how much the strong tier is needed.

    ``embedder`` is any callable ``list[str] -> np.ndarray`` of normalised
    rows (default: `MiniLMEmbedder`, loaded on first use). ``l2`` is the L2
    penalty per training row (scikit-learn's ``C`` is ``1 / (l2 * rows)``, so
    the prior weighs the same against the mean loss whatever the data size;
    the default gives ``C`` = 0.02 at 7,000 rows). ``use_embeddings=False``
    keeps only the surface features (no model to load, ~0.1 ms per prompt).
    """

    def __init__(self, embedder: Callable[[list[str]], np.ndarray] | None = None, *, l2: float = 0.007,
                 use_embeddings: bool = True, max_iter: int = 2000, ood_quantile: float = DEFAULT_QUANTILE,
                 ood_k: int = DEFAULT_K) -> None:
        self.embedder = embedder
        if not l2 > 0:
            raise invalid(f"l2 must be positive (got {l2})", param="l2")
        self.l2 = float(l2)
        self.use_embeddings = use_embeddings
        self.max_iter = max_iter
        #: one row of weights and one intercept per class of `classes` (-1, 0, 1: strong worse/same/better)
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None
        self.classes: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.uses_answers = False
        self.embedding_dim = 0
        self.embedder_id = ""
        #: the distribution of training scores (quantiles), for `threshold_for_share`
        self.score_quantiles: np.ndarray | None = None
        #: the distribution of training prompt lengths (characters), for the length fallback
        self.length_quantiles: np.ndarray | None = None
        self.ood_quantile = ood_quantile
        self.ood_k = ood_k
        #: where the training prompts are: by embedding (or features, without embeddings), and by surface
        #: features (None: a version-1 file, no check)
        self.ood: NearestNeighbours | None = None
        self.ood_shape: NearestNeighbours | None = None
        #: the held-out comparison with the length rule (`gate.run_gate`), when one was run
        self.gate: dict[str, Any] | None = None
        #: False when the gate failed and nobody forced it: every prompt takes the fallback
        self.active = True
        self.info: dict[str, Any] = {}

    # --- the embedder -----------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.embedder is None:
            self.embedder = MiniLMEmbedder()
        vectors = np.asarray(self.embedder(texts), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"the embedder returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    # --- training ---------------------------------------------------------------------------

    def fit(self, prompts: Sequence[str], weak: Sequence[float], strong: Sequence[float],
            answers: Sequence[str] | None = None) -> "LearnedRouter":
        """Learn from outcomes: per prompt, the weak and the strong model's outcome (bool or score).

        With ``answers`` (the weak model's answer per prompt) the router is a
        verifier and `score` will need answers too. Raises `ModelyardError`
        (400) for empty or mismatched inputs and when no prompt is answered
        better by the strong model (nothing to learn).
        """
        LogisticRegression = require("sklearn.linear_model", "router", "the learned router").LogisticRegression

        prompts = list(prompts)
        weak_a = _outcomes(weak, "weak", len(prompts))
        strong_a = _outcomes(strong, "strong", len(prompts))
        if not prompts:
            raise invalid("no training rows: fit needs at least one prompt with both outcomes", param="data",
                          code="no_rows")
        if answers is not None and len(answers) != len(prompts):
            raise invalid(f"{len(answers)} answers for {len(prompts)} prompts", param="answers")
        labels = np.sign(strong_a - weak_a).astype(int)
        positives = int((labels > 0).sum())
        if positives == 0:
            raise invalid(f"no positive labels: in none of the {len(prompts)} rows does the strong model beat the "
                          "weak one, so there is nothing to learn", param="data", code="no_positive_labels")
        if (labels > 0).all():
            raise invalid("every row is a positive label (the strong model always beats the weak one): "
                          "a router would send everything to the strong model", param="data",
                          code="no_negative_labels")
        t0 = time.perf_counter()
        self.uses_answers = answers is not None
        x = self._design(prompts, list(answers) if answers is not None else None)
        if self.use_embeddings:
            self.embedder_id = embedder_name(self.embedder)
            self.embedding_dim = (x.shape[1] - self._n_scaled()) // (2 if self.uses_answers else 1)
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0)
        self.scale[self.scale < 1e-9] = 1.0
        n_feat = self._n_scaled()
        z = x.copy()
        z[:, :n_feat] = (x[:, :n_feat] - self.mean[:n_feat]) / self.scale[:n_feat]
        model = LogisticRegression(C=1.0 / (self.l2 * len(prompts)), max_iter=self.max_iter)
        model.fit(z, labels)
        self.classes = model.classes_.astype(np.float64)
        if len(self.classes) == 2:  # sklearn keeps one row for two classes: spell out both (softmax form)
            self.coef = np.vstack([np.zeros_like(model.coef_[0]), model.coef_[0]])
            self.intercept = np.array([0.0, model.intercept_[0]])
        else:
            self.coef = model.coef_.astype(np.float64)
            self.intercept = model.intercept_.astype(np.float64)
        grid = np.linspace(0, 1, N_QUANTILES)
        self.score_quantiles = np.quantile(self._apply(x), grid)
        self.length_quantiles = np.quantile([len(p) for p in prompts], grid)
        self.ood = NearestNeighbours.fit(self._ood_vectors(x), k=self.ood_k, quantile=self.ood_quantile)
        if self.use_embeddings and self.embedding_dim:
            self.ood_shape = NearestNeighbours.fit(self._shape_vectors(x), k=self.ood_k, quantile=self.ood_quantile)
        self.info = {"rows": len(prompts), "positives": positives, "positive_share": positives / len(prompts),
                     "q_weak": float(weak_a.mean()), "q_strong": float(strong_a.mean()),
                     "fit_seconds": round(time.perf_counter() - t0, 3), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                                    time.gmtime())}
        log.info("trained a learned router on %d rows (%d positive) in %.1f s", len(prompts), positives,
                 self.info["fit_seconds"])
        return self

    def _n_scaled(self) -> int:
        """How many leading columns are standardised (features; embeddings are used as they are)."""
        return len(FEATURE_NAMES) + (len(ANSWER_FEATURE_NAMES) + len(FEATURE_NAMES) if self.uses_answers else 0)

    def _design(self, prompts: list[str], answers: list[str] | None) -> np.ndarray:
        """The input matrix: [prompt features, (answer features,) prompt embedding, (answer embedding)]."""
        blocks = [feature_matrix(prompts)]
        emb = self._embed(prompts) if self.use_embeddings or answers is not None else None
        if answers is not None:
            answer_emb = self._embed([a if a.strip() else "(empty)" for a in answers])
            blocks.append(feature_matrix(answers))
            blocks.append(_answer_features(answers, emb, answer_emb))
        if self.use_embeddings and emb is not None:
            blocks.append(emb)
            if answers is not None:
                blocks.append(answer_emb)
        return np.hstack(blocks)

    # --- scoring ----------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], answers: Sequence[str] | None = None) -> np.ndarray:
        """Per prompt, in [0, 1]: P(strong better) - P(strong worse), floored at 0. Strong at or above a threshold."""
        prompts = list(prompts)
        if not prompts:
            if self.coef is None:
                raise ModelyardError("the learned router is not trained: run `modelyard router train`", status=409,
                                     code="router_not_trained")
            return np.empty(0)
        return self._scored(prompts, answers)[0]

    def _scored(self, prompts: list[str], answers: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """The scores and the design matrix they came from."""
        if self.coef is None:
            raise ModelyardError("the learned router is not trained: run `modelyard router train`", status=409,
                                 code="router_not_trained")
        if self.uses_answers and answers is None:
            raise invalid("this router is a verifier trained on the weak model's answers; pass the answers too",
                          param="answers")
        if answers is not None and len(answers) != len(prompts):
            raise invalid(f"{len(answers)} answers for {len(prompts)} prompts", param="answers")
        x = self._design(prompts, list(answers) if self.uses_answers and answers is not None else None)
        if x.shape[1] != self.coef.shape[1]:
            raise ModelyardError(
                f"the router expects {self.coef.shape[1]} inputs but got {x.shape[1]}: it was trained with the "
                f"embedder {self.embedder_id!r} ({self.embedding_dim} dimensions); load it with the same embedder",
                status=500, code="router_embedder_mismatch")
        return self._apply(x), x

    def _ood_vectors(self, x: np.ndarray) -> np.ndarray:
        """What the out-of-distribution check compares: the prompt's embedding, else its standardised features."""
        n = self._n_scaled()
        if self.use_embeddings and self.embedding_dim:
            return x[:, n:n + self.embedding_dim]
        return self._shape_vectors(x)

    def _shape_vectors(self, x: np.ndarray) -> np.ndarray:
        """The prompt's standardised surface features."""
        assert self.mean is not None and self.scale is not None
        k = len(FEATURE_NAMES)
        return (x[:, :k] - self.mean[:k]) / self.scale[:k]

    def assess(self, prompts: Sequence[str], answers: Sequence[str] | None = None) -> "Assessment":
        """Score the prompts and say which lie outside the training data (one embedding per prompt)."""
        prompts = list(prompts)
        if not prompts:
            return Assessment(np.empty(0), np.empty(0), np.zeros(0, dtype=bool))
        scores, x = self._scored(prompts, answers)
        if self.ood is None:
            return Assessment(scores, np.zeros(len(prompts)), np.zeros(len(prompts), dtype=bool))
        distance = self.ood.distance(self._ood_vectors(x))
        outside = distance > self.ood.threshold
        if self.ood_shape is not None:
            outside |= self.ood_shape.outside(self._shape_vectors(x))
        return Assessment(scores, distance, outside)

    def strong_share(self, threshold: float) -> float:
        """The share of training prompts scored at or above ``threshold`` (what the threshold sends to strong)."""
        if self.score_quantiles is None:
            raise ModelyardError("the learned router is not trained", status=409, code="router_not_trained")
        return 1.0 - _rank(self.score_quantiles, np.array([threshold]))[0]

    def length_rank(self, prompts: Sequence[str]) -> np.ndarray:
        """Per prompt: the share of training prompts shorter than it (ties count half), in [0, 1].

        The length rule on the learned score's scale: a prompt at or above
        ``1 - strong_share(threshold)`` is as long as the longest prompts the
        threshold's share would send to the strong tier.
        """
        lengths = np.array([len(p) for p in prompts], dtype=np.float64)
        if self.length_quantiles is None:
            raise ModelyardError("this router file has no training lengths (version 1): retrain it with "
                                 "`modelyard router train`", status=409, code="router_outdated")
        return _rank(self.length_quantiles, lengths) + 1e-9 * np.log1p(lengths)  # ties broken by length

    def guarded_scores(self, prompts: Sequence[str], answers: Sequence[str] | None = None, *,
                       ood: bool = True) -> np.ndarray:
        """Scores on one scale for prompts inside and outside the training data, as served.

        Inside: the share of training prompts scored below this one. Outside
        (when ``ood``), or for every prompt when the router is inactive: the
        share of training prompts shorter than it — the length rule, which is
        what the live strategy falls back to. So ``guarded >= 1 - share``
        sends about ``share`` of prompts like the training data to the strong
        tier whichever way each is decided. A version-1 file (no reference)
        scores as before.
        """
        prompts = list(prompts)
        if self.length_quantiles is None or self.score_quantiles is None:
            return self.score(prompts, answers)
        if not self.active:
            return self.length_rank(prompts)
        a = self.assess(prompts, answers)
        out = _rank(self.score_quantiles, a.scores) + 1e-6 * a.scores
        if ood and a.outside.any():
            out[a.outside] = self.length_rank([p for p, o in zip(prompts, a.outside) if o])
        return out

    def _apply(self, x: np.ndarray) -> np.ndarray:
        assert self.coef is not None and self.mean is not None and self.scale is not None
        assert self.intercept is not None and self.classes is not None
        n = self._n_scaled()
        logits = ((x[:, :n] - self.mean[:n]) / self.scale[:n]) @ self.coef[:, :n].T + x[:, n:] @ self.coef[:, n:].T
        logits += self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return np.clip(probs @ self.classes, 0.0, 1.0)

    def threshold_for_share(self, share: float) -> float:
        """The score threshold that would have sent ``share`` of the training prompts to the strong tier."""
        if not 0.0 <= share <= 1.0:
            raise invalid(f"strong share must be between 0 and 1 (got {share})", param="strong_share")
        if self.score_quantiles is None:
            raise ModelyardError("the learned router is not trained", status=409, code="router_not_trained")
        return float(np.interp(1.0 - share, np.linspace(0, 1, len(self.score_quantiles)), self.score_quantiles))

    # --- saving -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``PATH.npz`` (the arrays) and ``PATH.json`` (what they mean); returns the .npz path."""
        if self.coef is None:
            raise ModelyardError("cannot save an untrained router", status=409, code="router_not_trained")
        npz, meta = _paths(path)
        npz.parent.mkdir(parents=True, exist_ok=True)
        description = {
            "format": FORMAT, "version": FORMAT_VERSION, "model": "multinomial_logistic_regression", "l2": self.l2,
            "features": list(FEATURE_NAMES), "uses_answers": self.uses_answers,
            "answer_features": list(ANSWER_FEATURE_NAMES) if self.uses_answers else [],
            "use_embeddings": self.use_embeddings, "embedder": self.embedder_id, "embedding_dim": self.embedding_dim,
            "label": "sign(strong - weak)", "score": "max(0, P(strong better) - P(strong worse))", "trained": self.info,
            "active": self.active, "gate": self.gate,
        }
        arrays = {"coef": self.coef, "intercept": self.intercept, "classes": self.classes, "mean": self.mean,
                  "scale": self.scale, "score_quantiles": self.score_quantiles}
        if self.length_quantiles is not None:
            arrays["length_quantiles"] = self.length_quantiles
        if self.ood is not None:
            arrays["ood_reference"] = self.ood.reference
            description["ood"] = {"distance": f"mean cosine distance to the {self.ood.k} nearest training prompts",
                                  "k": self.ood.k, "quantile": self.ood.quantile, "threshold": self.ood.threshold,
                                  "reference_rows": int(len(self.ood.reference))}
        if self.ood_shape is not None:
            arrays["ood_shape_reference"] = self.ood_shape.reference
            description["ood"]["shape"] = {"k": self.ood_shape.k, "quantile": self.ood_shape.quantile,
                                           "threshold": self.ood_shape.threshold,
                                           "vectors": "standardised surface features"}
        _atomic_write(npz, lambda fh: np.savez(fh, **arrays))
        _atomic_write(meta, lambda fh: fh.write(json.dumps(description, indent=2).encode()))
        log.info("saved the learned router to %s", npz)
        return npz

    @staticmethod
    def set_active(path: str | Path, active: bool, reason: str) -> None:
        """Mark a saved router active or not (its description only), recording ``reason`` in its gate."""
        _, meta = _paths(path)
        try:
            description = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise invalid(f"{meta}: cannot read the router's description ({exc})", param="router") from None
        description["active"] = bool(active)
        gate = description.get("gate") or {}
        gate.update({"forced": bool(active) and not gate.get("passed", True), "activation": reason})
        description["gate"] = gate
        _atomic_write(meta, lambda fh: fh.write(json.dumps(description, indent=2).encode()))

    @classmethod
    def load(cls, path: str | Path, embedder: Callable[[list[str]], np.ndarray] | None = None) -> "LearnedRouter":
        """Read a router written by `save`. Raises `ModelyardError` (404 missing, 400 unreadable)."""
        npz, meta = _paths(path)
        if not npz.is_file() or not meta.is_file():
            raise ModelyardError(f"no trained router at {npz} (train one with `modelyard router train`)",
                                 status=404, param="router", code="router_not_found")
        try:
            description = json.loads(meta.read_text())
            with np.load(npz, allow_pickle=False) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except (OSError, ValueError) as exc:
            raise invalid(f"{npz}: not a router file ({exc})", param="router") from None
        if description.get("format") != FORMAT:
            raise invalid(f"{meta}: not a modelyard learned router", param="router")
        if description.get("version") not in READABLE_VERSIONS:
            raise invalid(f"{meta}: a learned router of version {description.get('version')!r}; this modelyard reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}: retrain it with `modelyard router train`",
                          param="router", code="router_version")
        if description.get("features") != list(FEATURE_NAMES):
            raise invalid(f"{meta}: trained with other prompt features; retrain it with this version", param="router")
        router = cls(embedder, l2=float(description.get("l2", 0.007)), use_embeddings=bool(description.get("use_embeddings")))
        try:
            router.coef, router.mean, router.scale = data["coef"], data["mean"], data["scale"]
            router.intercept, router.classes = data["intercept"], data["classes"]
        except KeyError as exc:
            raise invalid(f"{npz}: not a router file (no array {exc})", param="router") from None
        router.score_quantiles = data.get("score_quantiles")
        router.uses_answers = bool(description.get("uses_answers"))
        router.embedding_dim = int(description.get("embedding_dim") or 0)
        router.embedder_id = str(description.get("embedder") or "")
        router.info = dict(description.get("trained") or {})
        router.length_quantiles = data.get("length_quantiles")
        router.active = bool(description.get("active", True))
        router.gate = description.get("gate")
        ood = description.get("ood")
        if "ood_reference" in data and isinstance(ood, dict):
            try:
                router.ood = NearestNeighbours(reference=data["ood_reference"].astype(np.float32), k=int(ood["k"]),
                                               threshold=float(ood["threshold"]), quantile=float(ood["quantile"]))
                shape = ood.get("shape")
                if "ood_shape_reference" in data and isinstance(shape, dict):
                    router.ood_shape = NearestNeighbours(
                        reference=data["ood_shape_reference"].astype(np.float32), k=int(shape["k"]),
                        threshold=float(shape["threshold"]), quantile=float(shape["quantile"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise invalid(f"{meta}: unreadable out-of-distribution settings ({exc})", param="router") from None
        if embedder is not None and router.embedder_id and embedder_name(embedder) != router.embedder_id:
            log.warning("router %s was trained with embedder %r but is loaded with %r", npz, router.embedder_id,
                        embedder_name(embedder))
        return router


@dataclass
class Assessment:
    """What the router makes of some prompts: its scores, their distance to the training data, and which are
    out of distribution (farther than the threshold calibrated on the training prompts)."""

    scores: np.ndarray
    distance: np.ndarray
    outside: np.ndarray


# --- helpers ---------------------------------------------------------------------------------


def _rank(quantiles: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The share of a distribution (given by its quantiles) below each value, ties counted half, in [0, 1]."""
    q = np.asarray(quantiles, dtype=np.float64)
    below = np.searchsorted(q, values, side="left") + np.searchsorted(q, values, side="right")
    return below / (2.0 * len(q))


def _outcomes(values: Sequence[float], name: str, n: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid(f"{name} outcomes must be booleans or numbers", param=name) from None
    if array.shape != (n,):
        raise invalid(f"{len(array)} {name} outcomes for {n} prompts", param=name)
    if not np.all(np.isfinite(array)):
        raise invalid(f"{name} outcomes must be finite numbers", param=name)
    return array


def _answer_features(answers: list[str], prompt_emb: np.ndarray | None, answer_emb: np.ndarray) -> np.ndarray:
    lowered = [a.lower() for a in answers]
    sim = np.einsum("ij,ij->i", prompt_emb, answer_emb) if prompt_emb is not None else np.zeros(len(answers))
    return np.column_stack([
        np.log1p([len(a) for a in answers]),
        [sum(h in a for h in _HEDGES) for a in lowered],
        sim,
    ])


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path).expanduser()
    base = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
