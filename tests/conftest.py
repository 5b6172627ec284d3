"""Shared fixtures: a test-owned Redis, the TikTok emulator over HTTP, a real Celery worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import celery_config
from config.settings import Settings, load_settings
from tests.harness import RedisServer, WorkerProcess, base_env
from worker.runtime import Runtime

TOKEN = "tok-good-0123456789"
ADVERTISER = "7000000001"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    from scripts.tiktok_emulator import Emulator

    emu = Emulator(app_id="test-app", app_secret="test-secret").start()
    yield emu
    emu.stop()


def _urls(redis_server: RedisServer) -> tuple[str, str]:
    return redis_server.url, redis_server.url.rsplit("/", 1)[0] + "/1"


@pytest.fixture(scope="session")
def worker_env(redis_server: RedisServer, emulator: Any) -> dict[str, str]:
    state_url, broker_url = _urls(redis_server)
    return base_env(state_url, emulator.base_url, broker_url=broker_url, tiktok_batch_size=300)


def make_settings(env: dict[str, str]) -> Settings:
    keys = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    return load_settings(**keys)


@pytest.fixture(scope="session")
def settings(worker_env: dict[str, str]) -> Settings:
    return make_settings(worker_env)


@pytest.fixture(scope="session")
def celery_app(settings: Settings) -> Celery:
    app = Celery("tiktok_sync_tests")
    app.config_from_object(celery_config(settings))
    return app


@pytest.fixture(scope="session")
def worker(worker_env: dict[str, str]) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(worker_env, concurrency=8).start()
    yield proc
    proc.stop()


@pytest.fixture
def rt(settings: Settings, redis_server: RedisServer, emulator: Any) -> Iterator[Runtime]:
    """A clean slate: empty state DB (the broker DB is left alone), a reset emulator."""
    redis.Redis.from_url(settings.redis_url).flushdb()
    emulator.reset()
    emulator.add_token(TOKEN, [ADVERTISER])
    yield Runtime.build(settings)
