"""Endpoint and deployment specs: the configuration a user writes and the store keeps.

The field names follow Azure ML's managed online endpoint YAML (CLI v2) where
the concepts match, so a file written for one reads naturally for the other::

    # endpoint.yml
    name: chat
    auth_mode: key
    traffic: {blue: 100}

    # deployment.yml
    name: blue
    endpoint_name: chat
    model: gemma-3-270m
    instance_count: 1
    request_settings:
      request_timeout_ms: 90000
      max_concurrent_requests_per_instance: 1
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestSettings(_Spec):
    request_timeout_ms: int = Field(default=90_000, ge=100)
    max_concurrent_requests_per_instance: int = Field(default=1, ge=1)
    max_queue_wait_ms: int = Field(default=60_000, ge=0)


class Probe(_Spec):
    initial_delay: int = Field(default=0, ge=0)
    period: int = Field(default=10, ge=1)
    timeout: int = Field(default=5, ge=1)
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=1, ge=1)


class DeploymentSpec(_Spec):
    name: str = Field(pattern=NAME)
    endpoint_name: str = Field(pattern=NAME)
    model: str = Field(description="catalog card id")
    instance_count: int = Field(default=1, ge=0, le=64)
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    liveness_probe: Probe = Field(default_factory=Probe)
    readiness_probe: Probe = Field(default_factory=Probe)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    #: backend options, e.g. {"context_length": 4096, "threads": 2} for llama.cpp
    options: dict[str, Any] = Field(default_factory=dict)


class EndpointSpec(_Spec):
    name: str = Field(pattern=NAME)
    description: str = ""
    auth_mode: Literal["key"] = "key"
    policy: Literal["split"] = "split"
    #: deployment name -> percent of live traffic (sums to 100 when any deployment has traffic)
    traffic: dict[str, int] = Field(default_factory=dict)
    #: deployment name -> percent of live traffic copied to it, response discarded
    mirror_traffic: dict[str, int] = Field(default_factory=dict)
