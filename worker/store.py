"""Redis-backed state: results store (jobs, batches, history), destinations, audience links.

Batch state changes go through Lua scripts so that the ledger update, the batch record and the
job's completion counter change in one atomic step.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import BaseModel

from config.settings import Settings, get_settings
from worker.keys import Keys, job_of_batch
from worker.models import (
    AT_REST,
    AudienceLink,
    BatchRecord,
    BatchState,
    Destination,
    JobRecord,
    JobSpec,
    JobStatus,
)
from worker.secrets import TokenBox

M = TypeVar("M", bound=BaseModel)

DIGEST = 32  # bytes per stored id (binary SHA-256)
PAGE = 1000  # commands per pipeline when going over every batch of a job


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def redis_client(settings: Settings | None = None) -> redis.Redis:
    """One connection pool per process and URL."""
    return _client((settings or get_settings()).redis_url)


def redact_uri(uri: str | None) -> str:
    """A members URI as shown in results: no credentials, no query string (signed URLs)."""
    if not uri:
        return ""
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return uri
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "[redacted]" if parts.query else "", ""))


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _model(cls: type[M], raw: bytes | None) -> M | None:
    """A record stored as JSON, or None when the key is missing."""
    return cls.model_validate_json(raw) if raw else None


def _batch_from(raw: dict[bytes, bytes]) -> BatchRecord | None:
    return BatchRecord.from_hash(_text(raw)) if raw else None


# Batch finished: only from pending; bumps the job's counters; returns {finished, total}.
_FINISH_BATCH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return {-1, 0} end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'batches_' .. ARGV[1], 1)
local finished = redis.call('HINCRBY', KEYS[2], 'batches_finished', 1)
return {finished, tonumber(redis.call('HGET', KEYS[2], 'batches_total') or '0')}
"""

