"""The destination's product features end to end (real worker, real Redis, the emulator over HTTP):
audience naming and TikTok's limit, schedules with two beats, ID extension, global suppression,
match rate, dry run, delta jobs and resync. Each test checks what the emulator holds at the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scripts.gen_members import generate
from tests.conftest import ADVERTISER, TOKEN
from tests.harness import beat_process, expected_pairs, held_pairs, wait_until
from worker import api, maintenance
from worker.identifiers import ID_SCHEMA, IdType, hash_normalized, normalize
from worker.idgraph import Graph
from worker.models import JobRecord, JobStatus
from worker.pipeline import ledger_hashes
from worker.runtime import Runtime
from worker.sources import iter_inline, open_source
from worker.suppression import Suppressions

pytestmark = pytest.mark.integration

SCHEMAS = tuple(ID_SCHEMA.values())


def h(id_type: str, value: str, region: str | None = "US") -> tuple[str, str]:
    """The (schema, hex hash) TikTok should hold for one raw identifier."""
    kind = IdType(id_type)
    return ID_SCHEMA[kind], hash_normalized(normalize(kind, value, region=region)).hex()


def add_destination(rt: Runtime, dest_id: str = "acme", **kwargs: Any) -> None:
    kwargs.setdefault("phone_region", "US")
    api.add_destination("Acme", ADVERTISER, TOKEN, destination_id=dest_id, rt=rt, **kwargs)


def link(rt: Runtime, audience: str, dest_id: str = "acme", **kwargs: Any) -> str:
    return api.link_audience(
        dest_id, audience, name=f"CDP {audience}", rt=rt, **kwargs
    ).tiktok_audience_id


def run(rt: Runtime, app: Any, audience: str, dest_id: str = "acme", **kwargs: Any) -> JobRecord:
    job_id = api.enqueue_refresh(dest_id, audience, rt=rt, app=app, **kwargs)
    return api.wait_for(job_id, timeout=180, rt=rt)


def inline_pairs(members: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return expected_pairs(iter_inline(members), "US")


def file_pairs(path: Path) -> set[tuple[str, str]]:
    with open_source(str(path)) as source:
        return expected_pairs(source, "US")


def by_schema(pairs: set[tuple[str, str]]) -> Counter:
    return Counter(schema for schema, _ in pairs)


# -- audiences: TikTok's naming rule and its limit ------------------------------------------------
def test_long_name_is_cut_and_the_audience_limit_is_explained(rt: Runtime, emulator: Any) -> None:
    add_destination(rt)
    long_name = "VIP buyers who purchased twice in the last ninety days " + "x" * 40
    link(rt, "aud-long")
    api.link_audience("acme", "aud-long2", name=long_name, rt=rt)
    names = {a["name"] for a in emulator.audiences()}
    assert long_name[:67] + "..." in names  # TikTok's rule: 67 characters and "..."

    emulator.set_faults(audience_limit=2)
    with pytest.raises(ValueError, match="limit of 400 custom audiences") as error:
        api.link_audience("acme", "aud-3", rt=rt)
    assert "Audience manager" in str(error.value) and "--tiktok-audience-id" in str(error.value)
    assert rt.store.link("acme", "aud-3") is None
    assert len(emulator.audiences()) == 2


# -- schedules ------------------------------------------------------------------------------------
class _Recorder:
    """A Celery app stand-in that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []
        self._lock = threading.Lock()

    def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
        with self._lock:
            self.sent.append((name, args or []))


