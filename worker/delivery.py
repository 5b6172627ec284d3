"""Send one batch to TikTok and act on the answer class, as DESIGN.md's table says.

`deliver` returns a `Step` (retry later, enqueue more batches, finalize); the `tiktok.send_batch`
task turns it into Celery calls. The retry policy is data, in one place (`RetryPolicy`); what each
answer class does is one table (`HANDLERS`).

Choices where the brief is silent:
- 40061 (batch too large): the batch is split in two, and the smallest refused size is
  remembered per (app, advertiser) for an hour (`RateLimiter.too_large`), so the job's later
  batches (and other jobs' on that advertiser) are split *before* they are sent instead of each
  paying for its own 40061. Splitting costs no TikTok call: only a task hop.
- Bisection (poison rows): only for codes that blame a row (`BISECT_CODES`); every failed
  sub-batch draws on a budget of its root batch (`BISECT_BUDGET`), so a code that fails every row
  cannot turn one batch into a thousand calls. A 1-row batch that fails is the poison row: its
  hash is recorded on the batch (`poison_id`) and counted on the job (`poison_rows`).
- Warm-up: a bad-request answer on an audience created less than
  TIKTOK_AUDIENCE_WARMUP_SECONDS ago is retried after a backoff and does not use up attempts
  (the window, not the attempt count, bounds it); after the window the answer counts as usual.
- A throttle answer is never a failed attempt; the batch is re-scheduled and paced by the
  shared limiter, which the answer has slowed down.
- Countdowns never exceed VISIBILITY_TIMEOUT - TASK_TIME_LIMIT: a message waiting on a countdown
  is held unacked by a worker, and must not be handed to another one meanwhile.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from worker.metrics import record_answer
from worker.models import AudienceLink, BatchRecord, BatchState, Destination, JobSpec
from worker.pipeline import Step, locks
from worker.runtime import Runtime
from worker.store import Store, hex_ids, shard_blobs
from worker.tiktok import Answer, AnswerClass, TikTokError

log = structlog.get_logger(__name__)

# Codes that blame one row of the request: bisect to find it. Others (e.g. 40007, no such
# audience) would fail every half alike, so bisecting them only multiplies calls.
BISECT_CODES = frozenset({40002, 40062})
# Failed sub-batches one planned batch may cost while bisecting: isolating one poison row in
# 1000 rows costs ~10; a code that fails every row stops here instead of at ~1000.
BISECT_BUDGET = 32
MESSAGE_MAX = 300  # characters of TikTok's message kept on the batch


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures: exponential backoff with full jitter, `max_attempts` sends at most.

    - max_attempts: sends of one batch that may fail transiently before it is `failed`;
    - base / cap: backoff before retry n is uniform(0, min(cap, base * 2**(n-1))) seconds;
    - warmup_seconds: a bad request on an audience younger than this is retried, not failed;
    - max_countdown: the longest re-schedule (below the broker's visibility timeout).
    Throttle answers (rate limited) are not failures: they never use up attempts.
    """

    max_attempts: int = 6
    base: float = 1.0
    cap: float = 120.0
    warmup_seconds: float = 180.0
    max_countdown: float = 1800.0

    def backoff(self, failures: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** max(0, failures - 1)))

    @classmethod
    def from_settings(cls, settings: object) -> RetryPolicy:
        s = settings
        return cls(
            max_attempts=s.tiktok_max_attempts,  # type: ignore[attr-defined]
            base=s.tiktok_backoff_base,  # type: ignore[attr-defined]
            cap=s.tiktok_backoff_max,  # type: ignore[attr-defined]
            warmup_seconds=s.tiktok_audience_warmup_seconds,  # type: ignore[attr-defined]
            max_countdown=float(s.visibility_timeout - s.task_time_limit),  # type: ignore[attr-defined]
        )


@dataclass
class Attempt:
    """One send of one batch: what the answer handlers need."""

    rt: Runtime
    policy: RetryPolicy
    batch: BatchRecord
    spec: JobSpec
    dest: Destination
    link: AudienceLink
    limit_key: str
    rate: float
    epoch: int = 0
    token: str = ""

    @property
    def store(self) -> Store:
        return self.rt.store

    def wait(self, seconds: float) -> Step:
        return Step(wait=min(max(0.0, seconds), self.policy.max_countdown))


