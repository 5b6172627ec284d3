"""Operating the stack: Flower shows refresh progress, /metrics matches the results store, the
doctor names what is wrong, a retry's log line is JSON with the job's ids and no token.

The module runs its own stack the way the Procfile does: Redis, the emulator, a `refresh`
(prefork) and a `tiktok` (threads) worker, beat, Flower with basic auth and the metrics exporter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from config.celery import celery_config
from scripts.gen_members import generate
from tests.conftest import make_settings
from tests.harness import (
    CELERY,
    ROOT,
    RedisServer,
    WorkerProcess,
    base_env,
    free_port,
    wait_until,
)
from worker import api, metrics
from worker.metrics import MetricKeys
from worker.models import AT_REST, JobRecord, JobStatus
from worker.runtime import Runtime

pytestmark = pytest.mark.integration

TOKEN = "tok-ops-a1b2c3d4e5f6"
OTHER_TOKEN = "tok-ops-beta-99887766"
ADVERTISER = "7000000077"
FLOWER_AUTH = ("ops", "flower-pass-1234")
PROGRESS = re.compile(r"(\d+)/(\d+) batches")


@dataclass
class Stack:
    redis: RedisServer
    emulator: Any
    env: dict[str, str]
    rt: Runtime
    app: Celery
    refresh: WorkerProcess
    tiktok: WorkerProcess
    flower_url: str
    metrics_url: str

    def flower(self, path: str, auth: tuple[str, str] | None = FLOWER_AUTH) -> requests.Response:
        return requests.get(self.flower_url + path, auth=auth, timeout=5)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(self.metrics_url, timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def doctor(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", "doctor", "--timeout", "1.5"],
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def reset(self) -> None:
        """Empty state DB (results, metrics), fresh emulator, destination `acme` linked."""
        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        self.emulator.reset()
        self.emulator.add_token(TOKEN, [ADVERTISER])
        api.add_destination(
            "Acme", ADVERTISER, TOKEN, destination_id="acme", phone_region="US", rt=self.rt
        )
        api.link_audience("acme", "aud-ops", name="Ops audience", rt=self.rt)


def _up(url: str, **kwargs: Any) -> bool:
    try:
        return requests.get(url, timeout=2, **kwargs).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    from scripts.tiktok_emulator import Emulator

    server = RedisServer().start()
    emulator = Emulator(app_id="test-app", app_secret="test-secret").start()
    base = server.url.rsplit("/", 1)[0]
    env = base_env(
        server.url,
        emulator.base_url,
        broker_url=base + "/1",
        tiktok_batch_size=100,
        flower_basic_auth=":".join(FLOWER_AUTH),
        reconcile_interval_seconds=1,
    )
    flower_port, metrics_port = free_port(), free_port()
    celery = CELERY
    refresh = WorkerProcess(env, queues="refresh", pool="prefork", concurrency=1, name="refresh")
    tiktok = WorkerProcess(env, queues="tiktok", pool="threads", concurrency=4, name="tiktok")
    services = [
        WorkerProcess(env, args=[*celery, "beat", "-s", tempfile.mktemp(prefix="ts-beat-")]),
        WorkerProcess(
            env, args=[*celery, "flower", "--conf=config/flower.py", f"--port={flower_port}"]
        ),
        WorkerProcess(
            env,
            args=[
                sys.executable,
                "-m",
                "worker.cli",
                "metrics",
                "serve",
                "--port",
                str(metrics_port),
                "--address",
                "127.0.0.1",
            ],
        ),
    ]
    started: list[Any] = []
    try:
        for thing in (refresh, tiktok, *services):
            started.append(thing.start())
        settings = make_settings(env)
        app = Celery("tiktok_sync_ops_tests", set_as_current=False)
        app.config_from_object(celery_config(settings))
        s = Stack(
            server,
            emulator,
            env,
            Runtime.build(settings),
            app,
            refresh,
            tiktok,
            f"http://127.0.0.1:{flower_port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        wait_until(
            lambda: _up(s.flower_url + "/api/workers", auth=FLOWER_AUTH), timeout=60, what="flower"
        )
        wait_until(lambda: _up(s.metrics_url), timeout=30, what="metrics exporter")
        wait_until(
            lambda: len(app.control.inspect(timeout=1).active_queues() or {}) == 2,
            timeout=60,
            what="both workers",
        )
        yield s
    finally:
        for thing in reversed(started):
            thing.stop()
        emulator.stop()
        server.stop()


def run_job(s: Stack, members: Path, **kwargs: Any) -> str:
    return api.enqueue_refresh(
        "acme", "aud-ops", members=str(members), rt=s.rt, app=s.app, **kwargs
    )


def flower_tasks(s: Stack) -> dict[str, dict[str, Any]]:
    response = s.flower("/api/tasks")
    response.raise_for_status()
    return response.json()


def job_tasks(tasks: dict[str, dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [t for t in tasks.values() if job_id in (t.get("args") or "")]


# -- Flower ---------------------------------------------------------------------------------------
def test_flower_shows_refresh_progress(stack: Stack, tmp_path: Path) -> None:
    stack.reset()
    members = tmp_path / "members.csv"
    generate(members, 2_500, seed=5, invalid_share=0.0, workers=1)
    emails = [
        f for f in (row.split(",")[1] for row in members.read_text().splitlines()[1:]) if "@" in f
    ]
    stack.emulator.set_faults(latency_ms=150)  # batches take long enough to be seen running
    assert stack.flower("/api/tasks", auth=None).status_code == 401  # basic auth is on

    job_id = run_job(stack, members)
    seen: list[tuple[str, str, int, int]] = []  # (task name, state, done, total) while running

    def observe() -> bool:
        job = stack.rt.store.job(job_id)
        for t in job_tasks(flower_tasks(stack), job_id):
            match = PROGRESS.search(t.get("result") or "")
            if match and job is not None and job.status == JobStatus.RUNNING:
                seen.append((t["name"], t["state"], int(match[1]), int(match[2])))
        return job is not None and job.status in AT_REST

    wait_until(observe, timeout=120, poll=0.2, what="the refresh to finish")
    job = stack.rt.store.job(job_id)
    assert job is not None and job.status == JobStatus.SUCCEEDED, job and job.message
    total = job.count("batches_total")
    assert total >= 20

    # While it ran: tasks of this job in PROGRESS, saying "done/total batches" of this job.
    running = [x for x in seen if x[0] == "tiktok.send_batch" and x[1] == "PROGRESS"]
    assert running, seen
    assert max(x[3] for x in seen) == total
    assert any(0 < done < total for _, _, done, _ in seen)

    # At the end: readable task names, ids as arguments, the finished job's progress.
    def settled() -> list[dict[str, Any]] | None:
        tasks = job_tasks(flower_tasks(stack), job_id)
        done = [t for t in tasks if t["name"] == "tiktok.finalize" and t["state"] == "SUCCESS"]
        return tasks if done else None

    tasks = wait_until(settled, timeout=30, what="finalize in Flower")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_name.setdefault(t["name"], []).append(t)
    assert {"tiktok.refresh_audience", "tiktok.send_batch", "tiktok.finalize"} <= set(by_name)
    assert [t["args"] for t in by_name["tiktok.refresh_audience"]] == [f"['{job_id}']"]
    assert len({t["args"] for t in by_name["tiktok.send_batch"]}) == total
    assert (
        f"{total}/{total} batches ({total} ok, 0 failed)" in by_name["tiktok.finalize"][0]["result"]
    )
    assert "succeeded" in by_name["tiktok.finalize"][0]["result"]
    # Nothing secret or personal reaches Flower.
    dump = json.dumps(flower_tasks(stack))
    assert TOKEN not in dump
    assert emails and not any(e.strip().lower() in dump.lower() for e in emails[:200])


# -- metrics and logs, from one run with TikTok failing now and then ------------------------------
@pytest.fixture(scope="module")
def faulty_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> JobRecord:
    stack.reset()
    members = tmp_path_factory.mktemp("faulty") / "members.csv"
    generate(members, 1_500, seed=9, invalid_share=0.1, workers=1)
    stack.emulator.set_faults(error_rate=0.25, seed=3)
    job = api.wait_for(run_job(stack, members), timeout=120, rt=stack.rt)
    assert job.status == JobStatus.SUCCEEDED, job.message
    assert job.count("retries") > 0
    return job


def test_metrics_match_the_results_store(stack: Stack, faulty_run: JobRecord) -> None:
    job = faulty_run
    schemas = {k.split(":", 1)[1] for k in job.counts if k.startswith("sent_add:")}
    assert schemas

    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    # The last task folds its counts just after the job comes to rest: wait for that.
    metrics = wait_until(
        lambda: (
            (m := stack.metrics()).get(key("tiktok_sync_jobs_finished_total", status="succeeded"))
            == 1
            and m
        ),
        timeout=30,
        what="the job in /metrics",
    )
    for schema in schemas:
        assert metrics[
            key("tiktok_sync_identifiers_sent_total", action="add", id_schema=schema)
        ] == job.count(f"sent_add:{schema}")
    rejected = {k: v for k, v in job.counts.items() if k.startswith("rejected_id:")}
    assert rejected
    for field, value in rejected.items():
        _, id_type, reason = field.split(":", 2)
        assert (
            metrics[key("tiktok_sync_identifiers_rejected_total", id_type=id_type, reason=reason)]
            == value
        )
    for outcome in ("succeeded", "failed"):
        assert metrics.get(key("tiktok_sync_batches_total", outcome=outcome), 0) == job.count(
            f"batches_{outcome}"
        )
    assert metrics[key("tiktok_sync_rows_read_total")] == job.count("rows_read")

    answers = {
        labels: v
        for (name, labels), v in metrics.items()
        if name == "tiktok_sync_tiktok_answers_total"
    }
    by_class: dict[str, float] = {}
    for labels, value in answers.items():
        by_class[dict(labels)["answer_class"]] = (
            by_class.get(dict(labels)["answer_class"], 0) + value
        )
    assert answers[(("answer_class", "ok"), ("code", "0"))] == job.count("batches_succeeded")
    assert by_class["transient"] == job.count("retries") + job.count("batches_failed")
    assert sum(answers.values()) == stack.emulator.stats()["mapping_calls"]
    assert {dict(labels)["code"] for labels in answers} >= {"0", "50000", "http_500"}

    assert (
        metrics[key("tiktok_sync_rate_limited_seconds_total")]
        == job.count("rate_limited_ms") / 1000
    )
    assert metrics[key("tiktok_sync_job_duration_seconds_count", status="succeeded")] == 1
    assert metrics[
        key("tiktok_sync_job_duration_seconds_sum", status="succeeded")
    ] == pytest.approx(job.finished_at - job.created_at, abs=1e-3)  # type: ignore[operator]
    for queue in ("refresh", "tiktok"):
        assert key("tiktok_sync_queue_messages", queue=queue) in metrics
    assert metrics[key("tiktok_sync_redis_up")] == 1
    assert metrics[key("tiktok_sync_destinations", status="active")] == 1


def test_retry_log_line_is_json_with_ids_and_no_token(stack: Stack, faulty_run: JobRecord) -> None:
    job = faulty_run
    log = stack.tiktok.log()
    assert TOKEN not in log
    retries = []
    for line in log.splitlines():
        if '"batch_retry"' in line:
            retries.append(json.loads(line))  # every such line is one JSON object
    assert retries
    with_request = [r for r in retries if r.get("request_id")]
    assert with_request  # code 50000 answers carry TikTok's request id (HTTP 500 ones do not)
    for record in retries:
        assert record["job_id"] == job.job_id
        assert record["batch_id"].startswith(job.job_id + "-")
        assert record["audience_id"] == "aud-ops" and record["destination_id"] == "acme"
        assert record["level"] == "info" and record["timestamp"]
    assert all(re.fullmatch(r"[0-9a-f]{12}\d{10}", r["request_id"]) for r in with_request)


def test_fold_counts_each_change_once_and_never_goes_down(stack: Stack) -> None:
    """The metrics fold on its own (what every task runs at start and end), on real Redis."""
    r = redis.Redis.from_url(stack.env["REDIS_URL"])
    r.flushdb()
    keys = stack.rt.store.keys

    def fold(**fields: Any) -> dict[str, Any] | None:
        if fields:
            r.hset(keys.job("j1"), mapping=fields)
        return metrics.fold_job(r, keys, 3600, "j1")

    def totals() -> dict[str, float]:
        return {k.decode(): float(v) for k, v in r.hgetall(MetricKeys(keys.prefix).totals).items()}

    assert metrics.fold_job(r, keys, 3600, "no-such-job") is None
    progress = fold(
        status="running",
        phase="sending",
        destination_id="acme",
        audience_id="a1",
        created_at=100.0,
        batches_total=6,
        batches_finished=5,
        batches_succeeded=3,
        batches_parked=2,
        **{"sent_add:EMAIL_SHA256": 300, "synced_before:EMAIL_SHA256": 999},
    )
    assert progress == {
        "status": "running",
        "phase": "sending",
        "destination_id": "acme",
        "audience_id": "a1",
        "total": 6,
        "done": 5,
        "succeeded": 3,
        "failed": 0,
        "parked": 2,
        "rows": 0,
    }
    fold()  # nothing changed: nothing added
    assert totals() == {"sent_add:EMAIL_SHA256": 300, "batches_succeeded": 3, "batches_parked": 2}

    fold(status="auth_failed", phase="done", finished_at=160.0)  # at rest: counted once
    fold()
    t = totals()
    assert t["jobs_finished:auth_failed"] == 1 and t["job_seconds_count:auth_failed"] == 1
    assert t["job_seconds_sum:auth_failed"] == 60
    assert (
        t["job_seconds_bucket:auth_failed:60"] == 1 and "job_seconds_bucket:auth_failed:30" not in t
    )

    fold(status="running", phase="sending", batches_parked=0)  # resumed: parked fall back
    assert totals()["batches_parked"] == 2  # a counter never goes down
    fold(batches_parked=1)
    fold(status="succeeded", batches_succeeded=5, finished_at=400.0)
    t = totals()
    assert t["batches_parked"] == 3 and t["batches_succeeded"] == 5
    assert t["jobs_finished:succeeded"] == 1 and t["jobs_finished:auth_failed"] == 1
    assert t["job_seconds_sum:succeeded"] == 300


# -- doctor ---------------------------------------------------------------------------------------
def test_doctor_passes_on_a_healthy_stack(stack: Stack) -> None:
    stack.reset()
    wait_until(lambda: stack.doctor().returncode == 0, timeout=30, poll=1, what="a healthy doctor")
    done = stack.doctor()
    for name in (
        "redis",
        "broker",
        "workers:refresh",
        "workers:tiktok",
        "beat",
        "tiktok",
        "token:acme",
    ):
        assert re.search(rf"^ok\s+{re.escape(name)}\s", done.stdout, re.M), (name, done.stdout)
    assert "all checks passed" in done.stdout
    assert TOKEN not in done.stdout + done.stderr


def test_doctor_names_a_revoked_token(stack: Stack) -> None:
    stack.reset()
    stack.emulator.add_token(OTHER_TOKEN, ["7000000088"])
    api.add_destination("Beta", "7000000088", OTHER_TOKEN, destination_id="beta", rt=stack.rt)
    stack.emulator.revoke_token(OTHER_TOKEN)
    done = stack.doctor()
    assert done.returncode == 1, done.stdout
    assert re.search(r"^FAIL\s+token:beta\s.*refuses the access token.*40105", done.stdout, re.M), (
        done.stdout
    )
    assert "update-token beta" in done.stdout
    assert re.search(r"^ok\s+token:acme\s", done.stdout, re.M)
    assert OTHER_TOKEN not in done.stdout + done.stderr


def test_doctor_names_a_missing_tiktok_worker(stack: Stack) -> None:
    stack.reset()
    stack.tiktok.stop()
    try:
        for n in range(3):  # harmless when consumed later: no such batch
            stack.app.send_task("tiktok.send_batch", args=[f"job_none-{n:05d}"])
        done = stack.doctor()
        assert done.returncode == 1, done.stdout
        assert re.search(
            r"^FAIL\s+workers:tiktok\s+no live worker consumes queue `tiktok`", done.stdout, re.M
        ), done.stdout
        assert re.search(r"^ok\s+workers:refresh\s", done.stdout, re.M)
        assert re.search(r"^ok\s+broker\s.*tiktok 3 waiting", done.stdout, re.M), done.stdout
        metrics = stack.metrics()
        assert metrics[("tiktok_sync_queue_messages", (("queue", "tiktok"),))] == 3
    finally:
        stack.tiktok.start()
    wait_until(
        lambda: stack.metrics()[("tiktok_sync_queue_messages", (("queue", "tiktok"),))] == 0,
        timeout=60,
        what="the restarted worker to drain the queue",
    )


def test_doctor_names_redis_down(stack: Stack) -> None:
    gone = RedisServer().start()
    gone.stop()
    env = {**stack.env, "REDIS_URL": gone.url, "BROKER_URL": gone.url}
    done = stack.doctor(env)
    assert done.returncode == 1
    assert re.search(
        rf"^FAIL\s+redis\s+cannot reach Redis at {re.escape(gone.url)}", done.stdout, re.M
    ), done.stdout
    assert re.search(r"^skip\s+workers\s", done.stdout, re.M)
    assert re.search(r"^ok\s+tiktok\s", done.stdout, re.M)  # what can be checked still is


# -- progress for people --------------------------------------------------------------------------
def test_cli_refresh_wait_shows_progress_and_jobs_shows_a_table(
    stack: Stack, tmp_path: Path
) -> None:
    stack.reset()
    members = tmp_path / "members.csv"
    generate(members, 600, seed=2, invalid_share=0.0, workers=1)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("refresh", "aud-ops", "--destination", "acme", "--members", str(members), "--wait")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0].strip()
    job = stack.rt.store.job(job_id)
    assert job is not None and job.status == JobStatus.SUCCEEDED
    total = job.count("batches_total")
    # The bar's last frame: batches done of total and the live counts.
    assert re.search(rf"{job_id} succeeded/done .*{total}/{total} batches", done.stderr), (
        done.stderr
    )
    assert f"rows {job.count('rows_read'):,}" in done.stderr
    assert f"ok {total} failed 0" in done.stderr

    table = cli("jobs", "--destination", "acme")
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if job_id in line)
    assert "succeeded" in row and f"{total}/{total}" in row and f"{job.count('rows_read'):,}" in row

    unknown = cli("status", "job_missing", "--follow")
    assert unknown.returncode == 1 and "unknown job 'job_missing'" in unknown.stderr
