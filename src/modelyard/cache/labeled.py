"""How often a semantic hit serves another question's answer: evaluation on *labeled* pairs.

A file of labeled question pairs — duplicates and hard negatives, pairs that
look alike but ask different things — is read in one of the common formats:

- CSV or TSV with a header naming ``question1``, ``question2``,
  ``is_duplicate`` (the Quora Question Pairs columns; GLUE's ``QQP/dev.tsv``
  too), or ``text_a``/``text_b``/``label``, or ``sentence1``/``sentence2``/``label``;
- JSON (a list) or JSON Lines of ``{"text_a", "text_b", "label"}`` objects
  (or the same three CSV spellings).

The cache is measured **crowded**, as it runs: every first text is stored
(in the real `LocalStore` and its index) and every second text looked up. A
hit is correct only when it lands on its own duplicate (the pair's first
text, or any text labeled a duplicate of it through other pairs); a hit on
anything else — the hard negative, or a neighbour from another pair — is a
false hit. Per threshold and per verification layer:

- ``precision``: correct hits / hits;
- ``recall``: correct hits / duplicate pairs;
- ``false_hit_rate``: of the lookups that should miss (a hard negative whose
  question has no duplicate stored), the share answered anyway.

Layers are measured separately: ``vector`` (the nearest neighbour above the
threshold, as ``verify: off`` serves it), each guard added in turn
(``+numbers`` … ``+terms``, the last being ``verify: guards``) and
``+judge`` when a judge is given. A rejected candidate falls to the next
nearest, as in the gateway (`modelyard.cache.index.nearest_live`).
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.sentence import Embedder
from .entry import Entry
from .evaluate import PARTITION, filled_store
from .index import CANDIDATES
from .verify import GUARDS, Judge, Verifier

_COLUMNS = (("question1", "question2", "is_duplicate"), ("text_a", "text_b", "label"),
            ("sentence1", "sentence2", "label"), ("origin", "similar", "label"))
_TRUE = {"1", "true", "yes", "duplicate", "paraphrase"}
_FALSE = {"0", "false", "no", "not_duplicate", "different"}


@dataclass(frozen=True, slots=True)
class LabeledPair:
    a: str
    b: str
    duplicate: bool


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: the label must be 0/1 (or true/false), not {value!r}")


def _from_record(record: Any, where: str) -> LabeledPair:
    if not isinstance(record, dict):
        raise ValueError(f"{where} is not an object with text_a, text_b and label")
    for a, b, label in _COLUMNS:
        if a in record and b in record and label in record:
            if not isinstance(record[a], str) or not isinstance(record[b], str):
                raise ValueError(f"{where}: {a!r} and {b!r} must be strings")
            return LabeledPair(record[a], record[b], _label(record[label], where))
    raise ValueError(f"{where} has none of the column sets " + ", ".join("/".join(c) for c in _COLUMNS))


def is_labeled(path: str | Path) -> bool:
    """Whether a pairs file holds labeled pairs (rather than today's positive-only ``origin``/``similar`` list)."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        return True
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "origin" not in data[0]


def load_labeled(path: str | Path) -> list[LabeledPair]:
    """The labeled pairs of a CSV, TSV, JSON or JSONL file; ValueError naming the line and field that is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"no pairs file at {path}") from None
    suffix = path.suffix.lower()
    pairs: list[LabeledPair] = []
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        # GLUE's and Quora's TSVs are not quoted (a question may start with a quote mark); CSVs are
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter,
                                quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        header = set(reader.fieldnames or ())
        columns = next((c for c in _COLUMNS if set(c) <= header), None)
        if columns is None:
            raise ValueError(f"{path}: the header must name question1, question2, is_duplicate (or text_a, text_b, "
                             f"label); it has {sorted(header)}")
        a, b, label = columns
        for line, row in enumerate(reader, start=2):
            if row.get(a) is None or row.get(b) is None or row.get(label) in (None, ""):
                raise ValueError(f"{path}, line {line}: a row needs {a}, {b} and {label}")
            pairs.append(LabeledPair(row[a], row[b], _label(row[label], f"{path}, line {line}")))
    elif suffix == ".jsonl":
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {line} is not JSON: {exc}") from None
                pairs.append(_from_record(record, f"{path}, line {line}"))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of {{\"text_a\", \"text_b\", \"label\"}} objects")
        pairs = [_from_record(item, f"{path}: item {i}") for i, item in enumerate(data)]
    pairs = [p for p in pairs if p.a.strip() and p.b.strip()]
    if not pairs:
        raise ValueError(f"{path} holds no labeled pairs")
    if not any(p.duplicate for p in pairs):
        raise ValueError(f"{path}: no pair is labeled a duplicate, so there is nothing a hit could get right")
    return pairs


def _key(text: str) -> str:
    return " ".join(text.lower().split())


class _Clusters:
    """Texts labeled duplicates of one another, through any chain of pairs (union-find)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def layers(judge: Judge | None = None) -> list[tuple[str, tuple[str, ...] | None, bool]]:
    """(name, guards, judge?) of each layer: ``vector``, then each guard added in turn, then ``+judge``."""
    out: list[tuple[str, tuple[str, ...] | None, bool]] = [("vector", None, False)]
    out += [(f"+{name}", GUARDS[: i + 1], False) for i, name in enumerate(GUARDS)]
    if judge is not None:
        out.append(("+judge", GUARDS, True))
    return out


async def _run(pairs: list[LabeledPair], thresholds: list[float], default: float, embedder: Embedder,
               judge: Judge | None, candidates: int) -> dict[str, Any]:
    clusters = _Clusters()
    for p in pairs:
        if p.duplicate:
            clusters.union(_key(p.a), _key(p.b))
    stored: dict[str, str] = {}
    for p in pairs:
        stored.setdefault(_key(p.a), p.a)
    texts = list(stored.values())
    vectors = embedder(texts)
    query_vectors = embedder([p.b for p in pairs])
    stored_clusters = {clusters.find(k) for k in stored}
    positives = sum(p.duplicate for p in pairs)
    should_miss = [not p.duplicate and clusters.find(_key(p.b)) not in stored_clusters for p in pairs]

    async with filled_store(texts, vectors) as store:
        # the candidates of every lookup, best first, with the verdict of each layer on each
        floor = min(thresholds + [default])
        candidate_lists = []
        for p, q in zip(pairs, query_vectors):
            found = store.index.search_top(PARTITION, q, candidates)
            candidate_lists.append([(int(entry_id[1:]), sim) for entry_id, sim in found if sim >= floor])
        verdicts = await _verdicts(pairs, texts, candidate_lists, judge)
        timing = await _time_lookups(store, pairs, query_vectors, default)

    result_layers = {}
    for name, _guards, _judged in layers(judge):
        rows = []
        for t in sorted(set(thresholds) | {default}):
            rows.append(_measure(t, pairs, texts, candidate_lists, verdicts[name], clusters, positives, should_miss))
        result_layers[name] = rows
    rejected = _rejections(default, pairs, texts, candidate_lists, verdicts, clusters)
    return {"mode": "labeled", "pairs": len(pairs), "duplicates": positives, "stored": len(texts),
            "should_miss": sum(should_miss), "candidates": candidates, "layers": result_layers,
            "rejected_at_default": rejected, **timing}


async def _verdicts(pairs: list[LabeledPair], texts: list[str], candidate_lists: list[list[tuple[int, float]]],
                    judge: Judge | None) -> dict[str, list[list[str | None]]]:
    """For each layer, for each lookup, for each candidate: None when served, else the check that refused it."""
    out: dict[str, list[list[str | None]]] = {}
    full = Verifier(GUARDS)
    for name, guards, judged in layers(judge):
        verifier = Verifier(guards) if guards else None
        per_lookup = []
        for p, cands in zip(pairs, candidate_lists):
            row: list[str | None] = []
            for index, _sim in cands:
                if verifier is None:
                    row.append(None)
                    continue
                verdict = (full if guards == GUARDS else verifier).check(texts[index], p.b)
                if verdict.same and judged:
                    verdict_same = await judge(texts[index], p.b)  # type: ignore[misc]
                    row.append(None if verdict_same else "judge")
                else:
                    row.append(None if verdict.same else verdict.guard)
            per_lookup.append(row)
        out[name] = per_lookup
    return out


def _served(threshold: float, cands: list[tuple[int, float]], refusals: list[str | None]) -> int | None:
    for (index, sim), refusal in zip(cands, refusals):
        if sim < threshold:
            return None
        if refusal is None:
            return index
    return None


def _measure(threshold: float, pairs: list[LabeledPair], texts: list[str], candidate_lists, refusals,
             clusters: _Clusters, positives: int, should_miss: list[bool]) -> dict[str, Any]:
    hits = correct = false_on_negatives = 0
    for i, p in enumerate(pairs):
        served = _served(threshold, candidate_lists[i], refusals[i])
        if served is None:
            continue
        hits += 1
        right = clusters.find(_key(texts[served])) == clusters.find(_key(p.b))
        correct += right
        if should_miss[i]:
            false_on_negatives += 1
    negatives = sum(should_miss)
    return {"threshold": threshold, "precision": correct / hits if hits else None,
            "recall": correct / positives if positives else None,
            "false_hit_rate": false_on_negatives / negatives if negatives else None,
            "hits": hits, "false_hits": hits - correct}


def _rejections(threshold: float, pairs: list[LabeledPair], texts: list[str], candidate_lists, verdicts,
                clusters: _Clusters) -> dict[str, dict[str, int]]:
    """At the default threshold, with every guard on: how many right and wrong candidates each guard refused."""
    out: dict[str, dict[str, int]] = {}
    name = "+judge" if "+judge" in verdicts else f"+{GUARDS[-1]}"
    for i, p in enumerate(pairs):
        for (index, sim), refusal in zip(candidate_lists[i], verdicts[name][i]):
            if sim < threshold:
                break
            right = clusters.find(_key(texts[index])) == clusters.find(_key(p.b))
            if refusal is None:
                break
            counts = out.setdefault(refusal, {"right_refused": 0, "wrong_refused": 0})
            counts["right_refused" if right else "wrong_refused"] += 1
    return out


async def _time_lookups(store: Any, pairs: list[LabeledPair], query_vectors: np.ndarray,
                        threshold: float) -> dict[str, float]:
    """The store's look-up with and without the guards, at the default threshold (embedding excluded)."""
    verifier = Verifier()
    plain, verified = [], []
    for p, q in list(zip(pairs, query_vectors))[:500]:
        t0 = time.perf_counter()
        await store.nearest(PARTITION, q, threshold)
        plain.append(time.perf_counter() - t0)

        async def accept(entry: Entry, _s: float, text: str = p.b) -> bool:
            return verifier.check(entry.query, text).same

        t0 = time.perf_counter()
        await store.nearest(PARTITION, q, threshold, accept)
        verified.append(time.perf_counter() - t0)
    ms = lambda xs, q: float(np.percentile(np.asarray(xs) * 1000, q)) if xs else 0.0  # noqa: E731
    return {"lookup_p50_ms": ms(plain, 50), "lookup_p99_ms": ms(plain, 99),
            "verified_lookup_p50_ms": ms(verified, 50), "verified_lookup_p99_ms": ms(verified, 99)}


def evaluate_labeled(pairs: list[LabeledPair], thresholds: list[float], *, default: float, embedder: Embedder,
                     judge: Judge | None = None, candidates: int = CANDIDATES) -> dict[str, Any]:
    """Precision, recall and false-hit rate per threshold and per verification layer (see the module docstring)."""
    result = asyncio.run(_run(pairs, list(thresholds), default, embedder, judge, candidates))
    result["thresholds"] = sorted(set(thresholds))
    result["default"] = {name: next(r for r in rows if r["threshold"] == default)
                         for name, rows in result["layers"].items()}
    result["default_threshold"] = default
    result["layers"] = {name: [r for r in rows if r["threshold"] in set(thresholds)]
                        for name, rows in result["layers"].items()}
    return result



def plot_labeled(result: dict[str, Any], path: str | Path) -> None:
    """Precision against recall, one curve per verification layer (threshold swept), as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - the `plot` extra brings matplotlib
        raise RuntimeError("plotting needs matplotlib: pip install 'modelyard[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    shown = ["vector", f"+{GUARDS[-1]}"] + (["+judge"] if "+judge" in result["layers"] else [])
    labels = {"vector": "vector only (verify: off)", f"+{GUARDS[-1]}": "+ guards (verify: guards)",
              "+judge": "+ judge (verify: judge)"}
    for name in shown:
        rows = [r for r in result["layers"][name] if r["precision"] is not None]
        ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], marker="o", markersize=3,
                label=labels[name])
        d = result["default"][name]
        if d["precision"] is not None:
            ax.scatter([d["recall"]], [d["precision"]], s=60, zorder=5, edgecolors="black")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("recall (duplicate pairs served their own answer)")
    ax.set_ylabel("precision (hits that were right)")
    ax.set_ylim(0.4, 1.01)
    ax.set_xlim(0, max(0.6, max((r["recall"] or 0) for rows in result["layers"].values() for r in rows) + 0.05))
    ax.set_title(f"semantic cache on {result['pairs']} labeled pairs (ringed: threshold "
                 f"{result['default_threshold']:g})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
