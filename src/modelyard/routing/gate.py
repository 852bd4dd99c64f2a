"""The gate: a learned router goes live only if it beats the length rule on data it did not train on.

A learned router trained on one domain can be worse than the rule "longer
prompts go to the strong tier" on another. So before a trained router is
activated, `run_gate` measures it against that rule (and random, APGR 0.5):

* on **held-out folds** of its own training data: split by subject when the
  data has several (each file of a folder is one), else by rows, trained on
  one half and tested on the other, both ways (`evaluate.subject_split`) —
  the router is measured on subjects it has never seen;
* on **outside sets** (``checks``): outcome data from other domains, scored
  by the router trained on everything.

The router is measured as it serves (`LearnedRouter.guarded_scores`): prompts
out of its training distribution take the length rule. It passes when its
mean held-out APGR is above the rule's and on no outside set it falls more
than ``tolerance`` below the rule. Otherwise it is saved inactive (every
prompt then takes the fallback) unless forced.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ModelyardError
from .data import OutcomeData
from .evaluate import subject_split, sweep

log = logging.getLogger(__name__)

#: how far below the rule a router may fall on an outside set (APGR) and still pass: scoring noise
TOLERANCE = 0.002


@dataclass
class Comparison:
    """The learned router and the length rule on one test set."""

    name: str
    rows: int
    learned_apgr: float
    length_apgr: float
    learned_cpt50: float | None
    length_cpt50: float | None
    #: share of the test prompts the router called out of distribution (they took the rule)
    ood_share: float
    random_apgr: float = 0.5


@dataclass
class GateResult:
    """The held-out and outside comparisons, and the verdict."""

    passed: bool
    reason: str
    folds: list[Comparison] = field(default_factory=list)
    checks: list[Comparison] = field(default_factory=list)
    forced: bool = False

    @property
    def learned_apgr(self) -> float | None:
        return float(np.mean([f.learned_apgr for f in self.folds])) if self.folds else None

    @property
    def length_apgr(self) -> float | None:
        return float(np.mean([f.length_apgr for f in self.folds])) if self.folds else None

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "forced": self.forced, "reason": self.reason,
                "learned_apgr": self.learned_apgr, "length_apgr": self.length_apgr, "random_apgr": 0.5,
                "folds": [asdict(f) for f in self.folds], "checks": [asdict(c) for c in self.checks]}


def compare(name: str, router: Any, test: OutcomeData) -> Comparison:
    """The router (as served, out-of-distribution prompts on the rule) against the length rule on ``test``."""
    assessment = router.assess(test.prompts, answers=test.answers) if router.active else None
    learned = sweep(router.guarded_scores(test.prompts, answers=test.answers), test.weak, test.strong)
    length = sweep(np.array([len(p) for p in test.prompts], dtype=np.float64), test.weak, test.strong)
    ood = float(assessment.outside.mean()) if assessment is not None and len(test) else 1.0
    return Comparison(name, len(test), learned.apgr, length.apgr, learned.cpt(0.5), length.cpt(0.5), ood)


def run_gate(data: OutcomeData, fit: Callable[[OutcomeData], Any], *, final: Any = None,
             checks: Sequence[OutcomeData] = (), seed: int = 0, tolerance: float = TOLERANCE) -> GateResult:
    """Compare routers that ``fit`` trains on held-out folds of ``data`` (and ``final`` on ``checks``) with the rule.

    ``fit`` trains a `LearnedRouter` on an `OutcomeData`; ``final`` is the
    router trained on all of ``data`` (trained here when not given, only if
    there are ``checks``). A fold or check that cannot be measured (the
    strong model never better there) is left out and said so in the reason.
    """
    folds: list[Comparison] = []
    skipped: list[str] = []
    for name, train_mask, test_mask, _, test_groups in subject_split(data, seed):
        train, test = data.subset(train_mask), data.subset(test_mask)
        if not test.strong.mean() > test.weak.mean():
            skipped.append(f"fold {name}: the strong model is not better on its test half")
            continue
        try:
            folds.append(compare(f"held-out {name}", fit(train), test))
        except ModelyardError as exc:
            skipped.append(f"fold {name}: {exc.message}")
    measured: list[Comparison] = []
    for check in checks:
        if not check.strong.mean() > check.weak.mean():
            skipped.append(f"{check.source}: the strong model is not better there")
            continue
        if final is None:
            final = fit(data)
        measured.append(compare(check.source or "outside", final, check))
    notes = f" ({'; '.join(skipped)})" if skipped else ""
    if not folds:
        return GateResult(False, "could not measure the router on held-out data" + notes, folds, measured)
    learned = float(np.mean([f.learned_apgr for f in folds]))
    length = float(np.mean([f.length_apgr for f in folds]))
    if not learned > length:
        return GateResult(False, f"on held-out {_what(data)} its APGR {learned:.3f} does not beat the length rule's "
                                 f"{length:.3f}" + notes, folds, measured)
    worse = [c for c in measured if c.learned_apgr < c.length_apgr - tolerance]
    if worse:
        c = worse[0]
        return GateResult(False, f"on {c.name} its APGR {c.learned_apgr:.3f} is below the length rule's "
                                 f"{c.length_apgr:.3f}" + notes, folds, measured)
    return GateResult(True, f"on held-out {_what(data)} its APGR {learned:.3f} beats the length rule's {length:.3f}"
                      + (f" and on {len(measured)} outside set(s) it is not below it" if measured else "") + notes,
                      folds, measured)


def _what(data: OutcomeData) -> str:
    return "subjects" if len(data.group_names) >= 2 else "rows"
