"""Memory at scale: peak RSS of every worker process and Redis memory per synced id, for a
large snapshot against a small one (memory must not grow with the audience).

    .venv/bin/python -m scripts.bench_memory [--members 10000000] [--small 1000000]

Each size runs on a fresh stack (fresh worker processes, so each VmHWM is that run's peak): the
snapshot is generated in .bench/, synced into an empty audience, and measured:
- peak RSS (VmHWM, sampled from /proc) of the `refresh` worker's main process and pool
  children and of the `tiktok` worker; target ≤ 250 MB each, and large ÷ small ≤ 1.1;
- Redis `used_memory` after the sync (lazy frees done) minus before, ÷ synced ids (target ≤ 100
  bytes: the ledger, plus the results store's batch records); and the peak during the sync.
The emulator holds every id as a hex string in a Python set: its memory is TikTok's, not ours.
"""

from __future__ import annotations

import argparse
import sys
import time

from scripts.benchlib import (
    Figure,
    PeakRss,
    Stack,
    StackConfig,
    add_stack_args,
    banner,
    cpu_delta,
    mb,
    say,
    snapshot,
    stack_config,
    table,
    vm_hwm_bytes,
    workers_line,
)

RSS_TARGET_MB = 250
GROWTH_TARGET = 1.1
BYTES_PER_ID_TARGET = 100


def measure(members: int, config: StackConfig) -> dict[str, float]:
    path, took = snapshot(f"memory-{members}.csv", members, seed=303)
    say(
        f"{members:,} members: {path.name}, {path.stat().st_size / 1e6:,.0f} MB"
        + (f", generated in {took:.0f}s" if took else " (reused)")
    )
    with Stack(config, label=f"memory-{members}") as stack:
        stack.link("memory")
        time.sleep(1)
        before = stack.settled_redis_memory()
        stack.rt.store.r.config_resetstat()  # type: ignore[union-attr]  # resets used_memory_peak
        cpu0 = stack.cpu_seconds()
        with PeakRss(stack) as rss:
            run = stack.refresh("memory", path)
        cpu = cpu_delta(cpu0, stack.cpu_seconds())
        peak = stack.redis_memory()["used_memory_peak"]
        after = stack.settled_redis_memory()
        assert stack.emulator is not None
        emulator_rss = vm_hwm_bytes(stack.emulator.pid) or 0
        phases = stack.phases(run.job.job_id)
    ids = run.synced
    say(
        f"{members:,} members: {ids:,} ids synced in {run.seconds:.0f}s "
        f"({ids / run.seconds:,.0f} ids/s; "
        + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items())
        + ")"
    )
    say("  CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    for role, pid, hwm in rss.by_process():
        say(f"  peak RSS {role:<14} pid {pid:<7} {mb(hwm):7.1f} MB")
    say(
        f"  Redis used_memory +{mb(after - before):,.0f} MB after "
        f"({(after - before) / ids:.1f} B/id), "
        f"peak +{mb(peak - before):,.0f} MB during ({(peak - before) / ids:.1f} B/id); "
        f"emulator RSS {mb(emulator_rss):,.0f} MB (TikTok's side)"
    )
    out: dict[str, float] = {
        "ids": ids,
        "seconds": run.seconds,
        "redis_per_id": (after - before) / ids,
        "redis_peak_per_id": (peak - before) / ids,
    }
    for role in ("refresh main", "refresh child", "tiktok main"):
        out[role] = max((hwm for r, _, hwm in rss.by_process() if r == role), default=0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench_memory", description=__doc__.split("\n")[0]
    )
    p.add_argument("--members", type=int, default=10_000_000, help="the large snapshot")
    p.add_argument("--small", type=int, default=1_000_000, help="the snapshot it is compared with")
    add_stack_args(p)
    a = p.parse_args(argv)
    banner("bench_memory: worker RSS and Redis memory per synced id", argv)
    t = time.perf_counter()
    small = measure(a.small, stack_config(a))
    large = measure(a.members, stack_config(a))
    figures: list[Figure] = []
    for role in ("refresh main", "refresh child", "tiktok main"):
        figures.append(
            Figure(
                f"peak RSS {role}, {a.members:,} members",
                mb(large[role]),
                "MB",
                RSS_TARGET_MB,
                at_least=False,
            )
        )
    for role in ("refresh main", "refresh child", "tiktok main"):
        figures.append(
            Figure(
                f"peak RSS {role}, {a.members:,} ÷ {a.small:,}",
                large[role] / small[role],
                target=GROWTH_TARGET,
                at_least=False,
            )
        )
    figures += [
        Figure(
            f"Redis bytes per synced id, {a.members:,} members",
            large["redis_per_id"],
            "B",
            BYTES_PER_ID_TARGET,
            at_least=False,
        ),
        Figure(
            f"Redis bytes per synced id, {a.small:,} members",
            small["redis_per_id"],
            "B",
            BYTES_PER_ID_TARGET,
            at_least=False,
        ),
        Figure(
            f"Redis peak bytes per id during the sync, {a.members:,}",
            large["redis_peak_per_id"],
            "B",
        ),
        Figure(
            f"sync time, {a.members:,} members ({large['ids']:,.0f} ids)", large["seconds"], "s"
        ),
        Figure(f"sync time, {a.small:,} members ({small['ids']:,.0f} ids)", small["seconds"], "s"),
    ]
    ok = table(figures)
    print(f"\n{workers_line(stack_config(a))}; whole benchmark: {time.perf_counter() - t:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
