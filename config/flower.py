"""Flower's options from Settings: `celery -A worker.app flower --conf=config/flower.py`.

Flower executes this file and reads its top-level names as options (command-line flags still
win). Basic auth comes from FLOWER_BASIC_AUTH (`user:password`, comma-separated for several);
without it Flower listens on loopback only, so an unauthenticated Flower is never exposed.
Flower's log lines go through our logging set-up (JSON or console, LOG_FORMAT).
"""

from config.logging import configure_logging
from config.settings import get_settings

_settings = get_settings()
# Flower's own lines through structlog too (tornado adds no handler once the root has one).
configure_logging(_settings.log_format, _settings.log_level, force=True)

port = _settings.flower_port
basic_auth = [a.strip() for a in _settings.flower_basic_auth.split(",") if a.strip()]
address = "" if basic_auth else "127.0.0.1"
max_tasks = 20_000  # tasks kept in memory: a few refreshes' worth of batches
purge_offline_workers = 600  # seconds before a dead worker leaves the dashboard
natural_time = False
