"""Refresh-side tasks (queue `refresh`, CPU-bound): stage, diff and plan one audience's refresh."""

from __future__ import annotations

import structlog

from tasks.base import SyncTask
from worker import pipeline
from worker.app import app
from worker.runtime import runtime


@app.task(name="tiktok.refresh_audience", bind=True, base=SyncTask)
def refresh_audience(self: SyncTask, job_id: str) -> None:
    rt = runtime()
    spec = rt.store.job_spec(job_id)
    if spec is not None:
        structlog.contextvars.bind_contextvars(
            job_id=job_id, audience_id=spec.audience_id, destination_id=spec.destination_id
        )
    self.follow(pipeline.refresh(rt, job_id), job_id)


def _bind(job_id: str) -> None:
    spec = runtime().store.job_spec(job_id)
    if spec is not None:
        structlog.contextvars.bind_contextvars(
            job_id=job_id, audience_id=spec.audience_id, destination_id=spec.destination_id
        )


@app.task(name="tiktok.stage_part", bind=True, base=SyncTask)
def stage_part(self: SyncTask, job_id: str, part: int, start: int, end: int) -> None:
    _bind(job_id)
    self.follow(pipeline.stage_part(runtime(), job_id, part, start, end), job_id)


@app.task(name="tiktok.plan_batches", bind=True, base=SyncTask)
def plan_batches(self: SyncTask, job_id: str) -> None:
    _bind(job_id)
    self.follow(pipeline.plan_after_parts(runtime(), job_id), job_id)
