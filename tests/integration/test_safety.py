"""Crash and data safety: at-least-once and idempotent steps, one refresh per audience (newest
snapshot wins), the lease over the sending phase, the reconciler and `resume`, the mass-delete
guard, bad input, and no access token anywhere in clear.

Real redis-server and the emulator over HTTP throughout. Tests marked "in-process" drive a job's
steps by plain calls (`drive`), in order, the way the tasks would; the others run real Celery
workers (the session worker, or their own with short deadlines). End states are checked: what the
emulator holds, the ledger, the results store.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from config.celery import celery_config
from scripts.gen_members import generate
from tests.conftest import ADVERTISER, TOKEN, make_settings
from tests.harness import (
    RedisServer,
    WorkerProcess,
    base_env,
    beat_process,
    expected_pairs,
    file_pairs,
    free_port,
    held_pairs,
    wait_until,
)
from worker import api, maintenance, pipeline
from worker.delivery import deliver
from worker.locks import AudienceLocks, JobRuns, LockResult
from worker.models import AT_REST, BatchState, JobRecord, JobSpec, JobStatus
from worker.runtime import Runtime
from worker.sources import iter_inline

pytestmark = pytest.mark.integration

DEST, AUD = "acme", "aud-1"
OWN_STATE_DB, OWN_BROKER_DB, IDLE_BROKER_DB = 6, 7, 8  # workers of their own; nobody consumes 8


class Recorder:
    """A stand-in Celery app: keeps what would have been sent, sends nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, args: Any = None, **_: Any) -> None:
        self.sent.append((name, list(args or [])))


def link(rt: Runtime, audience: str = AUD, token: str = TOKEN, dest: str = DEST) -> str:
    if rt.store.destination(dest) is None:
        api.add_destination(
            "Acme", ADVERTISER, token, destination_id=dest, phone_region="US", rt=rt
        )
    return api.link_audience(dest, audience, name=f"CDP {audience}", rt=rt).tiktok_audience_id


def emails(n: int, prefix: str, start: int = 0) -> list[dict[str, Any]]:
    return [{"email": f"{prefix}.{i}@example.com"} for i in range(start, start + n)]


