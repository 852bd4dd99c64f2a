"""Budgets: what each endpoint, and each key on it, has spent this UTC day and calendar month.

An endpoint spec may carry spending limits in USD (see `BudgetSpec` below)::

    budget: {usd_per_day: 5, usd_per_month: 100, per_key: {usd_per_day: 0.5}, low_share: 0.2}

**Counting.** `BudgetTracker` holds, in memory, the USD spent per endpoint
and per (endpoint, key) for the current UTC day and month. At start-up it
reads the sums of ``usage_records.cost_usd`` since the first of the month
from the database (one grouped query on the ``created_at`` index, the same
SQL on SQLite and Postgres); after that the record stage adds each finished
call's cost (`BudgetTracker.add`, called by `telemetry.metering.Ledger` for every usage
record: a few dictionary updates, no I/O). Every
usage record counts: live calls, mirrored copies, batch lines, each tier of
a routed call (its total is the record's ``cost_usd``). At UTC midnight the
day's sums start again from zero, on the first of the month the month's.

**State.** For a call, `BudgetTracker.state` looks at every limit that
applies (the endpoint's per day and per month, the key's per day and per
month) and returns a `BudgetState` for the tightest one, the one with the
smallest share left: ``remaining_usd``, ``share`` (0–1), ``low`` (less than
``low_share`` of it left: the router prefers cheaper tiers) and
``exhausted`` (nothing left). The budget stage puts it on ``call.budget``.

**Enforcement.** Once a limit is exhausted, a request that would go to a
*paid* deployment — a hosted model with a per-token price — gets 429
``budget_exhausted`` (`check`, called by dispatch before it sends, and by the
router before it calls or escalates to a tier); deployments that run here
keep answering. The check reads the spend at that moment, not when the call
began. Calls already under way when a limit is reached still finish, so
spend can pass a limit by what those calls cost.

**Several gateways.** Without Redis each gateway counts on its own: gateways
sharing one database each enforce the limits on what they saw since they
started, plus what was in the database then. With ``MODELYARD_REDIS_URL``
set, the tracker also keeps shared counters (`store.spend_counters`): a
paid call is admitted by `admit` only after an atomic reservation of its
estimated cost (`estimate_cost`, an upper bound) succeeds against every
limit across all gateways, and the reservation is taken back once its cost
is counted (`Reservation.release`, called by the record stage). Spend then
passes a limit by at most one call's cost, however many gateways admit
calls at once. The in-memory sums follow the shared ones (each reservation
reads them), so headers and the router's ``low`` see every gateway's spend;
the router's own tier checks (`allows`) read them but do not reserve.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, func, select

from ..errors import ModelyardError
from ..store.models import UsageRecord
from ..store.spend_counters import Counter

class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usd_per_day: float | None = Field(default=None, ge=0)
    usd_per_month: float | None = Field(default=None, ge=0)


class BudgetSpec(Limits):
    """Spending limits in USD, per UTC day and calendar month, for the endpoint and for each of its keys.

    As a limit runs low (under ``low_share`` of it left) the router prefers
    cheaper tiers; once it is spent, requests that would need a paid tier are
    refused with 429 while local tiers keep answering.
    """

    #: the same limits for each key that calls the endpoint
    per_key: Limits | None = None
    low_share: float = Field(default=0.2, ge=0, le=1)


log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: (endpoint, key id) -> USD; key id None is the endpoint's total
Spend = dict[tuple[str, "int | None"], float]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s day."""
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    """Midnight UTC on the first of ``now``'s month."""
    return day_start(now).replace(day=1)


def next_month(start: datetime) -> datetime:
    """The first of the month after the month that begins at ``start``."""
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


