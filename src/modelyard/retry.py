"""One retry policy: how long to wait before trying again, and what an upstream asked for.

Every loop that tries again uses it: a hosted API call (`backends.openai_compat`),
a batch line, a batch commit, an instance the runtime restarts. Where the
whole loop is "call, and on these errors wait and call again", tenacity runs
it (`store.db`'s PRAGMAs, the batch commit); where the loop has more to do
between tries (streams, restarts), it asks `Backoff.delay` for the wait.

    >>> Backoff(first_s=1, max_s=30, jitter=0).delay(3)
    8.0
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backoff:
    """Waits that double from ``first_s`` up to ``max_s``, each spread by ±``jitter`` of itself so that
    clients that failed together do not try again together."""

    first_s: float
    max_s: float
    jitter: float = 0.25

    def delay(self, attempt: int) -> float:
        """The wait before try ``attempt + 1`` (``attempt`` 0: the first retry)."""
        base = min(self.first_s * 2 ** max(attempt, 0), self.max_s)
        return base * (1 - self.jitter + 2 * self.jitter * random.random()) if self.jitter else base


def retry_after_s(headers: Mapping[str, Any] | None, *, cap_s: float | None = None) -> float | None:
    """The wait an upstream asked for: ``retry-after-ms`` (OpenAI's), else ``retry-after`` in seconds;
    None when it asked for none (or sent an HTTP date). Capped at ``cap_s``."""
    if not headers:
        return None
    wait: float | None = None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                wait = max(float(value) * scale, 0.0)
                break
            except (TypeError, ValueError):
                continue
    if wait is not None and cap_s is not None:
        wait = min(wait, cap_s)
    return wait
