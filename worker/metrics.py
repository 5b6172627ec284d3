"""Prometheus metrics: cumulative counters kept in Redis, exported by one process on scrape.

Workers never serve metrics themselves (prefork, thread and gevent pools on many hosts would each
need their own endpoint). Instead:
- at the start and end of every task (tasks/base.py), `fold_job` adds what changed in the job's
  results-store counts since the last fold (a per-job snapshot) to one Redis hash of totals,
  atomically (Lua), and counts the job once when it comes to rest (status, duration histogram);
- `record_answer` counts every TikTok mapping answer by code (called from worker/delivery.py);
- `tiktok-sync metrics serve` (`RedisCollector`) reads those hashes, the broker's queue lengths and
  the destinations on each scrape. It is stateless: run one or several, restart at will.

Counters only grow: a count that falls (parked batches go back to pending on `resume`) adds nothing
and the next rise counts again. Jobs whose counts change with no task running afterwards (a job
superseded by `resume` from the CLI) are counted when their next task runs, or not at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from config.celery import QUEUES
from config.settings import Settings
from worker.keys import Keys
from worker.models import AT_REST

# Job-record counts that are events worth counting (prefixes). Others (synced_before, staged,
# matched, batches_total...) are states, not events.
COUNTED = (
    "sent_",
    "rejected_id:",
    "rejected_row:",
    "valid:",
    "ignored:",
    "adds:",
    "removes:",
    "rows_read",
    "rows_rejected",
    "members_valid",
    "members_excluded",
    "batches_succeeded",
    "batches_failed",
    "batches_parked",
    "batches_split",
    "retries",
    "rate_limit_waits",
    "rate_limited_answers",
    "rate_limited_ms",
    "warmup_retries",
    "poison_rows",
)
# Job duration (enqueue to rest) histogram buckets, seconds.
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
KOMBU_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue name + sep + priority step
KOMBU_PRIORITY_STEPS = (3, 6, 9)  # step 0 is the plain list
KOMBU_UNACKED = "unacked"

# KEYS: job hash, snapshot hash, totals hash
# ARGV: snapshot ttl, counted prefixes (\n), statuses at rest (\n), buckets (\n)
_FOLD = """
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then return {} end
local rec = {}
for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
local sraw = redis.call('HGETALL', KEYS[2])
local seen = {}
for i = 1, #sraw, 2 do seen[sraw[i]] = sraw[i + 1] end
local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^\\n]+') do table.insert(out, part) end
  return out
end
local prefixes = split(ARGV[2])
local changed = {}
for field, value in pairs(rec) do
  local counted = false
  for _, p in ipairs(prefixes) do
    if string.sub(field, 1, #p) == p then counted = true break end
  end
  local cur = tonumber(value)
  if counted and cur and cur == math.floor(cur) then
    local old = tonumber(seen[field] or '0') or 0
    if cur ~= old then
      if cur > old then redis.call('HINCRBY', KEYS[3], field, cur - old) end
      table.insert(changed, field)
      table.insert(changed, value)
    end
  end
end
local status = rec['status'] or ''
local at_rest = false
for _, s in ipairs(split(ARGV[3])) do
  if s == status then at_rest = true end
end
if at_rest and seen['__status'] ~= status then
  redis.call('HINCRBY', KEYS[3], 'jobs_finished:' .. status, 1)
  local d = (tonumber(rec['finished_at'] or '') or 0) - (tonumber(rec['created_at'] or '') or 0)
  if rec['finished_at'] and rec['finished_at'] ~= '' and d >= 0 then
    redis.call('HINCRBYFLOAT', KEYS[3], 'job_seconds_sum:' .. status, string.format('%.6f', d))
    redis.call('HINCRBY', KEYS[3], 'job_seconds_count:' .. status, 1)
    for _, b in ipairs(split(ARGV[4])) do
      if d <= tonumber(b) then
        redis.call('HINCRBY', KEYS[3], 'job_seconds_bucket:' .. status .. ':' .. b, 1)
      end
    end
  end
  table.insert(changed, '__status')
  table.insert(changed, status)
elseif not at_rest and (seen['__status'] or '') ~= '' then
  -- resumed or approved: its next rest counts again
  table.insert(changed, '__status')
  table.insert(changed, '')
end
if #changed > 0 then redis.call('HSET', KEYS[2], unpack(changed)) end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
return {status, rec['phase'] or '', rec['destination_id'] or '', rec['audience_id'] or '',
        rec['batches_total'] or '0', rec['batches_finished'] or '0',
        rec['batches_succeeded'] or '0', rec['batches_failed'] or '0',
        rec['batches_parked'] or '0', rec['rows_read'] or '0'}
"""

# What `fold_job` returns of the job: text fields, then counts.
PROGRESS_TEXT = ("status", "phase", "destination_id", "audience_id")
PROGRESS_COUNTS = ("total", "done", "succeeded", "failed", "parked", "rows")


class MetricKeys:
    """Redis keys of the metrics, next to the results store's (same prefix)."""

    def __init__(self, prefix: str) -> None:
        self.totals = f"{prefix}:metrics:totals"
        self.answers = f"{prefix}:metrics:answers"
        self.periodic = f"{prefix}:metrics:periodic"
        self._prefix = prefix

    def seen(self, job_id: str) -> str:
        return f"{self._prefix}:metrics:seen:{job_id}"


_scripts: dict[int, Any] = {}


def fold_job(r: redis.Redis, keys: Keys, ttl: int, job_id: str) -> dict[str, Any] | None:
    """Add what changed in the job's counts since the last fold to the totals. Returns the job's
    progress (`PROGRESS_TEXT` + `PROGRESS_COUNTS`), or None for an unknown job."""
    script = _scripts.get(id(r))
    if script is None or script.registered_client is not r:
        script = _scripts[id(r)] = r.register_script(_FOLD)
    mk = MetricKeys(keys.prefix)
    out = script(
        keys=[keys.job(job_id), mk.seen(job_id), mk.totals],
        args=[
            ttl,
            "\n".join(COUNTED),
            "\n".join(sorted(AT_REST)),
            "\n".join(str(b) for b in BUCKETS),
        ],
    )
    if not out:
        return None
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in out]
    n = len(PROGRESS_TEXT)
    progress: dict[str, Any] = dict(zip(PROGRESS_TEXT, values[:n], strict=True))
    for name, value in zip(PROGRESS_COUNTS, values[n:], strict=True):
        progress[name] = int(value) if value.lstrip("-").isdigit() else 0
    return progress