@dataclass(frozen=True, slots=True)
class BudgetState:
    """The tightest spending limit that applies to one call, and how much of it is left.

    ``scope`` is ``"endpoint"`` or ``"key"``, ``period`` ``"day"`` or
    ``"month"``; ``resets_at`` is when that period starts again (UTC).
    `current()` reads the tracker again (the spend may have grown since the
    call began).
    """

    endpoint: str
    key_id: int | None
    scope: str
    period: str
    limit_usd: float
    spent_usd: float
    resets_at: datetime
    low_share: float
    _tracker: "BudgetTracker" = field(repr=False, compare=False)
    _spec: BudgetSpec = field(repr=False, compare=False)

    @property
    def remaining_usd(self) -> float:
        """USD left under this limit (0 once it is spent)."""
        return max(self.limit_usd - self.spent_usd, 0.0)

    @property
    def share(self) -> float:
        """The share of the limit left, 0 to 1 (a limit of 0 has none)."""
        return self.remaining_usd / self.limit_usd if self.limit_usd > 0 else 0.0

    @property
    def exhausted(self) -> bool:
        """Nothing is left: paid deployments are refused until ``resets_at``."""
        return self.limit_usd - self.spent_usd <= 0

    @property
    def low(self) -> bool:
        """Less than ``low_share`` of the limit is left (also true once exhausted)."""
        return self.exhausted or self.share < self.low_share

    @property
    def limit_name(self) -> str:
        """The limit as a spec names it: ``usd_per_day`` or ``per_key.usd_per_month`` …"""
        name = f"usd_per_{self.period}"
        return f"per_key.{name}" if self.scope == "key" else name

    def current(self) -> "BudgetState":
        """The same call's state now: the tightest limit with the spend as of this moment."""
        return self._tracker.state(self.endpoint, self.key_id, self._spec) or self

    def retry_after_s(self, now: datetime | None = None) -> int:
        """Whole seconds until the limit resets (at least 1)."""
        now = now or self._tracker.now()
        return max(1, math.ceil((self.resets_at - now).total_seconds()))


