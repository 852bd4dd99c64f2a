"""Rollouts: move live traffic to a deployment step by step, and back on a breach.

A rollout of ``green`` on endpoint ``chat`` with steps ``[10, 25, 50, 100]``
gives green 10% of live traffic, watches green's error rate and p95 latency
for one interval, and then either moves on to 25% or, when a limit is
breached, puts back the split the endpoint had before the rollout. After the
last step's interval passes without a breach the rollout has *succeeded* and
green keeps its share::

    controller = RolloutController(endpoints, RolloutStore(db), db, writer)
    record = await controller.start("chat", "green", [10, 25, 50, 100], interval_s=60,
                                    max_error_rate=0.02, max_p95_ms=3000)
    ...
    await controller.cancel(record.id)        # back to the split before the rollout

**The split at each step.** The new deployment gets the step's percentage;
the deployments that had traffic before share the rest in proportion to
their weights then, as whole percentages that sum to exactly 100 (largest
remainder, ties to the larger weight). From ``{blue: 70, old: 30}``, 25% for
green gives ``{blue: 53, old: 22, green: 25}``. The last step need not be
100: ``[5, 10]`` is a canary that ends holding 10%. If the new deployment is
the endpoint's mirror target it cannot also take live traffic, so the mirror
stops when the rollout starts (history says so) and comes back on a rollback.

**Judging a step.** When a step's interval has passed, the usage writer is
flushed and `store.metrics.window_stats` is read for the new deployment from
the moment that step's split took effect (mirrored calls left out). A breach
is an error rate above ``max_error_rate`` or a p95 latency above
``max_p95_ms``. An interval in which fewer than ``min_requests`` (default 1)
requests reached the new deployment is *not judged*: history records "no
traffic observed" and the rollout moves on. That is a deliberate choice — an
idle endpoint would otherwise never finish a rollout — so on a quiet endpoint
use a longer interval or a higher ``min_requests`` with more traffic.

**Never an unexplained split.** Every change is recorded in the rollout's
history with the split it set, and every end has a ``reason``:

- ``succeeded`` — the last step held for its interval.
- ``rolled_back`` — a limit was breached (the reason names the numbers), or a
  step could not be applied; the split before the rollout is restored.
- ``cancelled`` — `cancel()` restored the split before the rollout; or
  someone changed the split by hand during a step, and the rollout stopped,
  leaving that split alone.
- ``reverted`` — the gateway restarted and found a split that is not the one
  the rollout had set (e.g. it stopped between setting a split and recording
  it), so it restored the split before the rollout.

**Several gateways.** Exactly one gateway drives a rollout: the one holding
its lease (``rollout:ID`` in `store.leases`, renewed in the background).
The others show its stored state; one of them may cancel it (the driver
sees the stored state change and stops). Should the driving gateway die,
its lease expires and another gateway's periodic `resume_all()` takes the
rollout over as after a restart.

`close()` stops the background tasks without touching traffic or state: the
rollout stays ``running`` in the database, and the next gateway start's
`resume_all()` picks it up — it waits out the rest of the current step
(measured from when that step began, in wall-clock time) and judges it, or
reverts as above.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..errors import ModelyardError, invalid, not_found
from ..store.metrics import window_stats
from ..store.models import utcnow
from ..store.rollouts import RolloutRecord, RolloutStore

log = logging.getLogger(__name__)

#: The longest interval a step may have (a week).
MAX_INTERVAL_S = 7 * 24 * 3600.0

Stats = Callable[..., dict[str, Any]]


# -- the plan ---------------------------------------------------------------


def validate_steps(steps: Any) -> list[int]:
    """The steps as a list of ints, or a 400 naming ``steps``.

    Steps are whole percentages of live traffic for the new deployment,
    between 1 and 100, strictly increasing, e.g. ``[10, 25, 50, 100]``.
    """
    example = "like [10, 25, 50, 100]"
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise invalid(f"steps must be a non-empty list of percentages, {example}", param="steps")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
        raise invalid(f"steps must be whole percentages, {example}; got {list(steps)}", param="steps")
    out = [int(s) for s in steps]
    if any(s < 1 or s > 100 for s in out):
        raise invalid(f"every step must be between 1 and 100 percent; got {out}", param="steps")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise invalid(f"steps must increase strictly, {example}; got {out}", param="steps")
    return out


def split_at(from_traffic: dict[str, int], deployment: str, percent: int) -> dict[str, int]:
    """The endpoint's split with ``deployment`` at ``percent``: the others share the rest by their old weights.

    Whole percentages summing to exactly 100 (largest remainder; ties go to
    the larger old weight, then to the earlier name)::

        >>> split_at({"blue": 70, "old": 30}, "green", 25)
        {'blue': 53, 'old': 22, 'green': 25}
    """
    others = {name: w for name, w in from_traffic.items() if name != deployment}
    total = sum(others.values())
    rest = 100 - percent
    if total <= 0:
        if rest:
            raise ValueError(f"no other deployment has traffic to keep {rest}%")
        shares: dict[str, int] = {name: 0 for name in others}
    else:
        shares, remainders = {}, {}
        for name, weight in others.items():
            shares[name], remainders[name] = divmod(rest * weight, total)
        left = rest - sum(shares.values())
        order = list(others)
        for name in sorted(order, key=lambda n: (-remainders[n], -others[n], order.index(n)))[:left]:
            shares[name] += 1
    out = {name: (percent if name == deployment else shares[name]) for name in from_traffic}
    out.setdefault(deployment, percent)
    return out


def split_text(traffic: dict[str, int]) -> str:
    return ", ".join(f"{name}={pct}" for name, pct in traffic.items()) or "no traffic"


def _live(traffic: dict[str, int]) -> dict[str, int]:
    """The split without its 0% entries: two splits that route the same are equal."""
    return {name: pct for name, pct in traffic.items() if pct}


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    return {"requests": stats.get("requests", 0), "errors": stats.get("errors", 0),
            "error_rate": stats.get("error_rate"), "p95_ms": (stats.get("latency_ms") or {}).get("p95")}


# -- the controller -----------------------------------------------------------


class RolloutController:
    """Runs the rollouts of one gateway: one background task per running rollout.

    ``endpoints`` is the gateway's `Endpoints` (``get``, ``deployment``,
    ``update_endpoint``); ``store`` keeps the rollouts; ``db`` and ``stats``
    answer how the new deployment did (`store.metrics.window_stats`);
    ``writer`` (optional) is the `UsageWriter`, flushed before each judgement.
    ``clock`` (an aware UTC ``datetime``; wall time, because a step outlives a
    restart) and ``sleep`` can be replaced, so tests run a rollout in
    milliseconds.
    """

    def __init__(self, endpoints: Any, store: RolloutStore, db: Any, writer: Any = None, *,
                 clock: Callable[[], datetime] = utcnow,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 stats: Stats = window_stats, leases: Any = None) -> None:
        self.endpoints = endpoints
        #: the `store.leases.LeaseKeeper` deciding which gateway drives each rollout (None: this one drives all)
        self.leases = leases
        self.store = store
        self.db = db
        self.writer = writer
        self._now = clock
        self._sleep = sleep
        self._stats = stats
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: rollouts `start` has stored and not yet handed to their task
        self._starting: set[int] = set()

    # -- reading ------------------------------------------------------------

    def get(self, rollout_id: int) -> RolloutRecord:
        record = self.store.get(rollout_id)
        if record is None:
            raise not_found(f"There is no rollout {rollout_id}.", param="rollout_id", code="rollout_not_found")
        return record

    def list(self, endpoint: str) -> list[RolloutRecord]:
        """The endpoint's rollouts, newest first (404 for an unknown endpoint with no rollouts)."""
        records = self.store.list(endpoint)
        if not records:
            self.endpoints.get(endpoint)
        return records

    def describe(self, record: RolloutRecord) -> dict[str, Any]:
        """The record as JSON, plus the endpoint's live split now and when the current step is judged."""
        out = record.describe()
        try:
            out["traffic_now"] = dict(self.endpoints.get(record.endpoint).spec.traffic)
        except ModelyardError:
            out["traffic_now"] = None
        out["step_label"] = f"{record.current_step + 1}/{len(record.steps)}"
        check = None
        if record.running and record.step_started_at is not None:
            check = (record.step_started_at + timedelta(seconds=record.interval_s)).isoformat()
        out["next_check_at"] = check
        return out

    # -- starting, cancelling -----------------------------------------------------

    async def start(self, endpoint: str, deployment: str, steps: Sequence[int], interval_s: float = 60.0,
                    max_error_rate: float = 0.02, max_p95_ms: float = 3000.0, min_requests: int = 1) -> RolloutRecord:
        """Check the plan, set the first step's split and watch it in the background.

        400 for a bad plan (the error names the field), 404 for an unknown
        endpoint or deployment, 409 while another rollout of the endpoint runs
        or when there is no traffic to shift.
        """
        steps = validate_steps(steps)
        interval_s = _number(interval_s, "interval_s")
        if not 0 < interval_s <= MAX_INTERVAL_S:
            raise invalid(f"interval_s must be above 0 and at most {MAX_INTERVAL_S:.0f} seconds; got {interval_s:g}",
                          param="interval_s")
        max_error_rate = _number(max_error_rate, "max_error_rate")
        if not 0 <= max_error_rate <= 1:
            raise invalid(f"max_error_rate is a fraction between 0 and 1 (0.02 is 2%); got {max_error_rate:g}",
                          param="max_error_rate")
        max_p95_ms = _number(max_p95_ms, "max_p95_ms")
        if max_p95_ms <= 0:
            raise invalid(f"max_p95_ms must be above 0; got {max_p95_ms:g}", param="max_p95_ms")
        if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
            raise invalid(f"min_requests must be a whole number of at least 1; got {min_requests!r}",
                          param="min_requests")

        ep = self.endpoints.get(endpoint)
        dep = self.endpoints.deployment(endpoint, deployment)
        state = getattr(dep, "state", "ready")
        if state != "ready":
            raise ModelyardError(f"deployment '{deployment}' is {state}; a rollout can start once it is ready",
                                 status=409, param="deployment", code="deployment_not_ready")
        running = self.store.active(endpoint)
        if running is not None:
            raise ModelyardError(f"endpoint '{endpoint}' already has a rollout running (rollout {running.id}, to "
                                 f"'{running.deployment}'); wait for it to end or cancel it first",
                                 status=409, code="rollout_in_progress")
        from_traffic = dict(ep.spec.traffic)
        from_mirror = dict(getattr(ep.spec, "mirror_traffic", {}) or {})
        if not any(pct for name, pct in from_traffic.items() if name != deployment):
            raise ModelyardError(f"endpoint '{endpoint}' sends no live traffic to another deployment, so there is "
                                 f"nothing to shift to '{deployment}' (traffic: {split_text(from_traffic)}); "
                                 "set the endpoint's traffic instead", status=409, param="traffic", code="no_traffic")
        already = from_traffic.get(deployment, 0)
        if steps[0] <= already:
            raise invalid(f"'{deployment}' already receives {already}% of live traffic; every step must be above "
                          f"that; got {steps}", param="steps")

        record = RolloutRecord(endpoint=endpoint, deployment=deployment, steps=steps, interval_s=interval_s,
                               max_error_rate=max_error_rate, max_p95_ms=max_p95_ms, min_requests=min_requests,
                               from_traffic=from_traffic, from_mirror=from_mirror)
        self._event(record, "started", traffic=from_traffic,
                    message=f"rollout of {deployment} on {endpoint}: {' → '.join(f'{s}%' for s in steps)}, "
                            f"{interval_s:g} s per step; limits: error rate ≤ {max_error_rate:.1%}, "
                            f"p95 ≤ {max_p95_ms:g} ms")
        self.store.create(record)
        # stored as running but not yet driven: the take-over loop's resume_all must not drive it as well
        self._starting.add(record.id)
        try:
            await self._lease(record)  # a new rollout: nobody else holds its lease
            clear_mirror = deployment in _live(from_mirror)
            try:
                await self._apply_step(record, 0, clear_mirror=clear_mirror)
            except ModelyardError as exc:
                await self._restore(record, "rolled_back",
                                    reason=f"could not set the first step's split: {exc.message}", event="rolled_back")
                await self._unlease(record.id)
                raise
            self._spawn(record)
        finally:
            self._starting.discard(record.id)
        return record

    async def cancel(self, rollout_id: int) -> RolloutRecord:
        """Stop a running rollout and restore the split the endpoint had before it (409 once it has ended)."""
        self.get(rollout_id)
        task = self._tasks.pop(rollout_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record = self.get(rollout_id)  # the task may have moved it on while it stopped
        if not record.running:
            raise ModelyardError(f"rollout {rollout_id} has already ended: {record.state}"
                                 + (f" ({record.reason})" if record.reason else ""), status=409,
                                 code="rollout_ended")
        await self._restore(record, "cancelled", reason=f"cancelled at step {self._label(record)}",
                            event="cancelled")
        await self._unlease(rollout_id)
        return record

    async def wait(self, rollout_id: int) -> RolloutRecord:
        """Wait until the rollout's background task ends (or return at once); the stored record."""
        task = self._tasks.get(rollout_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return self.get(rollout_id)

    # -- the gateway's life ---------------------------------------------------

    async def resume_all(self) -> list[RolloutRecord]:
        """At gateway start: go on with each running rollout whose split is still in place; revert the others."""
        out = []
        for record in self.store.running():
            if record.id in self._tasks or record.id in self._starting:
                continue
            if not await self._lease(record):
                continue  # another gateway drives it
            try:
                out.append(await self._resume(record))
            except Exception:  # one broken rollout must not keep the gateway from starting
                log.exception("could not resume rollout %s", record.id)
            if record.id not in self._tasks:
                await self._unlease(record.id)
        return out

    async def close(self) -> None:
        """Stop every background task; traffic and stored state stay as they are, for `resume_all()`."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the background task ------------------------------------------------------

    def _spawn(self, record: RolloutRecord) -> None:
        assert record.id is not None
        task = asyncio.create_task(self._drive(record), name=f"modelyard-rollout-{record.id}")
        self._tasks[record.id] = task

        def _done(t: asyncio.Task[None], rollout_id: int = record.id) -> None:
            if self._tasks.get(rollout_id) is t:
                del self._tasks[rollout_id]
                if not t.cancelled():  # ended: another gateway has nothing to take over
                    asyncio.get_running_loop().create_task(self._unlease(rollout_id))

        task.add_done_callback(_done)

    async def _lease(self, record: RolloutRecord) -> bool:
        """Hold the rollout's lease (True), or learn that another gateway drives it (False)."""
        if self.leases is None:
            return True
        return await self.leases.acquire(f"rollout:{record.id}", self._lost)

    async def _unlease(self, rollout_id: int) -> None:
        if self.leases is not None:
            await self.leases.drop(f"rollout:{rollout_id}")

    def _lost(self, name: str) -> None:
        """Another gateway took the rollout over (this one could not renew its lease in time): stop driving it
        here without touching traffic or its stored state."""
        task = self._tasks.pop(int(name.split(":", 1)[1]), None)
        if task is not None:
            task.cancel()

    async def _drive(self, record: RolloutRecord) -> None:
        """Wait out each step, judge it, and move on, roll back or finish."""
        try:
            if record.current_step < 0:
                await self._apply_step(record, 0, clear_mirror=record.deployment in _live(record.from_mirror))
            while True:
                await self._wait_out_step(record)
                stored = await asyncio.to_thread(self.store.get, record.id)
                if stored is None or not stored.running:
                    return  # cancelled through another gateway, which restored the split
                if not await self._split_still_ours(record):
                    return
                stats = await self._observe(record)
                breach = self._judge(record, stats)
                if breach is not None:
                    log.warning("rollout %s: %s; rolling back", record.id, breach)
                    await self._restore(record, "rolled_back", reason=breach, event="rolled_back")
                    return
                if record.current_step == len(record.steps) - 1:
                    traffic = split_at(record.from_traffic, record.deployment, record.steps[-1])
                    self._finish(record, "succeeded",
                                 reason=f"{record.deployment} holds {record.steps[-1]}% of live traffic after "
                                        f"{len(record.steps)} step(s) within the limits",
                                 traffic=traffic)
                    log.info("rollout %s succeeded: %s", record.id, split_text(traffic))
                    return
                await self._apply_step(record, record.current_step + 1)
        except asyncio.CancelledError:
            raise  # close() or cancel(): the stored state is theirs to keep or change
        except Exception as exc:
            log.exception("rollout %s failed", record.id)
            try:
                await self._restore(record, "rolled_back", reason=f"the rollout failed at step {self._label(record)}: "
                                    f"{getattr(exc, 'message', None) or exc}", event="rolled_back")
            except Exception:
                log.exception("rollout %s: could not record its failure; the next start will revert it", record.id)

    async def _wait_out_step(self, record: RolloutRecord) -> None:
        assert record.step_started_at is not None
        due = record.step_started_at + timedelta(seconds=record.interval_s)
        while (remaining := (due - self._now()).total_seconds()) > 0:
            await self._sleep(remaining)

    async def _split_still_ours(self, record: RolloutRecord) -> bool:
        """False (and the rollout ends) when the endpoint is gone or its split was changed by someone else."""
        expected = split_at(record.from_traffic, record.deployment, record.steps[record.current_step])
        try:
            found = dict(self.endpoints.get(record.endpoint).spec.traffic)
        except ModelyardError:
            self._finish(record, "cancelled", reason=f"endpoint '{record.endpoint}' was deleted during step "
                                                      f"{self._label(record)}", traffic=None)
            return False
        if _live(found) == _live(expected):
            return True
        self._finish(record, "cancelled",
                     reason=f"the split was changed outside the rollout during step {self._label(record)} "
                            f"(the rollout had set {split_text(expected)}, the endpoint has {split_text(found)}); "
                            "the rollout stopped and left that split in place", traffic=found)
        return False

    async def _observe(self, record: RolloutRecord) -> dict[str, Any]:
        """The new deployment's numbers since the current step's split took effect."""
        if self.writer is not None:
            try:
                await self.writer.flush()
            except Exception as exc:  # judge on what is written rather than not at all
                log.warning("rollout %s: could not flush usage records (%s)", record.id, exc)
        return await asyncio.to_thread(self._stats, self.db, endpoint=record.endpoint,
                                       deployment=record.deployment, since=record.step_started_at,
                                       until=self._now())

    def _judge(self, record: RolloutRecord, stats: dict[str, Any]) -> str | None:
        """Record the step's verdict; the reason when it breached a limit, else None."""
        label = self._label(record)
        requests = int(stats.get("requests") or 0)
        if requests < record.min_requests:
            seen = "no requests" if not requests else f"only {requests} request(s)"
            floor = f" (fewer than {record.min_requests})" if record.min_requests > 1 else ""
            self._event(record, "no_traffic", stats=_brief(stats),
                        message=f"step {label}: no traffic observed — {seen} reached {record.deployment} in "
                                f"{record.interval_s:g} s{floor}; not judged, moving on")
            self.store.save(record)
            return None
        error_rate, errors = stats.get("error_rate"), stats.get("errors", 0)
        p95 = (stats.get("latency_ms") or {}).get("p95")
        problems = []
        if error_rate is not None and error_rate > record.max_error_rate:
            problems.append(f"error rate {error_rate:.1%} ({errors} of {requests} requests) is above the limit of "
                            f"{record.max_error_rate:.1%}")
        if p95 is not None and p95 > record.max_p95_ms:
            problems.append(f"p95 latency {_ms(p95)} is above the limit of {_ms(record.max_p95_ms)}")
        shown = (f"{requests} request{'s' if requests != 1 else ''}, error rate {(error_rate or 0):.1%}, "
                 f"p95 {_ms(p95) if p95 is not None else '-'}")
        if not problems:
            self._event(record, "passed", stats=_brief(stats), message=f"step {label} passed: {shown}")
            self.store.save(record)
            return None
        reason = (f"{'; '.join(problems)} at step {label} ({record.deployment} at "
                  f"{record.steps[record.current_step]}%)")
        self._event(record, "breach", stats=_brief(stats), message=f"step {label} breached the limits: {shown}")
        return reason

    # -- changing the split -------------------------------------------------------

    async def _apply_step(self, record: RolloutRecord, index: int, *, clear_mirror: bool = False) -> None:
        percent = record.steps[index]
        traffic = split_at(record.from_traffic, record.deployment, percent)
        changes: dict[str, Any] = {"traffic": traffic}
        if clear_mirror:
            changes["mirror_traffic"] = {k: v for k, v in record.from_mirror.items() if k != record.deployment}
        await self.endpoints.update_endpoint(record.endpoint, **changes)
        record.current_step = index
        record.step_started_at = self._now()
        if clear_mirror:
            self._event(record, "mirror_stopped", traffic=traffic,
                        message=f"{record.deployment} received {record.from_mirror[record.deployment]}% of mirrored "
                                "traffic; the mirror stops while it takes live traffic (a rollback restores it)")
        self._event(record, "step", traffic=traffic,
                    message=f"step {self._label(record)}: {record.deployment} gets {percent}% ({split_text(traffic)})")
        self.store.save(record)
        log.info("rollout %s: step %s, %s", record.id, self._label(record), split_text(traffic))

    async def _restore(self, record: RolloutRecord, state: str, *, reason: str, event: str) -> None:
        """Put back the split from before the rollout, then end it with ``state`` and ``reason``."""
        changes: dict[str, Any] = {"traffic": record.from_traffic}
        if record.deployment in _live(record.from_mirror):
            changes["mirror_traffic"] = record.from_mirror
        traffic: dict[str, int] | None = record.from_traffic
        try:
            await self.endpoints.update_endpoint(record.endpoint, **changes)
            reason = f"{reason}; traffic restored to {split_text(record.from_traffic)}"
        except ModelyardError as exc:
            try:
                traffic = dict(self.endpoints.get(record.endpoint).spec.traffic)
                left = f"the split stays {split_text(traffic)}"
            except ModelyardError:
                traffic, left = None, "the endpoint no longer exists"
            reason = f"{reason}; could not restore {split_text(record.from_traffic)} ({exc.message}), {left}"
        self._finish(record, state, reason=reason, traffic=traffic, event=event)
        log.info("rollout %s %s: %s", record.id, state, reason)

    def _finish(self, record: RolloutRecord, state: str, *, reason: str, traffic: dict[str, int] | None,
                event: str | None = None) -> None:
        record.state = state
        record.reason = reason
        record.finished_at = self._now()
        self._event(record, event or state, traffic=traffic, message=reason)
        self.store.save(record)

    # -- resuming -----------------------------------------------------------------

    async def _resume(self, record: RolloutRecord) -> RolloutRecord:
        label = self._label(record)
        try:
            ep = self.endpoints.get(record.endpoint)
        except ModelyardError:
            self._finish(record, "cancelled", traffic=None,
                         reason=f"the gateway restarted during step {label} and endpoint '{record.endpoint}' "
                                "no longer exists")
            return record
        await self._deployments_loaded(ep, set(record.from_traffic) | {record.deployment})
        if record.current_step < 0:
            expected = record.from_traffic
        else:
            expected = split_at(record.from_traffic, record.deployment, record.steps[record.current_step])
        found = dict(ep.spec.traffic)
        if _live(found) != _live(expected):
            await self._restore(record, "reverted", event="reverted",
                                reason=f"the gateway restarted during step {label} and found the split "
                                       f"{split_text(found)} instead of the rollout's {split_text(expected)}")
            return record
        if record.step_started_at is not None:
            left = record.interval_s - (self._now() - record.step_started_at).total_seconds()
            rest = f"{max(0.0, left):.0f} s of the step left" if left > 0 else "its interval is over; judging it now"
        else:
            rest = "setting the first step"
        self._event(record, "resumed", traffic=found,
                    message=f"the gateway restarted during step {label}; the split is still the rollout's, so it "
                            f"goes on ({rest})")
        self.store.save(record)
        self._spawn(record)
        log.info("rollout %s resumed at step %s", record.id, label)
        return record

    @staticmethod
    async def _deployments_loaded(ep: Any, names: set[str], timeout_s: float = 10.0) -> None:
        """Wait (briefly) until the endpoint's deployments are registered: `Endpoints.load()` adds them in tasks."""
        deployments = getattr(ep, "deployments", None)
        if deployments is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await asyncio.sleep(0)
        while not names <= set(deployments) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    # -- helpers ------------------------------------------------------------------

    def _label(self, record: RolloutRecord) -> str:
        return f"{max(record.current_step, 0) + 1}/{len(record.steps)}"

    def _event(self, record: RolloutRecord, event: str, *, message: str, traffic: dict[str, int] | None = None,
               stats: dict[str, Any] | None = None) -> None:
        entry: dict[str, Any] = {"at": self._now().isoformat(), "event": event, "step": record.current_step,
                                 "percent": record.percent}
        if traffic is not None:
            entry["traffic"] = dict(traffic)
        if stats is not None:
            entry["stats"] = stats
        entry["message"] = message
        record.history.append(entry)


def _ms(value: float) -> str:
    return f"{round(value, 1):g} ms"


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{name} must be a number; got {value!r}", param=name)
    return float(value)
