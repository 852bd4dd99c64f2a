"""Pulls that run in the background (the management API starts one per card): their progress and outcome."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelyardError
from .card import ModelCard
from .sources import pull

log = logging.getLogger(__name__)


@dataclass
class PullJob:
    """One pull of a card's weights, running or finished."""

    model: str
    state: str = "running"  # running | succeeded | failed
    files: dict[str, dict[str, int | None]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, name: str, done: int, total: int | None) -> None:
        with self._lock:
            self.files[name] = {"done": done, "total": total}

    def describe(self) -> dict[str, Any]:
        with self._lock:
            files = {k: dict(v) for k, v in self.files.items()}
        done = sum(f["done"] or 0 for f in files.values())
        totals = [f["total"] for f in files.values()]
        total = sum(totals) if totals and all(t for t in totals) else None
        return {"object": "catalog.pull", "model": self.model, "state": self.state, "files": files,
                "bytes_done": done, "bytes_total": total, "error": self.error,
                "started_at": int(self.started_at), "finished_at": int(self.finished_at) if self.finished_at else None}


async def run_pull(job: PullJob, card: ModelCard, settings: Any) -> None:
    """Pull `card`'s weights in a worker thread, recording progress and the outcome (an OpenAI error object) on `job`."""
    try:
        await asyncio.to_thread(pull, card, settings, job.progress)
        job.state = "succeeded"
        log.info("pulled %s", card.id)
    except ModelyardError as err:
        job.state, job.error = "failed", err.body()["error"]
        log.warning("pull of %s failed: %s", card.id, err.message)
    except Exception as exc:  # a bug or an OS error: still a readable answer
        log.exception("pull of %s failed", card.id)
        job.state = "failed"
        job.error = ModelyardError(f"Pulling '{card.id}' failed: {type(exc).__name__}: {exc}", status=500,
                                   code="pull_failed").body()["error"]
    finally:
        job.finished_at = time.time()
