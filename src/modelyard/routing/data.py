"""Outcome data for training and evaluating routers.

An outcome row says how well a *weak* (cheap) and a *strong* (expensive)
model answered one prompt. This is RouteLLM's format::

    prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview
    "Which of the following ...",True,False

`load_outcomes` reads a CSV or JSONL file, or a folder of them. In a folder
each file is one *group* (a subject: ``mmlu_anatomy.csv``), which is what the
offline evaluation splits on. The two outcome columns hold booleans (the
answer was correct) or numbers (a judge's score, e.g. 1-10); a row's quality
is the chosen model's value, and a router's quality is their mean. Columns
are found in this order:

1. ``weak_column`` / ``strong_column`` given by the caller (``--weak-column``);
2. a known pair: ``weak_correct``/``strong_correct``, ``weak_score``/
   ``strong_score``, or RouteLLM's model names;
3. exactly two columns other than the prompt that hold only booleans or
   numbers: the one with the lower mean is taken as the weak model, and the
   guess is written to `OutcomeData.notes` so the CLI can show it.

Other columns (recorded response texts, ids) are ignored, except an optional
answer column (the weak model's answer: ``weak_answer``, ``weak_response``,
``answer``), which a verifier may use. Prompts listed in
``contaminated_prompts.jsonl`` beside the data are dropped.

Every problem is a `ModelyardError` (400) naming the file and the column.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import invalid

log = logging.getLogger(__name__)

#: column pairs recognised without options, (weak, strong)
KNOWN_PAIRS: tuple[tuple[str, str], ...] = (
    ("weak_correct", "strong_correct"),
    ("weak_score", "strong_score"),
    ("weak", "strong"),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"),  # RouteLLM's released outcome files
)
#: columns taken as the weak model's answer when present
ANSWER_COLUMNS: tuple[str, ...] = ("weak_answer", "weak_response", "answer")
CONTAMINATED_FILE = "contaminated_prompts.jsonl"
DATA_SUFFIXES = (".csv", ".jsonl")

_TRUE = {"true", "t", "yes", "y", "correct"}
_FALSE = {"false", "f", "no", "n", "incorrect", "wrong"}


@dataclass
class OutcomeData:
    """Prompts with the weak and the strong model's outcomes (higher is better)."""

    prompts: list[str]
    weak: np.ndarray
    strong: np.ndarray
    #: one label per row: the file (subject) it came from
    groups: list[str]
    weak_column: str
    strong_column: str
    source: str = ""
    #: the weak model's answer per row, when the data has an answer column
    answers: list[str] | None = None
    #: rows dropped as contaminated, and rows skipped for a missing prompt or outcome
    dropped_contaminated: int = 0
    skipped_rows: int = 0
    #: things the user should know (a guessed column mapping); the CLI prints them
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def group_names(self) -> list[str]:
        """The distinct groups, in order of first appearance."""
        return list(dict.fromkeys(self.groups))

    @property
    def gain(self) -> np.ndarray:
        """strong - weak per row: what sending the row to the strong model buys."""
        return self.strong - self.weak

    def subset(self, mask: np.ndarray) -> "OutcomeData":
        """The rows where ``mask`` is true (a boolean array), same columns and notes."""
        idx = np.flatnonzero(mask)
        return OutcomeData(
            prompts=[self.prompts[i] for i in idx],
            weak=self.weak[idx],
            strong=self.strong[idx],
            groups=[self.groups[i] for i in idx],
            weak_column=self.weak_column,
            strong_column=self.strong_column,
            source=self.source,
            answers=None if self.answers is None else [self.answers[i] for i in idx],
            notes=list(self.notes),
        )

    def require_positive(self, param: str = "data") -> None:
        """Raise unless some prompt is answered better by the strong model than by the weak one."""
        if not np.any(self.strong > self.weak):
            raise invalid(
                f"{self.source or 'the outcome data'}: no prompt where the strong model ({self.strong_column!r}) "
                f"beats the weak one ({self.weak_column!r}) in {len(self)} rows, so there is nothing to learn "
                "or measure; check that the two columns are not swapped or identical",
                param=param, code="no_positive_labels",
            )


