"""Global suppression list: identifiers excluded from every audience of every destination, deleted
at once from each audience whose ledger holds them, with an audit trail per identifier.

How it works:
- Suppressed digests live in Redis sets per (shard, id schema), sharded like the ledgers.
  `pipeline.diff` excludes them server-side from every job's adds and adds `ledger ∩ suppressed`
  to its removes, so no refresh (snapshot, resync or delta) ever sends them again, and any job
  on an audience deletes those it still holds. The staging loop is untouched.
- `suppress` checks every linked audience's ledger and enqueues one small delta job (no
  additions, no removals of its own) per audience that holds a suppressed id, or that has a
  refresh running (which may be about to add one). Those jobs go through the normal lock and
  batch path, so they never race a refresh; a newer snapshot that supersedes one deletes the
  same ids.
- Audit: each identifier's Redis list records `suppressed`, `delete_requested` (which audience,
  which job) and `deleted` (when, which audience, which job's batches removed it). `deleted` is
  written by `settle`, which `pipeline.finalize` calls: an id counts as deleted once TikTok
  confirmed the delete (it left the ledger). Entries never expire: they are the audit.
- Phones are hashed with the region given to `suppress` (numbers without country code need one).
  Only digests are stored; the clear values are never written anywhere.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from worker.identifiers import COLUMNS, ID_SCHEMA, Hasher, RejectedIdentifier
from worker.models import AudienceLink
from worker.runtime import Runtime
from worker.sources import Member, RejectedRow

log = structlog.get_logger(__name__)

SCHEMAS = tuple(ID_SCHEMA.values())
CHUNK = 5000  # identifiers handled per round of pipelines
Pair = tuple[str, bytes]  # (id schema, 32-byte digest)


@dataclass
class SuppressResult:
    entry_id: str
    counts: Counter = field(default_factory=Counter)  # suppressed / already / rejected_*
    audiences: list[dict[str, Any]] = field(default_factory=list)  # with held ids and job id

    def as_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "counts": dict(self.counts), "audiences": self.audiences}


def pairs(
    rows: Iterable[Member | RejectedRow], region: str | None, counts: Counter
) -> Iterator[Pair]:
    """Normalise + hash every identifier of the rows (consent is irrelevant here)."""
    hasher = Hasher(region)
    for row in rows:
        if isinstance(row, RejectedRow):
            counts["rows_rejected"] += 1
            counts[f"rejected_row:{row.reason}"] += 1
            continue
        for column, values in row.identifiers.items():
            id_type, prehashed = COLUMNS[column]
            for value in values:
                try:
                    yield ID_SCHEMA[id_type], hasher.digest(id_type, value, prehashed)
                except RejectedIdentifier as error:
                    counts[f"rejected_id:{id_type}:{error.reason}"] += 1


def _chunks(items: Iterable[Pair]) -> Iterator[list[Pair]]:
    chunk: list[Pair] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield list(dict.fromkeys(chunk))
            chunk = []
    if chunk:
        yield list(dict.fromkeys(chunk))


def _field(schema: str, digest: bytes) -> str:
    return f"{schema}:{digest.hex()}"


def _event(**fields: Any) -> str:
    return json.dumps({"at": time.time(), **fields}, sort_keys=True)


class Suppressions:
    """The suppression list and its audit, behind named operations."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.r = rt.store.r
        self.keys = rt.store.keys
        self.shards = rt.settings.state_shards

    def _key(self, schema: str, digest: bytes) -> str:
        return self.keys.suppressed(digest[0] % self.shards, schema)

    def _ledger(self, link: AudienceLink, schema: str, digest: bytes) -> str:
        return self.keys.ledger(
            link.destination_id, link.audience_id, digest[0] % self.shards, schema
        )

    # -- the diff's view ---------------------------------------------------------------------
    def active(self) -> set[tuple[int, str]]:
        """(shard, schema) pairs whose suppression set is not empty (one pipeline)."""
        pipe = self.r.pipeline(transaction=False)
        slots = [(shard, schema) for shard in range(self.shards) for schema in SCHEMAS]
        for shard, schema in slots:
            pipe.exists(self.keys.suppressed(shard, schema))
        return {slot for slot, n in zip(slots, pipe.execute(), strict=True) if n}

    # -- suppress ----------------------------------------------------------------------------
    def suppress(
        self,
        rows: Iterable[Member | RejectedRow],
        *,
        region: str | None = None,
        reason: str = "",
        app: Any = None,
    ) -> SuppressResult:
        """Add the rows' identifiers to the list and enqueue their deletion where synced."""
        from worker import api  # late: api -> runtime -> store; api also imports this lazily

        now = time.time()
        entry = f"sup_{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}_{secrets.token_hex(3)}"
        result = SuppressResult(entry)
        links = self.rt.store.links()
        held: Counter = Counter()
        running: set[tuple[str, str]] = set()
        for chunk in _chunks(pairs(rows, region, result.counts)):
            pipe = self.r.pipeline(transaction=False)
            for schema, digest in chunk:
                pipe.sadd(self._key(schema, digest), digest)
                pipe.rpush(
                    self.keys.suppression_audit(schema, digest.hex()),
                    _event(event="suppressed", entry=entry, reason=reason),
                )
            added = pipe.execute()[::2]
            for (schema, _), new in zip(chunk, added, strict=True):
                result.counts[f"suppressed:{schema}" if new else f"already:{schema}"] += 1
            # Checked after the SADDs: a refresh that takes its lock later diffs after them and
            # excludes these ids; one that holds it now may have planned their adds already.
            running_now = self._running(links)
            running |= running_now
            pipe = self.r.pipeline(transaction=False)
            for link in links:
                pair = (link.destination_id, link.audience_id)
                for (schema, digest), in_ledger in zip(chunk, self._held(link, chunk), strict=True):
                    if in_ledger or pair in running_now:
                        held[pair] += int(in_ledger)
                        self._request_delete(pipe, link, schema, digest, entry, in_ledger)
            pipe.execute()
        for link in links:
            pair = (link.destination_id, link.audience_id)
            if not held[pair] and pair not in running:
                continue  # nothing to delete there
            job_id = f"{entry}-{len(result.audiences) + 1:03d}"
            info: dict[str, Any] = {
                "destination_id": pair[0],
                "audience_id": pair[1],
                "tiktok_audience_id": link.tiktok_audience_id,
                "held": held[pair],
                "job_id": job_id,
            }
            try:
                api.enqueue_refresh(
                    pair[0], pair[1], additions=[], removals=[], job_id=job_id, rt=self.rt, app=app
                )
            except (LookupError, ValueError) as error:  # unlinked or removed meanwhile
                info["job_id"] = None
                info["error"] = str(error)
            result.audiences.append(info)
        self.r.rpush(
            self.keys.suppression_log,
            _event(
                entry=entry, reason=reason, counts=dict(result.counts), audiences=result.audiences
            ),
        )
        log.info(
            "identifiers_suppressed",
            entry=entry,
            suppressed=sum(v for k, v in result.counts.items() if k.startswith("suppressed:")),
            audiences=len(result.audiences),
        )
        return result

    def _held(self, link: AudienceLink, chunk: list[Pair]) -> list[bool]:
        """Which ids of the chunk this audience's ledger holds (one pipeline)."""
        groups: dict[str, list[int]] = {}
        for i, (schema, digest) in enumerate(chunk):
            groups.setdefault(self._ledger(link, schema, digest), []).append(i)
        pipe = self.r.pipeline(transaction=False)
        for key, idx in groups.items():
            pipe.smismember(key, [chunk[i][1] for i in idx])
        out = [False] * len(chunk)
        for idx, flags in zip(groups.values(), pipe.execute(), strict=True):
            for i, flag in zip(idx, flags, strict=True):
                out[i] = bool(flag)
        return out

    def _running(self, links: list[AudienceLink]) -> set[tuple[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for link in links:
            pipe.exists(self.keys.lock(link.destination_id, link.audience_id))
        return {
            (link.destination_id, link.audience_id)
            for link, n in zip(links, pipe.execute(), strict=True)
            if n
        }

    def _request_delete(
        self, pipe: Any, link: AudienceLink, schema: str, digest: bytes, entry: str, in_ledger: bool
    ) -> None:
        key = self.keys.suppression_pending(link.destination_id, link.audience_id)
        pipe.hset(
            key,
            _field(schema, digest),
            json.dumps({"since": time.time(), "entry": entry, "held": in_ledger}),
        )
        if in_ledger:
            pipe.rpush(
                self.keys.suppression_audit(schema, digest.hex()),
                _event(
                    event="delete_requested",
                    entry=entry,
                    destination_id=link.destination_id,
                    audience_id=link.audience_id,
                    tiktok_audience_id=link.tiktok_audience_id,
                ),
            )

    # -- after a job ---------------------------------------------------------------------------
    def settle(self, dest_id: str, audience_id: str, job_id: str) -> int:
        """Record `deleted` for pending ids that left this audience's ledger; returns how many.

        Called at the end of every job on the audience (cheap when nothing is pending).
        """
        key = self.keys.suppression_pending(dest_id, audience_id)
        pending = self.r.hgetall(key)
        if not pending:
            return 0
        link = self.rt.store.link(dest_id, audience_id)
        items = []
        for raw_field, raw in pending.items():
            schema, _, hex_digest = raw_field.decode().partition(":")
            items.append((raw_field, schema, bytes.fromhex(hex_digest), json.loads(raw)))
        pipe = self.r.pipeline(transaction=False)
        for _, schema, digest, _ in items:
            shard = digest[0] % self.shards
            pipe.sismember(self.keys.ledger(dest_id, audience_id, shard, schema), digest)
        deleted = 0
        pipe2 = self.r.pipeline(transaction=False)
        for (raw_field, schema, digest, info), in_ledger in zip(items, pipe.execute(), strict=True):
            if in_ledger:
                if not info.get("held"):  # a running refresh added it: now it is held
                    pipe2.hset(key, raw_field, json.dumps({**info, "held": True}))
                    pipe2.rpush(
                        self.keys.suppression_audit(schema, digest.hex()),
                        _event(
                            event="delete_requested",
                            entry=info.get("entry"),
                            destination_id=dest_id,
                            audience_id=audience_id,
                            tiktok_audience_id=link.tiktok_audience_id if link else None,
                        ),
                    )
                continue
            pipe2.hdel(key, raw_field)
            if info.get("held"):
                deleted += 1
                pipe2.rpush(
                    self.keys.suppression_audit(schema, digest.hex()),
                    _event(
                        event="deleted",
                        entry=info.get("entry"),
                        job_id=job_id,
                        destination_id=dest_id,
                        audience_id=audience_id,
                        tiktok_audience_id=link.tiktok_audience_id if link else None,
                    ),
                )
        pipe2.execute()
        if deleted:
            log.info("suppressed_ids_deleted", deleted=deleted, job_id=job_id)
        return deleted

    # -- unsuppress, audit, summary ------------------------------------------------------------
    def unsuppress(
        self, rows: Iterable[Member | RejectedRow], *, region: str | None = None, reason: str = ""
    ) -> Counter:
        """Take identifiers off the list: the next refresh that has them sends them again."""
        counts: Counter = Counter()
        links = self.rt.store.links()
        for chunk in _chunks(pairs(rows, region, counts)):
            pipe = self.r.pipeline(transaction=False)
            for schema, digest in chunk:
                pipe.srem(self._key(schema, digest), digest)
                pipe.rpush(
                    self.keys.suppression_audit(schema, digest.hex()),
                    _event(event="unsuppressed", reason=reason),
                )
                for link in links:
                    pipe.hdel(
                        self.keys.suppression_pending(link.destination_id, link.audience_id),
                        _field(schema, digest),
                    )
            removed = pipe.execute()[:: 2 + len(links)]
            for (schema, _), n in zip(chunk, removed, strict=True):
                counts[f"unsuppressed:{schema}" if n else f"not_suppressed:{schema}"] += 1
        return counts

    def trail(
        self, rows: Iterable[Member | RejectedRow], *, region: str | None = None
    ) -> list[dict[str, Any]]:
        """Per identifier: whether it is suppressed, and its audit events (oldest first)."""
        counts: Counter = Counter()
        out = []
        for schema, digest in dict.fromkeys(pairs(rows, region, counts)):
            events = self.r.lrange(self.keys.suppression_audit(schema, digest.hex()), 0, -1)
            out.append(
                {
                    "id_schema": schema,
                    "hash": digest.hex(),
                    "suppressed": bool(self.r.sismember(self._key(schema, digest), digest)),
                    "events": [json.loads(e) for e in events],
                }
            )
        return out

    def summary(self, entries: int = 20) -> dict[str, Any]:
        pipe = self.r.pipeline(transaction=False)
        for shard in range(self.shards):
            for schema in SCHEMAS:
                pipe.scard(self.keys.suppressed(shard, schema))
        sizes: Counter = Counter()
        for i, n in enumerate(pipe.execute()):
            sizes[SCHEMAS[i % len(SCHEMAS)]] += n
        pending = []
        for link in self.rt.store.links():
            n = self.r.hlen(self.keys.suppression_pending(link.destination_id, link.audience_id))
            if n:
                pending.append(
                    {
                        "destination_id": link.destination_id,
                        "audience_id": link.audience_id,
                        "pending_deletes": n,
                    }
                )
        recent = self.r.lrange(self.keys.suppression_log, -entries, -1)
        return {
            "suppressed": dict(sizes),
            "pending": pending,
            "entries": [json.loads(e) for e in reversed(recent)],
        }


def settle(rt: Runtime, dest_id: str, audience_id: str, job_id: str) -> int:
    """The finalize hook (see `Suppressions.settle`)."""
    return Suppressions(rt).settle(dest_id, audience_id, job_id)


__all__ = ["SuppressResult", "Suppressions", "pairs", "settle"]
