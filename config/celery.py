"""Celery configuration built from Settings: queues, routes, acks and the transport options.

The settings here are the ones DESIGN.md names as mattering: late acks, reject on worker loss,
prefetch 1, JSON only, task events for Flower, a visibility timeout above the longest task.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from config.settings import Settings

# task name -> queue: the one routing table.
TASK_QUEUES: dict[str, str] = {
    "tiktok.refresh_audience": "refresh",
    "tiktok.stage_part": "refresh",
    "tiktok.plan_batches": "refresh",
    "tiktok.send_batch": "tiktok",
    "tiktok.finalize": "tiktok",
    "tiktok.suppress": "tiktok",
    "tiktok.reconcile": "refresh",
    "tiktok.enqueue_due_refreshes": "refresh",
}
QUEUES = ("refresh", "tiktok")


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker,
        "result_backend": None,  # our results store is in Redis under our own keys
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        "task_default_queue": "refresh",
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_consumer": "worker.consumer:Consumer",  # survives a Redis crash (see there)
        "timezone": "UTC",
        "beat_schedule": {
            "reconcile": {
                "task": "tiktok.reconcile",
                "schedule": settings.reconcile_interval_seconds,
            },
            "enqueue-due-refreshes": {
                "task": "tiktok.enqueue_due_refreshes",
                "schedule": settings.schedule_interval_seconds,
            },
        },
    }
