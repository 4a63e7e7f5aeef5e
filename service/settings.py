"""Every knob of the online service, read from ``RECALL_*`` environment variables or ``.env``.

Nested groups use ``__``: ``RECALL_LIMITS__MAX_K=500``. Each knob is documented in
``.env.example``. ``load_settings`` turns a validation failure into one message per bad
variable that says what to change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RECALL_"
OTHER_ENV = {"RECALL_LOG_LEVEL"}  # read by the `recall` entry point, not by the service


class Limits(BaseModel):
    """Request limits; past one a request answers 422 naming the field."""

    model_config = {"extra": "forbid"}

    max_k: int = Field(default=1000, ge=1, le=100_000)
    default_k: int = Field(default=100, ge=1)
    max_batch: int = Field(default=64, ge=1, le=10_000)
    max_history: int = Field(default=500, ge=0, le=100_000)
    max_exclude: int = Field(default=1000, ge=0, le=100_000)
    max_features: int = Field(default=32, ge=0, le=1000)
    max_list_values: int = Field(default=64, ge=1, le=10_000)
    max_string_length: int = Field(default=256, ge=8, le=65_536)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)

    @model_validator(mode="after")
    def _default_within_max(self) -> Limits:
        if self.default_k > self.max_k:
            raise ValueError(
                f"default_k {self.default_k} is above max_k {self.max_k}: "
                "lower RECALL_LIMITS__DEFAULT_K or raise RECALL_LIMITS__MAX_K"
            )
        return self


class ConnectionSettings(BaseModel):
    """What one HTTP connection may hold (``service.protocol``)."""

    model_config = {"extra": "forbid"}

    max_connections: int = Field(default=2048, ge=1, le=1_000_000)
    max_url_bytes: int = Field(default=8192, ge=256, le=1 << 20)  # past it 414
    max_header_bytes: int = Field(default=16384, ge=1024, le=1 << 20)  # past it 431
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)  # to send the head; then 408
    body_timeout_s: float = Field(default=10.0, gt=0, le=600)  # to send the body; then 408
    keep_alive_s: float = Field(default=5.0, gt=0, le=600)  # idle between two requests


class RedisSettings(BaseModel):
    """Redis client behaviour (the URL itself is ``RECALL_REDIS_URL``)."""

    model_config = {"extra": "forbid"}

    socket_timeout_ms: int = Field(default=50, ge=1, le=1000)
    connect_timeout_ms: int = Field(default=50, ge=1, le=1000)
    retries: int = Field(default=1, ge=0, le=5)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open it")
    breaker_cooldown_s: float = Field(default=5.0, gt=0, le=3600, description="open -> half-open")


class CacheSettings(BaseModel):
    """User-vector cache: key prefix, TTL, and the in-process LRU (the only cache without
    Redis, a first level in front of it with Redis; 0 entries turns that first level off)."""

    model_config = {"extra": "forbid"}

    ttl_s: int = Field(default=3600, ge=1, le=30 * 86_400)
    key_prefix: str = Field(default="recall:uvec", min_length=1, max_length=64)
    local_max_entries: int = Field(default=100_000, ge=0)
    write_behind: bool = True  # Redis written by a background thread, off the request path


class BatchSettings(BaseModel):
    """Micro-batching: the requests of one event-loop pass are answered together with one
    cache read, one user-tower forward and one index search (``service.batcher``)."""

    model_config = {"extra": "forbid"}

    max_size: int = Field(default=32, ge=1, le=1024, description="requests per batch")
    max_wait_ms: float = Field(default=0.0, ge=0.0, le=50.0, description="wait to fill a batch")
    # Admission (service.batcher.cost: a k=100 request with nothing excluded costs 1 unit).
    max_flush_cost: float = Field(
        default=24.0, ge=1.0, description="cost units answered per pass; bigger jobs in parts"
    )
    max_queued_cost: float = Field(
        default=64.0, ge=1.0, description="cost a new request may wait behind; past it 503"
    )
    max_pending_cost: float = Field(
        default=2048.0, ge=1.0, description="cost units queued at most; past it 503 overloaded"
    )
    shed_after_ms: float = Field(
        default=50.0, gt=0.0, le=10_000.0, description="503 while the oldest queued job waited"
    )
    # A standing queue (not empty for standing_after_ms: overload, not a burst) gets the tight
    # bounds: 503 once the oldest job waited standing_shed_ms or one pass of cost is ahead.
    standing_after_ms: float = Field(
        default=100.0, gt=0.0, le=60_000.0, description="queue not empty this long: standing"
    )
    standing_shed_ms: float = Field(
        default=5.0, gt=0.0, le=10_000.0, description="the wait bound of a standing queue"
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After of a 503")


class GateSettings(BaseModel):
    """Promotion gates a reload applies before the swap (``service.promotion``)."""

    model_config = {"extra": "forbid"}

    quality_margin: float = Field(
        default=0.1, ge=0.0, le=1.0, description="offline recall@10 may fall this share below"
    )
    parity_tolerance: float = Field(
        default=1e-4, gt=0.0, le=1.0, description="1 - cosine of an online vs offline vector"
    )
    golden_k: int = Field(default=10, ge=1, le=1000, description="k of the golden queries")


class MonitorSettings(BaseModel):
    """Online ANN recall on sampled requests (``service.monitor``)."""

    model_config = {"extra": "forbid"}

    sample: float = Field(default=0.01, ge=0.0, le=1.0, description="share of answers; 0: off")
    k: int = Field(default=100, ge=1, le=1000, description="recall@k against exact search")
    queue: int = Field(default=256, ge=1, le=100_000, description="samples waiting; full: drop")
    cpu_share: float = Field(default=0.02, gt=0.0, le=1.0, description="of one core, at most")
    margin: float = Field(default=0.05, ge=0.0, le=1.0, description="below the build's: warn")
    min_samples: int = Field(default=100, ge=1, description="before readiness warns")
    seed: int | None = None  # of the sampling; None: unseeded

    @field_validator("seed", mode="before")
    @classmethod
    def _empty_is_unseeded(cls, seed: object) -> object:
        return None if seed == "" else seed


class WatchSettings(BaseModel):
    """The watch after a reload (``service.watch``): worse answers than before roll it back."""

    model_config = {"extra": "forbid"}

    window_s: float = Field(default=60.0, ge=0.0, le=86_400.0, description="0 turns it off")
    check_every_s: float = Field(default=1.0, gt=0.0, le=3600.0, description="verdict period")
    min_requests: int = Field(default=50, ge=1, description="on each side before it judges")
    max_error_increase: float = Field(default=0.02, ge=0.0, le=1.0, description="absolute share")
    max_p99_ratio: float = Field(default=2.0, ge=1.0, le=100.0)
    max_empty_increase: float = Field(
        default=0.2, ge=0.0, le=1.0, description="share of empty or fallback answers, absolute"
    )


class FleetSettings(BaseModel):
    """One version across the replicas that share a Redis (``service.fleet``)."""

    model_config = {"extra": "forbid"}

    enabled: bool = True  # with RECALL_REDIS_URL set; false: this replica goes its own way
    key_prefix: str = Field(default="recall:fleet", min_length=1, max_length=64)
    poll_s: float = Field(default=2.0, gt=0.0, le=600.0, description="fleet version poll")
    heartbeat_ttl_s: int = Field(default=10, ge=1, le=3600, description="replica listed this long")
    replica: str | None = Field(default=None, max_length=128, description="default: host-pid")

    @field_validator("replica")
    @classmethod
    def _empty_is_unset(cls, name: str | None) -> str | None:
        return name or None


class ThreadSettings(BaseModel):
    """CPU threads per process; one query is small, so more threads mostly add overhead."""

    model_config = {"extra": "forbid"}

    torch: int = Field(default=1, ge=1, le=256)
    faiss: int = Field(default=1, ge=1, le=256)


class Settings(BaseSettings):
    """The service's one configuration object, passed to ``create_app``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    snapshots: Path = Path("snapshots")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)
    # On SIGTERM: keep accepting this long (connections already queued in the kernel are read
    # and answered), then stop accepting and finish what is in flight (at most grace_s).
    shutdown_drain_ms: int = Field(default=200, ge=0, le=60_000)
    shutdown_grace_s: int = Field(default=10, ge=1, le=600)
    admin_token: SecretStr | None = None
    # Comma-separated keys the /v1 routes require (`Authorization: Bearer <key>` or
    # `X-API-Key: <key>`); unset: the /v1 routes are open (callers on a trusted network).
    api_keys: SecretStr | None = None
    docs: bool = True  # /docs, /redoc and /openapi.json; false where callers are not trusted
    redis_url: SecretStr | None = None
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    limits: Limits = Limits()
    connections: ConnectionSettings = ConnectionSettings()
    batch: BatchSettings = BatchSettings()
    gates: GateSettings = GateSettings()
    fleet: FleetSettings = FleetSettings()
    watch: WatchSettings = WatchSettings()
    monitor: MonitorSettings = MonitorSettings()
    threads: ThreadSettings = ThreadSettings()

    @field_validator("admin_token")
    @classmethod
    def _token_strong_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or token.get_secret_value() == "":
            return None  # empty means admin routes off, as unset does
        if len(token.get_secret_value()) < 16:
            raise ValueError(
                "use at least 16 characters, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return token

    @field_validator("api_keys")
    @classmethod
    def _keys_strong_enough(cls, keys: SecretStr | None) -> SecretStr | None:
        if keys is None or keys.get_secret_value().strip() == "":
            return None
        if any(len(key.strip()) < 16 for key in keys.get_secret_value().split(",")):
            raise ValueError("use keys of at least 16 characters each, separated by commas")
        return keys

    def api_key_set(self) -> frozenset[bytes]:
        """The configured API keys as bytes (empty: the /v1 routes are open)."""
        if self.api_keys is None:
            return frozenset()
        return frozenset(k.strip().encode() for k in self.api_keys.get_secret_value().split(","))

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None or url.get_secret_value() == "":
            return None  # empty means no Redis: in-process cache
        if not url.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class SettingsInvalidError(ValueError):
    """Settings that cannot start the service; the message lists what to change."""


def env_name(loc: tuple[Any, ...]) -> str:
    """``("limits", "max_k")`` -> ``RECALL_LIMITS__MAX_K``."""
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and ``.env``), then ``overrides`` (e.g. CLI flags).

    Raises ``SettingsInvalidError`` naming each bad or unknown ``RECALL_*`` variable.
    """
    known = {env_name((name,)) for name in Settings.model_fields} | OTHER_ENV
    groups = {name for name, field in Settings.model_fields.items() if _is_group(field.annotation)}

    def unknown(keys: Iterable[str]) -> list[str]:
        return [
            key
            for key in keys
            if key.upper().startswith(ENV_PREFIX)
            and key.upper() not in known
            and not any(key.upper().startswith(env_name((group,)) + "__") for group in groups)
        ]

    problems = [
        f"{key}: not a setting; see .env.example for the names" for key in unknown(os.environ)
    ]
    env_file = Path(str(Settings.model_config.get("env_file") or ".env"))
    if env_file.is_file():
        problems += [
            f"{key} (in {env_file}): not a setting; see .env.example for the names"
            for key in unknown(dotenv_values(env_file))
        ]
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems += [f"{env_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
        settings = None
    if problems or settings is None:
        raise SettingsInvalidError("invalid settings:\n  " + "\n  ".join(problems))
    return settings


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
