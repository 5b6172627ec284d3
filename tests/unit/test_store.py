"""Pure store logic on fakeredis: batch transitions, idempotency, locks, ids in key names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import fakeredis
import pytest

from config.settings import load_settings
from worker.keys import Keys, check_id
from worker.locks import AudienceLocks, LockResult
from worker.models import BatchState, JobSpec, JobStatus
from worker.store import Store, digests, group_by_shard, redact_uri


@pytest.fixture
def store() -> Iterator[Store]:
    settings = load_settings(
        token_encryption_key="X2i7q0lQ8s0yH0pLq4Cj8wVbD3r1dQwzV3WlYx1m5pQ=", state_shards=4
    )
    yield Store(fakeredis.FakeRedis(), settings)


def ids(n: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha256(f"{salt}{i}".encode()).digest() for i in range(n)]


def new_job(store: Store, job_id: str = "j1") -> JobSpec:
    spec = JobSpec(job_id=job_id, destination_id="d", audience_id="a", inline=[])
    assert store.create_job(spec)
    return spec


def test_create_job_is_idempotent(store: Store) -> None:
    spec = new_job(store)
    assert not store.create_job(spec)
    job = store.job("j1")
    assert job is not None and job.status == JobStatus.QUEUED
    assert [j.job_id for j in store.jobs("d", "a")] == ["j1"]


def test_a_lost_job_is_unknown_and_can_be_enqueued_again(store: Store) -> None:
    """A host crash can lose a job's record; a worker still running it may then write counters
    into a fresh hash. That remnant is no job, and enqueueing the same job id records it anew."""
    spec = new_job(store)
    store.r.delete(store.keys.job("j1"), store.keys.job_spec("j1"))
    store.count("j1", {"rows_read": 5})
    store.update_job("j1", phase="staging")
    assert store.job("j1") is None
    assert store.create_job(spec)
    job = store.job("j1")
    assert job is not None and job.status == JobStatus.QUEUED and job.phase == "queued"
    assert job.counts == {}


def test_float_counters_take_whole_floats(store: Store) -> None:
    """Seconds spent rate-limited are floats; one that rounds to 0.0 or 1.0 once made HINCRBY
    fail on the stored "0.012" ("hash value is not an integer") and dropped the batch's task."""
    for seconds in (0.012, 0.0, 1.0, 0.5):
        store.incr_batch("j1-00001", "rate_limited_seconds", seconds)
    store.incr_batch("j1-00001", "rate_limited", 1)
    store.incr_batch("j1-00001", "rate_limited", 2)
    raw = store.r.hgetall(store.keys.batch("j1-00001"))
    assert float(raw[b"rate_limited_seconds"]) == pytest.approx(1.512)
    assert raw[b"rate_limited"] == b"3"


def test_commit_updates_ledger_once_and_counts(store: Store) -> None:
    new_job(store)
    data = ids(10)
    store.add_batches("j1", [("j1-00001", "add", "EMAIL_SHA256", b"".join(data))])
    batch = store.batch("j1-00001")
    assert batch is not None and batch.size == 10
    groups = group_by_shard(digests(store.batch_data("j1-00001") or b""), 4)
    assert store.commit_batch(batch, "d", "a", groups) == (1, 1)
    # A redelivered commit of the same batch changes nothing.
    assert store.commit_batch(batch, "d", "a", groups) == (-1, 0)
    ledger = set()
    for shard in range(4):
        ledger |= store.r.smembers(store.keys.ledger("d", "a", shard, "EMAIL_SHA256"))
    assert ledger == set(data)
    job = store.job("j1")
    assert job is not None
    assert job.count("batches_succeeded") == 1 and job.count("sent_add:EMAIL_SHA256") == 10
    assert store.batch_data("j1-00001") is None  # payload dropped once delivered


def test_delete_commit_removes_from_ledger(store: Store) -> None:
    new_job(store)
    data = ids(6)
    for d in data:
        store.r.sadd(store.keys.ledger("d", "a", d[0] % 4, "PHONE_SHA256"), d)
    store.add_batches("j1", [("j1-00001", "delete", "PHONE_SHA256", b"".join(data[:4]))])
    batch = store.batch("j1-00001")
    assert batch is not None
    store.commit_batch(batch, "d", "a", group_by_shard(data[:4], 4))
    left = set()
    for shard in range(4):
        left |= store.r.smembers(store.keys.ledger("d", "a", shard, "PHONE_SHA256"))
    assert left == set(data[4:])


