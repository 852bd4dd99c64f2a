"""The budget stage: how much of the endpoint's (and the key's) spending limit is left.

Right after auth, for an endpoint whose spec has a ``budget``, the stage
puts a `telemetry.budget.BudgetState` on ``call.budget`` — the tightest of the
limits that apply to this endpoint and key — and says what is left in the
``x-modelyard-budget-remaining-usd`` response header. It refuses nothing
itself: whether a call may go ahead depends on where it goes (a paid hosted
deployment, or one that runs here), so dispatch and the router decide with
`telemetry.budget.check` once they know. The router also reads
``call.budget.low`` to prefer cheaper tiers as a limit runs low.

Endpoints without a budget cost one dictionary look-up here.
"""

from __future__ import annotations

from .pipeline import Call, Next, resolve_endpoint


class Budget:
    def __init__(self, tracker, endpoints) -> None:
        self.tracker = tracker
        self.endpoints = endpoints

    async def __call__(self, call: Call, call_next: Next) -> None:
        endpoint = resolve_endpoint(call, self.endpoints)
        spec = endpoint.spec.budget if endpoint is not None else None
        if spec is not None:
            state = self.tracker.state(endpoint.name, call.key.id if call.key is not None else None, spec)
            call.budget = state
            if state is not None:
                call.headers["x-modelyard-budget-remaining-usd"] = f"{state.remaining_usd:.6f}"
        await call_next(call)
