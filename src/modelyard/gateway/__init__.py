"""The gateway: the pipeline of stages every OpenAI request runs through."""

from __future__ import annotations

from .auth import Auth
from .budget import Budget
from .cache import Cache
from .dispatch import dispatch
from .mirror import Mirror
from .pipeline import Call, Pipeline
from .policy import Policy
from .record import Record
from .router import Router


def build_pipeline(*, keys, endpoints, split, writer, metrics, router=None, budget=None, cache=None) -> Pipeline:
    """The stages in the order a request meets them."""
    record = Record(writer, metrics, budget)
    # Mirrored copies skip auth and policy: they were decided on the live call.
    shadow = Pipeline([record, dispatch])
    return Pipeline([
        record,
        Auth(keys),
        *([Budget(budget, endpoints)] if budget is not None else []),
        Cache(endpoints, metrics, cache),
        Policy(endpoints, split, router),
        Mirror(shadow),
        dispatch,
    ])


__all__ = ["Call", "Mirror", "Pipeline", "Router", "build_pipeline"]
