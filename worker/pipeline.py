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
from worker.locks import AudienceLocks, LockResult
from worker.models import AT_REST, BatchState, Destination, JobSpec, JobStatus
from worker.runtime import Runtime
from worker.sources import Member, RejectedRow, SourceError, iter_inline, open_source, split_ranges

log = structlog.get_logger(__name__)

SCHEMAS = tuple(ID_SCHEMA.values())
STAGE_FLUSH = 20_000  # ids buffered before one pipelined round of variadic SADDs
PLAN_FLUSH = 50  # batches written per pipeline while planning
REJECT_SAMPLES = 20


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

    def add(self, rows: Iterable[Member | RejectedRow]) -> None:
        counts = self.stats.counts
        digest = self.hasher.digest
        schema_of = ID_SCHEMA
        shards = self.shards
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
                id_type, prehashed = COLUMNS[column]
                if id_type not in self.allowed:
                    counts[f"ignored:{id_type}"] += len(values)
                    continue
                for value in values:
                    try:
                        d = digest(id_type, value, prehashed)
                    except RejectedIdentifier as error:
                        counts[f"rejected_id:{id_type}:{error.reason}"] += 1
                        continue
                    valid += 1
                    counts[f"valid:{id_type}"] += 1
                    slot = (d[0] % shards, schema_of[id_type])
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


def _rows(rt: Runtime, spec: JobSpec, members: list[dict[str, Any]] | None = None,
          byte_range: tuple[int, int] | None = None) -> Iterator[Member | RejectedRow]:
    if members is not None:
        yield from iter_inline(members)
        return
    if spec.inline is not None:
        yield from iter_inline(spec.inline)
        return
    assert spec.members is not None
    with open_source(spec.members, spec.format, max_line_bytes=rt.settings.max_line_bytes,
                     http_timeout=rt.settings.source_http_timeout, byte_range=byte_range) as source:
        yield from source


def _state_keys(rt: Runtime, spec: JobSpec, *kinds: str) -> list[str]:
    keys = rt.store.keys
    out = []
    for shard in range(rt.settings.state_shards):
        for schema in SCHEMAS:
            for kind in kinds:
                if kind == "stage":
                    out.append(keys.stage(spec.destination_id, spec.audience_id, shard, schema, spec.job_id))
                elif kind == "minus":
                    out.append(keys.stage(spec.destination_id, spec.audience_id, shard, schema, spec.job_id + "~minus"))
                else:
                    out.append(keys.diff(spec.destination_id, spec.audience_id, shard, schema, spec.job_id, kind))
    return out


def drop_job_state(rt: Runtime, spec: JobSpec) -> None:
    keys = _state_keys(rt, spec, "stage", "minus", "add", "del")
    for i in range(0, len(keys), 500):
        rt.store.r.unlink(*keys[i : i + 500])


def stage(rt: Runtime, spec: JobSpec, dest: Destination, byte_range: tuple[int, int] | None = None,
          fresh: bool = True) -> Counter:
    """Stream the snapshot (or one byte range of it, or the delta's two lists) into staging sets.

    Returns the counts. `fresh` drops what an earlier attempt of this job staged; parts of a
    split snapshot pass False (SADD is idempotent, so a re-run part repeats nothing).
    """
    keys = rt.store.keys
    lk = locks(rt)
    renew = lambda: lk.renew(spec.destination_id, spec.audience_id, spec.job_id)  # noqa: E731

    def plus(shard: int, schema: str) -> str:
        return keys.stage(spec.destination_id, spec.audience_id, shard, schema, spec.job_id)

    def minus(shard: int, schema: str) -> str:
        return keys.stage(spec.destination_id, spec.audience_id, shard, schema, spec.job_id + "~minus")

    if fresh:
        drop_job_state(rt, spec)  # a redelivered job starts staging from scratch
    total: Counter = Counter()
    samples: list[dict[str, Any]] = []
    parts: list[tuple[Any, list[dict[str, Any]] | None, str]]
    if spec.mode == "delta":
        parts = [(plus, spec.additions or [], ""), (minus, spec.removals or [], "removal_")]
    else:
        parts = [(plus, None, "")]
    for key_for, members, prefix in parts:
        stager = Stager(rt, dest, key_for, renew)
        stager.add(_rows(rt, spec, members, byte_range))
        stager.flush()
        total.update({prefix + k: v for k, v in stager.stats.counts.items()})
        samples.extend(stager.stats.samples)
    rt.store.record_rejects(spec.job_id, samples)
    return total


