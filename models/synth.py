"""Seeded synthetic dataset in RecBole atomic format, with the same columns as ml-100k.

Every user and item belongs to one of ``clusters`` latent clusters (cluster sizes follow a
power law); half the users also mix in a second cluster. An interaction picks a cluster
(90%: the user's own, 10%: any cluster by size), then an item of that cluster by a Zipf law
over a random within-cluster popularity order. Repeated (user, item) pairs are redrawn, three
times in the same cluster, then three times in any cluster. User occupation, age, gender and
zip code, and item release year and genres (``class``), are correlated with the cluster.
Timestamps strictly increase per user. Output is generated and written in chunks of about
``CHUNK_ROWS`` lines, so memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1_000_000
OCCUPATIONS = (  # noqa: SIM905 (ml-100k's vocabularies)
    "administrator artist doctor educator engineer entertainment executive healthcare "
    "homemaker lawyer librarian marketing none other programmer retired salesman scientist "
    "student technician writer"
).split()
GENRES = (  # noqa: SIM905
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
HEADERS = {
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
}
_EXPLORE = 0.1
_T_START, _T_END = 874_724_710, 893_286_638  # ml-100k's time range


def write_synthetic(
    out_dir: Path,
    users: int,
    items: int,
    interactions: int,
    seed: int = 0,
    clusters: int = 32,
    progress: bool = True,
) -> Path:
    """Write ``{name}.user/.item/.inter`` (name = ``out_dir.name``) and return ``out_dir``.

    User ids are "1".."users", item ids "1".."items"; the ``.inter`` file has exactly
    ``interactions`` lines (every user has at least one when ``interactions >= users``).
    """
    if users < 1 or items < 1 or interactions < 0 or clusters < 1:
        raise ValueError("need users >= 1, items >= 1, interactions >= 0 and clusters >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    world = _Clusters.sample(rng, users, items, min(clusters, items))
    activity = 1.0 / (rng.permutation(users) + 1.0) ** 0.5
    floor = 1 if interactions >= users else 0
    counts = rng.multinomial(interactions - floor * users, activity / activity.sum()) + floor
    user_edges = _chunk_edges(np.cumsum(counts))
    parts = [
        ("user", _user_chunks(rng, world.user_cluster[0], len(world.weights))),
        ("item", _item_chunks(rng, world.item_cluster, len(world.weights))),
        ("inter", _inter_chunks(rng, world, counts, user_edges)),
    ]
    total = math.ceil(users / CHUNK_ROWS) + math.ceil(items / CHUNK_ROWS) + len(user_edges) - 1
    with tqdm(total=total, desc=f"synth {out_dir.name}", unit="chunk", disable=not progress) as bar:
        for suffix, chunks in parts:
            _write(out_dir / f"{out_dir.name}.{suffix}", HEADERS[suffix], chunks, bar)
    logger.info(
        "wrote %s: %d users, %d items, %d interactions", out_dir, users, items, interactions
    )
    return out_dir


@dataclass(frozen=True)
class _Clusters:
    """The latent structure: which cluster each user and item belongs to."""

    weights: np.ndarray  # [k] cluster probability, a power law
    item_cluster: np.ndarray  # [items]
    cluster_items: np.ndarray  # [items] item rows by cluster, popularity order inside
    cluster_start: np.ndarray  # [k + 1] offsets into cluster_items
    user_cluster: np.ndarray  # [2, users] own and second cluster
    user_mix: np.ndarray  # [users] probability of picking from the own cluster

    @classmethod
    def sample(cls, rng: np.random.Generator, users: int, items: int, k: int) -> _Clusters:
        weights = 1.0 / np.arange(1, k + 1) ** 0.7
        weights /= weights.sum()
        item_cluster = rng.choice(k, size=items, p=weights)
        item_cluster[rng.permutation(items)[:k]] = np.arange(k)  # no cluster is empty
        shuffled = rng.permutation(items)  # a random popularity order inside each cluster
        cluster_items = shuffled[np.argsort(item_cluster[shuffled], kind="stable")]
        sizes = np.bincount(item_cluster, minlength=k)
        return cls(
            weights,
            item_cluster,
            cluster_items,
            np.concatenate([[0], np.cumsum(sizes)]),
            rng.choice(k, size=(2, users), p=weights),
            np.where(rng.random(users) < 0.5, 1.0, rng.uniform(0.5, 0.9, users)),
        )

    def items_in(self, rng: np.random.Generator, cluster: np.ndarray) -> np.ndarray:
        """[m] item rows for [m] clusters, Zipf (exponent 1) over each cluster's order."""
        start = self.cluster_start[cluster]
        size = self.cluster_start[cluster + 1] - start
        rank = np.exp(rng.random(len(cluster)) * np.log1p(size)).astype(np.int64) - 1
        return self.cluster_items[start + np.minimum(rank, size - 1)]


