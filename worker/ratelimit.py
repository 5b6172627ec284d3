"""Shared rate limiter: one budget per (TikTok app, advertiser) for every worker on every host.

GCRA on the Redis server's clock (`TIME` inside Lua), so hosts with skewed clocks agree. A caller
*reserves* a send slot and sleeps until it (`acquire`); a slot further away than `max_wait` is not
reserved, and the caller re-schedules its task instead of holding a broker message.

The rate is AIMD with a learned ceiling:
- a throttle answer from TikTok (`slow_down`) cuts the shared rate by `decrease` and remembers the
  rate that was throttled as the ceiling. Only a request reserved under the rate now in force can
  cut it (each cut starts a new *epoch*): the answers of requests already in flight under the old
  rate say nothing new, so one burst of 40100s is one cut, not many;
- the rate recovers additively, `recovery_per_second` requests/s each second, up to `headroom`
  times the learned ceiling, then twenty times slower (`probe`) up to the configured rate, so a
  limiter that has found TikTok's cap stays just under it instead of hitting it every few seconds.
  The configured rate is the first ceiling: a new key starts at `headroom` times it and probes
  the rest slowly, because a request sent on the dot of TikTok's window, give or take a few ms of
  jitter, tips it over as often as not;
- a task that slept on a slot checks the epoch before sending: if TikTok throttled someone
  meanwhile, its slot was cut at the old rate and it takes a new one (a cut frees the reserved
  future, so the new slots start now, at the new rate).

Also kept here, as the other thing learned per (app, advertiser): the smallest batch TikTok
refused as too large (40061), so later batches are split before they are sent (`row_limit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

KEY_TTL_SECONDS = 86_400  # limiter state outlives a day of silence, no more
ROW_LIMIT_TTL_SECONDS = 3_600  # re-probe TikTok's batch cap hourly: it may have been raised
REVALIDATIONS = 3  # slots re-taken after a cut before the task re-schedules instead

_LUA_COMMON = """
local function fmt(x) return string.format('%.6f', x) end
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The rate now: the stored rate plus additive recovery since `updated`; fast up to the safe
-- level (headroom x the ceiling: the last throttled rate, at first the configured one), `probe`
-- times as fast above it; never above max_rate. A new key starts at the safe level.
local function recovered(h_rate, h_updated, h_ceiling, now, max_rate, rec, headroom, probe)
  local safe = math.min(max_rate, (tonumber(h_ceiling) or max_rate) * headroom)
  local rate = tonumber(h_rate) or safe
  local dt = now - (tonumber(h_updated) or now)
  if rec > 0 and dt > 0 then
    if rate < safe then
      local fast = (safe - rate) / rec
      if dt <= fast then rate = rate + dt * rec else rate = safe + (dt - fast) * rec * probe end
    else
      rate = rate + dt * rec * probe
    end
  end
  return math.min(rate, max_rate)
end
"""

# KEYS: state; ARGV: max_rate, burst, max_wait, recovery, headroom, probe, ttl
_RESERVE = (
    _LUA_COMMON
    + """
local now = server_now()
local max_rate, burst, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'updated', 'ceiling', 'epoch')
local rate = recovered(h[2], h[3], h[4], now, max_rate, tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]))
local interval = 1 / rate
local tat = math.max(tonumber(h[1]) or now, now)
local wait = math.max(0, tat - interval * (burst - 1) - now)
local granted = 0
if wait <= max_wait then
  granted = 1
  tat = tat + interval
end
redis.call('HSET', KEYS[1], 'tat', fmt(tat), 'rate', fmt(rate), 'updated', fmt(now))
redis.call('EXPIRE', KEYS[1], ARGV[7])
return {granted, fmt(wait), fmt(rate), tonumber(h[5]) or 0}
"""
)

# KEYS: state; ARGV: max_rate, min_rate, decrease, pause, epoch seen (-1: unknown), recovery,
# headroom, probe, ttl
_SLOW_DOWN = (
    _LUA_COMMON
    + """
local now = server_now()
local max_rate = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'updated', 'ceiling', 'epoch')
local rate = recovered(h[2], h[3], h[4], now, max_rate, tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]))
local epoch = tonumber(h[5]) or 0
local seen = tonumber(ARGV[5])
local tat = tonumber(h[1]) or now
local cut = 0
if seen < 0 or seen == epoch then
  redis.call('HSET', KEYS[1], 'ceiling', fmt(rate), 'cut_at', fmt(now))
  rate = math.max(tonumber(ARGV[2]), rate * tonumber(ARGV[3]))
  epoch = epoch + 1
  cut = 1
  -- Slots reserved at the old rate are void (their holders re-take one): free them, or the
  -- time they covered would go unused.
  tat = now
end
tat = math.max(tat, now + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'tat', fmt(tat), 'rate', fmt(rate), 'updated', fmt(now), 'epoch', epoch)
redis.call('HINCRBY', KEYS[1], 'throttled', 1)
redis.call('EXPIRE', KEYS[1], ARGV[9])
return {fmt(rate), epoch, cut}
"""
)

# KEYS: row limit; ARGV: rows refused, ttl. Keeps the smallest refused size.
_TOO_LARGE = """
local cur = tonumber(redis.call('GET', KEYS[1]))
local rows = tonumber(ARGV[1])
if cur == nil or rows < cur then
  redis.call('SET', KEYS[1], rows, 'EX', ARGV[2])
  return rows