def answer_label(code: int | None, http_status: int | None, answer_class: str) -> str:
    """`<code>|<class>` of one TikTok answer: the body code, else `http_<status>`, else `none`
    (no answer at all: a timeout or a connection error)."""
    if code is not None:
        label = str(code)
    elif http_status:
        label = f"http_{http_status}"
    else:
        label = "none"
    return f"{label}|{answer_class}"


def record_answer(
    store: Any, code: int | None, http_status: int | None, answer_class: str, client: Any = None
) -> None:
    """Count one TikTok mapping answer. Never raises: metrics are best effort. With a pipeline
    as `client` the count goes out with that pipeline's commands."""
    label = answer_label(code, http_status, str(answer_class))
    with contextlib.suppress(redis.RedisError):
        (client or store.r).hincrby(MetricKeys(store.keys.prefix).answers, label, 1)


def mark_periodic(r: redis.Redis, prefix: str, task_name: str) -> None:
    """Remember when a beat task last ran (doctor checks that beat is alive)."""
    r.hset(MetricKeys(prefix).periodic, task_name, f"{time.time():.3f}")


def periodic_runs(r: redis.Redis, prefix: str) -> dict[str, float]:
    raw = r.hgetall(MetricKeys(prefix).periodic)
    return {k.decode(): float(v) for k, v in raw.items()}


# -- the exporter -------------------------------------------------------------------------------
def queue_depths(broker: redis.Redis, queues: Iterable[str] = QUEUES) -> dict[str, int]:
    """Messages waiting per queue (kombu keeps one list per priority step) and unacked ones."""
    pipe = broker.pipeline(transaction=False)
    names = list(queues)
    for name in names:
        pipe.llen(name)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{name}{KOMBU_PRIORITY_SEP}{step}")
    pipe.hlen(KOMBU_UNACKED)
    values = pipe.execute()
    per = 1 + len(KOMBU_PRIORITY_STEPS)
    out = {name: sum(values[i * per : (i + 1) * per]) for i, name in enumerate(names)}
    out[KOMBU_UNACKED] = values[-1]
    return out


def _number(raw: bytes) -> float:
    value = float(raw)
    return int(value) if value.is_integer() else value


