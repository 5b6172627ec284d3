"""Send one batch to TikTok and act on the answer class, as DESIGN.md's table says.

`deliver` returns a `Step` (retry later, enqueue more batches, finalize); the `tiktok.send_batch`
task turns it into Celery calls. The retry policy is data, in one place (`RetryPolicy`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import structlog

from worker.models import BatchRecord, BatchState
from worker.pipeline import Step
from worker.runtime import Runtime
from worker.store import digests, group_by_shard
from worker.tiktok import AuthFailed, BadRequest, BatchTooLarge, RateLimited, TikTokError, Transient

log = structlog.get_logger(__name__)

# Codes that blame one row of the request: bisect to find it. Others (e.g. 40007, no such
# audience) would fail every half alike, so bisecting them only multiplies calls.
BISECT_CODES = frozenset({40002, 40062})


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures: exponential backoff with full jitter, `max_attempts` sends at most.

    - max_attempts: sends of one batch that may fail transiently before it is `failed`;
    - base / cap: backoff before retry n is uniform(0, min(cap, base * 2**n)) seconds;
    - throttle_pause: pause after a throttle answer without Retry-After.
    Throttle answers (rate limited) are not failures: they never use up attempts.
    """

    max_attempts: int = 6
    base: float = 1.0
    cap: float = 120.0
    throttle_pause: float = 1.0

    def backoff(self, failures: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** max(0, failures - 1)))

    @classmethod
    def from_settings(cls, settings: object) -> RetryPolicy:
        return cls(
            max_attempts=settings.tiktok_max_attempts,  # type: ignore[attr-defined]
            base=settings.tiktok_backoff_base,  # type: ignore[attr-defined]
            cap=settings.tiktok_backoff_max,  # type: ignore[attr-defined]
        )


def _finished(rt: Runtime, batch: BatchRecord, result: tuple[int, int]) -> Step:
    finished, total = result
    if finished >= 0 and finished >= total and rt.store.r.set(rt.store.keys.job_finalize(batch.job_id), 1, nx=True,
                                                              ex=rt.store.ttl):
        return Step(finalize=True)
    return Step()


def _record_answer(rt: Runtime, batch: BatchRecord, error: TikTokError | None, request_id: str | None) -> None:
    fields: dict[str, object] = {"last_code": 0 if error is None else (error.code if error.code is not None
                                                                        else error.http_status or ""),
                                 "last_message": "" if error is None else error.message[:300]}
    if request_id or (error and error.request_id):
        fields["request_id"] = request_id or (error.request_id if error else "")
    rt.store.update_batch(batch.batch_id, **fields)


