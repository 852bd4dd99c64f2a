"""Where modelyard keeps its state and which defaults it runs with.

Everything is read from the environment once, by `Settings.from_env()` (or
``Settings()``; pydantic-settings reads the variables below, an empty one
counts as unset), and the object is passed down from there; tests point
`MODELYARD_HOME` at a temporary folder. A bad value is an error that names
the variable.

| variable | default | meaning |
|---|---|---|
| MODELYARD_HOME | ~/.modelyard | database, model files, admin key |
| DATABASE_URL | sqlite under MODELYARD_HOME | SQLAlchemy URL (postgresql+psycopg://... for Postgres) |
| MODELYARD_HOST / MODELYARD_PORT | 127.0.0.1 / 8400 | where `modelyard up` listens |
| MODELYARD_URL | http://127.0.0.1:8400 | where the CLI finds the server |
| MODELYARD_ADMIN_KEY | read from MODELYARD_HOME/admin.key | the key the CLI sends |
| MODELYARD_MAX_BODY_BYTES | 8 MiB | larger request bodies get 413 |
| MODELYARD_USAGE_FLUSH_S | 0.5 | how often queued usage records are written |
| MODELYARD_EMBED_THREADS | 1 | torch threads for the gateway's own embeddings (cache, router) |
| MODELYARD_RUNTIME | local | where instances run: local processes, or Ray Serve replicas (`ray`) |
| RAY_ADDRESS | unset | the Ray cluster the ray runtime joins (unset: a Ray started on this machine) |
| MODELYARD_REDIS_URL | unset | the Redis several gateways share budgets and change notices through |
| MODELYARD_LEASE_TTL_S | 15 | after a gateway dies, another on the same database takes over its rollouts and jobs within this |
| MODELYARD_FINETUNE_ENABLED | true | whether this gateway runs fine-tuning jobs (false: it stores them, another runs them) |
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8400


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_", env_ignore_empty=True, frozen=True,
                                      populate_by_name=True, extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".modelyard")
    #: default: ``sqlite:///HOME/modelyard.db``
    database_url: str = Field(default="", validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    usage_flush_s: float = Field(default=0.5, gt=0)
    #: how often each gateway re-reads the keys from the database, so a key revoked through another
    #: gateway on the same database (or the CLI) stops working here within this time
    keys_reload_s: float = Field(default=5.0, gt=0)
    #: serve /metrics without the admin key (it shows requests and cost per endpoint)
    metrics_public: bool = False
    #: torch threads for embeddings inside the gateway. It shares the cores with its instances: with two
    #: threads on a busy 2-core machine one short sentence took 100-500 ms instead of ~10-25 ms (the threads
    #: spin waiting for each other); on an idle machine two embed a 400-character prompt in ~14 ms, not ~23.
    embed_threads: int = Field(default=1, ge=1)
    #: how long one flow node may take, retries included (a 504 naming the node after it)
    flow_node_timeout_s: float = Field(default=60.0, gt=0)
    #: run fine-tuning jobs in this gateway (training takes the cores and GB of memory; a gateway that serves only
    #: live traffic turns it off and still accepts jobs for one that runs them, on the same database and home)
    finetune_enabled: bool = True
    #: where instances run: ``local`` (processes on this machine) or ``ray`` (Ray Serve replicas in the Ray
    #: cluster at RAY_ADDRESS, or a Ray started for this gateway when it is unset)
    runtime: Literal["local", "ray"] = "local"
    #: the Ray cluster to join (Ray's own variable); unset: start one on this machine
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("RAY_ADDRESS", "ray_address"))
    #: the Redis several gateways share budgets and change notices through (unset: each gateway alone,
    #: or the database's own notices where it is PostgreSQL)
    redis_url: str | None = None
    #: how long a gateway owns a rollout, batch job or fine-tuning job without renewing (it renews every third
    #: of it): after a gateway dies, another on the same database takes its work over within this time
    lease_ttl_s: float = Field(default=15.0, gt=0)
    #: the OTLP collector flow traces go to, as OpenTelemetry spans (the OTel SDK's own variable; the
    #: exporter reads it and OTEL_EXPORTER_OTLP_HEADERS itself). Unset: no export.
    otlp_endpoint: str | None = Field(default=None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otlp_endpoint"))

    @model_validator(mode="after")
    def _defaults_under_home(self) -> "Settings":
        object.__setattr__(self, "home", self.home.expanduser())
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'modelyard.db'}")
        return self

    @classmethod
    def from_env(cls) -> "Settings":
        """The settings from the environment (see the module docstring)."""
        return cls()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def catalog_dir(self) -> Path:
        """User catalog files: every *.yaml here adds or overrides cards."""
        return self.home / "catalog"

    @property
    def admin_key_file(self) -> Path:
        return self.home / "admin.key"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def ensure_home(self) -> None:
        """Create the home and its folders, readable by this user only: it holds the admin key, the database,
        uploaded files and logs with prompts in them. From here on this process creates files as 0600 and
        folders as 0700 (umask 077), and so do the instances it starts."""
        os.umask(0o077)
        for path in (self.home, self.models_dir, self.catalog_dir, self.logs_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.home.stat().st_uid == os.getuid():
            self.home.chmod(0o700)  # a home made before (or by another tool) is closed too


def server_url() -> str:
    """The URL the CLI talks to."""
    return os.environ.get("MODELYARD_URL", f"http://127.0.0.1:{os.environ.get('MODELYARD_PORT', DEFAULT_PORT)}")
