"""The worker's consumer: Celery's own, made to survive losing the Redis broker.

Celery 5.7 handles a lost broker connection by collecting the connection (which drops the
transport's client) and then closing it. Closing the default channel restores its unacked
messages, and with the client gone the Redis transport fails with `AttributeError` instead of a
connection error: the worker stops with "Unrecoverable error" at the first Redis crash or
restart whenever a message was delivered and not yet acked. Closing that channel first, while its
transport can still say that Redis is unreachable, turns the restore into the connection error
that Celery ignores. Nothing is lost by the skipped restore: the messages stay in the broker's
unacked set and come back after the visibility timeout (the reconciler re-drives their jobs
sooner).
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from celery.worker.consumer import Consumer as CeleryConsumer

log = structlog.get_logger(__name__)


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection: Any = self.connection
        channel = getattr(connection, "_default_channel", None)
        if channel is not None:
            errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
            with contextlib.suppress(*errors):
                channel.close()  # restores what it can; once closed it is not tried again
            log.info("broker_channel_closed", error=repr(exc))
        super().on_connection_error_after_connected(exc)
