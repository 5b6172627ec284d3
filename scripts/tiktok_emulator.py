"""In-memory emulator of the TikTok Marketing API v1.3 audience endpoints, with fault injection.

Serves real HTTP on loopback for tests, the demo and benchmarks; run it with
`python -m scripts.tiktok_emulator --port 8765` or start an `Emulator` in-process.

Choices where the brief is silent:
- Names over 70 characters are rejected (40002), not cut: a client must shorten them itself.
- Checks run in this order: token, JSON body, request shape, advertiser grant, QPS cap,
  error fault, rows, audiences, warm-up; the first failure answers.
- The QPS window counts admitted mapping requests only, so a client that keeps hammering is
  not locked out for ever.
- `reset()` puts the faults back to the values the emulator was started with (constructor or
  CLI flags), which are the built-in defaults when none were given. Tokens survive a reset;
  audiences, auth codes, QPS windows and stats do not. Audience ids are never reused.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import json
import math
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/open_api/v1.3"
ADMIN_PREFIX = "/_admin"
NAME_MAX_CHARS = 70
MAPPING_LOG_MAX = 200_000

_HEX64 = re.compile(r"[0-9a-f]{64}").fullmatch
_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_HEX_LINES = {
    64: re.compile(r"(?:[0-9a-f]{64}\n)*[0-9a-f]{64}").fullmatch,
    32: re.compile(r"(?:[0-9a-f]{32}\n)*[0-9a-f]{32}").fullmatch,
}
# One table: id_schema -> hash check.
ID_SCHEMAS: dict[str, Callable[[str], Any]] = {
    "EMAIL_SHA256": _HEX64,
    "PHONE_SHA256": _HEX64,
    "IDFA_SHA256": _HEX64,
    "AAID_SHA256": _HEX64,
    "IDFA_MD5": _HEX32,
    "AAID_MD5": _HEX32,
}
MAPPING_ACTIONS = frozenset({"add", "delete"})
OAUTH_SCOPE = [1, 2, 3, 4]

PATH_CREATE = API_PREFIX + "/segment/audience/"
PATH_MAPPING = API_PREFIX + "/segment/mapping/"
PATH_AUDIENCE_GET = API_PREFIX + "/dmp/custom_audience/get/"
PATH_OAUTH_TOKEN = API_PREFIX + "/oauth2/access_token/"
PATH_ADVERTISER_GET = API_PREFIX + "/oauth2/advertiser/get/"

_AUDIENCE_ADMIN = re.compile(r"/_admin/audiences/([^/]+)/(members|reset)/?")


class ApiError(Exception):
    """A TikTok-style error answer: HTTP status (200 for most) plus a business `code`."""

    def __init__(self, code: int, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class AdminError(Exception):
    """A bad admin call: answered with this HTTP status and `{"error": message}`."""

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


@dataclasses.dataclass(frozen=True)
class Faults:
    """What the emulator does wrong on purpose, and its limits. Replaced whole on every change."""

    qps_cap: float | None = None  # mapping calls per advertiser per sliding second
    latency_ms: float = 0.0  # sleep before answering every API request
    error_rate: float = 0.0  # share of mapping calls answering HTTP 500 or code 50000
    timeout_rate: float = 0.0  # share of mapping calls that apply, then answer late
    timeout_seconds: float = 10.0  # how late those answer
    poison_ids: frozenset[str] = frozenset()  # hashes a mapping call is refused for (40002)
    max_batch: int = 1000  # rows per mapping call before 40061
    match_rate: float = 0.6  # share of ids TikTok "matches" (cover_num)
    audience_limit: int = 400  # audiences per advertiser
    warmup_seconds: float = 0.0  # mapping on a younger audience answers 40007
    seed: int | None = None  # seed of the fault draws

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied; None puts a field back to its built-in default."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in changes.items():
            values[name] = fields[name].default if value is None else _coerce_fault(name, value)
        return dataclasses.replace(self, **values)

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["poison_ids"] = sorted(self.poison_ids)
        return out


def _coerce_fault(name: str, value: Any) -> Any:
    """Type and range check of one fault value (admin JSON and CLI both land here)."""
    if name == "poison_ids":
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError("poison_ids must be a list of hashes")
        return frozenset(str(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if name in ("max_batch", "audience_limit", "seed"):
        if not float(value).is_integer():
            raise ValueError(f"{name} must be an integer")
        value = int(value)
        if name != "seed" and value < 1:
            raise ValueError(f"{name} must be at least 1")
        return value
    value = float(value)
    if name in ("error_rate", "timeout_rate", "match_rate") and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")
    if name == "qps_cap" and value <= 0:
        raise ValueError("qps_cap must be positive (null removes the cap)")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


@dataclasses.dataclass
class _Audience:
    audience_id: str
    advertiser_id: str
    name: str
    created_at: float  # epoch, for display
    created_mono: float  # monotonic, for the warm-up window
    members: dict[str, set[str]]


@dataclasses.dataclass
class _AuthCode:
    token: str
    advertiser_ids: list[str]
    expires_mono: float
    used: bool = False


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    delay_seconds: float = 0.0  # sleep after the work, before writing (timeout fault)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _id_str(value: Any) -> str | None:
    """TikTok ids are numeric strings; accept JSON ints too. None when it is neither."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class Emulator:
    """A TikTok Marketing API v1.3 emulator serving on `host:port` from a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = "test-app",
        app_secret: str = "test-secret",
        **faults: Any,
    ) -> None:
        self.host = host
        self._port = port
        self.app_id = app_id
        self.app_secret = app_secret
        self._initial_faults = Faults().updated(faults)
        self._faults = self._initial_faults
        self._rng = random.Random(self._faults.seed)
        self._lock = threading.Lock()
        self._tokens: dict[str, frozenset[str]] = {}
        self._revoked: set[str] = set()
        self._audience_ids = itertools.count(100_000_001)  # never restarts: ids are not reused
        self._request_ids = itertools.count(1)
        self._request_prefix = uuid.uuid4().hex[:12]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._clear_state()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        server = _Server((self.host, self._port), _Handler)
        server.emulator = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency or timeout faults
        server.shutdown()
        # Keep-alive connections would otherwise go on being served by their threads.
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None and self._port == 0:
            raise RuntimeError("emulator not started: the port is chosen at start()")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + API_PREFIX

    # ---- in-process helpers (the admin endpoints call these) -------------------------------

    def add_token(self, token: str, advertiser_ids: list[str]) -> None:
        with self._lock:
            self._tokens[token] = frozenset(str(a) for a in advertiser_ids)
            self._revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)

    def add_auth_code(
        self, auth_code: str, token: str, advertiser_ids: list[str], ttl_seconds: float = 600
    ) -> None:
        code = _AuthCode(token, [str(a) for a in advertiser_ids], time.monotonic() + ttl_seconds)
        with self._lock:
            self._auth_codes[auth_code] = code

    def members(self, audience_id: str) -> dict[str, set[str]]:
        """Hashes held per id_schema (every schema present, possibly empty). KeyError if unknown."""
        with self._lock:
            audience = self._audiences[str(audience_id)]
            return {schema: set(held) for schema, held in audience.members.items()}

    def audiences(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "audience_id": a.audience_id,
                    "advertiser_id": a.advertiser_id,
                    "name": a.name,
                    "created_at": a.created_at,
                    "sizes": {schema: len(held) for schema, held in a.members.items()},
                }
                for a in self._audiences.values()
            ]

    def reset_audience(self, audience_id: str) -> None:
        """Empty one audience (TikTok lost the data). KeyError if unknown."""
        with self._lock:
            for held in self._audiences[str(audience_id)].members.values():
                held.clear()

    def set_faults(self, **faults: Any) -> None:
        """Partial update; None puts a fault back to its built-in default."""
        new = self._faults.updated(faults)
        with self._lock:
            self._faults = new
            if "seed" in faults:
                self._rng = random.Random(new.seed)

    @property
    def faults(self) -> Faults:
        return self._faults

    def stats(self, log_tail: int | None = None) -> dict[str, Any]:
        with self._lock:
            log = self._mapping_log
            if log_tail is None:
                entries = list(log)
            else:
                entries = list(itertools.islice(log, max(0, len(log) - log_tail), None))
            return {
                "requests": dict(self._requests),
                "answers": dict(self._answers),
                "mapping_calls": self._mapping_calls,
                "mapping_rows": self._mapping_rows,
                "max_batch_rows": self._max_batch_rows,
                "mapping_log": entries,
            }

    def reset(self) -> None:
        with self._lock:
            self._clear_state()
            self._faults = self._initial_faults
            self._rng = random.Random(self._faults.seed)

    def _clear_state(self) -> None:
        self._audiences: dict[str, _Audience] = {}
        self._audience_count: collections.Counter[str] = collections.Counter()
        self._auth_codes: dict[str, _AuthCode] = {}
        self._windows: dict[str, collections.deque[float]] = {}
        self._requests: collections.Counter[str] = collections.Counter()
        self._answers: collections.Counter[str] = collections.Counter()
        self._mapping_calls = 0
        self._mapping_rows = 0
        self._max_batch_rows = 0
        self._mapping_log: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAPPING_LOG_MAX
        )

    # ---- request dispatch ------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        """Answer one HTTP request (called by the handler threads)."""
        parts = urlsplit(target)
        path = parts.path
        if path.startswith(ADMIN_PREFIX):
            return self._handle_admin(method, path, parts.query, body)
        if not path.endswith("/"):
            path += "/"  # TikTok's paths end with a slash; accept both
        faults = self._faults
        with self._lock:
            self._requests[path] += 1
        if faults.latency_ms > 0:
            self._stopping.wait(faults.latency_ms / 1000.0)
        route = _ROUTES.get(path)
        if route is None:
            return self._answer(path, ApiError(40000, f"Path not found: {path}", 404))
        want_method, func = route
        if method != want_method:
            return self._answer(path, ApiError(40000, f"Method {method} not allowed", 405))
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            return func(self, headers, query, body, faults)
        except ApiError as err:
            return self._answer(path, err)

    def _answer(
        self, path: str, result: ApiError | dict[str, Any], delay_seconds: float = 0.0
    ) -> _Response:
        """Build the TikTok envelope and count the answer."""
        if isinstance(result, ApiError):
            code, message, data, status = result.code, result.message, {}, result.http_status
        else:
            code, message, data, status = 0, "OK", result, 200
        with self._lock:
            self._answers[f"{path} {code}"] += 1
        envelope = {
            "code": code,
            "message": message,
            "request_id": f"{self._request_prefix}{next(self._request_ids):010d}",
            "data": data,
        }
        return _Response(status, _json_bytes(envelope), delay_seconds=delay_seconds)

    def _token_grant(self, headers: Any) -> frozenset[str]:
        token = headers.get("Access-Token")
        if not token:
            raise ApiError(40104, "Access token is empty")
        with self._lock:
            grant = self._tokens.get(token)
            if grant is None or token in self._revoked:
                raise ApiError(40105, "Access token is invalid or has been revoked")
        return grant

    @staticmethod
    def _check_grant(grant: frozenset[str], advertiser_id: str) -> None:
        if advertiser_id not in grant:
            raise ApiError(40001, f"No permission to operate advertiser {advertiser_id}")

    def _check_app(self, app_id: Any, secret: Any) -> None:
        if str(app_id) != self.app_id or secret != self.app_secret:
            raise ApiError(40001, "App secret is invalid")

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(40000, "Request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(40000, "Request body must be a JSON object")
        return data

    # ---- API endpoints ---------------------------------------------------------------------

    def _api_create_audience(
        self, headers: Any, query: dict[str, str], body: bytes, faults: Faults
    ) -> _Response:
        grant = self._token_grant(headers)
        req = self._json_body(body)
        advertiser_id = _id_str(req.get("advertiser_id"))
        if advertiser_id is None:
            raise ApiError(40002, "advertiser_id is required")
        self._check_grant(grant, advertiser_id)
        if req.get("action", "create") != "create":
            raise ApiError(40002, "action must be 'create'")
        name = req.get("custom_audience_name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(40002, "custom_audience_name is required")
        if len(name) > NAME_MAX_CHARS:
            raise ApiError(
                40002, f"custom_audience_name must be at most {NAME_MAX_CHARS} characters"
            )
        with self._lock:
            if self._audience_count[advertiser_id] >= faults.audience_limit:
                raise ApiError(
                    40002,
                    "The number of custom audiences has reached the limit "
                    f"({faults.audience_limit})",
                )
            audience_id = str(next(self._audience_ids))
            self._audiences[audience_id] = _Audience(
                audience_id=audience_id,
                advertiser_id=advertiser_id,
                name=name,
                created_at=time.time(),
                created_mono=time.monotonic(),
                members={schema: set() for schema in ID_SCHEMAS},
            )
            self._audience_count[advertiser_id] += 1
        return self._answer(PATH_CREATE, {"audience_id": audience_id})

    def _api_mapping(
        self, headers: Any, query: dict[str, str], body: bytes, faults: Faults
    ) -> _Response:
        log: dict[str, Any] = {
            "t": time.time(),
            "advertiser_id": None,
            "audience_id": None,
            "action": None,
            "id_schema": None,
            "rows": 0,
            "code": 0,
        }
        try:
            response, delay = self._mapping(headers, body, faults, log)
        except ApiError as err:
            log["code"] = 500 if err.http_status == 500 else err.code
            self._log_mapping(log)
            if err.http_status == 500:
                with self._lock:
                    self._answers[f"{PATH_MAPPING} 500"] += 1
                return _Response(500, b"Internal Server Error", "text/plain")
            return self._answer(PATH_MAPPING, err)
        self._log_mapping(log)
        return self._answer(PATH_MAPPING, response, delay_seconds=delay)

    def _log_mapping(self, log: dict[str, Any]) -> None:
        rows = log["rows"]
        with self._lock:
            self._mapping_calls += 1
            self._mapping_rows += rows
            if rows > self._max_batch_rows:
                self._max_batch_rows = rows
            self._mapping_log.append(log)

    def _mapping(
        self, headers: Any, body: bytes, faults: Faults, log: dict[str, Any]
    ) -> tuple[dict[str, Any], float]:
        grant = self._token_grant(headers)
        req = self._json_body(body)
        action = req.get("action")
        schemas = req.get("id_schema")
        batch_data = req.get("batch_data")
        advertiser_ids = req.get("advertiser_ids")
        log["action"] = action if isinstance(action, str) else None
        if isinstance(schemas, list) and all(isinstance(s, str) for s in schemas):
            log["id_schema"] = ",".join(schemas)
        if isinstance(batch_data, list):
            log["rows"] = len(batch_data)
            log["audience_id"] = _peek_audience(batch_data)

        if not isinstance(advertiser_ids, list) or len(advertiser_ids) != 1:
            raise ApiError(40002, "advertiser_ids must be a list with one advertiser id")
        advertiser_id = _id_str(advertiser_ids[0])
        if advertiser_id is None:
            raise ApiError(40002, "advertiser_ids must hold advertiser id strings")
        log["advertiser_id"] = advertiser_id
        self._check_grant(grant, advertiser_id)

        if faults.qps_cap is not None:
            now = time.monotonic()
            with self._lock:
                window = self._windows.setdefault(advertiser_id, collections.deque())
                while window and window[0] <= now - 1.0:
                    window.popleft()
                if len(window) >= faults.qps_cap:
                    raise ApiError(40100, "Too many requests")
                window.append(now)

        if faults.error_rate > 0 or faults.timeout_rate > 0:
            with self._lock:
                error_hit = faults.error_rate > 0 and self._rng.random() < faults.error_rate
                server_error = error_hit and self._rng.random() < 0.5
                timeout_hit = (
                    not error_hit
                    and faults.timeout_rate > 0
                    and self._rng.random() < faults.timeout_rate
                )
            if server_error:
                raise ApiError(500, "Internal Server Error", 500)
            if error_hit:
                raise ApiError(50000, "Internal error")
        else:
            timeout_hit = False

        if action not in MAPPING_ACTIONS:
            raise ApiError(40002, "action must be 'add' or 'delete'")
        if not isinstance(schemas, list) or not schemas:
            raise ApiError(40002, "id_schema must be a non-empty list")
        checks = []
        for schema in schemas:
            check = ID_SCHEMAS.get(schema) if isinstance(schema, str) else None
            if check is None:
                raise ApiError(40002, f"id_schema {schema!r} is not supported")
            checks.append(check)
        if len(set(schemas)) != len(schemas):
            raise ApiError(40002, "id_schema must not repeat a schema")
        if not isinstance(batch_data, list) or not batch_data:
            raise ApiError(40002, "batch_data must be a non-empty list")
        if len(batch_data) > faults.max_batch:
            raise ApiError(40061, "Batch size exceeds the limit")

        groups = _parse_rows(batch_data, schemas, checks, faults.poison_ids)

        with self._lock:
            audiences = []
            now_mono = time.monotonic()
            for audience_id, _schema in groups:
                audience = self._audiences.get(audience_id)
                if audience is None or audience.advertiser_id != advertiser_id:
                    raise ApiError(40007, f"Audience not found: {audience_id}")
                if now_mono - audience.created_mono < faults.warmup_seconds:
                    raise ApiError(40007, f"Audience is not ready: {audience_id}")
                audiences.append(audience)
            # Everything checked: apply the whole request at once.
            for audience, ((_aud, schema), hashes) in zip(audiences, groups.items(), strict=True):
                held = audience.members[schema]
                if action == "add":
                    held.update(hashes)
                else:
                    held.difference_update(hashes)
        return {}, (faults.timeout_seconds if timeout_hit else 0.0)

    def _api_audience_get(
        self, headers: Any, query: dict[str, str], body: bytes, faults: Faults
    ) -> _Response:
        grant = self._token_grant(headers)
        advertiser_id = query.get("advertiser_id")
        if not advertiser_id:
            raise ApiError(40002, "advertiser_id is required")
        self._check_grant(grant, advertiser_id)
        try:
            wanted = json.loads(query.get("custom_audience_ids", ""))
        except ValueError:
            wanted = None
        if not isinstance(wanted, list) or not wanted:
            raise ApiError(40002, "custom_audience_ids must be a JSON array of audience ids")
        # Deterministic stand-in for TikTok's matching: an id "matches" when its first byte, as
        # an int, is < 256 * match_rate. For lowercase hex that is a plain string comparison
        # with the first byte that does not match (fast on a million ids, under the lock).
        first_miss = math.ceil(256 * faults.match_rate)
        cutoff = format(first_miss, "02x") if first_miss < 256 else None
        items = []
        with self._lock:
            for raw in wanted:
                audience_id = _id_str(raw) or str(raw)
                audience = self._audiences.get(audience_id)
                if audience is None or audience.advertiser_id != advertiser_id:
                    raise ApiError(40007, f"Audience not found: {audience_id}")
                cover = sum(
                    len(held) if cutoff is None else sum(1 for h in held if h < cutoff)
                    for held in audience.members.values()
                )
                items.append(
                    {
                        "audience_details": {
                            "audience_id": audience_id,
                            "name": audience.name,
                            "cover_num": cover,
                            "is_valid": True,
                            "create_time": time.strftime(
                                "%Y-%m-%d %H:%M:%S", time.gmtime(audience.created_at)
                            ),
                        }
                    }
                )
        return self._answer(PATH_AUDIENCE_GET, {"list": items})

    def _api_oauth_token(
        self, headers: Any, query: dict[str, str], body: bytes, faults: Faults
    ) -> _Response:
        req = self._json_body(body)
        self._check_app(req.get("app_id"), req.get("secret"))
        auth_code = req.get("auth_code")
        with self._lock:
            code = self._auth_codes.get(auth_code) if isinstance(auth_code, str) else None
            if code is None or code.used or time.monotonic() >= code.expires_mono:
                raise ApiError(40002, "auth_code is invalid, expired or has been used")
            code.used = True
            # The exchange is what makes the token usable.
            self._tokens[code.token] = frozenset(code.advertiser_ids)
            self._revoked.discard(code.token)
        data = {
            "access_token": code.token,
            "advertiser_ids": list(code.advertiser_ids),
            "scope": list(OAUTH_SCOPE),
        }
        return self._answer(PATH_OAUTH_TOKEN, data)

    def _api_advertiser_get(
        self, headers: Any, query: dict[str, str], body: bytes, faults: Faults
    ) -> _Response:
        grant = self._token_grant(headers)
        self._check_app(query.get("app_id"), query.get("secret"))
        items = [{"advertiser_id": a, "advertiser_name": f"Advertiser {a}"} for a in sorted(grant)]
        return self._answer(PATH_ADVERTISER_GET, {"list": items})

    # ---- admin endpoints -------------------------------------------------------------------

    def _handle_admin(self, method: str, path: str, query: str, body: bytes) -> _Response:
        try:
            result = self._admin(method, path.rstrip("/"), query, body)
        except AdminError as err:
            return _Response(err.http_status, _json_bytes({"error": err.message}))
        return _Response(200, _json_bytes(result))

    def _admin(self, method: str, path: str, query: str, body: bytes) -> Any:
        def req() -> dict[str, Any]:
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                raise AdminError("body is not valid JSON") from None
            if not isinstance(data, dict):
                raise AdminError("body must be a JSON object")
            return data

        def field(data: dict[str, Any], name: str, kind: type) -> Any:
            value = data.get(name)
            if not isinstance(value, kind):
                raise AdminError(f"{name} is required ({kind.__name__})")
            return value

        if method == "POST" and path == "/_admin/tokens":
            data = req()
            self.add_token(field(data, "token", str), field(data, "advertiser_ids", list))
            return {"ok": True}
        if method == "POST" and path == "/_admin/tokens/revoke":
            self.revoke_token(field(req(), "token", str))
            return {"ok": True}
        if method == "POST" and path == "/_admin/auth_codes":
            data = req()
            ttl = data.get("ttl_seconds", 600)
            if isinstance(ttl, bool) or not isinstance(ttl, int | float):
                raise AdminError("ttl_seconds must be a number")
            self.add_auth_code(
                field(data, "auth_code", str),
                field(data, "token", str),
                field(data, "advertiser_ids", list),
                float(ttl),
            )
            return {"ok": True}
        if path == "/_admin/faults":
            if method == "POST":
                try:
                    self.set_faults(**req())
                except ValueError as err:
                    raise AdminError(str(err)) from None
            elif method != "GET":
                raise AdminError("method not allowed", 405)
            return self._faults.as_json()
        if method == "GET" and path == "/_admin/audiences":
            return self.audiences()
        if method == "GET" and path == "/_admin/stats":
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            tail = params.get("log_tail")
            try:
                return self.stats(log_tail=int(tail) if tail is not None else None)
            except ValueError:
                raise AdminError("log_tail must be an integer") from None
        if method == "POST" and path == "/_admin/reset":
            self.reset()
            return {"ok": True}
        match = _AUDIENCE_ADMIN.fullmatch(path)
        if match:
            audience_id, what = match.groups()
            try:
                if method == "GET" and what == "members":
                    return {s: sorted(held) for s, held in self.members(audience_id).items()}
                if method == "POST" and what == "reset":
                    self.reset_audience(audience_id)
                    return {"ok": True}
            except KeyError:
                raise AdminError(f"audience {audience_id} not found", 404) from None
        raise AdminError(f"no admin endpoint {method} {path}", 404)


def _parse_rows(
    batch_data: list[Any],
    schemas: list[str],
    checks: list[Callable[[str], Any]],
    poison: frozenset[str],
) -> dict[tuple[str, str], list[str]]:
    """Validate every row; group the hashes by (audience id, schema). Hot path: keep it lean."""
    if len(schemas) == 1:
        fast = _parse_rows_one_schema(batch_data, schemas[0], poison)
        if fast is not None:
            return fast
    width = len(schemas)
    groups: dict[tuple[str, str], list[str]] = {}
    for i, user in enumerate(batch_data):
        if type(user) is not list or len(user) != width:
            raise ApiError(40002, f"invalid row at index {i}: expected one slot per id_schema")
        for s, slot in enumerate(user):
            if type(slot) is not dict:
                raise ApiError(40002, f"invalid row at index {i}: a slot must be an object")
            if not slot:
                continue  # {} is a missing identifier for this schema
            h = slot.get("id")
            if type(h) is not str or not checks[s](h):
                raise ApiError(
                    40002, f"invalid id at index {i}: not a lowercase hex {schemas[s]} hash"
                )
            if poison and h in poison:
                raise ApiError(40002, f"invalid id at index {i}")
            audience_ids = slot.get("audience_ids")
            if type(audience_ids) is not list or not audience_ids:
                raise ApiError(40002, f"invalid row at index {i}: audience_ids is required")
            for raw in audience_ids:
                audience_id = raw if type(raw) is str else _id_str(raw)
                if not audience_id:
                    raise ApiError(40002, f"invalid row at index {i}: bad audience id")
                key = (audience_id, schemas[s])
                bucket = groups.get(key)
                if bucket is None:
                    bucket = groups[key] = []
                bucket.append(h)
    return groups


def _parse_rows_one_schema(
    batch_data: list[Any], schema: str, poison: frozenset[str]
) -> dict[tuple[str, str], list[str]] | None:
    """Fast path for what the workers send (one schema, the same audience list on every row).

    Checks all hashes with one regex over the joined ids. None means "not this shape or not
    valid": the caller then runs the row-by-row check, which names the bad row.
    """
    first = batch_data[0]
    if type(first) is not list or len(first) != 1 or type(first[0]) is not dict:
        return None
    audience_ids = first[0].get("audience_ids")
    if type(audience_ids) is not list or not audience_ids:
        return None
    if not all(type(a) is str and a for a in audience_ids):
        return None
    hashes: list[str] = []
    append = hashes.append
    for user in batch_data:
        if type(user) is not list or len(user) != 1:
            return None
        slot = user[0]
        if type(slot) is not dict or slot.get("audience_ids") != audience_ids:
            return None
        h = slot.get("id")
        if type(h) is not str:
            return None
        append(h)
    joined = "\n".join(hashes)
    width = 64 if schema.endswith("SHA256") else 32
    # Exact length rules out ids that smuggle a newline in.
    if len(joined) != len(hashes) * (width + 1) - 1 or not _HEX_LINES[width](joined):
        return None
    if poison and not poison.isdisjoint(hashes):
        return None
    return {(a, schema): hashes for a in audience_ids}


def _peek_audience(batch_data: list[Any]) -> str | None:
    """Best-effort audience id of a mapping call, for the log even when the call fails."""
    first = batch_data[0] if batch_data else None
    if isinstance(first, list):
        for slot in first:
            if isinstance(slot, dict) and isinstance(slot.get("audience_ids"), list):
                ids = slot["audience_ids"]
                if ids:
                    return _id_str(ids[0])
    return None


_ROUTES: dict[str, tuple[str, Callable[..., _Response]]] = {
    PATH_CREATE: ("POST", Emulator._api_create_audience),
    PATH_MAPPING: ("POST", Emulator._api_mapping),
    PATH_AUDIENCE_GET: ("GET", Emulator._api_audience_get),
    PATH_OAUTH_TOKEN: ("POST", Emulator._api_oauth_token),
    PATH_ADVERTISER_GET: ("GET", Emulator._api_advertiser_get),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many workers connect at once in benchmarks
    emulator: Emulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.emulator._conns_lock:
            self.server.emulator._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.emulator._conns_lock:
            self.server.emulator._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # silent: benchmarks send a million ids through here

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        emulator = self.server.emulator
        try:
            response = emulator.handle(method, self.path, self.headers, body)
        except Exception as err:  # a bug here must not kill the connection silently
            response = _Response(500, f"emulator error: {err!r}".encode(), "text/plain")
        if response.delay_seconds > 0:
            emulator._stopping.wait(response.delay_seconds)
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:
            self.close_connection = True  # the client gave up (timeout fault)


def _parse_token(spec: str) -> tuple[str, list[str]]:
    token, sep, advertisers = spec.partition("=")
    if not token or not sep or not advertisers:
        raise argparse.ArgumentTypeError("expected TOKEN=ADVERTISER_ID[,ADVERTISER_ID...]")
    return token, [a for a in advertisers.split(",") if a]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TikTok Marketing API v1.3 emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--app-id", default="test-app")
    parser.add_argument("--app-secret", default="test-secret")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        type=_parse_token,
        metavar="TOKEN=ADV[,ADV]",
        help="pre-register an access token (repeatable)",
    )
    parser.add_argument("--qps-cap", type=float)
    parser.add_argument("--latency-ms", type=float)
    parser.add_argument("--error-rate", type=float)
    parser.add_argument("--timeout-rate", type=float)
    parser.add_argument("--timeout-seconds", type=float)
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--match-rate", type=float)
    parser.add_argument("--audience-limit", type=int)
    parser.add_argument("--warmup-seconds", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--poison-id", action="append", dest="poison_ids", metavar="HASH")
    args = parser.parse_args(argv)

    fault_names = {f.name for f in dataclasses.fields(Faults)}
    faults = {k: v for k, v in vars(args).items() if k in fault_names and v is not None}
    try:
        emulator = Emulator(args.host, args.port, args.app_id, args.app_secret, **faults)
    except ValueError as err:
        parser.error(str(err))
    for token, advertisers in args.token:
        emulator.add_token(token, advertisers)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    emulator.start()
    print(f"emulator listening on {emulator.root_url}", flush=True)
    while not stop.wait(0.5):
        pass
    emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
