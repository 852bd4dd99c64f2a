"""The gateway: the pipeline of stages every OpenAI request runs through."""

from __future__ import annotations

from .auth import Auth
from .dispatch import dispatch
from .mirror import Mirror
from .pipeline import Call, Pipeline
from .policy import Policy
from .record import Record


def build_pipeline(*, keys, endpoints, split, writer, metrics) -> Pipeline:
    """The stages in the order a request meets them."""
    record = Record(writer, metrics)
    # Mirrored copies skip auth and policy: they were decided on the live call.
    shadow = Pipeline([record, dispatch])
    return Pipeline([
        record,
        Auth(keys),
        Policy(endpoints, split),
        Mirror(shadow),
        dispatch,
    ])


__all__ = ["Call", "Mirror", "Pipeline", "build_pipeline"]
