"""Log lines: JSON in production with the job's ids bound once, readable console locally, and no
secret in any line (keys named like secrets, registered token values, tracebacks)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import config.logging as logging_config
from config.logging import REDACTED, configure_logging, register_secret

TOKEN = "tok-live-5f4e3d2c1b0a"


class Stream(io.StringIO):
    """stderr stand-in whose writes let other threads run, as a real file descriptor's do."""

    def write(self, text: str) -> int:
        time.sleep(0)
        return super().write(text)


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Configure logging onto a buffer; give back a function that returns the lines written."""
    buffer = Stream()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging_config._configured)
    structlog.contextvars.clear_contextvars()

    def setup(log_format: str = "json") -> Any:
        # Here, not in the fixture: pytest puts its own stderr back between setup and call.
        monkeypatch.setattr("sys.stderr", buffer)
        configure_logging(log_format, "INFO", force=True)
        return lambda: buffer.getvalue().splitlines()

    yield setup
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:], level, logging_config._configured = saved
    root.setLevel(level)


def bind_job() -> None:
    structlog.contextvars.bind_contextvars(
        job_id="job_1", batch_id="job_1-00002", audience_id="aud-1", destination_id="acme"
    )


def test_json_line_carries_the_bound_ids_and_request_id(lines: Any) -> None:
    read = lines("json")
    bind_job()
    structlog.get_logger("t").info("batch_retry", request_id="req-42", code=50000, failures=1)
    (line,) = read()
    record = json.loads(line)
    assert record["event"] == "batch_retry"
    assert record["level"] == "info" and record["timestamp"].endswith("Z")
    assert {k: record[k] for k in ("job_id", "batch_id", "audience_id", "destination_id")} == {
        "job_id": "job_1",
        "batch_id": "job_1-00002",
        "audience_id": "aud-1",
        "destination_id": "acme",
    }
    assert record["request_id"] == "req-42" and record["code"] == 50000


def test_secrets_are_redacted_by_key_value_and_in_tracebacks(lines: Any) -> None:
    read = lines("json")
    register_secret(TOKEN)
    log = structlog.get_logger("t")
    log.info("call", access_token=TOKEN, headers={"Access-Token": TOKEN, "Accept": "json"})
    log.warning("refused", error=f"TikTok refused {TOKEN} for advertiser 7")
    try:
        raise RuntimeError(f"bad token {TOKEN}")
    except RuntimeError:
        log.exception("send_failed")
    first, second, third = (json.loads(x) for x in read())
    assert first["access_token"] == REDACTED
    assert first["headers"] == {"Access-Token": REDACTED, "Accept": "json"}
    assert second["error"] == f"TikTok refused {REDACTED} for advertiser 7"
    assert "RuntimeError" in third["exception"] and REDACTED in third["exception"]
    assert TOKEN not in "\n".join(read())


def test_stdlib_lines_are_json_with_context_and_traceback(lines: Any) -> None:
    """Celery's own lines (stdlib logging) go through the same processors."""
    read = lines("json")
    register_secret(TOKEN)
    bind_job()
    logger = logging.getLogger("celery.app.trace")
    logger.info("Task %s succeeded", "tiktok.send_batch")
    try:
        raise ValueError(f"boom {TOKEN}")
    except ValueError:
        logger.exception("Task tiktok.send_batch raised unexpected")
    info, error = (json.loads(x) for x in read())
    assert info["event"] == "Task tiktok.send_batch succeeded" and info["job_id"] == "job_1"
    assert error["level"] == "error" and error["batch_id"] == "job_1-00002"
    assert "ValueError" in error["exception"] and "Traceback" in error["exception"]
    assert TOKEN not in "\n".join(read())


def test_console_format_is_readable_not_json(lines: Any) -> None:
    read = lines("console")
    bind_job()
    structlog.get_logger("t").info("batch_sent", size=1000, access_token=TOKEN)
    (line,) = read()
    with pytest.raises(ValueError):
        json.loads(line)
    assert "batch_sent" in line and "size=1000" in line and "job_id=job_1" in line
    assert TOKEN not in line and REDACTED in line


def test_lines_from_threads_never_interleave(lines: Any) -> None:
    """structlog and stdlib lines share one handler (one lock): a thread pool worker writes
    whole lines, never two JSON objects on one line."""
    import threading

    read = lines("json")
    structlog_log, stdlib_log = structlog.get_logger("t"), logging.getLogger("celery.worker")

    def write(n: int) -> None:
        for i in range(200):
            structlog_log.info("batch_sent", thread=n, i=i, pad="x" * 300)
            stdlib_log.info("Task tiktok.send_batch[%s-%s] succeeded", n, i)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = read()
    assert len(written) == 8 * 200 * 2
    assert all(isinstance(json.loads(line), dict) for line in written)
