"""The gateway's running parts, built once at start-up and shared by the routes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

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
from ..runtime.local import LocalRuntime
from ..serving.endpoints import Endpoints, TrafficSplit
from ..serving.spec import DeploymentSpec, EndpointSpec
from ..settings import Settings
from ..serving.config import ConfigStore
from ..store.db import Database
from ..store.keys import KeyStore
from ..store.usage import UsageWriter
from ..serving.rollout import RolloutController
from ..store.rollouts import RolloutStore
from ..wire import EmbeddingRequest
from ..telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)

#: The endpoints `modelyard up` creates on a fresh machine.
DEFAULT_ENDPOINTS = {"default": "gemma-3-270m", "embed": "all-minilm-l6-v2"}


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
    _key_sync: asyncio.Task[None] | None = None

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
        endpoints = Endpoints(config, catalog, LocalRuntime(settings.logs_dir), keys)
        writer = UsageWriter(db, flush_interval=settings.usage_flush_s)
        metrics = GatewayMetrics()
        metrics.watch_usage_writer(writer)
        budget = budgets.BudgetTracker()
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
        rollouts = RolloutController(endpoints, RolloutStore(db), db, writer)
        return cls(settings, db, catalog, keys, config, endpoints, writer, metrics, pipeline, admin_key, created,
                   rollouts=rollouts, router=router, feedback=feedback, budget=budget, indexes=indexes, flows=flows)

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
        await self.endpoints.load(wait=wait)
        if self.flows is not None:
            await self.flows.load()
        for stage in self.pipeline.stages:
            if isinstance(stage, Cache):
                stage.warm()  # opens the endpoints' caches (and the embedding model) in the background
        if self.rollouts is not None:
            await self.rollouts.resume_all()  # a rollout the last shutdown interrupted goes on, or is reverted
        if self.batches is None:
            self.batches = open_batches(self.db, self.settings.home, self.endpoints, self.keys,
                                        budget=getattr(self, "budget", None), flows=self.flows, indexes=self.indexes)
        await self.batches.start()  # batch jobs the last run left unfinished go on
        if self.finetune is None:
            self.finetune = FineTuneRunner(FineTuneStore(self.db), self.batches.files, self.catalog, self.settings,
                                           enabled=self.settings.finetune_enabled)
        await self.finetune.start()  # a job the last run left running trains again from its last checkpoint

    async def _sync_keys(self) -> None:
        """Re-read the keys now and then: a key revoked through another gateway (or the CLI) stops here too."""
        while True:
            await asyncio.sleep(self.settings.keys_reload_s)
            try:
                await asyncio.to_thread(self.keys.reload)
                if self.flows is not None:
                    await self.flows.sync()  # flows applied or deleted through another gateway
            except Exception as exc:  # the database is briefly unavailable: keep the keys and flows we have
                log.warning("could not reload the api keys and flows (%s: %s); trying again",
                            type(exc).__name__, exc)

    async def close(self) -> None:
        if self._key_sync is not None:
            self._key_sync.cancel()
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
        await self.endpoints.close()
        self.db.close()
