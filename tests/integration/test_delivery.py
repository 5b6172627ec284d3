"""Delivery under TikTok's limits and faults, end to end: real Celery worker processes, real
Redis, the emulator over HTTP with fault injection. Each test starts the workers it needs (with its
own environment, on a broker DB of its own) and checks end states: what the emulator holds and
answered, what the results store says. No wall-clock assertions.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import celery_config
from tests.conftest import ADVERTISER, TOKEN, make_settings
from tests.harness import (
    ROOT,
    RedisServer,
    WorkerProcess,
    base_env,
    file_pairs,
    held_pairs,
    wait_until,
)
from worker import api
from worker.models import BatchState, JobStatus
from worker.runtime import Runtime

pytestmark = pytest.mark.integration

BROKER_DB = 2  # not the session worker's broker (1): these workers run with their own settings
EMAIL = "EMAIL_SHA256"


@contextlib.contextmanager
def workers(
    redis_server: RedisServer,
    emulator: Any,
    processes: int = 1,
    pool: str = "threads",
    concurrency: int = 8,
    **settings: Any,
) -> Iterator[tuple[Celery, dict[str, str]]]:
    """Start `processes` worker processes with these settings; yield a Celery app for them."""
    broker = redis_server.url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    redis.Redis.from_url(broker).flushdb()  # no message left over from an earlier test
    env = base_env(
        redis_server.url,
        emulator.base_url,
        broker_url=broker,
        **{"tiktok_batch_size": 300, **settings},
    )
    app = Celery("tiktok_sync_delivery_tests")
    app.config_from_object(celery_config(make_settings(env)))
    procs = [
        WorkerProcess(env, pool=pool, concurrency=concurrency).start() for _ in range(processes)
    ]
    try:
        wait_until(
            lambda: all(" ready." in p.log() for p in procs), timeout=60, what="workers ready"
        )
        yield app, env
    except BaseException:
        for proc in procs:  # the delivery events only: Celery's own lines drown them
            events = [line for line in proc.log().splitlines() if '"event": "batch_' in line]
            print(f"--- {proc.log_path}, delivery events (tail)\n" + "\n".join(events[-40:]))
        raise
    finally:
        for proc in procs:
            proc.stop()
        app.close()


def setup_destination(
    rt: Runtime,
    dest_id: str = "acme",
    audience: str = "aud-1",
    token: str = TOKEN,
    advertiser: str = ADVERTISER,
    rate: float | None = None,
) -> str:
    api.add_destination(
        dest_id.title(),
        advertiser,
        token,
        destination_id=dest_id,
        phone_region="US",
        rate_per_second=rate,
        rt=rt,
    )
    return api.link_audience(dest_id, audience, name=f"CDP {audience}", rt=rt).tiktok_audience_id


def emails(path: Path, n: int, tag: str = "m") -> tuple[Path, set[tuple[str, str]]]:
    """A snapshot of `n` email-only members and the (schema, hash) pairs it should leave."""
    path.write_text("email\n" + "".join(f"{tag}.{i}@example.com\n" for i in range(n)))
    return path, file_pairs(path, "US")


def calls(emulator: Any, advertiser: str = ADVERTISER) -> list[dict[str, Any]]:
    return [e for e in emulator.stats()["mapping_log"] if e["advertiser_id"] == advertiser]


def codes(emulator: Any, advertiser: str = ADVERTISER) -> Counter:
    return Counter(e["code"] for e in calls(emulator, advertiser))


def batch_fields(rt: Runtime, job_id: str, field: str) -> list[float]:
    """A batch-hash field for every batch of the job (raw: not every field is on BatchRecord)."""
    store = rt.store
    return [float(store.r.hget(store.keys.batch(b), field) or 0) for b in store.batch_ids(job_id)]


def enqueue(
    rt: Runtime, app: Celery, members: Path, dest_id: str = "acme", audience: str = "aud-1"
) -> str:
    return api.enqueue_refresh(dest_id, audience, members=str(members), rt=rt, app=app)


def test_transient_faults_and_timeouts_are_retried_to_the_exact_end_state(
    rt: Runtime, emulator: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Seeded: which calls fail is decided by the order of the draws, so the counts are fixed.
    emulator.set_faults(error_rate=0.2, timeout_rate=0.05, timeout_seconds=1.5, seed=11)
    with workers(
        redis_server,
        emulator,
        tiktok_batch_size=50,
        tiktok_read_timeout=0.5,
        tiktok_max_attempts=12,
    ) as (app, _):
        tiktok_id = setup_destination(rt)
        members, expected = emails(tmp_path / "m.csv", 4000)
        job = api.wait_for(enqueue(rt, app, members), timeout=120, rt=rt)

    assert job.status == JobStatus.SUCCEEDED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == expected
    seen = codes(emulator)
    batches = rt.store.batches(job.job_id)
    assert len(batches) == job.count("batches_succeeded") == math.ceil(4000 / 50)
    timeouts = seen[0] - len(batches)  # applied by TikTok, answered too late, sent again
    assert seen[500] > 0 and seen[50000] > 0 and timeouts > 0
    # Every failed send is one retry, on the job and on its batch; sends add up exactly.
    assert job.count("retries") == seen[500] + seen[50000] + timeouts
    assert sum(batch_fields(rt, job.job_id, "failures")) == job.count("retries")
    assert sum(b.attempts for b in batches) == sum(seen.values())
    assert all(b.last_code == 0 and b.request_id for b in batches)


def test_a_qps_cap_is_shared_by_four_worker_processes(
    rt: Runtime, emulator: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    cap = 8  # four processes at 8/s each would send 32/s
    emulator.set_faults(qps_cap=cap)
    with workers(
        redis_server,
        emulator,
        processes=2,
        pool="prefork",
        concurrency=2,
        rate_limit_per_second=cap,
        rate_limit_max_sleep_seconds=0.3,  # a slot further away re-schedules the task
        tiktok_batch_size=20,
    ) as (app, _):
        tiktok_id = setup_destination(rt)
        members, expected = emails(tmp_path / "m.csv", 3000)
        job = api.wait_for(enqueue(rt, app, members), timeout=120, rt=rt)

    assert job.status == JobStatus.SUCCEEDED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == expected
    seen = codes(emulator)
    assert seen[0] == job.count("batches_succeeded") == 150
    log = calls(emulator)
    when = [round(e["t"] - log[0]["t"], 2) for e in log if e["code"] == 40100]
    assert seen[40100] < 0.02 * sum(seen.values()), (seen, when)
    assert job.count("rate_limited_answers") == seen[40100]
    # The workers did wait for the shared budget, sleeping for near slots and re-scheduling
    # rather than holding their message for far ones; that time is on the record.
    assert job.count("rate_limit_waits") > 0
    assert job.count("rate_limited_ms") > 0
    assert sum(batch_fields(rt, job.job_id, "rate_limited_seconds")) > 0


def test_revoked_token_parks_one_destination_and_resume_finishes_it(
    rt: Runtime, emulator: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    other_token, other_adv, new_token = "tok-beta-0123456789", "7000000002", "tok-new-9876543210"
    emulator.add_token(other_token, [other_adv])
    concurrency = 8
    with workers(redis_server, emulator, concurrency=concurrency, tiktok_batch_size=20) as (
        app,
        env,
    ):
        acme_aud = setup_destination(rt, rate=25)
        beta_aud = setup_destination(rt, "beta", token=other_token, advertiser=other_adv)
        acme_members, acme_expected = emails(tmp_path / "acme.csv", 2000, "acme")
        beta_members, beta_expected = emails(tmp_path / "beta.csv", 600, "beta")
        acme_job = enqueue(rt, app, acme_members)
        beta_job = enqueue(rt, app, beta_members, "beta")
        # Revoke the token in the middle of acme's job.
        wait_until(lambda: codes(emulator)[0] >= 10, timeout=60, poll=0.05, what="acme sending")
        emulator.revoke_token(TOKEN)
        parked = api.wait_for(acme_job, timeout=120, rt=rt)
        beta = api.wait_for(beta_job, timeout=120, rt=rt)

        assert parked.status == JobStatus.AUTH_FAILED
        for words in ("update-token acme", f"resume {acme_job}", "40105"):
            assert words in parked.message
        assert rt.store.require_destination("acme").status == "auth_failed"
        # A refused token is answered before the body is read: those calls name no advertiser.
        acme_calls = [e for e in emulator.stats()["mapping_log"] if e["advertiser_id"] != other_adv]
        first = next(i for i, e in enumerate(acme_calls) if e["code"] == 40105)
        after = acme_calls[first:]
        # Within a handful of requests: at most the ones already in flight, no retry storm.
        assert all(e["code"] == 40105 for e in after) and len(after) <= concurrency
        states = Counter(b.state for b in rt.store.batches(acme_job))
        assert states[BatchState.PARKED] == parked.count("batches_parked") > 0
        assert states[BatchState.SUCCEEDED] > 0 and states[BatchState.FAILED] == 0
        # The other client's job is untouched.
        assert beta.status == JobStatus.SUCCEEDED, beta.message
        assert held_pairs(emulator.members(beta_aud)) == beta_expected
        assert codes(emulator, other_adv) == {0: beta.count("batches_succeeded")}

        # Ops fix the token and resume, through the CLI.
        emulator.add_token(new_token, [ADVERTISER])
        for args in (
            ["destination", "update-token", "acme", "--access-token", new_token],
            ["resume", acme_job],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "worker.cli", *args],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        resumed = api.wait_for(acme_job, timeout=120, rt=rt)

    assert resumed.status == JobStatus.SUCCEEDED, resumed.message
    assert held_pairs(emulator.members(acme_aud)) == acme_expected
    assert resumed.count("batches_parked") == 0
    assert all(
        b.state in (BatchState.SUCCEEDED, BatchState.SPLIT) for b in rt.store.batches(acme_job)
    )


def test_batches_over_tiktoks_cap_are_split_and_the_cap_is_learned(
    rt: Runtime, emulator: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    emulator.set_faults(max_batch=300)
    with workers(redis_server, emulator, concurrency=4, tiktok_batch_size=1000) as (app, _):
        tiktok_id = setup_destination(rt)
        members, expected = emails(tmp_path / "m.csv", 12_000)
        job = api.wait_for(enqueue(rt, app, members), timeout=120, rt=rt)

    assert job.status == JobStatus.SUCCEEDED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == expected
    log = calls(emulator)
    assert all(e["rows"] <= 300 for e in log if e["code"] == 0)
    planned = [b for b in rt.store.batches(job.job_id) if not b.parent]
    assert len(planned) == 12 and all(b.size == 1000 for b in planned)
    assert job.count("batches_split") > 0
    too_large = sum(1 for e in log if e["code"] == 40061)
    # Splitting alone would cost 3 refusals per planned batch (1000 -> 2x500 -> 4x250); once the
    # cap is learned, later batches are split before they are sent.
    assert 0 < too_large < len(planned)


def test_a_poison_row_is_isolated_by_bisection_and_the_rest_delivered(
    rt: Runtime, emulator: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    members, expected = emails(tmp_path / "m.csv", 1500)
    poison = sorted(h for _, h in expected)[123]
    emulator.set_faults(poison_ids=[poison])
    with workers(redis_server, emulator) as (app, _):
        tiktok_id = setup_destination(rt)
        job = api.wait_for(enqueue(rt, app, members), timeout=120, rt=rt)

    assert job.status == JobStatus.PARTIALLY_FAILED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == expected - {(EMAIL, poison)}
    failed = [b for b in rt.store.batches(job.job_id) if b.state == BatchState.FAILED]
    assert len(failed) == 1 and job.count("batches_failed") == 1
    leaf = failed[0]
    assert leaf.size == 1 and leaf.poison_id == poison
    assert leaf.last_code == 40002 and leaf.last_message and leaf.request_id
    assert job.count("poison_rows") == 1
    # The ledger does not hold it, so the next refresh sends it again.
    assert poison not in {h for _, h in held_pairs(ledger(rt))}
    refusals = codes(emulator)[40002]
    assert refusals <= math.ceil(math.log2(300)) + 1  # one bisection path, not a storm


def ledger(rt: Runtime) -> dict[str, set[str]]:
    from worker.pipeline import ledger_hashes

    return ledger_hashes(rt, "acme", "aud-1")


def test_errors_on_a_fresh_audience_are_retried_through_the_warmup_window(
    rt: Runtime, emulator: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    emulator.set_faults(warmup_seconds=2)  # TikTok answers 40007 until the audience is 2 s old
    with workers(
        redis_server, emulator, tiktok_audience_warmup_seconds=60, tiktok_max_attempts=2
    ) as (app, _):
        tiktok_id = setup_destination(rt)  # creates the audience now
        members, expected = emails(tmp_path / "m.csv", 900)
        job = api.wait_for(enqueue(rt, app, members), timeout=120, rt=rt)

    assert job.status == JobStatus.SUCCEEDED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == expected
    not_ready = codes(emulator)[40007]
    assert not_ready > 0
    assert job.count("warmup_retries") == not_ready and job.count("retries") == 0
    assert sum(batch_fields(rt, job.job_id, "failures")) == 0
