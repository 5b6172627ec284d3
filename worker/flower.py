"""What Flower shows of a refresh: its progress as a `task-progress` event and a readable result.

Flower keeps only Celery's own task fields (`state`, `result`, ...), not the extra fields of a
custom event (see celery.events.state.Task._fields). So every task of a job says how far the job
is in two places Flower shows:
- at start, a `task-progress` event: the task's state becomes PROGRESS and its `result` reads
  e.g. `job_1f2e: running, sending: 12/40 batches (12 ok, 0 failed), 10000 rows read`;
- at the end, the same text as the task's return value (the task-succeeded event's `result`).
The event also carries the numbers (job_id, done, total, ...) for other event consumers. Task
arguments stay ids (job id, batch id): never tokens, never identifiers.
"""

from __future__ import annotations

from typing import Any

PROGRESS_EVENT = "task-progress"


def progress_text(job_id: str, progress: dict[str, Any]) -> str:
    """One line for people: status, phase, batches done of total, rows read."""
    status, phase = progress.get("status", ""), progress.get("phase", "")
    head = f"{job_id}: {status}"
    if phase and phase not in ("done", status):
        head += f", {phase}"
    parts = []
    if progress.get("total"):
        outcome = f"{progress['succeeded']} ok, {progress['failed']} failed"
        if progress.get("parked"):
            outcome += f", {progress['parked']} parked"
        parts.append(f"{progress['done']}/{progress['total']} batches ({outcome})")
    if progress.get("rows"):
        parts.append(f"{progress['rows']} rows read")
    return head + (": " + ", ".join(parts) if parts else "")


def send_progress(task: Any, job_id: str, progress: dict[str, Any]) -> None:
    """Send the job's progress as a custom task event of the running task (best effort)."""
    request = task.request
    if request.called_directly or request.is_eager or not request.id:
        return
    # retry=False: a lost progress event is not worth holding the task on a broker hiccup.
    task.send_event(
        PROGRESS_EVENT,
        retry=False,
        job_id=job_id,
        result=progress_text(job_id, progress),
        **{k: progress[k] for k in ("status", "phase", "done", "total", "succeeded", "failed")},
    )
