"""ID extension: an identity graph in Redis (user_id -> more identifiers), and the staging hook
that gives each member of a link with `id_extension` on the graph's identifiers before staging.

Choices:
- The graph holds SHA-256 digests only, never clear identifiers. Phones are hashed when the graph
  is loaded, with the region given to `load` (numbers without a country code need one).
- Storage: `GRAPH_SHARDS` Redis hashes per generation, field user_id -> records of one type byte
  plus the 32-byte digest. A load merges into the current generation (a user's identifiers are
  the union of every row naming it); `replace=True` writes a new generation and switches to it at
  the end, so a refresh never reads a half-loaded graph. Old generations expire after
  `OLD_GENERATION_TTL` instead of vanishing under a refresh that is reading them.
- Extension applies to rows with consent and a `user_id`; it adds only identifier types the
  destination sends, and never an identifier the member already has (so the job's
  `extended:<type>` counts are identifiers TikTok gets only through the graph). It applies to
  the removals of a delta job too, so a removed member takes its graph identifiers with it.
- Lookups go per chunk of `EXTEND_CHUNK` members: one pipelined HMGET per shard, not one
  round-trip per member; a link without extension never reaches this module.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from worker.identifiers import COLUMNS, Hasher, IdType, RejectedIdentifier
from worker.models import Destination
from worker.runtime import Runtime
from worker.sources import Member, RejectedRow, open_source
from worker.store import redact_uri

GRAPH_SHARDS = 64  # fixed: user ids are placed by crc32(user_id) % GRAPH_SHARDS
DIGEST = 32
RECORD = 1 + DIGEST  # type byte + digest
EXTEND_CHUNK = 1000  # members looked up per pipeline while staging
LOAD_CHUNK = 5000  # users merged per pipeline while loading
OLD_GENERATION_TTL = 3600  # seconds a replaced graph stays readable for refreshes under way

# One table: identifier type <-> the byte that tags its records.
TYPE_CODE: dict[IdType, bytes] = {
    IdType.EMAIL: b"e",
    IdType.PHONE: b"p",
    IdType.IDFA: b"i",
    IdType.GAID: b"g",
}
CODE_TYPE: dict[bytes, IdType] = {code: id_type for id_type, code in TYPE_CODE.items()}
# The member column a graph digest is added under (pre-hashed: the Stager does not hash again).
HASHED_COLUMN: dict[IdType, str] = {
    id_type: column for column, (id_type, prehashed) in COLUMNS.items() if prehashed
}


def shard_of(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % GRAPH_SHARDS


def records(blob: bytes) -> Iterator[tuple[IdType, bytes]]:
    """The (type, digest) records of one stored value; unknown type bytes are skipped."""
    for i in range(0, len(blob) - RECORD + 1, RECORD):
        id_type = CODE_TYPE.get(blob[i : i + 1])
        if id_type is not None:
            yield id_type, blob[i + 1 : i + RECORD]


class Graph:
    """The identity graph of one tiktok-sync installation (one key prefix)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.r = rt.store.r
        self.keys = rt.store.keys

    # -- reading -----------------------------------------------------------------------------
    def generation(self) -> str | None:
        raw = self.r.hget(self.keys.idgraph_meta, "generation")
        return raw.decode() if raw else None

    def lookup(self, user_ids: Iterable[str]) -> dict[str, bytes]:
        """user_id -> stored records, for the ids the graph knows (one pipeline)."""
        generation = self.generation()
        if generation is None:
            return {}
        by_shard: dict[int, list[str]] = {}
        for user_id in user_ids:
            by_shard.setdefault(shard_of(user_id), []).append(user_id)
        if not by_shard:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for shard, ids in by_shard.items():
            pipe.hmget(self.keys.idgraph(generation, shard), ids)
        found: dict[str, bytes] = {}
        for ids, values in zip(by_shard.values(), pipe.execute(), strict=True):
            for user_id, blob in zip(ids, values, strict=True):
                if blob:
                    found[user_id] = blob
        return found

    def get(self, user_id: str) -> dict[str, list[str]]:
        """One user's identifiers as hex digests per type (for `idgraph show`)."""
        out: dict[str, list[str]] = {}
        blob = self.lookup([user_id]).get(user_id, b"")
        for id_type, digest in records(blob):
            out.setdefault(str(id_type), []).append(digest.hex())
        return out

    def info(self) -> dict[str, Any]:
        meta = {k.decode(): v.decode() for k, v in self.r.hgetall(self.keys.idgraph_meta).items()}
        generation = meta.get("generation")
        users = 0
        if generation is not None:
            pipe = self.r.pipeline(transaction=False)
            for shard in range(GRAPH_SHARDS):
                pipe.hlen(self.keys.idgraph(generation, shard))
            users = sum(pipe.execute())
        return {**meta, "users": users}

    # -- writing -----------------------------------------------------------------------------
    def merge(self, generation: str, batch: dict[str, set[bytes]]) -> int:
        """Union each user's records into the graph; returns how many records were new."""
        by_shard: dict[int, list[str]] = {}
        for user_id, recs in batch.items():
            if recs:
                by_shard.setdefault(shard_of(user_id), []).append(user_id)
        if not by_shard:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for shard, ids in by_shard.items():
            pipe.hmget(self.keys.idgraph(generation, shard), ids)
        existing = pipe.execute()
        added = 0
        pipe = self.r.pipeline(transaction=False)
        for (shard, ids), values in zip(by_shard.items(), existing, strict=True):
            mapping: dict[str, bytes] = {}
            for user_id, blob in zip(ids, values, strict=True):
                old = {blob[i : i + RECORD] for i in range(0, len(blob or b""), RECORD)}
                new = batch[user_id] - old
                if new:
                    added += len(new)
                    mapping[user_id] = (blob or b"") + b"".join(sorted(new))
            if mapping:
                pipe.hset(self.keys.idgraph(generation, shard), mapping=mapping)
        pipe.execute()
        return added

    def drop(self, generation: str, ttl: int | None = None) -> None:
        keys = [self.keys.idgraph(generation, shard) for shard in range(GRAPH_SHARDS)]
        if ttl is None:
            self.r.unlink(*keys)
            return
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, ttl)
        pipe.execute()

    def clear(self) -> None:
        generation = self.generation()
        self.r.delete(self.keys.idgraph_meta)
        if generation is not None:
            self.drop(generation, OLD_GENERATION_TTL)

    def load(
        self,
        uri: str,
        *,
        fmt: str | None = None,
        region: str | None = None,
        replace: bool = False,
    ) -> Counter:
        """Stream a CSV/NDJSON file of `user_id` + identifier columns into the graph.

        Returns counts: rows read/rejected/excluded, users and identifiers added. A file that
        cannot be read completely raises `SourceError` and leaves the current graph as it was
        (a replacing load drops what it wrote).
        """
        settings = self.rt.settings
        current = self.generation()
        generation = current if current is not None and not replace else f"g{time.time_ns()}"
        hasher = Hasher(region)
        counts: Counter = Counter()
        batch: dict[str, set[bytes]] = {}
        try:
            with open_source(
                uri,
                fmt,
                max_line_bytes=settings.max_line_bytes,
                http_timeout=settings.source_http_timeout,
            ) as source:
                for row in source:
                    counts["rows_read"] += 1
                    if isinstance(row, RejectedRow):
                        counts["rows_rejected"] += 1
                        counts[f"rejected_row:{row.reason}"] += 1
                        continue
                    if not row.user_id:
                        counts["rows_rejected"] += 1
                        counts["rejected_row:no_user_id"] += 1
                        continue
                    if not row.consent:
                        counts["rows_excluded"] += 1
                        continue
                    recs = batch.setdefault(row.user_id, set())
                    for column, values in row.identifiers.items():
                        id_type, prehashed = COLUMNS[column]
                        for value in values:
                            try:
                                digest = hasher.digest(id_type, value, prehashed)
                            except RejectedIdentifier as error:
                                counts[f"rejected_id:{id_type}:{error.reason}"] += 1
                                continue
                            recs.add(TYPE_CODE[id_type] + digest)
                    if len(batch) >= LOAD_CHUNK:
                        counts["identifiers_added"] += self.merge(generation, batch)
                        batch = {}
                counts["identifiers_added"] += self.merge(generation, batch)
        except BaseException:
            if generation != current:
                self.drop(generation)
            raise
        self.r.hset(
            self.keys.idgraph_meta,
            mapping={"generation": generation, "loaded_at": time.time(), "source": redact_uri(uri)},
        )
        if current is not None and generation != current:
            self.drop(current, OLD_GENERATION_TTL)
        return counts