def test_concurrent_schedule_ticks_enqueue_each_due_refresh_once(
    rt: Runtime, settings: Any, tmp_path: Path
) -> None:
    add_destination(rt)
    audiences = [f"aud-s{i}" for i in range(4)]
    for audience in audiences:
        link(rt, audience, members_uri=str(tmp_path / "m-%Y%m%d.csv"), refresh_every_seconds=3600)
    link(rt, "aud-unscheduled")
    recorder = _Recorder()
    runtimes = [Runtime.build(settings) for _ in range(8)]

    def tick_all() -> None:
        barrier = threading.Barrier(len(runtimes))

        def tick(local: Runtime) -> None:
            barrier.wait()
            maintenance.enqueue_due_refreshes(local, recorder)

        threads = [threading.Thread(target=tick, args=(local,)) for local in runtimes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    tick_all()
    jobs = Counter(rt.store.job_spec(args[0]).audience_id for _, args in recorder.sent)  # type: ignore[union-attr]
    assert jobs == Counter(audiences)  # one each, none for the unscheduled link
    first = rt.store.link("acme", audiences[0])
    assert first is not None and first.next_refresh_at is not None
    assert first.next_refresh_at > time.time() + 3000  # the next one is an hour later

    tick_all()  # not due: nothing
    assert len(recorder.sent) == len(audiences)
    for audience in audiences:  # an hour passes
        rt.store.update_link("acme", audience, next_refresh_at=time.time() - 1)
    tick_all()
    jobs = Counter(rt.store.job_spec(args[0]).audience_id for _, args in recorder.sent)  # type: ignore[union-attr]
    assert jobs == Counter({a: 2 for a in audiences})
    uri = rt.store.job_spec(recorder.sent[0][1][0]).members  # type: ignore[union-attr]
    assert uri == str(tmp_path / time.strftime("m-%Y%m%d.csv", time.gmtime()))  # the date template


def test_two_beat_processes_enqueue_a_due_refresh_once(
    rt: Runtime, emulator: Any, worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    add_destination(rt)
    snapshot = tmp_path / time.strftime("members-%Y%m%d.csv", time.gmtime())
    generate(snapshot, 300, seed=11, invalid_share=0.0)
    tiktok_id = link(
        rt,
        "aud-sched",
        members_uri=str(tmp_path / "members-%Y%m%d.csv"),
        refresh_every_seconds=3600,
    )
    env = {**worker_env, "SCHEDULE_INTERVAL_SECONDS": "0.5", "RECONCILE_INTERVAL_SECONDS": "3600"}
    beats = [
        beat_process(env, tmp_path / f"beat{i}-schedule", tmp_path / f"beat{i}.log").start()
        for i in range(2)
    ]
    try:
        jobs = wait_until(
            lambda: rt.store.jobs("acme", "aud-sched"), timeout=60, what="a scheduled job"
        )
        first = api.wait_for(jobs[0].job_id, timeout=120, rt=rt)
        assert first.status == JobStatus.SUCCEEDED, first.message
        assert held_pairs(emulator.members(tiktok_id)) == file_pairs(snapshot)
        time.sleep(3)  # both beats keep ticking every 0.5 s
        assert len(rt.store.jobs("acme", "aud-sched")) == 1
        linked = rt.store.link("acme", "aud-sched")
        assert linked is not None and linked.last_refresh_at and linked.last_job_id == first.job_id
        assert linked.next_refresh_at and linked.next_refresh_at > time.time() + 3000

        rt.store.update_link("acme", "aud-sched", next_refresh_at=time.time())  # an hour passes
        wait_until(
            lambda: len(rt.store.jobs("acme", "aud-sched")) >= 2, timeout=30, what="the next job"
        )
        time.sleep(3)
        assert len(rt.store.jobs("acme", "aud-sched")) == 2
    finally:
        for beat in beats:
            beat.stop()
    logs = "".join(beat.log_path.read_text(errors="replace") for beat in beats)
    assert logs.count("tiktok.enqueue_due_refreshes") >= 4  # both beats really ticked


# -- ID extension ---------------------------------------------------------------------------------
def test_id_extension_sends_the_graph_identifiers(
    rt: Runtime, emulator: Any, worker: Any, celery_app: Any, tmp_path: Path
) -> None:
    add_destination(rt, identifiers=["email", "phone", "idfa"])  # the mapping: no GAID
    graph_file = tmp_path / "graph.csv"
    idfa = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    graph_file.write_text(
        "user_id,email,phone,idfa,gaid\n"
        "u1,Alt.One@Example.com,(415) 555-2671,,\n"
        f"u1,,,{idfa},\n"  # a second row for the same user adds to it
        "u2,u2@example.com,,,38400000-8cf0-11bd-b23e-10b96e40000d\n"  # own email + a GAID only
        "u3,u3.alt@example.com,,,\n"
        ",orphan@example.com,,,\n"  # no user_id: rejected
    )
    counts = Graph(rt).load(str(graph_file), region="US")
    assert counts["rows_rejected"] == 1 and Graph(rt).info()["users"] == 3

    members = [
        {"user_id": "u1", "email": "u1@example.com"},
        {"user_id": "u2", "email": "u2@example.com"},
        {"user_id": "u4", "email": "u4@example.com"},
        {"user_id": "u3", "email": "u3@example.com", "consent": False},
    ]
    extended = link(rt, "aud-ext", id_extension=True)
    plain = link(rt, "aud-plain")
    job = run(rt, celery_app, "aud-ext", inline=members)
    assert job.status == JobStatus.SUCCEEDED, job.message
    graph_ids = {h("email", "alt.one@example.com"), h("phone", "+14155552671"), h("idfa", idfa)}
    assert held_pairs(emulator.members(extended)) == inline_pairs(members) | graph_ids
    assert (
        job.count("extended:email")
        == job.count("extended:phone")
        == job.count("extended:idfa")
        == 1
    )
    assert job.count("extended:gaid") == 0 and job.count("members_extended") == 1

    control = run(rt, celery_app, "aud-plain", inline=members)
    assert control.status == JobStatus.SUCCEEDED
    assert held_pairs(emulator.members(plain)) == inline_pairs(members)
    assert control.count("members_extended") == 0

    # A removed member takes its graph identifiers with it.
    removal = run(rt, celery_app, "aud-ext", additions=[], removals=[members[0]])
    assert removal.status == JobStatus.SUCCEEDED, removal.message
    assert held_pairs(emulator.members(extended)) == inline_pairs(members[1:])


# -- global suppression ---------------------------------------------------------------------------
def test_suppressed_email_is_deleted_everywhere_and_never_re_added(
    rt: Runtime, emulator: Any, worker: Any, celery_app: Any
) -> None:
    emulator.add_token("tok-beta", ["7000000002"])
    add_destination(rt)
    api.add_destination("Beta", "7000000002", "tok-beta", destination_id="beta", rt=rt)
    target = "Opted.Out@Example.com"
    base = [{"email": "keep1@example.com"}, {"email": "keep2@example.com", "phone": "+14155550123"}]
    with_target = [*base, {"email": target}]
    audiences = {
        ("acme", "aud-a"): with_target,
        ("acme", "aud-b"): base,
        ("beta", "aud-c"): with_target,
    }
    tiktok_ids = {}
    for (dest_id, audience), members in audiences.items():
        tiktok_ids[audience] = link(rt, audience, dest_id)
        assert run(rt, celery_app, audience, dest_id, inline=members).status == JobStatus.SUCCEEDED
    target_pair = h("email", target)
    assert target_pair in held_pairs(emulator.members(tiktok_ids["aud-c"]))
    calls_b = [
        e for e in emulator.stats()["mapping_log"] if e["audience_id"] == tiktok_ids["aud-b"]
    ]

    result = Suppressions(rt).suppress(
        iter_inline([{"email": f"  {target.upper()} "}]), reason="ticket-42", app=celery_app
    )
    assert result.counts["suppressed:EMAIL_SHA256"] == 1
    assert {(a["destination_id"], a["audience_id"]) for a in result.audiences} == {
        ("acme", "aud-a"),
        ("beta", "aud-c"),
    }
    for info in result.audiences:
        job = api.wait_for(info["job_id"], timeout=120, rt=rt)
        assert job.status == JobStatus.SUCCEEDED, job.message
        assert job.count("removes:EMAIL_SHA256") == 1 and job.count("sent_delete:EMAIL_SHA256") == 1
    for (_, audience), members in audiences.items():
        assert held_pairs(emulator.members(tiktok_ids[audience])) == inline_pairs(members) - {
            target_pair
        }
    assert [
        e for e in emulator.stats()["mapping_log"] if e["audience_id"] == tiktok_ids["aud-b"]
    ] == calls_b

    # The audit: when it was suppressed, and when and where it was deleted (by which job).
    [trail] = Suppressions(rt).trail(iter_inline([{"email": target}]))
    assert trail["suppressed"] and trail["hash"] == target_pair[1]
    events = trail["events"]
    assert events[0]["event"] == "suppressed" and events[0]["reason"] == "ticket-42"
    deleted = {
        (e["audience_id"], e["job_id"], e["tiktok_audience_id"])
        for e in events
        if e["event"] == "deleted"
    }
    assert deleted == {
        (a["audience_id"], a["job_id"], a["tiktok_audience_id"]) for a in result.audiences
    }
    assert Suppressions(rt).summary()["pending"] == []

    # The next refreshes (a snapshot, then a resync) still have it: it is never sent again.
    again = run(rt, celery_app, "aud-a", inline=with_target)
    assert again.status == JobStatus.SUCCEEDED and again.count("batches_total") == 0
    assert again.count("suppressed:EMAIL_SHA256") == 1
    resync = run(rt, celery_app, "aud-c", "beta", inline=with_target, resync=True)
    assert resync.status == JobStatus.SUCCEEDED
    for audience in ("aud-a", "aud-c"):
        assert target_pair not in held_pairs(emulator.members(tiktok_ids[audience]))
    assert target_pair[1] not in ledger_hashes(rt, "acme", "aud-a").get("EMAIL_SHA256", set())


# -- match rate -----------------------------------------------------------------------------------
def test_match_rate_is_recorded(
    rt: Runtime, emulator: Any, worker: Any, celery_app: Any, tmp_path: Path
) -> None:
    add_destination(rt)
    tiktok_id = link(rt, "aud-m")
    path = tmp_path / "m.csv"
    generate(path, 1500, seed=5, invalid_share=0.0)
    job = run(rt, celery_app, "aud-m", members=str(path))
    assert job.status == JobStatus.SUCCEEDED
    [details] = rt.client.get_audiences(TOKEN, ADVERTISER, [tiktok_id])
    synced = len(held_pairs(emulator.members(tiktok_id)))
    assert 0 < details["cover_num"] < synced  # the emulator matches ~60%
    assert job.count("matched") == details["cover_num"] and job.count("synced_ids") == synced
    linked = rt.store.link("acme", "aud-m")
    assert linked is not None and (linked.matched, linked.synced_ids) == (
        details["cover_num"],
        synced,
    )


# -- dry run --------------------------------------------------------------------------------------
def test_dry_run_sends_nothing_and_reports_what_the_real_run_sends(
    rt: Runtime, emulator: Any, worker: Any, celery_app: Any, tmp_path: Path
) -> None:
    add_destination(rt)
    tiktok_id = link(rt, "aud-d")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    generate(first, 2000, seed=9, invalid_share=0.02)
    generate(second, 2300, seed=9, invalid_share=0.02, drop_share=0.15)
    assert run(rt, celery_app, "aud-d", members=str(first)).status == JobStatus.SUCCEEDED
    held_before, calls_before = emulator.members(tiktok_id), emulator.stats()["mapping_calls"]
    ledger_before = ledger_hashes(rt, "acme", "aud-d")

    dry = run(rt, celery_app, "aud-d", members=str(second), dry_run=True)
    assert dry.status == JobStatus.DRY_RUN
    assert (
        emulator.members(tiktok_id) == held_before
        and emulator.stats()["mapping_calls"] == calls_before
    )
    assert ledger_hashes(rt, "acme", "aud-d") == ledger_before
    old, new = file_pairs(first), file_pairs(second)
    for schema in SCHEMAS:
        assert dry.count(f"adds:{schema}") == by_schema(new - old)[schema], schema
        assert dry.count(f"removes:{schema}") == by_schema(old - new)[schema], schema
    assert f"audience size after sync {len(new)}" in dry.message
    for schema, n in by_schema(new).items():
        assert (
            f"{schema}: +{by_schema(new - old)[schema]} -{by_schema(old - new)[schema]} -> {n}"
            in dry.message
        )

    real = run(rt, celery_app, "aud-d", members=str(second))
    assert real.status == JobStatus.SUCCEEDED
    for schema in SCHEMAS:
        assert real.count(f"sent_add:{schema}") == dry.count(f"adds:{schema}")
        assert real.count(f"sent_delete:{schema}") == dry.count(f"removes:{schema}")
    assert held_pairs(emulator.members(tiktok_id)) == new


# -- delta jobs and resync ------------------------------------------------------------------------
def test_delta_job_adds_and_removes_exactly_what_it_names(
    rt: Runtime, emulator: Any, worker: Any, celery_app: Any
) -> None:
    add_destination(rt)
    tiktok_id = link(rt, "aud-delta")
    members = [{"email": f"m{i}@example.com"} for i in range(6)] + [{"phone": "+14155550100"}]
    assert run(rt, celery_app, "aud-delta", inline=members).status == JobStatus.SUCCEEDED
    log_start = len(emulator.stats()["mapping_log"])

    additions = [
        {"email": "new1@example.com", "idfa": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        {"email": "m0@example.com"},
    ]  # m0 is synced already: nothing to send for it
    removals = [
        {"email": "m1@example.com"},
        {"phone": "+14155550100"},
        {"email": "never-synced@example.com"},
    ]  # not in the audience: nothing to send
    job = run(rt, celery_app, "aud-delta", additions=additions, removals=removals)
    assert job.status == JobStatus.SUCCEEDED, job.message
    expected = (inline_pairs(members) | inline_pairs(additions)) - inline_pairs(removals)
    assert held_pairs(emulator.members(tiktok_id)) == expected
    log = emulator.stats()["mapping_log"][log_start:]
    assert sum(e["rows"] for e in log if e["action"] == "add") == 2  # new1's email and IDFA
    assert sum(e["rows"] for e in log if e["action"] == "delete") == 2  # m1 and the phone
    assert held_pairs(ledger_hashes(rt, "acme", "aud-delta")) == expected


def test_resync_restores_an_audience_tiktok_lost(
    rt: Runtime, emulator: Any, worker: Any, celery_app: Any, tmp_path: Path
) -> None:
    add_destination(rt)
    tiktok_id = link(rt, "aud-r")
    snapshot, smaller = tmp_path / "s.csv", tmp_path / "s2.csv"
    generate(snapshot, 800, seed=13, invalid_share=0.0)
    generate(smaller, 800, seed=13, invalid_share=0.0, drop_share=0.1)
    assert run(rt, celery_app, "aud-r", members=str(snapshot)).status == JobStatus.SUCCEEDED
    emulator.reset_audience(tiktok_id)  # TikTok lost the data

    plain = run(rt, celery_app, "aud-r", members=str(snapshot))
    assert (
        plain.status == JobStatus.SUCCEEDED and plain.count("batches_total") == 0
    )  # the ledger trusts TikTok
    assert not held_pairs(emulator.members(tiktok_id))

    job = run(rt, celery_app, "aud-r", members=str(smaller), resync=True)
    assert job.status == JobStatus.SUCCEEDED, job.message
    assert held_pairs(emulator.members(tiktok_id)) == file_pairs(smaller)
    assert held_pairs(ledger_hashes(rt, "acme", "aud-r")) == file_pairs(smaller)
    removed = file_pairs(snapshot) - file_pairs(smaller)
    assert removed and sum(job.count(f"removes:{s}") for s in SCHEMAS) == len(removed)