class BudgetTracker:
    """USD spent per endpoint and per (endpoint, key), this UTC day and this month.

    ::

        tracker = BudgetTracker()
        tracker.load(db)                       # what the database says was spent
        tracker.add("chat", key_id, 0.0021)    # each finished call (the record stage)
        state = tracker.state("chat", key_id, endpoint.spec.budget)

    ``clock`` returns the current aware UTC datetime (tests pass their own).
    """

    def __init__(self, *, clock: Clock | None = None, shared: Any = None) -> None:
        self._clock = clock or _utcnow
        self._day: Spend = {}
        self._month: Spend = {}
        self._set_periods(self._clock())
        #: the counters several gateways share (`store.spend_counters.RedisSpendCounters`), or None
        self.shared = shared
        #: endpoints seen with a budget: only their spend goes to the shared counters
        self._budgeted: dict[str, BudgetSpec] = {}

    def now(self) -> datetime:
        return self._clock()

    def _set_periods(self, now: datetime) -> None:
        self.day_start = day_start(now)
        self.day_end = self.day_start + timedelta(days=1)
        self.month_start = month_start(now)
        self.month_end = next_month(self.month_start)

    def _roll(self, now: datetime) -> None:
        """A new day (and maybe a new month) began: its sums start from zero."""
        new_month = now >= self.month_end
        self._set_periods(now)
        self._day = {}
        if new_month:
            self._month = {}
        log.info("budget counters reset for %s (%s)", self.day_start.date(), "new month" if new_month else "new day")

    def _current(self) -> datetime:
        # Only forward: a clock set back a little (NTP) keeps counting into the current day.
        now = self._clock()
        if now >= self.day_end:
            self._roll(now)
        return now

    # -- counting -------------------------------------------------------------------

    def load(self, db: Any) -> None:
        """Replace the in-memory sums with this day's and month's spend read from ``db``.

        One grouped query over the month's usage records (by endpoint and
        key); the day's sum is a conditional sum in the same pass.
        """
        now = self._clock()
        self._set_periods(now)
        t = UsageRecord.__table__.c
        day_cost = func.sum(case((t.created_at >= self.day_start, t.cost_usd), else_=0.0))
        query = (select(t.endpoint, t.key_id, func.sum(t.cost_usd), day_cost)
                 # a flow call's record repeats its steps' cost, already counted under their endpoints
                 .where(t.created_at >= self.month_start, t.cost_usd > 0, t.kind != "flow")
                 .group_by(t.endpoint, t.key_id))
        with db.engine.connect() as connection:
            rows = connection.execute(query).all()
        day: Spend = {}
        month: Spend = {}
        for endpoint, key_id, month_usd, day_usd in rows:
            month_usd, day_usd = float(month_usd or 0.0), float(day_usd or 0.0)
            for key in ((endpoint, None), (endpoint, key_id)) if key_id is not None else ((endpoint, None),):
                month[key] = month.get(key, 0.0) + month_usd
                day[key] = day.get(key, 0.0) + day_usd
        self._day, self._month = day, month
        log.debug("budget: loaded this month's spend for %d endpoint(s)", sum(1 for _, k in month if k is None))

    def add(self, endpoint: str, key_id: int | None, cost_usd: float) -> None:
        """Count one finished call's cost against its endpoint and its key (no I/O)."""
        if not cost_usd > 0:  # also skips NaN
            return
        self._current()
        if self.shared is not None and endpoint in self._budgeted:
            self.shared.add(self._counters(endpoint, key_id, self._budgeted[endpoint], every=True), cost_usd)
        day, month = self._day, self._month
        key = (endpoint, None)
        day[key] = day.get(key, 0.0) + cost_usd
        month[key] = month.get(key, 0.0) + cost_usd
        if key_id is not None:
            key = (endpoint, key_id)
            day[key] = day.get(key, 0.0) + cost_usd
            month[key] = month.get(key, 0.0) + cost_usd

    def spent(self, endpoint: str, key_id: int | None = None, period: str = "day") -> float:
        """USD spent this ``period`` (``day`` or ``month``) by the endpoint, or by one key on it."""
        if period not in ("day", "month"):
            raise ValueError("period must be 'day' or 'month'")
        self._current()
        return (self._day if period == "day" else self._month).get((endpoint, key_id), 0.0)

    # -- state ----------------------------------------------------------------------

    def state(self, endpoint: str, key_id: int | None, spec: BudgetSpec | None) -> BudgetState | None:
        """The tightest limit of ``spec`` for this endpoint and key, or None when no limit applies."""
        if spec is None:
            return None
        self._current()
        if self.shared is not None and self._budgeted.get(endpoint) is not spec:
            self._budgeted[endpoint] = spec
        best: tuple[float, float] | None = None
        chosen: tuple[str, str, float, float] | None = None
        scopes = [("endpoint", spec, (endpoint, None))]
        if spec.per_key is not None and key_id is not None:
            scopes.append(("key", spec.per_key, (endpoint, key_id)))
        for scope, limits, key in scopes:
            for period, limit, spent in (("day", limits.usd_per_day, self._day),
                                         ("month", limits.usd_per_month, self._month)):
                if limit is None:
                    continue
                used = spent.get(key, 0.0)
                left = limit - used
                share = left / limit if limit > 0 else 0.0
                rank = (share, left)
                if best is None or rank < best:
                    best, chosen = rank, (scope, period, limit, used)
        if chosen is None:
            return None
        scope, period, limit, used = chosen
        resets = self.day_end if period == "day" else self.month_end
        return BudgetState(endpoint, key_id, scope, period, float(limit), used, resets, spec.low_share, self, spec)


    # -- shared counters (several gateways) --------------------------------------------

    def _counters(self, endpoint: str, key_id: int | None, spec: BudgetSpec, *, every: bool = False) -> list[Counter]:
        """The counters of the limits ``spec`` sets for this endpoint and key (``every``: also those without a
        limit, so spend is counted on a counter some other gateway's spec may limit)."""
        out = []
        scopes: list[tuple[Limits, int | None]] = [(spec, None)]
        if key_id is not None and (spec.per_key is not None or every):
            scopes.append((spec.per_key or Limits(), key_id))
        for limits, who in scopes:
            for period, limit, start in (("day", limits.usd_per_day, self.day_start),
                                         ("month", limits.usd_per_month, self.month_start)):
                if limit is not None or every:
                    out.append(Counter(endpoint, who, period, start, float(limit or 0.0)))
        return out

    async def reserve(self, state: BudgetState, amount: float) -> tuple["Reservation | None", BudgetState | None]:
        """Reserve ``amount`` USD against every limit of the call's budget on the shared counters: the
        reservation, or the state of the limit that is spent (then nothing is reserved)."""
        self._current()
        counters = self._counters(state.endpoint, state.key_id, state._spec)
        if not counters:
            return None, None
        answer = await self.shared.reserve(counters, amount)
        for counter, (spent, _reserved) in answer.totals.items():  # every gateway's spend, for headers and routing
            table = self._day if counter.period == "day" else self._month
            table[(counter.endpoint, counter.key_id)] = spent  # what was spent: calls under way are not spend
        blocked = answer.blocked
        if blocked is not None:
            spent, _reserved = answer.totals[blocked]
            resets = self.day_end if blocked.period == "day" else self.month_end
            # spent_usd below the limit: the limit is held by calls under way (their reservations), not spent
            refused = BudgetState(state.endpoint, state.key_id, "key" if blocked.key_id is not None else "endpoint",
                                  blocked.period, blocked.limit, spent, resets, state.low_share, self, state._spec)
            return None, refused
        return Reservation(self.shared, counters, amount), None