# -- diff and guard ----------------------------------------------------------------------------
def diff(rt: Runtime, spec: JobSpec) -> Counter:
    """Server-side, shard by shard: adds = staged − synced, removes = synced − staged."""
    keys = rt.store.keys
    r = rt.store.r
    counts: Counter = Counter()
    d, a, j = spec.destination_id, spec.audience_id, spec.job_id
    for shard in range(rt.settings.state_shards):
        pipe = r.pipeline(transaction=False)
        for schema in SCHEMAS:
            ledger = keys.ledger(d, a, shard, schema)
            staged = keys.stage(d, a, shard, schema, j)
            add, rem = keys.diff(d, a, shard, schema, j, "add"), keys.diff(d, a, shard, schema, j, "del")
            if spec.mode == "delta":
                pipe.sdiffstore(add, [staged, ledger])
                pipe.sinterstore(rem, [keys.stage(d, a, shard, schema, j + "~minus"), ledger])
            elif spec.resync:
                pipe.sunionstore(add, [staged])  # every member again, whatever the ledger says
                pipe.sdiffstore(rem, [ledger, staged])
            else:
                pipe.sdiffstore(add, [staged, ledger])
                pipe.sdiffstore(rem, [ledger, staged])
            pipe.scard(ledger)
            pipe.scard(staged)
        results = pipe.execute()
        for i, schema in enumerate(SCHEMAS):
            n_add, n_rem, n_ledger, n_staged = results[4 * i : 4 * i + 4]
            counts[f"adds:{schema}"] += n_add
            counts[f"removes:{schema}"] += n_rem
            counts[f"synced_before:{schema}"] += n_ledger
            counts[f"staged:{schema}"] += n_staged
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
def plan(rt: Runtime, spec: JobSpec) -> list[str]:
    """Cut each schema's adds and deletes into batches stored in Redis; returns their ids."""
    store = rt.store
    keys = store.keys
    size = rt.settings.tiktok_batch_size
    d, a, j = spec.destination_id, spec.audience_id, spec.job_id
    # A redelivered plan starts over: no batch was enqueued before the phase became "sending".
    old = store.batch_ids(j)
    if old:
        store.r.unlink(*[keys.batch(b) for b in old], *[keys.batch_data(b) for b in old], keys.job_batches(j))
        store.r.hset(keys.job(j), "batches_total", 0)
    ids: list[str] = []
    pending: list[tuple[str, str, str, bytes]] = []

    def emit(action: str, schema: str, chunk: list[bytes]) -> None:
        batch_id = f"{j}-{len(ids) + 1:05d}"
        ids.append(batch_id)
        pending.append((batch_id, action, schema, b"".join(chunk)))
        if len(pending) >= PLAN_FLUSH:
            store.add_batches(j, pending)
            pending.clear()

    for action, kind in (("delete", "del"), ("add", "add")):
        for schema in SCHEMAS:
            chunk: list[bytes] = []
            for shard in range(rt.settings.state_shards):
                for digest in store.r.sscan_iter(keys.diff(d, a, shard, schema, j, kind), count=5000):
                    chunk.append(digest)
                    if len(chunk) == size:
                        emit(action, schema, chunk)
                        chunk = []
            if chunk:
                emit(action, schema, chunk)
    if pending:
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
    d, a = spec.destination_id, spec.audience_id
    lk = locks(rt)
    if job.phase in ("sending", "finalizing"):
        # Redelivered after planning: the batches exist; sending is idempotent.
        lk.acquire(d, a, job_id, spec.created_at)
        return Step(send=store.pending_batches(job_id), finalize=_all_finished(rt, job_id))

    outcome = lk.acquire(d, a, job_id, spec.created_at)
    if outcome is LockResult.SUPERSEDED:
        _end(rt, spec, JobStatus.SUPERSEDED, "a newer refresh of this audience was requested; it syncs instead")
        return Step()
    if outcome is LockResult.WAIT:
        if job.status != JobStatus.WAITING:
            store.update_job(job_id, status=JobStatus.WAITING, phase="waiting",
                             message=f"waiting for job {lk.holder(d, a)} on the same audience")
            log.info("refresh_waiting", holder=lk.holder(d, a))
        return Step(wait=rt.settings.lock_wait_seconds)

    dest = store.destination(d)
    link = store.link(d, a)
    if dest is None or link is None:
        what = f"destination {d!r}" if dest is None else f"audience {a!r} is not linked to destination {d!r}"
        _end(rt, spec, JobStatus.FAILED, f"unknown {what}")
        return Step()

    now = time.time()
    store.update_job(job_id, status=JobStatus.RUNNING, started_at=job.started_at or now, message="")
    if job.phase != "staged":
        store.update_job(job_id, phase="staging")
        log.info("refresh_started", mode=spec.mode, source=job.source)
        parts = _split(rt, spec)
        if parts:
            # Several `stage_part` tasks read byte ranges of one big file in parallel.
            drop_job_state(rt, spec)
            store.r.delete(_parts_key(rt, job_id), _parts_done_key(rt, job_id), store.keys.job(job_id) + ":plan")
            store.update_job(job_id, stage_parts=len(parts))
            log.info("refresh_split", parts=len(parts))
            return Step(stage=[(i, start, end) for i, (start, end) in enumerate(parts)])
        try:
            counts = stage(rt, spec, dest)
        except SourceError as error:
            _source_failed(rt, spec, error)
            return Step()
        store.update_job(job_id, phase="staged", **counts)
        log.info("refresh_staged", rows=counts["rows_read"], valid=counts["members_valid"],
                 rejected=counts["rows_rejected"], excluded=counts["members_excluded"])
    return diff_and_plan(rt, spec)


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
    lock = locks(rt).acquire(spec.destination_id, spec.audience_id, job_id, spec.created_at)
    if lock not in (LockResult.OWNED, LockResult.ACQUIRED):
        return Step()  # the job lost its lease and was re-driven or superseded meanwhile
    dest = store.require_destination(spec.destination_id)
    try:
        counts = stage(rt, spec, dest, byte_range=(start, end), fresh=False)
    except SourceError as error:
        _source_failed(rt, spec, error)
        return Step()
    store.r.hset(_parts_key(rt, job_id), str(part), json.dumps(counts))
    store.r.sadd(_parts_done_key(rt, job_id), part)
    done = store.r.scard(_parts_done_key(rt, job_id))
    log.info("refresh_part_staged", part=part, rows=counts["rows_read"], parts_done=done)
    if done >= job.count("stage_parts") and store.r.set(store.keys.job(job_id) + ":plan", 1, nx=True, ex=store.ttl):
        return Step(plan=True)
    return Step()


