"""The TikTok emulator over real HTTP: auth, audiences, mapping rules, faults, OAuth and admin.

Every test talks to a started `Emulator` with `requests` and checks what it answers and holds.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.tiktok_emulator import Emulator

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-main"
ADV = "7001"
OTHER_ADV = "7002"  # also granted to TOKEN
FOREIGN_ADV = "7999"  # granted to nobody
APP_ID = "test-app"
APP_SECRET = "test-secret"
MAPPING = "/segment/mapping/"
CREATE = "/segment/audience/"
AUDIENCE_GET = "/dmp/custom_audience/get/"
OAUTH_TOKEN = "/oauth2/access_token/"
ADVERTISER_GET = "/oauth2/advertiser/get/"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hashes(prefix: str, n: int) -> list[str]:
    return [sha(f"{prefix}-{i}") for i in range(n)]


def mapping_body(
    audience_id: str,
    ids: list[str],
    action: str = "add",
    schema: str = "EMAIL_SHA256",
    advertiser_id: str = ADV,
) -> dict[str, Any]:
    return {
        "advertiser_ids": [advertiser_id],
        "action": action,
        "id_schema": [schema],
        "batch_data": [[{"id": h, "audience_ids": [audience_id]}] for h in ids],
    }


class Api:
    """A thin client: one keep-alive session, TikTok's header, the emulator's base URL."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.session = requests.Session()

    def call(
        self, method: str, path: str, token: str | None = TOKEN, **kwargs: Any
    ) -> requests.Response:
        headers = {"Access-Token": token} if token is not None else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.emu.base_url + path, headers=headers, **kwargs)

    def post(self, path: str, body: Any, token: str | None = TOKEN, **kw: Any) -> dict[str, Any]:
        response = self.call("POST", path, token, json=body, **kw)
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, path: str, params: dict[str, Any], token: str | None = TOKEN) -> dict[str, Any]:
        response = self.call("GET", path, token, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def admin(self, method: str, path: str, body: Any = None) -> requests.Response:
        return self.session.request(method, self.emu.root_url + path, json=body, timeout=5)

    def create_audience(self, name: str = "audience", advertiser_id: str = ADV) -> str:
        answer = self.post(
            CREATE,
            {"advertiser_id": advertiser_id, "action": "create", "custom_audience_name": name},
        )
        assert answer["code"] == 0, answer
        return answer["data"]["audience_id"]

    def cover_num(self, audience_id: str, advertiser_id: str = ADV) -> int:
        answer = self.get(
            AUDIENCE_GET,
            {"advertiser_id": advertiser_id, "custom_audience_ids": json.dumps([audience_id])},
        )
        assert answer["code"] == 0, answer
        return answer["data"]["list"][0]["audience_details"]["cover_num"]


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    emu = Emulator(app_id=APP_ID, app_secret=APP_SECRET).start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(server: Emulator) -> Emulator:
    server.reset()
    server.add_token(TOKEN, [ADV, OTHER_ADV])
    return server


@pytest.fixture
def api(emu: Emulator) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.session.close()


# ---- auth --------------------------------------------------------------------------------


def test_missing_token_answers_40104(api: Api) -> None:
    audience = api.create_audience()
    answer = api.post(MAPPING, mapping_body(audience, hashes("a", 1)), token=None)
    assert answer["code"] == 40104
    assert answer["message"] == "Access token is empty"
    assert api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET}, token=None)[
        "code"
    ] == (40104)
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()


def test_unknown_and_revoked_tokens_answer_40105(api: Api) -> None:
    audience = api.create_audience()
    assert api.post(MAPPING, mapping_body(audience, hashes("a", 1)), token="nope")["code"] == 40105

    assert api.admin("POST", "/_admin/tokens", {"token": "tok-2", "advertiser_ids": [ADV]}).ok
    assert api.post(MAPPING, mapping_body(audience, hashes("a", 1)), token="tok-2")["code"] == 0
    assert api.admin("POST", "/_admin/tokens/revoke", {"token": "tok-2"}).ok
    answer = api.post(MAPPING, mapping_body(audience, hashes("b", 1)), token="tok-2")
    assert answer["code"] == 40105
    assert "revoked" in answer["message"]
    assert api.emu.members(audience)["EMAIL_SHA256"] == set(hashes("a", 1))