# Batch succeeded: ledger update + batch state + job counters in one step.
# KEYS: batch, job, ledger shard keys...; ARGV: action, now, schema, size, then per ledger key
# its ids as one string of concatenated 32-byte digests (one argument instead of a thousand:
# packing and parsing arguments was most of this call's cost).
_COMMIT_BATCH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return {-1, 0} end
local cmd = 'SADD'
if ARGV[1] == 'delete' then cmd = 'SREM' end
for k = 3, #KEYS do
  local blob = ARGV[k + 2]
  local n = #blob / 32
  local j = 0
  while j < n do
    local last = math.min(j + 1000, n)
    local ids = {}
    for m = j, last - 1 do ids[#ids + 1] = string.sub(blob, m * 32 + 1, m * 32 + 32) end
    redis.call(cmd, KEYS[k], unpack(ids))
    j = last
  end
end
redis.call('HSET', KEYS[1], 'state', 'succeeded', 'finished_at', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'batches_succeeded', 1)
redis.call('HINCRBY', KEYS[2], 'sent_' .. ARGV[1] .. ':' .. ARGV[3], tonumber(ARGV[4]))
local finished = redis.call('HINCRBY', KEYS[2], 'batches_finished', 1)
return {finished, tonumber(redis.call('HGET', KEYS[2], 'batches_total') or '0')}
"""

# Split a pending batch in two new pending batches (40061, bisection).
# KEYS: batch, job, batchdata, child1, child1data, child2, child2data, job_batches
# ARGV: now, child1 id, child2 id, split point (bytes), reason
_SPLIT_BATCH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return 0 end
local data = redis.call('GET', KEYS[3])
if not data then return -1 end
local cut = tonumber(ARGV[4])
local fields = redis.call('HGETALL', KEYS[1])
local rec = {}
for i = 1, #fields, 2 do rec[fields[i]] = fields[i + 1] end
for c = 0, 1 do
  local key = KEYS[4 + 2 * c]
  local part
  if c == 0 then part = string.sub(data, 1, cut) else part = string.sub(data, cut + 1) end
  redis.call('SET', KEYS[5 + 2 * c], part)
  redis.call('HSET', key, 'batch_id', ARGV[2 + c], 'job_id', rec['job_id'], 'action', rec['action'],
    'schema', rec['schema'], 'size', string.len(part) / 32, 'state', 'pending', 'attempts', 0,
    'created_at', ARGV[1], 'parent', rec['batch_id'], 'bisect', ARGV[5] == 'bisect' and '1' or '0')
  redis.call('RPUSH', KEYS[8], ARGV[2 + c])
end
redis.call('HSET', KEYS[1], 'state', 'split', 'finished_at', ARGV[1], 'split_reason', ARGV[5])
redis.call('DEL', KEYS[3])
redis.call('HINCRBY', KEYS[2], 'batches_total', 2)
redis.call('HINCRBY', KEYS[2], 'batches_split', 1)
redis.call('HINCRBY', KEYS[2], 'batches_finished', 1)
return 1
"""

# A job leaves the active index only if it is at rest (or gone) at that instant.
# KEYS: job record, active index. ARGV: job id, then the at-rest statuses.
_DEACTIVATE = """
local status = redis.call('HGET', KEYS[1], 'status')
local rest = status == false
for i = 2, #ARGV do
  if status == ARGV[i] then rest = true end
end
if rest then return redis.call('ZREM', KEYS[2], ARGV[1]) end
return 0
"""

# Parked batches back to pending (resume after a token fix). KEYS: job, batch keys...
_UNPARK = """
local n = 0
for k = 2, #KEYS do
  if redis.call('HGET', KEYS[k], 'state') == 'parked' then
    redis.call('HSET', KEYS[k], 'state', 'pending', 'attempts', 0)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'batches_parked', -n)
  redis.call('HINCRBY', KEYS[1], 'batches_finished', -n)
end
return n
"""


class Store:
    """Everything tiktok-sync keeps in Redis, behind named operations."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.ttl = settings.results_ttl_seconds
        self._finish = client.register_script(_FINISH_BATCH)
        self._commit = client.register_script(_COMMIT_BATCH)
        self._split = client.register_script(_SPLIT_BATCH)
        self._unpark = client.register_script(_UNPARK)
        self._deactivate = client.register_script(_DEACTIVATE)
        self._box: TokenBox | None = None
        self._tokens: dict[bytes, str] = {}  # encrypted blob -> token: decrypt once per blob

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Store:
        settings = settings or get_settings()
        return cls(redis_client(settings), settings)

    @property
    def box(self) -> TokenBox:
        if self._box is None:
            self._box = TokenBox(self.settings.token_encryption_key)
        return self._box

    # -- destinations --------------------------------------------------------------------------
    def save_destination(self, dest: Destination, token: str | None = None) -> None:
        key = self.keys.destination(dest.id)
        fields = {"record": dest.model_dump_json()}
        if token is not None:
            fields["token"] = self.box.encrypt(token)
        self.r.hset(key, mapping=fields)
        self.r.sadd(self.keys.destinations, dest.id)

    def destination(self, dest_id: str) -> Destination | None:
        return _model(Destination, self.r.hget(self.keys.destination(dest_id), "record"))

    def require_destination(self, dest_id: str) -> Destination:
        dest = self.destination(dest_id)
        if dest is None:
            raise LookupError(
                f"unknown destination {dest_id!r} (see `tiktok-sync destination list`)"
            )
        return dest

    def token(self, dest_id: str) -> str:
        blob = self.r.hget(self.keys.destination(dest_id), "token")
        if not blob:
            raise LookupError(f"destination {dest_id!r} has no access token")
        # Decrypting is deterministic and a new token is a new blob, so answers can be kept:
        # it saves a Fernet decrypt (HMAC + AES) on every batch sent.
        token = self._tokens.get(blob)
        if token is None:
            if len(self._tokens) >= 1024:
                self._tokens.clear()
            token = self._tokens[blob] = self.box.decrypt(blob.decode())
        return token

    def destinations(self) -> list[Destination]:
        ids = sorted(m.decode() for m in self.r.smembers(self.keys.destinations))
        return [d for d in (self.destination(i) for i in ids) if d is not None]

    def remove_destination(self, dest_id: str) -> bool:
        self.r.srem(self.keys.destinations, dest_id)
        return bool(self.r.delete(self.keys.destination(dest_id)))

    def set_destination_status(self, dest_id: str, status: str, message: str = "") -> None:
        dest = self.destination(dest_id)
        if dest is None:
            return
        dest.status = status  # type: ignore[assignment]
        dest.status_message = message
        dest.updated_at = time.time()
        self.save_destination(dest)

    # -- audience links ------------------------------------------------------------------------
    def save_link(self, link: AudienceLink) -> None:
        self.r.set(self.keys.link(link.destination_id, link.audience_id), link.model_dump_json())
        self.r.sadd(self.keys.links, f"{link.destination_id}|{link.audience_id}")

    def link(self, dest_id: str, audience_id: str) -> AudienceLink | None:
        return _model(AudienceLink, self.r.get(self.keys.link(dest_id, audience_id)))

    def links(self, dest_id: str | None = None) -> list[AudienceLink]:
        out = []
        for member in sorted(m.decode() for m in self.r.smembers(self.keys.links)):
            d, _, a = member.partition("|")
            if dest_id is None or d == dest_id:
                link = self.link(d, a)
                if link is not None:
                    out.append(link)
        return out

    def remove_link(self, dest_id: str, audience_id: str) -> bool:
        self.r.srem(self.keys.links, f"{dest_id}|{audience_id}")
        return bool(self.r.delete(self.keys.link(dest_id, audience_id)))

    def update_link(self, dest_id: str, audience_id: str, **fields: Any) -> None:
        """Change some fields of a link; optimistic (WATCH) so concurrent updates (finalize,
        beat, CLI) never overwrite each other's fields with a stale copy."""
        key = self.keys.link(dest_id, audience_id)

        def apply(pipe: Any) -> None:
            raw = pipe.get(key)
            if not raw:
                return
            link = AudienceLink.model_validate_json(raw).model_copy(update=fields)
            pipe.multi()
            pipe.set(key, link.model_dump_json())

        self.r.transaction(apply, key)

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, spec: JobSpec) -> bool:
        """Record a new job; False when the job id exists already (idempotent enqueue)."""
        key = self.keys.job(spec.job_id)
        if not self.r.hsetnx(key, "status", JobStatus.QUEUED):
            return False
        pipe = self.r.pipeline()
        pipe.delete(key)  # counters a lost earlier record left behind (see job())
        pipe.hset(
            key,
            mapping={
                "status": JobStatus.QUEUED,
                "phase": "queued",
                "destination_id": spec.destination_id,
                "audience_id": spec.audience_id,
                "source": redact_uri(spec.members) if spec.members else f"{spec.mode} (inline)",
                "mode": spec.mode,
                "created_at": spec.created_at,
            },
        )
        pipe.set(self.keys.job_spec(spec.job_id), spec.model_dump_json())
        pipe.zadd(self.keys.jobs, {spec.job_id: spec.created_at})
        pipe.zadd(self.keys.active_jobs, {spec.job_id: spec.created_at})
        pipe.lpush(self.keys.history(spec.destination_id, spec.audience_id), spec.job_id)
        pipe.ltrim(
            self.keys.history(spec.destination_id, spec.audience_id),
            0,
            self.settings.history_length - 1,
        )
        pipe.execute()
        return True

    def job_spec(self, job_id: str) -> JobSpec | None:
        return _model(JobSpec, self.r.get(self.keys.job_spec(job_id)))

    def job(self, job_id: str) -> JobRecord | None:
        raw = self.r.hgetall(self.keys.job(job_id))
        if b"status" not in raw:  # none, or counters written after a host crash lost the record
            return None
        return JobRecord.from_hash(job_id, _text(raw))

    def update_job(self, job_id: str, **fields: Any) -> None:
        now = fields["updated_at"] = time.time()
        mapping = {k: "" if v is None else str(v) for k, v in fields.items()}
        status = fields.get("status")
        if status is None or status in AT_REST:
            self.r.hset(self.keys.job(job_id), mapping=mapping)
            return
        # Back in motion (resumed, approved, ...): the reconciler watches it again. In this
        # order, in one transaction: see deactivate_jobs.
        pipe = self.r.pipeline()
        pipe.hset(self.keys.job(job_id), mapping=mapping)
        pipe.zadd(self.keys.active_jobs, {job_id: now}, nx=True)
        pipe.execute()

    def active_jobs(self) -> list[str]:
        return [raw.decode() for raw in self.r.zrange(self.keys.active_jobs, 0, -1)]

    def deactivate_jobs(self, job_ids: list[str]) -> int:
        """Drop from the active index the jobs that are at rest (or gone); atomic per job, so a
        job set in motion again meanwhile stays. Returns how many were dropped."""
        if not job_ids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        rest = sorted(AT_REST)
        for job_id in job_ids:
            self._deactivate(
                keys=[self.keys.job(job_id), self.keys.active_jobs],
                args=[job_id, *rest],
                client=pipe,
            )
        return sum(int(n) for n in pipe.execute())

    def count(self, job_id: str, counts: dict[str, int]) -> None:
        if counts:
            pipe = self.r.pipeline(transaction=False)
            key = self.keys.job(job_id)
            for name, value in counts.items():
                if value:
                    pipe.hincrby(key, name, value)
            pipe.execute()

    def jobs(
        self, dest_id: str | None = None, audience_id: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        if dest_id and audience_id:
            ids = [
                i.decode()
                for i in self.r.lrange(self.keys.history(dest_id, audience_id), 0, limit - 1)
            ]
        else:
            ids = [i.decode() for i in self.r.zrevrange(self.keys.jobs, 0, max(limit * 20, 200))]
        out = []
        for job_id in ids:
            job = self.job(job_id)
            if job is None:
                continue
            if (dest_id and job.destination_id != dest_id) or (
                audience_id and job.audience_id != audience_id
            ):
                continue
            out.append(job)
            if len(out) >= limit:
                break
        return out

    def record_rejects(self, job_id: str, samples: list[dict[str, Any]]) -> None:
        """A few examples of rejected rows (line, reason; never the raw value) for people."""
        if samples:
            key = self.keys.job_rejects(job_id)
            self.r.rpush(key, *[json.dumps(s) for s in samples])
            self.r.ltrim(key, 0, 99)

    def reject_samples(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(self.keys.job_rejects(job_id), 0, -1)]

    def expire_job(self, job_id: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key in (
            self.keys.job(job_id),
            self.keys.job_spec(job_id),
            self.keys.job_batches(job_id),
            self.keys.job_rejects(job_id),
            self.keys.job_finalize(job_id),
            self.keys.job(job_id) + ":parts",
            self.keys.job(job_id) + ":parts_done",
            self.keys.job(job_id) + ":plan",
        ):
            pipe.expire(key, self.ttl)
        for n, batch_id in enumerate(self.batch_ids(job_id), 1):
            pipe.expire(self.keys.batch(batch_id), self.ttl)
            if n % PAGE == 0:
                pipe.execute()  # pages: one pipeline of a 10M audience's batches is ~25k commands
        pipe.zremrangebyscore(self.keys.jobs, 0, time.time() - self.ttl)
        pipe.execute()

    # -- batches -------------------------------------------------------------------------------
    def add_batches(self, job_id: str, batches: list[tuple[str, str, str, bytes]]) -> None:
        """Store planned batches (batch id, action, schema, concatenated digests)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for batch_id, action, schema, data in batches:
            pipe.set(self.keys.batch_data(batch_id), data)
            pipe.hset(
                self.keys.batch(batch_id),
                mapping={
                    "batch_id": batch_id,
                    "job_id": job_id,
                    "action": action,
                    "schema": schema,
                    "size": len(data) // DIGEST,
                    "state": BatchState.PENDING,
                    "attempts": 0,
                    "created_at": now,
                },
            )
            pipe.rpush(self.keys.job_batches(job_id), batch_id)
        pipe.hincrby(self.keys.job(job_id), "batches_total", len(batches))
        pipe.execute()

    def batch_ids(self, job_id: str) -> list[str]:
        return [b.decode() for b in self.r.lrange(self.keys.job_batches(job_id), 0, -1)]

    def batch(self, batch_id: str) -> BatchRecord | None:
        return _batch_from(self.r.hgetall(self.keys.batch(batch_id)))

    def batches(self, job_id: str) -> list[BatchRecord]:
        return list(self.iter_batches(job_id))

    def iter_batches(self, job_id: str) -> Iterator[BatchRecord]:
        """The job's batch records, read a page at a time: memory stays flat however many."""
        ids = self.batch_ids(job_id)
        for i in range(0, len(ids), PAGE):
            pipe = self.r.pipeline(transaction=False)
            for batch_id in ids[i : i + PAGE]:
                pipe.hgetall(self.keys.batch(batch_id))
            for raw in pipe.execute():
                if raw:
                    yield BatchRecord.from_hash(_text(raw))

    def delivery_inputs(
        self, batch_id: str
    ) -> tuple[BatchRecord | None, JobSpec | None, bytes | None]:
        """A batch, its job's spec and its ids, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.batch(batch_id))
        pipe.get(self.keys.job_spec(job_of_batch(batch_id)))
        pipe.get(self.keys.batch_data(batch_id))
        raw_batch, raw_spec, data = pipe.execute()
        return _batch_from(raw_batch), _model(JobSpec, raw_spec), data

    def destination_and_link(
        self, dest_id: str, audience_id: str
    ) -> tuple[Destination | None, AudienceLink | None]:
        """Both records in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.keys.destination(dest_id), "record")
        pipe.get(self.keys.link(dest_id, audience_id))
        raw_dest, raw_link = pipe.execute()
        return _model(Destination, raw_dest), _model(AudienceLink, raw_link)

    def batch_data(self, batch_id: str) -> bytes | None:
        return self.r.get(self.keys.batch_data(batch_id))

    def update_batch(self, batch_id: str, client: Any = None, **fields: Any) -> None:
        (client or self.r).hset(
            self.keys.batch(batch_id),
            mapping={k: "" if v is None else str(v) for k, v in fields.items()},
        )

    def incr_batch(self, batch_id: str, field: str, amount: float = 1) -> None:
        """Add to a counter of the batch: an int counter with an int, a float one with a float
        (always HINCRBYFLOAT: a whole float such as 0.0 must not meet HINCRBY on "0.012")."""
        if isinstance(amount, float):
            self.r.hincrbyfloat(self.keys.batch(batch_id), field, amount)
        else:
            self.r.hincrby(self.keys.batch(batch_id), field, amount)

    def commit_batch(
        self,
        batch: BatchRecord,
        dest_id: str,
        audience_id: str,
        ledger_groups: dict[int, list[bytes]] | dict[int, bytes],
    ) -> tuple[int, int]:
        """Ledger update + batch `succeeded` + job counters, atomically. (-1, 0) if not pending.

        `ledger_groups`: shard -> its digests, as a list or concatenated (`shard_blobs`)."""
        keys = [self.keys.batch(batch.batch_id), self.keys.job(batch.job_id)]
        args: list[Any] = [batch.action, time.time(), batch.schema_, batch.size]
        for shard, ids in ledger_groups.items():
            keys.append(self.keys.ledger(dest_id, audience_id, shard, batch.schema_))
            args.append(ids if isinstance(ids, bytes) else b"".join(ids))
        finished, total = self._commit(keys=keys, args=args)
        if finished >= 0:
            self.r.delete(self.keys.batch_data(batch.batch_id))
        return int(finished), int(total)

    def finish_batch(self, batch: BatchRecord, state: BatchState) -> tuple[int, int]:
        finished, total = self._finish(
            keys=[self.keys.batch(batch.batch_id), self.keys.job(batch.job_id)],
            args=[state.value, time.time()],
        )
        return int(finished), int(total)

    def split_batch(self, batch: BatchRecord, reason: str) -> list[str]:
        """Replace a pending batch by its two halves; returns the new batch ids ([] if not pending)."""
        children = [f"{batch.batch_id}.{i}" for i in (1, 2)]
        cut = (batch.size // 2) * DIGEST
        keys = [
            self.keys.batch(batch.batch_id),
            self.keys.job(batch.job_id),
            self.keys.batch_data(batch.batch_id),
        ]
        for child in children:
            keys += [self.keys.batch(child), self.keys.batch_data(child)]
        keys.append(self.keys.job_batches(batch.job_id))
        done = self._split(keys=keys, args=[time.time(), *children, cut, reason])
        return children if done == 1 else []

    def unpark(self, job_id: str) -> list[str]:
        ids = self.batch_ids(job_id)
        if not ids:
            return []
        parked = [b.batch_id for b in self.batches(job_id) if b.state == BatchState.PARKED]
        if not parked:
            return []
        self._unpark(keys=[self.keys.job(job_id)] + [self.keys.batch(b) for b in parked])
        return parked

    def pending_batches(self, job_id: str) -> list[str]:
        return [b.batch_id for b in self.batches(job_id) if b.state == BatchState.PENDING]


def digests(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), DIGEST):
        yield data[i : i + DIGEST]


def group_by_shard(ids: Iterable[bytes], shards: int) -> dict[int, list[bytes]]:
    groups: dict[int, list[bytes]] = {}
    for digest in ids:
        groups.setdefault(digest[0] % shards, []).append(digest)
    return groups


@functools.cache
def _shard_table(shards: int) -> bytes:
    return bytes(b % shards for b in range(256))  # first byte of a digest -> its shard


def shard_blobs(data: bytes, shards: int) -> dict[int, bytes]:
    """`group_by_shard` of a batch's concatenated digests, each group kept concatenated.

    Works on whole byte strings (C loops) instead of one digest at a time: `plan` writes a
    batch shard by shard, so each shard's digests are one slice of `data`; other orders fall
    back to gathering them one by one.
    """
    of = data[::DIGEST].translate(_shard_table(shards))  # the shard of every digest, in order
    out: dict[int, bytes] = {}
    for shard in set(of):
        first, last = of.find(shard), of.rfind(shard)
        if of.count(shard) != last - first + 1:
            return {s: b"".join(ids) for s, ids in group_by_shard(digests(data), shards).items()}
        out[shard] = data[first * DIGEST : (last + 1) * DIGEST]
    return out


def hex_ids(data: bytes) -> list[str]:
    """A batch's concatenated digests as lowercase hex strings (two C calls, no Python loop)."""
    return data.hex(" ", DIGEST).split(" ") if data else []
