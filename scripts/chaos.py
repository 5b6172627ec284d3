"""Chaos run: sync a big audience through real Celery workers while SIGKILLing them (the pool
children, or the whole worker and then a fresh one, as a supervisor would) and crashing Redis.

    python -m scripts.chaos [--rounds 10] [--redis-crashes 2] [--size 200000] [--seed 1]
                            [--workdir DIR]

Everything runs here: a private `redis-server` with append-only persistence (appendfsync
everysec; crashed with SIGKILL, which loses no acknowledged write: Redis writes the AOF before
it replies, and only a host crash loses the unsynced second), the TikTok emulator
in-process at zero latency, one prefork worker for both queues, and `celery beat` running the
reconciler every RECONCILE_INTERVAL_SECONDS. Round 0 syncs the whole audience; every later round
syncs a changed snapshot (5% of the members dropped, the previous round's dropped ones back, 1%
consent withdrawn). One kill per round, at a random moment: a random delay after enqueueing, or
a random instant inside a chosen phase. A round passes when its job ends `succeeded`, the
emulator holds exactly the expected set (computed independently of the pipeline), the ledger
equals what the emulator holds, and no worker process exited by itself (a worker must outlive a
Redis crash; one that does not is started again, as a supervisor would, and the round fails).
The table is printed round by round.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from scripts.gen_members import generate
from tests.harness import (
    RedisServer,
    WorkerProcess,
    base_env,
    beat_args,
    expected_pairs,
    held_pairs,
)

TOKEN = "chaos-token-5e1f0c9a77b3"
ADVERTISER = "7009990001"
DEST, AUDIENCE = "chaos", "aud-chaos"

# Short deadlines, so that a killed worker's job is finished within seconds, not the transport's
# hour. VISIBILITY_TIMEOUT is short too: the dead worker's unacked messages come back during the
# run, as duplicates of what the reconciler already re-drove.
CHAOS_SETTINGS: dict[str, Any] = {
    "stuck_job_seconds": 10,
    "reconcile_interval_seconds": 2,
    "lock_lease_seconds": 8,
    "lock_wait_seconds": 1,
    "visibility_timeout": 60,
    "task_time_limit": 50,
    "task_soft_time_limit": 45,
    "tiktok_batch_size": 1000,
    "rate_limit_per_second": 5000,
    "rate_limit_burst": 50,
    "stage_parts": 4,
    "state_shards": 16,
}
KILLS = ("children", "worker")
TRIGGERS = ("staging", "sending", "delay")


@dataclass
class Round:
    number: int
    kill: str  # children | worker | redis
    trigger: str  # the phase waited for before the kill, or "delay" (random seconds)
    phase_at_kill: str = "-"
    killed_after: float = 0.0
    adds: int = 0
    removes: int = 0
    status: str = "-"
    redrives: int = 0
    seconds: float = 0.0
    tiktok_ok: bool = False
    ledger_ok: bool = False
    worker_exits: list[str] = field(default_factory=list)  # exits we did not cause
    note: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.status == "succeeded"
            and self.tiktok_ok
            and self.ledger_ok
            and not self.worker_exits
        )


def plan(rounds: int, redis_crashes: int, seed: int) -> list[tuple[str, str]]:
    """(kill, trigger) per round: children and whole-worker kills alternate in a shuffled order;
    Redis crashes (one while staging, one while sending, ...) are spread among them."""
    rng = random.Random(seed)
    kills = [KILLS[i % 2] for i in range(rounds)]
    triggers = [TRIGGERS[i % len(TRIGGERS)] for i in range(rounds)]
    rng.shuffle(kills)
    rng.shuffle(triggers)
    items = list(zip(kills, triggers, strict=True))
    for i in range(redis_crashes):
        items.insert(min(len(items), 2 + 4 * i), ("redis", ("staging", "sending")[i % 2]))
    if items:
        items[0] = (items[0][0], "sending")  # round 0 sends the whole audience: kill it there
    return items


def runtime_for(env: dict[str, str]) -> Any:
    from config.settings import Settings, load_settings
    from worker.runtime import Runtime

    fields = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    return Runtime.build(load_settings(**fields))


class Beat(WorkerProcess):
    """`celery -A worker.app beat`: the reconciler's clock (a fresh schedule file each start)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        schedule = workdir / f"beat-schedule-{uuid.uuid4().hex[:8]}"
        super().__init__(env, log_path=workdir / "beat.log", args=beat_args(schedule))


