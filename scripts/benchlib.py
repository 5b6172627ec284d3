"""Shared helpers of the `scripts/bench_*.py` benchmarks: start a whole stack, run refreshes,
sample worker memory, print the result table.

A stack is what production runs, on loopback: a private `redis-server` (state on db 0, broker
on db 1), the TikTok emulator as its own process (its CPU shows up as a separate process, like
TikTok's), a `refresh` worker (prefork) and a `tiktok` worker (threads), as in the Procfile.
Big generated files and worker logs go to `.bench/` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery

from config.celery import celery_config
from config.settings import Settings, load_settings
from scripts.gen_members import generate
from tests.harness import RedisServer, WorkerProcess, base_env, free_port, wait_until
from worker import api
from worker.identifiers import ID_SCHEMA
from worker.models import JobRecord, JobStatus
from worker.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
TOKEN = "bench-token-5d41402abc4b2a76"
ADVERTISER = "7009000001"
DEST = "bench"
REGION = "US"
SCHEMAS = tuple(ID_SCHEMA.values())
# `python -m scripts.tiktok_emulator` with higher GC thresholds. The emulator keeps every id in
# Python sets, and CPython's default thresholds run full collections that walk those sets every
# few requests: with 2M ids held, 4 -> 13 ms of emulator CPU per request, growing with what it
# holds (a 10M run would mostly measure that). Benchmarks measure our side of the wire.
EMULATOR_BOOT = (
    "import gc, runpy; gc.set_threshold(100_000, 50, 1000); "
    "runpy.run_module('scripts.tiktok_emulator', run_name='__main__', alter_sys=True)"
)


# -- output --------------------------------------------------------------------------------------
def banner(title: str, argv: list[str] | None = None) -> None:
    """Title, the exact command, and the machine's state (load matters on a shared 2-core box)."""
    args = sys.argv[1:] if argv is None else argv
    print(f"== {title}")
    print(f"command: .venv/bin/python -m {module_name()} {shlex.join(args)}".rstrip())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{redis_version()}, load average at start {load}"
    )
    sys.stdout.flush()


def module_name() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    version = next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), "?")
    return f"redis-server {version}"


def say(text: str) -> None:
    print(f"-- {text}", flush=True)


@dataclass
class Figure:
    """One row of the result table; `target` None is informational (no verdict)."""

    name: str
    value: float
    unit: str = ""
    target: float | None = None
    at_least: bool = True  # target is a floor (else a ceiling)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        ok = self.value >= self.target if self.at_least else self.value <= self.target
        return "PASS" if ok else "MISS"


def table(figures: Iterable[Figure]) -> bool:
    """Print figure | value | target | verdict; True when every target is met."""
    rows = list(figures)
    width = max(len(f.name) for f in rows)
    print(f"\n{'figure':<{width}}  {'value':>14}  {'target':>12}  verdict")
    print(f"{'-' * width}  {'-' * 14}  {'-' * 12}  -------")
    for f in rows:
        value = f"{f.value:,.2f}" if abs(f.value) < 100 else f"{f.value:,.0f}"
        target = "" if f.target is None else ("≥ " if f.at_least else "≤ ") + f"{f.target:g}"
        print(
            f"{f.name:<{width}}  {value + (' ' + f.unit if f.unit else ''):>14}  "
            f"{target:>12}  {f.verdict}"
        )
    sys.stdout.flush()
    return all(f.verdict != "MISS" for f in rows)


def add_stack_args(parser: argparse.ArgumentParser) -> None:
    """The worker flags every benchmark takes (defaults: StackConfig's)."""
    parser.add_argument("--refresh-concurrency", type=int, default=2, help="refresh processes")
    parser.add_argument(
        "--tiktok-concurrency", type=int, default=16, help="threads per tiktok worker"
    )
    parser.add_argument("--tiktok-processes", type=int, default=1, help="tiktok workers")


def stack_config(args: argparse.Namespace, **options: Any) -> StackConfig:
    return StackConfig(
        refresh_concurrency=args.refresh_concurrency,
        tiktok_concurrency=args.tiktok_concurrency,
        tiktok_processes=args.tiktok_processes,
        **options,
    )