def _inter_chunks(
    rng: np.random.Generator, world: _Clusters, counts: np.ndarray, user_edges: np.ndarray
) -> Iterator[str]:
    """``.inter`` lines, one chunk per user range; within a chunk in time order."""
    n_items, k = len(world.item_cluster), len(world.weights)
    for lo, hi in zip(user_edges[:-1].tolist(), user_edges[1:].tolist(), strict=True):
        user = np.repeat(np.arange(lo, hi), counts[lo:hi])
        explore = rng.random(len(user)) < _EXPLORE
        own = (rng.random(len(user)) >= world.user_mix[user]).astype(np.int64)
        cluster = world.user_cluster[own, user]
        cluster[explore] = rng.choice(k, size=int(explore.sum()), p=world.weights)
        item = world.items_in(rng, cluster)
        for attempt in range(6):  # redraw repeats: 3 times in-cluster, then anywhere
            key = user * n_items + item
            order = np.argsort(key, kind="stable")
            repeated = order[1:][key[order][1:] == key[order][:-1]]
            if not len(repeated):
                break
            if attempt >= 3:
                explore[repeated] = True
                cluster[repeated] = rng.choice(k, size=len(repeated), p=world.weights)
            item[repeated] = world.items_in(rng, cluster[repeated])
        rating = np.clip(np.rint(rng.normal(np.where(explore, 3.0, 4.0), 1.0)), 1, 5)
        time = _timestamps(rng, counts[lo:hi])
        order = np.argsort(time, kind="stable")
        line = (user[order] + 1, item[order] + 1, rating[order].astype(np.int64), time[order])
        yield _lines("{}\t{}\t{}\t{}\n", *line)


def _chunk_edges(cumulative: np.ndarray) -> np.ndarray:
    """User boundaries [k+1] so that each chunk holds about CHUNK_ROWS interactions."""
    total = int(cumulative[-1])
    cuts = np.searchsorted(cumulative, np.arange(CHUNK_ROWS, total, CHUNK_ROWS), side="right")
    return np.unique(np.concatenate([[0], cuts, [len(cumulative)]]))


def _timestamps(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """[sum(counts)] int64 timestamps, strictly increasing within each user's run of rows."""
    start = _T_START + rng.random(len(counts)) * 0.8 * (_T_END - _T_START)
    scale = np.repeat((_T_END - start) / (counts + 1.0), counts)
    gaps = 1 + np.floor(rng.exponential(1.0, len(scale)) * scale).astype(np.int64)
    steps = np.cumsum(gaps)
    before = np.concatenate([[0], steps])[np.cumsum(counts) - counts]  # sum before each user
    return np.repeat(start.astype(np.int64), counts) + steps - np.repeat(before, counts)


def _user_chunks(rng: np.random.Generator, cluster: np.ndarray, clusters: int) -> Iterator[str]:
    occupation_of = rng.integers(0, len(OCCUPATIONS), clusters)
    age_of = rng.uniform(18, 60, clusters)
    male_of = rng.uniform(0.3, 0.9, clusters)
    zip_of = rng.integers(0, 100, clusters)
    occupations, genders = np.array(OCCUPATIONS, dtype=object), np.array(["F", "M"], dtype=object)
    for lo in range(0, len(cluster), CHUNK_ROWS):
        c = cluster[lo : lo + CHUNK_ROWS]
        n = len(c)
        occupation = np.where(
            rng.random(n) < 0.7, occupation_of[c], rng.integers(0, len(OCCUPATIONS), n)
        )
        age = np.clip(np.rint(rng.normal(age_of[c], 7.0)), 7, 73).astype(np.int64)
        male = (rng.random(n) < male_of[c]).astype(np.int64)
        zip_code = zip_of[c] * 1000 + rng.integers(0, 1000, n)
        yield _lines(
            "{}\t{}\t{}\t{}\t{:05d}\n",
            np.arange(lo + 1, lo + n + 1),
            age,
            genders[male],
            occupations[occupation],
            zip_code,
        )


def _item_chunks(rng: np.random.Generator, cluster: np.ndarray, clusters: int) -> Iterator[str]:
    year_of = rng.integers(1930, 1998, clusters)
    genre_of = rng.integers(0, len(GENRES), (2, clusters))
    g = len(GENRES)
    # Every (count, first, second, third) genre combination, deduplicated, as one string.
    combos = np.array(
        [
            " ".join(dict.fromkeys(GENRES[i] for i in (a, b, c)[:k]))
            for k in (1, 2, 3)
            for a in range(g)
            for b in range(g)
            for c in range(g)
        ],
        dtype=object,
    )
    for lo in range(0, len(cluster), CHUNK_ROWS):
        c = cluster[lo : lo + CHUNK_ROWS]
        n = len(c)
        year = np.clip(year_of[c] + np.rint(rng.normal(0, 5, n)).astype(np.int64), 1922, 1998)
        first = np.where(rng.random(n) < 0.8, genre_of[0, c], rng.integers(0, g, n))
        second = np.where(rng.random(n) < 0.5, genre_of[1, c], rng.integers(0, g, n))
        k = rng.choice(3, size=n, p=[0.45, 0.35, 0.2])
        genres = combos[((k * g + first) * g + second) * g + rng.integers(0, g, n)]
        ids = np.arange(lo + 1, lo + n + 1)
        yield _lines("{}\titem{}\t{}\t{}\n", ids, ids, year, genres)


def _lines(template: str, *columns: np.ndarray) -> str:
    """Format [n] columns row by row with ``template`` (one line per row, newline included)."""
    return "".join(map(template.format, *(column.tolist() for column in columns)))


def _write(path: Path, header: str, chunks: Iterator[str], bar: tqdm) -> None:
    """Write ``header`` and ``chunks`` to a temporary file, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as out:
            out.write(header + "\n")
            for text in chunks:
                out.write(text)
                bar.update(1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
