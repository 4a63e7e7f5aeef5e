"""The naive baseline of the load benchmark: the recall API written the straightforward way.

    .venv/bin/python bench/naive_service.py --snapshots DIR --version V --port 8100 \
        --redis-url redis://127.0.0.1:6379/0

One FastAPI app, one uvicorn worker, sync endpoints (FastAPI's threadpool). Per request: the
user tower's inputs from the snapshot's tables, a torch forward of the user tower, a redis-py
SET of the vector, a FAISS HNSW search at the efSearch the index builder tuned to recall@100
>= 0.95 (the snapshot's manifest), seen items dropped in Python, and FastAPI's default JSON
response through the pydantic ``response_model``. Library defaults everywhere (threads too).
It serves the same request shapes as the service: ``POST /v1/recall`` with a known or unknown
``user_id`` and optional ``features``, and ``GET /v1/items/{item_id}/similar``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_builder.snapshot import load_snapshot  # noqa: E402
from models.inputs import FeatureTable, Ragged, TowerInputs, history_tokens  # noqa: E402


class RecallRequest(BaseModel):
    user_id: str | None = None
    features: dict[str, Any] | None = None
    k: int = 100


class Item(BaseModel):
    item_id: str
    score: float


class RecallResponse(BaseModel):
    snapshot: str
    items: list[Item]


def create_app(root: Path, version: str, redis_url: str) -> FastAPI:
    snapshot = load_snapshot(root, version)
    model = snapshot.artifact.model
    spec = snapshot.artifact.user_spec
    cache = redis.Redis.from_url(redis_url)
    app = FastAPI(title="naive recall")

    def user_inputs(request: RecallRequest) -> tuple[TowerInputs, np.ndarray]:
        inputs = spec.encode({}, 1)
        row = snapshot.user_row.get(request.user_id) if request.user_id else None
        seen = np.empty(0, dtype=np.int64)
        if row is not None:
            for name, values in snapshot.user_features.items():
                inputs[name] = values[row : row + 1]
            seen = snapshot.seen(row)
        elif request.user_id:
            inputs.update(spec.encode_values({"user_id": request.user_id}))
        if request.features:
            try:
                inputs.update(spec.encode_values(request.features))
            except KeyError as exc:
                raise HTTPException(422, str(exc)) from exc
        one = torch.arange(1)
        batch = FeatureTable(spec, inputs).rows(one)  # the project's one input encoder
        history = Ragged.from_lists([history_tokens(seen, snapshot.item_tokens)])
        for feature in spec.of_kind("history"):
            batch[feature.name] = history.bags(one, feature.max_len)
        return batch, seen

    def search(vector: np.ndarray, k: int, exclude: set[int]) -> list[Item]:
        scores, rows = snapshot.index.search(vector, k + len(exclude))
        items = []
        for score, row in zip(scores[0], rows[0], strict=True):
            if row >= 0 and int(row) not in exclude:
                items.append(Item(item_id=snapshot.item_ids[row], score=float(score)))
        return items[:k]

    @app.post("/v1/recall", response_model=RecallResponse)
    def recall(request: RecallRequest) -> RecallResponse:
        inputs, seen = user_inputs(request)
        with torch.no_grad():
            vector = model.user_vectors(inputs).numpy()
        key = f"naive:uvec:{version}:{request.user_id}"
        cache.set(key, vector.tobytes(), ex=3600)
        items = search(vector, request.k, set(seen.tolist()))
        return RecallResponse(snapshot=version, items=items)

    @app.get("/v1/items/{item_id}/similar", response_model=RecallResponse)
    def similar(item_id: str, k: int = 100) -> RecallResponse:
        row = snapshot.item_row.get(item_id)
        if row is None:
            raise HTTPException(404, f"unknown item {item_id}")
        vector = snapshot.item_vector(row)[None, :]
        return RecallResponse(snapshot=version, items=search(vector, k, {row}))

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready", "snapshot": version}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    app = create_app(args.snapshots, args.version, args.redis_url)
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
