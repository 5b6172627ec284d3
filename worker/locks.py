"""One refresh per audience at a time: a leased lock, a waiting room, and "newest snapshot wins".

A job that finds the lock taken waits (its task re-schedules itself). A job is `superseded` when
a job created after it has already started, or is waiting too: only the newest snapshot syncs.
"""

from __future__ import annotations

import enum

import redis

from worker.keys import Keys

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'owned'
end
local created = tonumber(ARGV[2])
local started = tonumber(redis.call('GET', KEYS[3]) or '0')
if created < started then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'superseded'
end
local newest = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if newest[1] and newest[1] ~= ARGV[1] and tonumber(newest[2]) > created then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'superseded'
end
if holder then
  redis.call('ZADD', KEYS[2], created, ARGV[1])
  return 'wait'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
return 'acquired'
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockResult(enum.StrEnum):
    ACQUIRED = "acquired"
    OWNED = "owned"  # this job holds it already (a redelivered task)
    WAIT = "wait"
    SUPERSEDED = "superseded"


class AudienceLocks:
    def __init__(self, client: redis.Redis, keys: Keys, lease_seconds: int) -> None:
        self.r = client
        self.keys = keys
        self.lease_ms = int(lease_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self, dest: str, audience: str, job_id: str, created_at: float) -> LockResult:
        keys = [self.keys.lock(dest, audience), self.keys.waiting(dest, audience), self.keys.started(dest, audience)]
        result = self._acquire(keys=keys, args=[job_id, repr(created_at), self.lease_ms])
        return LockResult(result.decode() if isinstance(result, bytes) else result)

    def renew(self, dest: str, audience: str, job_id: str) -> bool:
        return bool(self._renew(keys=[self.keys.lock(dest, audience)], args=[job_id, self.lease_ms]))

    def release(self, dest: str, audience: str, job_id: str) -> bool:
        return bool(self._release(keys=[self.keys.lock(dest, audience)], args=[job_id]))

    def holder(self, dest: str, audience: str) -> str | None:
        value = self.r.get(self.keys.lock(dest, audience))
        return value.decode() if value else None

    def newer_started(self, dest: str, audience: str, created_at: float) -> bool:
        started = self.r.get(self.keys.started(dest, audience))
        return started is not None and float(started) > created_at
