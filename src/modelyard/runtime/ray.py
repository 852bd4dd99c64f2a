"""The Ray runtime: instances as Ray Serve replicas anywhere in a Ray cluster.

Each deployment (``endpoint/deployment``) becomes one Ray Serve application,
named ``modelyard-<endpoint>-<deployment>`` with the route prefix
``/modelyard-<endpoint>-<deployment>``. Its replicas are `ModelReplica`
actors: each resolves the card's weights on its own node (a packaged model is
assembled there, a Hub model is pulled there, a local path must exist there
or on a shared file system), loads the Backend the way ``python -m
modelyard.worker`` does, and serves the instance wire format with the same
ASGI app (`worker.app.build_app`), token included. The replica reports ready
only once its model has loaded, so Serve routes nothing to a loading replica.

What the deployment spec becomes in Serve:

====================================  ==========================================
``resources.num_cpus/num_gpus``       ``ray_actor_options`` (placement)
``resources.memory_gb``               ``ray_actor_options.memory`` (bytes)
``autoscale``                         ``autoscaling_config``: min/max replicas,
                                      ``target_ongoing_requests`` =
                                      ``target_in_flight``, up/downscale delays
no ``autoscale``                      ``num_replicas = instance_count``
``max_concurrent_requests_per_...``   ``max_ongoing_requests``
``liveness_probe``                    health check period and timeout
``environment_variables``             ``runtime_env.env_vars``
====================================  ==========================================

Ray Serve restarts a replica whose process or node dies, drains a replica it
removes, and scales by its autoscaler; this runtime only reports what Serve
does, in modelyard's terms (`RayReplica.describe`: state, node, replica id),
and calls `RayRuntime.on_scale` when a deployment's count of running
replicas changes.

How the gateway reaches replicas: through Serve's HTTP proxy. The other way,
a `DeploymentHandle` called from the gateway's process, was measured against
it with ``bench/ray_dispatch.py`` (same run, same replica): on a busy 2-core
machine the handle answered 10-28 % sooner (one process hop less; see
`DISPATCH`). The proxy is still the default because it keeps one wire format
for every instance: the gateway's OpenAI-compatible client, its timeouts, its
error mapping and SSE streaming are the same as for local instances, and no
Ray objects sit on the request path. The proxy listens on 127.0.0.1, where
any local user can reach it, so each replica checks the instance token the
gateway gives it, exactly as a local instance does. The handle client is
complete (``RayRuntime(dispatch="handle")``), for a gateway that is not on a
Ray node and for the comparison.

Several gateways on one cluster (the same database and ``MODELYARD_HOME``,
``RAY_ADDRESS`` set): they deploy each application with the same
configuration, so the second one's ``serve.run`` changes nothing and no
replica restarts. That takes two things. The instance token is not random
per gateway but derived (HMAC-SHA256) from the admin key in
``MODELYARD_HOME/admin.key``, which those gateways share already, and the
application's name; it goes only to the replicas, as before, and the admin
key itself never leaves the gateway. And each deployment carries a code
version computed from everything its replicas are built with (card, options,
token, modelyard's version): Serve's Python API otherwise stamps every
``serve.run`` with a random version and replaces every replica (see
`_code_version`). A gateway that shuts down leaves the applications of a
joined cluster running for the others (`detach`); deleting a deployment
deletes its application, unless another gateway has since deployed a
different one under that name.

A replica lost mid-request: the proxy answers a plain-text 500 (non-streaming)
or drops the connection (streaming). The first is reported as
``upstream_unavailable`` like a refused connection, so the deployment retries
the request once on another replica; a stream cut after its first chunk ends
with an error event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from .. import __version__
from ..backends.base import Backend, load_backend
from ..backends.openai_compat import OpenAICompatBackend
from ..catalog.card import ModelCard
from ..catalog.sources import resolve_path
from ..errors import ModelyardError
from ..extras import require
from ..raycluster import ray_connect, restore_sigterm
from ..settings import Settings
from ..wire import gather
from ..worker.app import build_app
from .base import ScaleHook
from .local import InstanceSpec

ray = require("ray", "ray", "the ray runtime (MODELYARD_RUNTIME=ray)")
serve = require("ray.serve", "ray", "the ray runtime (MODELYARD_RUNTIME=ray)")

log = logging.getLogger(__name__)

#: how the gateway reaches replicas. Measured with ``bench/ray_dispatch.py`` (gemma-3-270m, 20 rounds, a 2-core
#: machine at load ~10): the handle was 10-28 % faster than the proxy (time to first chunk 77.7 vs 107.4 ms,
#: non-streaming 344 vs 381 ms; one process hop less). The proxy stays the default for one wire format and one
#: client for every instance (see the module docstring) until a rerun on a quiet machine settles it.
DISPATCH = "http"
#: how often Serve's view of the replicas is read (states, nodes, counts for `on_scale`)
POLL_S = 1.0
#: how long a replica a request failed on stays out of the gateway's rotation, unless Serve drops it first
SUSPECT_S = 15.0
#: Serve application names are derived from the deployment key with this prefix
APP_PREFIX = "modelyard-"
#: the replicas' environment variable that names their code version: how a gateway tells, before deleting an
#: application, that it still runs what this gateway deployed (Serve's details do not show the version itself)
VERSION_ENV = "MODELYARD_REPLICA_VERSION"

#: ``on_instance(key, instance_name, kind, reason)``: a replica was lost and Serve replaces it
InstanceHook = Callable[[str, str, str, str], Any]

_REPLICA_STATES = {"STARTING": "starting", "UPDATING": "starting", "RECOVERING": "restarting",
                   "RUNNING": "ready", "PENDING_MIGRATION": "draining", "STOPPING": "draining",
                   "STOPPED": "stopped"}


def app_name(key: str) -> str:
    """The Serve application (and route prefix) of deployment `key` (``endpoint/deployment``)."""
    return APP_PREFIX + re.sub(r"[^A-Za-z0-9-]", "-", key)


# --- the replica -----------------------------------------------------------------------------


class _Loaded:
    """A backend that has loaded already: the ASGI app's own start-up then has nothing left to do."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.max_concurrency = backend.max_concurrency

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self._backend.close()

    def generate(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        return self._backend.generate(kind, request)

    async def embed(self, request: Any) -> dict[str, Any]:
        return await self._backend.embed(request)


def _error_item(err: ModelyardError) -> dict[str, Any]:
    # Errors cross Ray as data: an exception class of ours would need unpickling on the other side.
    return {"__error__": {"status": err.status, "body": err.body(), "headers": err.headers or None}}


@serve.ingress()
class ModelReplica:
    """One Serve replica: one Backend, loaded in the constructor, served over HTTP and handle calls."""

    async def __init__(self, card: dict[str, Any], options: dict[str, Any], token: str, name: str) -> None:
        model = ModelCard.model_validate(card)
        options = dict(options)
        if not model.is_hosted and "path" not in options:
            # the weights on this node: a packaged model is assembled, a Hub model pulled here
            path = await asyncio.to_thread(resolve_path, model, Settings.from_env(), download=True)
            options["path"] = str(path)
        self._backend = load_backend(model, options)
        await self._backend.start()  # Serve sends nothing to a replica before its constructor returns
        self._token = token
        self._name = name
        log.info("%s ready on node %s", name, ray.get_runtime_context().get_node_id())

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(_Loaded(self._backend), name=self._name, token=self._token)

    async def complete(self, kind: str, request: Any) -> dict[str, Any]:
        """A whole answer (handle dispatch, non-streaming)."""
        try:
            if kind == "embedding":
                return await self._backend.embed(request)
            async with aclosing(self._backend.generate(kind, request)) as chunks:
                return gather(kind, [c async for c in chunks])
        except ModelyardError as err:
            return _error_item(err)
        except Exception:
            log.exception("%s: request failed", self._name)
            return _error_item(ModelyardError("the instance failed while answering", status=500, code="instance_error"))

    async def stream(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        """The chunks of an answer (handle dispatch, streaming), usage chunk included."""
        try:
            async with aclosing(self._backend.generate(kind, request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except ModelyardError as err:
            yield _error_item(err)
        except Exception:
            log.exception("%s: request failed", self._name)
            yield _error_item(ModelyardError("the instance failed while answering", status=500, code="instance_error"))


# --- what the gateway sees -------------------------------------------------------------------


class RayReplica:
    """A Serve replica as the deployment sees an instance.

    Requests are not sent to a replica by name: the proxy (or handle) picks
    one of the application's running replicas. The deployment still counts
    its requests against these objects, so it sends a deployment at most as
    many requests as its running replicas can take.
    """

    def __init__(self, key: str, replica_id: str, url: str, token: str) -> None:
        self.key = key
        self.replica_id = replica_id
        self.name = f"{key.replace('/', '-')}-{replica_id}"
        self._url = url
        self.token = token
        self.state = "starting"
        self.node_id: str | None = None
        self.node_ip: str | None = None
        self.pid: int | None = None
        self.actor_name: str | None = None
        self.started_at: float | None = None
        self.in_flight = 0
        self.restarts = 0
        self.last_error: str | None = None
        #: the replica's Serve log where this machine can read it (a node of its own: nothing here)
        self.log_file: Path = Path(f"{self.name}.log")
        self.process = None  # not a process of this machine's gateway
        self._suspect_until = 0.0

    @property
    def url(self) -> str:
        return self._url

    @property
    def ready(self) -> bool:
        if self.state == "suspect" and time.monotonic() >= self._suspect_until:
            self.state = "ready"
        return self.state == "ready"

    def suspect(self) -> None:
        # Serve notices a dead replica (its node's death, or failed health checks) and replaces it; until
        # the poll shows it gone the gateway counts it out, or for SUSPECT_S should it have been a false alarm.
        if self.state == "ready":
            self.state = "suspect"
            self._suspect_until = time.monotonic() + SUSPECT_S

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "port": None, "pid": self.pid, "restarts": self.restarts,
                "in_flight": self.in_flight, "last_error": self.last_error, "runtime": "ray", "url": self._url,
                "replica_id": self.replica_id, "node_id": self.node_id, "node_ip": self.node_ip,
                "actor": self.actor_name}


class _ProxyClient(OpenAICompatBackend):
    """The OpenAI-compatible client, aimed at a Serve application through the HTTP proxy.

    The proxy's own failure (its replica died mid-request) is a plain-text
    500; a replica's errors are OpenAI-shaped JSON. The first is reported as
    the instance being unavailable, which the deployment retries elsewhere.
    """

    def _status_error(self, status: int, raw: bytes, headers: Any) -> Any:
        failure, retry_after = super()._status_error(status, raw, headers)
        if status >= 500 and not raw.lstrip().startswith(b"{"):
            failure.final = ModelyardError(f"a Ray Serve replica was lost while answering (HTTP {status} from the "
                                           "proxy)", status=502, code="upstream_unavailable")
        return failure, retry_after


class HandleClient:
    """Calls a Serve application through a `DeploymentHandle` (the alternative to the proxy; see `DISPATCH`)."""

    def __init__(self, app: str, timeout: float) -> None:
        self._handle = serve.get_app_handle(app)
        self._app = app
        self.timeout = timeout
        self.max_concurrency = 64

    def generate(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        return self._stream(kind, request) if request.stream else self._complete(kind, request)

    async def embed(self, request: Any) -> dict[str, Any]:
        return await self._call("complete", "embedding", request)

    async def _complete(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        yield await self._call("complete", kind, request)

    async def _call(self, method: str, kind: str, request: Any) -> dict[str, Any]:
        response = self._handle.options(method_name=method).remote(kind, request)
        try:
            body = await asyncio.wait_for(response, self.timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise self._timed_out() from None
        except ray.exceptions.RayError as exc:
            raise self._lost(exc) from None
        return _unwrap(body)

    async def _stream(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        response = self._handle.options(method_name="stream", stream=True).remote(kind, request)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    item = await asyncio.wait_for(response.__anext__(), max(0.0, deadline - time.monotonic()))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise self._timed_out() from None
                except ray.exceptions.RayError as exc:
                    raise self._lost(exc) from None
                yield _unwrap(item)
        finally:
            response.cancel()  # a caller that hung up (or an error) stops the generation

    def _timed_out(self) -> ModelyardError:
        return ModelyardError(f"ray application {self._app} timed out", status=504, code="upstream_timeout")

    def _lost(self, exc: BaseException) -> ModelyardError:
        return ModelyardError(f"ray application {self._app}: replica lost ({type(exc).__name__})", status=502,
                              code="upstream_unavailable")

    async def close(self) -> None:
        pass


def _unwrap(item: dict[str, Any]) -> dict[str, Any]:
    err = item.get("__error__") if isinstance(item, dict) else None
    if err is None:
        return item
    failure = ModelyardError.from_body(err["status"], err["body"])
    failure.headers = err.get("headers") or failure.headers
    raise failure


# --- the runtime -----------------------------------------------------------------------------


class _App:
    """What this runtime knows of one deployment's Serve application."""

    def __init__(self, key: str, token: str) -> None:
        self.key = key
        self.name = app_name(key)
        self.token = token
        #: the code version this gateway last deployed (`_code_version`)
        self.version: str | None = None
        self.replicas: dict[str, RayReplica] = {}
        self.running = 0
        #: the running count last reported to ``on_scale`` (the poller and `scale` both see changes: reported once)
        self.reported = 0
        self.target: int | None = None
        self.autoscaled = False
        self.updating = False
        #: replicas seen leaving (stopping, or gone), reported once
        self.leaving: set[str] = set()


class RayRuntime:
    """Runs deployments as Ray Serve applications in a Ray cluster.

    ``address``: a running cluster (``ray start --head`` prints it; ``auto``
    finds the one on this machine); unset starts a Ray of this process,
    shut down again by `close`. ``dispatch``: ``http`` (the Serve proxy, the
    default) or ``handle``. ``secret``: what the instance tokens are derived
    from (the gateway passes its admin key, so every gateway of one
    ``MODELYARD_HOME`` gives an application the same token); unset, a random
    one of this runtime's own.
    """

    #: replicas are placed by their own `resources`: llama.cpp threads follow num_cpus, not this machine's cores
    divides_cores = False
    #: Serve scales autoscaled deployments itself (the local autoscaler leaves them alone)
    scales_itself = True

    def __init__(self, address: str | None = None, *, dispatch: str = DISPATCH, http_port: int | None = None,
                 logs_dir: Path | None = None, secret: str | bytes | None = None) -> None:
        if dispatch not in ("http", "handle"):
            raise ValueError(f"dispatch must be 'http' or 'handle', not {dispatch!r}")
        self.address = address
        self._secret = secret.encode() if isinstance(secret, str) else (secret or secrets.token_bytes(32))
        #: set by `detach`: the gateway shuts down and leaves the applications to the cluster's other gateways
        self._detached = False
        self.dispatch = dispatch
        self.logs_dir = logs_dir
        self._http_port = http_port
        self._apps: dict[str, _App] = {}
        self._started_ray = False
        self._proxy_url: str | None = None
        self._local_ip: str | None = None
        self._session_logs: Path | None = None
        self._poller: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        #: called as ``on_scale(key, before, after, reason)`` when a deployment's running replicas change
        self.on_scale: ScaleHook | None = None
        #: called as ``on_instance(key, name, "instance_restarted", reason)`` when a replica was lost
        self.on_instance: InstanceHook | None = None
        #: whether this gateway reports the cluster's replica changes: every gateway on one cluster sees the same
        #: changes, so with several the one holding a lease reports them (set by the gateway), not each of them
        self.reports_events: Callable[[], bool] = lambda: True

    # --- connecting ---

    def _connect(self) -> None:
        """Join the cluster (or start a Ray) and make sure Serve and its proxy run. Blocking."""
        with self._lock:
            if self._proxy_url is not None:
                return
            if not ray.is_initialized():
                # unset: a Ray of our own ("local"), never whichever Ray happens to run on this machine
                ray_connect(self.address or "local")
                self._started_ray = not self.address  # a Ray of this process: shut down by `close`
            port = self._http_port or _free_port(8000)
            for attempt in range(3):
                try:
                    serve.start(http_options={"host": "127.0.0.1", "port": port},
                                logging_config={"enable_access_log": False, "log_level": "WARNING"})
                    break
                except ray.exceptions.RayActorError as exc:
                    # Serve's controller kills a proxy not ready within 5 s (a busy machine; two gateways starting
                    # Serve at once) and starts another; this call, waiting on the first, fails. Connect again.
                    if attempt == 2:
                        raise
                    log.warning("Ray Serve's proxy died while Serve started (%s); connecting again",
                                str(exc).splitlines()[0])
                    time.sleep(2.0)
            # Serve may have been running already (another gateway): its proxy's port is the one to use.
            from ray.serve.context import _get_global_client  # noqa: PLC0415 (private module; only here)

            config = _get_global_client().http_config
            self._proxy_url = f"http://{config.host}:{config.port}"
            self._local_ip = ray.util.get_node_ip_address()
            try:
                self._session_logs = Path(ray._private.worker._global_node.get_logs_dir_path())
            except Exception:  # a client connection has no local node: logs stay on the cluster
                self._session_logs = None
            log.info("ray runtime: cluster %s, Serve proxy %s, dispatch %s", self.address or "(local)",
                     self._proxy_url, self.dispatch)

    async def start(self) -> None:
        """Connect now (it takes a while) rather than on the first deployment."""
        await asyncio.to_thread(self._connect)
        restore_sigterm()
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever(), name="ray-runtime-poll")

    # --- the runtime interface ---

    def instances(self, key: str) -> list[RayReplica]:
        app = self._apps.get(key)
        if app is None:
            return []
        return [r for r in app.replicas.values() if r.state != "stopped"]

    def slot_capacity(self, per_instance: int, autoscale: Any) -> int:
        """Requests the gateway sends one replica before queueing them itself.

        A fixed deployment: what a replica serves at once. An autoscaled one:
        Serve's autoscaler counts requests queued at the proxy, so the gateway
        lets through twice the target per replica, enough for Serve to see the
        load that calls for more replicas (the gateway's own queue, its 429s
        and timeouts, still bound what is left).
        """
        if autoscale is None:
            return per_instance
        return max(per_instance, math.ceil(2 * autoscale.target_in_flight))

    def client(self, inst: RayReplica, timeout: float) -> Any:
        """The client that reaches `inst`'s application (one per application and timeout)."""
        if self.dispatch == "handle":
            return HandleClient(app_name(inst.key), timeout)
        return _ProxyClient(inst.url + "/v1", api_key=inst.token, timeout=timeout, max_retries=0, provider="modelyard")

    async def scale(self, spec: InstanceSpec, count: int, *, reason: str = "") -> list[RayReplica]:
        """Deploy (or update) the Serve application of `spec.key` with `count` replicas, or the autoscale
        settings of `spec`; new replicas are running when this returns. Zero deletes the application."""
        if count <= 0:
            await self.stop(spec.key)
            return []
        await self.start()
        app = self._apps.get(spec.key)
        if app is None:
            app = self._apps[spec.key] = _App(spec.key, self._token(app_name(spec.key)))
        app.autoscaled = spec.autoscale is not None
        before = app.running
        app.updating = True  # replicas replaced by a rolling update are not lost ones
        try:
            await asyncio.to_thread(self._deploy, app, spec, count)
            await self._refresh()
        finally:
            app.updating = False
        if app.running != before and self.on_scale is not None and app.target is not None:
            self._report(app, before, reason or ("deployment started" if before == 0 else
                                                 f"replica count set to {app.running}"))
        return self.instances(spec.key)

    async def stop(self, key: str) -> None:
        """The deployment is deleted (or replaced): delete its Serve application. After `detach` only forget it
        here; on a joined cluster, leave alone an application another gateway has redeployed since."""
        app = self._apps.pop(key, None)
        if app is None or self._detached:
            return
        if self.address and app.version is not None:
            running = (await asyncio.to_thread(_serve_details)).get(app.name)
            if running is None or _version_of(running) not in (None, app.version):
                log.info("Serve application %s is gone or was redeployed by another gateway; not deleting it",
                         app.name)
                return
        log.info("deleting Serve application %s (%s)", app.name, app.version)
        await asyncio.to_thread(serve.delete, app.name)

    def detach(self) -> None:
        """The gateway shuts down (its deployments are not deleted): on a cluster joined at ``address``, the
        Serve applications keep running for the other gateways that serve them, and `stop` and `close`
        leave them alone. A Ray this runtime started goes down in `close` as before, applications and all."""
        if self.address and not self._detached:
            self._detached = True
            if self._apps:
                log.info("leaving %d Serve application(s) running on the Ray cluster for its other gateways: %s",
                         len(self._apps), ", ".join(sorted(app.name for app in self._apps.values())))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        self.detach()  # closing never deletes what other gateways on the cluster may serve
        for key in list(self._apps):
            try:
                await self.stop(key)
            except Exception as exc:  # the cluster is gone already: nothing left to stop
                log.warning("could not delete the Serve application of %s: %s", key, exc)
        if self._started_ray:
            await asyncio.to_thread(_shutdown_ray)
            self._started_ray = False
        self._proxy_url = None

    def _token(self, name: str) -> str:
        """The instance token of Serve application `name`: the same in every gateway with the same secret."""
        digest = hmac.new(self._secret, b"modelyard ray instance token\0" + name.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    # --- deploying ---

    def _deploy(self, app: _App, spec: InstanceSpec, count: int) -> None:
        options = dict(spec.options)
        resources = spec.resources
        num_cpus = resources.num_cpus if resources is not None else 1.0
        if spec.card.format == "gguf" and "threads" not in options:
            options["threads"] = max(1, int(num_cpus))  # llama.cpp threads: the cores this replica holds
        actor: dict[str, Any] = {"num_cpus": num_cpus}
        if resources is not None and resources.num_gpus:
            actor["num_gpus"] = resources.num_gpus
        if resources is not None and resources.memory_gb:
            actor["memory"] = int(resources.memory_gb * 2**30)
        if spec.env:
            actor["runtime_env"] = {"env_vars": dict(spec.env)}
        settings: dict[str, Any] = {
            "name": app.name,
            "ray_actor_options": actor,
            "max_ongoing_requests": spec.max_concurrent,
            "health_check_period_s": spec.probe_period_s,
            "health_check_timeout_s": spec.probe_timeout_s,
            "graceful_shutdown_timeout_s": 30.0,
            "logging_config": {"enable_access_log": False},
        }
        if spec.autoscale is not None:
            scale = spec.autoscale
            settings["autoscaling_config"] = {
                # not to zero: a request the gateway holds back would never reach Serve to wake it
                "min_replicas": max(scale.min_instances, 1), "max_replicas": scale.max_instances,
                "initial_replicas": min(max(count, scale.min_instances, 1), scale.max_instances),
                "target_ongoing_requests": scale.target_in_flight,
                "upscale_delay_s": scale.upscale_delay_s, "downscale_delay_s": scale.downscale_delay_s,
            }
        else:
            settings["num_replicas"] = count
        name = f"{spec.key.replace('/', '-')}"
        args = (spec.card.model_dump(mode="json"), options, app.token, name)
        version = _code_version(args, actor.get("runtime_env"))
        actor.setdefault("runtime_env", {}).setdefault("env_vars", {})[VERSION_ENV] = version
        # `_internal`: Serve's Python API no longer takes a version from users and stamps each run with a random
        # one (a rolling restart of every replica); the config-file path hashes its config the same way
        bound = serve.deployment(ModelReplica, **settings).options(version=version, _internal=True).bind(*args)
        log.info("deploying %s as Serve application %s (%s)", spec.key, app.name,
                 "autoscaled" if spec.autoscale is not None else f"{count} replicas")
        # returns once the application runs (every replica constructed: its model loaded), raises when
        # Serve gives up on it (a replica that keeps failing to start)
        serve.run(bound, name=app.name, route_prefix=f"/{app.name}")
        app.version = version

    # --- watching ---

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._refresh()
            except Exception as exc:  # the cluster is unreachable for a moment: keep the last view
                log.warning("could not read Ray Serve's state: %s", exc)

    async def _refresh(self) -> None:
        if not self._apps:
            return
        details = await asyncio.to_thread(_serve_details)
        for app in list(self._apps.values()):
            before = app.running
            self._update(app, details.get(app.name))
            if app.running != before and self.on_scale is not None:
                self._report(app, before, self._why(app, before))

    def _update(self, app: _App, details: dict[str, Any] | None) -> None:
        deployments = (details or {}).get("deployments") or {}
        dep = next(iter(deployments.values()), None)
        seen: set[str] = set()
        previous_target = app.target
        if dep is not None:
            app.target = dep.get("target_num_replicas")
            for info in dep.get("replicas") or []:
                rid = info["replica_id"]
                seen.add(rid)
                replica = app.replicas.get(rid)
                if replica is None:
                    replica = app.replicas[rid] = RayReplica(app.key, rid, f"{self._proxy_url}/{app.name}", app.token)
                state = _REPLICA_STATES.get(str(info.get("state")).rsplit(".", 1)[-1], "starting")
                if not (replica.state == "suspect" and state == "ready"):
                    replica.state = state
                replica.node_id = info.get("node_id")
                replica.node_ip = info.get("node_ip")
                replica.actor_name = info.get("actor_name")
                # a pid means something here only when the replica runs on this machine
                replica.pid = info.get("pid") if replica.node_ip == self._local_ip else None
                if self._session_logs is not None and info.get("log_file_path"):
                    replica.log_file = self._session_logs / str(info["log_file_path"]).lstrip("/")
        target_dropped = app.target is not None and previous_target is not None and app.target < previous_target
        for rid in list(app.replicas):
            replica = app.replicas[rid]
            leaving = rid not in seen or replica.state in ("draining", "stopped")
            if leaving and rid not in app.leaving:
                app.leaving.add(rid)
                # not a scale-down, nor the whole application deleted (through another gateway): it was lost
                if details is not None and not target_dropped and not app.updating and replica.state != "starting":
                    self._lost(app, replica)
            if rid not in seen:
                replica.state = "stopped"
                del app.replicas[rid]
                app.leaving.discard(rid)
        app.running = sum(1 for r in app.replicas.values() if r.state in ("ready", "suspect"))

    def _lost(self, app: _App, replica: RayReplica) -> None:
        replica.last_error = "the replica was lost (its process or node died, or it failed its health checks)"
        log.warning("%s: %s; Ray Serve replaces it", replica.name, replica.last_error)
        if self.on_instance is not None and self.reports_events():
            try:
                self.on_instance(app.key, replica.name, "instance_restarted",
                                 f"{replica.last_error}; Ray Serve starts a replacement")
            except Exception:
                log.exception("the on_instance callback failed for %s", app.key)

    def _why(self, app: _App, before: int) -> str:
        target = app.target
        if app.running < before and (target is None or app.running < target):
            return f"replica lost; Ray Serve replaces it (target {target})"
        if app.autoscaled:
            return f"Ray Serve autoscaler (target {target} replicas)"
        return f"replica started (target {target})"

    def _report(self, app: _App, before: int, reason: str) -> None:
        before, app.reported = app.reported, app.running
        if before == app.running or not self.reports_events():
            return
        try:
            result = self.on_scale(app.key, before, app.running, reason)  # type: ignore[misc]
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        except Exception:
            log.exception("the on_scale callback failed for %s", app.key)


def _serve_details() -> dict[str, Any]:
    """Serve's applications with their deployments and replicas (the dashboard's view). Blocking."""
    from ray.serve.context import _get_global_client  # noqa: PLC0415 (private module; only here)

    return _get_global_client().get_serve_details().get("applications") or {}


def _code_version(args: tuple[Any, ...], runtime_env: dict[str, Any] | None) -> str:
    """A deployment's code version: a digest of everything its replicas are constructed with (and modelyard's
    version). Equal in every gateway that deploys the same spec, so a second ``serve.run`` changes nothing;
    a new token, model, option or environment makes Serve replace the replicas, as it should."""
    blob = json.dumps([__version__, args, runtime_env], sort_keys=True, default=str)
    return "modelyard-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def _version_of(app_details: dict[str, Any]) -> str | None:
    """The code version a running application was deployed with (`VERSION_ENV` in its replicas' env)."""
    for dep in (app_details.get("deployments") or {}).values():
        actor = (dep.get("deployment_config") or {}).get("ray_actor_options") or {}
        return ((actor.get("runtime_env") or {}).get("env_vars") or {}).get(VERSION_ENV)
    return None


def _shutdown_ray() -> None:
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


__all__ = ["DISPATCH", "HandleClient", "ModelReplica", "RayReplica", "RayRuntime", "app_name"]
