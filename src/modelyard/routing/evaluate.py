"""Offline evaluation of a router: quality against the share of strong calls.

A router gives each prompt a score; at a threshold ``t`` the prompts with
``score >= t`` go to the strong model, the rest to the weak one. Sweeping
``t`` over every distinct score traces a curve of points

* ``strong_share`` — the share of prompts sent to the strong model,
* ``quality`` — the mean outcome of the chosen model (accuracy, or a judge's mean score),
* ``pgr`` — performance gap recovered, ``(quality - q_weak) / (q_strong - q_weak)``,

from (0, q_weak) to (1, q_strong). Prompts with equal scores move together,
and the curve is linear between points (what breaking the tie at random
gives on average). The summary:

* ``apgr`` — the area under PGR against strong share (random routing: 0.5);
* ``cpt(x)`` — the smallest strong share that reaches PGR ``x`` (call-performance threshold);
* the *length rule* (longer prompts to strong), the *random* router (PGR =
  share) and the *oracle* (strong only where it beats weak) as references.

The ``learned`` strategy is measured as it would serve: gated against the
length rule on held-out subjects of its training data and with the
out-of-distribution fallback (see `learned_router`).

Data in a folder is split **by subject** (each file is one): a fixed, seeded
half of the subjects trains the router and the other half tests it, then the
other way round, and the two results are averaged — so a router is measured
on subjects it has never seen. A single file is split by rows the same way.
With separate training data (``--train``) the router trains on all of it and
is tested on all of ``--data``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import invalid
from .data import OutcomeData

log = logging.getLogger(__name__)

#: PGR levels reported in ``strong_share_at_pgr``
PGR_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.8, 0.9, 1.0)
#: strong shares at which averaged curves are sampled (every 1%)
GRID = np.linspace(0.0, 1.0, 101)
STRATEGIES = ("learned", "length", "random")


@dataclass
class Curve:
    """One router's quality/strong-share curve on one test set, with its summary."""

    thresholds: np.ndarray
    strong_share: np.ndarray
    quality: np.ndarray
    pgr: np.ndarray
    q_weak: float
    q_strong: float

    @property
    def apgr(self) -> float:
        """Area under PGR against strong share."""
        return float(np.trapezoid(self.pgr, self.strong_share))

    def cpt(self, level: float) -> float | None:
        """The smallest strong share whose PGR reaches ``level`` (linear between points); None if never."""
        return share_at_pgr(self.strong_share, self.pgr, level)

    def at(self, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(threshold, quality, pgr) at the given strong shares, interpolated along the curve."""
        quality = np.interp(shares, self.strong_share, self.quality)
        pgr = np.interp(shares, self.strong_share, self.pgr)
        # the threshold that sends at least that share: the first point at or beyond it
        idx = np.searchsorted(self.strong_share, shares - 1e-12, side="left").clip(0, len(self.thresholds) - 1)
        return self.thresholds[idx], quality, pgr


def share_at_pgr(share: np.ndarray, pgr: np.ndarray, level: float) -> float | None:
    """First strong share where the piecewise-linear curve ``pgr(share)`` reaches ``level``."""
    hit = np.flatnonzero(pgr >= level - 1e-12)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(share[0])
    s0, s1, p0, p1 = share[i - 1], share[i], pgr[i - 1], pgr[i]
    return float(s0 + (level - p0) / (p1 - p0) * (s1 - s0))


def sweep(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> Curve:
    """The curve of a router that sends prompts with ``score >= threshold`` to the strong model."""
    scores = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak, dtype=np.float64)
    strong = np.asarray(strong, dtype=np.float64)
    n = len(scores)
    if n == 0 or len(weak) != n or len(strong) != n:
        raise invalid(f"need one score per outcome row (got {len(scores)} scores for {len(weak)} rows)", param="data")
    if not np.all(np.isfinite(scores)):
        raise ValueError("router scores must be finite")
    q_weak, q_strong = float(weak.mean()), float(strong.mean())
    if not q_strong > q_weak:
        raise invalid(
            f"the strong model is not better than the weak one on this test data (mean {q_strong:.4g} vs "
            f"{q_weak:.4g}), so the performance gap recovered is undefined; check the column order",
            param="data", code="no_positive_labels",
        )
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    gain = np.cumsum((strong - weak)[order])
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # last row of each group of equal scores
    sent = np.r_[0, ends + 1]
    quality = (weak.sum() + np.r_[0.0, gain[ends]]) / n
    return Curve(
        thresholds=np.r_[np.inf, ranked[ends]],
        strong_share=sent / n,
        quality=quality,
        pgr=(quality - q_weak) / (q_strong - q_weak),
        q_weak=q_weak,
        q_strong=q_strong,
    )


def random_curve(weak: np.ndarray, strong: np.ndarray) -> Curve:
    """The expected curve of a router that picks the strong model at random: PGR equals the strong share."""
    q_weak, q_strong = float(np.mean(weak)), float(np.mean(strong))
    share = GRID.copy()
    return Curve(thresholds=1.0 - share, strong_share=share, quality=q_weak + share * (q_strong - q_weak),
                 pgr=share.copy(), q_weak=q_weak, q_strong=q_strong)


def oracle_curve(weak: np.ndarray, strong: np.ndarray) -> Curve:
    """The best possible router: it knows each prompt's outcome and sends the largest gains first."""
    return sweep(np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64), weak, strong)