# -- the expected set: an independent reference -------------------------------------------------
def _pairs_of(rows: list[tuple[str, dict[str, list[str]], bool]]) -> dict[str, list[Any]]:
    from worker.sources import Member

    return {uid: sorted(expected_pairs([Member(0, uid, ids, ok)], "US")) for uid, ids, ok in rows}


def member_pairs(path: Path) -> dict[str, list[tuple[str, str]]]:
    """user_id -> the (schema, hash) pairs that member contributes (none without consent)."""
    from worker.sources import Member, open_source

    with open_source(str(path)) as source:
        rows = [
            (r.user_id, r.identifiers, r.consent)
            for r in source
            if isinstance(r, Member) and r.user_id
        ]
    return _pairs_of(rows)


def raw_consent(path: Path) -> dict[str, str]:
    """user_id -> the raw consent cell, for the rows with the header's column count."""
    out = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        width, at = len(header), header.index("consent")
        for row in reader:
            if len(row) == width:
                out[row[0]] = row[at]
    return out


class Oracle:
    """A changed snapshot's expected set: the base members' pairs, minus the members dropped
    (absent) or withdrawn (consent cell changed). The base pairs are computed in a background
    process while round 0 runs."""

    def __init__(self, base: Path) -> None:
        self.consent = raw_consent(base)
        self._pool = ProcessPoolExecutor(1)
        self._future = self._pool.submit(member_pairs, base)
        self._pairs: dict[str, list[tuple[str, str]]] | None = None

    def expected(self, snapshot: Path) -> set[tuple[str, str]]:
        if self._pairs is None:
            self._pairs = self._future.result()
            self._pool.shutdown()
        out: set[tuple[str, str]] = set()
        for uid, cell in raw_consent(snapshot).items():
            if self.consent.get(uid) == cell:
                out.update(self._pairs.get(uid, ()))
        return out

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# -- the rig ------------------------------------------------------------------------------------
class Rig:
    """Redis (append-only), the emulator, one prefork worker and beat; each restartable."""

    def __init__(self, workdir: Path, concurrency: int = 3) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.redis = RedisServer(appendonly=True)
        self.emulator: Any = None
        self.worker: WorkerProcess | None = None
        self.beat: Beat | None = None
        self.generation = 0
        self.beat_restarts = 0
        self.env: dict[str, str] = {}
        self.rt: Any = None
        self.app: Any = None
        self.tiktok_id = ""

    def start(self) -> Rig:
        from celery import Celery

        from config.celery import celery_config
        from scripts.tiktok_emulator import Emulator

        self.redis.start()
        self.emulator = Emulator(app_id="test-app", app_secret="test-secret").start()
        self.emulator.add_token(TOKEN, [ADVERTISER])
        # Killed workers reset their connections: expected here, not worth a traceback each.
        self.emulator._server.handle_error = lambda *_: None
        base = self.redis.url.rsplit("/", 1)[0]
        self.env = base_env(
            f"{base}/0", self.emulator.base_url, broker_url=f"{base}/1", **CHAOS_SETTINGS
        )
        self.rt = runtime_for(self.env)
        self.app = Celery("chaos")
        self.app.config_from_object(celery_config(self.rt.settings))
        self.start_worker()
        self.beat = Beat(self.env, self.workdir).start()
        return self

    def start_worker(self) -> None:
        self.generation += 1
        log_path = self.workdir / f"worker{self.generation}.log"
        self.worker = WorkerProcess(
            self.env,
            pool="prefork",
            concurrency=self.concurrency,
            name=f"chaos{self.generation}",
            log_path=log_path,
        ).start()

    def supervise(self) -> str | None:
        """What a supervisor does: a dead beat or worker is started again. A worker that exited
        by itself is returned (its exit code and log), for the round to fail on: workers must
        outlive Redis crashes and their own children's deaths."""
        if (
            self.beat is not None
            and self.beat.proc is not None
            and self.beat.proc.poll() is not None
        ):
            self.beat_restarts += 1
            self.beat = Beat(self.env, self.workdir).start()
        worker = self.worker
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
            exited = f"worker exited by itself (code {worker.proc.returncode}, {worker.log_path})"
            self.start_worker()
            return exited
        return None

    def stop(self) -> None:
        for proc in (self.worker, self.beat):
            if proc is not None:
                proc.stop()
        if self.emulator is not None:
            self.emulator.stop()
        self.redis.stop()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def link(self) -> None:
        from worker import api

        api.add_destination(
            "Chaos", ADVERTISER, TOKEN, destination_id=DEST, phone_region="US", rt=self.rt
        )
        self.tiktok_id = api.link_audience(
            DEST, AUDIENCE, name="chaos", rt=self.rt
        ).tiktok_audience_id

    def kill(self, kind: str) -> None:
        assert self.worker is not None
        if kind == "children":
            for pid in self.worker.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif kind == "worker":
            self.worker.kill()  # the main process and its pool children, at once
            self.start_worker()  # a supervisor starts a fresh one
        elif kind == "redis":
            assert self.redis.proc is not None
            self.redis.proc.kill()  # a crash, not a shutdown: no SAVE, no clean AOF close
            self.redis.proc.wait(10)
            time.sleep(1.0)
            self.redis.start()

    def job(self, job_id: str) -> Any:
        for _ in range(150):  # Redis may be restarting
            try:
                return self.rt.store.job(job_id)
            except redis.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("redis unreachable")

    def run_round(
        self,
        rnd: Round,
        snapshot: Path,
        expected: Callable[[], set[Any]],
        delay: float,
        timeout: float,
    ) -> Round:
        from worker import api
        from worker.models import AT_REST
        from worker.pipeline import ledger_hashes

        started = time.monotonic()
        job_id = api.enqueue_refresh(
            DEST, AUDIENCE, members=str(snapshot), rt=self.rt, app=self.app
        )
        rng = random.Random(f"{rnd.number}:{delay}")
        killed = False
        job = None
        while time.monotonic() - started < timeout:
            exited = self.supervise()
            if exited:
                rnd.worker_exits.append(exited)
            job = self.job(job_id)
            if job is not None and job.status in AT_REST:
                break
            if not killed and job is not None:
                elapsed = time.monotonic() - started
                due = elapsed >= delay if rnd.trigger == "delay" else job.phase == rnd.trigger
                if due:
                    if rnd.trigger != "delay":
                        time.sleep(rng.uniform(0.0, 0.8))  # somewhere inside the phase
                        job = self.job(job_id) or job
                    rnd.phase_at_kill = job.phase
                    if job.phase == "sending":
                        done, total = job.count("batches_finished"), job.count("batches_total")
                        rnd.phase_at_kill += f" {done}/{total}"
                    rnd.killed_after = time.monotonic() - started
                    self.kill(rnd.kill)
                    killed = True
            time.sleep(0.05)
        rnd.seconds = time.monotonic() - started
        if not killed:
            rnd.phase_at_kill = "(done before)"
        job = self.job(job_id)
        rnd.status = str(job.status) if job and job.status in AT_REST else "timeout"
        if job is not None:
            rnd.note = job.message[:80]
            rnd.adds = sum(v for k, v in job.counts.items() if k.startswith("adds:"))
            rnd.removes = sum(v for k, v in job.counts.items() if k.startswith("removes:"))
            rnd.redrives = job.count("redrives")
        want = expected()
        held = held_pairs(self.emulator.members(self.tiktok_id))
        rnd.tiktok_ok = held == want
        if not rnd.tiktok_ok:
            rnd.note = f"tiktok: {len(want - held)} missing, {len(held - want)} extra; {rnd.note}"
        rnd.ledger_ok = held_pairs(ledger_hashes(self.rt, DEST, AUDIENCE)) == held
        if rnd.worker_exits:
            rnd.note = f"{'; '.join(rnd.worker_exits)}; {rnd.note}"
        return rnd