def test_advertiser_not_granted_answers_40001(api: Api) -> None:
    answer = api.post(
        CREATE,
        {"advertiser_id": FOREIGN_ADV, "action": "create", "custom_audience_name": "x"},
    )
    assert answer["code"] == 40001
    assert FOREIGN_ADV in answer["message"]
    audience = api.create_audience()
    body = mapping_body(audience, hashes("a", 2), advertiser_id=FOREIGN_ADV)
    assert api.post(MAPPING, body)["code"] == 40001
    params = {"advertiser_id": FOREIGN_ADV, "custom_audience_ids": json.dumps([audience])}
    assert api.get(AUDIENCE_GET, params)["code"] == 40001
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()


# ---- audiences ---------------------------------------------------------------------------


def test_create_audience_gives_fresh_numeric_ids(api: Api) -> None:
    first, second = api.create_audience("one"), api.create_audience("two")
    assert first.isdigit() and second.isdigit()
    assert first != second
    listed = api.admin("GET", "/_admin/audiences").json()
    assert {(a["audience_id"], a["name"], a["advertiser_id"]) for a in listed} == {
        (first, "one", ADV),
        (second, "two", ADV),
    }


def test_audience_name_must_be_1_to_70_chars(api: Api) -> None:
    def create(name: Any) -> dict[str, Any]:
        body = {"advertiser_id": ADV, "action": "create", "custom_audience_name": name}
        return api.post(CREATE, body)

    assert create("x" * 70)["code"] == 0
    too_long = create("x" * 71)
    assert too_long["code"] == 40002
    assert "70" in too_long["message"]
    assert create("")["code"] == 40002
    assert create(None)["code"] == 40002
    bad_action = api.post(
        CREATE, {"advertiser_id": ADV, "action": "delete", "custom_audience_name": "x"}
    )
    assert bad_action["code"] == 40002
    assert len(api.admin("GET", "/_admin/audiences").json()) == 1


def test_audience_limit_per_advertiser(api: Api) -> None:
    api.emu.set_faults(audience_limit=2)
    api.create_audience("a")
    api.create_audience("b")
    answer = api.post(
        CREATE, {"advertiser_id": ADV, "action": "create", "custom_audience_name": "c"}
    )
    assert answer["code"] == 40002
    assert answer["message"] == "The number of custom audiences has reached the limit (2)"
    api.create_audience("other", advertiser_id=OTHER_ADV)  # the limit is per advertiser


# ---- mapping -----------------------------------------------------------------------------


def test_mapping_add_then_delete_end_state(api: Api) -> None:
    audience = api.create_audience()
    a, b, c, absent = hashes("m", 4)
    assert api.post(MAPPING, mapping_body(audience, [a, b, c]))["code"] == 0
    assert api.post(MAPPING, mapping_body(audience, [a, b]))["code"] == 0  # re-add is a no-op
    answer = api.post(MAPPING, mapping_body(audience, [b, absent], action="delete"))
    assert answer["code"] == 0
    assert answer["data"] == {}
    assert api.emu.members(audience)["EMAIL_SHA256"] == {a, c}
    over_http = api.admin("GET", f"/_admin/audiences/{audience}/members").json()
    assert over_http["EMAIL_SHA256"] == sorted([a, c])
    assert over_http["PHONE_SHA256"] == []


def test_mapping_multi_schema_rows_skip_empty_slots(api: Api) -> None:
    audience = api.create_audience()
    e1, e2, p1, p2 = hashes("s", 4)
    slot = {"audience_ids": [audience]}
    body = {
        "advertiser_ids": [ADV],
        "action": "add",
        "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
        "batch_data": [
            [{"id": e1, **slot}, {}],
            [{}, {"id": p1, **slot}],
            [{"id": e2, **slot}, {"id": p2, **slot}],
        ],
    }
    assert api.post(MAPPING, body)["code"] == 0
    held = api.emu.members(audience)
    assert held["EMAIL_SHA256"] == {e1, e2}
    assert held["PHONE_SHA256"] == {p1, p2}


def test_mapping_md5_schema_wants_32_hex(api: Api) -> None:
    audience = api.create_audience()
    md5 = hashlib.md5(b"idfa").hexdigest()
    assert api.post(MAPPING, mapping_body(audience, [md5], schema="IDFA_MD5"))["code"] == 0
    wrong = api.post(MAPPING, mapping_body(audience, [sha("x")], schema="IDFA_MD5"))
    assert wrong["code"] == 40002
    assert api.emu.members(audience)["IDFA_MD5"] == {md5}


