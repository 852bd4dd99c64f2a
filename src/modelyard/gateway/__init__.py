"""The gateway: the pipeline of stages every OpenAI request runs through."""

from __future__ import annotations

from .auth import Auth
from .budget import Budget
from .cache import Cache
from .dispatch import dispatch
from .flows import Flows
from .mirror import Mirror
from .pipeline import Call, Pipeline
from .policy import Policy
from .record import Record
from .router import Router


def build_pipeline(*, keys, endpoints, split, writer, metrics, router=None, budget=None, cache=None, flows=None,
                   indexes=None) -> Pipeline:
    """The stages in the order a request meets them. With ``flows`` (a `serving.flows.FlowRegistry`), a
    request naming a flow runs it; its steps run through the same stages after auth (they carry the flow
    call's key)."""
    record = Record(writer, metrics, budget)
    # Mirrored copies skip auth and policy: they were decided on the live call.
    shadow = Pipeline([record, dispatch])
    budgeted = [Budget(budget, endpoints)] if budget is not None else []
    answer = [Cache(endpoints, metrics, cache), Policy(endpoints, split, router), Mirror(shadow), dispatch]
    staged = []
    if flows is not None:
        steps = Pipeline([record, *budgeted, *answer])
        staged = [Flows(flows, steps, indexes)]
    return Pipeline([record, Auth(keys), *budgeted, *staged, *answer])


__all__ = ["Call", "Flows", "Mirror", "Pipeline", "Router", "build_pipeline"]
