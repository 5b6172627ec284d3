"""Incremental cost: a full sync of an audience, then a refresh where 1% of the members changed;
requests and time of the second against the first.

    .venv/bin/python -m scripts.bench_incremental [--members 1000000] [--change 0.01]
        [--batch-sizes 1000,100] [--latency-ms 0]

The changed snapshot (scripts/gen_members: same seed) drops `change`/2 of the members and
appends as many new ones. Figures for the first batch size:
- requests sent ÷ (changed ids ÷ batch size), target ≤ 1.05; one schema and one action per
  request (DESIGN.md) makes the floor Σ ⌈ids of (schema, action) ÷ batch size⌉, printed too;
- incremental time ÷ full sync time, target ≤ 0.3 (the refresh still reads and hashes every
  member: a snapshot says who is in, not what changed).
Each further batch size restarts the workers with it and syncs back to the first snapshot: the
same changed ids the other way, so only the request count is compared.
"""

from __future__ import annotations

import argparse
import math
import sys

from scripts.benchlib import (
    SCHEMAS,
    Figure,
    Run,
    Stack,
    add_stack_args,
    banner,
    say,
    snapshot,
    stack_config,
    table,
    workers_line,
)

REQUESTS_TARGET = 1.05
TIME_TARGET = 0.3


def floor_requests(run: Run, size: int) -> int:
    """The fewest requests that can carry the job's changes: one schema and action per request."""
    return sum(
        math.ceil(run.job.count(f"{g}:{s}") / size) for g in ("adds", "removes") for s in SCHEMAS
    )


def phases(stack: Stack, run: Run) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in stack.phases(run.job.job_id).items())


def requests_of(stack: Stack, audience: str, path: object) -> tuple[Run, int]:
    before, _ = stack.mapping_calls()
    run = stack.refresh(audience, path)  # type: ignore[arg-type]
    after, _ = stack.mapping_calls()
    return run, after - before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench_incremental", description=__doc__.split("\n")[0]
    )
    p.add_argument("--members", type=int, default=1_000_000)
    p.add_argument("--change", type=float, default=0.01, help="share of members changed")
    p.add_argument("--batch-sizes", default="1000,100", help="first one for the timed runs")
    p.add_argument("--latency-ms", type=float, default=0.0, help="emulator latency per call")
    add_stack_args(p)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    banner("bench_incremental: a 1% change against a full sync", argv)

    half = a.change / 2
    first, t1 = snapshot(f"incr-{a.members}.csv", a.members, seed=202)
    second, t2 = snapshot(
        f"incr-{a.members}-changed-{a.change:g}.csv",
        round(a.members * (1 + half)),
        seed=202,
        drop_share=half,
    )
    say(f"snapshots {first.name} and {second.name} ({t1 + t2:.0f}s to generate)")
    config = stack_config(a, batch_size=sizes[0], latency_ms=a.latency_ms)
    workers = workers_line(config)  # before restarts change the batch size
    figures: list[Figure] = []
    with Stack(config, label="incr") as stack:
        stack.link("incr")
        full, full_requests = requests_of(stack, "incr", first)
        say(
            f"full sync: {full.changed:,} ids, {full_requests} requests, {full.seconds:.1f}s "
            f"({phases(stack, full)})"
        )
        incr, incr_requests = requests_of(stack, "incr", second)
        say(
            f"{a.change:.0%} change: {incr.changed:,} ids changed, {incr_requests} requests, "
            f"{incr.seconds:.1f}s "
            f"({phases(stack, incr)})"
        )
        size = sizes[0]
        floor = floor_requests(incr, size)
        figures += [
            Figure("changed ids ÷ full sync ids", incr.changed / full.changed),
            Figure("requests ÷ full sync requests", incr_requests / full_requests),
            Figure(
                f"requests ÷ (changed ÷ batch), batch {size}",
                incr_requests / (incr.changed / size),
                target=REQUESTS_TARGET,
                at_least=False,
            ),
            Figure(
                f"requests ÷ floor Σ⌈group ÷ batch⌉ ({floor}), batch {size}", incr_requests / floor
            ),
            Figure(
                "incremental time ÷ full sync time",
                incr.seconds / full.seconds,
                target=TIME_TARGET,
                at_least=False,
            ),
        ]
        back = first
        for size in sizes[1:]:
            stack.restart_workers(batch_size=size)
            run, sent = requests_of(stack, "incr", back)
            floor = floor_requests(run, size)
            say(
                f"batch {size}: {run.changed:,} ids changed back, {sent} requests, "
                f"{run.seconds:.1f}s ({phases(stack, run)})"
            )
            figures += [
                Figure(
                    f"requests ÷ (changed ÷ batch), batch {size}",
                    sent / (run.changed / size),
                    target=REQUESTS_TARGET,
                    at_least=False,
                ),
                Figure(f"requests ÷ floor Σ⌈group ÷ batch⌉ ({floor}), batch {size}", sent / floor),
            ]
            back = second if back == first else first
    print(
        f"\nfull sync {full.seconds:.1f}s, incremental {incr.seconds:.1f}s; {a.members:,} members, "
        f"change {a.change:.0%}, emulator latency {a.latency_ms:g} ms, no rate cap; "
        f"{workers}"
    )
    return 0 if table(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