def workers_line(config: StackConfig) -> str:
    tiktok = f"{config.tiktok_processes} x " if config.tiktok_processes > 1 else ""
    return (
        f"workers: refresh prefork x {config.refresh_concurrency}, "
        f"tiktok {tiktok}threads x {config.tiktok_concurrency}; batch {config.batch_size}"
    )


# -- inputs ---------------------------------------------------------------------------------------
def snapshot(name: str, count: int, **options: Any) -> tuple[Path, float]:
    """A generated member file in .bench/ (reused when the same one exists); (path, seconds)."""
    BENCH_DIR.mkdir(exist_ok=True)
    path = BENCH_DIR / name
    stamp = path.with_suffix(path.suffix + ".args")
    wanted = json.dumps({"count": count, **options}, sort_keys=True)
    if path.exists() and stamp.exists() and stamp.read_text() == wanted:
        return path, 0.0
    t = time.perf_counter()
    generate(path, count, **options)
    stamp.write_text(wanted)
    return path, time.perf_counter() - t


def ids_for_members(members: int) -> int:
    """Rough valid identifiers of a gen_members snapshot (≈ 2.46 per member, default mix)."""
    return round(members * 2.46)


# -- the stack ------------------------------------------------------------------------------------
@dataclass
class StackConfig:
    refresh_concurrency: int = 2  # prefork processes: one per core
    # Threads per tiktok worker. The Procfile's 32 cost ~30% more CPU per batch than 16 on this
    # 2-core box (GIL hand-offs), and 16 keep enough calls in flight even at 100 ms per call.
    tiktok_concurrency: int = 16
    tiktok_processes: int = 1  # tiktok workers (scaling out, as ops would)
    batch_size: int = 1000
    latency_ms: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # further settings (STATE_SHARDS=...)


@dataclass
class Run:
    job: JobRecord
    seconds: float

    @property
    def synced(self) -> int:
        """Ids added by this job (sent and acknowledged)."""
        return sum(self.job.count(f"sent_add:{s}") for s in SCHEMAS)

    @property
    def changed(self) -> int:
        return sum(self.job.count(f"{g}:{s}") for g in ("adds", "removes") for s in SCHEMAS)