class RedisCollector(Collector):
    """Builds every metric from Redis on each scrape (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        broker: redis.Redis | None = None,
    ) -> None:
        timeouts = {"socket_connect_timeout": 3, "socket_timeout": 5}
        self.r = client or redis.Redis.from_url(settings.redis_url, **timeouts)  # the store's
        self.broker = broker or redis.Redis.from_url(settings.broker, **timeouts)
        self.keys = MetricKeys(settings.key_prefix)
        self.store_keys = Keys(settings.key_prefix)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tiktok_sync_redis_up", "1 when the exporter could read Redis")
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(self.keys.totals)
            pipe.hgetall(self.keys.answers)
            pipe.smembers(self.store_keys.destinations)
            totals_raw, answers_raw, dest_ids = pipe.execute()
            depths = queue_depths(self.broker)
            dests = self._destinations(dest_ids)
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        totals = {k.decode(): _number(v) for k, v in totals_raw.items()}
        yield from self._from_totals(totals)
        answers = CounterMetricFamily(
            "tiktok_sync_tiktok_answers",
            "TikTok mapping answers by code and answer class",
            labels=["code", "answer_class"],
        )
        for key, value in sorted(answers_raw.items()):
            code, _, answer_class = key.decode().partition("|")
            answers.add_metric([code, answer_class], _number(value))
        yield answers
        queue = GaugeMetricFamily(
            "tiktok_sync_queue_messages", "Messages waiting in a broker queue", labels=["queue"]
        )
        for name in QUEUES:
            queue.add_metric([name], depths[name])
        yield queue
        yield GaugeMetricFamily(
            "tiktok_sync_queue_unacked",
            "Messages delivered to workers and not yet acknowledged (all queues)",
            value=depths[KOMBU_UNACKED],
        )
        by_status = GaugeMetricFamily(
            "tiktok_sync_destinations", "Destinations by status", labels=["status"]
        )
        for status in ("active", "auth_failed"):
            by_status.add_metric([status], sum(1 for s in dests if s == status))
        yield by_status

    def _destinations(self, ids: set[bytes]) -> list[str]:
        from worker.models import Destination

        pipe = self.r.pipeline(transaction=False)
        for dest_id in sorted(ids):
            pipe.hget(self.store_keys.destination(dest_id.decode()), "record")
        return [Destination.model_validate_json(raw).status for raw in pipe.execute() if raw]

    @staticmethod
    def _from_totals(totals: dict[str, float]) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(f"tiktok_sync_{name}", doc, labels=labels or [])

        sent = counter(
            "identifiers_sent",
            "Identifiers TikTok accepted, by action and id_schema",
            ["action", "id_schema"],
        )
        planned = counter(
            "identifiers_planned", "Identifiers the diff planned to send", ["action", "id_schema"]
        )
        valid = counter("identifiers_valid", "Valid identifiers read, by type", ["id_type"])
        rejected = counter(
            "identifiers_rejected",
            "Identifiers rejected, by type and reason",
            ["id_type", "reason"],
        )
        ignored = counter(
            "identifiers_ignored",
            "Identifiers of a type the destination does not send",
            ["id_type"],
        )
        rows_rejected = counter("rows_rejected", "Rows rejected whole, by reason", ["reason"])
        rows = counter("rows", "Rows read, by outcome", ["outcome"])
        batches = counter("batches", "Batches finished, by outcome", ["outcome"])
        jobs = counter("jobs_finished", "Jobs come to rest, by status", ["status"])
        simple = {
            "rows_read": counter("rows_read", "Rows read from member sources"),
            "retries": counter("batch_retries", "Transient TikTok failures retried"),
            "rate_limit_waits": counter(
                "rate_limit_waits", "Sends re-scheduled by the shared rate limiter"
            ),
            "rate_limited_answers": counter(
                "rate_limited_answers", "TikTok throttle answers (40100, 429, ...)"
            ),
            "rate_limited_ms": counter(
                "rate_limited_seconds",
                "Time batches spent waiting on rate limits (shared limiter and TikTok's pauses)",
            ),
            "warmup_retries": counter(
                "warmup_retries", "Sends retried while a new TikTok audience warms up"
            ),
            "poison_rows": counter("poison_rows", "Single identifiers TikTok refused"),
        }
        outcomes = {
            "members_valid": "valid",
            "members_excluded": "excluded_consent",
            "rows_rejected": "rejected",
        }
        hist: dict[str, dict[str, float]] = {}
        for key, value in sorted(totals.items()):
            group, _, rest = key.partition(":")
            if key in simple:
                continue  # below: these series exist from the first scrape, zero or not
            if key in outcomes:
                rows.add_metric([outcomes[key]], value)
            elif group.startswith("sent_"):
                sent.add_metric([group.removeprefix("sent_"), rest], value)
            elif group in ("adds", "removes"):
                planned.add_metric(["add" if group == "adds" else "delete", rest], value)
            elif group == "valid":
                valid.add_metric([rest], value)
            elif group == "ignored":
                ignored.add_metric([rest], value)
            elif group == "rejected_id":
                id_type, _, reason = rest.partition(":")
                rejected.add_metric([id_type, reason], value)
            elif group == "rejected_row":
                rows_rejected.add_metric([rest], value)
            elif group.startswith("batches_"):
                batches.add_metric([group.removeprefix("batches_")], value)
            elif group == "jobs_finished":
                jobs.add_metric([rest], value)
            elif group.startswith("job_seconds_"):
                kind = group.removeprefix("job_seconds_")
                status, _, bound = rest.partition(":")
                hist.setdefault(status, {})[f"{kind}:{bound}" if bound else kind] = value
        yield from (sent, planned, valid, rejected, ignored, rows_rejected, rows, batches, jobs)
        for key, family in simple.items():
            value = totals.get(key, 0)
            family.add_metric([], value / 1000 if key == "rate_limited_ms" else value)
        yield from simple.values()
        durations = HistogramMetricFamily(
            "tiktok_sync_job_duration_seconds",
            "Jobs from enqueue to rest, by final status",
            labels=["status"],
        )
        for status, parts in sorted(hist.items()):
            count = parts.get("count", 0)
            buckets = [(str(float(b)), parts.get(f"bucket:{b}", 0)) for b in BUCKETS]
            buckets.append(("+Inf", count))
            durations.add_metric([status], buckets, parts.get("sum", 0))
        yield durations


def registry(settings: Settings, **clients: Any) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RedisCollector(settings, **clients))
    return reg


def serve(settings: Settings, port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics until SIGTERM/SIGINT."""
    import signal
    import threading

    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=address, registry=registry(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