def pairs_of(members: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return expected_pairs(iter_inline(members), "US")


def ledger(rt: Runtime, audience: str = AUD) -> set[tuple[str, str]]:
    return held_pairs(pipeline.ledger_hashes(rt, DEST, audience))


def counts_add_up(job: JobRecord) -> bool:
    rows = job.count("rows_read")
    parts = job.count("members_valid") + job.count("members_excluded") + job.count("rows_rejected")
    return rows == parts


def drive(rt: Runtime, job_id: str, finalize: bool = True, max_steps: int = 5000) -> JobRecord:
    """Run a job's tasks by plain calls, in order, as the workers would (no queue, no sleeps)."""
    todo: deque[tuple[str, Any]] = deque([("refresh", job_id)])
    for _ in range(max_steps):
        if not todo:
            break
        kind, arg = todo.popleft()
        if kind == "finalize":
            if finalize:
                pipeline.finalize(rt, job_id)
            continue
        if kind == "refresh":
            step = pipeline.refresh(rt, job_id)
        elif kind == "part":
            step = pipeline.stage_part(rt, job_id, *arg)
        elif kind == "plan":
            step = pipeline.plan_after_parts(rt, job_id)
        else:
            step = deliver(rt, arg)
        todo.extend(("part", p) for p in step.stage)
        todo.extend([("plan", None)] if step.plan else [])
        todo.extend(("send", b) for b in step.send)
        todo.extend([("finalize", None)] if step.finalize else [])
        if step.wait is not None:
            todo.append((kind, arg))  # a retry, at once
    job = rt.store.job(job_id)
    assert job is not None
    return job


def new_job(rt: Runtime, audience: str = AUD, **kwargs: Any) -> str:
    """Record a job without sending its message (for `drive` and the reconciler tests)."""
    return api.enqueue_refresh(DEST, audience, rt=rt, app=Recorder(), **kwargs)


def run(rt: Runtime, app: Any, timeout: float = 120, **kwargs: Any) -> JobRecord:
    job_id = api.enqueue_refresh(DEST, kwargs.pop("audience", AUD), rt=rt, app=app, **kwargs)
    return api.wait_for(job_id, timeout=timeout, rt=rt)


# -- 1. at-least-once, idempotent --------------------------------------------------------------
def test_redelivered_batches_and_finalize_change_nothing(rt: Runtime, emulator: Any) -> None:
    """In-process: every batch of a finished job delivered again, and finalize run again."""
    tiktok_id = link(rt)
    members = emails(700, "idem")
    job_id = new_job(rt, inline=members)
    job = drive(rt, job_id)
    assert job.status == JobStatus.SUCCEEDED and job.count("batches_total") == 3
    calls, before = emulator.stats()["mapping_calls"], ledger(rt)
    for batch in rt.store.batches(job_id):
        assert deliver(rt, batch.batch_id) == pipeline.Step()
    pipeline.finalize(rt, job_id)
    assert emulator.stats()["mapping_calls"] == calls
    assert ledger(rt) == before == held_pairs(emulator.members(tiktok_id)) == pairs_of(members)
    again = rt.store.job(job_id)
    assert again is not None and again.finished_at == job.finished_at
    assert again.counts == job.counts


def test_finalize_runs_once_even_when_two_copies_meet(rt: Runtime, emulator: Any) -> None:
    link(rt)
    job_id = new_job(rt, inline=emails(400, "fin"))
    job = drive(rt, job_id, finalize=False)
    assert job.phase == "sending" and job.count("batches_finished") == job.count("batches_total")
    runs = JobRuns(rt.store.r, rt.store.keys, 60)
    other = runs.claim(job_id)  # another finalize is running
    assert other is not None
    pipeline.finalize(rt, job_id)
    job = rt.store.job(job_id)
    assert job is not None and job.status == JobStatus.RUNNING  # this copy did nothing
    runs.release(job_id, other)
    pipeline.finalize(rt, job_id)
    done = rt.store.job(job_id)
    assert done is not None and done.status == JobStatus.SUCCEEDED
    assert rt.store.r.get(rt.store.keys.lock(DEST, AUD)) is None  # the lock went with it


def test_celery_settings_for_at_least_once(settings: Any) -> None:
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    assert conf["task_soft_time_limit"] < conf["task_time_limit"] < visibility
    assert conf["beat_schedule"]["reconcile"]["task"] == "tiktok.reconcile"


def test_planning_again_makes_new_batches_and_orphans_the_old_ones(
    rt: Runtime, emulator: Any
) -> None:
    """In-process. A plan can run twice (its phase lost in a Redis crash while a worker still
    holds a message of the first plan): the second gets new batch ids and fresh counters, and
    the first plan's messages find nothing to send."""
    link(rt)
    job_id = new_job(rt, inline=emails(700, "replan"))
    spec = rt.store.job_spec(job_id)
    assert spec is not None
    pipeline.locks(rt).acquire(DEST, AUD, job_id, spec.created_at)
    pipeline.stage(rt, spec, rt.store.require_destination(DEST))
    pipeline.diff(rt, spec)
    first = pipeline.plan(rt, spec)
    deliver(rt, first[0])
    second = pipeline.plan(rt, spec)
    assert len(second) == len(first) == 3 and not set(first) & set(second)
    job = rt.store.job(job_id)
    assert (
        job is not None and job.count("batches_total") == 3 and job.count("batches_finished") == 0
    )
    calls = emulator.stats()["mapping_calls"]
    assert deliver(rt, first[1]) == pipeline.Step()
    assert emulator.stats()["mapping_calls"] == calls


def test_a_split_snapshot_is_planned_only_from_parts_of_its_latest_split(
    rt: Runtime, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: a copy of the split task does not split again while parts stage; a part that
    was staging when the snapshot was split again does not count; no plan from half a split."""
    tiktok_id = link(rt)
    path = tmp_path / "split.csv"
    generate(path, 20_000, seed=5, invalid_share=0.02)
    job_id = new_job(rt, members=str(path))
    parts = pipeline.refresh(rt, job_id).stage
    assert len(parts) == rt.settings.stage_parts > 1
    assert pipeline.refresh(rt, job_id) == pipeline.Step()  # a copy: its parts keep the lock

    lock = rt.store.keys.lock(DEST, AUD)
    real_stage = pipeline.stage

    def stage_while_split_again(*args: Any, **kwargs: Any) -> Any:
        counts = real_stage(*args, **kwargs)
        rt.store.r.delete(lock)  # the parts went silent past the lease: re-driven, split again
        assert len(pipeline.refresh(rt, job_id).stage) == len(parts)
        return counts

    monkeypatch.setattr(pipeline, "stage", stage_while_split_again)
    assert pipeline.stage_part(rt, job_id, *parts[0]) == pipeline.Step()
    monkeypatch.setattr(pipeline, "stage", real_stage)
    assert rt.store.r.scard(rt.store.keys.job(job_id) + ":parts_done") == 0  # it did not count
    assert pipeline.plan_after_parts(rt, job_id) == pipeline.Step()  # nothing staged in this split
    steps = [pipeline.stage_part(rt, job_id, *part) for part in parts]
    assert [s.plan for s in steps].count(True) == 1  # the last part asks for the plan, once
    for batch_id in pipeline.plan_after_parts(rt, job_id).send:
        deliver(rt, batch_id)
    pipeline.finalize(rt, job_id)
    job = rt.store.job(job_id)
    assert job is not None and job.status == JobStatus.SUCCEEDED and counts_add_up(job)
    assert held_pairs(emulator.members(tiktok_id)) == file_pairs(path, "US") == ledger(rt)


# -- 2. one refresh per audience; the lease covers sending -------------------------------------
def test_a_lapsed_lease_stays_with_a_job_that_is_sending(rt: Runtime) -> None:
    store = rt.store
    lk = AudienceLocks(store.r, store.keys, lease_seconds=30)
    specs = {}
    for i, name in enumerate(("a", "b", "c")):
        specs[name] = JobSpec(
            job_id=name, destination_id=DEST, audience_id=AUD, inline=[], created_at=1000.0 + i
        )
        store.create_job(specs[name])
    lock = store.keys.lock(DEST, AUD)

    assert lk.acquire(DEST, AUD, "a", 1000.0) is LockResult.ACQUIRED
    store.update_job("a", status=JobStatus.RUNNING, phase="sending")
    store.r.delete(lock)  # the lease lapsed: worker dead, or every batch waits on a backoff
    assert lk.acquire(DEST, AUD, "b", 1001.0) is LockResult.WAIT  # no diff against a moving ledger
    assert lk.renew(DEST, AUD, "a") and lk.holder(DEST, AUD) == "a"  # a's next batch takes it back
    store.update_job("a", status=JobStatus.SUCCEEDED, phase="done")
    assert lk.release(DEST, AUD, "a")
    assert lk.acquire(DEST, AUD, "b", 1001.0) is LockResult.ACQUIRED
    assert not lk.renew(DEST, AUD, "a")  # a no longer owns the audience

    # Before sending, a lapsed lease is up for grabs: the dead job is superseded, not resumed.
    store.update_job("b", status=JobStatus.RUNNING, phase="staging")
    store.r.delete(lock)
    assert lk.acquire(DEST, AUD, "c", 1002.0) is LockResult.ACQUIRED
    assert not lk.renew(DEST, AUD, "b")
    assert lk.acquire(DEST, AUD, "b", 1001.0) is LockResult.SUPERSEDED


def test_a_job_run_is_claimed_by_one_execution_at_a_time(rt: Runtime) -> None:
    runs = JobRuns(rt.store.r, rt.store.keys, lease_seconds=30)
    first = runs.claim("j")
    assert first and runs.claim("j") is None and runs.held("j")
    assert runs.renew("j", first) and not runs.renew("j", "someone-else")
    runs.release("j", "someone-else")
    assert runs.held("j")
    runs.release("j", first)
    second = runs.claim("j")
    assert second and second != first
    rt.store.r.delete(runs.key("j"))  # lapsed: the execution died
    assert not runs.renew("j", second)


def test_deliver_renews_the_lease_and_sends_nothing_once_another_job_has_the_audience(
    rt: Runtime, emulator: Any
) -> None:
    """In-process."""
    tiktok_id = link(rt)
    job_id = new_job(rt, inline=emails(700, "lease"))
    step = pipeline.refresh(rt, job_id)
    first, second, third = step.send
    lock = rt.store.keys.lock(DEST, AUD)
    rt.store.r.delete(lock)  # the lease lapsed while the batches waited
    deliver(rt, first)
    assert rt.store.r.get(lock) == job_id.encode()  # taken back by the job that owns the audience
    # Now another job has the audience (it could only get it if this one had lost it).
    rt.store.r.set(lock, "other")
    rt.store.r.set(lock + ":owner", "other")
    calls = emulator.stats()["mapping_calls"]
    deliver(rt, second)
    batch = rt.store.batch(second)
    assert batch is not None and batch.state == BatchState.FAILED
    assert "another refresh holds the audience" in batch.last_message
    assert emulator.stats()["mapping_calls"] == calls
    assert held_pairs(emulator.members(tiktok_id)) == ledger(rt)  # the ledger stays exact
    assert third


@pytest.mark.parametrize("order", ["older_first", "newer_first"])
def test_two_refreshes_enqueued_together_end_with_the_newest_snapshot(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, order: str
) -> None:
    tiktok_id = link(rt)
    assert run(rt, celery_app, inline=emails(300, "base")).status == JobStatus.SUCCEEDED
    older = emails(260, "base") + emails(60, "older")  # either order stays under the guard
    newer = emails(270, "base", start=30) + emails(60, "newer")
    recorder = Recorder()
    a = api.enqueue_refresh(DEST, AUD, inline=older, rt=rt, app=recorder)
    b = api.enqueue_refresh(DEST, AUD, inline=newer, rt=rt, app=recorder)
    messages = recorder.sent if order == "older_first" else recorder.sent[::-1]
    for name, args in messages:  # both arrive at once; in this order
        celery_app.send_task(name, args=args)
    job_a = api.wait_for(a, timeout=120, rt=rt)
    job_b = api.wait_for(b, timeout=120, rt=rt)
    assert job_b.status == JobStatus.SUCCEEDED, job_b.message
    allowed = (
        {JobStatus.SUPERSEDED}
        if order == "newer_first"
        else {JobStatus.SUPERSEDED, JobStatus.SUCCEEDED}
    )
    assert job_a.status in allowed, job_a.message
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(newer) == ledger(rt)


def test_while_one_refresh_runs_only_the_newest_waiting_snapshot_syncs(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any
) -> None:
    tiktok_id = link(rt)
    assert run(rt, celery_app, inline=emails(100, "base")).status == JobStatus.SUCCEEDED
    lk = pipeline.locks(rt)
    assert lk.acquire(DEST, AUD, "running-elsewhere", time.time()) is LockResult.ACQUIRED
    middle = api.enqueue_refresh(
        DEST, AUD, inline=emails(100, "mid"), allow_mass_delete=True, rt=rt, app=celery_app
    )
    newest_members = emails(60, "base") + emails(40, "newest")
    newest = api.enqueue_refresh(DEST, AUD, inline=newest_members, rt=rt, app=celery_app)
    waiting = lambda: all(rt.store.job(j).status == JobStatus.WAITING for j in (middle, newest))  # type: ignore[union-attr]  # noqa: E731
    wait_until(waiting, timeout=60, what="both refreshes waiting")
    lk.release(DEST, AUD, "running-elsewhere")
    assert api.wait_for(middle, timeout=120, rt=rt).status == JobStatus.SUPERSEDED
    assert api.wait_for(newest, timeout=120, rt=rt).status == JobStatus.SUCCEEDED
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(newest_members)


# -- 3. the reconciler and resume --------------------------------------------------------------
def test_reconciler_redrives_a_silent_job_from_its_phase_once_per_deadline(
    rt: Runtime, emulator: Any
) -> None:
    """In-process, with the reconciler's clock moved forward instead of waiting."""
    link(rt)
    link(rt, "aud-2")
    stuck = rt.settings.stuck_job_seconds
    lost = new_job(rt, inline=emails(10, "lost"))  # its message never reached a worker
    sending = new_job(rt, audience="aud-2", inline=emails(700, "send"))
    step = pipeline.refresh(rt, sending)
    assert len(step.send) == 3
    assert dict(maintenance.reconcile(rt)) == {}  # nothing is late yet

    later = time.time() + stuck + 1
    redriven = dict(maintenance.reconcile(rt, now=later))
    assert redriven[lost] == maintenance.REFRESH
    assert isinstance(redriven[sending], pipeline.Step)
    assert sorted(redriven[sending].send) == sorted(step.send) and not redriven[sending].finalize
    assert rt.store.job(sending).count("redrives") == 1  # type: ignore[union-attr]
    # Its clock starts again: not re-driven on every pass (no duplicate storm).
    assert dict(maintenance.reconcile(rt, now=later + 1)) == {}

    # Progress within the deadline: not stuck. A batch handled just before `now` counts.
    even_later = later + stuck + 1
    rt.store.r.hset(rt.store.keys.job(sending), "active_at", even_later - 1)
    assert sending not in dict(maintenance.reconcile(rt, now=even_later))
    # Every batch finished but finalize was lost: the re-drive is finalize.
    for batch_id in step.send:
        deliver(rt, batch_id)
    much_later = even_later + 2 * stuck
    again = dict(maintenance.reconcile(rt, now=much_later))
    assert again[sending] == pipeline.Step(send=[], finalize=True)


def test_reconciler_reads_only_jobs_in_motion(rt: Runtime, emulator: Any) -> None:
    """In-process. Finished jobs leave the active index on the next pass (the reconciler's cost
    is what is in flight, not the history); a held job leaves it and comes back when approved;
    a job set in motion between the status read and the removal stays."""
    link(rt)
    done = new_job(rt, inline=emails(50, "done"))
    assert drive(rt, done).status == JobStatus.SUCCEEDED
    queued = new_job(rt, inline=emails(50, "queued"))
    assert set(rt.store.active_jobs()) == {done, queued}
    assert dict(maintenance.reconcile(rt)) == {}
    assert rt.store.active_jobs() == [queued]  # done left; queued is not late yet

    held = drive(rt, queued, finalize=False)  # newer than `done`: it would delete all 50
    assert held.status == JobStatus.HELD
    list(maintenance.reconcile(rt))
    assert rt.store.active_jobs() == []
    pipeline.approve(rt, queued)
    assert rt.store.active_jobs() == [queued]
    # The race: a pass read `held` just before approve; its removal must not drop the job.
    assert rt.store.deactivate_jobs([queued]) == 0
    assert rt.store.active_jobs() == [queued]
    assert drive(rt, queued).status == JobStatus.SUCCEEDED
    assert rt.store.deactivate_jobs([queued, "job_gone"]) == 1
    assert rt.store.active_jobs() == []


def test_reconciler_leaves_alone_what_is_alive(rt: Runtime, emulator: Any) -> None:
    link(rt)
    stuck = rt.settings.stuck_job_seconds
    later = time.time() + stuck + 1
    staging = new_job(rt, inline=emails(10, "a"))
    runs = JobRuns(rt.store.r, rt.store.keys, 600)
    token = runs.claim(staging)  # an execution is staging it
    assert token
    assert staging not in dict(maintenance.reconcile(rt, now=later))
    runs.release(staging, token)
    pipeline.locks(rt).acquire(DEST, AUD, staging, 0.0)  # its split parts keep the lock
    assert staging not in dict(maintenance.reconcile(rt, now=later))
    rt.store.update_job(staging, status=JobStatus.HELD, phase="staged")
    assert staging not in dict(maintenance.reconcile(rt, now=later))  # at rest: approve, not us


def test_resume_by_hand_redrives_now_and_says_why_it_cannot(rt: Runtime, emulator: Any) -> None:
    link(rt)
    job_id = new_job(rt, inline=emails(10, "r"))
    assert maintenance.resume(rt, job_id) == (job_id, maintenance.REFRESH)
    drive(rt, job_id)
    with pytest.raises(ValueError, match="nothing to resume"):
        maintenance.resume(rt, job_id)
    held = new_job(rt, inline=[])
    assert drive(rt, held).status == JobStatus.HELD
    with pytest.raises(ValueError, match="approve"):
        maintenance.resume(rt, held)
    with pytest.raises(LookupError):
        maintenance.resume(rt, "job_nope")


@contextlib.contextmanager
def own_workers(
    redis_server: RedisServer, emulator: Any, tmp_path: Path, beat: bool, **extra: Any
) -> Iterator[tuple[Runtime, Celery, dict[str, str]]]:
    """A prefork worker (and beat) with short deadlines, on databases of their own. The broker's
    VISIBILITY_TIMEOUT stays at its default hour: whatever finishes a job sooner is ours."""
    base = redis_server.url.rsplit("/", 1)[0]
    state, broker = f"{base}/{OWN_STATE_DB}", f"{base}/{OWN_BROKER_DB}"
    for url in (state, broker):
        redis.Redis.from_url(url).flushdb()
    knobs = {
        "stuck_job_seconds": 10,
        "reconcile_interval_seconds": 1,
        "lock_lease_seconds": 5,
        "lock_wait_seconds": 1,
        "tiktok_batch_size": 300,
        **extra,
    }
    env = base_env(state, emulator.base_url, broker_url=broker, **knobs)
    local = Runtime.build(make_settings(env))
    app = Celery("safety-tests")
    app.config_from_object(celery_config(local.settings))
    procs: list[WorkerProcess] = []
    if beat:
        beat_proc = beat_process(env, tmp_path / "beat-schedule", tmp_path / "beat.log")
        procs.append(beat_proc.start())
    try:
        yield local, app, env
    finally:
        for proc in procs:
            proc.stop()
        app.close()


def sending_job(
    local: Runtime, app: Celery, env: dict[str, str], log_path: Path, prefix: str
) -> tuple[WorkerProcess, list[dict[str, Any]], str]:
    """A prefork worker started, 6000 members enqueued, returned once batches are going out."""
    worker = WorkerProcess(env, pool="prefork", concurrency=2, log_path=log_path).start()
    members = emails(6000, prefix)
    job_id = api.enqueue_refresh(DEST, AUD, inline=members, rt=local, app=app)
    wait_sending(local, job_id)
    return worker, members, job_id


def wait_sending(rt: Runtime, job_id: str, batches: int = 2) -> None:
    def sending() -> bool:
        job = rt.store.job(job_id)
        return (
            job is not None and job.phase == "sending" and job.count("batches_finished") >= batches
        )

    wait_until(sending, timeout=120, what="the job sending")


@pytest.mark.parametrize("recovery", ["reconciler", "resume"])
def test_a_job_whose_worker_was_killed_is_finished_by_another_worker(
    rt: Runtime, redis_server: RedisServer, emulator: Any, tmp_path: Path, recovery: str
) -> None:
    """SIGKILL the whole worker (main process too) mid-send: its messages stay unacked for the
    broker's hour, so only the reconciler (beat) or `resume` can finish the job."""
    emulator.set_faults(latency_ms=250)  # batches in flight when the kill comes
    with own_workers(redis_server, emulator, tmp_path, beat=recovery == "reconciler") as (
        local,
        app,
        env,
    ):
        tiktok_id = link(local)
        first, members, job_id = sending_job(local, app, env, tmp_path / "w1.log", "kill")
        first.kill()
        fresh = WorkerProcess(
            env, pool="prefork", concurrency=2, log_path=tmp_path / "w2.log"
        ).start()
        try:
            if recovery == "resume":
                # The fresh worker drains the queue, but the dead worker's batches never return.
                with pytest.raises(TimeoutError):
                    api.wait_for(job_id, timeout=20, rt=local)
                api.resume(job_id, rt=local, app=app)
            job = api.wait_for(job_id, timeout=180, rt=local)
        finally:
            fresh.stop()
        assert job.status == JobStatus.SUCCEEDED, job.message
        assert job.count("redrives") >= 1
        assert held_pairs(emulator.members(tiktok_id)) == pairs_of(members) == ledger(local)


def test_a_worker_outlives_a_redis_crash_and_the_job_ends_exact(
    rt: Runtime, emulator: Any, tmp_path: Path
) -> None:
    """SIGKILL redis-server (append-only) while a prefork worker holds unacked batch messages,
    start it again: the same worker process reconnects and the job ends exact. (Celery 5.7 alone
    can stop the worker with "Unrecoverable error" here, a race the chaos run hits within a few
    crashes: worker/consumer.py; tests/unit/test_consumer.py pins the close it relies on.)"""
    server = RedisServer(appendonly=True).start()
    emulator.set_faults(latency_ms=200)  # batches in flight (delivered, unacked) at the crash
    worker = None
    try:
        with own_workers(server, emulator, tmp_path, beat=True) as (local, app, env):
            tiktok_id = link(local)
            worker, members, job_id = sending_job(local, app, env, tmp_path / "worker.log", "crash")
            assert server.proc is not None  # SIGKILL: no acknowledged write is lost (AOF)
            server.proc.kill()
            server.proc.wait(10)
            time.sleep(1.0)
            server.start()
            job = api.wait_for(job_id, timeout=180, rt=local)
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
            assert "Unrecoverable error" not in worker.log()
            assert job.status == JobStatus.SUCCEEDED, job.message
            assert held_pairs(emulator.members(tiktok_id)) == pairs_of(members) == ledger(local)
    finally:
        emulator.set_faults(latency_ms=None)
        if worker is not None:
            worker.stop()
        server.stop()


# -- 4. the mass-delete guard ------------------------------------------------------------------
@pytest.mark.parametrize("empty", ["ndjson", "csv_header_only"])
def test_an_empty_snapshot_is_held_and_deletes_nothing_until_approved(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, tmp_path: Path, empty: str
) -> None:
    tiktok_id = link(rt)
    members = emails(500, "keep")
    assert run(rt, celery_app, inline=members).status == JobStatus.SUCCEEDED
    path = tmp_path / ("empty.ndjson" if empty == "ndjson" else "empty.csv")
    path.write_text("" if empty == "ndjson" else "user_id,email,phone\n")
    held = run(rt, celery_app, members=str(path))
    assert held.status == JobStatus.HELD
    assert "would delete 500 of 500 synced ids (100.0%)" in held.message
    assert (
        "no valid identifiers" in held.message
        and f"tiktok-sync approve {held.job_id}" in held.message
    )
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(members) == ledger(rt)

    api.approve(held.job_id, rt=rt, app=celery_app)
    approved = api.wait_for(held.job_id, timeout=120, rt=rt)
    assert approved.status == JobStatus.SUCCEEDED, approved.message
    assert held_pairs(emulator.members(tiktok_id)) == set() == ledger(rt)


def test_a_large_share_of_deletes_is_held_unless_allowed(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any
) -> None:
    tiktok_id = link(rt)
    assert run(rt, celery_app, inline=emails(100, "m")).status == JobStatus.SUCCEEDED
    shrunk = emails(40, "m")  # 60% of the synced ids would go
    held = run(rt, celery_app, inline=shrunk)
    assert held.status == JobStatus.HELD and "60 of 100" in held.message
    assert "MASS_DELETE_THRESHOLD=50%" in held.message
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(emails(100, "m"))

    allowed = run(rt, celery_app, inline=shrunk, allow_mass_delete=True)  # --allow-mass-delete
    assert allowed.status == JobStatus.SUCCEEDED
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(shrunk)
    smaller = run(rt, celery_app, inline=emails(25, "m"))  # 37.5%: under the threshold
    assert smaller.status == JobStatus.SUCCEEDED
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(emails(25, "m"))
    # The held job is older than what synced since: approving it now deletes nothing.
    api.approve(held.job_id, rt=rt, app=celery_app)
    assert api.wait_for(held.job_id, timeout=60, rt=rt).status == JobStatus.SUPERSEDED
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(emails(25, "m"))


# -- 5. bad input ------------------------------------------------------------------------------
def _bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (members URI, what the failure message says)."""
    header_only = b"email,phone\n"
    good = header_only + b"".join(f"bad{i}@example.com,\n".encode() for i in range(500))
    (tmp_path / "truncated.csv.gz").write_bytes(gzip.compress(good)[:-40])
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty_header.csv").write_bytes(b",,\nx@example.com,,\n")
    (tmp_path / "no_id_column.csv").write_bytes(b"name,city\nann,paris\n")
    return {
        "missing file": (str(tmp_path / "missing.csv"), "cannot open"),
        "unreachable URL": (f"http://127.0.0.1:{free_port()}/export.csv", "cannot fetch"),
        "truncated gz": (str(tmp_path / "truncated.csv.gz"), "truncated"),
        "binary data": (str(tmp_path / "binary.csv"), "binary file"),
        "empty header": (str(tmp_path / "empty_header.csv"), "header is empty"),
        "unknown columns": (str(tmp_path / "no_id_column.csv"), "no identifier column"),
    }


def test_unreadable_snapshots_fail_clearly_and_lose_nothing(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, tmp_path: Path
) -> None:
    tiktok_id = link(rt)
    members = emails(300, "safe")
    assert run(rt, celery_app, inline=members).status == JobStatus.SUCCEEDED
    for name, (uri, says) in _bad_sources(tmp_path).items():
        job = run(rt, celery_app, members=uri)
        assert job.status == JobStatus.FAILED, name
        assert "cannot read the members" in job.message and says in job.message, (name, job.message)
        assert "Nothing was sent" in job.message
        assert held_pairs(emulator.members(tiktok_id)) == pairs_of(members) == ledger(rt), name


def test_bad_requests_are_refused_at_enqueue_with_a_clear_error(rt: Runtime, emulator: Any) -> None:
    link(rt)
    with pytest.raises(LookupError, match="unknown destination 'nope'"):
        api.enqueue_refresh("nope", AUD, inline=[], rt=rt, app=Recorder())
    with pytest.raises(LookupError, match="is not linked"):
        api.enqueue_refresh(DEST, "aud-unknown", inline=[], rt=rt, app=Recorder())
    with pytest.raises(ValueError, match="format"):
        api.enqueue_refresh(DEST, AUD, members="x.xml", format="xml", rt=rt, app=Recorder())
    # A destination removed after the job was enqueued: the job fails, it does not hang.
    job_id = new_job(rt, inline=emails(3, "x"))
    rt.store.remove_destination(DEST)
    job = drive(rt, job_id)
    assert job.status == JobStatus.FAILED and "unknown destination 'acme'" in job.message


def test_a_100_mb_line_is_one_counted_rejection(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, tmp_path: Path
) -> None:
    tiktok_id = link(rt)
    path = tmp_path / "huge_line.csv"
    with open(path, "wb") as f:
        f.write(b"email,phone\n")
        f.writelines(f"before{i}@example.com,\n".encode() for i in range(1000))
        f.write(b"x" * (100 << 20) + b"@example.com,\n")  # 100 MB in one line
        f.writelines(f"after{i}@example.com,\n".encode() for i in range(1000))
    job = run(rt, celery_app, members=str(path), timeout=300)
    assert job.status == JobStatus.SUCCEEDED, job.message
    assert job.count("rows_read") == 2001 and job.count("members_valid") == 2000
    assert job.count("rejected_row:line_too_long") == 1 == job.count("rows_rejected")
    assert counts_add_up(job)
    kept = [{"email": f"{p}{i}@example.com"} for p in ("before", "after") for i in range(1000)]
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(kept) == ledger(rt)
    path.unlink()


_COLUMNS = [
    "user_id",
    "email",
    "phone",
    "idfa",
    "gaid",
    "email_sha256",
    "phone_sha256",
    "consent",
    "junk",
]
_cells = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "a@b.co",
            "+14155552671",
            "(415) 555-2671",
            "0044 20 7946 0958",
            "yes",
            "no",
            "",
            "00000000-0000-0000-0000-000000000000",
            "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "e" * 64,
            "E" * 63,
            '"',
            '""',
            "\x00",
            "\ufeff",
        ]
    ),
)
_csv = st.tuples(
    st.lists(st.sampled_from(_COLUMNS), min_size=1, max_size=6),
    st.lists(st.lists(_cells, max_size=7), max_size=25),
).map(lambda t: ("\n".join([",".join(t[0]), *(",".join(r) for r in t[1])]) + "\n").encode())
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _cells,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_COLUMNS), inner, max_size=3)
    ),
    max_leaves=8,
)
_ndjson = st.lists(
    st.one_of(
        st.dictionaries(st.sampled_from(_COLUMNS), _json_values, max_size=5).map(json.dumps),
        st.text(max_size=40),
    ),
    max_size=25,
).map(lambda lines: ("\n".join(lines) + "\n").encode())
_inputs = st.one_of(
    st.tuples(st.just("snapshot.csv"), _csv),
    st.tuples(st.just("snapshot.ndjson"), _ndjson),
    st.tuples(
        st.sampled_from(["blob.csv", "blob.ndjson", "blob.csv.gz", "blob"]), st.binary(max_size=600)
    ),
    st.tuples(st.just("snapshot.csv.gz"), _csv.map(gzip.compress)),
    st.tuples(st.just("cut.csv.gz"), _csv.map(lambda b: gzip.compress(b)[: max(1, len(b) // 3)])),
)


@given(_inputs, st.booleans())
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_job_level_fuzz_garbage_in_never_a_wrong_audience(
    rt: Runtime, emulator: Any, tmp_path: Path, source: tuple[str, bytes], allow: bool
) -> None:
    """In-process: any input ends at rest, counts add up, and TikTok holds either the old set
    (failed / held) or exactly what the input says (the reference parser's reading of it)."""
    name, data = source
    tiktok_id = link(rt)
    base = emails(30, "fuzz")
    if held_pairs(emulator.members(tiktok_id)) != pairs_of(base):
        drive(rt, new_job(rt, inline=base, allow_mass_delete=True))
    path = tmp_path / f"{uuid.uuid4().hex[:8]}-{name}"
    path.write_bytes(data)
    job = drive(rt, new_job(rt, members=str(path), allow_mass_delete=allow))
    assert job.status in AT_REST
    event(f"{name.rsplit('.', 1)[-1]}: {job.status}")  # --hypothesis-show-statistics
    held = held_pairs(emulator.members(tiktok_id))
    if job.status == JobStatus.FAILED:
        assert job.message.startswith("cannot read the members:"), job.message
        assert held == pairs_of(base)
    else:
        assert counts_add_up(job), job.counts
        if job.status == JobStatus.SUCCEEDED:
            assert held == file_pairs(path, "US") == ledger(rt)
        else:
            assert job.status == JobStatus.HELD and not allow
            assert held == pairs_of(base)
    path.unlink()


# -- 6. secrets --------------------------------------------------------------------------------
def _texts(raw: bytes) -> Iterator[bytes]:
    """A stored value, plus the decoded body when it is a kombu message (base64 JSON)."""
    yield raw
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        doc = json.loads(raw)
        for item in doc if isinstance(doc, list) else [doc]:
            if isinstance(item, dict) and isinstance(item.get("body"), str):
                yield base64.b64decode(item["body"])


def dump_redis(url: str) -> bytes:
    """Every key and value of every database of the server, as one blob."""
    out: list[bytes] = []
    for db in range(16):
        r = redis.Redis.from_url(url.rsplit("/", 1)[0] + f"/{db}")
        for key in r.scan_iter(count=1000):
            out.append(key)
            kind = r.type(key).decode()
            values: list[bytes] = []
            if kind == "string":
                values = [r.get(key) or b""]
            elif kind == "hash":
                values = [x for kv in r.hgetall(key).items() for x in kv]
            elif kind == "list":
                values = r.lrange(key, 0, -1)
            elif kind == "set":
                values = list(r.smembers(key))
            elif kind == "zset":
                values = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                values = [json.dumps(e, default=repr).encode() for e in r.xrange(key)]
            for value in values:
                out.extend(_texts(value))
    return b"\n".join(out)


def test_no_access_token_in_redis_messages_or_logs(
    rt: Runtime,
    emulator: Any,
    worker: WorkerProcess,
    celery_app: Any,
    redis_server: RedisServer,
    capfd: Any,
) -> None:
    first, second = (f"tok-{kind}-{uuid.uuid4().hex}" for kind in ("first", "second"))
    for token in (first, second):
        emulator.add_token(token, [ADVERTISER])
    tiktok_id = link(rt, token=first, dest="vault")
    recorder = Recorder()
    ok = api.enqueue_refresh("vault", AUD, inline=emails(700, "s"), rt=rt, app=recorder)
    celery_app.send_task(*recorder.sent[-1])
    assert api.wait_for(ok, timeout=120, rt=rt).status == JobStatus.SUCCEEDED
    emulator.revoke_token(first)  # the next refresh gets 40105: error lines, parked batches
    refused = api.enqueue_refresh("vault", AUD, inline=emails(900, "s"), rt=rt, app=recorder)
    celery_app.send_task(*recorder.sent[-1])
    assert api.wait_for(refused, timeout=120, rt=rt).status == JobStatus.AUTH_FAILED
    api.update_token("vault", second, rt=rt)
    api.resume(refused, rt=rt, app=recorder)
    for name, args in recorder.sent[2:]:
        celery_app.send_task(name, args=args)
    assert api.wait_for(refused, timeout=120, rt=rt).status == JobStatus.SUCCEEDED
    assert held_pairs(emulator.members(tiktok_id)) == pairs_of(emails(900, "s"))
    # Messages carry ids only; one is left in a queue nobody reads, to be found in the dump.
    assert all(len(args) == 1 and args[0].startswith("job_") for _, args in recorder.sent)
    idle = Celery("idle")
    idle.config_from_object(
        celery_config(
            make_settings(
                {
                    **worker.env,
                    "BROKER_URL": redis_server.url.rsplit("/", 1)[0] + f"/{IDLE_BROKER_DB}",
                }
            )
        )
    )
    api.enqueue_refresh("vault", AUD, inline=emails(5, "idle"), rt=rt, app=idle)

    blob = dump_redis(redis_server.url)
    assert ok.encode() in blob and b"tiktok.refresh_audience" in blob  # the dump sees everything
    logs = worker.log() + "".join(capfd.readouterr())
    assert refused in logs and "destination_auth_failed" in logs
    for token in (first, second, TOKEN):
        assert token.encode() not in blob, "an access token is stored in clear"
        assert token not in logs, "an access token is in the logs"
