"""Sharded state and parallel staging change nothing: each variant (shards, split reads, gzip,
NDJSON) syncs the same snapshots as the plain path and leaves exactly the same ids on the
emulator and in the ledger, through a full sync and a changed snapshot (adds and removes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import celery_config
from scripts.gen_members import generate
from tests.conftest import make_settings
from tests.harness import WorkerProcess, expected_pairs, held_pairs
from tests.integration.test_refresh import setup_destination
from worker import api, pipeline
from worker.models import JobRecord, JobStatus
from worker.runtime import Runtime
from worker.sources import open_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST_DB = 8  # each variant: a state db and the next one as its broker (conftest uses 0-1)


class Variant:
    """One configuration of the pipeline: its own Redis databases, worker and audience."""

    def __init__(self, rt: Runtime, app: Celery, emulator: Any, label: str) -> None:
        self.rt = rt
        self.app = app
        self.emulator = emulator
        self.label = label
        self.tiktok_id = setup_destination(rt, audience=f"aud-{label}")

    def sync(self, path: Path) -> JobRecord:
        job_id = api.enqueue_refresh(
            "acme", f"aud-{self.label}", members=str(path), rt=self.rt, app=self.app
        )
        job = api.wait_for(job_id, timeout=240, rt=self.rt)
        assert job.status == JobStatus.SUCCEEDED, f"{self.label}: {job.message}"
        return job

    def held(self) -> set[tuple[str, str]]:
        return held_pairs(self.emulator.members(self.tiktok_id))

    def ledger(self) -> set[tuple[str, str]]:
        return held_pairs(pipeline.ledger_hashes(self.rt, "acme", f"aud-{self.label}"))


@contextmanager
def variant(
    worker_env: dict[str, str], emulator: Any, label: str, slot: int, **settings: Any
) -> Iterator[Variant]:
    base = worker_env["REDIS_URL"].rsplit("/", 1)[0]
    state, broker = f"{base}/{FIRST_DB + 2 * slot}", f"{base}/{FIRST_DB + 2 * slot + 1}"
    for url in (state, broker):
        redis.Redis.from_url(url).flushdb()  # also forgets STATE_SHARDS of an earlier test
    env = {
        **worker_env,
        **{k.upper(): str(v) for k, v in settings.items()},
        "REDIS_URL": state,
        "BROKER_URL": broker,
    }
    config = make_settings(env)
    app = Celery(f"scale-{label}")
    app.config_from_object(celery_config(config))
    proc = WorkerProcess(env, pool="prefork", concurrency=2, name=f"scale-{label}").start()
    try:
        yield Variant(Runtime.build(config), app, emulator, label)
    finally:
        proc.stop()


def pairs_of(path: Path) -> set[tuple[str, str]]:
    with open_source(str(path)) as source:
        return expected_pairs(source, "US")


def changes(job: JobRecord) -> dict[str, int]:
    return {k: v for k, v in job.counts.items() if k.startswith(("adds:", "removes:", "sent_"))}


def snapshots(
    tmp_path: Path, fmt: str = "csv", gzip: bool = False, count: int = 30_000
) -> tuple[Path, Path]:
    """A snapshot and a changed one (members dropped, added, consent withdrawn)."""
    suffix = (".csv" if fmt == "csv" else ".ndjson") + (".gz" if gzip else "")
    first, second = tmp_path / f"first{suffix}", tmp_path / f"second{suffix}"
    generate(first, count, seed=31, fmt=fmt, gzip=gzip, invalid_share=0.05)
    generate(
        second,
        count + count // 10,
        seed=31,
        fmt=fmt,
        gzip=gzip,
        invalid_share=0.05,
        drop_share=0.1,
        withdraw_share=0.02,
    )
    return first, second


def test_many_shards_give_the_state_of_one_shard(
    rt: Runtime, emulator: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """256 shards against 1 (parallel reads off in both): same adds, removes and end state."""
    first, second = snapshots(tmp_path)
    want_first, want_second = pairs_of(first), pairs_of(second)
    assert want_first - want_second and want_second - want_first
    results = {}
    for slot, (label, shards) in enumerate((("one", 1), ("many", 256))):
        with variant(
            worker_env, emulator, f"shards-{label}", slot, state_shards=shards, stage_parts=1
        ) as v:
            job1 = v.sync(first)
            assert v.held() == v.ledger() == want_first, label
            job2 = v.sync(second)
            assert v.held() == v.ledger() == want_second, label
            assert job2.count("stage_parts") == 0
            results[label] = (changes(job1), changes(job2))
    assert results["one"] == results["many"]


def test_gzip_is_read_whole_and_matches_the_split_plain_file(
    rt: Runtime, emulator: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A .gz snapshot cannot be split: one task reads it, with the same result as 4 parts."""
    plain = snapshots(tmp_path / "plain")
    packed = snapshots(tmp_path / "gz", gzip=True)
    assert plain[0].stat().st_size > 2 << 20 and pairs_of(plain[0]) == pairs_of(packed[0])
    results = {}
    for slot, (label, paths) in enumerate((("plain", plain), ("gz", packed))):
        with variant(
            worker_env, emulator, f"gz-{label}", slot, state_shards=16, stage_parts=4
        ) as v:
            jobs = [v.sync(path) for path in paths]
            assert v.held() == v.ledger() == pairs_of(plain[1]), label
            assert [j.count("stage_parts") for j in jobs] == (
                [4, 4] if label == "plain" else [0, 0]
            )
            results[label] = [changes(j) for j in jobs]
    assert results["plain"] == results["gz"]


def test_ndjson_split_in_parts_matches_the_unsplit_read(
    rt: Runtime, emulator: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """NDJSON (lists of emails, numeric phones) read in 3 byte ranges vs whole, 64 shards vs 1."""
    first, second = snapshots(tmp_path, fmt="ndjson", count=20_000)
    assert first.stat().st_size > 2 << 20
    results = {}
    configs = (
        ("split", {"stage_parts": 3, "state_shards": 64}),
        ("whole", {"stage_parts": 1, "state_shards": 1}),
    )
    for slot, (label, settings) in enumerate(configs):
        with variant(worker_env, emulator, f"ndjson-{label}", slot, **settings) as v:
            job1 = v.sync(first)
            assert v.held() == pairs_of(first), label
            job2 = v.sync(second)
            assert v.held() == v.ledger() == pairs_of(second), label
            assert job1.count("stage_parts") == (3 if label == "split" else 0)
            counted = ("rows_read", "rows_rejected", "members_valid", "members_excluded")
            results[label] = [changes(job1), changes(job2), [job2.count(k) for k in counted]]
    assert results["split"] == results["whole"]
