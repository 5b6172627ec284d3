"""`tiktok-sync doctor`: is the stack healthy? Redis, broker queues, live workers per queue, beat,
TikTok reachability and every destination's token; each check says what is wrong and what to do.

Checks never raise: a check that cannot run (Redis down) is reported as failed or skipped, so one
report always names every problem found.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import redis
from celery import Celery

from config.celery import QUEUES, celery_config
from config.settings import Settings
from worker.metrics import KOMBU_UNACKED, periodic_runs, queue_depths
from worker.models import Destination
from worker.store import Store, redact_uri
from worker.tiktok import AuthFailed, TikTokClient, TikTokError

# Suggested worker commands, per queue (see the Procfile).
START_WORKER = {
    "refresh": "celery -A worker.app worker -Q refresh -P prefork -c 2 -n refresh@%h",
    "tiktok": "celery -A worker.app worker -Q tiktok -P threads -c 32 -n tiktok@%h",
}
TOKEN_CHECKS_IN_PARALLEL = 8


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.level is Level.FAIL]


def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def _ping(name: str, url: str, timeout: float) -> tuple[Check, redis.Redis | None]:
    client = _client(url, timeout)
    shown = redact_uri(url)
    try:
        info = client.info("server")
    except redis.RedisError as error:
        return Check(name, Level.FAIL, f"cannot reach Redis at {shown}: {error}"), None
    return Check(
        name, Level.OK, f"{shown} answers (Redis {info.get('redis_version', '?')})"
    ), client


def check_broker(broker: redis.Redis, url: str) -> Check:
    try:
        depths = queue_depths(broker)
    except redis.RedisError as error:
        return Check("broker", Level.FAIL, f"cannot read the queues at {redact_uri(url)}: {error}")
    waiting = ", ".join(f"{q} {depths[q]} waiting" for q in QUEUES)
    return Check("broker", Level.OK, f"{waiting}, {depths[KOMBU_UNACKED]} unacked")


def check_workers(settings: Settings, timeout: float) -> list[Check]:
    """Live workers per queue, by asking them (Celery remote control: active_queues)."""
    app = Celery("tiktok_sync_doctor", set_as_current=False)
    app.config_from_object(celery_config(settings))
    try:
        with app.connection_for_write() as conn:
            replies = app.control.inspect(timeout=timeout, connection=conn).active_queues() or {}
    except Exception as error:  # kombu raises many kinds: report whichever it is
        return [Check("workers", Level.FAIL, f"cannot ask the workers: {error!r}")]
    finally:
        app.close()
    out = []
    for queue in QUEUES:
        names = sorted(w for w, qs in replies.items() if any(q.get("name") == queue for q in qs))
        if names:
            out.append(
                Check(f"workers:{queue}", Level.OK, f"{len(names)} live: {', '.join(names)}")
            )
        else:
            out.append(
                Check(
                    f"workers:{queue}",
                    Level.FAIL,
                    f"no live worker consumes queue `{queue}`: its jobs wait. Start one: "
                    f"{START_WORKER.get(queue, f'celery -A worker.app worker -Q {queue}')}",
                )
            )
    return out


def check_beat(store: Store, settings: Settings, now: float | None = None) -> Check:
    """Beat runs the reconciler: without it, jobs stuck after a worker crash stay stuck."""
    now = now or time.time()
    last = periodic_runs(store.r, store.keys.prefix).get("tiktok.reconcile")
    limit = max(3 * settings.reconcile_interval_seconds, 180)
    if last is None:
        return Check(
            "beat",
            Level.WARN,
            "the reconciler has never run: is `celery -A worker.app beat` running?",
        )
    age = now - last
    if age > limit:
        return Check(
            "beat",
            Level.WARN,
            f"the reconciler last ran {age:.0f}s ago (every "
            f"{settings.reconcile_interval_seconds:.0f}s expected): is beat running?",
        )
    return Check("beat", Level.OK, f"the reconciler ran {age:.0f}s ago")


def check_tiktok(client: TikTokClient) -> Check:
    """Any TikTok envelope (even 'no token') proves the API answers; no token is sent."""
    try:
        answer = client.call(
            "GET",
            "oauth2/advertiser/get",
            params={"app_id": client.app_id, "secret": client.app_secret},
        )
    except TikTokError as error:
        return Check("tiktok", Level.FAIL, f"cannot reach TikTok at {client.base_url}: {error}")
    if answer.code is None:
        return Check(
            "tiktok",
            Level.FAIL,
            f"{client.base_url} answered HTTP {answer.http_status} "
            "without a TikTok envelope: check TIKTOK_API_BASE_URL and any proxy",
        )
    return Check("tiktok", Level.OK, f"{client.base_url} answers")


def check_destination(store: Store, client: TikTokClient, dest: Destination) -> Check:
    name = f"token:{dest.id}"
    who = f"{dest.name!r}, advertiser {dest.advertiser_id}"
    fix = (
        f"get a new token, then `tiktok-sync destination update-token {dest.id} --access-token ...`"
    )
    try:
        token = store.token(dest.id)
    except Exception as error:  # LookupError (none stored), SecretsError (wrong key)
        return Check(name, Level.FAIL, f"{who}: {error}")
    try:
        advertisers = client.advertisers(token)
    except AuthFailed as error:
        return Check(name, Level.FAIL, f"{who}: TikTok refuses the access token ({error}): {fix}")
    except TikTokError as error:
        return Check(name, Level.FAIL, f"{who}: could not check the token: {error}")
    granted = [str(a.get("advertiser_id")) for a in advertisers]
    if dest.advertiser_id not in granted:
        return Check(
            name,
            Level.FAIL,
            f"{who}: the token does not grant this advertiser "
            f"(it grants: {', '.join(granted) or 'none'}): {fix}",
        )
    if dest.status == "auth_failed":
        return Check(
            name,
            Level.FAIL,
            f"{who}: the token is valid now but the destination is "
            f"stopped ({dest.status_message}): run `tiktok-sync destination update-token "
            f"{dest.id} --access-token ...` to re-activate it, then `tiktok-sync resume` "
            "its auth_failed jobs",
        )
    return Check(name, Level.OK, f"{who}: token valid")


def check_destinations(store: Store, client: TikTokClient) -> list[Check]:
    try:
        dests = store.destinations()
    except redis.RedisError as error:
        return [Check("tokens", Level.FAIL, f"cannot list destinations: {error}")]
    if not dests:
        return [Check("tokens", Level.OK, "no destinations yet")]
    with ThreadPoolExecutor(TOKEN_CHECKS_IN_PARALLEL) as pool:
        return list(pool.map(lambda d: check_destination(store, client, d), dests))


def run(settings: Settings, timeout: float = 2.0) -> Report:
    """Every check, in order; later checks that need Redis are skipped when it is down."""
    checks: list[Check] = []
    redis_check, client = _ping("redis", settings.redis_url, timeout)
    checks.append(redis_check)
    if settings.broker == settings.redis_url:
        broker_check, broker = redis_check, client
    else:
        broker_check, broker = _ping("broker redis", settings.broker, timeout)
        checks.append(broker_check)
    if broker is not None:
        checks.append(check_broker(broker, settings.broker))
        checks.extend(check_workers(settings, timeout))
    else:
        checks.append(Check("workers", Level.SKIP, "the broker is unreachable"))
    tiktok = TikTokClient.from_settings(settings)
    checks.append(check_tiktok(tiktok))
    if client is not None:
        store = Store(client, settings)  # the results store lives on REDIS_URL
        checks.append(_safe("beat", lambda: check_beat(store, settings)))
        checks.extend(_safe_list("tokens", lambda: check_destinations(store, tiktok)))
    else:
        checks.append(Check("tokens", Level.SKIP, "Redis is unreachable"))
    return Report(checks)


def _safe(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as error:
        return Check(name, Level.FAIL, f"check failed: {error!r}")


def _safe_list(name: str, fn: Callable[[], list[Check]]) -> Iterator[Check]:
    try:
        yield from fn()
    except Exception as error:
        yield Check(name, Level.FAIL, f"check failed: {error!r}")


def as_json(report: Report) -> dict[str, Any]:
    return {"ok": report.ok, "checks": [c.as_dict() for c in report.checks]}
