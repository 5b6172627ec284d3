"""The `tiktok-sync` command line, run as a real subprocess (`python -m worker.cli`) against the
test Redis, the real worker and the emulator: destinations and --verify, the auth-code exchange,
an audience link raced by 8 processes, and the README walkthrough (refresh, status, audience
list, disqualified users deleted, suppression, ID extension, delta from files).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scripts.gen_members import generate
from tests.conftest import ADVERTISER, TOKEN
from tests.harness import ROOT, expected_pairs, held_pairs
from worker import api
from worker.identifiers import ID_SCHEMA, IdType, hash_normalized, normalize
from worker.runtime import Runtime
from worker.sources import open_source

pytestmark = pytest.mark.integration


def run_cli(
    env: dict[str, str], *args: str, code: int | None = 0, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """One CLI call; checks the exit code unless `code` is None."""
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    if code is not None:
        assert proc.returncode == code, (
            f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def h(id_type: str, value: str) -> tuple[str, str]:
    kind = IdType(id_type)
    return ID_SCHEMA[kind], hash_normalized(normalize(kind, value, region="US")).hex()


def file_pairs(path: Path) -> set[tuple[str, str]]:
    with open_source(str(path)) as source:
        return expected_pairs(source, "US")


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long error messages


# -- destinations ---------------------------------------------------------------------------------
def test_destination_crud_and_verify(
    rt: Runtime, emulator: Any, worker_env: dict[str, str]
) -> None:
    env = worker_env
    add = [
        "destination",
        "add",
        "--name",
        "Acme",
        "--advertiser-id",
        ADVERTISER,
        "--phone-region",
        "US",
    ]
    assert (
        run_cli(env, *add, "--access-token", TOKEN, "--id", "acme", "--verify").stdout.strip()
        == "acme"
    )

    emulator.add_token("tok-revoked", [ADVERTISER])
    emulator.revoke_token("tok-revoked")
    revoked = run_cli(env, *add, "--access-token", "tok-revoked", "--id", "bad", "--verify", code=1)
    assert (
        "TikTok refused the access token" in one_line(revoked.stderr)
        and "revoked" in revoked.stderr
    )
    wrong = run_cli(
        env,
        "destination",
        "add",
        "--name",
        "X",
        "--advertiser-id",
        "7999999999",
        "--access-token",
        TOKEN,
        "--id",
        "wrong",
        "--verify",
        code=1,
    )
    assert f"does not grant advertiser 7999999999 (it grants: {ADVERTISER})" in one_line(
        wrong.stderr
    )
    assert rt.store.destination("bad") is None and rt.store.destination("wrong") is None

    listed = run_cli(env, "destination", "list")
    assert "acme" in listed.stdout and ADVERTISER in listed.stdout
    listed_json = run_cli(env, "destination", "list", "--json").stdout
    shown = run_cli(env, "destination", "show", "acme").stdout
    assert [d["id"] for d in json.loads(listed_json)] == ["acme"]
    for output in (listed.stdout, listed_json, shown):
        assert TOKEN not in output
    stored = rt.store.r.hget(rt.store.keys.destination("acme"), "token")
    assert (
        stored and TOKEN.encode() not in stored and rt.store.token("acme") == TOKEN
    )  # encrypted at rest

    run_cli(
        env,
        "destination",
        "update",
        "acme",
        "--name",
        "Acme EU",
        "--identifiers",
        "email,phone",
        "--phone-region",
        "gb",
        "--rate",
        "5",
    )
    data = json.loads(run_cli(env, "destination", "show", "acme", "--json").stdout)
    assert (data["name"], data["identifiers"], data["phone_region"], data["rate_per_second"]) == (
        "Acme EU",
        ["email", "phone"],
        "GB",
        5.0,
    )
    bad = run_cli(env, "destination", "update", "acme", "--phone-region", "Narnia", code=1)
    assert "two-letter country code" in bad.stderr
    assert rt.store.require_destination("acme").phone_region == "GB"

    bad_token = run_cli(
        env,
        "destination",
        "update-token",
        "acme",
        "--access-token",
        "tok-revoked",
        "--verify",
        code=1,
    )
    assert "revoked" in bad_token.stderr and rt.store.token("acme") == TOKEN
    emulator.add_token("tok-new", [ADVERTISER])
    run_cli(env, "destination", "update-token", "acme", "--access-token", "tok-new", "--verify")
    assert rt.store.token("acme") == "tok-new"

    assert "removed acme" in run_cli(env, "destination", "remove", "acme").stdout
    assert "unknown destination" in run_cli(env, "destination", "show", "acme", code=1).stderr


# -- auth-code exchange ---------------------------------------------------------------------------
def test_auth_code_exchange(rt: Runtime, emulator: Any, worker_env: dict[str, str]) -> None:
    env = worker_env
    api.add_destination("Acme", ADVERTISER, TOKEN, destination_id="acme", rt=rt)
    emulator.add_auth_code("code-1", "tok-from-code", [ADVERTISER, "7000000002"])
    good = run_cli(env, "auth", "exchange", "--auth-code", "code-1", "--destination", "acme")
    assert f"advertiser ids granted: {ADVERTISER}, 7000000002" in good.stdout
    assert "token stored on destination acme" in good.stdout
    assert "tok-from-code" not in good.stdout + good.stderr  # never printed unless asked
    assert rt.store.token("acme") == "tok-from-code"

    reused = run_cli(env, "auth", "exchange", "--auth-code", "code-1", code=1)
    message = one_line(reused.stderr)
    assert "auth_code is invalid, expired or has been used" in message  # TikTok's message
    assert "single-use" in message and "authorise the app again" in message

    emulator.add_auth_code("code-2", "tok-2", [ADVERTISER])
    secret = run_cli(
        env, "auth", "exchange", "--auth-code", "code-2", code=1, TIKTOK_APP_SECRET="wrong"
    )
    assert "TIKTOK_APP_SECRET" in one_line(secret.stderr) and "was not used" in one_line(
        secret.stderr
    )
    shown = run_cli(env, "auth", "exchange", "--auth-code", "code-2", "--show-token", "--json")
    assert json.loads(shown.stdout) == {
        "advertiser_ids": [ADVERTISER],
        "stored_on": None,
        "access_token": "tok-2",
    }

    api.add_destination("Other", "7000000009", TOKEN, destination_id="other", rt=rt)
    emulator.add_auth_code("code-3", "tok-3", [ADVERTISER])
    mismatch = run_cli(
        env, "auth", "exchange", "--auth-code", "code-3", "--destination", "other", code=1
    )
    assert "token NOT stored" in one_line(mismatch.stderr) and rt.store.token("other") == TOKEN


# -- audience creation raced by 8 processes -------------------------------------------------------
def test_eight_racing_links_create_one_tiktok_audience(
    rt: Runtime, emulator: Any, worker_env: dict[str, str]
) -> None:
    api.add_destination("Acme", ADVERTISER, TOKEN, destination_id="acme", rt=rt)
    emulator.set_faults(latency_ms=300)  # a slow TikTok widens the race window
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.cli",
                "audience",
                "link",
                "aud-race",
                "--destination",
                "acme",
                "--name",
                "Race",
            ],
            cwd=ROOT,
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ids = {stdout.strip() for stdout, _ in outputs}
    assert len(ids) == 1
    [created] = emulator.audiences()
    assert created["audience_id"] == ids.pop() and created["name"] == "Race"


# -- the README walkthrough -----------------------------------------------------------------------
def test_readme_walkthrough(
    rt: Runtime, emulator: Any, worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = worker_env
    run_cli(
        env,
        "destination",
        "add",
        "--name",
        "Acme",
        "--advertiser-id",
        ADVERTISER,
        "--access-token",
        TOKEN,
        "--identifiers",
        "email,phone,idfa,gaid",
        "--phone-region",
        "US",
        "--id",
        "acme",
        "--verify",
    )
    tiktok_id = run_cli(
        env,
        "audience",
        "link",
        "vip-buyers",
        "--destination",
        "acme",
        "--name",
        "VIP buyers",
        "--members",
        str(tmp_path / "vip-%Y%m%d.csv"),
        "--every",
        "1d",
    ).stdout.strip()
    assert tiktok_id.isdigit()
    first, second = tmp_path / "vip.csv", tmp_path / "vip2.csv"
    generate(first, 1200, seed=17, invalid_share=0.03)
    generate(second, 1200, seed=17, invalid_share=0.03, drop_share=0.1, withdraw_share=0.05)

    dry = run_cli(
        env,
        "refresh",
        "vip-buyers",
        "--destination",
        "acme",
        "--members",
        str(first),
        "--dry-run",
        "--wait",
    )
    assert (
        "dry_run" in dry.stdout
        and f"audience size after sync {len(file_pairs(first))}" in one_line(dry.stdout)
    )
    assert emulator.stats()["mapping_calls"] == 0

    job_id = run_cli(
        env, "refresh", "vip-buyers", "--destination", "acme", "--members", str(first), "--wait"
    ).stdout.split()[0]
    assert held_pairs(emulator.members(tiktok_id)) == file_pairs(first)
    status = run_cli(env, "status", job_id).stdout
    assert "succeeded" in status and "match rate" in status
    record = json.loads(run_cli(env, "status", job_id, "--json").stdout)
    assert record["counts"]["matched"] > 0 and record["counts"]["synced_ids"] == len(
        file_pairs(first)
    )
    listing = json.loads(run_cli(env, "audience", "list", "--json").stdout)
    [item] = listing
    assert item["last_job_id"] == job_id and item["matched"] == record["counts"]["matched"]
    assert item["next_refresh_at"] and item["last_refresh_at"]
    table = run_cli(env, "audience", "list").stdout
    assert (
        time.strftime("%Y-%m-%d", time.gmtime()) in table and "%" in table
    )  # last refresh, match rate

    # Users who left the audience (dropped or consent withdrawn) are deleted by the next refresh.
    run_cli(
        env, "refresh", "vip-buyers", "--destination", "acme", "--members", str(second), "--wait"
    )
    assert held_pairs(emulator.members(tiktok_id)) == file_pairs(second)
    assert file_pairs(first) - file_pairs(second)

    # Global suppression from a file; the audit trail names the audience and the job.
    target = next(iter(sorted(p for p in file_pairs(second) if p[0] == "EMAIL_SHA256")))
    optouts = tmp_path / "optouts.csv"
    optouts.write_text(f"email_sha256\n{target[1]}\n")
    supp = run_cli(
        env, "suppress", "--file", str(optouts), "--reason", "gdpr-7", "--wait", "--json"
    )
    result = json.loads(supp.stdout)
    [affected] = result["audiences"]
    assert affected["audience_id"] == "vip-buyers" and affected["status"] == "succeeded"
    assert target not in held_pairs(emulator.members(tiktok_id))
    trail = json.loads(run_cli(env, "suppressed", "--json").stdout)
    assert trail["suppressed"]["EMAIL_SHA256"] == 1 and trail["pending"] == []
    assert trail["entries"][0]["reason"] == "gdpr-7"


def test_id_extension_and_delta_from_files(
    rt: Runtime, emulator: Any, worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = worker_env
    api.add_destination("Acme", ADVERTISER, TOKEN, destination_id="acme", phone_region="US", rt=rt)
    tiktok_id = api.link_audience("acme", "aud-x", rt=rt).tiktok_audience_id
    graph = tmp_path / "graph.ndjson"
    graph.write_text(
        '{"user_id": "u1", "email": ["alt@example.com"], "phone": "415 555 2671"}\n'
        '{"user_id": "u2", "gaid": "38400000-8cf0-11bd-b23e-10b96e40000d"}\n'
    )
    loaded = run_cli(env, "idgraph", "load", str(graph), "--phone-region", "US", "--json")
    assert json.loads(loaded.stdout)["graph"]["users"] == 2
    shown = json.loads(run_cli(env, "idgraph", "show", "u1").stdout)
    assert shown == {
        "email": [h("email", "alt@example.com")[1]],
        "phone": [h("phone", "+14155552671")[1]],
    }
    assert (
        "on"
        in run_cli(
            env, "audience", "update", "aud-x", "--destination", "acme", "--id-extension"
        ).stdout
    )

    adds = tmp_path / "add.csv"
    adds.write_text("user_id,email\nu1,u1@example.com\nu9,u9@example.com\n")
    run_cli(env, "delta", "aud-x", "--destination", "acme", "--add", str(adds), "--wait")
    assert held_pairs(emulator.members(tiktok_id)) == {
        h("email", "u1@example.com"),
        h("email", "u9@example.com"),
        h("email", "alt@example.com"),
        h("phone", "+14155552671"),
    }
    removes = tmp_path / "remove.csv"
    removes.write_text("user_id,email\nu1,u1@example.com\n")
    run_cli(env, "delta", "aud-x", "--destination", "acme", "--remove", str(removes), "--wait")
    assert held_pairs(emulator.members(tiktok_id)) == {h("email", "u9@example.com")}
