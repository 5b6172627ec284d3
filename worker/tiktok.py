"""TikTok Marketing API client: one requests.Session per process, answers classified by one table.

Exceptions mirror the answer classes of DESIGN.md (`RateLimited`, `Transient`, `AuthFailed`,
`BatchTooLarge`, `BadRequest`, all `TikTokError`), so callers catch at the level they handle.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

AUDIENCE_NAME_MAX = 70


class AnswerClass(enum.StrEnum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    AUTH = "auth"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"


# TikTok answer code -> class. Ranges (51xxx, 52xxx, other 4xxxx) are handled in `classify`.
ANSWER_CODES: dict[int, AnswerClass] = {
    0: AnswerClass.OK,
    20001: AnswerClass.OK,  # partial success: logged by the caller
    40100: AnswerClass.RATE_LIMITED,
    40132: AnswerClass.RATE_LIMITED,
    61000: AnswerClass.RATE_LIMITED,
    50000: AnswerClass.TRANSIENT,
    50002: AnswerClass.TRANSIENT,
    60001: AnswerClass.TRANSIENT,
    40001: AnswerClass.AUTH,
    40102: AnswerClass.AUTH,
    40104: AnswerClass.AUTH,
    40105: AnswerClass.AUTH,
    40130: AnswerClass.AUTH,
    40061: AnswerClass.TOO_LARGE,
    40000: AnswerClass.BAD_REQUEST,
    40002: AnswerClass.BAD_REQUEST,
    40007: AnswerClass.BAD_REQUEST,
    40062: AnswerClass.BAD_REQUEST,
}
# HTTP statuses that decide the class before the body is read.
HTTP_CLASSES: dict[int, AnswerClass] = {429: AnswerClass.RATE_LIMITED}


def classify(http_status: int, code: int | None) -> AnswerClass:
    """The answer class of one TikTok answer (HTTP status and body `code` together)."""
    if http_status in HTTP_CLASSES:
        return HTTP_CLASSES[http_status]
    if http_status >= 500 or code is None:
        return AnswerClass.TRANSIENT
    if code in ANSWER_CODES:
        return ANSWER_CODES[code]
    if 51000 <= code < 53000:
        return AnswerClass.TRANSIENT
    if 40000 <= code < 50000:
        return AnswerClass.BAD_REQUEST
    return AnswerClass.TRANSIENT


@dataclass(frozen=True, slots=True)
class Answer:
    http_status: int
    code: int | None
    message: str
    request_id: str | None
    data: dict[str, Any]
    retry_after: float | None = None

    @property
    def answer_class(self) -> AnswerClass:
        return classify(self.http_status, self.code)


class TikTokError(Exception):
    """A TikTok call that did not succeed; carries what TikTok said."""

    answer_class: AnswerClass = AnswerClass.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.http_status = http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class RateLimited(TikTokError):
    answer_class = AnswerClass.RATE_LIMITED


class Transient(TikTokError):
    answer_class = AnswerClass.TRANSIENT


class AuthFailed(TikTokError):
    answer_class = AnswerClass.AUTH


class BatchTooLarge(TikTokError):
    answer_class = AnswerClass.TOO_LARGE


class BadRequest(TikTokError):
    answer_class = AnswerClass.BAD_REQUEST


ERRORS: dict[AnswerClass, type[TikTokError]] = {
    AnswerClass.RATE_LIMITED: RateLimited,
    AnswerClass.TRANSIENT: Transient,
    AnswerClass.AUTH: AuthFailed,
    AnswerClass.TOO_LARGE: BatchTooLarge,
    AnswerClass.BAD_REQUEST: BadRequest,
}


def audience_name(name: str) -> str:
    """TikTok's rule: names over 70 characters are cut to 67 plus '...'."""
    return name if len(name) <= AUDIENCE_NAME_MAX else name[: AUDIENCE_NAME_MAX - 3] + "..."


_local = threading.local()


def _session(pool_size: int) -> requests.Session:
    # One Session (connection pool) per process, per thread for thread pools: Session objects
    # are not documented as thread-safe.
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # requests reads proxies, CA bundle and .netrc from the environment on every call (a
        # tenth of a worker's CPU per batch): `_environment` reads them once per origin instead.
        session.trust_env = False
        _local.session = session
    return session


_ENV_SETTINGS = "_tiktok_env_settings"


def _environment(session: requests.Session, url: str) -> dict[str, Any]:
    """What requests would take from the environment for `url` (proxies, verify, cert, netrc
    auth), read once per origin, for sessions made by `_session` (trust_env off); {} for others."""
    if session.trust_env:
        return {}  # requests reads the environment itself
    cache: dict[str, dict[str, Any]] = session.__dict__.setdefault(_ENV_SETTINGS, {})
    origin = "/".join(url.split("/", 3)[:3])
    found = cache.get(origin)
    if found is None:
        probe = requests.Session()  # trust_env on: exactly what requests would read
        found = probe.merge_environment_settings(url, {}, None, None, None)
        found.pop("stream", None)
        found["auth"] = requests.utils.get_netrc_auth(url)
        probe.close()
        cache[origin] = found
    return found


