"""Request and response schemas of the HTTP API, with their limits.

Request limits come from settings, so the request schemas are built per app by
``request_schemas(limits)``; the static classes below document the shape (and the defaults).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    create_model,
)

from service.settings import Limits

Scalar = str | int | float | None
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # the model encodes integers as int64 at most
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RecallRequest(BaseModel):
    """One recall query. Every field is optional; see README "Online service" for the rules."""

    model_config = _STRICT

    user_id: str | None = None
    features: dict[str, Scalar | list[Scalar]] | None = None
    history: list[str] | None = None  # item ids, oldest first
    k: int = 100
    exclude_seen: bool = True
    exclude_item_ids: list[str] | None = None
    filter: dict[str, list[str]] | None = None  # item attribute -> any of these values
    explain: bool = False


class BatchRecallRequest(BaseModel):
    model_config = _STRICT

    requests: list[RecallRequest]


def request_schemas(limits: Limits) -> tuple[type[RecallRequest], type[BatchRecallRequest]]:
    """``RecallRequest`` and ``BatchRecallRequest`` bounded by ``limits``."""
    text = Annotated[
        str,
        StringConstraints(min_length=1, max_length=limits.max_string_length),
        AfterValidator(encodable),
    ]
    name = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(encodable)]
    values = Annotated[list[text], Field(min_length=1, max_length=limits.max_list_values)]
    value = Annotated[
        Any,
        PlainValidator(_feature_value(limits), json_schema_input_type=Scalar | list[Scalar]),
    ]

    bound = create_model(
        "RecallRequest",
        __base__=RecallRequest,
        __module__=__name__,
        user_id=(text | None, None),
        features=(Annotated[dict[name, value], Field(max_length=limits.max_features)] | None, None),
        history=(Annotated[list[text], Field(max_length=limits.max_history)] | None, None),
        k=(int, Field(default=limits.default_k, ge=1, le=limits.max_k)),
        exclude_item_ids=(Annotated[list[text], Field(max_length=limits.max_exclude)] | None, None),
        filter=(Annotated[dict[name, values], Field(max_length=8)] | None, None),
    )
    requests: Any = Annotated[list[bound], Field(min_length=1, max_length=limits.max_batch)]  # type: ignore[valid-type]
    batch = create_model(
        "BatchRecallRequest",
        __base__=BatchRecallRequest,
        __module__=__name__,
        requests=(requests, ...),
    )
    return bound, batch


def encodable(text: str) -> str:
    """``text`` when it is valid Unicode: JSON's ``"\\ud800"`` decodes to a lone surrogate,
    which no UTF-8 encoder (the cache key, the logs, the answer) can write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"must be valid Unicode text; character {exc.start} is a lone surrogate"
        ) from None
    return text


def _feature_value(limits: Limits) -> Any:
    """Validator of one feature value: a string, a finite number, null, or a list of those."""

    def scalar(value: Any) -> Scalar:
        if value is None:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT_MIN <= value <= INT_MAX:
                raise ValueError("must be an integer within 64 bits")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
            return value
        if isinstance(value, str):
            if len(value) > limits.max_string_length:
                raise ValueError(f"must have at most {limits.max_string_length} characters")
            return encodable(value)
        raise ValueError("must be a string, a finite number, null, or a list of those")

    def check(value: Any) -> Scalar | list[Scalar]:
        if isinstance(value, list):
            if len(value) > limits.max_list_values:
                raise ValueError(f"must have at most {limits.max_list_values} values")
            return [scalar(v) for v in value]
        return scalar(value)

    return check


class RecalledItem(BaseModel):
    item_id: str
    score: float  # cosine in [-1, 1]; for the popularity fallback, popularity / top popularity


class UserInfo(BaseModel):
    known: bool  # the user id is in the snapshot
    source: Literal["cache", "computed", "fallback"]


class Explanation(BaseModel):
    """How the user vector was made (``explain: true``)."""

    request_features: list[str]  # features the request sent (they override the profile)
    profile_features: list[str]  # features taken from the snapshot's user table
    history_source: Literal["request", "snapshot", "none"]
    history_length: int  # items that reached the user tower (after max_len)
    unknown_history_items: int  # request history ids not in the catalogue
    excluded_items: int  # seen and excluded items removed from the answer
    filter_matches: int | None  # items the filter keeps, when one was sent


class RecallResponse(BaseModel):
    snapshot: str
    items: list[RecalledItem]  # best first
    user: UserInfo
    took_ms: float
    explain: Explanation | None = None


class BatchRecallResponse(BaseModel):
    results: list[RecallResponse]  # same order as the requests


class SimilarResponse(BaseModel):
    snapshot: str
    item_id: str
    items: list[RecalledItem]
    took_ms: float


class ReloadRequest(BaseModel):
    model_config = _STRICT

    version: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class SnapshotRef(BaseModel):
    current: str | None
    previous: str | None


class SwapResponse(SnapshotRef):
    changed: bool
    message: str


class SnapshotEntry(BaseModel):
    version: str
    status: Literal["valid", "incomplete", "corrupt"]
    problem: str | None
    serving: Literal["current", "previous"] | None
    created: str | None


class SnapshotListResponse(BaseModel):
    snapshots: list[SnapshotEntry]  # newest first


class ReplicaInfo(BaseModel):
    replica: str
    serving: str | None
    started: float  # unix time
    seen: float  # unix time of its last heartbeat
    note: str | None = None  # e.g. why it cannot serve the fleet's version


class FleetResponse(BaseModel):
    fleet: bool  # false without a Redis: this replica alone
    version: str | None  # the fleet's version (without a fleet: this replica's)
    replica: str | None  # this replica's name
    replicas: list[ReplicaInfo]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    snapshot: str
    cache: Literal["ok", "degraded", "local"]
    warnings: list[str] | None = None  # e.g. online ANN recall below the build's


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