def test_one_bad_hash_applies_nothing(api: Api) -> None:
    audience = api.create_audience()
    kept = hashes("keep", 3)
    assert api.post(MAPPING, mapping_body(audience, kept))["code"] == 0
    for bad in (sha("x").upper(), sha("x")[:63], "not-a-hash"):
        rows = [*hashes("new", 2), bad]
        add = api.post(MAPPING, mapping_body(audience, rows))
        assert add["code"] == 40002
        assert "index 2" in add["message"]
        delete = api.post(MAPPING, mapping_body(audience, [kept[0], bad], action="delete"))
        assert delete["code"] == 40002
        assert "index 1" in delete["message"]
    assert api.emu.members(audience)["EMAIL_SHA256"] == set(kept)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "replace"),
        ("action", None),
        ("id_schema", ["EMAIL"]),
        ("id_schema", []),
        ("advertiser_ids", ADV),
        ("advertiser_ids", [ADV, OTHER_ADV]),
        ("batch_data", []),
    ],
)
def test_mapping_bad_shape_answers_40002(api: Api, field: str, value: Any) -> None:
    audience = api.create_audience()
    body = mapping_body(audience, hashes("a", 2))
    body[field] = value
    assert api.post(MAPPING, body)["code"] == 40002
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()


def test_unknown_or_foreign_audience_answers_40007(api: Api) -> None:
    mine = api.create_audience()
    theirs = api.create_audience(advertiser_id=OTHER_ADV)
    answer = api.post(MAPPING, mapping_body("123", hashes("a", 1)))
    assert answer["code"] == 40007
    assert answer["message"].startswith("Audience not found")
    assert api.post(MAPPING, mapping_body(theirs, hashes("a", 1)))["code"] == 40007
    body = mapping_body(mine, hashes("a", 2))
    body["batch_data"][1][0]["audience_ids"] = ["999999"]  # one good audience, one unknown
    assert api.post(MAPPING, body)["code"] == 40007
    assert api.emu.members(mine)["EMAIL_SHA256"] == set()
    assert api.emu.members(theirs)["EMAIL_SHA256"] == set()


def test_batch_over_max_answers_40061(api: Api) -> None:
    api.emu.set_faults(max_batch=5)
    audience = api.create_audience()
    answer = api.post(MAPPING, mapping_body(audience, hashes("a", 6)))
    assert answer["code"] == 40061
    assert answer["message"] == "Batch size exceeds the limit"
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()
    assert api.post(MAPPING, mapping_body(audience, hashes("a", 5)))["code"] == 0
    assert len(api.emu.members(audience)["EMAIL_SHA256"]) == 5
    assert api.emu.stats()["max_batch_rows"] == 6


def test_warmup_window_answers_40007_not_ready(api: Api) -> None:
    api.emu.set_faults(warmup_seconds=0.4)
    audience = api.create_audience()
    answer = api.post(MAPPING, mapping_body(audience, hashes("a", 1)))
    assert answer["code"] == 40007
    assert "not ready" in answer["message"]
    time.sleep(0.45)
    assert api.post(MAPPING, mapping_body(audience, hashes("a", 1)))["code"] == 0


# ---- faults ------------------------------------------------------------------------------


def test_qps_cap_answers_40100_per_advertiser(api: Api) -> None:
    api.emu.set_faults(qps_cap=3)
    mine = api.create_audience()
    theirs = api.create_audience(advertiser_id=OTHER_ADV)
    ids = hashes("q", 6)
    codes = [api.post(MAPPING, mapping_body(mine, [h]))["code"] for h in ids]
    assert codes == [0, 0, 0, 40100, 40100, 40100]
    other = api.post(MAPPING, mapping_body(theirs, ids[:1], advertiser_id=OTHER_ADV))
    assert other["code"] == 0
    assert api.emu.members(mine)["EMAIL_SHA256"] == set(ids[:3])
    time.sleep(1.05)  # the window slides
    assert api.post(MAPPING, mapping_body(mine, ids[3:4]))["code"] == 0
    assert api.emu.stats()["answers"][f"/open_api/v1.3{MAPPING} 40100"] == 3


