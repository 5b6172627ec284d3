"""Test harness: a test-owned redis-server, the TikTok emulator, and real Celery worker processes.

Nothing here touches the machine's shared Redis: each session starts its own server on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ts-redis-")
        self.appendonly = appendonly
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class WorkerProcess:
    """`celery -A worker.app worker` as a subprocess, with the given environment."""

    def __init__(
        self,
        env: dict[str, str],
        queues: str = "refresh,tiktok",
        pool: str = "threads",
        concurrency: int = 8,
        name: str | None = None,
        log_path: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.env = env
        # `args` runs another command of the stack (beat, Flower, the exporter) the same way.
        self.args = args or [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-Q",
            queues,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            f"{name or 'w' + str(free_port())}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="ts-worker-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def children(self) -> list[int]:
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


CELERY = [sys.executable, "-m", "celery", "-A", "worker.app"]


def beat_args(schedule: Path) -> list[str]:
    """`celery -A worker.app beat` with its own schedule file (and no pid file)."""
    return [*CELERY, "beat", "-l", "INFO", "-s", str(schedule), "--pidfile="]


def beat_process(
    env: dict[str, str], schedule: Path, log_path: Path | None = None
) -> WorkerProcess:
    return WorkerProcess(env, log_path=log_path, args=beat_args(schedule))


def base_env(redis_url: str, tiktok_url: str, **extra: Any) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TIKTOK_", "REDIS_", "BROKER_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "TIKTOK_API_BASE_URL": tiktok_url,
            "TIKTOK_APP_ID": "test-app",
            "TIKTOK_APP_SECRET": "test-secret",
            "TOKEN_ENCRYPTION_KEY": "X2i7q0lQ8s0yH0pLq4Cj8wVbD3r1dQwzV3WlYx1m5pQ=",
            "TIKTOK_AUDIENCE_WARMUP_SECONDS": "0",
            "TIKTOK_BACKOFF_BASE": "0.05",
            "TIKTOK_BACKOFF_MAX": "0.5",
            "TIKTOK_READ_TIMEOUT": "2",
            "RATE_LIMIT_PER_SECOND": "1000",
            "LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


def expected_pairs(
    rows: Iterable[Any], region: str | None = None, identifiers: Iterable[str] | None = None
) -> set[tuple[str, str]]:
    """The (id_schema, hex hash) pairs a snapshot should leave on TikTok: an independent reference."""
    from worker.identifiers import (
        COLUMNS,
        ID_SCHEMA,
        RejectedIdentifier,
        hash_normalized,
        normalize,
    )
    from worker.sources import Member

    allowed = set(identifiers) if identifiers else None
    out: set[tuple[str, str]] = set()
    for row in rows:
        if not isinstance(row, Member) or not row.consent:
            continue
        for column, values in row.identifiers.items():
            id_type, prehashed = COLUMNS[column]
            if allowed is not None and id_type not in allowed:
                continue
            for value in values:
                try:
                    norm = normalize(id_type, value, prehashed=prehashed, region=region)
                except RejectedIdentifier:
                    continue
                digest = norm if prehashed else hash_normalized(norm).hex()
                out.add((ID_SCHEMA[id_type], digest))
    return out


def file_pairs(path: str | Path, region: str | None = None) -> set[tuple[str, str]]:
    from worker.sources import open_source

    with open_source(str(path)) as source:
        return expected_pairs(source, region)


def held_pairs(members: dict[str, set[str]] | dict[str, list[str]]) -> set[tuple[str, str]]:
    return {(schema, h) for schema, hashes in members.items() for h in hashes}


def wait_until(
    predicate: Any, timeout: float = 60, poll: float = 0.2, what: str = "condition"
) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
