"""The one base task: binds log context, turns a pipeline `Step` into Celery calls, retries on
Redis hiccups. Task bodies stay plain calls into worker/."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from celery import Task

from worker import flower, metrics
from worker.keys import job_of_batch
from worker.pipeline import Step
from worker.runtime import runtime

log = structlog.get_logger(__name__)

# What a task's first argument names: a batch id (its job id is the part before the last "-"),
# a job id (every other task that has a string argument), or nothing for beat's tasks. The log
# context, the metrics fold and the progress shown in Flower start from it.
BATCH_TASKS = frozenset({"tiktok.send_batch"})
BEAT_TASKS = frozenset({"tiktok.reconcile", "tiktok.enqueue_due_refreshes"})


def subject_ids(task_name: str, args: Any) -> tuple[str | None, str | None]:
    """(job id, batch id) a task works on, from its arguments."""
    if task_name in BEAT_TASKS or not args or not isinstance(args[0], str):
        return None, None
    if task_name in BATCH_TASKS:
        return job_of_batch(args[0]), args[0]
    return args[0], None


class SyncTask(Task):
    abstract = True
    acks_late = True
    max_retries = None  # our own policies bound retries (RetryPolicy, the lock wait)
    trail = False  # fan-out sends thousands of messages: do not keep their results on the parent
    autoretry_for = (redis.ConnectionError, redis.TimeoutError)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task=self.name, task_id=task_id)
        job_id, batch_id = subject_ids(self.name, args)
        if job_id is None:
            return
        ids = {"job_id": job_id, **({"batch_id": batch_id} if batch_id else {})}
        structlog.contextvars.bind_contextvars(**ids)
        progress = self._fold(job_id)
        if progress is not None:
            # Bound once here: every line the task writes carries the job's ids.
            structlog.contextvars.bind_contextvars(
                audience_id=progress["audience_id"], destination_id=progress["destination_id"]
            )
            try:
                flower.send_progress(self, job_id, progress)
            except Exception as error:  # progress in Flower is best effort
                log.warning("progress_event_failed", error=repr(error))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:  # a plain function call (tests): just the body
            return super().__call__(*args, **kwargs)
        # In a worker the request is pushed already: run the body (autoretry wraps `run`).
        job_id, _ = subject_ids(self.name, args)
        try:
            value = self.run(*args, **kwargs)
        finally:
            progress = self._fold(job_id) if job_id else self._beat_ran()
        if value is None and job_id and progress is not None:
            return flower.progress_text(job_id, progress)  # the result Flower shows
        return value

    def _fold(self, job_id: str) -> dict[str, Any] | None:
        """Fold the job's new counts into the metrics totals; returns its progress. Never
        raises: a metrics hiccup must not fail (and ack) the task."""
        try:
            store = runtime().store
            return metrics.fold_job(store.r, store.keys, store.ttl, job_id)
        except Exception as error:
            log.warning("metrics_fold_failed", error=repr(error))
            return None

    def _beat_ran(self) -> None:
        if self.name in BEAT_TASKS:
            try:
                store = runtime().store
                metrics.mark_periodic(store.r, store.keys.prefix, self.name)
            except Exception as error:
                log.warning("metrics_beat_failed", error=repr(error))

    def follow(self, step: Step, job_id: str) -> None:
        """Enqueue what the step asks for; re-schedule this task last (retry raises)."""
        messages: list[tuple[str, list[Any]]] = [
            ("tiktok.stage_part", [job_id, part, start, end]) for part, start, end in step.stage
        ]
        if step.plan:
            messages.append(("tiktok.plan_batches", [job_id]))
        messages.extend(("tiktok.send_batch", [batch_id]) for batch_id in step.send)
        if step.finalize:
            messages.append(("tiktok.finalize", [job_id]))
        if messages:
            # One producer (one pooled connection) for the whole fan-out of a plan.
            with self.app.producer_or_acquire() as producer:
                for name, args in messages:
                    self.app.send_task(name, args=args, producer=producer)
        if step.wait is not None:
            raise self.retry(countdown=max(0.0, step.wait))