def test_error_rate_gives_http_500_and_50000_and_applies_nothing(api: Api) -> None:
    api.emu.set_faults(error_rate=1.0, seed=7)
    audience = api.create_audience()
    statuses: list[int] = []
    codes: list[int] = []
    for h in hashes("e", 20):
        response = api.call("POST", MAPPING, json=mapping_body(audience, [h]))
        statuses.append(response.status_code)
        if response.status_code == 200:
            codes.append(response.json()["code"])
        else:
            with pytest.raises(ValueError):
                response.json()  # not JSON, like a proxy's error page
    assert set(statuses) == {200, 500}
    assert set(codes) == {50000}
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()
    answers = api.emu.stats()["answers"]
    assert answers[f"/open_api/v1.3{MAPPING} 500"] == statuses.count(500)
    assert answers[f"/open_api/v1.3{MAPPING} 50000"] == len(codes)


def test_timeout_rate_applies_then_answers_late(api: Api) -> None:
    api.emu.set_faults(timeout_rate=1.0, timeout_seconds=1.0)
    audience = api.create_audience()
    ids = hashes("t", 3)
    with pytest.raises(requests.Timeout):
        api.call("POST", MAPPING, json=mapping_body(audience, ids), timeout=0.3)
    assert api.emu.members(audience)["EMAIL_SHA256"] == set(ids)  # applied all the same
    api.emu.set_faults(timeout_rate=None)
    assert api.post(MAPPING, mapping_body(audience, ids))["code"] == 0  # the retry
    assert api.emu.members(audience)["EMAIL_SHA256"] == set(ids)


def test_poison_id_refuses_the_whole_request(api: Api) -> None:
    ids = hashes("p", 3)
    api.emu.set_faults(poison_ids=[ids[1]])
    audience = api.create_audience()
    answer = api.post(MAPPING, mapping_body(audience, ids))
    assert answer["code"] == 40002
    assert answer["message"] == "invalid id at index 1"
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()
    assert api.post(MAPPING, mapping_body(audience, [ids[0], ids[2]]))["code"] == 0


def test_latency_delays_answers(api: Api) -> None:
    api.emu.set_faults(latency_ms=200)
    started = time.monotonic()
    api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET})
    assert time.monotonic() - started >= 0.2


def test_faults_admin_partial_update_and_null_clears(api: Api) -> None:
    answer = api.admin("POST", "/_admin/faults", {"max_batch": 2, "qps_cap": 5})
    assert answer.status_code == 200
    assert answer.json()["max_batch"] == 2
    assert api.emu.faults.qps_cap == 5
    cleared = api.admin("POST", "/_admin/faults", {"qps_cap": None}).json()
    assert cleared["qps_cap"] is None
    assert cleared["max_batch"] == 2  # untouched by the partial update
    assert api.admin("POST", "/_admin/faults", {"nope": 1}).status_code == 400
    assert api.admin("POST", "/_admin/faults", {"error_rate": 2}).status_code == 400


# ---- cover_num ---------------------------------------------------------------------------


def test_cover_num_counts_ids_under_match_rate(api: Api) -> None:
    audience = api.create_audience()
    tail = sha("tail")[2:]
    # threshold 256 * 0.6 = 153.6: 0x00 and 0x99 (153) match, 0x9a (154) and 0xff do not
    emails = ["00" + tail, "99" + tail, "9a" + tail, "ff" + tail]
    assert api.post(MAPPING, mapping_body(audience, emails))["code"] == 0
    phone = "10" + tail
    assert api.post(MAPPING, mapping_body(audience, [phone], schema="PHONE_SHA256"))["code"] == 0
    assert api.cover_num(audience) == 3
    api.emu.set_faults(match_rate=1.0)
    assert api.cover_num(audience) == 5
    api.emu.set_faults(match_rate=0.0)
    assert api.cover_num(audience) == 0


