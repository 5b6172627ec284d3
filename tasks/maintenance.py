"""Periodic tasks (beat): the reconciler that re-drives stuck jobs, and scheduled refreshes."""

from __future__ import annotations

from tasks.base import SyncTask
from worker import maintenance, pipeline
from worker.app import app
from worker.runtime import runtime


@app.task(name="tiktok.reconcile", bind=True, base=SyncTask)
def reconcile(self: SyncTask) -> None:
    for job_id, step in maintenance.reconcile(runtime()):
        redrive(self, job_id, step)


def redrive(task: SyncTask, job_id: str, step: pipeline.Step | str) -> None:
    if step == maintenance.REFRESH:
        task.app.send_task("tiktok.refresh_audience", args=[job_id])
    else:
        assert isinstance(step, pipeline.Step)
        task.follow(step, job_id)


@app.task(name="tiktok.enqueue_due_refreshes", bind=True, base=SyncTask)
def enqueue_due_refreshes(self: SyncTask) -> None:
    maintenance.enqueue_due_refreshes(runtime(), self.app)
