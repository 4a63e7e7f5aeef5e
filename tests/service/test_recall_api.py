"""POST /v1/recall and /v1/recall/batch, GET /v1/items/{id}/similar against their contract."""

from __future__ import annotations

import numpy as np

from index_builder.snapshot import LoadedSnapshot
from service.schemas import BatchRecallResponse, RecallResponse, SimilarResponse
from tests.service.client import AppClient


def busiest_user(snapshot: LoadedSnapshot) -> str:
    """The known user with the most seen items."""
    counts = np.diff(snapshot.seen_offsets)
    row = int(np.argmax(counts))
    return next(user for user, r in snapshot.user_row.items() if r == row)


def seen_ids(snapshot: LoadedSnapshot, user_id: str) -> set[str]:
    return set(snapshot.item_ids[snapshot.seen(snapshot.user_row[user_id])].tolist())


def items_with(snapshot: LoadedSnapshot, attribute: str, value: str) -> set[str]:
    token = snapshot.artifact.item_spec.vocabs[attribute][value]
    column = snapshot.item_attributes[attribute]
    rows = np.flatnonzero((column.reshape(len(column), -1) == token).any(axis=1))
    return set(snapshot.item_ids[rows].tolist())


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_known_user_gets_k_items_best_first_then_from_cache(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    user = busiest_user(newest)
    first = client.post("/v1/recall", json={"user_id": user, "k": 10})
    assert first.status_code == 200
    body = RecallResponse.model_validate(first.json())
    assert body.snapshot == newest.version
    assert len(body.items) == 10
    scores = [item.score for item in body.items]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert (body.user.known, body.user.source) == (True, "computed")
    again = client.post("/v1/recall", json={"user_id": user, "k": 10}).json()
    assert again["user"] == {"known": True, "source": "cache"}
    assert again["items"] == first.json()["items"]


def test_exclude_seen_removes_every_seen_item_and_still_returns_k(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    user = busiest_user(newest)
    seen = seen_ids(newest, user)
    k = len(newest.item_ids) - len(seen)  # every unseen item: the over-fetch must find all
    body = client.post("/v1/recall", json={"user_id": user, "k": k}).json()
    assert len(ids(body)) == k
    assert not set(ids(body)) & seen
    kept = client.post("/v1/recall", json={"user_id": user, "k": 30, "exclude_seen": False}).json()
    assert set(ids(kept)) & seen  # the tower does like what the user saw


def test_exclude_item_ids_are_never_returned(client: AppClient) -> None:
    top = ids(client.post("/v1/recall", json={"user_id": "1", "k": 5}).json())
    body = client.post(
        "/v1/recall", json={"user_id": "1", "k": 5, "exclude_item_ids": top[:3] + ["nope"]}
    ).json()
    assert len(body["items"]) == 5
    assert not set(ids(body)) & set(top[:3])


def test_filter_keeps_only_items_having_a_requested_genre(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    user = busiest_user(newest)
    comedies = items_with(newest, "genres", "Comedy")
    allowed = comedies - seen_ids(newest, user)
    body = client.post(
        "/v1/recall",
        json={"user_id": user, "k": 1000, "filter": {"genres": ["Comedy"]}, "explain": True},
    ).json()
    assert set(ids(body)) == allowed  # every allowed item, once the catalogue is exhausted
    assert len(ids(body)) == len(allowed)
    assert body["explain"]["filter_matches"] == len(comedies)
    either = items_with(newest, "genres", "Comedy") | items_with(newest, "genres", "Drama")
    body = client.post(
        "/v1/recall", json={"features": {"age": 30}, "filter": {"genres": ["Drama", "Comedy"]}}
    ).json()
    assert set(ids(body)) <= either


def test_nothing_usable_falls_back_to_most_popular(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    order = np.argsort(-newest.popularity, kind="stable")[:5]
    expected = newest.item_ids[order].tolist()
    for request in ({}, {"user_id": "stranger"}, {"history": ["no-such-item"]}):
        response = client.post("/v1/recall", json={**request, "k": 5})
        assert response.status_code == 200
        body = response.json()
        assert body["user"] == {"known": False, "source": "fallback"}
        assert ids(body) == expected
        assert body["items"][0]["score"] == 1.0


def test_unknown_user_with_features_or_history_gets_a_computed_vector(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    by_features = client.post(
        "/v1/recall",
        json={"user_id": "stranger", "features": {"age": 25, "gender": "F"}, "explain": True},
    ).json()
    assert by_features["user"] == {"known": False, "source": "computed"}
    assert by_features["explain"]["request_features"] == ["age", "gender"]
    history = newest.item_ids[:3].tolist()
    by_history = client.post(
        "/v1/recall", json={"history": history + ["nope"], "k": 20, "explain": True}
    ).json()
    assert by_history["user"]["source"] == "computed"
    assert by_history["explain"]["history_source"] == "request"
    assert by_history["explain"]["unknown_history_items"] == 1
    assert not set(ids(by_history)) & set(history)  # history counts as seen


def test_request_features_override_the_known_users_profile(client: AppClient) -> None:
    body = client.post(
        "/v1/recall", json={"user_id": "1", "features": {"gender": "F"}, "explain": True}
    ).json()
    explain = body["explain"]
    assert explain["request_features"] == ["gender"]
    assert "gender" not in explain["profile_features"] and "age" in explain["profile_features"]
    assert explain["history_source"] == "snapshot" and explain["history_length"] > 0
    plain = client.post("/v1/recall", json={"user_id": "1"}).json()
    assert "explain" not in plain


def test_unknown_feature_or_filter_is_422_naming_it(client: AppClient) -> None:
    cases = [
        ({"features": {"shoe_size": 42}}, "unknown_feature", "body.features.shoe_size"),
        ({"features": {"history": ["1"]}}, "unknown_feature", "body.features.history"),
        ({"filter": {"colour": ["red"]}}, "unknown_filter", "body.filter.colour"),
        ({"filter": {"genres": ["comedy"]}}, "unknown_filter", "body.filter.genres"),
    ]
    for request, code, path in cases:
        response = client.post("/v1/recall", json=request)
        assert response.status_code == 422, request
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"].startswith(path)


def test_batch_answers_each_request_in_order_like_single_calls(client: AppClient) -> None:
    requests = [
        {"user_id": "2", "k": 3},
        {},
        {"features": {"occupation": "writer"}, "k": 4, "filter": {"genres": ["Drama"]}},
    ]
    response = client.post("/v1/recall/batch", json={"requests": requests})
    assert response.status_code == 200
    results = BatchRecallResponse.model_validate(response.json()).results
    assert [r.user.source for r in results] == ["computed", "fallback", "computed"]
    for request, result in zip(requests, results, strict=True):
        single = client.post("/v1/recall", json=request).json()
        assert [i.item_id for i in result.items] == ids(single)


def test_batch_error_names_the_request_that_failed(client: AppClient) -> None:
    requests = [{"user_id": "1"}, {"features": {"shoe_size": 42}}]
    response = client.post("/v1/recall/batch", json={"requests": requests})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("body.requests.1.features.shoe_size")


def test_similar_items_are_the_exact_nearest_without_the_item(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    item = newest.item_ids[7]
    vectors = newest.index.reconstruct_n(0, newest.index.ntotal)
    scores = vectors @ vectors[7]
    scores[7] = -np.inf
    expected = newest.item_ids[np.argsort(-scores, kind="stable")[:5]].tolist()
    response = client.get(f"/v1/items/{item}/similar", params={"k": 5})
    assert response.status_code == 200
    body = SimilarResponse.model_validate(response.json())
    assert body.item_id == item
    assert item not in [i.item_id for i in body.items]
    assert sorted(i.item_id for i in body.items) == sorted(expected)


def test_similar_for_an_unknown_item_is_404(client: AppClient) -> None:
    response = client.get("/v1/items/no-such-item/similar")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
