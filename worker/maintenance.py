"""Housekeeping run by beat: re-drive stuck jobs (the reconciler) and enqueue scheduled refreshes.

A worker killed with SIGKILL leaves its messages unacked until the broker's visibility timeout
(an hour by default); the reconciler notices within STUCK_JOB_SECONDS instead and re-drives the
job from its recorded phase. Every step it re-drives is idempotent, and copies of a task that
meet (the re-drive and, later, the restored original) are kept apart by the job's run claim.

What counts as stuck (no progress for STUCK_JOB_SECONDS, and nothing alive working on it):
- before sending (queued, waiting, staging, staged, planning): the job record has not changed
  (`updated_at`; a waiting job beats on every poll), no execution holds the job's run claim and
  the audience lock is not held for it: `tiktok.refresh_audience` is sent again;
- sending or finalizing: no batch of the job has been handled (`active_at`, written by every
  send attempt, rate-limit waits included): its pending batches are sent again, or finalize when
  every batch has finished.
Each re-drive counts in the job's `redrives` and resets its clock, so a job that stays stuck is
re-driven once per STUCK_JOB_SECONDS, never once per pass: duplicates stay bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog

from worker.models import AT_REST, JobStatus
from worker.pipeline import Step, locks, runs
from worker.runtime import Runtime

log = structlog.get_logger(__name__)

REFRESH = "refresh"  # a re-drive that re-sends tiktok.refresh_audience
SENDING = ("sending", "finalizing")
_SCAN = 500  # job records read per pipeline


def _last_progress(fields: list[bytes | None]) -> float:
    return max((float(v) for v in fields if v), default=0.0)


def reconcile(rt: Runtime, now: float | None = None) -> Iterator[tuple[str, Step | str]]:
    """Yield (job_id, what to re-send) for every job stuck past the deadline.

    Only the active index is read (jobs not known to be at rest), never the whole history: a
    pass costs what is in flight. Jobs found at rest (or expired) leave the index here."""
    store = rt.store
    now = now or time.time()
    deadline = now - rt.settings.stuck_job_seconds
    ids = store.active_jobs()
    resting: list[str] = []
    for i in range(0, len(ids), _SCAN):
        chunk = ids[i : i + _SCAN]
        pipe = store.r.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hmget(
                store.keys.job(job_id),
                "status",
                "created_at",
                "updated_at",
                "active_at",
                "redriven_at",
            )
        for job_id, (status, *times) in zip(chunk, pipe.execute(), strict=True):
            if status is None or status.decode() in AT_REST:
                resting.append(job_id)
                continue
            if _last_progress(times) >= deadline:
                continue
            step = redrive(rt, job_id, now)
            if step is not None:
                yield job_id, step
    store.deactivate_jobs(resting)


def redrive(
    rt: Runtime, job_id: str, now: float | None = None, force: bool = False
) -> Step | str | None:
    """What re-drives this job from its recorded phase; None while something still works on it."""
    store = rt.store
    job = store.job(job_id)
    if job is None or job.status in AT_REST:
        return None
    d, a = job.destination_id, job.audience_id
    if job.phase in SENDING:
        done = job.count("batches_finished") >= job.count("batches_total")
        pending = [] if done else store.pending_batches(job_id)
        locks(rt).renew(d, a, job_id)  # a lapsed lease comes back to the job that owns the audience
        step: Step | str = Step(send=pending, finalize=done)
    else:
        alive = runs(rt).held(job_id) or locks(rt).holder(d, a) == job_id
        if alive and not force:
            return None  # staging or planning: the execution renews its claims as it goes
        step = REFRESH
    store.update_job(job_id, redriven_at=now or time.time())
    store.count(job_id, {"redrives": 1})
    log.warning(
        "job_redriven",
        job_id=job_id,
        phase=job.phase,
        status=str(job.status),
        batches=len(step.send) if isinstance(step, Step) else None,
        finalize=step.finalize if isinstance(step, Step) else None,
    )
    return step


def resume(rt: Runtime, job_id: str) -> tuple[str, Step | str]:
    """By hand: send an auth_failed job's parked batches, or re-drive a stuck job now."""
    store = rt.store
    job = store.job(job_id)
    spec = store.job_spec(job_id)
    if job is None or spec is None:
        raise LookupError(f"unknown job {job_id!r}")
    if job.status == JobStatus.AUTH_FAILED:
        dest = store.require_destination(job.destination_id)
        if dest.status != "active":
            raise ValueError(
                f"destination {dest.id} still has a refused token: run "
                f"`tiktok-sync destination update-token {dest.id} --access-token ...` first"
            )
        if locks(rt).newer_started(job.destination_id, job.audience_id, spec.created_at):
            store.update_job(
                job_id, status=JobStatus.SUPERSEDED, message="a newer refresh ran meanwhile"
            )
            return job_id, Step()
        lk = locks(rt).acquire(job.destination_id, job.audience_id, job_id, spec.created_at)
        if lk.value not in ("acquired", "owned"):
            raise ValueError(f"another refresh of this audience is running ({lk}); resume it later")
        unparked = store.unpark(job_id)
        store.r.delete(store.keys.job_finalize(job_id))
        store.update_job(
            job_id, status=JobStatus.RUNNING, phase="sending", message="resumed", finished_at=None
        )
        return job_id, Step(send=unparked, finalize=not unparked)
    if job.status == JobStatus.HELD:
        raise ValueError(
            f"job {job_id} is held by the mass-delete guard: {job.message} "
            f"(`tiktok-sync approve {job_id}` sends it)"
        )
    if job.status in AT_REST:
        raise ValueError(f"job {job_id} is {job.status}: nothing to resume")
    step = redrive(rt, job_id, force=True)
    assert step is not None
    return job_id, step


def enqueue_due_refreshes(rt: Runtime, app: Any, now: float | None = None) -> list[str]:
    """Enqueue a refresh for each scheduled link that is due; once, even with two beats."""
    from worker import api  # late: api imports the Celery app lazily too

    now = now or time.time()
    out = []
    for link in rt.store.links():
        if not link.refresh_every_seconds or not link.members_uri:
            continue
        due = link.next_refresh_at or 0
        if due > now:
            continue
        # The claim names the due time being served: every beat that read this due time races
        # for one key, and a beat that reads the link after the winner's update sees it not due.
        claim = rt.store.keys.schedule_claim(link.destination_id, link.audience_id, due)
        if not rt.store.r.set(claim, 1, nx=True, ex=int(link.refresh_every_seconds) + 3600):
            continue  # another beat (or an earlier tick) enqueued this due refresh already
        every = link.refresh_every_seconds
        # Keep the cadence (no drift), but after downtime run once, not once per missed period.
        next_at = due + every if due + every > now else now + every
        uri = (
            time.strftime(link.members_uri, time.gmtime(now))
            if "%" in link.members_uri
            else link.members_uri
        )
        try:
            job_id = api.enqueue_refresh(
                link.destination_id, link.audience_id, members=uri, rt=rt, app=app
            )
        except (
            LookupError,
            ValueError,
        ) as error:  # unlinked meanwhile, or a bad URI: skip this link
            log.warning("scheduled_refresh_failed", audience_id=link.audience_id, error=str(error))
            continue
        finally:
            rt.store.update_link(link.destination_id, link.audience_id, next_refresh_at=next_at)
        out.append(job_id)
    return out
