"""RecallEngine: one loaded snapshot, ready to embed users, search, filter and over-fetch.

The engine owns what an answer leaves out: exclusions (``excluded``), filters
(``item_filter``) and their application in ``search``.

An engine never changes after construction; a reload builds a new one and swaps it in
(``service.holder``), so a request that took an engine finishes on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index_builder.snapshot import LoadedSnapshot
from service.errors import Code, ServiceError
from service.schemas import RecallRequest
from service.users import UserEncoder, UserQuery

Filter = tuple[tuple[str, tuple[str, ...]], ...]  # hashable form of a request's filter
# A filter keeping at most this many items is scored exactly over those items: an ANN
# over-fetch for a selective filter would have to search most of the catalogue.
EXACT_FILTER_MAX = 50_000
FILTER_CACHE = 256  # item filters kept per engine


@dataclass(frozen=True)
class ItemFilter:
    mask: np.ndarray  # [I] bool, read-only: items the filter keeps
    rows: np.ndarray  # [matches] int64, the same items as rows

    @property
    def matches(self) -> int:
        return len(self.rows)


@dataclass
class Candidates:
    rows: np.ndarray  # [n <= k] int64 item rows, best first
    scores: np.ndarray  # [n] float32


class RecallEngine:
    """Search and filtering over one snapshot's index; users via ``UserEncoder``."""

    def __init__(self, snapshot: LoadedSnapshot, exact_filter_max: int = EXACT_FILTER_MAX):
        self.snapshot = snapshot
        self.exact_filter_max = exact_filter_max
        self.version = snapshot.version
        self.index = snapshot.index
        self.users = UserEncoder(snapshot)
        self.n_items = int(self.index.ntotal)
        popularity = snapshot.popularity
        self.popular_rows = np.argsort(-popularity, kind="stable").astype(np.int64)
        self.top_popularity = max(int(popularity.max()) if len(popularity) else 0, 1)
        # A plain dict, not functools.lru_cache over a bound method: that would make a cycle,
        # and a replaced engine must be freed by reference counting alone (app.py freezes
        # the start-up objects out of the cycle collector's reach).
        self._filters: dict[Filter, ItemFilter] = {}

    def resolve(self, request: RecallRequest) -> UserQuery:
        return self.users.resolve(request)

    def embed(self, queries: list[UserQuery]) -> np.ndarray:
        """Unit user vectors ``[len(queries), dim]`` float32."""
        return self.users.embed(queries)

    def excluded(self, request: RecallRequest, query: UserQuery) -> np.ndarray:
        """Sorted unique item rows left out of the answer: the user's seen items (unless
        ``exclude_seen`` is false) and the request's ``exclude_item_ids`` in the catalogue."""
        rows = [query.seen] if request.exclude_seen else []
        if request.exclude_item_ids:
            rows.append(self.item_rows(request.exclude_item_ids))
        return np.unique(np.concatenate(rows)) if rows else np.empty(0, dtype=np.int64)

    def item_rows(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of the ``ids`` that are in the catalogue, in their order; unknown ids dropped.

        One dict probe per id (~1 us at a million items: each probe misses the CPU caches; a
        searchsorted over sorted ids measured slower still)."""
        found = map(self.snapshot.item_row.get, ids)
        return np.array([r for r in found if r is not None], dtype=np.int64)

    def item_filter(self, spec: dict[str, list[str]] | None) -> ItemFilter | None:
        """Items having, for every named attribute, any of the given values (cached)."""
        if not spec:
            return None
        key = tuple(sorted((k, tuple(sorted(set(v)))) for k, v in spec.items()))
        found = self._filters.get(key)
        if found is None:
            found = self._build_filter(key)
            if len(self._filters) >= FILTER_CACHE:
                self._filters.pop(next(iter(self._filters)))  # the oldest
            self._filters[key] = found
        return found

    def _build_filter(self, spec: Filter) -> ItemFilter:
        mask = np.ones(self.n_items, dtype=bool)
        attributes = self.snapshot.item_attributes
        for name, values in spec:
            column = attributes.get(name)
            if column is None:
                raise ServiceError(
                    Code.UNKNOWN_FILTER,
                    f"filter.{name}: not a filterable attribute; use one of {sorted(attributes)}",
                )
            vocab = self.snapshot.artifact.item_spec.vocabs.get(name, {})
            tokens = [vocab[value] for value in values if value in vocab]
            if not tokens:
                raise ServiceError(
                    Code.UNKNOWN_FILTER,
                    f"filter.{name}: no item has any of {list(values)}; values are "
                    "case-sensitive, e.g. 'Comedy'",
                )
            hit = np.isin(column, tokens)
            mask &= hit.reshape(len(hit), -1).any(axis=1)
        mask.setflags(write=False)
        rows = np.flatnonzero(mask).astype(np.int64)
        rows.setflags(write=False)
        return ItemFilter(mask, rows)

    def search(
        self,
        vectors: np.ndarray,
        ks: list[int],
        excluded: list[np.ndarray],
        filters: list[ItemFilter | None],
    ) -> list[Candidates]:
        """Top ``ks[i]`` items for each of ``vectors`` ``[B, dim]``, without ``excluded[i]``
        rows and keeping only ``filters[i]``.

        Over-fetches (k + excluded, scaled up by the filter's selectivity) and doubles the
        fetch until k items survive, the whole catalogue has been searched, or the index has no
        more to return at its search parameters (an IVF answers at most what its ``nprobe``
        lists hold: a k past that gets fewer items; raise nprobe at build time for such k).
        A selective filter (at most ``exact_filter_max`` items) is scored exactly over its
        items instead.
        """
        excluded = [np.sort(e) for e in excluded]  # _keep looks rows up by binary search
        out: list[Candidates | None] = [None] * len(ks)
        pending = []
        for i, item_filter in enumerate(filters):
            if item_filter is not None and item_filter.matches <= self.exact_filter_max:
                out[i] = self._exact(vectors[i], ks[i], excluded[i], item_filter)
            else:
                pending.append(i)
        fetch = [
            self._first_fetch(k, len(e), f) for k, e, f in zip(ks, excluded, filters, strict=True)
        ]
        while pending:
            # One search per power-of-two fetch size: a heavy request (k=1000 and a long
            # exclusion list) must not make the light requests of its batch fetch as much.
            groups: dict[int, list[int]] = {}
            for i in pending:
                groups.setdefault(self._bucket(fetch[i]), []).append(i)
            still = []
            for size, group in groups.items():
                scores, rows = self.index.search(np.ascontiguousarray(vectors[group]), size)
                for j, i in enumerate(group):
                    keep = self._keep(rows[j], excluded[i], filters[i])
                    # -1 labels: the index has nothing more to give at its search parameters
                    # (an IVF's probed lists ran out), so a bigger fetch would find no more
                    exhausted = rows[j][-1] < 0
                    if int(keep.sum()) >= ks[i] or size >= self.n_items or exhausted:
                        out[i] = Candidates(rows[j][keep][: ks[i]], scores[j][keep][: ks[i]])
                    else:
                        fetch[i] = min(self.n_items, size * 2)
                        still.append(i)
            pending = still
        return [c if c is not None else _empty() for c in out]

    def _bucket(self, fetch: int) -> int:
        """``fetch`` rounded up to a power of two (at least 128), at most the catalogue."""
        return max(1, min(self.n_items, 1 << max(7, (fetch - 1).bit_length())))

    def _exact(
        self, vector: np.ndarray, k: int, excluded: np.ndarray, item_filter: ItemFilter
    ) -> Candidates:
        rows = item_filter.rows
        if len(excluded):
            rows = rows[~_member(rows, excluded)]
        if not len(rows):
            return _empty()
        scores = self.index.reconstruct_batch(rows) @ vector
        best = np.argsort(-scores, kind="stable")[:k]
        return Candidates(rows[best], scores[best].astype(np.float32))

    def _first_fetch(self, k: int, n_excluded: int, item_filter: ItemFilter | None) -> int:
        if self.n_items == 0:
            return 1
        want = k + n_excluded
        if item_filter is not None:
            want = int(want * self.n_items / max(item_filter.matches, 1))
        return max(1, min(self.n_items, want))

    @staticmethod
    def _keep(rows: np.ndarray, excluded: np.ndarray, item_filter: ItemFilter | None) -> np.ndarray:
        """Rows to keep: found (>= 0), not in the sorted ``excluded``, kept by the filter."""
        keep = rows >= 0
        if len(excluded):
            keep &= ~_member(rows, excluded)
        if item_filter is not None:
            keep &= item_filter.mask[np.where(keep, rows, 0)]
        return keep

    def popular(self, k: int, excluded: np.ndarray, item_filter: ItemFilter | None) -> Candidates:
        """The most popular items (score: popularity / top popularity), for unusable users."""
        rows = self.popular_rows
        if item_filter is None:
            rows = rows[: k + len(excluded)]  # enough survive whatever is excluded
        rows = rows[self._keep(rows, np.sort(excluded), item_filter)][:k]
        scores = self.snapshot.popularity[rows] / self.top_popularity
        return Candidates(rows, scores.astype(np.float32))

    def item_row(self, item_id: str) -> int:
        """The row of ``item_id``; ServiceError ``not_found`` (404) when it is not indexed."""
        row = self.snapshot.item_row.get(item_id)
        if row is None:
            raise ServiceError(
                Code.NOT_FOUND, f"item {item_id!r} is not in snapshot {self.version}"
            )
        return row

    def similar(self, item_id: str, k: int) -> Candidates:
        """Items nearest to ``item_id``'s vector, the item itself left out."""
        return self.similar_rows(np.array([self.item_row(item_id)], dtype=np.int64), [k])[0]

    def similar_rows(self, rows: np.ndarray, ks: list[int]) -> list[Candidates]:
        """For each item row ``[n]``, the ``ks[i]`` nearest other items (one search)."""
        vectors = np.ascontiguousarray(self.index.reconstruct_batch(rows), dtype=np.float32)
        return self.search(
            vectors, ks, [rows[i : i + 1] for i in range(len(rows))], [None] * len(ks)
        )

    def items(self, found: Candidates) -> list[dict[str, object]]:
        """``[{item_id, score}]`` best first, for the response."""
        ids = self.snapshot.item_ids[found.rows].tolist()
        scores = found.scores.astype(np.float64).round(6).tolist()
        return [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]

    def warm_up(self) -> None:
        """One user-tower forward and one search, so the first request pays no lazy setup."""
        vectors = self.embed([self.resolve(RecallRequest())])
        if self.n_items:
            self.index.search(vectors, min(10, self.n_items))


def _member(rows: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """``np.isin(rows, sorted_values)`` by binary search: for the few hundred rows of one
    answer this is ~10x faster than np.isin, whose set-up dominates at that size."""
    at = np.searchsorted(sorted_values, rows)
    at[at == len(sorted_values)] = 0
    return sorted_values[at] == rows


def _empty() -> Candidates:
    return Candidates(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
