"""Settings: defaults, validation, and errors that name the variable."""

from __future__ import annotations

import pytest

from config.settings import TIKTOK_PRODUCTION_URL, SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "BROKER_URL", "TIKTOK_API_BASE_URL", "TIKTOK_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.broker == s.results_url == s.redis_url
    assert s.tiktok_api_base_url == TIKTOK_PRODUCTION_URL
    assert s.tiktok_batch_size == 1000


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://h:1/2")
    monkeypatch.setenv("BROKER_URL", "redis://b:1/3")
    monkeypatch.setenv("TIKTOK_BATCH_SIZE", "250")
    s = load_settings()
    assert (s.redis_url, s.broker, s.results_url, s.tiktok_batch_size) == (
        "redis://h:1/2",
        "redis://b:1/3",
        "redis://h:1/2",
        250,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIKTOK_BATCH_SIZE", "abc"),
        ("TIKTOK_BATCH_SIZE", "0"),
        ("REDIS_URL", "http://x"),
        ("TIKTOK_API_BASE_URL", "ftp://x"),
        ("LOG_FORMAT", "xml"),
        ("MASS_DELETE_THRESHOLD", "2"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value.code)


def test_results_redis_may_only_be_the_state_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://h:1/2")
    monkeypatch.setenv("RESULTS_REDIS_URL", "redis://h:1/2")
    assert load_settings().results_url == "redis://h:1/2"
    monkeypatch.setenv("RESULTS_REDIS_URL", "redis://other:1/0")
    with pytest.raises(SettingsError, match="RESULTS_REDIS_URL must name the same Redis"):
        load_settings()


def test_time_limits_must_fit_the_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIBILITY_TIMEOUT", "600")
    monkeypatch.setenv("TASK_TIME_LIMIT", "900")
    monkeypatch.setenv("TASK_SOFT_TIME_LIMIT", "800")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "VISIBILITY_TIMEOUT" in str(info.value.code)
