"""Typed records at the boundaries: job requests, job and batch records, destinations, links."""

from __future__ import annotations

import enum
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from worker.identifiers import IdType
from worker.keys import check_id


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # another refresh of the same audience holds the lock
    RUNNING = "running"
    HELD = "held"  # mass-delete guard: waiting for `approve`
    SUCCEEDED = "succeeded"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    AUTH_FAILED = "auth_failed"
    SUPERSEDED = "superseded"
    DRY_RUN = "dry_run"


TERMINAL = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.PARTIALLY_FAILED,
        JobStatus.FAILED,
        JobStatus.SUPERSEDED,
        JobStatus.DRY_RUN,
    }
)
# auth_failed and held are resumable: not terminal for the reconciler, but the job is at rest.
AT_REST = TERMINAL | {JobStatus.AUTH_FAILED, JobStatus.HELD}


class BatchState(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARKED = "parked"  # destination auth failed: resumable
    SPLIT = "split"  # replaced by two halves (40061 or bisection)


class JobSpec(BaseModel):
    """What an upstream service asks for; validated at enqueue and stored under the job id."""

    job_id: str
    destination_id: str
    audience_id: str
    members: str | None = None  # URI or path of a full snapshot
    format: Literal["csv", "ndjson"] | None = None
    inline: list[dict[str, Any]] | None = None  # a small full snapshot given inline
    additions: list[dict[str, Any]] | None = None  # delta job
    removals: list[dict[str, Any]] | None = None  # delta job
    resync: bool = False
    dry_run: bool = False
    allow_mass_delete: bool = False
    created_at: float = Field(default_factory=time.time)

    @field_validator("job_id", "destination_id", "audience_id")
    @classmethod
    def _safe(cls, value: str, info: Any) -> str:
        return check_id(info.field_name.removesuffix("_id"), value)

    @property
    def mode(self) -> str:
        return "delta" if self.additions is not None or self.removals is not None else "snapshot"

    def check_source(self) -> None:
        if self.mode == "delta":
            if self.members is not None or self.inline is not None:
                raise ValueError("a delta job names additions/removals, not a snapshot")
            if self.resync:
                raise ValueError("--resync needs a full snapshot, not a delta")
        elif (self.members is None) == (self.inline is None):
            raise ValueError("give exactly one of a members URI or an inline member list")


class Destination(BaseModel):
    """A private destination: one client's TikTok advertiser and its token (encrypted at rest)."""

    id: str
    name: str
    advertiser_id: str
    identifiers: list[IdType] = Field(default_factory=lambda: list(IdType))
    phone_region: str | None = None
    rate_per_second: float | None = None
    status: Literal["active", "auth_failed"] = "active"
    status_message: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @field_validator("advertiser_id")
    @classmethod
    def _numeric(cls, value: str) -> str:
        value = str(value).strip()
        if not value.isdigit():
            raise ValueError("a TikTok advertiser id is a number")
        return value

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        value = value.strip().upper()
        if len(value) != 2 or not value.isalpha():
            raise ValueError("phone region is a two-letter country code such as US")
        return value


class AudienceLink(BaseModel):
    destination_id: str
    audience_id: str
    tiktok_audience_id: str
    name: str = ""
    created_at: float = Field(default_factory=time.time)
    tiktok_created_at: float | None = None  # set when we created it: warm-up window
    members_uri: str | None = None
    refresh_every_seconds: float | None = None
    id_extension: bool = False
    last_job_id: str | None = None
    last_refresh_at: float | None = None
    next_refresh_at: float | None = None
    matched: int | None = None
    synced_ids: int | None = None


class JobRecord(BaseModel):
    job_id: str
    status: JobStatus
    phase: str = "queued"
    destination_id: str
    audience_id: str
    source: str = ""
    mode: str = "snapshot"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    counts: dict[str, int] = Field(default_factory=dict)

    updated_at: float | None = None

    META: ClassVar[tuple[str, ...]] = (
        "status",
        "phase",
        "destination_id",
        "audience_id",
        "source",
        "mode",
        "message",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    )

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> JobRecord:
        meta = {k: raw[k] for k in cls.META if k in raw and raw[k] != ""}
        counts = {
            k: int(v) for k, v in raw.items() if k not in cls.META and v.lstrip("-").isdigit()
        }
        return cls(job_id=job_id, counts=counts, **meta)

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    def summary(self) -> dict[str, Any]:
        """Counts grouped for people: rejected by reason/type, adds/removes per schema."""
        out: dict[str, Any] = {}
        for key, value in sorted(self.counts.items()):
            group, _, rest = key.partition(":")
            if rest:
                out.setdefault(group, {})[rest] = value
            else:
                out[key] = value
        return out


class BatchRecord(BaseModel):
    batch_id: str
    job_id: str
    action: Literal["add", "delete"]
    schema_: str = Field(alias="schema")
    size: int
    state: BatchState = BatchState.PENDING
    attempts: int = 0
    failures: int = 0  # transient failures (bounded by TIKTOK_MAX_ATTEMPTS)
    warmup_retries: int = 0
    rate_limited: int = 0
    rate_limited_seconds: float = 0.0
    last_code: int | None = None
    last_message: str = ""
    request_id: str = ""
    created_at: float | None = None
    sent_at: float | None = None
    finished_at: float | None = None
    parent: str = ""
    poison_id: str = ""

    model_config = {"populate_by_name": True}

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BatchRecord:
        data = {k: v for k, v in raw.items() if v != ""}
        return cls(**data)
