"""The gateway: the pipeline of stages every OpenAI request runs through."""

from __future__ import annotations

from .auth import Auth
from .dispatch import dispatch
from .pipeline import Call, Pipeline
from .policy import Policy
from .record import Record


def build_pipeline(*, keys, endpoints, split, writer, metrics) -> Pipeline:
    """The stages in the order a request meets them."""
    return Pipeline([
        Record(writer, metrics),
        Auth(keys),
        Policy(endpoints, split),
        dispatch,
    ])


__all__ = ["Call", "Pipeline", "build_pipeline"]