class TikTokClient:
    """Thin typed wrapper over the five endpoints tiktok-sync uses."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        app_id: str = "",
        app_secret: str = "",
        pool_size: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.app_id = app_id
        self.app_secret = app_secret
        self.pool_size = pool_size

    @classmethod
    def from_settings(cls, settings: Any) -> TikTokClient:
        return cls(
            settings.tiktok_api_base_url,
            connect_timeout=settings.tiktok_connect_timeout,
            read_timeout=settings.tiktok_read_timeout,
            app_id=settings.tiktok_app_id,
            app_secret=settings.tiktok_app_secret,
        )

    # -- transport -------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> Answer:
        """One HTTP call; network failures become `Transient`, answers are returned unclassified."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Access-Token"] = token
        data = (
            body
            if isinstance(body, bytes) or body is None
            else json.dumps(body, separators=(",", ":"))
        )
        url = f"{self.base_url}/{path.strip('/')}/"
        session = _session(self.pool_size)
        try:
            response = session.request(
                method,
                url,
                data=data,
                params=params,
                headers=headers,
                timeout=self.timeout,
                **_environment(session, url),
            )
        except requests.Timeout as error:
            raise Transient(f"TikTok did not answer in time ({type(error).__name__})") from None
        except requests.RequestException as error:
            raise Transient(f"cannot reach TikTok: {type(error).__name__}") from None
        retry_after = _retry_after(response.headers.get("Retry-After"))
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return Answer(
                response.status_code,
                None,
                f"HTTP {response.status_code}, body is not JSON",
                response.headers.get("X-Tt-Logid"),
                {},
                retry_after,
            )
        code = payload.get("code")
        return Answer(
            response.status_code,
            code if isinstance(code, int) else None,
            str(payload.get("message", "")),
            payload.get("request_id"),
            payload.get("data") or {},
            retry_after,
        )

    def checked(self, method: str, path: str, **kwargs: Any) -> Answer:
        """`call`, raising the exception of the answer's class unless it is OK."""
        answer = self.call(method, path, **kwargs)
        answer_class = answer.answer_class
        if answer_class is AnswerClass.OK:
            return answer
        raise ERRORS[answer_class](
            answer.message or f"HTTP {answer.http_status}",
            code=answer.code,
            request_id=answer.request_id,
            http_status=answer.http_status,
            retry_after=answer.retry_after,
        )

    # -- endpoints -------------------------------------------------------------------------
    def mapping(
        self,
        token: str,
        advertiser_id: str,
        audience_id: str,
        action: str,
        id_schema: str,
        hashes: Iterable[str],
    ) -> Answer:
        """POST /segment/mapping/ for one schema and one action; raises on anything but OK."""
        body = mapping_body(advertiser_id, audience_id, action, id_schema, hashes)
        return self.checked("POST", "segment/mapping", token=token, body=body)

    def create_audience(self, token: str, advertiser_id: str, name: str) -> str:
        answer = self.checked(
            "POST",
            "segment/audience",
            token=token,
            body={
                "advertiser_id": advertiser_id,
                "action": "create",
                "custom_audience_name": audience_name(name),
            },
        )
        return str(answer.data["audience_id"])

    def get_audiences(
        self, token: str, advertiser_id: str, audience_ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        answer = self.checked(
            "GET",
            "dmp/custom_audience/get",
            token=token,
            params={
                "advertiser_id": advertiser_id,
                "custom_audience_ids": json.dumps(list(audience_ids)),
            },
        )
        return [item.get("audience_details", item) for item in answer.data.get("list", [])]

    def exchange_auth_code(self, auth_code: str) -> dict[str, Any]:
        answer = self.checked(
            "POST",
            "oauth2/access_token",
            body={
                "app_id": self.app_id,
                "secret": self.app_secret,
                "auth_code": auth_code,
            },
        )
        return answer.data

    def advertisers(self, token: str) -> list[dict[str, Any]]:
        answer = self.checked(
            "GET",
            "oauth2/advertiser/get",
            token=token,
            params={"app_id": self.app_id, "secret": self.app_secret},
        )
        return list(answer.data.get("list", []))


def mapping_body(
    advertiser_id: str, audience_id: str, action: str, id_schema: str, hashes: Iterable[str]
) -> bytes:
    """The JSON body of one mapping call, built as bytes directly (hot path: 1000 rows a call)."""
    head = json.dumps(
        {"advertiser_ids": [advertiser_id], "action": action, "id_schema": [id_schema]},
        separators=(",", ":"),
    )[:-1]
    aud = json.dumps([audience_id])
    rows = ",".join(f'[{{"id":"{h}","audience_ids":{aud}}}]' for h in hashes)
    return f'{head},"batch_data":[{rows}]}}'.encode()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
