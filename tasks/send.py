"""TikTok-side tasks (queue `tiktok`, I/O-bound): send one batch; finalize a job."""

from __future__ import annotations

import structlog

from tasks.base import SyncTask
from worker import pipeline
from worker.app import app
from worker.delivery import deliver
from worker.runtime import runtime


@app.task(name="tiktok.send_batch", bind=True, base=SyncTask)
def send_batch(self: SyncTask, batch_id: str) -> None:
    # The log context (job, batch, audience, destination ids) is bound in before_start.
    self.follow(deliver(runtime(), batch_id), batch_id.rsplit("-", 1)[0])


@app.task(name="tiktok.finalize", bind=True, base=SyncTask)
def finalize(self: SyncTask, job_id: str) -> None:
    structlog.contextvars.bind_contextvars(job_id=job_id)
    pipeline.finalize(runtime(), job_id)
