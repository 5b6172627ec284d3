"""The shared rate limiter on a real (test-owned) redis-server: fakeredis has no Lua here, and the
limiter's point is `TIME` inside Lua. Times asserted are the ones the limiter computes from the
server's clock, not measured ones.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.harness import RedisServer
from worker.ratelimit import RateLimiter

LIMITER_DB = 3  # not the state DB (0) nor the broker (1): integration fixtures flush those


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis(port=redis_server.port, db=LIMITER_DB)
    r.flushdb()
    yield r
    r.close()


@pytest.fixture
def key() -> str:
    return f"ts:rate:{{test-app:{uuid.uuid4().hex[:8]}}}"


def server_time(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def test_slots_are_spaced_one_interval_apart(client: redis.Redis, key: str) -> None:
    limiter = RateLimiter(client, max_wait=10, headroom=1.0)
    start = server_time(client)
    waits = [limiter.reserve(key, 50).wait for _ in range(10)]
    elapsed = server_time(client) - start
    # Slot i is i intervals after the first; the calls themselves took `elapsed`.
    assert waits[0] == pytest.approx(0, abs=0.005)
    assert 9 / 50 - elapsed - 0.001 <= waits[-1] <= 9 / 50 + 0.001
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(0 < g <= 1 / 50 + 0.001 for g in gaps)


def test_burst_lets_that_many_go_at_once(client: redis.Redis, key: str) -> None:
    limiter = RateLimiter(client, burst=5, max_wait=10)
    waits = [limiter.reserve(key, 10).wait for _ in range(7)]
    assert all(w == 0 for w in waits[:5])
    assert waits[5] > 0.05 and waits[6] > waits[5]


def test_a_slot_beyond_max_wait_is_refused_and_not_taken(client: redis.Redis, key: str) -> None:
    limiter = RateLimiter(client, max_wait=0.25)
    granted = [limiter.reserve(key, 10) for _ in range(3)]  # slots at 0, 0.1, 0.2 s
    assert all(s.granted for s in granted)
    tat = limiter.state(key)["tat"]
    refused = limiter.reserve(key, 10)
    assert not refused.granted and refused.wait > 0.25
    assert limiter.state(key)["tat"] == tat  # a refusal reserves nothing
    assert not limiter.acquire(key, 10, sleep=lambda s: None).granted


def test_every_limiter_on_the_key_shares_one_budget(
    client: redis.Redis, redis_server: RedisServer, key: str
) -> None:
    other = redis.Redis(port=redis_server.port, db=LIMITER_DB)  # another process, another pool
    a, b = RateLimiter(client, max_wait=10), RateLimiter(other, max_wait=10)
    waits = [lim.reserve(key, 20).wait for lim in (a, b, a, b)]
    assert waits == sorted(waits) and waits[-1] >= 2 / 20
    # Another advertiser has its own budget.
    assert a.reserve(key.replace("}", "-x}"), 20).wait == 0


def test_uses_the_server_clock_not_the_callers(
    client: redis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = RateLimiter(client, max_wait=10, headroom=1.0)
    limiter.reserve(key, 10)
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a host whose clock is decades off
    monkeypatch.setattr(time, "monotonic", lambda: 0.0)
    assert 0.05 < limiter.reserve(key, 10).wait <= 0.1


def test_throttle_cuts_once_per_epoch_and_learns_a_ceiling(client: redis.Redis, key: str) -> None:
    limiter = RateLimiter(client, decrease=0.5, recovery_per_second=0, headroom=1.0)
    slot = limiter.reserve(key, 20)
    first = limiter.slow_down(key, 20, epoch=slot.epoch)
    assert first.cut and first.rate == pytest.approx(10) and first.epoch == slot.epoch + 1
    # Other answers to requests reserved under the old rate say nothing new: no second cut.
    stale = limiter.slow_down(key, 20, epoch=slot.epoch)
    assert not stale.cut and stale.rate == pytest.approx(10)
    state = limiter.state(key)
    assert state["ceiling"] == pytest.approx(20) and state["throttled"] == 2
    # A request reserved under the new rate that is throttled cuts again, down to the floor.
    again = limiter.slow_down(key, 20, epoch=limiter.reserve(key, 20).epoch)
    assert again.cut and again.rate == pytest.approx(5)
    for _ in range(10):
        limiter.slow_down(key, 20, epoch=limiter.epoch(key))
    assert limiter.reserve(key, 20).rate == pytest.approx(limiter.min_rate)


def test_retry_after_pauses_every_worker(client: redis.Redis, key: str) -> None:
    limiter = RateLimiter(client, max_wait=10)
    limiter.reserve(key, 100)
    limiter.slow_down(key, 100, pause=3.0)
    assert limiter.reserve(key, 100).wait > 2.9


def set_state(client: redis.Redis, key: str, seconds_ago: float, **fields: float) -> None:
    client.hset(key, mapping={"updated": server_time(client) - seconds_ago, **fields})


def test_recovery_is_additive_then_slow_above_the_learned_ceiling(
    client: redis.Redis, key: str
) -> None:
    limiter = RateLimiter(client, recovery_per_second=1.0, headroom=0.9, probe=0.1)
    # A new key starts at 90% of the configured rate (the first ceiling) and probes the rest.
    assert limiter.reserve(key, 20).rate == pytest.approx(18)
    set_state(client, key, 5, rate=18)
    assert limiter.reserve(key, 20).rate == pytest.approx(18.5, abs=0.05)
    # After a cut: +1 request/s per second up to 90% of the configured rate, then 0.1/s.
    set_state(client, key, 4, rate=10)
    assert limiter.reserve(key, 20).rate == pytest.approx(14, abs=0.05)
    set_state(client, key, 60, rate=10)
    assert limiter.reserve(key, 20).rate == pytest.approx(20)
    # Ceiling 20 learned: fast to 18 (8 s), then 0.1/s: 2 s more give 18.2.
    set_state(client, key, 10, rate=10, ceiling=20)
    assert limiter.reserve(key, 40).rate == pytest.approx(18.2, abs=0.05)
    # Never above the configured rate, whatever was learned.
    set_state(client, key, 1000, rate=10, ceiling=20)
    assert limiter.reserve(key, 15).rate == pytest.approx(15)


def test_acquire_takes_a_new_slot_when_a_cut_happened_while_it_slept(
    client: redis.Redis, key: str
) -> None:
    limiter = RateLimiter(client, max_wait=10, decrease=0.5, recovery_per_second=0, headroom=1.0)
    for _ in range(3):
        limiter.reserve(key, 10)  # others hold the next slots
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:  # TikTok throttles another worker's request meanwhile
            limiter.slow_down(key, 10, epoch=limiter.epoch(key))

    permit = limiter.acquire(key, 10, sleep=sleep)
    # The slot taken at the old rate is void; the cut freed the reserved future, so the new
    # slot is now, and the one after it an interval of the new rate later.
    assert permit.granted and len(slept) == 1 and slept[0] > 0.25
    assert permit.epoch == 1 and permit.rate == pytest.approx(5)
    assert limiter.reserve(key, 10).wait == pytest.approx(1 / 5, abs=0.01)


def test_learned_row_limit_keeps_the_smallest_refused_size(client: redis.Redis, key: str) -> None:
    limiter = RateLimiter(client)
    assert limiter.row_limit(key) is None
    assert limiter.too_large(key, 1000) == 1000
    assert limiter.too_large(key, 500) == 500
    assert limiter.too_large(key, 800) == 500
    assert limiter.row_limit(key) == 500
    assert 0 < client.ttl(key + ":rows") <= 3600
