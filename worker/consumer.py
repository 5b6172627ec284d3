"""The worker's consumer: Celery's own, made to survive losing the Redis broker.

Celery 5.7 handles a lost broker connection by collecting the connection (which drops the
transport's client) and then closing it. When the default channel was waiting on a BRPOP, the
collect's attempt to close it fails on that read and leaves it open; the later close then
restores the channel's unacked messages through a client that is gone, and the Redis transport
fails with `AttributeError` instead of a connection error: the worker stops with "Unrecoverable
error" (seen in the chaos run at the first Redis crash, in about one crash of eight). Closing the
channel here first, while the transport still has its client (a first attempt may only finish
the pending read), turns every failure into a connection error Celery ignores, and the later
close finds the channel closed. Nothing is lost by the failed restore: the messages stay in the
broker's unacked set and come back after the visibility timeout (the reconciler re-drives their
jobs sooner).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.worker.consumer import Consumer as CeleryConsumer

log = structlog.get_logger(__name__)


def close_default_channel(connection: Any) -> bool:
    """Close a kombu connection's default channel, ignoring connection and channel errors;
    True once it is closed (or there is none)."""
    channel = getattr(connection, "_default_channel", None)
    if channel is None:
        return True
    errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
    for _ in range(3):  # a pending BRPOP read, then the channel itself
        if getattr(channel, "closed", True):
            return True
        try:
            channel.close()
        except errors:
            continue
    return bool(getattr(channel, "closed", True))


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self.connection is not None:
            closed = close_default_channel(self.connection)
            log.info("broker_channel_closed", closed=closed, error=repr(exc))
        super().on_connection_error_after_connected(exc)
