"""Distillation: training data for a cheap tier, taken from the answers a router endpoint already kept.

A router endpoint keeps every answer it gave (``routed_responses``, written
by `routing.responses.ResponseLog`) and the ratings users sent
(``feedback``). Three kinds of kept answer are worth learning from:

- ``top``: answers of the endpoint's **top tier** — the last of its
  ``tiers``, which run cheapest first — the strongest model it has;
- ``corrections``: where a stronger tier **replaced** the first answer (a
  speculative check that disagreed: ``corrected``; an escalation after a
  down-rating: ``improved``) — the replacement is the assistant message;
- ``rated``: answers of **any tier rated** ``min_rating`` or better.

An answer whose latest rating is negative is never taken; when a stronger
tier then replaced it, the replacement is (unless that was rated down too).
Each answer counts once, under the first of those sources that applies and
was asked for. Only chat answers whose request was kept whole become rows.

`distill` reads the answers newest first, within ``window``, and turns each
into one line of OpenAI's chat fine-tuning format — the request's messages
and ``{"role": "assistant", "content": …}`` — checked by the same
`data.parse_line` a training file is (a line it refuses is skipped and
counted). Rows with the same messages are one row: the newest, or a
correction over a plain answer. A ``holdout`` share goes to a validation
split chosen by a hash of the messages, so running it again — with more
traffic since — keeps every old row on the side it was on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select

from ..durations import parse_duration
from ..errors import ModelyardError, invalid, not_found
from ..routing.responses import OMITTED
from ..serving.spec import EndpointSpec, Name
from ..store.db import Database
from ..store.models import Feedback, RoutedResponse, utcnow
from .data import parse_line

Source = Literal["top", "corrections", "rated"]
#: the sources, in the order an answer is counted under the first that applies
SOURCES: tuple[Source, ...] = ("top", "corrections", "rated")
_PRIORITY: tuple[Source, ...] = ("corrections", "top", "rated")
#: a user's rating of an answer is -1 or 1 (`gateway.feedback.FeedbackRequest`): 1 is the only positive one
TOP_RATING = 1
#: the most rows one request selects (newest first): the JSONL travels in one response body
MAX_ROWS = 100_000
#: answers read from the database per round trip
_FETCH = 500


class DistillRequest(BaseModel):
    """What to select: ``POST /api/fine_tuning/datasets`` and ``modelyard finetune dataset``."""

    model_config = ConfigDict(extra="forbid")

    endpoint: Name
    #: only answers this recent (``7d``, ``12h``, ``30m``); None: every kept answer
    window: str | None = None
    #: a ``rated`` row needs a latest rating at least this (ratings are -1 or 1)
    min_rating: int = Field(default=1, ge=1, le=TOP_RATING)
    #: only answers these tiers (deployments) gave; None: any tier
    tiers: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    sources: list[Source] = Field(default_factory=lambda: list(SOURCES), min_length=1)
    #: the share of rows held out for validation, 0 (none) up to 0.5
    holdout: float = Field(default=0.0, ge=0.0, le=0.5)
    #: create the two files (purpose ``fine-tune``) rather than return the text
    upload: bool = False
    max_rows: int = Field(default=10_000, ge=1, le=MAX_ROWS)

    @field_validator("window")
    @classmethod
    def _window_is_a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_duration(value, units=("m", "h", "d", "w"), bare=None)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a window such as 7d, 12h or 30m ({exc})") from None
        return value

    def window_seconds(self) -> float | None:
        return None if self.window is None else parse_duration(self.window, units=("m", "h", "d", "w"), bare=None)


@dataclass
class Distilled:
    """The selected rows (newest first), split, with how many came from each source and what was left out."""

    endpoint: str
    top_tier: str
    since: datetime | None
    train: list[dict[str, Any]] = field(default_factory=list)
    holdout: list[dict[str, Any]] = field(default_factory=list)
    #: rows per source (after de-duplication)
    sources: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SOURCES})
    #: answers read from the window
    scanned: int = 0
    #: answers whose latest rating was negative (and that no stronger tier replaced)
    rated_down: int = 0
    #: answers that matched no requested source (an unrated cheap answer, a tier filtered out)
    not_selected: int = 0
    #: rows that repeated a newer (or a corrected) row's messages
    duplicates: int = 0
    #: answers that could not become a training line, per reason
    skipped: dict[str, int] = field(default_factory=dict)
    #: the first refusal `data.parse_line` gave, as an example of why lines were skipped
    first_invalid: str | None = None
    #: ``max_rows`` was reached before the window's oldest answer
    truncated: bool = False

    def counts(self) -> dict[str, Any]:
        return {**self.sources, "train": len(self.train), "holdout": len(self.holdout), "scanned": self.scanned,
                "rated_down": self.rated_down, "not_selected": self.not_selected, "duplicates": self.duplicates,
                "skipped": sum(self.skipped.values()), "truncated": self.truncated}

    def describe(self) -> dict[str, Any]:
        """The API's account of the selection (without the rows)."""
        return {"object": "fine_tuning.dataset", "endpoint": self.endpoint, "top_tier": self.top_tier,
                "since": int(self.since.timestamp()) if self.since else None, "counts": self.counts(),
                "skipped": dict(self.skipped), "first_invalid": self.first_invalid}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    """Rows as a JSON Lines file."""
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def router_endpoint(spec: EndpointSpec | None, name: str) -> EndpointSpec:
    """The endpoint whose answers are distilled: 404 when there is none, 400 when it keeps no answers."""
    if spec is None:
        raise not_found(f"There is no endpoint named '{name}'.", param="endpoint", code="endpoint_not_found")
    if spec.policy != "router" or not spec.tiers:
        raise invalid(f"Endpoint '{name}' keeps no answers to distil: it is not a router endpoint (its policy is "
                      f"'{spec.policy}'); only router endpoints keep their answers and ratings.", param="endpoint",
                      code="no_kept_answers")
    return spec


