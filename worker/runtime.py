"""Per-process runtime: settings, Redis store, TikTok client and rate limiter, built once."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis

from config.settings import Settings, SettingsError, get_settings
from worker.ratelimit import RateLimiter
from worker.store import Store
from worker.tiktok import TikTokClient


@dataclass
class Runtime:
    settings: Settings
    store: Store
    client: TikTokClient
    limiter: RateLimiter

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        store = Store.from_settings(settings)
        check_shards(store, settings)
        return cls(
            settings=settings,
            store=store,
            client=TikTokClient.from_settings(settings),
            limiter=RateLimiter(
                store.r,
                burst=settings.rate_limit_burst,
                max_wait=settings.rate_limit_max_sleep_seconds,
                min_rate=settings.rate_limit_min_per_second,
                recovery_per_second=settings.rate_limit_recovery_per_second,
            ),
        )


def check_shards(store: Store, settings: Settings) -> None:
    """Ledgers are sharded by STATE_SHARDS: a different count would put ids under other keys."""
    key = f"{settings.key_prefix}:meta:state_shards"
    try:
        store.r.set(key, settings.state_shards, nx=True)
        current = int(store.r.get(key) or settings.state_shards)
    except redis.RedisError:
        return  # Redis is down: the first real command reports it
    if current != settings.state_shards:
        raise SettingsError(
            f"invalid configuration:\n  STATE_SHARDS: is {settings.state_shards} but the ledgers in "
            f"Redis are sharded {current} ways; set STATE_SHARDS={current}"
        )


@functools.cache
def runtime() -> Runtime:
    return Runtime.build(get_settings())