def deliver(rt: Runtime, batch_id: str, policy: RetryPolicy | None = None) -> Step:
    """Send one pending batch (after a slot from the shared limiter) and act on the answer."""
    store = rt.store
    policy = policy or RetryPolicy.from_settings(rt.settings)
    # Reads in three round trips (the batch, its spec and ids; the destination and link; the
    # lease, progress mark and learned row limit): per batch, Redis calls are the main cost.
    batch, spec, data = store.delivery_inputs(batch_id)
    if batch is None or batch.state != BatchState.PENDING:
        return Step()  # redelivered after it finished: nothing to do
    structlog.contextvars.bind_contextvars(job_id=batch.job_id, batch_id=batch_id)
    if spec is None:
        return Step()
    dest, link = store.destination_and_link(spec.destination_id, spec.audience_id)
    if dest is None or link is None:
        store.update_batch(batch_id, last_message="destination or audience link removed")
        return _finish(rt, batch, BatchState.FAILED)
    if dest.status == "auth_failed":
        return _park(rt, batch)
    if data is None:
        store.update_batch(batch_id, last_message="batch data missing")
        return _finish(rt, batch, BatchState.FAILED)
    limit_key = store.keys.rate(rt.settings.tiktok_app_id or "app", dest.advertiser_id)
    # The audience lock covers sending: renew it (or take a lapsed one back). If another job has
    # the audience, its diff did not count this batch: sending it now could undo that job's work.
    # `active_at` is progress, for the reconciler.
    pipe = store.r.pipeline(transaction=False)
    locks(rt).renew(spec.destination_id, spec.audience_id, batch.job_id, client=pipe)
    pipe.hset(store.keys.job(batch.job_id), "active_at", time.time())
    pipe.get(rt.limiter.row_limit_key(limit_key))
    renewed, _, raw_rows = pipe.execute()
    if not renewed:
        store.update_batch(batch_id, last_message="not sent: another refresh holds the audience")
        return _finish(rt, batch, BatchState.FAILED)

    rate = dest.rate_per_second or rt.settings.rate_limit_per_second
    attempt = Attempt(rt, policy, batch, spec, dest, link, limit_key, rate)
    row_limit = rt.limiter.parse_row_limit(raw_rows)
    if row_limit is not None and 1 < row_limit <= batch.size:
        return _split(attempt, "row_limit", None)

    # Everything but the call itself is done before taking the slot: work between the slot and
    # the send is jitter, and jitter is what tips a request over TikTok's one-second window.
    attempt.token = store.token(dest.id)
    hashes = hex_ids(data)
    permit = rt.limiter.acquire(limit_key, rate)
    if permit.waited > 0:
        _rate_limited_time(attempt, permit.waited)
    if not permit.granted:
        delay = permit.retry_in + random.uniform(0, 1 / permit.rate)
        _rate_limited_time(attempt, delay)
        store.count(batch.job_id, {"rate_limit_waits": 1})
        log.info("batch_rate_wait", delay=round(delay, 3), rate=round(permit.rate, 2))
        return attempt.wait(delay)
    attempt.epoch = permit.epoch
    if permit.waited > 0:
        # Slept for the slot: another batch may have found the token refused meanwhile.
        fresh = store.destination(dest.id)
        if fresh is None or fresh.status == "auth_failed":
            return _park(rt, batch)

    pipe = store.r.pipeline(transaction=False)
    pipe.hincrby(store.keys.batch(batch_id), "attempts", 1)
    pipe.hset(store.keys.batch(batch_id), "sent_at", time.time())
    pipe.execute()
    try:
        answer = rt.client.mapping(
            attempt.token,
            dest.advertiser_id,
            link.tiktok_audience_id,
            batch.action,
            batch.schema_,
            hashes,
        )
    except TikTokError as error:
        _record_answer(attempt, error)
        if error.answer_class is AnswerClass.BAD_REQUEST and _warming_up(attempt):
            return _warmup(attempt, error)
        return HANDLERS[error.answer_class](attempt, error, hashes)
    return _succeeded(attempt, answer, data)