def test_split_makes_two_halves_and_keeps_totals(store: Store) -> None:
    new_job(store)
    data = ids(7)
    store.add_batches("j1", [("j1-00001", "add", "EMAIL_SHA256", b"".join(data))])
    batch = store.batch("j1-00001")
    assert batch is not None
    children = store.split_batch(batch, "too_large")
    assert children == ["j1-00001.1", "j1-00001.2"]
    assert store.split_batch(batch, "too_large") == []  # only once
    halves = [store.batch_data(c) or b"" for c in children]
    assert halves[0] + halves[1] == b"".join(data)
    sizes = [store.batch(c).size for c in children]  # type: ignore[union-attr]
    assert sizes == [3, 4]
    job = store.job("j1")
    assert job is not None
    assert job.count("batches_total") == 3 and job.count("batches_finished") == 1
    for child in children:
        rec = store.batch(child)
        assert rec is not None
        store.finish_batch(rec, BatchState.FAILED)
    job = store.job("j1")
    assert job is not None and job.count("batches_finished") == 3


def test_unpark_returns_parked_batches_to_pending(store: Store) -> None:
    new_job(store)
    store.add_batches(
        "j1", [(f"j1-{i:05d}", "add", "EMAIL_SHA256", b"".join(ids(2, str(i)))) for i in range(3)]
    )
    for b in store.batches("j1")[:2]:
        store.finish_batch(b, BatchState.PARKED)
    assert sorted(store.unpark("j1")) == ["j1-00000", "j1-00001"]
    assert store.pending_batches("j1") == ["j1-00000", "j1-00001", "j1-00002"]
    job = store.job("j1")
    assert (
        job is not None and job.count("batches_parked") == 0 and job.count("batches_finished") == 0
    )


def test_lock_newest_snapshot_wins(store: Store) -> None:
    locks = AudienceLocks(store.r, store.keys, lease_seconds=60)
    assert locks.acquire("d", "a", "old", 1.0) is LockResult.ACQUIRED
    assert locks.acquire("d", "a", "old", 1.0) is LockResult.OWNED
    assert locks.acquire("d", "a", "mid", 2.0) is LockResult.WAIT
    assert locks.acquire("d", "a", "new", 3.0) is LockResult.WAIT
    assert locks.release("d", "a", "old")
    # the older waiter is superseded by the newer one, which then gets the lock
    assert locks.acquire("d", "a", "mid", 2.0) is LockResult.SUPERSEDED
    assert locks.acquire("d", "a", "new", 3.0) is LockResult.ACQUIRED
    assert not locks.release("d", "a", "mid")
    # a job created before one that already started never runs
    assert locks.release("d", "a", "new")
    assert locks.acquire("d", "a", "late-but-old", 2.5) is LockResult.SUPERSEDED


def test_ids_in_key_names_are_checked() -> None:
    assert check_id("audience", "aud-1.x_y:z@q") == "aud-1.x_y:z@q"
    for bad in ("", "a b", "a{b}", "x" * 129, "é"):
        with pytest.raises(ValueError):
            check_id("audience", bad)
    keys = Keys("ts")
    # stage and ledger keys of a shard share one cluster hash tag
    tag = keys.ledger("d", "a", 3, "EMAIL_SHA256").split("}")[0]
    assert keys.stage("d", "a", 3, "EMAIL_SHA256", "j").startswith(tag + "}")


def test_tokens_are_encrypted_at_rest(store: Store) -> None:
    from worker.models import Destination

    store.save_destination(
        Destination(id="d", name="n", advertiser_id="123"), "secret-token-abcdef"
    )
    raw = store.r.hgetall(store.keys.destination("d"))
    assert b"secret-token-abcdef" not in b"".join(k + v for k, v in raw.items())
    assert store.token("d") == "secret-token-abcdef"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://user:pw@example.com/x.csv?sig=abc", "https://example.com/x.csv?[redacted]"),
        ("/data/x.csv", "/data/x.csv"),
        ("file:///data/x.csv", "file:///data/x.csv"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
