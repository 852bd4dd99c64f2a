"""The gateway's running parts, built once at start-up and shared by the routes."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..batch import BatchRunner, open_batches
from ..finetune.jobs import FineTuneRunner
from ..store.finetune import FineTuneStore
from ..catalog.registry import Catalog
from ..gateway import Call, Mirror, Pipeline, Router, build_pipeline
from ..cache.embed import AsyncEmbedder
from ..cache.service import ResponseCache
from ..gateway.cache import Cache
from ..telemetry import budget as budgets
from ..gateway.feedback import FeedbackService
from ..flows.trace import configure_otel, shutdown_otel
from ..index import IndexRegistry
from ..serving.flows import FlowRegistry
from ..store.flows import FlowStore
from ..routing.models import Models
from ..routing.responses import ResponseLog
from ..store.responses import ResponseStore
from ..raycluster import ray_disconnect
from ..runtime.local import LocalRuntime
from ..serving.endpoints import Endpoints, TrafficSplit
from ..serving.spec import DeploymentSpec, EndpointSpec
from ..settings import Settings
from ..serving.config import ConfigStore
from ..store.db import Database
from ..store.keys import KeyStore
from ..store.leases import LeaseKeeper, LeaseStore, gateway_id
from ..store.notices import Notice, Notices, open_notices
from ..store.spend import spent_since
from ..store.spend_counters import RedisSpendCounters
from ..store.events import EventLog
from ..serving.autoscale import Scaler
from ..store.usage import UsageWriter
from ..serving.rollout import RolloutController
from ..store.rollouts import RolloutStore
from ..wire import EmbeddingRequest
from ..telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)

#: The endpoints `modelyard up` creates on a fresh machine.
DEFAULT_ENDPOINTS = {"default": "gemma-3-270m", "embed": "all-minilm-l6-v2"}
#: held by the one gateway that writes a shared Ray cluster's replica changes to the deployment event log
RAY_EVENTS_LEASE = "events:ray"


def _runtime(settings: Settings, admin_key: str) -> Any:
    """Where instances run: processes here, or Ray Serve replicas (MODELYARD_RUNTIME=ray, RAY_ADDRESS; the
    replicas' tokens derive from the admin key, so gateways sharing MODELYARD_HOME deploy the same apps)."""
    if settings.runtime == "ray":
        from ..runtime.ray import RayRuntime  # noqa: PLC0415 (Ray is an optional extra, heavy to import)

        return RayRuntime(settings.ray_address, logs_dir=settings.logs_dir, secret=admin_key)
    return LocalRuntime(settings.logs_dir)


@dataclass
class Gateway:
    settings: Settings
    db: Database
    catalog: Catalog
    keys: KeyStore
    config: ConfigStore
    endpoints: Endpoints
    writer: UsageWriter
    metrics: GatewayMetrics
    pipeline: Pipeline
    admin_key: str
    admin_key_created: bool
    rollouts: RolloutController | None = None
    router: Router | None = None
    feedback: FeedbackService | None = None
    budget: budgets.BudgetTracker | None = None
    batches: BatchRunner | None = None
    #: fine-tuning jobs (reads the batch runner's files; runs jobs unless MODELYARD_FINETUNE_ENABLED=false)
    finetune: FineTuneRunner | None = None
    #: the document indexes flows retrieve from (MODELYARD_HOME/indexes)
    indexes: IndexRegistry | None = None
    #: the flows served by name like endpoints (stored in the database, folders under MODELYARD_HOME/flows)
    flows: FlowRegistry | None = None
    #: scaling decisions and instance restarts (the runtime reports them)
    events: EventLog | None = None
    #: follows the load of autoscaled local deployments
    scaler: Scaler | None = None
    #: several gateways on one database: this one's name, the leases it holds on background work (rollouts,
    #: batch and fine-tuning jobs) and the change notices it sends and hears
    gateway_id: str = ""
    leases: LeaseKeeper | None = None
    notices: Notices | None = None
    _key_sync: asyncio.Task[None] | None = None
    _take_over: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, settings: Settings) -> "Gateway":
        """Open the database (migrating it), the catalog and the keys. Starts nothing yet."""
        settings.ensure_home()
        db = Database(settings.database_url)
        db.upgrade()
        keys = KeyStore(db)
        admin_key, created = keys.ensure_admin_key(settings.admin_key_file)
        catalog = Catalog.load(settings)
        config = ConfigStore(db)
        endpoints = Endpoints(config, catalog, _runtime(settings, admin_key), keys)
        writer = UsageWriter(db, flush_interval=settings.usage_flush_s)
        metrics = GatewayMetrics()
        metrics.watch_usage_writer(writer)
        me = gateway_id()
        # with Redis, budgets are counted once for every gateway (store.spend_counters)
        shared = RedisSpendCounters(settings.redis_url, me, functools.partial(spent_since, db),
                                    namespace=hashlib.sha256(db.url.render_as_string().encode()).hexdigest()[:12]) \
            if settings.redis_url else None
        budget = budgets.BudgetTracker(shared=shared)
        budget.load(db)  # what was spent today and this month, from the usage records
        responses = ResponseStore(db)
        # The router checks budgets itself (telemetry.budget.allows / refusal) before each paid tier.
        models = Models(settings)
        router = Router(ResponseLog(responses), writer, metrics, models=models, budget=budget)
        # the cache embeds with the router's all-MiniLM-L6-v2 (one copy per gateway), on its own thread
        cache = ResponseCache(metrics.cache, root=settings.home / "cache", embedder=AsyncEmbedder(models.embedder()))
        indexes = IndexRegistry(settings.home / "indexes")
        flows = FlowRegistry(FlowStore(db), settings.home / "flows", endpoint_exists=lambda name: name in endpoints,
                             node_timeout_s=settings.flow_node_timeout_s)
        endpoints.name_taken = lambda name: name in flows
        pipeline = build_pipeline(keys=keys, endpoints=endpoints, split=TrafficSplit(), writer=writer, metrics=metrics,
                                  router=router, budget=budget, cache=cache, flows=flows, indexes=indexes)
        feedback = FeedbackService(router.responses, responses, endpoints, router, metrics, budget, cache=cache)
        leases = LeaseKeeper(LeaseStore(db, me, ttl_s=settings.lease_ttl_s))
        rollouts = RolloutController(endpoints, RolloutStore(db), db, writer, leases=leases)
        notices = open_notices(db, me, settings.redis_url)
        if notices is not None:  # tell the other gateways on this database about each change made here
            endpoints.published = functools.partial(notices.publish, "endpoint")
            keys.on_change = functools.partial(notices.publish, "keys")
            flows.published = functools.partial(notices.publish, "flow")
        events = EventLog(db)
        events.attach(endpoints.runtime)
        metrics.watch_deployments(endpoints)
        return cls(settings, db, catalog, keys, config, endpoints, writer, metrics, pipeline, admin_key, created,
                   rollouts=rollouts, router=router, feedback=feedback, budget=budget, indexes=indexes, flows=flows,
                   events=events, scaler=Scaler(endpoints), gateway_id=me, leases=leases, notices=notices)

    def index_embedder(self, endpoint: str) -> Callable[[list[str]], Awaitable[list[list[float]]]]:
        """Embeddings of texts for an index, through the gateway's own pipeline with the admin key: the
        endpoint's cache, budgets and usage records apply (one usage row per batch of texts)."""

        async def embed(texts: list[str]) -> list[list[float]]:
            call = Call("embedding", EmbeddingRequest(model=endpoint, input=texts), self.admin_key)
            await self.pipeline(call)  # raises ModelyardError
            assert call.body is not None
            return [row["embedding"] for row in sorted(call.body["data"], key=lambda d: d["index"])]

        return embed

    def ensure_default_endpoints(self) -> None:
        """Create `default` (Gemma 3 270M) and `embed` (all-MiniLM-L6-v2) unless they exist."""
        for name, model in DEFAULT_ENDPOINTS.items():
            if self.config.get_endpoint(name) is None:
                self.config.save_endpoint(EndpointSpec(name=name, traffic={model: 100}))
                self.config.save_deployment(DeploymentSpec(name=model, endpoint_name=name, model=model))

    async def start(self, *, wait: bool = False) -> None:
        configure_otel(self.settings.otlp_endpoint)  # flow traces as OpenTelemetry spans, when a collector is set
        await self.writer.start()
        self._key_sync = asyncio.create_task(self._sync_keys(), name="modelyard-key-sync")
        if self.router is not None:
            await self.router.responses.start()
        if self.leases is not None and hasattr(self.endpoints.runtime, "reports_events"):
            # Ray: every gateway on the cluster sees the same replica changes; the lease holder reports them
            leases = self.leases
            self.endpoints.runtime.reports_events = lambda: leases.held(RAY_EVENTS_LEASE)
            await leases.acquire(RAY_EVENTS_LEASE, lambda name: None)
        await self.endpoints.load(wait=wait)
        if self.scaler is not None:
            self.scaler.start()
        if self.flows is not None:
            await self.flows.load()
        for stage in self.pipeline.stages:
            if isinstance(stage, Cache):
                stage.warm()  # opens the endpoints' caches (and the embedding model) in the background
        if self.rollouts is not None:
            await self.rollouts.resume_all()  # a rollout the last shutdown interrupted goes on, or is reverted
        if self.batches is None:
            self.batches = open_batches(self.db, self.settings.home, self.endpoints, self.keys,
                                        budget=getattr(self, "budget", None), flows=self.flows, indexes=self.indexes,
                                        settings=self.settings)
        self.batches.leases = self.leases  # each job runs on the one gateway holding its lease
        await self.batches.start()  # batch jobs the last run left unfinished go on
        if self.finetune is None:
            self.finetune = FineTuneRunner(FineTuneStore(self.db), self.batches.files, self.catalog, self.settings,
                                           enabled=self.settings.finetune_enabled)
        self.finetune.leases = self.leases
        if self.notices is not None:
            self.finetune.published = functools.partial(self.notices.publish, "catalog")
        await self.finetune.start()  # a job the last run left running trains again from its last checkpoint
        if self.notices is not None:
            await self.notices.start(self._apply_notice)
        if self.leases is not None:
            self._take_over = asyncio.create_task(self._take_over_work(), name="modelyard-take-over")

    async def _apply_notice(self, notice: Notice) -> None:
        """Another gateway on this database committed a change: apply it here."""
        if notice.kind in ("endpoint", "resync"):
            await self.endpoints.sync(notice.name or None)
        if notice.kind in ("keys", "resync"):
            await asyncio.to_thread(self.keys.reload)
        if notice.kind in ("flow", "resync") and self.flows is not None:
            await self.flows.sync()
        if notice.kind in ("catalog", "resync"):  # a fine-tuned model published by another gateway
            new = await asyncio.to_thread(self.catalog.refresh)
            if new:
                log.info("catalog: %s added through another gateway", ", ".join(new))
        log.debug("applied change notice %s %s from %s", notice.kind, notice.name, notice.source)

    async def _take_over_work(self) -> None:
        """Every half lease: take over the rollouts and batch jobs whose gateway stopped renewing their leases
        (fine-tuning jobs are looked for by their own scheduler)."""
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.leases.store.ttl_s / 2)
            try:
                if self.rollouts is not None:
                    await self.rollouts.resume_all()
                if self.batches is not None:
                    await self.batches.claim_unowned()
                if hasattr(self.endpoints.runtime, "reports_events") and not self.leases.held(RAY_EVENTS_LEASE):
                    await self.leases.acquire(RAY_EVENTS_LEASE, lambda name: None)
            except Exception as exc:  # the database is away for a moment: look again next time
                log.warning("could not look for work to take over (%s: %s)", type(exc).__name__, exc)

    async def _sync_keys(self) -> None:
        """Re-read the keys now and then: a key revoked through another gateway (or the CLI) stops here too."""
        while True:
            await asyncio.sleep(self.settings.keys_reload_s)
            try:
                await asyncio.to_thread(self.keys.reload)
                if self.flows is not None:
                    await self.flows.sync()  # flows applied or deleted through another gateway
                await self.endpoints.sync()  # endpoints too, should a change notice have been lost
            except Exception as exc:  # the database is briefly unavailable: keep the keys and flows we have
                log.warning("could not reload the api keys and flows (%s: %s); trying again",
                            type(exc).__name__, exc)

    async def close(self) -> None:
        if self._key_sync is not None:
            self._key_sync.cancel()
        if self._take_over is not None:
            self._take_over.cancel()
        if self.notices is not None:
            await self.notices.close()
        if self.scaler is not None:
            await self.scaler.close()
        if self.finetune is not None:
            await self.finetune.close()  # stops the training process; the job resumes after a restart
        if self.batches is not None:
            await self.batches.close()
        if self.indexes is not None:
            await asyncio.to_thread(self.indexes.close)  # saves changed indexes' vectors  # finished lines are committed; the rest run after a restart
        if self.rollouts is not None:
            await self.rollouts.close()
        if self.flows is not None:
            await self.flows.close()  # their python worker processes
            await asyncio.to_thread(shutdown_otel)
        for stage in self.pipeline.stages:
            if isinstance(stage, (Mirror, Cache)):
                await stage.close()
        if self.router is not None:
            await self.router.close()
            await self.router.responses.close()
        # Every usage record is queued by now (requests, mirrors and background work are done): write them
        # before the instances are stopped, the slow part, so that a SIGKILL at the end of a grace period
        # cannot lose them.
        await self.writer.close()
        if self.leases is not None:
            await self.leases.close()  # the work stopped above: another gateway may take it over at once
        if self.budget is not None and self.budget.shared is not None:
            await self.budget.shared.close()
        await self.endpoints.close()
        if self.events is not None:
            await self.events.close()  # the deployments' stops, reported just now
        await asyncio.to_thread(ray_disconnect)  # a Ray this gateway started (batch jobs on Ray Data, the runtime)
        self.db.close()
