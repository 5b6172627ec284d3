"""structlog set-up: JSON in production, readable console locally, secrets redacted.

Context (job_id, audience_id, destination_id, batch_id, request_id) is bound once per task
through contextvars and appears on every line the task writes.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEYS = frozenset(
    {"access_token", "token", "secret", "app_secret", "authorization", "password", "auth_code"}
)
_known_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is scrubbed from any log line that contains it."""
    if value and len(value) >= 6:
        with _secrets_lock:
            _known_secrets.add(value)


def _secret_key(key: object) -> bool:
    return str(key).lower().replace("-", "_") in _SECRET_KEYS  # "Access-Token" header too


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _known_secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: drop secret-named keys and scrub registered secret values."""
    for key in list(event_dict):
        if _secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


_configured = False


def configure_logging(
    log_format: str = "console", level: str = "INFO", force: bool = False
) -> None:
    """Configure structlog and the stdlib root logger (Celery's own lines go through it too)."""
    global _configured
    if _configured and not force:
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks become text first, so that redaction scrubs them too (stdlib lines included).
    tail: list[Any] = [structlog.processors.format_exc_info, redact_secrets]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # structlog hands its events to the stdlib handler below: one stream and one lock for every
    # line, so threads (pool workers) never interleave two lines.
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _configured = True
