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

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from ..cache.spec import CacheSpec
from ..routing.spec import RouterSpec
from ..telemetry.budget import BudgetSpec

#: endpoint and deployment names: 3-32 characters, letters, digits and dashes, starting with a letter
NAME = r"^[A-Za-z][A-Za-z0-9-]{2,31}$"
MAX_MIRROR_PERCENT = 50


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_name(value: str) -> str:
    if not re.fullmatch(NAME, value):  # not re.match: its `$` lets a trailing line break through
        raise ValueError(f"{value!r} is not a valid name: use 3-32 letters, digits and dashes, starting with a letter")
    return value


#: checked by `check_name` (its message says what a name may be); documented as the pattern it checks
Name = Annotated[str, AfterValidator(check_name), WithJsonSchema({"type": "string", "pattern": NAME})]


class RequestSettings(_Spec):
    """How requests to one deployment are bounded (Azure ML's ``request_settings``, plus the queue)."""

    #: a request still unanswered after this long gets 408 and its generation is stopped
    request_timeout_ms: int = Field(default=90_000, ge=100)
    #: requests one instance serves at once; unset: 1 for a local model, 64 for a hosted API
    max_concurrent_requests_per_instance: int | None = Field(default=None, ge=1)
    #: requests waiting for a free instance, per instance; one more is refused with 429 and Retry-After
    max_queue_size_per_instance: int = Field(default=16, ge=0)
    #: a request that waited this long for a free instance is refused with 429
    max_queue_wait_ms: int = Field(default=60_000, ge=0)
    #: retries of a hosted API's 429/5xx/connection errors (local instances: one retry on another instance)
    max_retries: int = Field(default=2, ge=0, le=10)


class DeploymentCost(_Spec):
    """What one instance of a local deployment costs per hour (see `telemetry.cost`).

    Hosted models are priced per token by their card; this is not used for them.
    """

    #: USD per instance-hour, overriding the card's ``price.per_instance_hour``
    usd_per_instance_hour: float = Field(ge=0, allow_inf_nan=False)


class Probe(_Spec):
    initial_delay: int = Field(default=0, ge=0)
    period: int = Field(default=10, ge=1)
    timeout: int = Field(default=5, ge=1)
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=1, ge=1)


class Autoscale(_Spec):
    """Instances follow the load between ``min_instances`` and ``max_instances`` (Azure ML's target-utilisation
    scale settings; Ray Serve's ``autoscaling_config`` on the Ray runtime).

    The wanted count is the requests in flight and waiting, divided by ``target_in_flight``; it is applied
    once it has held for ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down). ``min_instances: 0`` scales
    to zero when idle (local runtime): the first request then waits for an instance to start.
    """

    min_instances: int = Field(default=1, ge=0, le=64)
    max_instances: int = Field(default=1, ge=1, le=64)
    #: requests in flight (and waiting) per instance the scaler aims for
    target_in_flight: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    upscale_delay_s: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    downscale_delay_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> "Autoscale":
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) must not exceed max_instances ({self.max_instances})")
        return self


class Resources(_Spec):
    """What one instance needs from the machine it runs on. The Ray runtime places replicas by it
    (``ray_actor_options``); the local runtime runs on this machine and only checks ``num_gpus``."""

    num_cpus: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    num_gpus: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: memory one instance needs, in GiB (unset: no reservation)
    memory_gb: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class DeploymentSpec(_Spec):
    name: Name
    endpoint_name: Name
    model: str = Field(description="catalog card id")
    instance_count: int = Field(default=1, ge=1, le=64)
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    liveness_probe: Probe = Field(default_factory=Probe)
    readiness_probe: Probe = Field(default_factory=Probe)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    #: backend options, e.g. {"context_length": 4096, "threads": 2} for llama.cpp
    options: dict[str, Any] = Field(default_factory=dict)
    #: a local deployment's running cost, e.g. {usd_per_instance_hour: 0.05}; unset: the card's price
    cost: DeploymentCost | None = None
    #: instances follow the load (unset: ``instance_count`` instances, fixed)
    autoscale: Autoscale | None = None
    #: CPUs, GPUs and memory one instance needs (the Ray runtime places replicas by it; unset: one CPU)
    resources: Resources | None = None