HEADER = (
    "round",
    "kill",
    "trigger",
    "phase at kill",
    "kill s",
    "adds",
    "removes",
    "status",
    "redrives",
    "total s",
    "tiktok",
    "ledger",
)
WIDTHS = (5, 8, 7, 15, 6, 6, 7, 9, 8, 7, 6, 6)


def table_row(cells: tuple[str, ...]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, WIDTHS, strict=True)).rstrip()


def round_row(r: Round) -> str:
    cells = (
        str(r.number),
        r.kill,
        r.trigger,
        r.phase_at_kill,
        f"{r.killed_after:.1f}",
        str(r.adds),
        str(r.removes),
        r.status,
        str(r.redrives),
        f"{r.seconds:.1f}",
        "exact" if r.tiktok_ok else "WRONG",
        "exact" if r.ledger_ok else "WRONG",
    )
    return table_row(cells) + ("" if r.ok else f"  <- {r.note}")


def run(
    rounds: int = 10,
    redis_crashes: int = 2,
    size: int = 200_000,
    seed: int = 1,
    workdir: Path | None = None,
    round_timeout: float = 240.0,
    out: Callable[[str], None] = print,
) -> Iterator[Round]:
    """Run the scenario; yields every finished round (the caller decides what a failure means)."""
    work = Path(tempfile.mkdtemp(prefix="ts-chaos-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = work / "base.csv"
    generate(base, size, seed=seed, invalid_share=0.01)
    oracle = Oracle(base)
    rig = Rig(work).start()
    quickest = 5.0  # seconds of the quickest changed-snapshot round (staging alone takes longer)
    try:
        rig.link()
        out(f"# {size} members, seed {seed}, work dir {work}")
        out(table_row(HEADER))
        for number, (kill, trigger) in enumerate(plan(rounds, redis_crashes, seed)):
            snapshot = base if number == 0 else work / f"round{number}.csv"
            if number:
                generate(
                    snapshot,
                    size,
                    seed=seed,
                    invalid_share=0.01,
                    drop_share=0.05,
                    withdraw_share=0.01,
                    drop_seed=1000 + number,
                )
            expected = lambda s=snapshot: oracle.expected(s)  # noqa: E731
            # "delay" kills land before the job ends: within 70% of the quickest round so far.
            delay = rng.uniform(0.3, max(0.6, 0.7 * quickest))
            rnd = rig.run_round(
                Round(number, kill, trigger), snapshot, expected, delay, round_timeout
            )
            if number:
                quickest = min(quickest, rnd.seconds)
            out(round_row(rnd))
            yield rnd
            if number:
                snapshot.unlink(missing_ok=True)
        if rig.beat_restarts:
            out(f"# beat died and was restarted {rig.beat_restarts} time(s)")
    finally:
        oracle.close()
        rig.stop()
        if workdir is None and os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.chaos", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--rounds", type=int, default=10, help="worker-kill rounds (children / whole worker)"
    )
    p.add_argument(
        "--redis-crashes", type=int, default=2, help="extra rounds that crash redis-server"
    )
    p.add_argument("--size", type=int, default=200_000, help="members in the audience")
    p.add_argument("--seed", type=int, default=1, help="data, kill order and kill moments")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and snapshots here")
    a = p.parse_args(argv)
    # SIGTERM (timeout, CI cancel) still stops what the run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from config.logging import configure_logging

    configure_logging("console", "WARNING")  # the table, not this process's job_enqueued lines
    t0 = time.monotonic()
    results = list(run(a.rounds, a.redis_crashes, a.size, a.seed, a.workdir))
    failed = [r.number for r in results if not r.ok]
    verdict = "every round exact" if not failed else f"FAILED rounds {failed}"
    print(f"# {len(results)} rounds in {time.monotonic() - t0:.0f}s: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
