"""Answer recall requests on one engine: cached or computed user vectors, then search.

Cache key: ``{prefix}:{version}:{user_id or "-"}:{inputs hash}`` where the hash covers what
the vector was made from (user id, features, history); the version keeps vectors of two
models apart. Value: the vector's float32 bytes and an 8-byte blake2b tag of the cache key
and those bytes (``seal``); a value whose tag does not match, or that is not a finite unit
vector, is recomputed (``recall_cache_invalid``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.cache import EmbeddingCache
from service.engine import ItemFilter, RecallEngine
from service.errors import ServiceError
from service.metrics import Metrics
from service.monitor import AnnMonitor
from service.schemas import RecallRequest
from service.settings import CacheSettings
from service.users import UserQuery

UNIT_TOLERANCE = 1e-3  # |norm - 1| of a cached vector that is used as it is
TAG_BYTES = 8  # blake2b tag after the vector's bytes


def cache_key(prefix: str, version: str, request: RecallRequest) -> str:
    inputs = {"user_id": request.user_id, "features": request.features, "history": request.history}
    digest = hashlib.blake2b(orjson.dumps(inputs, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return f"{prefix}:{version}:{request.user_id or '-'}:{digest.hexdigest()}"


def _tag(key: str, data: bytes) -> bytes:
    # the whole key goes into the digest (blake2b's own key takes 64 bytes at most, and cache
    # keys of one version and long user ids share more than that)
    return hashlib.blake2b(key.encode() + b"\0" + data, digest_size=TAG_BYTES).digest()


def seal(key: str, vector: np.ndarray) -> bytes:
    """The cached value of ``vector`` under ``key``: its float32 bytes, then a tag of them
    keyed by the cache key, so a value written by hand or copied from another key is refused."""
    data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    return data + _tag(key, data)


def unseal(key: str, blob: bytes, dim: int) -> np.ndarray | None:
    """The vector ``seal(key, vector)`` wrote, or None when ``blob`` is not that."""
    if len(blob) != dim * 4 + TAG_BYTES:
        return None
    data, tag = blob[: dim * 4], blob[dim * 4 :]
    if _tag(key, data) != tag:
        return None
    return np.frombuffer(data, dtype=np.float32)


@dataclass
class Prepared:
    """One request resolved against an engine, ready to be answered in a batch."""

    request: RecallRequest
    query: UserQuery
    item_filter: ItemFilter | None
    excluded: np.ndarray  # [n] int64 item rows left out of the answer
    started: float  # perf_counter when the request arrived (for took_ms)


class Recaller:
    """Per-app glue between the engine, the user-vector cache and the metrics."""

    def __init__(
        self,
        cache: EmbeddingCache,
        metrics: Metrics,
        settings: CacheSettings,
        monitor: AnnMonitor | None = None,
    ):
        self.cache, self.metrics, self.settings = cache, metrics, settings
        self.monitor = monitor  # online ANN recall (service.monitor)

    def recall(
        self, engine: RecallEngine, requests: Sequence[RecallRequest], batch: bool = False
    ) -> list[dict[str, Any]]:
        """One response body per request, in order. ``batch`` prefixes error paths."""
        started = time.perf_counter()
        return self.answer(engine, self.prepare_all(engine, requests, started, batch))

    def prepare_all(
        self,
        engine: RecallEngine,
        requests: Sequence[RecallRequest],
        started: float,
        batch: bool = False,
        offset: int = 0,
    ) -> list[Prepared]:
        """Resolve every request; a ServiceError names the field (``body.requests.3.``;
        ``offset``: the position of ``requests[0]`` in the batch)."""
        prepared = []
        for position, request in enumerate(requests, start=offset):
            try:
                query = engine.resolve(request)
                item_filter = engine.item_filter(request.filter)
            except ServiceError as exc:
                where = f"body.requests.{position}." if batch else "body."
                raise ServiceError(exc.code, where + exc.message) from exc
            excluded = engine.excluded(request, query)
            prepared.append(Prepared(request, query, item_filter, excluded, started))
        return prepared

    def answer(self, engine: RecallEngine, prepared: Sequence[Prepared]) -> list[dict[str, Any]]:
        """Response bodies for requests prepared on ``engine``: one cache read, one tower
        forward for the misses and one index search for all of them."""
        usable = [p for p in prepared if p.query.usable]
        vectors, sources = self._vectors(
            engine, [p.request for p in usable], [p.query for p in usable]
        )
        if self.monitor is not None:
            self.monitor.offer(engine, vectors)  # a sample, measured off the request path
        searched = engine.search(
            vectors,
            [p.request.k for p in usable],
            [p.excluded for p in usable],
            [p.item_filter for p in usable],
        )
        found = {id(p): (c, s) for p, c, s in zip(usable, searched, sources, strict=True)}
        now = time.perf_counter()
        bodies = []
        for p in prepared:
            got, source = found.get(id(p), (None, "fallback"))
            if got is None:  # nothing to build a vector from: the most popular items
                got = engine.popular(p.request.k, p.excluded, p.item_filter)
            self.metrics.user_source.labels(source).inc()
            body: dict[str, Any] = {
                "snapshot": engine.version,
                "items": engine.items(got),
                "user": {"known": p.query.known, "source": source},
                "took_ms": round((now - p.started) * 1000, 3),
            }
            if p.request.explain:
                body["explain"] = self._explain(p.query, p.excluded, p.item_filter)
            bodies.append(body)
        return bodies

    def _vectors(
        self, engine: RecallEngine, requests: list[RecallRequest], queries: list[UserQuery]
    ) -> tuple[np.ndarray, list[str]]:
        """``[len(queries), dim]`` vectors from the cache where present, else the tower."""
        dim = int(engine.index.d)
        vectors = np.zeros((len(queries), dim), dtype=np.float32)
        if not queries:
            return vectors, []
        keys = [cache_key(self.settings.key_prefix, engine.version, r) for r in requests]
        cached = self.cache.get_many(keys)
        sources, missing = [], []
        sealed = [False] * len(cached)
        for i, blob in enumerate(cached):
            vector = unseal(keys[i], blob, dim) if blob is not None else None
            if vector is not None:
                vectors[i], sealed[i] = vector, True
        # A cached value is used only when its tag matches its key and it is a finite unit
        # vector: a zero, NaN, huge, negated or moved value (another writer, a bad restore)
        # is recomputed and replaced.
        # squared norms summed in float64: 1e30 squared does not overflow, NaN stays NaN, and
        # no np.errstate is needed (its set-up costs more than the sum for a few vectors)
        squares = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        valid = np.abs(squares - 1.0) <= 2 * UNIT_TOLERANCE  # NaN compares False
        for i, blob in enumerate(cached):
            if sealed[i] and valid[i]:
                sources.append("cache")
                continue
            if blob is not None:
                self.metrics.cache_invalid.inc()
            missing.append(i)
            sources.append("computed")
        self.metrics.cache_hits.inc(len(queries) - len(missing))
        self.metrics.cache_misses.inc(len(missing))
        if missing:
            computed = engine.embed([queries[i] for i in missing])
            vectors[missing] = computed
            fresh = {keys[i]: seal(keys[i], computed[j]) for j, i in enumerate(missing)}
            self.cache.set_many(fresh, self.settings.ttl_s)
        return vectors, sources

    @staticmethod
    def _explain(
        query: UserQuery, excluded: np.ndarray, item_filter: ItemFilter | None
    ) -> dict[str, Any]:
        return {
            **query.explain,
            "excluded_items": len(excluded),
            "filter_matches": item_filter.matches if item_filter is not None else None,
        }