def load_outcomes(
    path: str | Path,
    *,
    weak_column: str | None = None,
    strong_column: str | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    param: str = "data",
) -> OutcomeData:
    """Read outcome data from a CSV/JSONL file or a folder of them (each file one group).

    Raises `ModelyardError` (400, ``param``) when the path holds no data
    files, a column is missing, or no row is left.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise invalid(f"{root}: no such file or folder", param=param, code="not_found")
    if root.is_dir():
        files = sorted(p for p in root.iterdir()
                       if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and p.name != CONTAMINATED_FILE)
        if not files:
            raise invalid(f"{root}: the folder holds no .csv or .jsonl outcome files", param=param)
        contaminated = read_contaminated(root / CONTAMINATED_FILE)
    else:
        if root.suffix.lower() not in DATA_SUFFIXES:
            raise invalid(f"{root}: outcome data must be a .csv or .jsonl file (or a folder of them)", param=param)
        files = [root]
        contaminated = read_contaminated(root.parent / CONTAMINATED_FILE)

    out: OutcomeData | None = None
    for file in files:
        rows, columns = _read_rows(file, param)
        if out is None:
            weak_col, strong_col, notes = resolve_columns(columns, rows, file, weak_column, strong_column,
                                                          prompt_column, param)
            answer_col = _answer_column(columns, answer_column, file, param)
            out = OutcomeData([], np.empty(0), np.empty(0), [], weak_col, strong_col, source=str(root),
                              answers=[] if answer_col else None, notes=notes)
            weak_vals: list[float] = []
            strong_vals: list[float] = []
        for name in (prompt_column, out.weak_column, out.strong_column):
            if name not in columns:
                raise invalid(f"{file}: no column {name!r} (the first file has it); columns: {_shown(columns)}",
                              param=_column_param(name, out, prompt_column))
        if answer_col and answer_col not in columns:
            raise invalid(f"{file}: no answer column {answer_col!r}; columns: {_shown(columns)}", param="answer_column")
        group = file.stem
        for row in rows:
            prompt = row.get(prompt_column)
            weak_v = _outcome(row.get(out.weak_column))
            strong_v = _outcome(row.get(out.strong_column))
            if not isinstance(prompt, str) or not prompt.strip() or weak_v is None or strong_v is None:
                out.skipped_rows += 1
                continue
            if prompt.strip() in contaminated:
                out.dropped_contaminated += 1
                continue
            out.prompts.append(prompt)
            weak_vals.append(weak_v)
            strong_vals.append(strong_v)
            out.groups.append(group)
            if out.answers is not None:
                answer = row.get(answer_col)
                out.answers.append("" if answer is None else str(answer))
    assert out is not None
    out.weak = np.asarray(weak_vals, dtype=np.float64)
    out.strong = np.asarray(strong_vals, dtype=np.float64)
    if not out.prompts:
        raise invalid(f"{root}: no usable rows (each needs a prompt and both outcomes; "
                      f"{out.skipped_rows} skipped, {out.dropped_contaminated} contaminated)", param=param,
                      code="no_rows")
    if out.skipped_rows:
        out.notes.append(f"skipped {out.skipped_rows} rows without a prompt or without both outcomes")
    log.info("read %d outcome rows from %s (%d groups, %d contaminated dropped)", len(out), root,
             len(out.group_names), out.dropped_contaminated)
    return out


def resolve_columns(
    columns: list[str], rows: list[dict[str, Any]], file: Path, weak: str | None, strong: str | None,
    prompt_column: str, param: str = "data",
) -> tuple[str, str, list[str]]:
    """Pick the (weak, strong) outcome columns; see the module docstring for the order. Returns notes too."""
    if prompt_column not in columns:
        raise invalid(f"{file}: no {prompt_column!r} column; columns: {_shown(columns)}", param="prompt_column"
                      if prompt_column != "prompt" else param, code="missing_column")
    for name, which in ((weak, "weak_column"), (strong, "strong_column")):
        if name is not None and name not in columns:
            raise invalid(f"{file}: no column {name!r} for --{which.replace('_', '-')}; columns: {_shown(columns)}",
                          param=which, code="missing_column")
    if weak and strong:
        if weak == strong:
            raise invalid("the weak and the strong column must differ", param="strong_column")
        return weak, strong, []
    for pair in KNOWN_PAIRS:
        if (weak in (None, pair[0])) and (strong in (None, pair[1])) and pair[0] in columns and pair[1] in columns:
            return pair[0], pair[1], []
    candidates = [c for c in columns if c != prompt_column and c not in (weak, strong) and _is_outcome_column(rows, c)]
    if weak or strong:  # one given: the other is the only remaining outcome column
        if len(candidates) == 1:
            return (weak or candidates[0]), (strong or candidates[0]), []
    elif len(candidates) == 2:
        means = {c: _column_mean(rows, c) for c in candidates}
        lo, hi = sorted(candidates, key=lambda c: (means[c], candidates.index(c)))
        note = (f"guessed the outcome columns from their means: weak = {lo!r} (mean {means[lo]:.3f}), "
                f"strong = {hi!r} (mean {means[hi]:.3f}); pass --weak-column/--strong-column to choose")
        log.warning("%s: %s", file, note)
        return lo, hi, [note]
    missing = [n for n, v in (("weak_column", weak), ("strong_column", strong)) if v is None]
    found = f"found {len(candidates)} boolean/number columns ({_shown(candidates)})" if candidates else \
        "found no boolean/number outcome columns"
    raise invalid(
        f"{file}: cannot tell the weak and the strong model's outcome columns: {found}. Name them with "
        "--weak-column/--strong-column, or call them weak_correct/strong_correct (or weak_score/strong_score)",
        param=missing[0], code="missing_column",
    )


def read_contaminated(path: Path) -> set[str]:
    """The prompts to drop: the ``eval_prompt`` (or ``prompt``) of each line of a contaminated_prompts.jsonl."""
    if not path.is_file():
        return set()
    out: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise invalid(f"{path}:{n}: not JSON ({exc.msg})", param="data") from None
            for key in ("eval_prompt", "prompt"):
                if isinstance(item, dict) and isinstance(item.get(key), str):
                    out.add(item[key].strip())
    return out


# --- reading -------------------------------------------------------------------------------


def _read_rows(file: Path, param: str) -> tuple[list[dict[str, Any]], list[str]]:
    if file.suffix.lower() == ".jsonl":
        return _read_jsonl(file, param)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # recorded responses can be long
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise invalid(f"{file}: cannot read as CSV ({exc})", param=param) from None
    if not columns:
        raise invalid(f"{file}: empty file (no header row)", param=param, code="no_rows")
    return rows, columns


def _read_jsonl(file: Path, param: str) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    with file.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise invalid(f"{file}:{n}: not JSON ({exc.msg})", param=param) from None
            if not isinstance(item, dict):
                raise invalid(f"{file}:{n}: each line must be a JSON object", param=param)
            rows.append(item)
            columns.update(dict.fromkeys(item))
    return rows, list(columns)


def _outcome(value: Any) -> float | None:
    """A boolean or a number as a float; None for an empty or unreadable cell."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_outcome_column(rows: list[dict[str, Any]], column: str) -> bool:
    seen = 0
    for row in rows:
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if _outcome(value) is None:
            return False
        seen += 1
    return seen > 0


def _column_mean(rows: list[dict[str, Any]], column: str) -> float:
    values = [v for v in (_outcome(r.get(column)) for r in rows) if v is not None]
    return float(np.mean(values)) if values else 0.0


def _answer_column(columns: list[str], given: str | None, file: Path, param: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise invalid(f"{file}: no answer column {given!r}; columns: {_shown(columns)}", param="answer_column",
                          code="missing_column")
        return given
    return next((c for c in ANSWER_COLUMNS if c in columns), None)


def _column_param(name: str, data: OutcomeData, prompt_column: str) -> str:
    if name == data.weak_column:
        return "weak_column"
    if name == data.strong_column:
        return "strong_column"
    return "prompt_column" if prompt_column != "prompt" else "data"


def _shown(columns: Iterable[str]) -> str:
    names = [repr(c) for c in columns]
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")