@dataclass(slots=True)
class Reservation:
    """USD set aside on the shared counters for one paid call until its cost is counted."""

    shared: Any
    counters: list[Counter]
    amount: float
    released: bool = False

    def release(self) -> None:
        """Take the reservation back (after the call's usage record was counted; twice is harmless)."""
        if not self.released:
            self.released = True
            self.shared.release(self.counters, self.amount)


@dataclass(slots=True)
class _Both:
    """Two reservations of one call, taken back together."""

    first: Any
    second: Any

    def release(self) -> None:
        self.first.release()
        self.second.release()


def estimate_cost(deployment: Any, request: Any) -> float:
    """An upper bound of what ``request`` can cost on paid ``deployment``: every byte of the request a prompt
    token, and the request's token limit (else the model's context length) of completion tokens per choice."""
    card = deployment.card
    prompt = len(orjson.dumps(request.model_dump(mode="json", exclude_none=True)))
    completion = 0
    if hasattr(request, "token_limit"):  # chat and completions; an embedding generates no tokens
        completion = (request.token_limit or card.context_length) * max(int(getattr(request, "n", None) or 1), 1)
    return card.price.token_cost(prompt, completion)


# -- enforcement ----------------------------------------------------------------------

#: how long a paid call waits for other calls' reservations to settle before a retryable 429 (shared counters)
RESERVED_WAIT_S = 5.0


def is_paid(deployment: Any) -> bool:
    """A hosted model with a per-token price: what an exhausted budget refuses.

    Deployments that run here (their cost is instance time) and hosted
    models priced at zero (a self-hosted vLLM, another modelyard) keep
    answering.
    """
    card = deployment.card
    return card.is_hosted and (card.price.input_per_1m > 0 or card.price.output_per_1m > 0)


def allows(call: Any, deployment: Any) -> bool:
    """May this call be sent to ``deployment`` under its budget right now?"""
    state = getattr(call, "budget", None)
    if state is None or not is_paid(deployment):
        return True
    return not state.current().exhausted


