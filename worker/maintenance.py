"""Housekeeping run by beat: re-drive stuck jobs (the reconciler) and enqueue scheduled refreshes.

A worker killed with SIGKILL leaves its message unacked until the broker's visibility timeout
(an hour by default); the reconciler notices within STUCK_JOB_SECONDS instead, from the job's
recorded phase, and re-drives it. Every step it re-drives is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog

from worker.models import AT_REST, BatchState, JobStatus
from worker.pipeline import Step, locks
from worker.runtime import Runtime

log = structlog.get_logger(__name__)

REFRESH = "refresh"  # a re-drive that re-sends tiktok.refresh_audience


def reconcile(rt: Runtime, now: float | None = None) -> Iterator[tuple[str, Step | str]]:
    """Yield (job_id, what to re-send) for every job stuck past the deadline."""
    store = rt.store
    now = now or time.time()
    deadline = now - rt.settings.stuck_job_seconds
    lk = locks(rt)
    for raw in store.r.zrangebyscore(store.keys.jobs, now - store.ttl, deadline):
        job_id = raw.decode()
        job = store.job(job_id)
        if job is None or job.status in AT_REST:
            continue
        updated = float(store.r.hget(store.keys.job(job_id), "updated_at") or job.created_at)
        if job.phase in ("sending", "finalizing"):
            batches = store.batches(job_id)
            stale = [b.batch_id for b in batches if b.state == BatchState.PENDING
                     and (b.sent_at or b.created_at or 0) < deadline]
            done = job.count("batches_finished") >= job.count("batches_total")
            if stale or done:
                lk.acquire(job.destination_id, job.audience_id, job_id, job.created_at)
                log.warning("job_redriven", job_id=job_id, phase=job.phase, batches=len(stale))
                yield job_id, Step(send=stale, finalize=done)
        elif updated < deadline and lk.holder(job.destination_id, job.audience_id) != job_id:
            log.warning("job_redriven", job_id=job_id, phase=job.phase, status=str(job.status))
            yield job_id, REFRESH


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
            store.update_job(job_id, status=JobStatus.SUPERSEDED, message="a newer refresh ran meanwhile")
            return job_id, Step()
        lk = locks(rt).acquire(job.destination_id, job.audience_id, job_id, spec.created_at)
        if lk.value not in ("acquired", "owned"):
            raise ValueError(f"another refresh of this audience is running ({lk}); resume it later")
        unparked = store.unpark(job_id)
        store.r.delete(store.keys.job_finalize(job_id))
        store.update_job(job_id, status=JobStatus.RUNNING, phase="sending", message="resumed", finished_at=None)
        return job_id, Step(send=unparked, finalize=not unparked)
    if job.status in AT_REST:
        raise ValueError(f"job {job_id} is {job.status}: nothing to resume")
    if job.phase in ("sending", "finalizing"):
        return job_id, Step(send=store.pending_batches(job_id),
                            finalize=job.count("batches_finished") >= job.count("batches_total"))
    return job_id, REFRESH


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
        slot = int(now // link.refresh_every_seconds)
        claim = f"{rt.store.keys.prefix}:sched:{link.destination_id}:{link.audience_id}:{slot}"
        if not rt.store.r.set(claim, 1, nx=True, ex=int(link.refresh_every_seconds) + 60):
            continue  # another beat (or an earlier tick) enqueued this slot already
        uri = time.strftime(link.members_uri, time.gmtime(now)) if "%" in link.members_uri else link.members_uri
        job_id = api.enqueue_refresh(link.destination_id, link.audience_id, members=uri, rt=rt, app=app)
        rt.store.update_link(link.destination_id, link.audience_id,
                             next_refresh_at=(slot + 1) * link.refresh_every_seconds)
        out.append(job_id)
    return out
