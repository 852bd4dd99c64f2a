"""Batch jobs: the OpenAI Batch API with Azure-ML batch settings, durable, on idle capacity.

- `FileStore` (files.py) — uploaded inputs and written outputs under ``MODELYARD_HOME/files``, bounded per
  upload and, by `KeyQuota`, per endpoint key.
- `parse_input` (validate.py) — the checks an input file passes before anything runs.
- `BatchCreate`, `BatchConfig`, `describe_job` (jobs.py) — settings, the create request, the Batch object.
- `BatchRunner` (runner.py) — runs jobs inside the gateway: mini-batches, retries, error threshold,
  cancel, resume after a crash, lower priority than live traffic; sweeps expired files.
- `RayDataEngine` (ray_data.py) — runs a job created with ``engine: "ray-data"`` on a Ray cluster, with
  the same bookkeeping.

The gateway builds them with `open_batches()` and starts the runner with the server.
"""

from __future__ import annotations

from typing import Any

from ..store.batches import BatchStore
from .files import FileStore, KeyQuota, describe_file
from .jobs import BatchConfig, BatchCreate, describe_job
from .runner import BatchRunner, visible
from .validate import BATCH_URLS, parse_input


def open_batches(db: Any, home: Any, endpoints: Any, keys: Any, *, budget: Any = None,
                 config: BatchConfig | None = None, flows: Any = None, indexes: Any = None,
                 settings: Any = None) -> BatchRunner:
    """The batch runner of a gateway whose state lives in ``home`` (files under ``home/files``); ``settings``
    (the gateway's) say where Ray is for jobs on engine ray-data."""
    config = config or BatchConfig.from_env()
    store = BatchStore(db)
    files = FileStore(store, home / "files", max_bytes=config.max_file_bytes,
                      quota=KeyQuota(bytes=config.key_quota_bytes, files=config.key_quota_files))
    return BatchRunner(store, files, endpoints, keys, config=config, budget=budget, flows=flows, indexes=indexes,
                       settings=settings)


__all__ = [
    "BATCH_URLS",
    "BatchConfig",
    "BatchCreate",
    "BatchRunner",
    "FileStore",
    "KeyQuota",
    "describe_file",
    "describe_job",
    "open_batches",
    "parse_input",
    "visible",
]