def distill(db: Database, spec: EndpointSpec, req: DistillRequest, *, now: datetime | None = None) -> Distilled:
    """Select training rows from `spec`'s kept answers (see the module docstring); blocking, run it in a thread.

    A 400 naming ``tiers`` when a tier is not one of the endpoint's, naming ``endpoint`` when it has never
    kept an answer."""
    if req.tiers is not None:
        unknown = [t for t in req.tiers if t not in spec.tiers]
        if unknown:
            named = f"{', '.join(map(repr, unknown))} {'is not a tier' if len(unknown) == 1 else 'are not tiers'}"
            raise invalid(f"Invalid value for 'tiers': {named} of endpoint '{spec.name}' (its tiers: "
                          f"{', '.join(spec.tiers)}).", param="tiers")
    seconds = req.window_seconds()
    since = (now or utcnow()) - timedelta(seconds=seconds) if seconds is not None else None
    out = Distilled(spec.name, spec.tiers[-1], since)
    wanted = set(req.sources)
    tiers = set(req.tiers) if req.tiers is not None else None
    with db.session() as s:
        if s.execute(select(RoutedResponse.id).where(RoutedResponse.endpoint == spec.name).limit(1)).first() is None:
            raise invalid(f"Endpoint '{spec.name}' has kept no answers yet: its answers are kept as it serves "
                          "requests (and rated with POST /v1/feedback).", param="endpoint", code="no_kept_answers")
        ratings = _latest_ratings(s, spec.name, since)
        q = (select(RoutedResponse.id, RoutedResponse.kind, RoutedResponse.request, RoutedResponse.tier,
                    RoutedResponse.content, RoutedResponse.status, RoutedResponse.latest_tier,
                    RoutedResponse.latest_content)
             .where(RoutedResponse.endpoint == spec.name)
             .order_by(RoutedResponse.created_at.desc(), RoutedResponse.id.desc())
             .execution_options(yield_per=_FETCH))
        if since is not None:
            q = q.where(RoutedResponse.created_at >= since)
        # messages hash -> (row, source, corrected); a dict keeps the order rows were first seen: newest first
        chosen: dict[str, tuple[dict[str, Any], Source, bool]] = {}
        for rid, kind, request, tier, content, status, latest_tier, latest_content in s.execute(q):
            if len(chosen) >= req.max_rows:
                out.truncated = True
                break
            out.scanned += 1
            corrected = bool(latest_content) and latest_tier is not None
            text, by = (latest_content, latest_tier) if corrected else (content, tier)
            rating = ratings.get((rid, by))
            if rating is not None and rating < 0:
                out.rated_down += 1
                continue
            source = _source(corrected, status, by, rating, spec.tiers[-1], req.min_rating, wanted)
            if source is None or (tiers is not None and by not in tiers):
                out.not_selected += 1
                continue
            row = _training_row(out, rid, kind, request, text)
            if row is None:
                continue
            key = _messages_key(row)
            earlier = chosen.get(key)
            out.duplicates += earlier is not None
            if earlier is None or (corrected and not earlier[2]):  # newest first: an earlier-seen row is newer
                chosen[key] = (row, source, corrected)
    for key, (row, source, _) in chosen.items():
        out.sources[source] += 1
        (out.holdout if _held_out(key, req.holdout) else out.train).append(row)
    return out


