"""Refresh-side tasks (queue `refresh`, CPU-bound): stage, diff and plan one audience's refresh.

The log context (job, audience, destination ids) is bound once, in SyncTask.before_start."""

from __future__ import annotations

from tasks.base import SyncTask
from worker import pipeline
from worker.app import app
from worker.runtime import runtime


@app.task(name="tiktok.refresh_audience", bind=True, base=SyncTask)
def refresh_audience(self: SyncTask, job_id: str) -> None:
    self.follow(pipeline.refresh(runtime(), job_id), job_id)


@app.task(name="tiktok.stage_part", bind=True, base=SyncTask)
def stage_part(self: SyncTask, job_id: str, part: int, start: int, end: int) -> None:
    self.follow(pipeline.stage_part(runtime(), job_id, part, start, end), job_id)


@app.task(name="tiktok.plan_batches", bind=True, base=SyncTask)
def plan_batches(self: SyncTask, job_id: str) -> None:
    self.follow(pipeline.plan_after_parts(runtime(), job_id), job_id)
