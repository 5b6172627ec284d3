"""The TikTok client without a server: the answer-class table, and `call`/`mapping` over a fake
transport adapter (HTTP status, body code, Retry-After, timeouts) raising the right exception."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from worker import tiktok
from worker.tiktok import (
    ANSWER_CODES,
    AnswerClass,
    AuthFailed,
    BadRequest,
    BatchTooLarge,
    RateLimited,
    TikTokClient,
    TikTokError,
    Transient,
    classify,
    mapping_body,
)

# DESIGN.md's table, written out again independently of `ANSWER_CODES`.
TABLE = {
    AnswerClass.OK: [0, 20001],
    AnswerClass.RATE_LIMITED: [40100, 40132, 61000],
    AnswerClass.TRANSIENT: [50000, 50002, 51000, 51234, 52999, 60001],
    AnswerClass.AUTH: [40102, 40104, 40105, 40001, 40130],
    AnswerClass.TOO_LARGE: [40061],
    AnswerClass.BAD_REQUEST: [40000, 40002, 40062, 40007, 40999, 41000, 49999],
}


@pytest.mark.parametrize(
    ("expected", "code"), [(c, code) for c, codes in TABLE.items() for code in codes]
)
def test_codes_with_http_200_are_classified_by_the_table(expected: AnswerClass, code: int) -> None:
    assert classify(200, code) is expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, None, AnswerClass.RATE_LIMITED),
        (429, 0, AnswerClass.RATE_LIMITED),  # the HTTP status decides before the body
        (500, None, AnswerClass.TRANSIENT),
        (503, 0, AnswerClass.TRANSIENT),
        (502, 40002, AnswerClass.TRANSIENT),
        (200, None, AnswerClass.TRANSIENT),  # no readable code: not known to be final
    ],
)
def test_http_status_and_missing_code(status: int, code: int | None, expected: AnswerClass) -> None:
    assert classify(status, code) is expected


def test_every_mapped_code_has_an_exception_class() -> None:
    for answer_class in set(ANSWER_CODES.values()) - {AnswerClass.OK}:
        assert tiktok.ERRORS[answer_class].answer_class is answer_class


class FakeAdapter(BaseAdapter):
    """Answers every request with the next scripted (status, body, headers) or raises it."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__()
        self.script = script
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        status, body, headers = item
        response = requests.Response()
        response.status_code = status
        response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response.headers.update(headers)
        response.request = request
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdapter]:
    adapter = FakeAdapter([])
    session = requests.Session()
    session.mount("http://", adapter)
    monkeypatch.setattr(tiktok, "_session", lambda pool_size: session)
    yield adapter


def envelope(code: int, message: str = "", request_id: str = "req-1") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": request_id, "data": {}}


CLIENT = TikTokClient("http://tiktok.test/open_api/v1.3/")
MAP_ARGS = ("tok", "7001", "42", "add", "EMAIL_SHA256", ["a" * 64, "b" * 64])


def test_mapping_sends_the_documented_body_and_token(fake: FakeAdapter) -> None:
    fake.script.append((200, envelope(0, "OK"), {}))
    answer = CLIENT.mapping(*MAP_ARGS)
    assert answer.code == 0 and answer.request_id == "req-1"
    sent = fake.requests[0]
    assert sent.url == "http://tiktok.test/open_api/v1.3/segment/mapping/"
    assert sent.headers["Access-Token"] == "tok"
    assert json.loads(sent.body) == {
        "advertiser_ids": ["7001"],
        "action": "add",
        "id_schema": ["EMAIL_SHA256"],
        "batch_data": [
            [{"id": "a" * 64, "audience_ids": ["42"]}],
            [{"id": "b" * 64, "audience_ids": ["42"]}],
        ],
    }


@pytest.mark.parametrize(
    ("reply", "error", "code", "retry_after"),
    [
        ((200, envelope(40100, "Too many requests"), {}), RateLimited, 40100, None),
        ((429, b"slow down", {"Retry-After": "7"}), RateLimited, None, 7.0),
        ((200, envelope(40105, "revoked"), {}), AuthFailed, 40105, None),
        ((200, envelope(40061, "too large"), {}), BatchTooLarge, 40061, None),
        ((200, envelope(40002, "bad id"), {}), BadRequest, 40002, None),
        ((500, b"Internal Server Error", {}), Transient, None, None),
        ((200, envelope(51003, "busy"), {}), Transient, 51003, None),
    ],
)
def test_mapping_raises_the_exception_of_the_answer_class(
    fake: FakeAdapter,
    reply: Any,
    error: type[TikTokError],
    code: int | None,
    retry_after: float | None,
) -> None:
    fake.script.append(reply)
    with pytest.raises(error) as caught:
        CLIENT.mapping(*MAP_ARGS)
    assert type(caught.value) is error
    assert caught.value.code == code and caught.value.retry_after == retry_after
    assert caught.value.http_status == reply[0]
    if code is not None:
        assert caught.value.request_id == "req-1" and f"code={code}" in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        requests.ReadTimeout("slow"),
        requests.ConnectTimeout("no"),
        requests.ConnectionError("reset"),
    ],
)
def test_network_failures_are_transient(fake: FakeAdapter, failure: Exception) -> None:
    fake.script.append(failure)
    with pytest.raises(Transient):
        CLIENT.mapping(*MAP_ARGS)


def test_the_token_never_appears_in_an_error(fake: FakeAdapter) -> None:
    fake.script.append(requests.ConnectionError("Access-Token: tok refused"))
    with pytest.raises(Transient) as caught:
        CLIENT.mapping(*MAP_ARGS)
    assert "tok" not in str(caught.value)


def test_mapping_body_is_valid_json_for_many_rows() -> None:
    hashes = [f"{i:064x}" for i in range(1000)]
    body = json.loads(mapping_body("7001", "42", "delete", "PHONE_SHA256", hashes))
    assert body["action"] == "delete" and len(body["batch_data"]) == 1000
    assert body["batch_data"][999] == [{"id": hashes[999], "audience_ids": ["42"]}]
