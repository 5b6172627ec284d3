"""Shared rate limiter: one budget per (TikTok app, advertiser) for every worker on every host.

GCRA on the Redis server's clock (`TIME` inside Lua), so hosts with skewed clocks agree. A
caller *reserves* a send slot and sleeps until it; a slot further away than `max_wait` is not
reserved and the caller re-schedules its task instead of holding a broker message. The rate is
AIMD: a TikTok throttle answer halves it (at most once a second), and it recovers additively.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'updated')
local max_rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local recovery = tonumber(ARGV[4])
local rate = tonumber(h[2]) or max_rate
local updated = tonumber(h[3]) or now
rate = math.min(max_rate, rate + (now - updated) * recovery)
local interval = 1 / rate
local tat = math.max(tonumber(h[1]) or now, now)
local wait = tat - interval * (burst - 1) - now
if wait < 0 then wait = 0 end
if wait > max_wait then
  redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'updated', tostring(now))
  return {0, tostring(wait), tostring(rate)}
end
redis.call('HSET', KEYS[1], 'tat', tostring(tat + interval), 'rate', tostring(rate), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], 86400)
return {1, tostring(wait), tostring(rate)}
"""

_SLOW_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'cut_at')
local rate = tonumber(h[2]) or tonumber(ARGV[1])
local cut_at = tonumber(h[3]) or 0
if now - cut_at >= 1 then
  rate = math.max(tonumber(ARGV[2]), rate * tonumber(ARGV[3]))
  cut_at = now
end
local pause = tonumber(ARGV[4])
local tat = math.max(tonumber(h[1]) or now, now + pause)
redis.call('HSET', KEYS[1], 'tat', tostring(tat), 'rate', tostring(rate), 'updated', tostring(now),
  'cut_at', tostring(cut_at))
redis.call('HINCRBY', KEYS[1], 'throttled', 1)
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(rate)
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    wait: float  # seconds to sleep before sending (granted) or to re-schedule after (not granted)
    rate: float  # the shared rate now in force


class RateLimiter:
    def __init__(self, client: redis.Redis, *, burst: int = 1, max_wait: float = 10.0,
                 min_rate: float = 0.5, recovery_per_second: float = 0.5, decrease: float = 0.5) -> None:
        self.r = client
        self.burst = burst
        self.max_wait = max_wait
        self.min_rate = min_rate
        self.recovery = recovery_per_second
        self.decrease = decrease
        self._acquire = client.register_script(_ACQUIRE)
        self._slow = client.register_script(_SLOW_DOWN)

    def reserve(self, key: str, rate: float) -> Reservation:
        granted, wait, current = self._acquire(
            keys=[key], args=[rate, self.burst, self.max_wait, self.recovery]
        )
        return Reservation(bool(granted), float(wait), float(current))

    def slow_down(self, key: str, rate: float, pause: float = 0.0) -> float:
        """TikTok throttled us: cut the shared rate (once a second at most) and pause everyone."""
        return float(self._slow(keys=[key], args=[rate, min(self.min_rate, rate), self.decrease, pause]))

    def state(self, key: str) -> dict[str, float]:
        raw = self.r.hgetall(key)
        return {k.decode(): float(v) for k, v in raw.items()}
