"""The refresh of one audience, as plain functions: stage, diff, guard, plan; then finalize.

Tasks in `tasks/` call these and turn the returned `Step` into Celery calls, so everything here
runs (and is tested) without Celery. Every function is safe to run again for the same job: a
redelivered message repeats no effect.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from worker.identifiers import COLUMNS, ID_SCHEMA, Hasher, IdType, RejectedIdentifier
from worker.idgraph import Extension
from worker.locks import AudienceLocks, JobRuns, LeaseLost, LockResult
from worker.models import AT_REST, BatchState, Destination, JobSpec, JobStatus
from worker.runtime import Runtime
from worker.sources import Member, RejectedRow, SourceError, iter_inline, open_source, split_ranges
from worker.suppression import Suppressions
from worker.suppression import settle as settle_suppressions

log = structlog.get_logger(__name__)

SCHEMAS = tuple(ID_SCHEMA.values())
STAGE_FLUSH = 100_000  # ids buffered before one pipelined round of variadic SADDs (~8 MB)
PLAN_FLUSH = 50  # batches written per pipeline while planning
REJECT_SAMPLES = 20
_BATCH_COUNTERS = (
    "batches_total",
    "batches_finished",
    "batches_succeeded",
    "batches_failed",
    "batches_parked",
    "batches_split",
)


@dataclass
class Step:
    """What the task should do next."""

    wait: float | None = None  # re-schedule the same task after this many seconds
    send: list[str] = field(default_factory=list)  # batch ids to enqueue
    finalize: bool = False
    stage: list[tuple[int, int, int]] = field(default_factory=list)  # (part, start, end) to stage
    plan: bool = False  # staging is complete: diff, guard and plan next


def locks(rt: Runtime) -> AudienceLocks:
    return AudienceLocks(rt.store.r, rt.store.keys, rt.settings.lock_lease_seconds)


def runs(rt: Runtime) -> JobRuns:
    return JobRuns(rt.store.r, rt.store.keys, rt.settings.lock_lease_seconds)


def renewer(rt: Runtime, spec: JobSpec, run: str | None = None) -> Any:
    """Renew the audience lock (and this execution's run claim); LeaseLost once either is gone."""
    lk, jr = locks(rt), runs(rt)

    def renew() -> None:
        if not lk.renew(spec.destination_id, spec.audience_id, spec.job_id):
            raise LeaseLost(f"job {spec.job_id} lost the lock of its audience")
        if run is not None and not jr.renew(spec.job_id, run):
            raise LeaseLost(f"another execution took over job {spec.job_id}")

    return renew


# -- staging ---------------------------------------------------------------------------------
@dataclass
class StageCounts:
    counts: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def reject_row(self, line: int, reason: str, detail: str = "") -> None:
        self.counts["rows_rejected"] += 1
        self.counts[f"rejected_row:{reason}"] += 1
        if len(self.samples) < REJECT_SAMPLES:
            self.samples.append({"line": line, "reason": reason, "detail": detail})


class Stager:
    """Normalise, hash and stage members into sharded Redis sets (binary digests)."""

    def __init__(self, rt: Runtime, dest: Destination, key_for: Any, renew: Any = None) -> None:
        self.rt = rt
        self.shards = rt.settings.state_shards
        self.allowed = set(dest.identifiers)
        self.hasher = Hasher(dest.phone_region)
        self.key_for = key_for  # (shard, schema) -> Redis key
        self.renew = renew
        self.buffer: dict[tuple[int, str], list[bytes]] = {}
        self.buffered = 0
        self.stats = StageCounts()
        # Per source column, resolved once (add() runs per identifier, and formatting an IdType
        # into a count key costs more than a dict look-up): type, pre-hashed, allowed, count
        # keys, and the buffer slot (shard, schema) of each possible first byte of a digest.
        self.columns: dict[str, tuple[IdType, bool, bool, str, str, tuple[Any, ...]]] = {
            column: (
                id_type,
                prehashed,
                id_type in self.allowed,
                f"valid:{id_type}",
                f"ignored:{id_type}",
                tuple((b % self.shards, ID_SCHEMA[id_type]) for b in range(256)),
            )
            for column, (id_type, prehashed) in COLUMNS.items()
        }

    def add(self, rows: Iterable[Member | RejectedRow]) -> None:
        counts = self.stats.counts
        digest = self.hasher.digest
        columns = self.columns
        buffer = self.buffer
        for row in rows:
            counts["rows_read"] += 1
            if isinstance(row, RejectedRow):
                self.stats.reject_row(row.line, row.reason, row.detail)
                continue
            if not row.consent:
                counts["members_excluded"] += 1
                continue
            valid = 0
            for column, values in row.identifiers.items():
                id_type, prehashed, allowed, valid_key, ignored_key, slots = columns[column]
                if not allowed:
                    counts[ignored_key] += len(values)
                    continue
                for value in values:
                    try:
                        d = digest(id_type, value, prehashed)
                    except RejectedIdentifier as error:
                        counts[f"rejected_id:{id_type}:{error.reason}"] += 1
                        continue
                    valid += 1
                    counts[valid_key] += 1
                    slot = slots[d[0]]
                    bucket = buffer.get(slot)
                    if bucket is None:
                        buffer[slot] = [d]
                    else:
                        bucket.append(d)
            if valid:
                counts["members_valid"] += 1
                self.buffered += valid
                if self.buffered >= STAGE_FLUSH:
                    self.flush()
            else:
                self.stats.reject_row(row.line, "no_valid_identifier")

    def flush(self) -> None:
        if not self.buffer:
            return
        pipe = self.rt.store.r.pipeline(transaction=False)
        for (shard, schema), ids in self.buffer.items():
            for i in range(0, len(ids), 5000):
                pipe.sadd(self.key_for(shard, schema), *ids[i : i + 5000])
        pipe.execute()
        self.buffer.clear()
        self.buffered = 0
        if self.renew is not None:
            self.renew()


def _rows(
    rt: Runtime,
    spec: JobSpec,
    members: list[dict[str, Any]] | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[Member | RejectedRow]:
    if members is not None:
        yield from iter_inline(members)
        return
    if spec.inline is not None:
        yield from iter_inline(spec.inline)
        return
    assert spec.members is not None
    with open_source(
        spec.members,
        spec.format,
        max_line_bytes=rt.settings.max_line_bytes,
        http_timeout=rt.settings.source_http_timeout,
        byte_range=byte_range,
    ) as source:
        yield from source


def _state_keys(rt: Runtime, spec: JobSpec, *kinds: str) -> list[str]:
    keys = rt.store.keys
    out = []
    for shard in range(rt.settings.state_shards):
        for schema in SCHEMAS:
            for kind in kinds:
                if kind == "stage":
                    out.append(
                        keys.stage(
                            spec.destination_id, spec.audience_id, shard, schema, spec.job_id
                        )
                    )
                elif kind == "minus":
                    out.append(
                        keys.stage(
                            spec.destination_id,
                            spec.audience_id,
                            shard,
                            schema,
                            spec.job_id + "~minus",
                        )
                    )
                else:
                    out.append(
                        keys.diff(
                            spec.destination_id, spec.audience_id, shard, schema, spec.job_id, kind
                        )
                    )
    return out


def drop_job_state(rt: Runtime, spec: JobSpec) -> None:
    keys = _state_keys(rt, spec, "stage", "minus", "add", "del")
    for i in range(0, len(keys), 500):
        rt.store.r.unlink(*keys[i : i + 500])


def stage(
    rt: Runtime,
    spec: JobSpec,
    dest: Destination,
    byte_range: tuple[int, int] | None = None,
    fresh: bool = True,
    renew: Any = None,
) -> Counter:
    """Stream the snapshot (or one byte range of it, or the delta's two lists) into staging sets.

    Returns the counts. `fresh` drops what an earlier attempt of this job staged; parts of a
    split snapshot pass False (SADD is idempotent, so a re-run part repeats nothing).
    """
    keys = rt.store.keys
    renew = renew or renewer(rt, spec)

    def plus(shard: int, schema: str) -> str:
        return keys.stage(spec.destination_id, spec.audience_id, shard, schema, spec.job_id)

    def minus(shard: int, schema: str) -> str:
        return keys.stage(
            spec.destination_id, spec.audience_id, shard, schema, spec.job_id + "~minus"
        )

    if fresh:
        drop_job_state(rt, spec)  # a redelivered job starts staging from scratch
    total: Counter = Counter()
    samples: list[dict[str, Any]] = []
    parts: list[tuple[Any, list[dict[str, Any]] | None, str]]
    if spec.mode == "delta":
        parts = [(plus, spec.additions or [], ""), (minus, spec.removals or [], "removal_")]
    else:
        parts = [(plus, None, "")]
    link = rt.store.link(spec.destination_id, spec.audience_id)
    extension = Extension(rt, dest) if link is not None and link.id_extension else None
    for key_for, members, prefix in parts:
        stager = Stager(rt, dest, key_for, renew)
        rows = _rows(rt, spec, members, byte_range)
        # ID extension wraps the rows (graph lookups per chunk); Stager.add itself is unchanged.
        stager.add(extension.extend(rows, stager.stats.counts) if extension else rows)
        stager.flush()
        total.update({prefix + k: v for k, v in stager.stats.counts.items()})
        samples.extend(stager.stats.samples)
    rt.store.record_rejects(spec.job_id, samples)
    return total


# -- diff and guard ----------------------------------------------------------------------------
def diff(rt: Runtime, spec: JobSpec) -> Counter:
    """Server-side, shard by shard: adds = staged − synced, removes = synced − staged.

    Globally suppressed ids (worker/suppression.py) are never added, and every job removes
    those the ledger still holds: adds −= suppressed, removes ∪= synced ∩ suppressed.
    """
    keys = rt.store.keys
    r = rt.store.r
    counts: Counter = Counter()
    d, a, j = spec.destination_id, spec.audience_id, spec.job_id
    suppressed = Suppressions(rt).active()  # shards without suppressed ids skip the extra work
    for shard in range(rt.settings.state_shards):
        pipe = r.pipeline(transaction=False)
        extra: list[str] = []  # schemas with suppressed ids in this shard: 2 more results each
        for schema in SCHEMAS:
            ledger = keys.ledger(d, a, shard, schema)
            staged = keys.stage(d, a, shard, schema, j)
            add, rem = (
                keys.diff(d, a, shard, schema, j, "add"),
                keys.diff(d, a, shard, schema, j, "del"),
            )
            supp = [keys.suppressed(shard, schema)] if (shard, schema) in suppressed else []
            if spec.mode == "delta":
                pipe.sdiffstore(add, [staged, ledger, *supp])
                pipe.sinterstore(rem, [keys.stage(d, a, shard, schema, j + "~minus"), ledger])
            elif spec.resync:
                pipe.sdiffstore(
                    add, [staged, *supp]
                )  # every member again, whatever the ledger says
                pipe.sdiffstore(rem, [ledger, staged])
            else:
                pipe.sdiffstore(add, [staged, ledger, *supp])
                pipe.sdiffstore(rem, [ledger, staged])
            pipe.scard(ledger)
            pipe.scard(staged)
            if supp:
                extra.append(schema)
        for schema in extra:
            ledger, staged = keys.ledger(d, a, shard, schema), keys.stage(d, a, shard, schema, j)
            rem, held = (
                keys.diff(d, a, shard, schema, j, "del"),
                keys.diff(d, a, shard, schema, j, "supp"),
            )
            pipe.sinterstore(held, [ledger, keys.suppressed(shard, schema)])
            pipe.sunionstore(rem, [rem, held])
            pipe.unlink(held)
            pipe.sintercard(2, [staged, keys.suppressed(shard, schema)])
        results = pipe.execute()
        n = 4 * len(SCHEMAS)
        for i, schema in enumerate(SCHEMAS):
            n_add, n_rem, n_ledger, n_staged = results[4 * i : 4 * i + 4]
            counts[f"adds:{schema}"] += n_add
            counts[f"removes:{schema}"] += n_rem
            counts[f"synced_before:{schema}"] += n_ledger
            counts[f"staged:{schema}"] += n_staged
        for k, schema in enumerate(extra):
            _, n_rem, _, n_staged_suppressed = results[n + 4 * k : n + 4 * k + 4]
            counts[f"removes:{schema}"] += n_rem - results[4 * SCHEMAS.index(schema) + 1]
            counts[f"suppressed:{schema}"] += n_staged_suppressed
    return +counts


def total(counts: Counter, group: str) -> int:
    return sum(v for k, v in counts.items() if k.startswith(group + ":"))


def mass_delete_reason(rt: Runtime, spec: JobSpec, counts: Counter) -> str | None:
    """Why this snapshot must be held for review, or None."""
    if spec.mode == "delta" or spec.allow_mass_delete:
        return None
    synced = total(counts, "synced_before")
    removes = total(counts, "removes")
    if synced == 0 or removes == 0:
        return None
    share = removes / synced
    threshold = rt.settings.mass_delete_threshold
    if total(counts, "staged") == 0:
        why = "the snapshot has no valid identifiers"
    elif share > threshold:
        why = f"it exceeds MASS_DELETE_THRESHOLD={threshold:.0%}"
    else:
        return None
    return (
        f"held: this snapshot would delete {removes} of {synced} synced ids ({share:.1%}) and {why}. "
        f"Check the export, then run `tiktok-sync approve {spec.job_id}` to send it, or refresh "
        "again with a corrected snapshot (a newer refresh supersedes this one)."
    )


# -- planning ------------------------------------------------------------------------------------
def plan(rt: Runtime, spec: JobSpec, renew: Any = None) -> list[str]:
    """Cut each schema's adds and deletes into batches stored in Redis; returns their ids."""
    store = rt.store
    keys = store.keys
    size = rt.settings.tiktok_batch_size
    d, a, j = spec.destination_id, spec.audience_id, spec.job_id
    # A re-run plan starts over, completion counters included. Its batch ids are new: a message
    # of an earlier plan still in flight (phase lost in a Redis crash) then finds no batch.
    attempt = int(store.r.hincrby(keys.job(j), "plans", 1))
    old = store.batch_ids(j)
    if old:
        store.r.unlink(
            *[keys.batch(b) for b in old], *[keys.batch_data(b) for b in old], keys.job_batches(j)
        )
        store.r.hset(keys.job(j), mapping=dict.fromkeys(_BATCH_COUNTERS, 0))
        store.r.delete(keys.job_finalize(j))
    suffix = "" if attempt == 1 else f"p{attempt}"
    ids: list[str] = []
    pending: list[tuple[str, str, str, bytes]] = []

    def emit(action: str, schema: str, chunk: list[bytes]) -> None:
        batch_id = f"{j}-{len(ids) + 1:05d}{suffix}"
        ids.append(batch_id)
        pending.append((batch_id, action, schema, b"".join(chunk)))
        if len(pending) >= PLAN_FLUSH:
            if renew is not None:
                renew()  # LeaseLost: another execution plans this job now; write nothing more
            store.add_batches(j, pending)
            pending.clear()

    for action, kind in (("delete", "del"), ("add", "add")):
        for schema in SCHEMAS:
            chunk: list[bytes] = []
            for shard in range(rt.settings.state_shards):
                key, cursor = keys.diff(d, a, shard, schema, j, kind), 0
                while True:  # SSCAN page by page: slices, not a Python step per id
                    cursor, page = store.r.sscan(key, cursor, count=5000)
                    chunk.extend(page)
                    while len(chunk) >= size:
                        emit(action, schema, chunk[:size])
                        del chunk[:size]
                    if not cursor:
                        break
            if chunk:
                emit(action, schema, chunk)
    if pending:
        if renew is not None:
            renew()
        store.add_batches(j, pending)
    return ids


# -- the refresh ---------------------------------------------------------------------------------
def refresh(rt: Runtime, job_id: str) -> Step:
    store = rt.store
    spec = store.job_spec(job_id)
    job = store.job(job_id)
    if spec is None or job is None:
        log.warning("job_unknown", job_id=job_id)
        return Step()
    if job.status in AT_REST:
        return Step()
    if job.phase in ("sending", "finalizing"):
        locks(rt).renew(spec.destination_id, spec.audience_id, job_id)
        return redelivered_while_sending(rt, job_id)
    run = runs(rt).claim(job_id)
    if run is None:
        # Another execution of this job stages or plans it (or died doing so: its claim lapses
        # within LOCK_LEASE_SECONDS, then this copy takes over).
        return Step(wait=rt.settings.lock_wait_seconds)
    try:
        return _refresh(rt, spec, job, run)
    except LeaseLost as error:
        log.warning("lease_lost", error=str(error))
        return Step()
    finally:
        runs(rt).release(job_id, run)


def redelivered_while_sending(rt: Runtime, job_id: str) -> Step:
    """A copy of a planning task after the job moved on to sending. Only when no batch has been
    touched yet (the planning execution may have died before enqueueing them) are the batches
    sent again; otherwise they are in flight and the reconciler re-drives any that get stuck."""
    raw = rt.store.r.hget(rt.store.keys.job(job_id), "active_at")
    if raw:
        return Step(finalize=_all_finished(rt, job_id))
    return Step(send=rt.store.pending_batches(job_id), finalize=_all_finished(rt, job_id))


def _refresh(rt: Runtime, spec: JobSpec, job: Any, run: str) -> Step:
    store = rt.store
    job_id = spec.job_id
    d, a = spec.destination_id, spec.audience_id
    lk = locks(rt)
    outcome = lk.acquire(d, a, job_id, spec.created_at)
    if outcome is LockResult.SUPERSEDED:
        _end(
            rt,
            spec,
            JobStatus.SUPERSEDED,
            "a newer refresh of this audience was requested; it syncs instead",
        )
        return Step()
    if outcome is LockResult.WAIT:
        if job.status != JobStatus.WAITING:
            store.update_job(
                job_id,
                status=JobStatus.WAITING,
                phase="waiting",
                message=f"waiting for job {lk.holder(d, a)} on the same audience",
            )
            log.info("refresh_waiting", holder=lk.holder(d, a))
        else:
            store.update_job(job_id)  # heartbeat: the reconciler re-drives only silent jobs
        return Step(wait=rt.settings.lock_wait_seconds)
    if outcome is LockResult.OWNED and job.phase == "staging" and job.count("stage_parts"):
        return Step()  # a copy of the split task: its parts are staging (they keep the lock)

    dest = store.destination(d)
    link = store.link(d, a)
    if dest is None or link is None:
        what = (
            f"destination {d!r}"
            if dest is None
            else f"audience {a!r} is not linked to destination {d!r}"
        )
        _end(rt, spec, JobStatus.FAILED, f"unknown {what}")
        return Step()

    now = time.time()
    store.update_job(job_id, status=JobStatus.RUNNING, started_at=job.started_at or now, message="")
    if job.phase not in ("staged", "planning"):  # planning: the staged sets are still complete
        store.update_job(job_id, phase="staging")
        log.info("refresh_started", mode=spec.mode, source=job.source)
        parts = _split(rt, spec)
        if parts:
            # Several `stage_part` tasks read byte ranges of one big file in parallel. A new
            # round id: a part of an earlier split that is still alive cannot count as done.
            drop_job_state(rt, spec)
            store.r.delete(
                _parts_key(rt, job_id),
                _parts_done_key(rt, job_id),
                store.keys.job(job_id) + ":plan",
            )
            store.r.set(_round_key(rt, job_id), run, ex=store.ttl)
            store.update_job(job_id, stage_parts=len(parts))
            log.info("refresh_split", parts=len(parts))
            return Step(stage=[(i, start, end) for i, (start, end) in enumerate(parts)])
        try:
            counts = stage(rt, spec, dest, renew=renewer(rt, spec, run))
        except SourceError as error:
            _source_failed(rt, spec, error)
            return Step()
        _staged(rt, job_id, counts)
    return diff_and_plan(rt, spec, run)


def _staged(rt: Runtime, job_id: str, counts: Counter) -> None:
    rt.store.update_job(job_id, phase="staged", **counts)
    log.info(
        "refresh_staged",
        rows=counts["rows_read"],
        valid=counts["members_valid"],
        rejected=counts["rows_rejected"],
        excluded=counts["members_excluded"],
    )


def _split(rt: Runtime, spec: JobSpec) -> list[tuple[int, int]] | None:
    if spec.mode != "snapshot" or spec.members is None or rt.settings.stage_parts < 2:
        return None
    try:
        ranges = split_ranges(spec.members, rt.settings.stage_parts)
    except SourceError:
        return None  # staging reads it whole and reports the error properly
    return ranges if ranges and len(ranges) > 1 else None


def _parts_key(rt: Runtime, job_id: str) -> str:
    return rt.store.keys.job(job_id) + ":parts"


def _parts_done_key(rt: Runtime, job_id: str) -> str:
    return rt.store.keys.job(job_id) + ":parts_done"


def _round_key(rt: Runtime, job_id: str) -> str:
    return rt.store.keys.job(job_id) + ":round"


# A part counts as staged only in the split round it started in.
# KEYS: round, parts, parts_done, plan. ARGV: round, part, counts json, parts, ttl.
_PART_DONE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
local done = redis.call('SCARD', KEYS[3])
if done >= tonumber(ARGV[4]) and redis.call('SET', KEYS[4], 1, 'NX', 'EX', ARGV[5]) then
  return done + 1000000
end
return done
"""


def _source_failed(rt: Runtime, spec: JobSpec, error: Exception) -> None:
    drop_job_state(rt, spec)
    _end(rt, spec, JobStatus.FAILED, f"cannot read the members: {error}. Nothing was sent.")


def stage_part(rt: Runtime, job_id: str, part: int, start: int, end: int) -> Step:
    """Stage one byte range of a split snapshot; the last part to finish asks for the plan."""
    store = rt.store
    spec = store.job_spec(job_id)
    job = store.job(job_id)
    if spec is None or job is None or job.status in AT_REST or job.phase != "staging":
        return Step()
    split_round = store.r.get(_round_key(rt, job_id))
    lock = locks(rt).acquire(spec.destination_id, spec.audience_id, job_id, spec.created_at)
    if lock not in (LockResult.OWNED, LockResult.ACQUIRED) or split_round is None:
        return Step()  # the job lost its lease and was re-driven or superseded meanwhile
    dest = store.require_destination(spec.destination_id)
    try:
        counts = stage(rt, spec, dest, byte_range=(start, end), fresh=False)
    except SourceError as error:
        _source_failed(rt, spec, error)
        return Step()
    except LeaseLost as error:
        log.warning("lease_lost", error=str(error), part=part)
        return Step()
    keys = [
        _round_key(rt, job_id),
        _parts_key(rt, job_id),
        _parts_done_key(rt, job_id),
        store.keys.job(job_id) + ":plan",
    ]
    done = int(
        store.r.eval(
            _PART_DONE,
            len(keys),
            *keys,
            split_round,
            part,
            json.dumps(counts),
            job.count("stage_parts"),
            store.ttl,
        )
    )
    if done < 0:
        log.info("refresh_part_stale", part=part)  # the snapshot was split again meanwhile
        return Step()
    log.info("refresh_part_staged", part=part, rows=counts["rows_read"], parts_done=done % 1000000)
    return Step(plan=done >= 1000000)


def plan_after_parts(rt: Runtime, job_id: str) -> Step:
    """All parts are staged: add up their counts, then diff, guard and plan."""
    store = rt.store
    spec = store.job_spec(job_id)
    job = store.job(job_id)
    if spec is None or job is None or job.status in AT_REST:
        return Step()
    if job.phase in ("sending", "finalizing"):
        return redelivered_while_sending(rt, job_id)
    if job.phase not in ("staging", "staged"):
        return Step()
    run = runs(rt).claim(job_id)
    if run is None:
        return Step(wait=rt.settings.lock_wait_seconds)  # another copy plans it (or died doing so)
    try:
        job = store.job(job_id)
        if job is None or job.status in AT_REST:
            return Step()
        if job.phase == "staging":
            if store.r.scard(_parts_done_key(rt, job_id)) < job.count("stage_parts"):
                return Step()  # a stale copy: the snapshot was split again and is still staging
            counts: Counter = Counter()
            for raw in store.r.hvals(_parts_key(rt, job_id)):
                counts.update(json.loads(raw))
            _staged(rt, job_id, counts)
        elif job.phase != "staged":
            return Step()
        return diff_and_plan(rt, spec, run)
    except LeaseLost as error:
        log.warning("lease_lost", error=str(error))
        return Step()
    finally:
        runs(rt).release(job_id, run)


def diff_and_plan(rt: Runtime, spec: JobSpec, run: str | None = None) -> Step:
    store = rt.store
    job_id = spec.job_id
    d, a = spec.destination_id, spec.audience_id
    lk = locks(rt)
    renew = renewer(rt, spec, run)
    renew()  # the diff reads the ledger: only under the audience's lock
    counts = diff(rt, spec)
    store.update_job(job_id, **{k: counts.get(k, 0) for k in _diff_fields(counts)})
    reason = mass_delete_reason(rt, spec, counts)
    if spec.dry_run:
        _end(rt, spec, JobStatus.DRY_RUN, _dry_run_message(counts))
        return Step()
    if reason:
        # Keep the staged snapshot so `approve` can go on without re-reading the source.
        lk.release(d, a, job_id)
        _drop(rt, spec, "add", "del")
        for key in _state_keys(rt, spec, "stage"):
            store.r.expire(key, store.ttl)
        store.update_job(job_id, status=JobStatus.HELD, phase="staged", message=reason)
        log.warning(
            "refresh_held", removes=total(counts, "removes"), synced=total(counts, "synced_before")
        )
        return Step()

    store.update_job(job_id, phase="planning")
    batch_ids = plan(rt, spec, renew)
    renew()  # still this execution's job: only then may its batches go out
    store.update_job(job_id, phase="sending")
    _drop(rt, spec, "stage", "minus", "add", "del")
    log.info(
        "refresh_planned",
        batches=len(batch_ids),
        adds=total(counts, "adds"),
        removes=total(counts, "removes"),
    )
    if not batch_ids:
        return Step(finalize=True)
    return Step(send=batch_ids)


def _diff_fields(counts: Counter) -> list[str]:
    return [
        f"{g}:{s}"
        for g in ("adds", "removes", "synced_before", "staged", "suppressed")
        for s in SCHEMAS
    ]


def _dry_run_message(counts: Counter) -> str:
    parts = []
    for schema in SCHEMAS:
        adds, rem, before = (
            counts[f"adds:{schema}"],
            counts[f"removes:{schema}"],
            counts[f"synced_before:{schema}"],
        )
        if adds or rem or before:
            parts.append(f"{schema}: +{adds} -{rem} -> {before + adds - rem}")
    after = total(counts, "synced_before") + total(counts, "adds") - total(counts, "removes")
    return f"dry run, nothing sent: {'; '.join(parts) or 'no changes'}; audience size after sync {after}"


def _drop(rt: Runtime, spec: JobSpec, *kinds: str) -> None:
    keys = _state_keys(rt, spec, *kinds)
    for i in range(0, len(keys), 500):
        rt.store.r.unlink(*keys[i : i + 500])


def _end(rt: Runtime, spec: JobSpec, status: JobStatus, message: str) -> None:
    rt.store.update_job(
        spec.job_id, status=status, phase="done", message=message, finished_at=time.time()
    )
    locks(rt).release(spec.destination_id, spec.audience_id, spec.job_id)
    if status not in (JobStatus.HELD,):
        drop_job_state(rt, spec)
    rt.store.expire_job(spec.job_id)
    log.info("job_finished", status=str(status), message=message)


def _all_finished(rt: Runtime, job_id: str) -> bool:
    job = rt.store.job(job_id)
    return job is not None and job.count("batches_finished") >= job.count("batches_total")


def approve(rt: Runtime, job_id: str) -> JobSpec:
    """Let a held job delete what its snapshot says; the caller enqueues the refresh again."""
    store = rt.store
    spec = store.job_spec(job_id)
    job = store.job(job_id)
    if spec is None or job is None:
        raise LookupError(f"unknown job {job_id!r}")
    if job.status != JobStatus.HELD:
        raise ValueError(f"job {job_id} is {job.status}, not held: nothing to approve")
    spec.allow_mass_delete = True
    store.r.set(store.keys.job_spec(job_id), spec.model_dump_json())
    store.update_job(job_id, status=JobStatus.QUEUED, message="approved: mass delete allowed")
    return spec


# -- completion ---------------------------------------------------------------------------------
def finalize(rt: Runtime, job_id: str) -> None:
    """Write the job's final status and counts, clean up, release the lock. Runs once per job:
    a copy finds the job at rest, or another finalize holding the job's run claim, and stops."""
    run = runs(rt).claim(job_id)
    if run is None:
        log.info("finalize_running_elsewhere")
        return  # if that one dies, its claim lapses and the reconciler sends finalize again
    try:
        _finalize(rt, job_id)
    finally:
        runs(rt).release(job_id, run)


def _finalize(rt: Runtime, job_id: str) -> None:
    store = rt.store
    job = store.job(job_id)
    spec = store.job_spec(job_id)
    if (
        job is None
        or spec is None
        or job.status in AT_REST
        or job.phase not in ("sending", "finalizing")
    ):
        return
    if job.count("batches_finished") < job.count("batches_total"):
        log.info(
            "finalize_early",
            finished=job.count("batches_finished"),
            total=job.count("batches_total"),
        )
        return
    store.update_job(job_id, phase="finalizing")
    succeeded, failed, parked = (
        job.count(f"batches_{s}") for s in ("succeeded", "failed", "parked")
    )
    if parked:
        dest = store.destination(spec.destination_id)
        status = JobStatus.AUTH_FAILED
        message = (
            f"{parked} batches parked: TikTok refused the access token of destination "
            f"{spec.destination_id} ({dest.status_message if dest else 'removed'}). Get a new token, run "
            f"`tiktok-sync destination update-token {spec.destination_id} --access-token ...`, "
            f"then `tiktok-sync resume {job_id}`."
        )
    elif failed:
        status = JobStatus.PARTIALLY_FAILED if succeeded else JobStatus.FAILED
        message = f"{failed} of {job.count('batches_total')} batches failed; the next refresh sends their ids again"
        if job.count("poison_rows"):
            message += (
                f"; {job.count('poison_rows')} ids were refused by TikTok on their own (see "
                f"`tiktok-sync status {job_id} --batches`, column poison id)"
            )
    else:
        status = JobStatus.SUCCEEDED
        message = ""
    _record_match_rate(rt, spec)
    try:  # audit of suppressed ids this job deleted; what stays pending is settled by a later job
        settle_suppressions(rt, spec.destination_id, spec.audience_id, job_id)
    except Exception as error:
        log.warning("suppression_settle_failed", error=str(error))
    now = time.time()
    store.update_job(job_id, status=status, phase="done", message=message, finished_at=now)
    store.update_link(
        spec.destination_id, spec.audience_id, last_job_id=job_id, last_refresh_at=now
    )
    _drop(rt, spec, "stage", "minus", "add", "del")
    for batch in store.iter_batches(job_id):  # a page at a time: 10M members are 25k batches
        if batch.state in (BatchState.FAILED, BatchState.PARKED):
            store.r.expire(store.keys.batch_data(batch.batch_id), store.ttl)
    locks(rt).release(spec.destination_id, spec.audience_id, job_id)
    store.expire_job(job_id)
    log.info(
        "job_finished",
        status=str(status),
        batches=job.count("batches_total"),
        succeeded=succeeded,
        failed=failed,
        parked=parked,
    )


def synced_size(rt: Runtime, dest_id: str, audience_id: str) -> int:
    pipe = rt.store.r.pipeline(transaction=False)
    for shard in range(rt.settings.state_shards):
        for schema in SCHEMAS:
            pipe.scard(rt.store.keys.ledger(dest_id, audience_id, shard, schema))
    return sum(pipe.execute())


def ledger_hashes(rt: Runtime, dest_id: str, audience_id: str) -> dict[str, set[str]]:
    """The synced ids per schema, as hex (for tests and tools; not for the hot path)."""
    out: dict[str, set[str]] = {}
    for schema in SCHEMAS:
        ids: set[str] = set()
        for shard in range(rt.settings.state_shards):
            ids.update(
                m.hex()
                for m in rt.store.r.sscan_iter(
                    rt.store.keys.ledger(dest_id, audience_id, shard, schema), count=5000
                )
            )
        if ids:
            out[schema] = ids
    return out


def _record_match_rate(rt: Runtime, spec: JobSpec) -> None:
    """TikTok's matched size (cover_num) against what we synced; best effort."""
    link = rt.store.link(spec.destination_id, spec.audience_id)
    dest = rt.store.destination(spec.destination_id)
    if link is None or dest is None or dest.status != "active":
        return
    synced = synced_size(rt, spec.destination_id, spec.audience_id)
    try:
        details = rt.client.get_audiences(
            rt.store.token(dest.id), dest.advertiser_id, [link.tiktok_audience_id]
        )
        matched = int(details[0].get("cover_num", 0)) if details else None
    except Exception as error:  # match rate is informative; a failure must not fail the job
        log.warning("match_rate_unavailable", error=str(error))
        matched = None
    fields: dict[str, Any] = {"synced_ids": synced}
    if matched is not None:
        fields["matched"] = matched
    rt.store.update_job(spec.job_id, **fields)
    rt.store.update_link(spec.destination_id, spec.audience_id, synced_ids=synced, matched=matched)


__all__ = ["IdType", "Step", "approve", "finalize", "refresh"]