def test_custom_audience_get_details(api: Api) -> None:
    first, second = api.create_audience("first"), api.create_audience("second")
    params = {"advertiser_id": ADV, "custom_audience_ids": json.dumps([first, second])}
    details = [item["audience_details"] for item in api.get(AUDIENCE_GET, params)["data"]["list"]]
    assert [(d["audience_id"], d["name"], d["is_valid"]) for d in details] == [
        (first, "first", True),
        (second, "second", True),
    ]
    assert all(d["create_time"] for d in details)
    bad = {"advertiser_id": ADV, "custom_audience_ids": "not json"}
    assert api.get(AUDIENCE_GET, bad)["code"] == 40002
    missing = {"advertiser_id": ADV, "custom_audience_ids": json.dumps(["424242"])}
    assert api.get(AUDIENCE_GET, missing)["code"] == 40007


# ---- OAuth -------------------------------------------------------------------------------


def test_oauth_exchange_good_then_reused(api: Api) -> None:
    body = {"auth_code": "code-1", "token": "tok-oauth", "advertiser_ids": [ADV, "7005"]}
    assert api.admin("POST", "/_admin/auth_codes", body).ok
    exchange = {"app_id": APP_ID, "secret": APP_SECRET, "auth_code": "code-1"}
    answer = api.post(OAUTH_TOKEN, exchange, token=None)
    assert answer["code"] == 0
    assert answer["data"]["access_token"] == "tok-oauth"
    assert answer["data"]["advertiser_ids"] == [ADV, "7005"]
    assert isinstance(answer["data"]["scope"], list)
    listed = api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET}, token="tok-oauth")
    assert {a["advertiser_id"] for a in listed["data"]["list"]} == {ADV, "7005"}

    reused = api.post(OAUTH_TOKEN, exchange, token=None)
    assert reused["code"] == 40002
    assert reused["message"] == "auth_code is invalid, expired or has been used"


def test_oauth_bad_secret_unknown_and_expired_codes(api: Api) -> None:
    api.emu.add_auth_code("code-2", "tok-x", [ADV])
    bad = api.post(
        OAUTH_TOKEN, {"app_id": APP_ID, "secret": "wrong", "auth_code": "code-2"}, token=None
    )
    assert bad["code"] == 40001
    assert bad["message"] == "App secret is invalid"
    unknown = {"app_id": APP_ID, "secret": APP_SECRET, "auth_code": "nope"}
    assert api.post(OAUTH_TOKEN, unknown, token=None)["code"] == 40002
    # a failed attempt does not burn the code
    good = {"app_id": APP_ID, "secret": APP_SECRET, "auth_code": "code-2"}
    assert api.post(OAUTH_TOKEN, good, token=None)["code"] == 0

    api.emu.add_auth_code("code-3", "tok-y", [ADV], ttl_seconds=0.05)
    time.sleep(0.1)
    expired = {"app_id": APP_ID, "secret": APP_SECRET, "auth_code": "code-3"}
    assert api.post(OAUTH_TOKEN, expired, token=None)["code"] == 40002
    assert api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET}, token="tok-y")[
        "code"
    ] == (40105)


def test_advertiser_get_lists_the_tokens_advertisers(api: Api) -> None:
    answer = api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET})
    assert answer["code"] == 0
    assert sorted(a["advertiser_id"] for a in answer["data"]["list"]) == [ADV, OTHER_ADV]
    assert all(a["advertiser_name"] for a in answer["data"]["list"])
    wrong = api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": "wrong"})
    assert wrong["code"] == 40001
    assert api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET}, token="bad")[
        "code"
    ] == (40105)


# ---- protocol ----------------------------------------------------------------------------


def test_unknown_path_and_bad_json(api: Api) -> None:
    missing = api.call("GET", "/no/such/thing/")
    assert missing.status_code == 404
    assert missing.json()["code"] == 40000
    bad_json = api.call(
        "POST", MAPPING, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 200
    assert bad_json.json()["code"] == 40000


def test_envelope_and_unique_request_ids(api: Api) -> None:
    answers = [api.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET}) for _ in range(5)]
    answers.append(api.post(MAPPING, mapping_body("1", hashes("a", 1)), token=None))
    for answer in answers:
        assert set(answer) == {"code", "message", "request_id", "data"}
    request_ids = [a["request_id"] for a in answers]
    assert len(set(request_ids)) == len(request_ids)


