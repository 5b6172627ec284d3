"""The demo: a real Redis, real Celery workers and the TikTok emulator over HTTP; a generated
100,000-member audience synced, then a changed snapshot synced; both jobs' results shown.

Run it with `bash scripts/demo.sh` (which installs the project first). It stops what it started.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scripts.gen_members import generate
from tests.harness import (
    RedisServer,
    WorkerProcess,
    base_env,
    file_pairs,
    free_port,
    held_pairs,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
TOKEN = "demo-token-9f3a1c77d2"
ADVERTISER = "7001234567"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def cli(env: dict[str, str], *args: str) -> str:
    print("$ tiktok-sync " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
    )
    print(done.stdout, end="", flush=True)
    if done.returncode not in (0,):
        raise SystemExit(f"command failed ({done.returncode}): tiktok-sync {' '.join(args)}")
    return done.stdout.strip()


def admin(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body else "GET",
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def main() -> int:
    WORK.mkdir(exist_ok=True)
    started: list = []
    try:
        say("Starting Redis (a private redis-server for the demo)")
        redis = RedisServer().start()
        started.append(redis)
        print(f"redis at {redis.url}")

        say("Starting the TikTok emulator over HTTP")
        port = free_port()
        emu = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.tiktok_emulator",
                "--port",
                str(port),
                "--app-id",
                "demo-app",
                "--app-secret",
                "demo-secret",
                "--max-batch",
                "1000",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(emu)
        root = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(root), timeout=20, what="emulator")
        admin(root, "/_admin/tokens", {"token": TOKEN, "advertiser_ids": [ADVERTISER]})
        print(
            f"emulator at {root}/open_api/v1.3 (advertiser {ADVERTISER} granted to the demo token)"
        )

        env = base_env(
            redis.url,
            f"{root}/open_api/v1.3",
            tiktok_app_id="demo-app",
            tiktok_app_secret="demo-secret",
            broker_url=redis.url.rsplit("/", 1)[0] + "/1",
            rate_limit_per_second=200,
            tiktok_read_timeout=10,
            log_format="console",
            log_level="WARNING",
        )
        say("Starting workers: `refresh` (prefork, hashing) and `tiktok` (threads, HTTP)")
        for queues, pool, conc in (("refresh", "prefork", 2), ("tiktok", "threads", 16)):
            w = WorkerProcess(
                env,
                queues=queues,
                pool=pool,
                concurrency=conc,
                name=f"demo-{queues}",
                log_path=WORK / f"worker-{queues}.log",
            ).start()
            started.append(w)
        print(f"worker logs in {WORK}/worker-*.log")

        say("Generating the audience: 100,000 members, mixed and partly invalid identifiers")
        first, second = WORK / "members-day1.csv.gz", WORK / "members-day2.csv.gz"
        t = time.perf_counter()
        generate(first, 100_000, seed=11, gzip=True, invalid_share=0.05)
        generate(
            second,
            105_000,
            seed=11,
            gzip=True,
            invalid_share=0.05,
            drop_share=0.08,
            withdraw_share=0.03,
        )
        print(
            f"wrote {first.name} and {second.name} (members added, removed, consent withdrawn) "
            f"in {time.perf_counter() - t:.1f}s"
        )

        say("Creating the private destination and linking the audience")
        dest = cli(
            env,
            "destination",
            "add",
            "--name",
            "Acme Shoes",
            "--advertiser-id",
            ADVERTISER,
            "--access-token",
            TOKEN,
            "--phone-region",
            "US",
            "--verify",
            "--id",
            "acme",
        )
        tiktok_audience = cli(
            env, "audience", "link", "vip-buyers", "--destination", dest, "--name", "VIP buyers"
        )
        cli(env, "destination", "list")

        for label, path in (("Day 1: first sync", first), ("Day 2: refresh with changes", second)):
            say(label)
            t = time.perf_counter()
            job = cli(
                env,
                "refresh",
                "vip-buyers",
                "--destination",
                dest,
                "--members",
                str(path),
                "--wait",
            )
            took = time.perf_counter() - t
            expected = file_pairs(path, "US")
            held = held_pairs(admin(root, f"/_admin/audiences/{tiktok_audience}/members"))
            verdict = "exactly the expected set" if held == expected else "NOT the expected set"
            print(
                f"-> {took:.1f}s; the emulator holds {len(held)} ids for audience {tiktok_audience}: {verdict}"
            )
            if held != expected:
                return 1
            del job
        say("History")
        cli(env, "jobs", "--audience", "vip-buyers", "--destination", dest)
        cli(env, "audience", "list")
        return 0
    finally:
        say("Stopping what the demo started")
        for thing in reversed(started):
            if isinstance(thing, subprocess.Popen):
                thing.terminate()
                thing.wait(10)
            else:
                thing.stop()


def _up(root: str) -> bool:
    try:
        admin(root, "/_admin/stats")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
