"""The Celery app: `celery -A worker.app worker -Q refresh,tiktok`.

Configuration comes from config/ (Settings -> Celery config); tasks live in tasks/.
"""

from __future__ import annotations

from celery import Celery, signals

from config.celery import celery_config
from config.logging import configure_logging
from config.settings import get_settings

settings = get_settings()
app = Celery("tiktok_sync", include=["tasks.refresh", "tasks.send", "tasks.maintenance"])
app.config_from_object(celery_config(settings))


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    # Connecting this signal stops Celery from installing its own handlers: structlog owns them.
    configure_logging(settings.log_format, settings.log_level)


@signals.worker_process_init.connect
def _process_init(**_: object) -> None:
    configure_logging(settings.log_format, settings.log_level, force=True)