def test_keep_alive_reuses_the_connection(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.emu.port, timeout=5)
    try:
        path = f"/open_api/v1.3{ADVERTISER_GET}?app_id={APP_ID}&secret={APP_SECRET}"
        conn.request("GET", path, headers={"Access-Token": TOKEN})
        first = conn.getresponse()
        assert json.loads(first.read())["code"] == 0
        assert first.version == 11
        assert not first.will_close
        sock = conn.sock
        conn.request("GET", path, headers={"Access-Token": TOKEN})
        assert json.loads(conn.getresponse().read())["code"] == 0
        assert conn.sock is sock
    finally:
        conn.close()


# ---- stats and admin ---------------------------------------------------------------------


def test_stats_count_requests_answers_and_mapping_log(api: Api) -> None:
    audience = api.create_audience()
    api.post(MAPPING, mapping_body(audience, hashes("a", 3)))
    api.post(MAPPING, mapping_body(audience, hashes("a", 2), action="delete"))
    api.post(MAPPING, mapping_body(audience, ["bad"]))
    stats = api.admin("GET", "/_admin/stats").json()
    path = f"/open_api/v1.3{MAPPING}"
    assert stats["requests"][path] == 3
    assert stats["answers"][f"{path} 0"] == 2
    assert stats["answers"][f"{path} 40002"] == 1
    assert stats["mapping_calls"] == 3
    assert stats["mapping_rows"] == 6
    assert stats["max_batch_rows"] == 3
    log = stats["mapping_log"]
    assert [(e["action"], e["rows"], e["code"]) for e in log] == [
        ("add", 3, 0),
        ("delete", 2, 0),
        ("add", 1, 40002),
    ]
    assert all(e["audience_id"] == audience and e["advertiser_id"] == ADV for e in log)
    assert all(e["id_schema"] == "EMAIL_SHA256" and e["t"] > 0 for e in log)


def test_admin_audience_reset_empties_it(api: Api) -> None:
    audience = api.create_audience()
    api.post(MAPPING, mapping_body(audience, hashes("a", 4)))
    assert api.admin("POST", f"/_admin/audiences/{audience}/reset").ok
    assert api.emu.members(audience)["EMAIL_SHA256"] == set()
    sizes = api.admin("GET", "/_admin/audiences").json()[0]["sizes"]
    assert sizes["EMAIL_SHA256"] == 0
    assert api.admin("GET", "/_admin/audiences/404404/members").status_code == 404


def test_admin_reset_keeps_tokens_only(api: Api) -> None:
    audience = api.create_audience()
    api.post(MAPPING, mapping_body(audience, hashes("a", 4)))
    api.emu.set_faults(max_batch=2)
    assert api.admin("POST", "/_admin/reset").ok
    assert api.admin("GET", "/_admin/audiences").json() == []
    stats = api.admin("GET", "/_admin/stats").json()
    assert stats["mapping_calls"] == 0
    assert stats["mapping_log"] == []
    assert stats["requests"] == {}
    assert api.admin("GET", "/_admin/faults").json()["max_batch"] == 1000
    fresh = api.create_audience()  # the token survived
    assert fresh != audience  # ids are never reused
    with pytest.raises(KeyError):
        api.emu.members(audience)


# ---- lifecycle ---------------------------------------------------------------------------


def test_stop_closes_keep_alive_connections() -> None:
    emu = Emulator(app_id=APP_ID, app_secret=APP_SECRET).start()
    emu.add_token(TOKEN, [ADV])
    client = Api(emu)
    assert client.get(ADVERTISER_GET, {"app_id": APP_ID, "secret": APP_SECRET})["code"] == 0
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        client.call("GET", ADVERTISER_GET, params={"app_id": APP_ID, "secret": APP_SECRET})
    client.session.close()


def test_runs_as_a_process_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.tiktok_emulator",
            "--port",
            "0",
            "--token",
            f"cli-token={ADV}",
            "--max-batch",
            "2",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "emulator did not start"
        line = proc.stdout.readline().strip()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        base = line.rsplit(" ", 1)[1] + "/open_api/v1.3"
        headers = {"Access-Token": "cli-token"}
        created = requests.post(
            base + CREATE,
            json={"advertiser_id": ADV, "action": "create", "custom_audience_name": "cli"},
            headers=headers,
            timeout=5,
        ).json()
        assert created["code"] == 0
        body = mapping_body(created["data"]["audience_id"], hashes("c", 3))
        answer = requests.post(base + MAPPING, json=body, headers=headers, timeout=5).json()
        assert answer["code"] == 40061  # --max-batch 2 took effect
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