# -- answer classes ------------------------------------------------------------------------------
def _succeeded(a: Attempt, answer: Answer, data: bytes) -> Step:
    if answer.code == 20001:
        log.warning("batch_partial_ok", request_id=answer.request_id, message=answer.message)
    pipe = a.store.r.pipeline(transaction=False)  # the answer's count and record: one trip
    record_answer(a.store, answer.code, answer.http_status, AnswerClass.OK, client=pipe)
    a.store.update_batch(
        a.batch.batch_id,
        client=pipe,
        last_code=answer.code or 0,
        last_message="",
        request_id=answer.request_id,
    )
    pipe.execute()
    result = a.store.commit_batch(
        a.batch,
        a.spec.destination_id,
        a.spec.audience_id,
        shard_blobs(data, a.rt.settings.state_shards),
    )
    log.info(
        "batch_sent",
        action=a.batch.action,
        id_schema=a.batch.schema_,
        size=a.batch.size,
        request_id=answer.request_id,
    )
    return _finished(a.rt, a.batch, result)


def _throttled(a: Attempt, error: TikTokError, hashes: list[str]) -> Step:
    """Rate limited: slow the shared limiter, come back later; not a failed attempt."""
    pause = min(error.retry_after or 0.0, a.policy.max_countdown)
    cut = a.rt.limiter.slow_down(a.limit_key, a.rate, epoch=a.epoch, pause=pause)
    delay = pause + random.uniform(0, 1 / cut.rate)
    a.store.incr_batch(a.batch.batch_id, "rate_limited")
    _rate_limited_time(a, delay)
    a.store.count(a.batch.job_id, {"rate_limited_answers": 1})
    log.info(
        "batch_rate_limited",
        code=error.code,
        http_status=error.http_status,
        request_id=error.request_id,
        retry_after=error.retry_after,
        rate=round(cut.rate, 2),
        rate_cut=cut.cut,
    )
    return a.wait(delay)


def _transient(a: Attempt, error: TikTokError, hashes: list[str]) -> Step:
    """5xx, 50000-like codes, timeouts: exponential backoff, `max_attempts` failed sends at most."""
    failures = int(a.store.r.hincrby(a.store.keys.batch(a.batch.batch_id), "failures", 1))
    if failures >= a.policy.max_attempts:
        return _fail(a, error, failures=failures)
    a.store.count(a.batch.job_id, {"retries": 1})
    delay = a.policy.backoff(failures)
    log.info(
        "batch_retry",
        code=error.code,
        http_status=error.http_status,
        request_id=error.request_id,
        failures=failures,
        delay=round(delay, 3),
        error=error.message,
    )
    return a.wait(delay)


def _auth(a: Attempt, error: TikTokError, hashes: list[str]) -> Step:
    """The token is refused: stop the destination and park the batch (resumable)."""
    if a.store.token(a.dest.id) != a.token:
        # The token was replaced while this request was in flight: try the new one.
        log.info("batch_token_replaced", code=error.code, request_id=error.request_id)
        return a.wait(0)
    a.store.set_destination_status(a.dest.id, "auth_failed", f"{error.message} (code {error.code})")
    log.error(
        "destination_auth_failed",
        destination_id=a.dest.id,
        advertiser_id=a.dest.advertiser_id,
        code=error.code,
        request_id=error.request_id,
        error=error.message,
    )
    return _park(a.rt, a.batch)


def _too_large(a: Attempt, error: TikTokError, hashes: list[str]) -> Step:
    """40061: split in two and teach the limiter key the refused size."""
    if a.batch.size <= 1:
        return _fail(a, error)
    a.rt.limiter.too_large(a.limit_key, a.batch.size)
    return _split(a, "too_large", error)


def _bad_request(a: Attempt, error: TikTokError, hashes: list[str]) -> Step:
    """A request TikTok will never accept: fail, bisecting first if a row is to blame."""
    if error.code in BISECT_CODES and a.batch.size > 1:
        spent = int(
            a.store.r.hincrby(a.store.keys.batch(_root(a.batch.batch_id)), "bisect_failures", 1)
        )
        if spent <= BISECT_BUDGET:
            return _split(a, "bisect", error)
        log.warning("bisect_budget_spent", size=a.batch.size, code=error.code, budget=BISECT_BUDGET)
    if error.code in BISECT_CODES and a.batch.size == 1:
        a.store.update_batch(a.batch.batch_id, poison_id=hashes[0])
        a.store.count(a.batch.job_id, {"poison_rows": 1})
        log.warning(
            "poison_row",
            id_schema=a.batch.schema_,
            hash=hashes[0],
            code=error.code,
            request_id=error.request_id,
            error=error.message,
        )
    return _fail(a, error)