class Stack:
    """Redis + emulator process + `refresh` and `tiktok` workers; a context manager."""

    def __init__(self, config: StackConfig | None = None, label: str = "bench") -> None:
        self.config = config or StackConfig()
        self.label = label
        self.redis: RedisServer | None = None
        self.emulator: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self.root = ""
        self.env: dict[str, str] = {}
        self.rt: Runtime | None = None
        self.app: Celery | None = None

    # lifecycle
    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        BENCH_DIR.mkdir(exist_ok=True)
        self.redis = RedisServer().start()
        port = free_port()
        args = [
            sys.executable,
            "-c",
            EMULATOR_BOOT,
            "--port",
            str(port),
            "--app-id",
            "bench-app",
            "--app-secret",
            "bench-secret",
            "--token",
            f"{TOKEN}={ADVERTISER}",
            "--max-batch",
            "10000",
        ]
        self.emulator = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.root = f"http://127.0.0.1:{port}"
        wait_until(self._emulator_up, timeout=30, what="emulator")
        self.set_faults(latency_ms=self.config.latency_ms)
        self.env = self._env()
        settings = load_settings(
            **{k.lower(): v for k, v in self.env.items() if k.lower() in Settings.model_fields}
        )
        self.rt = Runtime.build(settings)
        self.app = Celery("bench")
        self.app.config_from_object(celery_config(settings))
        self.start_workers()
        api.add_destination(
            "Bench", ADVERTISER, TOKEN, destination_id=DEST, phone_region=REGION, rt=self.rt
        )
        return self

    def _env(self) -> dict[str, str]:
        assert self.redis is not None
        c = self.config
        env = base_env(
            self.redis.url,
            f"{self.root}/open_api/v1.3",
            tiktok_app_id="bench-app",
            tiktok_app_secret="bench-secret",
            broker_url=self.redis.url.rsplit("/", 1)[0] + "/1",
            rate_limit_per_second=10_000,
            rate_limit_burst=100,
            tiktok_read_timeout=60,
            tiktok_batch_size=c.batch_size,
            log_format="json",
            log_level="INFO",
        )
        env.update(c.env)
        return env

    def start_workers(self) -> None:
        """One `refresh` worker (prefork) and `tiktok_processes` `tiktok` workers (threads)."""
        c = self.config
        roles = [("refresh", "refresh", "prefork", c.refresh_concurrency)]
        for i in range(c.tiktok_processes):
            name = "tiktok" if i == 0 else f"tiktok-{i + 1}"
            roles.append((name, "tiktok", "threads", c.tiktok_concurrency))
        for name, queue, pool, conc in roles:
            log = BENCH_DIR / f"{self.label}-{name}.log"
            log.unlink(missing_ok=True)
            self.workers[name] = WorkerProcess(
                self.env,
                queues=queue,
                pool=pool,
                concurrency=conc,
                name=f"{self.label}-{name}-{free_port()}",
                log_path=log,
            ).start()
        wait_until(self._workers_ready, timeout=60, poll=0.2, what="workers")

    def _workers_ready(self) -> bool:
        # Celery prints "ready." once it consumes; prefork children exist by then.
        return all("ready" in w.log() for w in self.workers.values())

    def stop_workers(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.workers.clear()

    def restart_workers(self, batch_size: int | None = None) -> None:
        self.stop_workers()
        if batch_size is not None:
            self.config.batch_size = batch_size
            self.env["TIKTOK_BATCH_SIZE"] = str(batch_size)
        self.start_workers()

    def stop(self) -> None:
        self.stop_workers()
        if self.emulator is not None and self.emulator.poll() is None:
            self.emulator.terminate()
            try:
                self.emulator.wait(30)
            except subprocess.TimeoutExpired:
                self.emulator.kill()
        if self.redis is not None:
            self.redis.stop()

    # the emulator
    def admin(self, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.root + path,
            data=data,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read())

    def _emulator_up(self) -> bool:
        try:
            self.admin("/_admin/faults", timeout=2)
            return True
        except OSError:
            return False

    def set_faults(self, **faults: Any) -> None:
        self.admin("/_admin/faults", faults)

    def mapping_calls(self) -> tuple[int, int]:
        """(calls, rows) the emulator has answered so far (log left out: it can be big)."""
        stats = self.admin("/_admin/stats?log_tail=0")
        return stats["mapping_calls"], stats["mapping_rows"]

    def sizes(self, tiktok_id: str) -> dict[str, int]:
        for item in self.admin("/_admin/audiences"):
            if item["audience_id"] == tiktok_id:
                return {k: v for k, v in item["sizes"].items() if v}
        raise LookupError(tiktok_id)

    def held(self, tiktok_id: str) -> dict[str, list[str]]:
        return self.admin(f"/_admin/audiences/{tiktok_id}/members")

    def empty(self, tiktok_id: str) -> None:
        """Empty an emulator audience (its memory is TikTok's, and later runs need not carry it)."""
        self.admin(f"/_admin/audiences/{tiktok_id}/reset", {})

    # refreshes
    def link(self, audience: str) -> str:
        assert self.rt is not None
        return api.link_audience(
            DEST, audience, name=f"bench {audience}", rt=self.rt
        ).tiktok_audience_id

    def refresh(self, audience: str, members: Path, timeout: float = 7200) -> Run:
        assert self.rt is not None
        t = time.perf_counter()
        job_id = api.enqueue_refresh(DEST, audience, members=str(members), rt=self.rt, app=self.app)
        job = api.wait_for(job_id, timeout=timeout, poll=0.05, rt=self.rt)
        seconds = time.perf_counter() - t
        if job.status != JobStatus.SUCCEEDED:
            raise SystemExit(
                f"refresh {job_id} ended {job.status}: {job.message} (logs in {BENCH_DIR})"
            )
        return Run(job, seconds)

    def phases(self, job_id: str, timeout: float = 5) -> dict[str, float]:
        """Seconds per phase of one job, from the workers' JSON log lines: stage, plan, send.

        `job_finished` is logged just after the status is written: wait a little for it."""
        end = time.monotonic() + timeout
        while True:
            found = self._phases(job_id)
            if found or time.monotonic() > end:
                return found
            time.sleep(0.1)

    def _phases(self, job_id: str) -> dict[str, float]:
        seen: dict[str, float] = {}
        for w in self.workers.values():
            for line in w.log().splitlines():
                if not line.startswith("{") or job_id not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                name = event.get("event")
                if name in ("refresh_started", "refresh_staged", "refresh_planned", "job_finished"):
                    stamp = datetime.fromisoformat(
                        event["timestamp"].replace("Z", "+00:00")
                    ).timestamp()
                    seen.setdefault(name, stamp)  # the first of each (parts log several)
        marks = ("refresh_started", "refresh_staged", "refresh_planned", "job_finished")
        if not all(m in seen for m in marks):
            return {}
        return {
            "stage": seen["refresh_staged"] - seen["refresh_started"],
            "diff+plan": seen["refresh_planned"] - seen["refresh_staged"],
            "send": seen["job_finished"] - seen["refresh_planned"],
        }

    # measurements
    def worker_pids(self) -> dict[str, list[int]]:
        """Worker main process and pool children, per queue."""
        out = {}
        for queue, w in self.workers.items():
            assert w.proc is not None
            out[queue] = [w.proc.pid, *w.children()]
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each process of the stack, by role."""
        assert self.redis is not None and self.redis.proc is not None and self.emulator is not None
        out = {"redis-server": cpu_of(self.redis.proc.pid), "emulator": cpu_of(self.emulator.pid)}
        for name, pids in self.worker_pids().items():
            role = f"{name.split('-')[0]} worker"
            out[role] = out.get(role, 0.0) + sum(cpu_of(pid) for pid in pids)
        return out

    def redis_memory(self) -> dict[str, int]:
        assert self.rt is not None
        info = self.rt.store.r.info("memory")
        return {k: int(info[k]) for k in ("used_memory", "used_memory_peak", "used_memory_dataset")}

    def settled_redis_memory(self, timeout: float = 60) -> int:
        """used_memory once lazy frees (UNLINK) are done: two equal readings in a row."""
        end = time.monotonic() + timeout
        last = -1
        while time.monotonic() < end:
            now = self.redis_memory()["used_memory"]
            if now == last and self._lazyfree_pending() == 0:
                return now
            last = now
            time.sleep(0.5)
        return last

    def _lazyfree_pending(self) -> int:
        assert self.rt is not None
        return int(self.rt.store.r.info("memory").get("lazyfree_pending_objects", 0))


def cpu_of(pid: int) -> float:
    """utime + stime of a live process, plus those of its waited-for children, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# -- memory sampling -------------------------------------------------------------------------------
def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set (VmHWM) of a live process, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakRss:
    """Samples VmHWM of every worker process (main + pool children) while a run goes on.

    VmHWM is the kernel's own high-water mark, so sampling only has to see each process once
    before it exits; the sampler also catches pool children that appear later.
    """

    def __init__(self, stack: Stack, interval: float = 0.25) -> None:
        self.stack = stack
        self.interval = interval
        self.peaks: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for name, pids in self.stack.worker_pids().items():
            for i, pid in enumerate(pids):
                hwm = vm_hwm_bytes(pid)
                if hwm is not None:
                    key = (f"{name.split('-')[0]} {'main' if i == 0 else 'child'}", pid)
                    self.peaks[key] = max(self.peaks.get(key, 0), hwm)

    def by_process(self) -> Iterator[tuple[str, int, int]]:
        """(role, pid, peak bytes), largest first."""
        for (role, pid), peak in sorted(self.peaks.items(), key=lambda kv: -kv[1]):
            yield role, pid, peak

    @property
    def max(self) -> int:
        return max(self.peaks.values(), default=0)


def mb(n: float) -> float:
    return n / (1 << 20)
