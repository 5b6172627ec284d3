"""One refresh per audience at a time: a leased lock, a waiting room, "newest snapshot wins"; and a
per-job run lease so that one execution at a time does a job's serial steps (stage, plan, finalize).

The audience lock's lease is renewed while the job runs (staging flushes, planning, every batch
sent) and lapses if its worker dies. A lapsed lock is not up for grabs while its last owner is
still sending: that job's batches are re-driven by the reconciler, and a newer refresh diffing
against a ledger that is still moving would sync the wrong set. A job that finds the lock taken
waits (its task re-schedules itself); it ends `superseded` when a job created after it has already
started, or waits too: only the newest snapshot syncs.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

import redis

from worker.keys import Keys


class LeaseLost(RuntimeError):
    """This execution no longer holds the lease it worked under: stop without writing more."""


# KEYS: lock, waiting, started, owner. ARGV: job id, created_at, lease ms, job key prefix.
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
if not holder then
  local owner = redis.call('GET', KEYS[4])
  if owner and owner ~= ARGV[1] then
    local job = redis.call('HMGET', ARGV[4] .. owner, 'phase', 'status')
    local at_rest = {succeeded=1, partially_failed=1, failed=1, superseded=1, dry_run=1,
                     auth_failed=1, held=1}
    if (job[1] == 'sending' or job[1] == 'finalizing') and not at_rest[job[2] or 'succeeded'] then
      holder = owner  -- its lease lapsed mid-send: it still owns the audience
    end
  end
end
if holder then
  redis.call('ZADD', KEYS[2], created, ARGV[1])
  return 'wait'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
return 'acquired'
"""

# Extend the lease; take a lapsed lock back if nobody else took the audience meanwhile.
# KEYS: lock, owner. ARGV: job id, lease ms.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lock, owner. ARGV: job id.
_RELEASE = """
local n = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then n = redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return n
"""

# Run lease: KEYS: run key. ARGV: token, lease ms.
_RUN_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RUN_RELEASE = """
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

    def _owner(self, dest: str, audience: str) -> str:
        # The last job that acquired the audience; outlives a lapsed lease, gone on release.
        return self.keys.lock(dest, audience) + ":owner"

    def acquire(self, dest: str, audience: str, job_id: str, created_at: float) -> LockResult:
        keys = [
            self.keys.lock(dest, audience),
            self.keys.waiting(dest, audience),
            self.keys.started(dest, audience),
            self._owner(dest, audience),
        ]
        result = self._acquire(
            keys=keys, args=[job_id, repr(created_at), self.lease_ms, self.keys.job("")]
        )
        return LockResult(result.decode() if isinstance(result, bytes) else result)

    def renew(self, dest: str, audience: str, job_id: str, client: Any = None) -> bool:
        """Extend the lease, or take a lapsed lock back; False when another job has the audience.
        With a pipeline as `client` the answer is that pipeline's, at its execute()."""
        keys = [self.keys.lock(dest, audience), self._owner(dest, audience)]
        return bool(self._renew(keys=keys, args=[job_id, self.lease_ms], client=client))

    def release(self, dest: str, audience: str, job_id: str) -> bool:
        keys = [self.keys.lock(dest, audience), self._owner(dest, audience)]
        return bool(self._release(keys=keys, args=[job_id]))

    def holder(self, dest: str, audience: str) -> str | None:
        value = self.r.get(self.keys.lock(dest, audience))
        return value.decode() if value else None

    def newer_started(self, dest: str, audience: str, created_at: float) -> bool:
        started = self.r.get(self.keys.started(dest, audience))
        return started is not None and float(started) > created_at


class JobRuns:
    """A leased claim on one job's serial steps: a redelivered or re-driven copy of a task never
    stages, plans or finalizes a job while another live execution does. A dead execution's claim
    lapses after the lease, and the next copy takes over."""

    def __init__(self, client: redis.Redis, keys: Keys, lease_seconds: int) -> None:
        self.r = client
        self.keys = keys
        self.lease_ms = int(lease_seconds * 1000)
        self._renew = client.register_script(_RUN_RENEW)
        self._release = client.register_script(_RUN_RELEASE)

    def key(self, job_id: str) -> str:
        return self.keys.job(job_id) + ":run"

    def claim(self, job_id: str) -> str | None:
        """A token for this execution, or None while another one holds the job."""
        token = uuid.uuid4().hex
        return token if self.r.set(self.key(job_id), token, nx=True, px=self.lease_ms) else None

    def renew(self, job_id: str, token: str) -> bool:
        return bool(self._renew(keys=[self.key(job_id)], args=[token, self.lease_ms]))

    def release(self, job_id: str, token: str) -> None:
        self._release(keys=[self.key(job_id)], args=[token])

    def held(self, job_id: str) -> bool:
        return bool(self.r.exists(self.key(job_id)))
