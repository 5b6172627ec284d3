"""Every knob of tiktok-sync, read from the environment once (pydantic-settings).

This module is the only place that reads the environment. A bad value stops start-up with a
message naming the variable (`SettingsError`).
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TIKTOK_PRODUCTION_URL = "https://business-api.tiktok.com/open_api/v1.3"


class SettingsError(SystemExit):
    """Raised (as a SystemExit, so commands stop cleanly) when an environment variable is wrong."""


class Settings(BaseSettings):
    """Environment variables, one field each; the field name in upper case is the variable."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Redis: state, ledger, results store, rate limiter. The broker defaults to it; the results
    # store lives in it (RESULTS_REDIS_URL may only repeat it: see _consistent).
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    results_redis_url: str | None = None
    key_prefix: str = Field("ts", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")

    # TikTok Marketing API.
    tiktok_api_base_url: str = TIKTOK_PRODUCTION_URL
    tiktok_app_id: str = ""
    tiktok_app_secret: str = ""
    tiktok_batch_size: int = Field(1000, ge=1, le=10_000)
    tiktok_connect_timeout: float = Field(5.0, gt=0, le=120)
    tiktok_read_timeout: float = Field(30.0, gt=0, le=600)
    tiktok_max_attempts: int = Field(6, ge=1, le=50)
    tiktok_backoff_base: float = Field(1.0, ge=0, le=600)
    tiktok_backoff_max: float = Field(120.0, ge=0, le=3600)
    tiktok_audience_warmup_seconds: float = Field(180.0, ge=0, le=86_400)

    # Shared rate limiter: default budget per (app, advertiser); a destination may override it.
    rate_limit_per_second: float = Field(10.0, gt=0, le=10_000)
    rate_limit_burst: int = Field(1, ge=1, le=10_000)
    rate_limit_min_per_second: float = Field(0.5, gt=0)
    rate_limit_recovery_per_second: float = Field(0.5, ge=0)
    rate_limit_max_sleep_seconds: float = Field(10.0, ge=0, le=300)

    # Secrets at rest: Fernet key(s), comma-separated, newest first (rotation).
    token_encryption_key: str = ""

    # Pipeline.
    state_shards: int = Field(64, ge=1, le=4096)  # fixed once ledgers exist (checked at start)
    stage_parts: int = Field(4, ge=1, le=256)  # byte ranges one big local snapshot is split into
    max_line_bytes: int = Field(1 << 20, ge=1024)
    source_http_timeout: float = Field(30.0, gt=0)
    mass_delete_threshold: float = Field(0.5, ge=0, le=1)
    lock_lease_seconds: int = Field(120, ge=5, le=86_400)
    lock_wait_seconds: float = Field(5.0, gt=0, le=3600)
    stuck_job_seconds: int = Field(180, ge=10)
    reconcile_interval_seconds: float = Field(60.0, gt=0)
    schedule_interval_seconds: float = Field(30.0, gt=0)

    # Results store.
    results_ttl_days: float = Field(30.0, gt=0, le=3650)
    history_length: int = Field(50, ge=1, le=10_000)

    # Celery.
    visibility_timeout: int = Field(3600, ge=60)
    task_time_limit: int = Field(1800, ge=10)
    task_soft_time_limit: int = Field(1700, ge=5)

    # Logs and operations.
    log_format: Literal["json", "console"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    flower_basic_auth: str = ""  # user:password[,user:password]; empty: Flower on loopback only
    flower_port: int = Field(5555, ge=1, le=65535)
    metrics_port: int = Field(9808, ge=0, le=65535)

    @field_validator("redis_url", "broker_url", "results_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("tiktok_api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password(cls, value: str) -> str:
        for entry in filter(None, (e.strip() for e in value.split(","))):
            user, sep, password = entry.partition(":")
            if not (user and sep and password):
                raise ValueError("must be user:password (comma-separated for several)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("TASK_SOFT_TIME_LIMIT must be below TASK_TIME_LIMIT")
        if self.task_time_limit >= self.visibility_timeout:
            raise ValueError("TASK_TIME_LIMIT must be below VISIBILITY_TIMEOUT")
        if self.rate_limit_min_per_second > self.rate_limit_per_second:
            raise ValueError("RATE_LIMIT_MIN_PER_SECOND must not exceed RATE_LIMIT_PER_SECOND")
        if self.results_redis_url not in (None, self.redis_url):
            raise ValueError(
                "RESULTS_REDIS_URL must name the same Redis as REDIS_URL (or be left unset): a "
                "batch's result is committed in one step with the ledger it changes"
            )
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def results_url(self) -> str:
        return self.results_redis_url or self.redis_url

    @property
    def results_ttl_seconds(self) -> int:
        return int(self.results_ttl_days * 86_400)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"]).upper() or "settings"
        lines.append(f"  {name}: {item['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus overrides), or stop with a readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


@functools.cache
def get_settings() -> Settings:
    return load_settings()
