"""The plain reference for bench_e2e: one process syncs a snapshot to an empty TikTok audience
in a loop (read, normalise + hash, POST a batch whenever one schema has a full one).

    python -m scripts.baseline_sync MEMBERS --base-url URL --token TOKEN --advertiser ID
        --audience TIKTOK_AUDIENCE_ID [--region US] [--batch-size 1000]

No Redis, no Celery, no ledger, no retries: what a first script would do. It uses the project's
own reader, Hasher and TikTok client, so the comparison is about the architecture, not the
parts. Ids are de-duplicated in memory (a set of digests: memory grows with the audience) so
it sends exactly what the pipeline sends. Prints one JSON line: ids, requests, seconds, ids/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from worker.identifiers import COLUMNS, ID_SCHEMA, Hasher, RejectedIdentifier
from worker.sources import Member, open_source
from worker.tiktok import TikTokClient


def sync(
    members: str,
    client: TikTokClient,
    token: str,
    advertiser: str,
    audience: str,
    region: str | None = "US",
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Add every valid identifier of `members` to `audience`; returns counts and timing."""
    t = time.perf_counter()
    hasher = Hasher(region)
    seen: set[bytes] = set()
    pending: dict[str, list[bytes]] = {schema: [] for schema in ID_SCHEMA.values()}
    requests = ids = 0

    def post(schema: str, digests: list[bytes]) -> None:
        nonlocal requests
        client.mapping(token, advertiser, audience, "add", schema, [d.hex() for d in digests])
        requests += 1

    with open_source(members) as source:
        for row in source:
            if not isinstance(row, Member) or not row.consent:
                continue
            for column, values in row.identifiers.items():
                id_type, prehashed = COLUMNS[column]
                for value in values:
                    try:
                        digest = hasher.digest(id_type, value, prehashed)
                    except RejectedIdentifier:
                        continue
                    schema = ID_SCHEMA[id_type]
                    key = schema[0].encode() + digest  # one set for all schemas
                    if key in seen:
                        continue
                    seen.add(key)
                    ids += 1
                    batch = pending[schema]
                    batch.append(digest)
                    if len(batch) == batch_size:
                        post(schema, batch)
                        pending[schema] = []
    for schema, batch in pending.items():
        if batch:
            post(schema, batch)
    seconds = time.perf_counter() - t
    return {
        "ids": ids,
        "requests": requests,
        "seconds": round(seconds, 3),
        "ids_per_s": round(ids / seconds, 1) if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.baseline_sync", description=__doc__.split("\n")[0]
    )
    p.add_argument("members")
    p.add_argument(
        "--base-url",
        required=True,
        help="TikTok API base, e.g. http://127.0.0.1:8765/open_api/v1.3",
    )
    p.add_argument("--token", required=True)
    p.add_argument("--advertiser", required=True)
    p.add_argument("--audience", required=True, help="TikTok audience id")
    p.add_argument("--region", default="US")
    p.add_argument("--batch-size", type=int, default=1000)
    a = p.parse_args(argv)
    client = TikTokClient(a.base_url, read_timeout=60)
    result = sync(a.members, client, a.token, a.advertiser, a.audience, a.region, a.batch_size)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