def plan_after_parts(rt: Runtime, job_id: str) -> Step:
    """All parts are staged: add up their counts, then diff, guard and plan."""
    store = rt.store
    spec = store.job_spec(job_id)
    job = store.job(job_id)
    if spec is None or job is None or job.status in AT_REST:
        return Step()
    if job.phase == "staging":
        counts: Counter = Counter()
        for raw in store.r.hvals(_parts_key(rt, job_id)):
            counts.update(json.loads(raw))
        store.update_job(job_id, phase="staged", **counts)
        log.info("refresh_staged", rows=counts["rows_read"], valid=counts["members_valid"],
                 rejected=counts["rows_rejected"], excluded=counts["members_excluded"])
    elif job.phase != "staged":
        return Step(send=store.pending_batches(job_id)) if job.phase == "sending" else Step()
    return diff_and_plan(rt, spec)


def diff_and_plan(rt: Runtime, spec: JobSpec) -> Step:
    store = rt.store
    job_id = spec.job_id
    d, a = spec.destination_id, spec.audience_id
    lk = locks(rt)
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
        log.warning("refresh_held", removes=total(counts, "removes"), synced=total(counts, "synced_before"))
        return Step()

    store.update_job(job_id, phase="planning")
    batch_ids = plan(rt, spec)
    store.update_job(job_id, phase="sending")
    _drop(rt, spec, "stage", "minus", "add", "del")
    log.info("refresh_planned", batches=len(batch_ids), adds=total(counts, "adds"), removes=total(counts, "removes"))
    if not batch_ids:
        return Step(finalize=True)
    return Step(send=batch_ids)