# --- routers under test ----------------------------------------------------------------------

#: trains on one OutcomeData and returns a scorer for prompts (higher = send to strong)
RouterFactory = Callable[[OutcomeData], Callable[[OutcomeData], np.ndarray]]


def length_router(train: OutcomeData) -> Callable[[OutcomeData], np.ndarray]:
    """The rule "longer prompts go to the strong model": the score is the prompt's length in characters."""
    return length_scores


def length_scores(data: OutcomeData) -> np.ndarray:
    """The length rule's scores: each prompt's length in characters."""
    return np.array([len(p) for p in data.prompts], dtype=np.float64)


class learned_router:
    """A factory that fits a `LearnedRouter` (with ``embedder``) on each training fold, and scores as served.

    ``gated`` (default): the router is first measured against the length rule
    on held-out subjects of the fold's own training data (`gate.run_gate`,
    a nested split); one that does not beat it is inactive, and every test
    prompt takes the rule — what `modelyard router train` would activate.
    ``ood`` (default): test prompts out of the training distribution take
    the rule, as the live strategy does. With both off: the bare model.
    ``gates`` collects each fold's gate result.
    """

    def __init__(self, embedder: Callable[[list[str]], np.ndarray] | None = None, *, gated: bool = True,
                 ood: bool = True, **options: Any) -> None:
        self.embedder = embedder
        self.gated = gated
        self.ood = ood
        self.options = options
        self.gates: list[Any] = []

    def fit(self, train: OutcomeData) -> Any:
        from .learned import LearnedRouter

        router = LearnedRouter(embedder=self.embedder, **self.options)
        return router.fit(train.prompts, train.weak, train.strong, answers=train.answers)

    def __call__(self, train: OutcomeData) -> Callable[[OutcomeData], np.ndarray]:
        router = self.fit(train)
        if self.gated:
            from .gate import run_gate

            result = run_gate(train, self.fit, final=router)
            router.active = result.passed
            router.gate = result.to_json()
            self.gates.append(result)
        if not self.gated and not self.ood:
            return lambda test: router.score(test.prompts, answers=test.answers)
        return lambda test: router.guarded_scores(test.prompts, answers=test.answers, ood=self.ood)


# --- the evaluation --------------------------------------------------------------------------


@dataclass
class Fold:
    """One train/test direction of an evaluation."""

    name: str
    train_groups: list[str]
    test_groups: list[str]
    n_train: int
    n_test: int
    curve: Curve
    random: Curve
    oracle: Curve
    length: Curve
    seconds: float = 0.0