end
return cur
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    wait: float  # seconds to sleep before sending (granted) or until the slot asked for (not)
    rate: float  # the shared rate now in force
    epoch: int  # cuts so far: a throttle of a request reserved in an older epoch cuts nothing


@dataclass(frozen=True, slots=True)
class Permit:
    """The outcome of `acquire`: send now, or re-schedule the task after `retry_in` seconds."""

    granted: bool
    waited: float  # seconds slept in `acquire`
    retry_in: float
    rate: float
    epoch: int


@dataclass(frozen=True, slots=True)
class Cut:
    rate: float  # the shared rate after this throttle answer
    epoch: int
    cut: bool  # False when an earlier answer of the same epoch cut already


class RateLimiter:
    """The shared limiter; `key` is `Keys.rate(app, advertiser)`, `rate` the configured maximum.

    - burst: slots that may be taken at once after a quiet spell (1: evenly spaced sends);
    - max_wait: the longest sleep for a slot; a later slot is not reserved (re-schedule);
    - min_rate: the floor of the shared rate after cuts;
    - recovery_per_second: additive recovery, requests/s regained per second;
    - decrease: the multiplicative cut on a throttle answer;
    - headroom / probe: fast recovery up to headroom x the learned ceiling, `probe` x as fast above.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        burst: int = 1,
        max_wait: float = 10.0,
        min_rate: float = 0.5,
        recovery_per_second: float = 0.5,
        decrease: float = 0.8,
        headroom: float = 0.9,
        probe: float = 0.05,
    ) -> None:
        self.r = client
        self.burst = burst
        self.max_wait = max_wait
        self.min_rate = min_rate
        self.recovery = recovery_per_second
        self.decrease = decrease
        self.headroom = headroom
        self.probe = probe
        self._reserve = client.register_script(_RESERVE)
        self._slow = client.register_script(_SLOW_DOWN)
        self._too_large = client.register_script(_TOO_LARGE)

    def reserve(self, key: str, rate: float) -> Reservation:
        """Take the next send slot if it is at most `max_wait` away."""
        granted, wait, current, epoch = self._reserve(
            keys=[key],
            args=[
                rate,
                self.burst,
                self.max_wait,
                self.recovery,
                self.headroom,
                self.probe,
                KEY_TTL_SECONDS,
            ],
        )
        return Reservation(bool(granted), float(wait), float(current), int(epoch))

    def acquire(self, key: str, rate: float, sleep: Callable[[float], None] = time.sleep) -> Permit:
        """Reserve a slot and sleep until it; re-take it if TikTok throttled someone meanwhile."""
        waited = 0.0
        slot = Reservation(False, 0.0, rate, 0)
        for _ in range(REVALIDATIONS):
            slot = self.reserve(key, rate)
            if not slot.granted:
                return Permit(False, waited, slot.wait, slot.rate, slot.epoch)
            if slot.wait <= 0:
                return Permit(True, waited, 0.0, slot.rate, slot.epoch)
            sleep(slot.wait)
            waited += slot.wait
            if self.epoch(key) == slot.epoch:
                return Permit(True, waited, 0.0, slot.rate, slot.epoch)
        # Cut after cut while we slept: TikTok is pushing back hard, let the task wait its turn.
        return Permit(False, waited, 1 / slot.rate, slot.rate, slot.epoch)

    def slow_down(self, key: str, rate: float, *, epoch: int = -1, pause: float = 0.0) -> Cut:
        """TikTok throttled a request reserved in `epoch`: cut the rate (once per epoch) and
        push every worker's next slot at least `pause` seconds (Retry-After) away."""
        current, new_epoch, cut = self._slow(
            keys=[key],
            args=[
                rate,
                min(self.min_rate, rate),
                self.decrease,
                pause,
                epoch,
                self.recovery,
                self.headroom,
                self.probe,
                KEY_TTL_SECONDS,
            ],
        )
        return Cut(float(current), int(new_epoch), bool(cut))

    def epoch(self, key: str) -> int:
        return int(self.r.hget(key, "epoch") or 0)

    def state(self, key: str) -> dict[str, float]:
        raw = self.r.hgetall(key)
        return {k.decode(): float(v) for k, v in raw.items()}

    # -- TikTok's batch cap (40061) ----------------------------------------------------------
    def too_large(self, key: str, rows: int) -> int:
        """TikTok refused `rows` rows as too many: remember the smallest refused size (an hour)."""
        return int(self._too_large(keys=[key + ":rows"], args=[rows, ROW_LIMIT_TTL_SECONDS]))

    def row_limit(self, key: str) -> int | None:
        """Batches of this many rows or more were refused lately: split them before sending."""
        return self.parse_row_limit(self.r.get(self.row_limit_key(key)))

    @staticmethod
    def row_limit_key(key: str) -> str:
        return key + ":rows"

    @staticmethod
    def parse_row_limit(raw: bytes | None) -> int | None:
        return int(raw) if raw else None
