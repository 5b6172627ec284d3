"""End to end: real worker, real Redis, the emulator over HTTP; the end state is checked exactly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scripts.gen_members import generate
from tests.conftest import ADVERTISER, TOKEN
from tests.harness import WorkerProcess, expected_pairs, held_pairs
from worker import api
from worker.identifiers import COLUMNS, ID_SCHEMA, RejectedIdentifier, normalize
from worker.models import BatchState, JobStatus
from worker.runtime import Runtime
from worker.sources import Member, RejectedRow, open_source

pytestmark = pytest.mark.integration


def setup_destination(
    rt: Runtime,
    audience: str = "aud-1",
    dest_id: str = "acme",
    token: str = TOKEN,
    advertiser: str = ADVERTISER,
) -> str:
    api.add_destination("Acme", advertiser, token, destination_id=dest_id, phone_region="US", rt=rt)
    return api.link_audience(dest_id, audience, name=f"CDP {audience}", rt=rt).tiktok_audience_id


def reference_counts(path: Path) -> tuple[Counter, set[tuple[str, str]]]:
    """Count a snapshot independently of the pipeline (rows, exclusions, rejections, pairs)."""
    counts: Counter = Counter()
    rows = []
    with open_source(str(path)) as source:
        for row in source:
            rows.append(row)
            counts["rows_read"] += 1
            if isinstance(row, RejectedRow):
                counts["rows_rejected"] += 1
            elif not row.consent:
                counts["members_excluded"] += 1
            else:
                ok = 0
                for column, values in row.identifiers.items():
                    id_type, prehashed = COLUMNS[column]
                    for value in values:
                        try:
                            normalize(id_type, value, prehashed=prehashed, region="US")
                            ok += 1
                        except RejectedIdentifier as error:
                            counts[f"rejected_id:{id_type}:{error.reason}"] += 1
                counts["members_valid" if ok else "rows_rejected"] += 1
    return counts, expected_pairs(rows, "US")


def run(rt: Runtime, celery_app: Any, **kwargs: Any) -> Any:
    job_id = api.enqueue_refresh(
        "acme", kwargs.pop("audience", "aud-1"), rt=rt, app=celery_app, **kwargs
    )
    return api.wait_for(job_id, timeout=180, rt=rt)


def test_snapshot_then_changed_snapshot(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, tmp_path: Path
) -> None:
    tiktok_id = setup_destination(rt)
    first = tmp_path / "first.csv"
    generate(first, 10_000, seed=7, invalid_share=0.08)
    counts, pairs = reference_counts(first)

    job = run(rt, celery_app, members=str(first))
    assert job.status == JobStatus.SUCCEEDED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == pairs
    for name in ("rows_read", "rows_rejected", "members_excluded", "members_valid"):
        assert job.count(name) == counts[name], name
    assert job.count("rows_read") == job.count("members_valid") + job.count(
        "members_excluded"
    ) + job.count("rows_rejected")
    for key, value in counts.items():
        if key.startswith("rejected_id:"):
            assert job.count(key) == value, key
    by_schema = Counter(schema for schema, _ in pairs)
    for schema, n in by_schema.items():
        assert job.count(f"adds:{schema}") == n
        assert job.count(f"sent_add:{schema}") == n
    batches = rt.store.batches(job.job_id)
    assert len(batches) == job.count("batches_total") == job.count("batches_succeeded")
    assert all(b.state == BatchState.SUCCEEDED and b.size <= 300 for b in batches)
    stats = emulator.stats()
    assert stats["max_batch_rows"] <= 300
    assert stats["mapping_calls"] == len(batches)

    # Second snapshot: 10% removed, 10% added, some consent withdrawn.
    second = tmp_path / "second.csv"
    generate(second, 11_000, seed=7, invalid_share=0.08, drop_share=0.1, withdraw_share=0.03)
    _, new_pairs = reference_counts(second)
    removed, added = pairs - new_pairs, new_pairs - pairs
    assert removed and added
    before_log = len(emulator.stats()["mapping_log"])

    job2 = run(rt, celery_app, members=str(second))
    assert job2.status == JobStatus.SUCCEEDED, job2.message
    assert held_pairs(emulator.members(tiktok_id)) == new_pairs
    log = emulator.stats()["mapping_log"][before_log:]
    assert sum(e["rows"] for e in log if e["action"] == "delete") == len(removed)
    assert sum(e["rows"] for e in log if e["action"] == "add") == len(added)
    assert sum(job2.count(f"removes:{s}") for s in ID_SCHEMA.values()) == len(removed)
    assert all(e["rows"] <= 300 for e in log)


def test_same_job_id_runs_once(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, tmp_path: Path
) -> None:
    tiktok_id = setup_destination(rt)
    path = tmp_path / "m.ndjson"
    generate(path, 500, seed=3, fmt="ndjson", invalid_share=0.0)
    first = api.enqueue_refresh(
        "acme", "aud-1", members=str(path), job_id="upstream-42", rt=rt, app=celery_app
    )
    second = api.enqueue_refresh(
        "acme", "aud-1", members=str(path), job_id="upstream-42", rt=rt, app=celery_app
    )
    assert first == second == "upstream-42"
    job = api.wait_for(first, timeout=120, rt=rt)
    assert job.status == JobStatus.SUCCEEDED
    calls = emulator.stats()["mapping_calls"]
    api.enqueue_refresh(
        "acme", "aud-1", members=str(path), job_id="upstream-42", rt=rt, app=celery_app
    )
    assert len(rt.store.jobs("acme", "aud-1")) == 1
    assert emulator.stats()["mapping_calls"] == calls
    with open_source(str(path)) as source:
        assert held_pairs(emulator.members(tiktok_id)) == expected_pairs(source, "US")


def test_inline_members_and_unchanged_refresh_sends_nothing(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any
) -> None:
    tiktok_id = setup_destination(rt)
    members = [
        {"email": "A@Example.com"},
        {"phone": "(415) 555-2671"},
        {"email": "bad"},
        {"email": "gone@example.com", "consent": False},
    ]
    job = run(rt, celery_app, inline=members)
    assert job.status == JobStatus.SUCCEEDED
    expected = expected_pairs(
        [
            Member(
                i + 1,
                None,
                {k: [v] for k, v in m.items() if k != "consent"},
                m.get("consent", True),
            )
            for i, m in enumerate(members)
        ],
        "US",
    )
    assert held_pairs(emulator.members(tiktok_id)) == expected
    assert job.count("members_excluded") == 1 and job.count("rows_rejected") == 1
    calls = emulator.stats()["mapping_calls"]
    again = run(rt, celery_app, inline=members)
    assert again.status == JobStatus.SUCCEEDED and again.count("batches_total") == 0
    assert emulator.stats()["mapping_calls"] == calls


def test_unreadable_source_fails_and_keeps_the_audience(
    rt: Runtime, emulator: Any, worker: WorkerProcess, celery_app: Any, tmp_path: Path
) -> None:
    tiktok_id = setup_destination(rt)
    job = run(rt, celery_app, inline=[{"email": "keep@example.com"}])
    assert job.status == JobStatus.SUCCEEDED
    before = emulator.members(tiktok_id)
    failed = run(rt, celery_app, members=str(tmp_path / "missing.csv"))
    assert failed.status == JobStatus.FAILED
    assert "cannot read the members" in failed.message
    assert emulator.members(tiktok_id) == before


def test_parallel_staging_and_shards_match_the_plain_path(
    rt: Runtime, emulator: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A big local snapshot split over several stage_part tasks and 16 shards gives exactly the
    state of the unsplit, unsharded path (each path with its own worker and Redis database)."""
    from celery import Celery

    from config.celery import celery_config
    from tests.conftest import make_settings

    path = tmp_path / "big.csv"
    generate(path, 40_000, seed=21, invalid_share=0.05)
    assert path.stat().st_size > 2 << 20  # big enough to be split
    expected = reference_counts(path)[1]
    held = {}
    base = worker_env["REDIS_URL"].rsplit("/", 1)[0]
    for label, db, extra in (
        ("split", 2, {"STAGE_PARTS": "4", "STATE_SHARDS": "16"}),
        ("plain", 4, {"STAGE_PARTS": "1", "STATE_SHARDS": "1"}),
    ):
        env = {**worker_env, **extra, "REDIS_URL": f"{base}/{db}", "BROKER_URL": f"{base}/{db + 1}"}
        settings = make_settings(env)
        local = Runtime.build(settings)
        local.store.r.flushdb()
        app = Celery("parallel-test")
        app.config_from_object(celery_config(settings))
        proc = WorkerProcess(env, pool="prefork", concurrency=2, name=f"par-{label}").start()
        try:
            tiktok_id = setup_destination(local, audience=f"aud-{label}")
            job = api.wait_for(
                api.enqueue_refresh("acme", f"aud-{label}", members=str(path), rt=local, app=app),
                timeout=240,
                rt=local,
            )
            assert job.status == JobStatus.SUCCEEDED, job.message
            assert job.count("stage_parts") == (4 if label == "split" else 0)
            held[label] = held_pairs(emulator.members(tiktok_id))
        finally:
            proc.stop()
    assert held["split"] == held["plain"] == expected
