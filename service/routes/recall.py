"""/v1 routes: recall, batch recall, similar items.

No postponed annotations here: the body schemas are built per app from the limits, so the
endpoints are defined inside ``router`` and FastAPI reads their annotations as objects.
Handlers validate on the event loop and hand the work to ``service.batcher`` (the user tower
and FAISS block; its worker threads answer concurrent requests together).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from service.errors import JSONBody, batch_body
from service.schemas import (
    BatchRecallRequest,
    BatchRecallResponse,
    ErrorBody,
    RecallRequest,
    RecallResponse,
    SimilarResponse,
    request_schemas,
)
from service.settings import Limits
from service.state import Services, services

ERRORS = {status: {"model": ErrorBody} for status in (404, 422, 503)}


Schemas = tuple[type[RecallRequest], type[BatchRecallRequest]]


def router(limits: Limits, schemas: Schemas | None = None) -> APIRouter:
    """The /v1 routes; ``schemas`` are ``request_schemas(limits)`` (pass them to share them)."""
    recall_body, batch_schema = schemas or request_schemas(limits)
    api = APIRouter(prefix="/v1", tags=["recall"], responses=ERRORS)  # type: ignore[arg-type]
    State = Annotated[Services, Depends(services)]

    @api.post("/recall", response_model=RecallResponse)
    async def recall(body: recall_body, state: State) -> JSONBody:  # type: ignore[valid-type]
        """Top-K items for one user (known id, features, history, or popularity fallback)."""
        request: RecallRequest = body
        engine = state.holder.require()
        return JSONBody(await state.batcher.recall(engine, [request]))

    @api.post("/recall/batch", response_model=BatchRecallResponse)
    async def recall_batch(body: batch_schema, state: State) -> JSONBody:  # type: ignore[valid-type]
        """Several recall requests in one call; results in the same order."""
        batch: BatchRecallRequest = body
        engine = state.holder.require()
        return JSONBody(batch_body(await state.batcher.recall(engine, batch.requests, True)))

    @api.get("/items/{item_id}/similar", response_model=SimilarResponse)
    async def similar(
        item_id: Annotated[str, Path(min_length=1, max_length=limits.max_string_length)],
        state: State,
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = limits.default_k,
    ) -> JSONBody:
        """Items nearest to an item's vector in the same index (the item itself left out)."""
        engine = state.holder.require()
        return JSONBody(await state.batcher.similar(engine, item_id, k))

    return api