HANDLERS: dict[AnswerClass, Callable[[Attempt, TikTokError, list[str]], Step]] = {
    AnswerClass.RATE_LIMITED: _throttled,
    AnswerClass.TRANSIENT: _transient,
    AnswerClass.AUTH: _auth,
    AnswerClass.TOO_LARGE: _too_large,
    AnswerClass.BAD_REQUEST: _bad_request,
}


def _warming_up(a: Attempt) -> bool:
    created = a.link.tiktok_created_at
    return bool(created) and time.time() - created < a.policy.warmup_seconds  # type: ignore[operator]


def _warmup(a: Attempt, error: TikTokError) -> Step:
    """A freshly created audience is not ready yet: retry without using up an attempt."""
    n = int(a.store.r.hincrby(a.store.keys.batch(a.batch.batch_id), "warmup_retries", 1))
    a.store.count(a.batch.job_id, {"warmup_retries": 1})
    left = a.policy.warmup_seconds - (time.time() - (a.link.tiktok_created_at or 0))
    delay = min(max(a.policy.backoff(n), a.policy.base), max(left, 0.0) + a.policy.base)
    log.info(
        "audience_warming_up",
        code=error.code,
        request_id=error.request_id,
        window_left=round(left, 1),
        delay=round(delay, 3),
    )
    return a.wait(delay)


# -- outcomes ------------------------------------------------------------------------------------
def _record_answer(a: Attempt, error: TikTokError) -> None:
    record_answer(a.store, error.code, error.http_status, error.answer_class)
    code = error.code if error.code is not None else error.http_status
    a.store.update_batch(
        a.batch.batch_id,
        last_code=code,
        last_message=error.message[:MESSAGE_MAX],
        request_id=error.request_id or "",
    )


def _rate_limited_time(a: Attempt, seconds: float) -> None:
    a.store.incr_batch(a.batch.batch_id, "rate_limited_seconds", round(seconds, 3))
    a.store.count(a.batch.job_id, {"rate_limited_ms": round(seconds * 1000)})


def _split(a: Attempt, reason: str, error: TikTokError | None) -> Step:
    children = a.store.split_batch(a.batch, reason)
    log.info(
        "batch_bisected" if reason == "bisect" else "batch_split",
        reason=reason,
        size=a.batch.size,
        code=error.code if error else None,
        request_id=error.request_id if error else None,
    )
    return Step(send=children)


def _fail(a: Attempt, error: TikTokError, failures: int | None = None) -> Step:
    log.error(
        "batch_failed",
        code=error.code,
        http_status=error.http_status,
        request_id=error.request_id,
        error=error.message,
        size=a.batch.size,
        answer_class=str(error.answer_class),
        failures=failures,
    )
    return _finish(a.rt, a.batch, BatchState.FAILED)


def _park(rt: Runtime, batch: BatchRecord) -> Step:
    # No retry storm: the destination is stopped until its token is fixed (`resume`).
    rt.store.update_batch(batch.batch_id, last_message="parked: the destination's token is refused")
    log.warning("batch_parked", size=batch.size)
    return _finish(rt, batch, BatchState.PARKED)


def _finish(rt: Runtime, batch: BatchRecord, state: BatchState) -> Step:
    return _finished(rt, batch, rt.store.finish_batch(batch, state))


def _finished(rt: Runtime, batch: BatchRecord, result: tuple[int, int]) -> Step:
    """The last batch to finish asks for finalize, once (SET NX)."""
    finished, total = result
    key = rt.store.keys.job_finalize(batch.job_id)
    if finished >= 0 and finished >= total and rt.store.r.set(key, 1, nx=True, ex=rt.store.ttl):
        return Step(finalize=True)
    return Step()


def _root(batch_id: str) -> str:
    """The planned batch a split child descends from (`job-00007.1.2` -> `job-00007`)."""
    job, _, suffix = batch_id.rpartition("-")
    return f"{job}-{suffix.split('.')[0]}"


__all__ = ["HANDLERS", "RetryPolicy", "deliver"]
