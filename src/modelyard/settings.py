"""Where modelyard keeps its state and which defaults it runs with.

Everything is read from the environment once, when `Settings.from_env()` is
called; tests point `MODELYARD_HOME` at a temporary folder.

| variable | default | meaning |
|---|---|---|
| MODELYARD_HOME | ~/.modelyard | database, model files, admin key |
| DATABASE_URL | sqlite under MODELYARD_HOME | SQLAlchemy URL (postgresql+psycopg://... for Postgres) |
| MODELYARD_HOST / MODELYARD_PORT | 127.0.0.1 / 8400 | where `modelyard up` listens |
| MODELYARD_URL | http://127.0.0.1:8400 | where the CLI finds the server |
| MODELYARD_ADMIN_KEY | read from MODELYARD_HOME/admin.key | the key the CLI sends |
| MODELYARD_MAX_BODY_BYTES | 8 MiB | larger request bodies get 413 |
| MODELYARD_USAGE_FLUSH_S | 0.5 | how often queued usage records are written |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8400


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = 8 * 1024 * 1024
    usage_flush_s: float = 0.5

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("MODELYARD_HOME") or Path.home() / ".modelyard").expanduser()
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{home / 'modelyard.db'}"
        return cls(
            home=home,
            database_url=database_url,
            host=os.environ.get("MODELYARD_HOST", "127.0.0.1"),
            port=int(os.environ.get("MODELYARD_PORT", DEFAULT_PORT)),
            max_body_bytes=int(os.environ.get("MODELYARD_MAX_BODY_BYTES", 8 * 1024 * 1024)),
            usage_flush_s=float(os.environ.get("MODELYARD_USAGE_FLUSH_S", 0.5)),
        )

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
        for path in (self.home, self.models_dir, self.catalog_dir, self.logs_dir):
            path.mkdir(parents=True, exist_ok=True)


def server_url() -> str:
    """The URL the CLI talks to."""
    return os.environ.get("MODELYARD_URL", f"http://127.0.0.1:{os.environ.get('MODELYARD_PORT', DEFAULT_PORT)}")
