"""Benchmark of the shared rate limiter against Celery's per-worker `rate_limit`, side by side.

    python -m scripts.bench_ratelimit [--qps 10] [--workers 4] [--concurrency 4] [--calls 300]
        [--rows 50] [--latency-ms 100] [--overrate 0]

One run starts a private redis-server and the TikTok emulator in-process (every API answer
`--latency-ms` late, mapping calls capped at `--qps` Q per advertiser per sliding second), then
sends `--calls` mapping requests of `--rows` rows each, one setup after the other:
- tiktok-sync: N `celery -A worker.app` worker processes (threads, C each) with
  RATE_LIMIT_PER_SECOND=Q sync one audience of calls x rows emails in batches of `rows`;
- baseline: N `celery -A scripts.bench_ratelimit` worker processes run `bench.post_batch`, the same
  POST, with Celery's `rate_limit` set to Q/N per second per worker; a 40100 answer re-sends the
  task after 1 s (its only way to "slow down");
- with `--overrate K`, tiktok-sync again with RATE_LIMIT_PER_SECOND=K x Q: a cap it does not
  know, to be learned from the 40100s.
For each it prints achieved mapping requests/s / Q (successful calls per second between the 5th
and the 95th percentile call: the steady rate; target >= 0.9), the share of mapping answers that
were 40100 (target < 1%), the shared limiter's rate cuts, and the span from the first to the last
successful call (start-up and tail included).

The module is also the baseline's Celery app: its worker processes import it, configured by the
BENCH_* environment variables the benchmark sets for them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from config.celery import celery_config
from config.settings import Settings, load_settings
from scripts.tiktok_emulator import Emulator
from tests.harness import RedisServer, WorkerProcess, base_env, wait_until
from worker import api
from worker.runtime import Runtime
from worker.tiktok import AnswerClass, TikTokClient, mapping_body

TOKEN = "bench-token-5c1f0e77"
ADVERTISER = "7000000042"
APP_ID, APP_SECRET = "bench-app", "bench-secret"

# -- the baseline: a plain Celery task with a per-worker rate_limit ------------------------------
# Worker processes of the baseline read their configuration from BENCH_* variables (set below).
app = Celery("bench_ratelimit")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"),
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


@app.task(
    name="bench.post_batch",
    bind=True,
    max_retries=None,
    rate_limit=os.environ.get("BENCH_RATE_LIMIT"),
)
def post_batch(self: Any, audience_id: str, first: int, rows: int) -> None:
    client = TikTokClient(os.environ["BENCH_TIKTOK_URL"], read_timeout=10)
    hashes = [_email_hash(f"base.{i}@example.com") for i in range(first, first + rows)]
    body = mapping_body(ADVERTISER, audience_id, "add", "EMAIL_SHA256", hashes)
    answer = client.call("POST", "segment/mapping", token=TOKEN, body=body)
    if answer.answer_class is not AnswerClass.OK:
        raise self.retry(countdown=1)


def _email_hash(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


# -- the benchmark -----------------------------------------------------------------------------
@dataclass
class Result:
    label: str
    ok_times: list[float]  # emulator times of the successful calls, sorted
    throttled: int
    other: int
    qps: float
    cuts: int | None = None  # rate cuts of the shared limiter (None: no shared limiter)

    @property
    def ok(self) -> int:
        return len(self.ok_times)

    @property
    def calls(self) -> int:
        return self.ok + self.throttled + self.other

    @property
    def span(self) -> float:
        return self.ok_times[-1] - self.ok_times[0] if self.ok_times else 0.0

    @property
    def achieved(self) -> float:
        """Successful calls/s between the 5th and the 95th percentile call, over Q: the steady
        rate, without start-up and without the tail (Celery's rate-limited tasks sit in the
        buffer of the worker that fetched them, so the last ones trickle out of a few workers)."""
        lo, hi = int(0.05 * self.ok), int(0.95 * self.ok) - 1
        if hi <= lo:
            return 0.0
        return (hi - lo) / (self.ok_times[hi] - self.ok_times[lo]) / self.qps

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.calls if self.calls else 0.0


def measure(label: str, emulator: Any, audience_id: str, qps: float) -> Result:
    log = [e for e in emulator.stats()["mapping_log"] if e["audience_id"] == audience_id]
    ok = sorted(e["t"] for e in log if e["code"] == 0)
    throttled = sum(1 for e in log if e["code"] == 40100)
    return Result(label, ok, throttled, len(log) - len(ok) - throttled, qps)


@contextmanager
def worker_processes(
    env: dict[str, str], args: argparse.Namespace, celery_app: str, queues: str, tag: str
) -> Iterator[list[WorkerProcess]]:
    procs = []
    for i in range(args.workers):
        w = WorkerProcess(
            env,
            queues=queues,
            pool="threads",
            concurrency=args.concurrency,
            name=f"{tag}{i}",
            log_path=args.logs / f"worker-{tag}{i}.log",
        )
        w.args[w.args.index("worker.app")] = celery_app
        procs.append(w.start())
    try:
        wait_until(lambda: all(" ready." in p.log() for p in procs), timeout=120, what="workers")
        yield procs
    finally:
        for p in procs:
            p.stop()


def run_tiktok_sync(
    args: argparse.Namespace, redis_url: str, emulator: Any, rate: float, label: str, tag: str
) -> Result:
    env = base_env(
        redis_url,
        emulator.base_url,
        broker_url=redis_url.rsplit("/", 1)[0] + "/1",
        tiktok_app_id=APP_ID,
        tiktok_app_secret=APP_SECRET,
        rate_limit_per_second=rate,
        tiktok_batch_size=args.rows,
        tiktok_read_timeout=10,
        log_level="INFO",
    )
    rt = Runtime.build(_settings(env))
    celery = Celery("bench_ratelimit_client")
    celery.config_from_object(celery_config(rt.settings))
    key = rt.store.keys.rate(APP_ID, ADVERTISER)
    rt.store.r.delete(key, key + ":rows")  # each setup starts with nothing learned
    dest = f"bench-{tag}"
    api.add_destination("Bench", ADVERTISER, TOKEN, destination_id=dest, rt=rt)
    audience = api.link_audience(dest, "aud", rt=rt).tiktok_audience_id
    with tempfile.TemporaryDirectory() as tmp:
        members = Path(tmp) / "members.csv"
        n = args.calls * args.rows
        members.write_text("email\n" + "".join(f"{tag}.{i}@example.com\n" for i in range(n)))
        with worker_processes(env, args, "worker.app", "refresh,tiktok", tag):
            job_id = api.enqueue_refresh(dest, "aud", members=str(members), rt=rt, app=celery)
            job = api.wait_for(job_id, timeout=3600, rt=rt)
    celery.close()
    if job.status != "succeeded":
        raise SystemExit(f"{label}: job {job_id} ended {job.status}: {job.message}")
    result = measure(label, emulator, audience, args.qps)
    result.cuts = rt.limiter.epoch(key)
    return result


def run_baseline(args: argparse.Namespace, redis_url: str, emulator: Any) -> Result:
    broker = redis_url.rsplit("/", 1)[0] + "/2"
    env = base_env(
        redis_url,
        emulator.base_url,
        bench_broker_url=broker,
        bench_tiktok_url=emulator.base_url,
        bench_rate_limit=f"{args.qps / args.workers}/s",
    )
    client = TikTokClient(emulator.base_url)
    audience = client.create_audience(TOKEN, ADVERTISER, "baseline")
    app.conf.broker_url = broker
    with worker_processes(env, args, "scripts.bench_ratelimit", "celery", "base"):
        for i in range(args.calls):
            app.send_task(
                "bench.post_batch", args=[audience, i * args.rows, args.rows], queue="celery"
            )
        wait_until(
            lambda: measure("", emulator, audience, args.qps).ok >= args.calls,
            timeout=3600,
            poll=0.5,
            what="baseline calls",
        )
    return measure(
        f"celery rate_limit={args.qps / args.workers:g}/s x {args.workers}",
        emulator,
        audience,
        args.qps,
    )


def _settings(env: dict[str, str]) -> Settings:
    return load_settings(
        **{k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, default=10.0, help="the emulator's cap Q")
    parser.add_argument("--workers", type=int, default=4, help="worker processes N")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker process")
    parser.add_argument("--calls", type=int, default=300, help="mapping calls per setup")
    parser.add_argument("--rows", type=int, default=50, help="rows per mapping call")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--overrate",
        type=float,
        default=0.0,
        help="also run tiktok-sync with its rate set to this many times Q",
    )
    args = parser.parse_args(argv)

    args.logs = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    redis_server = RedisServer().start()
    emulator = Emulator(
        app_id=APP_ID, app_secret=APP_SECRET, latency_ms=args.latency_ms, qps_cap=args.qps
    ).start()
    emulator.add_token(TOKEN, [ADVERTISER])
    print(
        f"bench_ratelimit: emulator cap Q={args.qps:g} mapping calls/s per advertiser, "
        f"{args.latency_ms:g} ms latency; N={args.workers} worker processes x {args.concurrency} "
        f"threads; {args.calls} calls of {args.rows} rows per setup",
        flush=True,
    )
    results = []
    started = time.perf_counter()
    try:
        results.append(
            run_tiktok_sync(
                args,
                redis_server.url,
                emulator,
                args.qps,
                "tiktok-sync shared limiter, rate Q",
                "ours",
            )
        )
        time.sleep(1.5)  # let the emulator's one-second window empty between setups
        results.append(run_baseline(args, redis_server.url, emulator))
        if args.overrate:
            time.sleep(1.5)
            results.append(
                run_tiktok_sync(
                    args,
                    redis_server.url,
                    emulator,
                    args.overrate * args.qps,
                    f"tiktok-sync, rate {args.overrate:g}xQ (cap unknown)",
                    "over",
                )
            )
    finally:
        emulator.stop()
        redis_server.stop()
    print(
        f"{'setup':42} {'achieved/Q':>10} {'40100 share':>11} {'calls':>6} {'40100s':>6} "
        f"{'other':>5} {'rate cuts':>9} {'span':>7}"
    )
    for r in results:
        cuts = "-" if r.cuts is None else str(r.cuts)
        print(
            f"{r.label:42} {r.achieved:10.3f} {r.throttled_share:11.2%} {r.calls:6d} "
            f"{r.throttled:6d} {r.other:5d} {cuts:>9} {r.span:6.1f}s"
        )
    ours = results[0]
    verdict = "met" if ours.achieved >= 0.9 and ours.throttled_share < 0.01 else "NOT met"
    print(
        f"targets for the shared limiter (achieved/Q >= 0.9, 40100 share < 1%): {verdict}; "
        f"wall time {time.perf_counter() - started:.0f}s; worker logs in {args.logs}"
    )
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