class Extension:
    """The staging hook: adds each member's graph identifiers (those the destination sends)."""

    def __init__(self, rt: Runtime, dest: Destination) -> None:
        self.graph = Graph(rt)
        self.allowed = set(dest.identifiers)
        self.hasher = Hasher(dest.phone_region)

    def extend(
        self, rows: Iterable[Member | RejectedRow], counts: Counter
    ) -> Iterator[Member | RejectedRow]:
        chunk: list[Member | RejectedRow] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= EXTEND_CHUNK:
                self._apply(chunk, counts)
                yield from chunk
                chunk = []
        if chunk:
            self._apply(chunk, counts)
            yield from chunk

    def _apply(self, chunk: list[Member | RejectedRow], counts: Counter) -> None:
        members = [r for r in chunk if isinstance(r, Member) and r.consent and r.user_id]
        if not members:
            return
        found = self.graph.lookup({m.user_id for m in members if m.user_id})
        if not found:
            return
        for member in members:
            blob = found.get(member.user_id or "")
            if not blob:
                continue
            extra: dict[IdType, set[bytes]] = {}
            for id_type, digest in records(blob):
                if id_type in self.allowed:
                    extra.setdefault(id_type, set()).add(digest)
            if not extra:
                continue
            # Identifiers the member has already: hashed here only for members the graph knows.
            for column, values in member.identifiers.items():
                id_type, prehashed = COLUMNS[column]
                have = extra.get(id_type)
                if not have:
                    continue
                for value in values:
                    with contextlib.suppress(RejectedIdentifier):
                        have.discard(self.hasher.digest(id_type, value, prehashed))
            added = 0
            for id_type, digests in extra.items():
                if digests:
                    column = HASHED_COLUMN[id_type]
                    member.identifiers.setdefault(column, []).extend(d.hex() for d in digests)
                    counts[f"extended:{id_type}"] += len(digests)
                    added += len(digests)
            if added:
                counts["members_extended"] += 1


__all__ = ["GRAPH_SHARDS", "Extension", "Graph"]
