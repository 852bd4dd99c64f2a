"""What a runtime is to a deployment: the seam between `serving.Deployment` and where instances run.

Two runtimes implement it: `runtime.local.LocalRuntime` (processes on this
machine, the default) and `runtime.ray.RayRuntime` (Ray Serve replicas
anywhere in a Ray cluster). A deployment asks its runtime for a number of
instances of an `InstanceSpec` (`runtime.local`) and sends requests to the ready ones; it
never needs to know which runtime it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .local import InstanceSpec

#: ``on_scale(key, before, after, reason)``: a deployment's count of serving instances changed
ScaleHook = Callable[[str, int, int, str], Any]


class Instance(Protocol):
    """One place a deployment's requests run: a local process or a Ray Serve replica."""

    name: str
    #: new | starting | ready | suspect | restarting | draining | failed | stopped
    state: str
    #: requests this gateway has in flight on it (counted by the deployment)
    in_flight: int
    #: what the gateway shows the instance (a bearer token): nobody else may call it
    token: str

    @property
    def url(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...

    def suspect(self) -> None:
        """Take it out of rotation after a failed call, until it is seen healthy again."""


class Runtime(Protocol):
    """Starts, watches, scales and stops the instances of deployments, by deployment key."""

    #: told when a deployment's instance count changes (the deployment event log listens)
    on_scale: ScaleHook | None

    def instances(self, key: str) -> list[Any]: ...

    async def scale(self, spec: "InstanceSpec", count: int, *, reason: str = "") -> list[Any]:
        """Bring deployment `spec.key` to `count` instances; new ones are ready when this returns."""

    async def stop(self, key: str) -> None: ...

    async def close(self) -> None: ...
