"""Redis key names, in one place. Every key starts with the configured prefix.

Audience state (staging, ledger, diffs) is sharded by the first byte of the digest, and each
shard's keys share a Redis Cluster hash tag so the server-side diff of a shard runs on one node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


def check_id(kind: str, value: str) -> str:
    """Ids become parts of key names: keep them to a safe alphabet (no braces, no spaces)."""
    if not isinstance(value, str) or not SAFE_ID.match(value):
        raise ValueError(
            f"{kind} id {value!r} is not valid: use 1-128 characters from A-Z a-z 0-9 _ . : @ -"
        )
    return value


def job_of_batch(batch_id: str) -> str:
    """The job a batch belongs to: batch ids are `<job id>-<number>[p<plan>][.<half>...]`."""
    return batch_id.rsplit("-", 1)[0]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    # destinations and audience links
    def destination(self, dest: str) -> str:
        return f"{self.prefix}:dest:{dest}"

    @property
    def destinations(self) -> str:
        return f"{self.prefix}:dests"

    def link(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:link:{dest}:{audience}"

    @property
    def links(self) -> str:
        return f"{self.prefix}:links"

    def link_lock(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:linklock:{dest}:{audience}"

    # jobs and batches (results store)
    def job(self, job: str) -> str:
        return f"{self.prefix}:job:{job}"

    def job_spec(self, job: str) -> str:
        return f"{self.prefix}:jobspec:{job}"

    def job_batches(self, job: str) -> str:
        return f"{self.prefix}:job:{job}:batches"

    def job_rejects(self, job: str) -> str:
        return f"{self.prefix}:job:{job}:rejects"

    def job_finalize(self, job: str) -> str:
        return f"{self.prefix}:job:{job}:finalize"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def active_jobs(self) -> str:
        """Jobs not (known to be) at rest: what the reconciler looks at."""
        return f"{self.prefix}:jobs:active"

    def history(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:history:{dest}:{audience}"

    def batch(self, batch: str) -> str:
        return f"{self.prefix}:batch:{batch}"

    def batch_data(self, batch: str) -> str:
        return f"{self.prefix}:batchdata:{batch}"

    # per-audience coordination
    def lock(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:lock:{dest}:{audience}"

    def waiting(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:waiting:{dest}:{audience}"

    def started(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:started:{dest}:{audience}"

    # sharded audience state
    def shard_tag(self, dest: str, audience: str, shard: int) -> str:
        return f"{self.prefix}:{{{dest}:{audience}:{shard}}}"

    def ledger(self, dest: str, audience: str, shard: int, schema: str) -> str:
        return f"{self.shard_tag(dest, audience, shard)}:ledger:{schema}"

    def stage(self, dest: str, audience: str, shard: int, schema: str, job: str) -> str:
        return f"{self.shard_tag(dest, audience, shard)}:stage:{job}:{schema}"

    def diff(self, dest: str, audience: str, shard: int, schema: str, job: str, action: str) -> str:
        return f"{self.shard_tag(dest, audience, shard)}:{action}:{job}:{schema}"

    # rate limiter
    def rate(self, app: str, advertiser: str) -> str:
        return f"{self.prefix}:rate:{{{app}:{advertiser}}}"

    # schedules: one claim per (link, due time), so two beats enqueue a due refresh once
    def schedule_claim(self, dest: str, audience: str, due: float) -> str:
        return f"{self.prefix}:sched:{dest}:{audience}:{due!r}"

    # global suppression list (worker/suppression.py), sharded like the ledgers
    def suppressed(self, shard: int, schema: str) -> str:
        return f"{self.prefix}:supp:{shard}:{schema}"

    def suppression_pending(self, dest: str, audience: str) -> str:
        return f"{self.prefix}:supp:pending:{dest}:{audience}"

    def suppression_audit(self, schema: str, hex_digest: str) -> str:
        return f"{self.prefix}:supp:audit:{schema}:{hex_digest}"

    @property
    def suppression_log(self) -> str:
        return f"{self.prefix}:supp:log"

    # identity graph (worker/idgraph.py): generations of sharded hashes user_id -> ids
    @property
    def idgraph_meta(self) -> str:
        return f"{self.prefix}:idgraph:meta"

    def idgraph(self, generation: str, shard: int) -> str:
        return f"{self.prefix}:idgraph:{generation}:{shard}"