def _latest_ratings(s: Any, endpoint: str, since: datetime | None) -> dict[tuple[str, str], int]:
    """The latest rating of each rated answer: ``{(response id, tier that gave the rated answer): rating}``."""
    q = select(Feedback.response_id, Feedback.tier, Feedback.rating).where(Feedback.endpoint == endpoint)
    if since is not None:
        q = q.where(Feedback.created_at >= since)  # an answer is rated after it was given
    return {(rid, tier): rating for rid, tier, rating in s.execute(q.order_by(Feedback.id))}


def _source(corrected: bool, status: str, tier: str, rating: int | None, top: str, min_rating: int,
            wanted: set[str]) -> Source | None:
    """The first source (corrections, top, rated) that the answer belongs to and that was asked for."""
    applies = {"corrections": corrected and status in ("corrected", "improved"), "top": tier == top,
               "rated": rating is not None and rating >= min_rating}
    return next((s for s in _PRIORITY if applies[s] and s in wanted), None)


def _training_row(out: Distilled, rid: str, kind: str, request: dict[str, Any], answer: str) -> dict[str, Any] | None:
    """The request's messages and the answer as one training line, or None (counted in ``out.skipped``)."""
    if kind != "chat":
        reason = "not_chat"
    elif OMITTED in request:
        reason = "request_not_kept"
    else:
        line: dict[str, Any] = {"messages": [*(request.get("messages") or []),
                                             {"role": "assistant", "content": answer}]}
        if request.get("tools"):
            line["tools"] = request["tools"]  # refused below: an answer given with tools is no plain chat row
        try:
            parse_line(orjson.dumps(line), out.scanned, param="kept_answer")
            return line
        except ModelyardError as err:
            reason = "invalid"
            out.first_invalid = out.first_invalid or f"{rid}: {err.message}"
    out.skipped[reason] = out.skipped.get(reason, 0) + 1
    return None


def _messages_key(row: dict[str, Any]) -> str:
    """A hash of a row's prompt — its messages but the answer, by role and text — for de-duplication and the
    split."""
    prompt = []
    for m in row["messages"][:-1]:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text") or "") for p in content)
        prompt.append([m.get("role"), content or ""])
    return hashlib.sha256(orjson.dumps(prompt)).hexdigest()


def _held_out(key: str, share: float) -> bool:
    """Whether the row whose messages hash to `key` is in the held-out share (the same answer every run)."""
    return share > 0 and int(key[:16], 16) / 2.0**64 < share
