"""TikTok-side tasks (queue `tiktok`, I/O-bound): send one batch; finalize a job.

The log context (job, batch, audience, destination ids) is bound once, in SyncTask.before_start."""

from __future__ import annotations

from tasks.base import SyncTask
from worker import pipeline
from worker.app import app
from worker.delivery import deliver
from worker.keys import job_of_batch
from worker.runtime import runtime


@app.task(name="tiktok.send_batch", bind=True, base=SyncTask)
def send_batch(self: SyncTask, batch_id: str) -> None:
    self.follow(deliver(runtime(), batch_id), job_of_batch(batch_id))


@app.task(name="tiktok.finalize", bind=True, base=SyncTask)
def finalize(self: SyncTask, job_id: str) -> None:
    pipeline.finalize(runtime(), job_id)