def _diff_fields(counts: Counter) -> list[str]:
    return [f"{g}:{s}" for g in ("adds", "removes", "synced_before", "staged") for s in SCHEMAS]


def _dry_run_message(counts: Counter) -> str:
    parts = []
    for schema in SCHEMAS:
        adds, rem, before = counts[f"adds:{schema}"], counts[f"removes:{schema}"], counts[f"synced_before:{schema}"]
        if adds or rem or before:
            parts.append(f"{schema}: +{adds} -{rem} -> {before + adds - rem}")
    after = total(counts, "synced_before") + total(counts, "adds") - total(counts, "removes")
    return f"dry run, nothing sent: {'; '.join(parts) or 'no changes'}; audience size after sync {after}"


def _drop(rt: Runtime, spec: JobSpec, *kinds: str) -> None:
    keys = _state_keys(rt, spec, *kinds)
    for i in range(0, len(keys), 500):
        rt.store.r.unlink(*keys[i : i + 500])


def _end(rt: Runtime, spec: JobSpec, status: JobStatus, message: str) -> None:
    rt.store.update_job(spec.job_id, status=status, phase="done", message=message, finished_at=time.time())
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
    """Write the job's final status and counts, clean up, release the lock. Runs once per job."""
    store = rt.store
    job = store.job(job_id)
    spec = store.job_spec(job_id)
    if job is None or spec is None or job.status in AT_REST:
        return
    if job.count("batches_finished") < job.count("batches_total"):
        log.info("finalize_early", finished=job.count("batches_finished"), total=job.count("batches_total"))
        return
    store.update_job(job_id, phase="finalizing")
    succeeded, failed, parked = (job.count(f"batches_{s}") for s in ("succeeded", "failed", "parked"))
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
    else:
        status = JobStatus.SUCCEEDED
        message = ""
    _record_match_rate(rt, spec)
    now = time.time()
    store.update_job(job_id, status=status, phase="done", message=message, finished_at=now)
    store.update_link(spec.destination_id, spec.audience_id, last_job_id=job_id, last_refresh_at=now)
    _drop(rt, spec, "stage", "minus", "add", "del")
    for batch in store.batches(job_id):
        if batch.state in (BatchState.FAILED, BatchState.PARKED):
            store.r.expire(store.keys.batch_data(batch.batch_id), store.ttl)
    locks(rt).release(spec.destination_id, spec.audience_id, job_id)
    store.expire_job(job_id)
    log.info("job_finished", status=str(status), batches=job.count("batches_total"),
             succeeded=succeeded, failed=failed, parked=parked)


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
            ids.update(m.hex() for m in rt.store.r.sscan_iter(rt.store.keys.ledger(dest_id, audience_id, shard, schema), count=5000))
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
        details = rt.client.get_audiences(rt.store.token(dest.id), dest.advertiser_id, [link.tiktok_audience_id])
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