async def admit(call: Any, deployment: Any) -> None:
    """Before a call is sent to ``deployment``: 429 ``budget_exhausted`` when its budget is spent and the
    deployment is paid. With shared counters the call's estimated cost is reserved across gateways first
    (``call.reservation``; the record stage releases it once the cost is counted)."""
    state = getattr(call, "budget", None)
    if state is None or not is_paid(deployment):
        return
    tracker = state._tracker
    if tracker.shared is None:
        check(call, deployment)
        return
    estimate = estimate_cost(deployment, call.request)
    # A limit held by other calls' reservations, not by spend, frees up as they settle (their real cost is
    # usually far below the upper bound they reserved): wait for that a little before refusing.
    waited, delay = 0.0, 0.05
    while True:
        reservation, refused = await tracker.reserve(state, estimate)
        if refused is None:
            held = getattr(call, "reservation", None)  # a router call may use more than one paid tier
            call.reservation = reservation if held is None else _Both(held, reservation)
            return
        if refused.spent_usd >= refused.limit_usd:
            raise exhausted_error(refused, deployment)
        if waited >= RESERVED_WAIT_S:
            raise reserved_error(refused, deployment)
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.5)


def check(call: Any, deployment: Any) -> None:
    """Raise 429 ``budget_exhausted`` when the call's budget is spent and ``deployment`` is paid."""
    state = getattr(call, "budget", None)
    if state is None or not is_paid(deployment):
        return
    state = state.current()
    if state.exhausted:
        raise exhausted_error(state, deployment)


def refusal(call: Any, deployment: Any) -> ModelyardError:
    """The 429 for a call whose budget no longer allows ``deployment`` (for a router that checked `allows`)."""
    state = call.budget.current() if getattr(call, "budget", None) is not None else None
    if state is None:
        return ModelyardError(f"the budget of endpoint '{call.endpoint_name}' does not allow paid deployment "
                              f"'{deployment.name}'", status=429, type="insufficient_quota", code="budget_exhausted")
    return exhausted_error(state, deployment)


def exhausted_error(state: BudgetState, deployment: Any) -> ModelyardError:
    """The 429 a client gets when a paid deployment would go over a spent limit.

    OpenAI's own quota error has type ``insufficient_quota``; ``Retry-After``
    is the time to the reset, and ``x-should-retry: false`` keeps the
    official clients from retrying it at once.
    """
    now = state._tracker.now()
    wait = state.retry_after_s(now)
    whose = f"key {state.key_id} on endpoint '{state.endpoint}'" if state.scope == "key" else f"endpoint '{state.endpoint}'"
    message = (f"Budget exhausted: {whose} has spent ${state.spent_usd:.4f} of its {state.limit_name} limit of "
               f"${state.limit_usd:.4f}. Requests that need paid deployment '{deployment.name}' "
               f"(hosted model '{deployment.card.id}') are refused until the limit resets at "
               f"{state.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')} (in {_duration(wait)}); deployments that run "
               "locally keep answering.")
    return ModelyardError(message, status=429, type="insufficient_quota", param=None, code="budget_exhausted",
                          headers={"retry-after": str(wait), "x-should-retry": "false"})


def reserved_error(state: BudgetState, deployment: Any) -> ModelyardError:
    """The 429 for a paid call whose limit is not spent but held by calls under way (several gateways
    reserve what each call may cost before sending it): retryable, unlike `exhausted_error`."""
    whose = f"key {state.key_id} on endpoint '{state.endpoint}'" if state.scope == "key" else f"endpoint '{state.endpoint}'"
    message = (f"The rest of the {state.limit_name} budget of {whose} (${state.remaining_usd:.4f} of "
               f"${state.limit_usd:.4f}) is held by calls under way, which may use it: retry shortly. Set max_tokens "
               f"on requests to paid deployment '{deployment.name}' to hold less of it per call.")
    return ModelyardError(message, status=429, param=None, code="budget_in_use",
                          headers={"retry-after": "1", "x-should-retry": "true"})


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