@dataclass
class Evaluation:
    """The folds of one evaluation and their averaged summary."""

    strategy: str
    split: str
    folds: list[Fold]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def _mean(self, fn: Callable[[Curve], float | None], which: str = "curve") -> float | None:
        values = [fn(getattr(f, which)) for f in self.folds]
        return None if any(v is None for v in values) else float(np.mean(values))

    def summary(self, which: str = "curve") -> dict[str, Any]:
        """APGR, CPT(50%), CPT(80%) and the share needed per PGR level, averaged over the folds."""
        return {
            "apgr": self._mean(lambda c: c.apgr, which),
            "cpt50": self._mean(lambda c: c.cpt(0.5), which),
            "cpt80": self._mean(lambda c: c.cpt(0.8), which),
            "strong_share_at_pgr": {f"{lvl:g}": self._mean(lambda c, lvl=lvl: c.cpt(lvl), which) for lvl in PGR_LEVELS},
        }

    def points(self, shares: np.ndarray = GRID, which: str = "curve") -> list[dict[str, Any]]:
        """The curve sampled at ``shares``, averaged over the folds (threshold: the folds' mean)."""
        per_fold = [getattr(f, which).at(shares) for f in self.folds]
        thresholds = np.mean([t for t, _, _ in per_fold], axis=0)
        quality = np.mean([q for _, q, _ in per_fold], axis=0)
        pgr = np.mean([p for _, _, p in per_fold], axis=0)
        return [{"threshold": _num(t), "strong_share": round(float(s), 6), "quality": float(q), "pgr": float(p)}
                for t, s, q, p in zip(thresholds, shares, quality, pgr)]

    def to_json(self) -> dict[str, Any]:
        """One JSON-able object: the summary, the curve points, references and per-fold details."""
        out: dict[str, Any] = {"strategy": self.strategy, "split": self.split}
        out.update(self.summary())
        out["points"] = self.points()
        out["q_weak"] = float(np.mean([f.curve.q_weak for f in self.folds]))
        out["q_strong"] = float(np.mean([f.curve.q_strong for f in self.folds]))
        for ref in ("length", "random", "oracle"):
            out[ref] = self.summary(ref)
        out["folds"] = [{
            "name": f.name, "train": f.train_groups, "test": f.test_groups, "n_train": f.n_train,
            "n_test": f.n_test, "seconds": round(f.seconds, 3),
            "apgr": f.curve.apgr, "cpt50": f.curve.cpt(0.5), "cpt80": f.curve.cpt(0.8),
            "length_apgr": f.length.apgr, "length_cpt50": f.length.cpt(0.5),
            "q_weak": f.curve.q_weak, "q_strong": f.curve.q_strong,
        } for f in self.folds]
        out["notes"] = list(self.notes)
        out["seconds"] = round(self.seconds, 3)
        return out


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def subject_split(data: OutcomeData, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, list[str], list[str]]]:
    """The two directions of a fixed, seeded 50/50 split: (name, train mask, test mask, train groups, test groups).

    With two or more groups the split is by group (subject); with one group
    (a single file) it is by row.
    """
    if len(data) < 2:
        raise invalid(f"{data.source or 'the outcome data'}: {len(data)} row(s); a 50/50 split needs at least 2",
                      param="data", code="too_few_rows")
    groups = sorted(data.group_names)
    rng = np.random.default_rng(seed)
    if len(groups) >= 2:
        shuffled = [groups[i] for i in rng.permutation(len(groups))]
        half = len(shuffled) // 2
        a, b = sorted(shuffled[:half]), sorted(shuffled[half:])
        labels = np.array(data.groups, dtype=object)
        in_a = np.isin(labels, a)
        return [("A->B", in_a, ~in_a, a, b), ("B->A", ~in_a, in_a, b, a)]
    in_a = np.zeros(len(data), dtype=bool)
    in_a[rng.permutation(len(data))[: len(data) // 2]] = True
    return [("rows A->B", in_a, ~in_a, ["rows A"], ["rows B"]), ("rows B->A", ~in_a, in_a, ["rows B"], ["rows A"])]


def evaluate(
    data: OutcomeData,
    strategy: str = "learned",
    *,
    train: OutcomeData | None = None,
    router: RouterFactory | None = None,
    seed: int = 0,
) -> Evaluation:
    """Evaluate ``strategy`` (or a custom ``router`` factory) on ``data``.

    Without ``train`` the data is split 50/50 by subject (see `subject_split`)
    and both directions are averaged; with ``train`` the router trains on all
    of it and is tested on all of ``data``.
    """
    if strategy not in STRATEGIES and router is None:
        raise invalid(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}", param="strategy")
    if router is None:
        router = {"learned": learned_router, "length": lambda: length_router}.get(strategy, lambda: None)()
    t0 = time.perf_counter()
    notes = list(data.notes)
    if data.dropped_contaminated:
        notes.append(f"dropped {data.dropped_contaminated} contaminated prompts")
    if train is None:
        plan = [(name, data.subset(tr), data.subset(te), gtr, gte) for name, tr, te, gtr, gte in subject_split(data, seed)]
        split = "subjects" if len(data.group_names) >= 2 else "rows"
    else:
        notes.extend(n for n in train.notes if n not in notes)
        plan = [("train->data", train, data, train.group_names, data.group_names)]
        split = "train/data"
    folds = []
    for name, tr, te, gtr, gte in plan:
        f0 = time.perf_counter()
        te.require_positive()
        if router is None:  # random: the expected curve, no training
            curve = random_curve(te.weak, te.strong)
        else:
            tr.require_positive(param="train" if train is not None else "data")
            scorer = router(tr)
            curve = sweep(scorer(te), te.weak, te.strong)
        fold = Fold(name, gtr, gte, len(tr), len(te), curve, random_curve(te.weak, te.strong),
                    oracle_curve(te.weak, te.strong), sweep(length_scores(te), te.weak, te.strong),
                    seconds=time.perf_counter() - f0)
        folds.append(fold)
        log.info("fold %s: trained on %d, tested on %d: APGR %.3f (%.1f s)", name, len(tr), len(te), curve.apgr,
                 fold.seconds)
    return Evaluation(strategy, split, folds, notes=notes, seconds=time.perf_counter() - t0)
