"""The worker consumer's channel close before Celery collects a lost broker connection."""

from __future__ import annotations

from typing import Any

import redis

from worker.consumer import close_default_channel


class FakeChannel:
    """Fails `failures` times with a connection error (a pending BRPOP read on a dead socket),
    then closes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.closed = False
        self.calls = 0

    def close(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise redis.ConnectionError("Connection closed by server.")
        self.closed = True


class FakeConnection:
    connection_errors = (redis.ConnectionError,)
    channel_errors = ()

    def __init__(self, channel: Any) -> None:
        self._default_channel = channel


def test_a_pending_read_is_finished_then_the_channel_is_closed() -> None:
    channel = FakeChannel(failures=1)
    assert close_default_channel(FakeConnection(channel))
    assert channel.closed and channel.calls == 2


def test_a_closed_or_missing_channel_is_left_alone() -> None:
    channel = FakeChannel(failures=0)
    channel.closed = True
    assert close_default_channel(FakeConnection(channel)) and channel.calls == 0
    assert close_default_channel(FakeConnection(None))


def test_a_channel_that_cannot_be_closed_is_reported_after_three_tries() -> None:
    channel = FakeChannel(failures=10)
    assert not close_default_channel(FakeConnection(channel))
    assert channel.calls == 3
