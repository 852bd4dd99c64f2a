"""The response cache: exact and semantic, per endpoint, local or shared through Redis.

- `spec` — the endpoint's ``cache`` settings (`CacheSpec`);
- `keys` — what a request's keys are and whether it may be cached;
- `index` — the `Index` seam and `VectorIndex` (NumPy for small partitions, HNSW for large);
- `local` / `redis_store` — where entries live (`LocalStore`, `RedisStore`);
- `service` — `ResponseCache`, every endpoint's store and the never-fail rule;
- `embed` — the in-process all-MiniLM-L6-v2 embedder;
- `evaluate` — precision and recall of semantic look-ups on paraphrase pairs.

The gateway stage that uses them is `modelyard.gateway.cache`. Only the spec
is imported here: NumPy, usearch, Redis and torch load when a cache is used.
"""

from .spec import DEFAULT_SIMILARITY, CacheSpec, parse_duration

__all__ = ["CacheSpec", "DEFAULT_SIMILARITY", "parse_duration"]
