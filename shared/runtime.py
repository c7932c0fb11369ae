"""Per-process singletons for the entry points, built on first use.

A warm function instance reuses its clients; each entry point touches only the clients it
needs, so a cold start imports nothing else (the imports are inside the builders).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from shared.config import Settings, load_settings
from shared.policy import Policy, cached_policy

if TYPE_CHECKING:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.custom_metrics import MetricWriter
    from shared.clients.monitoring import MonitoringReader
    from shared.clients.pubsub import Publisher
    from shared.clients.store import RolloutStore
    from shared.handlers.notify import NotifySettings


@cache
def settings() -> Settings:
    return load_settings()


def policy() -> Policy:
    return cached_policy(str(settings().policy_file))


@cache
def store() -> RolloutStore:
    from datetime import timedelta

    from shared.clients.store import RolloutStore

    days = settings().decision_retention_days
    sink = None
    if settings().notify_topic:  # decisions the channel should hear of are published there
        from shared.handlers.notify import notification_sink

        sink = notification_sink(publisher(), settings().notify_topic)
    elif settings().chat_webhook_url:  # no topic (a local run): this process posts in the background
        from shared.handlers.notify import BackgroundDelivery

        sink = BackgroundDelivery(notify_settings().webhook, settings().dashboard_url)  # type: ignore[arg-type]
    return RolloutStore(
        settings().project, decision_retention=timedelta(days=days) if days else None, notifications=sink
    )


@cache
def traffic() -> CloudRunTraffic:
    from shared.clients.cloudrun import CloudRunTraffic

    return CloudRunTraffic(settings().cloud_run_endpoint)


@cache
def publisher() -> Publisher:
    from shared.clients.pubsub import Publisher

    return Publisher(settings().project)


@cache
def reader() -> MonitoringReader:
    from shared.clients.monitoring import MonitoringReader

    return MonitoringReader(settings().project, settings().monitoring_endpoint)


@cache
def writer() -> MetricWriter:
    from shared.clients.custom_metrics import MetricWriter

    return MetricWriter(settings().project, settings().monitoring_endpoint)


@cache
def notify_settings() -> NotifySettings:
    """The notify function's webhook (None without CHAT_WEBHOOK_URL) and links."""
    from shared.handlers.notify import NotifySettings, Webhook

    s = settings()
    webhook = Webhook(s.chat_webhook_url, s.chat_format) if s.chat_webhook_url else None  # type: ignore[arg-type]
    return NotifySettings(webhook, s.dashboard_url)
