"""The synthetic generator: ml-100k's format, exact counts, seeding and its latent structure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import models.synth
from models.data import RawDataset, load_dataset, read_atomic
from models.synth import GENRES, OCCUPATIONS, write_synthetic

ML100K_HEADERS = {
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "syn"
    return write_synthetic(out, 1000, 400, 20000, seed=3, clusters=8, progress=False)


@pytest.fixture(scope="module")
def synthetic(synthetic_dir: Path) -> RawDataset:
    return load_dataset(synthetic_dir)


def test_writes_ml100k_headers_and_nothing_else(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path / "tiny", 20, 30, 100, progress=False)
    assert out == tmp_path / "tiny"
    assert sorted(path.name for path in out.iterdir()) == ["tiny.inter", "tiny.item", "tiny.user"]
    for suffix, header in ML100K_HEADERS.items():
        assert (out / f"tiny.{suffix}").read_text(encoding="utf-8").split("\n")[0] == header


def test_counts_are_exact_and_every_user_interacts(synthetic: RawDataset) -> None:
    inter = synthetic.interactions
    assert len(inter) == 20000
    assert synthetic.users is not None and synthetic.items is not None
    assert synthetic.users.columns["user_id"] == [str(u) for u in range(1, 1001)]
    assert synthetic.items.columns["item_id"] == [str(i) for i in range(1, 401)]
    assert set(inter.user_ids.tolist()) == set(synthetic.users.columns["user_id"])
    assert set(inter.item_ids.tolist()) <= set(synthetic.items.columns["item_id"])


def test_more_users_than_interactions_leaves_some_users_without_any(tmp_path: Path) -> None:
    dataset = load_dataset(write_synthetic(tmp_path / "sparse", 50, 10, 20, progress=False))
    assert len(dataset.interactions) == 20 and dataset.users is not None
    assert len(dataset.users) == 50


def test_feature_values_come_from_ml100k_vocabularies(synthetic: RawDataset) -> None:
    assert synthetic.users is not None and synthetic.items is not None
    users, items = synthetic.users.columns, synthetic.items.columns
    assert set(users["occupation"]) <= set(OCCUPATIONS) and set(users["gender"]) <= {"M", "F"}
    assert all(7 <= int(age) <= 73 for age in users["age"])
    assert all(len(code) == 5 and code.isdigit() for code in users["zip_code"])
    assert all(1 <= len(genres) <= 3 and set(genres) <= set(GENRES) for genres in items["class"])
    assert all(1922 <= int(year) <= 1998 for year in items["release_year"])
    assert items["movie_title"][0] == ["item1"]


def test_ratings_are_whole_stars_from_one_to_five(synthetic_dir: Path) -> None:
    ratings = read_atomic(synthetic_dir / "syn.inter").columns["rating"]
    assert set(ratings) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_timestamps_strictly_increase_per_user_in_line_order(synthetic: RawDataset) -> None:
    inter = synthetic.interactions
    order = np.argsort(inter.user_ids.astype(str), kind="stable")  # line order within a user
    users, times = inter.user_ids[order], inter.timestamps[order]
    same_user = users[1:] == users[:-1]
    assert np.all(np.diff(times)[same_user] > 0)


def test_popularity_is_skewed_towards_a_head_of_items(synthetic: RawDataset) -> None:
    counts = np.sort(np.unique(synthetic.interactions.item_ids, return_counts=True)[1])[::-1]
    assert counts[:40].sum() / counts.sum() > 0.25  # the top 10% of items; uniform gives 0.10


def test_users_stick_to_their_clusters_genres(synthetic: RawDataset) -> None:
    assert synthetic.items is not None
    inter = synthetic.interactions
    first_genre = dict(
        zip(
            synthetic.items.columns["item_id"],
            (c[0] for c in synthetic.items.columns["class"]),
            strict=True,
        )
    )
    genres = np.array([first_genre[item] for item in inter.item_ids], dtype=object)
    order = np.lexsort((inter.timestamps, inter.user_ids.astype(str)))
    same_user = inter.user_ids[order][1:] == inter.user_ids[order][:-1]
    within = np.mean((genres[order][1:] == genres[order][:-1])[same_user])
    shares = np.unique(genres, return_counts=True)[1] / len(genres)
    assert within > 2 * np.sum(shares**2)  # vs two interactions drawn at random


def test_occupation_is_correlated_with_what_users_watch(synthetic: RawDataset) -> None:
    assert synthetic.items is not None and synthetic.users is not None
    inter = synthetic.interactions
    first_genre = dict(
        zip(
            synthetic.items.columns["item_id"],
            (c[0] for c in synthetic.items.columns["class"]),
            strict=True,
        )
    )
    watched: dict[str, Counter[str]] = {}
    for user, item in zip(inter.user_ids.tolist(), inter.item_ids.tolist(), strict=True):
        watched.setdefault(user, Counter())[first_genre[item]] += 1
    modal = [watched[user].most_common(1)[0][0] for user in synthetic.users.columns["user_id"]]
    occupation = synthetic.users.columns["occupation"]

    def agreement(genre: list[str]) -> float:
        """P(same modal genre | same occupation) over ordered user pairs, self-pairs included."""
        pairs = Counter(zip(occupation, genre, strict=True))
        return sum(v * v for v in pairs.values()) / sum(v * v for v in Counter(occupation).values())

    shuffled = np.random.default_rng(0).permutation(np.array(modal, dtype=object)).tolist()
    assert agreement(modal) > 2 * agreement(shuffled)


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    runs = [
        write_synthetic(tmp_path / f"r{k}" / "s", 30, 40, 500, seed=seed, progress=False)
        for k, seed in enumerate((1, 1, 2))
    ]
    contents = [(run / "s.inter").read_bytes() + (run / "s.user").read_bytes() for run in runs]
    assert contents[0] == contents[1] and contents[0] != contents[2]


def test_small_chunks_still_give_exact_counts_and_leave_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models.synth, "CHUNK_ROWS", 64)
    out = write_synthetic(tmp_path / "chunky", 150, 130, 1000, clusters=4, progress=False)
    assert sorted(path.name for path in out.iterdir()) == [
        "chunky.inter",
        "chunky.item",
        "chunky.user",
    ]
    dataset = load_dataset(out)
    assert len(dataset.interactions) == 1000 and len(set(dataset.interactions.user_ids)) == 150
    assert dataset.items is not None and len(dataset.items) == 130


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, -1)])
def test_rejects_empty_catalogues_and_negative_counts(
    tmp_path: Path, args: tuple[int, int, int]
) -> None:
    with pytest.raises(ValueError, match="users >= 1"):
        write_synthetic(tmp_path / "bad", *args, progress=False)