class EndpointSpec(_Spec):
    name: Name
    description: str = ""
    auth_mode: Literal["key"] = "key"
    #: ``split``: traffic weights (and a mirror); ``router``: cost-aware tiers (``tiers`` + ``router``)
    policy: Literal["split", "router"] = "split"
    #: deployment name -> percent of live traffic (sums to 100 when any deployment has traffic)
    traffic: dict[str, int] = Field(default_factory=dict)
    #: deployment name -> percent of live traffic copied to it, response discarded
    mirror_traffic: dict[str, int] = Field(default_factory=dict)
    #: router policy: the deployments that answer, cheapest first
    tiers: list[str] = Field(default_factory=list)
    #: router policy: the strategy and its settings
    router: RouterSpec | None = None
    #: spending limits (USD per day / month) for the endpoint and each of its keys
    budget: BudgetSpec | None = None
    #: the response cache (off unless set; see `modelyard.cache.spec.CacheSpec`)
    cache: CacheSpec = Field(default_factory=CacheSpec)

    @field_validator("traffic")
    @classmethod
    def _traffic_sums_to_0_or_100(cls, traffic: dict[str, int]) -> dict[str, int]:
        if any(w < 0 or w > 100 for w in traffic.values()):
            raise ValueError("traffic weights are percentages between 0 and 100")
        total = sum(traffic.values())
        if total not in (0, 100):
            shown = ", ".join(f"{k}={v}" for k, v in traffic.items())
            raise ValueError(f"traffic weights must sum to 0 or 100, not {total} ({shown})")
        return traffic

    @field_validator("mirror_traffic")
    @classmethod
    def _one_small_mirror(cls, mirror: dict[str, int]) -> dict[str, int]:
        mirror = {k: v for k, v in mirror.items() if v != 0}
        if len(mirror) > 1:
            raise ValueError("traffic can be mirrored to one deployment only")
        for name, pct in mirror.items():
            if not 0 < pct <= MAX_MIRROR_PERCENT:
                raise ValueError(f"mirror traffic to {name!r} must be between 1 and {MAX_MIRROR_PERCENT} percent, not {pct}")
        return mirror

    @model_validator(mode="after")
    def _router_has_tiers_and_strategy(self) -> "EndpointSpec":
        if self.policy != "router":
            if self.router is not None or self.tiers:
                raise ValueError("tiers and router settings need policy: router")
            return self
        if not self.tiers:
            raise ValueError("policy router needs tiers: the deployments that answer, cheapest first")
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers must not repeat a deployment: {self.tiers}")
        if self.router is None:
            raise ValueError("policy router needs router settings, e.g. router: {strategy: cascade, threshold: -1.0}")
        if self.router.strategy != "rules" and len(self.tiers) < 2:
            raise ValueError(f"strategy {self.router.strategy} needs at least two tiers")
        if self.router.strategy == "rules":
            named = [r.tier for r in self.router.rules] + ([self.router.default] if self.router.default else [])
            unknown = sorted({t for t in named if t not in self.tiers})
            if unknown:
                raise ValueError(f"rules name tier(s) {', '.join(map(repr, unknown))} that are not in tiers {self.tiers}")
        if self.traffic and any(self.traffic.values()):
            raise ValueError("a router endpoint routes by its tiers, not by traffic weights: leave traffic empty")
        return self

    @model_validator(mode="after")
    def _mirror_target_has_no_live_traffic(self) -> "EndpointSpec":
        for name in self.mirror_traffic:
            if self.traffic.get(name, 0) > 0:
                raise ValueError(f"deployment {name!r} has live traffic; only a deployment at 0% can receive mirrored traffic")
        return self
