"""End-to-end throughput: a refresh through real Redis, real workers and the TikTok emulator,
against the plain single-process script (scripts/baseline_sync.py) doing the same sync in the
same run, on the same stack.

    .venv/bin/python -m scripts.bench_e2e [--ids 1000000] [--latency-ms 100] [--no-latency-run]
        [--verify] [--refresh-concurrency 2] [--tiktok-concurrency 16] [--tiktok-processes 1]

Two rounds on one stack: emulator without latency or cap, then with `--latency-ms` per call.
Each round syncs the snapshot into two fresh TikTok audiences, one by the pipeline (enqueue to
job at rest) and one by the baseline (a separate process), and checks both hold the same ids
(sizes per schema, or id by id with --verify). Targets: pipeline ÷ baseline ≥ 1.0 without
latency, ≥ 5 with 100 ms. CPU seconds of every process (Redis, emulator, workers, baseline)
are printed per run: on 2 cores they say where the time went.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from scripts.benchlib import (
    ADVERTISER,
    ROOT,
    TOKEN,
    Figure,
    Stack,
    add_stack_args,
    banner,
    cpu_delta,
    say,
    snapshot,
    stack_config,
    table,
    workers_line,
)

TARGETS = {0: 1.0, 100: 5.0}  # latency ms -> pipeline ÷ baseline


def baseline(stack: Stack, members: str, tiktok_id: str, batch_size: int) -> dict[str, float]:
    """Run scripts/baseline_sync in its own process; its JSON line plus its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.baseline_sync",
            members,
            "--base-url",
            f"{stack.root}/open_api/v1.3",
            "--token",
            TOKEN,
            "--advertiser",
            ADVERTISER,
            "--audience",
            tiktok_id,
            "--batch-size",
            str(batch_size),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def cpu_line(cpu: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v >= 0.05)
    return f"{parts}; total {sum(cpu.values()):.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench_e2e", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--ids", type=int, default=1_000_000, help="valid identifiers wanted (≈ 2.46 per member)"
    )
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument(
        "--no-latency-run", action="store_true", help="skip the round with emulator latency"
    )
    add_stack_args(p)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument(
        "--verify", action="store_true", help="compare the two audiences id by id (else sizes)"
    )
    a = p.parse_args(argv)
    banner("bench_e2e: pipeline vs plain script, ids/s end to end", argv)

    members = round(a.ids / 2.46)
    path, took = snapshot(f"e2e-{members}.csv", members, seed=101)
    say(
        f"snapshot {path.name}: {members:,} members ({path.stat().st_size / 1e6:.0f} MB; "
        f"generated in {took:.1f}s)"
    )
    config = stack_config(a, batch_size=a.batch_size)
    figures: list[Figure] = []
    rounds = [0.0] if a.no_latency_run else [0.0, a.latency_ms]
    with Stack(config, label="e2e") as stack:
        for latency in rounds:
            stack.set_faults(latency_ms=latency)
            tag = f"{latency:g} ms"
            pipe_id, base_id = (
                stack.link(f"e2e-pipe-{latency:g}"),
                stack.link(f"e2e-base-{latency:g}"),
            )
            calls0, _ = stack.mapping_calls()
            cpu0 = stack.cpu_seconds()
            run = stack.refresh(f"e2e-pipe-{latency:g}", path)
            pipe_cpu = cpu_delta(cpu0, stack.cpu_seconds())
            calls1, _ = stack.mapping_calls()
            phases = stack.phases(run.job.job_id)
            pipe_rate = run.synced / run.seconds
            say(
                f"[{tag}] pipeline: {run.synced:,} ids in {run.seconds:.2f}s = "
                f"{pipe_rate:,.0f} ids/s, "
                f"{calls1 - calls0} requests; phases "
                + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
            )
            say(f"[{tag}] pipeline CPU seconds: {cpu_line(pipe_cpu)}")
            synced = _held(stack, pipe_id, a.verify)
            stack.empty(pipe_id)  # each run starts with an emulator holding nothing
            cpu0 = stack.cpu_seconds()
            base = baseline(stack, str(path), base_id, a.batch_size)
            base_cpu = {"baseline": base["cpu"], **cpu_delta(cpu0, stack.cpu_seconds())}
            say(
                f"[{tag}] baseline: {base['ids']:,} ids in {base['seconds']:.2f}s = "
                f"{base['ids_per_s']:,.0f} ids/s, "
                f"{base['requests']} requests"
            )
            say(f"[{tag}] baseline CPU seconds: {cpu_line(base_cpu)}")
            same = _held(stack, base_id, a.verify) == synced
            stack.empty(base_id)
            say(
                f"[{tag}] emulator audiences {'hold the same ids' if same else 'DIFFER'}"
                f" ({'id by id' if a.verify else 'sizes per schema'})"
            )
            if not same or base["ids"] != run.synced:
                raise SystemExit("the pipeline and the baseline did not sync the same ids")
            figures += [
                Figure(f"pipeline ids/s, latency {tag}", pipe_rate),
                Figure(f"baseline ids/s, latency {tag}", base["ids_per_s"]),
                Figure(
                    f"pipeline ÷ baseline, latency {tag}",
                    pipe_rate / base["ids_per_s"],
                    target=TARGETS.get(int(latency)),
                ),
                Figure(
                    f"CPU seconds pipeline ÷ baseline, latency {tag}",
                    sum(pipe_cpu.values()) / sum(base_cpu.values()),
                ),
            ]
    print(f"\nids per run: {run.synced:,}; {workers_line(config)}; no rate cap")
    return 0 if table(figures) else 1


def _held(stack: Stack, tiktok_id: str, full: bool) -> object:
    """What an emulator audience holds: ids per schema (full) or sizes per schema."""
    if not full:
        return stack.sizes(tiktok_id)
    return {k: set(v) for k, v in stack.held(tiktok_id).items() if v}


if __name__ == "__main__":
    sys.exit(main())
