"""The one base task: binds log context, turns a pipeline `Step` into Celery calls, retries on
Redis hiccups. Task bodies stay plain calls into worker/."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from celery import Task

from worker.pipeline import Step

log = structlog.get_logger(__name__)


class SyncTask(Task):
    abstract = True
    acks_late = True
    max_retries = None  # our own policies bound retries (RetryPolicy, the lock wait)
    autoretry_for = (redis.ConnectionError, redis.TimeoutError)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task=self.name, task_id=task_id)

    def follow(self, step: Step, job_id: str) -> None:
        """Enqueue what the step asks for; re-schedule this task last (retry raises)."""
        for part, start, end in step.stage:
            self.app.send_task("tiktok.stage_part", args=[job_id, part, start, end])
        if step.plan:
            self.app.send_task("tiktok.plan_batches", args=[job_id])
        for batch_id in step.send:
            self.app.send_task("tiktok.send_batch", args=[batch_id])
        if step.finalize:
            self.app.send_task("tiktok.finalize", args=[job_id])
        if step.wait is not None:
            raise self.retry(countdown=max(0.0, step.wait))
