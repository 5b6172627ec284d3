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
    rt = runtime()
    job_id = batch_id.rsplit("-", 1)[0]
    spec = rt.store.job_spec(job_id)
    if spec is not None:
        structlog.contextvars.bind_contextvars(
            job_id=job_id,
            batch_id=batch_id,
            audience_id=spec.audience_id,
            destination_id=spec.destination_id,
        )
    self.follow(deliver(rt, batch_id), job_id)


@app.task(name="tiktok.finalize", bind=True, base=SyncTask)
def finalize(self: SyncTask, job_id: str) -> None:
    structlog.contextvars.bind_contextvars(job_id=job_id)
    pipeline.finalize(runtime(), job_id)
