"""Notifications leave through Pub/Sub and reach the chat webhook from the `notify` function.

An operation never talks to the webhook: its decision's notification is written with the
decision (shared/store.py), published to NOTIFY_TOPIC once that write commits
(`publish_notifications`, a few milliseconds), and delivered by `notify`. A webhook that answers
garbage, stalls or is down fails only the delivery, which Pub/Sub retries with backoff and
dead-letters at last; it never changes an operation's answer, exit code or latency.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.events import MalformedEvent, pubsub_message
from shared.logs import Report
from shared.notifications import ChatFormat, Context, Notification, plain_text, render

if TYPE_CHECKING:
    from shared.pubsub import Publisher
    from shared.store import RolloutStore

WEBHOOK_TIMEOUT_S = 10.0  # well inside the notify function's timeout: a stalled webhook is retried
PUBLISH_TIMEOUT_S = 5.0  # an operation waits at most this for Pub/Sub; the outbox keeps the rest
# A committed notification not published after this long is re-sent by a checkpoint.
REPUBLISH_AFTER = timedelta(seconds=60)


class WebhookError(RuntimeError):
    """The webhook did not take the message (refused, unreachable, timed out, or answered
    something that is not HTTP): the delivery fails and Pub/Sub retries it."""


class NotificationBusy(RuntimeError):
    """Another delivery of the same notification is posting it right now: retried later."""


# --- Sending side: the operations ---------------------------------------------------------


def notification_sink(publisher: Publisher, topic: str) -> Any:
    """The store's sink (RolloutStore(notifications=...)): publish each committed notification
    to `topic` and mark it published. A failure is logged by the store and left to the outbox."""

    def publish(store: RolloutStore, notes: Sequence[Notification]) -> None:
        for note in notes:
            publisher.publish_json(topic, note.as_message(), timeout_s=PUBLISH_TIMEOUT_S, kind=note.kind)
            store.mark_notification_published(note.id)

    return publish


def republish_notifications(store: RolloutStore, publisher: Publisher, topic: str, now: datetime) -> int:
    """Publish the outbox's notifications that committed but were never published (the process
    stopped in between, or Pub/Sub refused): the checkpoint calls this every run."""
    sent = 0
    for note in store.unpublished_notifications(older_than=now - REPUBLISH_AFTER):
        publisher.publish_json(topic, note.as_message(), timeout_s=PUBLISH_TIMEOUT_S, kind=note.kind)
        store.mark_notification_published(note.id)
        sent += 1
    return sent


# --- Delivering side: the notify function --------------------------------------------------


class Webhook:
    """A chat incoming webhook (Slack or Google Chat): one POST of a JSON body."""

    def __init__(self, url: str, fmt: ChatFormat = "slack", timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
        self.url = url
        self.format: ChatFormat = fmt
        self._timeout_s = timeout_s

    def post(self, body: dict[str, Any]) -> int:
        """The HTTP status (2xx) once the webhook answered; WebhookError otherwise. A 2xx with
        a body cut short still counts as taken: the webhook answered that it had the message."""
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            method="POST",
        )
        try:
            response = urllib.request.urlopen(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            raise WebhookError(f"the webhook answered HTTP {exc.code}") from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise WebhookError(f"the webhook did not answer: {exc!r}") from None
        except Exception as exc:  # anything else a broken peer can provoke is a failed delivery too
            raise WebhookError(f"the webhook answer could not be read: {exc!r}") from None
        with response:
            status = response.status
            # The status line is the answer: a body cut short or garbled does not undo it.
            with contextlib.suppress(Exception):
                response.read(64 * 1024)
        if not 200 <= status < 300:
            raise WebhookError(f"the webhook answered HTTP {status}")
        return status


@dataclass(frozen=True)
class NotifySettings:
    webhook: Webhook | None
    dashboard_url: str = ""


def handle_notification(
    data: Any, *, event_id: str, event_time: str, settings: NotifySettings, store: RolloutStore
) -> Report:
    """Deliver one notification to the webhook, at most once per decision as far as it can tell:
    'delivered' markers and a lease on the outbox entry. Raises (Pub/Sub retries) when the
    webhook did not take it or another delivery holds it; a malformed message is acknowledged."""
    try:
        message = pubsub_message(data, fallback_id=event_id, fallback_time=event_time)
        note = Notification.from_message(message.json())
    except (MalformedEvent, ValueError) as exc:
        return Report("WARNING", f"notification dropped: {exc}", event_id=event_id, outcome="malformed")
    ids = {"event_id": event_id, "notification": note.id, "rollout": note.rollout, "kind": note.kind}
    if settings.webhook is None:
        return Report("INFO", "no chat webhook configured: not sent", outcome="no_webhook", **ids)
    state = store.claim_notification(note.id)
    if state == "unknown":
        # Every notification canary-guard sends has an outbox entry that outlives its
        # redeliveries: one without is not ours (or long expired), and is never posted.
        return Report("WARNING", "not in the outbox: not posted", outcome="unknown", **ids)
    if state == "delivered":
        return Report("INFO", "already delivered; nothing sent again", outcome="duplicate", **ids)
    if state == "busy":
        raise NotificationBusy(f"notification {note.id} is being delivered by another attempt")
    rollout = store.get(note.rollout)
    ctx = Context(
        service=rollout.service if rollout else "",
        canary_revision=rollout.canary_revision if rollout else "",
        stable_revision=rollout.stable_revision if rollout else "",
        dashboard_url=settings.dashboard_url,
    )
    try:
        status = settings.webhook.post(render(note, ctx, settings.webhook.format))
    except WebhookError:
        store.release_notification(note.id)
        raise
    store.mark_notification_delivered(note.id)
    text = plain_text(note, ctx)
    return Report("NOTICE", f"notification delivered (HTTP {status})", outcome="delivered", text=text, **ids)