def deliver(rt: Runtime, batch_id: str, policy: RetryPolicy | None = None) -> Step:
    store = rt.store
    policy = policy or RetryPolicy.from_settings(rt.settings)
    batch = store.batch(batch_id)
    if batch is None or batch.state != BatchState.PENDING:
        return Step()  # redelivered after it finished: nothing to do
    structlog.contextvars.bind_contextvars(job_id=batch.job_id, batch_id=batch_id)
    spec = store.job_spec(batch.job_id)
    if spec is None:
        return Step()
    dest = store.destination(spec.destination_id)
    link = store.link(spec.destination_id, spec.audience_id)
    if dest is None or link is None:
        store.update_batch(batch_id, last_message="destination or audience link removed")
        return _finished(rt, batch, store.finish_batch(batch, BatchState.FAILED))
    if dest.status == "auth_failed":
        # No retry storm: the destination is stopped until its token is fixed.
        store.update_batch(batch_id, last_message="parked: destination token refused")
        return _finished(rt, batch, store.finish_batch(batch, BatchState.PARKED))
    data = store.batch_data(batch_id)
    if data is None:
        store.update_batch(batch_id, last_message="batch data missing")
        return _finished(rt, batch, store.finish_batch(batch, BatchState.FAILED))

    rate = dest.rate_per_second or rt.settings.rate_limit_per_second
    limit_key = store.keys.rate(rt.settings.tiktok_app_id or "app", dest.advertiser_id)
    slot = rt.limiter.reserve(limit_key, rate)
    if not slot.granted:
        store.incr_batch(batch_id, "rate_limited_seconds", round(slot.wait, 3))
        store.count(batch.job_id, {"rate_limit_waits": 1})
        return Step(wait=slot.wait)
    if slot.wait > 0:
        time.sleep(slot.wait)
        store.incr_batch(batch_id, "rate_limited_seconds", round(slot.wait, 3))

    hashes = [d.hex() for d in digests(data)]
    store.update_batch(batch_id, sent_at=time.time())
    store.incr_batch(batch_id, "attempts")
    try:
        answer = rt.client.mapping(store.token(dest.id), dest.advertiser_id, link.tiktok_audience_id,
                                   batch.action, batch.schema_, hashes)
    except RateLimited as error:
        pause = error.retry_after if error.retry_after is not None else policy.throttle_pause
        new_rate = rt.limiter.slow_down(limit_key, rate, pause)
        _record_answer(rt, batch, error, None)
        store.incr_batch(batch_id, "rate_limited")
        store.incr_batch(batch_id, "rate_limited_seconds", round(pause, 3))
        store.count(batch.job_id, {"rate_limited_answers": 1})
        log.info("batch_rate_limited", code=error.code, request_id=error.request_id, rate=round(new_rate, 2))
        return Step(wait=pause + random.uniform(0, 1 / new_rate))
    except AuthFailed as error:
        _record_answer(rt, batch, error, None)
        store.set_destination_status(dest.id, "auth_failed", f"{error.message} (code {error.code})")
        log.error("destination_auth_failed", code=error.code, request_id=error.request_id,
                  destination_id=dest.id)
        return _finished(rt, batch, store.finish_batch(batch, BatchState.PARKED))
    except BatchTooLarge as error:
        _record_answer(rt, batch, error, None)
        if batch.size > 1:
            children = store.split_batch(batch, "too_large")
            log.info("batch_split", size=batch.size, code=error.code, request_id=error.request_id)
            return Step(send=children, finalize=False)
        return _fail(rt, batch, error)
    except BadRequest as error:
        _record_answer(rt, batch, error, None)
        created = link.tiktok_created_at
        if created and time.time() - created < rt.settings.tiktok_audience_warmup_seconds:
            return _transient(rt, batch, error, policy)  # a fresh audience is not ready yet
        if error.code in BISECT_CODES and batch.size > 1:
            children = store.split_batch(batch, "bisect")
            log.info("batch_bisected", size=batch.size, code=error.code, request_id=error.request_id)
            return Step(send=children)
        if batch.size == 1:
            store.update_batch(batch_id, poison_id=hashes[0])
            log.warning("poison_row", id_schema=batch.schema_, code=error.code, request_id=error.request_id)
        return _fail(rt, batch, error)
    except Transient as error:
        _record_answer(rt, batch, error, None)
        return _transient(rt, batch, error, policy)

    if answer.code == 20001:
        log.warning("batch_partial_ok", request_id=answer.request_id, message=answer.message)
    _record_answer(rt, batch, None, answer.request_id)
    result = store.commit_batch(batch, spec.destination_id, spec.audience_id,
                                group_by_shard(digests(data), rt.settings.state_shards))
    log.info("batch_sent", action=batch.action, id_schema=batch.schema_, size=batch.size,
             request_id=answer.request_id)
    return _finished(rt, batch, result)


def _transient(rt: Runtime, batch: BatchRecord, error: TikTokError, policy: RetryPolicy) -> Step:
    failures = int(rt.store.r.hincrby(rt.store.keys.batch(batch.batch_id), "failures", 1))
    rt.store.count(batch.job_id, {"retries": 1})
    if failures >= policy.max_attempts:
        return _fail(rt, batch, error)
    delay = policy.backoff(failures)
    log.info("batch_retry", code=error.code, request_id=error.request_id, failures=failures,
             delay=round(delay, 2), error=error.message)
    return Step(wait=delay)


def _fail(rt: Runtime, batch: BatchRecord, error: TikTokError) -> Step:
    log.error("batch_failed", code=error.code, request_id=error.request_id, error=error.message,
              size=batch.size)
    return _finished(rt, batch, rt.store.finish_batch(batch, BatchState.FAILED))
