"""Per-process runtime: settings, Redis store, TikTok client and rate limiter, built once."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from config.settings import Settings, get_settings
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


@functools.cache
def runtime() -> Runtime:
    return Runtime.build(get_settings())
