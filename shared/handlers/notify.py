"""Notifications leave through Pub/Sub and reach the chat webhook from the `notify` function.

An operation never talks to the webhook: its decision's notification is written with the
decision (shared/clients/store.py), published to NOTIFY_TOPIC once that write commits
(`notification_sink`, a few milliseconds), and delivered by `notify`. A webhook that answers
garbage, stalls or is down fails only the delivery, which Pub/Sub retries with backoff and
dead-letters at last; it never changes an operation's answer, exit code or latency.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared.core.notifications import ChatFormat, Context, Notification, plain_text, render
from shared.events import MalformedEvent, pubsub_message
from shared.logs import Report, log

if TYPE_CHECKING:
    from shared.clients.pubsub import Publisher
    from shared.clients.store import RolloutStore

WEBHOOK_TIMEOUT_S = 10.0  # well inside the notify function's timeout: a stalled webhook is retried
PUBLISH_TIMEOUT_S = 5.0  # an operation waits at most this for Pub/Sub; the outbox keeps the rest
# A committed notification not published after this long is re-sent by a checkpoint.
REPUBLISH_AFTER = timedelta(seconds=60)
# Without NOTIFY_TOPIC (a local run), the deciding process posts in the background and keeps
# retrying a failing webhook this long, backing off up to BACKGROUND_MAX_BACKOFF_S.
BACKGROUND_GIVE_UP_S = 1800.0
BACKGROUND_MAX_BACKOFF_S = 60.0


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
        # Refused, timed out, not HTTP (http.client's IncompleteRead, BadStatusLine...): whatever a
        # broken peer provokes is a failed delivery, never an error of the caller.
        except Exception as exc:
            raise WebhookError(f"the webhook did not answer: {exc!r}") from None
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
    outcome, text = deliver(note, store, settings.webhook, settings.dashboard_url)
    if outcome == "unknown":
        # Every notification canary-guard sends has an outbox entry that outlives its
        # redeliveries: one without is not ours (or long expired), and is never posted.
        return Report("WARNING", "not in the outbox: not posted", outcome="unknown", **ids)
    if outcome == "duplicate":
        return Report("INFO", "already delivered; nothing sent again", outcome="duplicate", **ids)
    return Report("NOTICE", "notification delivered", outcome="delivered", text=text, **ids)


def deliver(
    note: Notification, store: RolloutStore, webhook: Webhook, dashboard_url: str = ""
) -> tuple[str, str]:
    """Post one notification at most once as far as the outbox can tell: ('delivered', text),
    ('duplicate' | 'unknown', ''), or WebhookError / NotificationBusy (try again later)."""
    state = store.claim_notification(note.id)
    if state == "unknown":
        return "unknown", ""
    if state == "delivered":
        return "duplicate", ""
    if state == "busy":
        raise NotificationBusy(f"notification {note.id} is being delivered by another attempt")
    rollout = store.get(note.rollout)
    ctx = Context(
        service=rollout.service if rollout else "",
        canary_revision=rollout.canary_revision if rollout else "",
        stable_revision=rollout.stable_revision if rollout else "",
        dashboard_url=dashboard_url,
    )
    try:
        webhook.post(render(note, ctx, webhook.format))
    except WebhookError:
        store.release_notification(note.id)
        raise
    store.mark_notification_delivered(note.id)
    return "delivered", plain_text(note, ctx)


class BackgroundDelivery:
    """The store's sink when there is a chat webhook but no NOTIFY_TOPIC (the documented local
    setup of earlier versions: CHAT_WEBHOOK_URL on the deciding functions). A daemon thread of
    the deciding process posts each notification, retrying a failing webhook with backoff for
    BACKGROUND_GIVE_UP_S; the operation never waits for it. What the process does not live to
    post stays unpublished in the outbox, for the next checkpoint's resend. In GCP, where a
    function's CPU stops with its answer, use NOTIFY_TOPIC and the notify function (Terraform
    does)."""

    def __init__(self, webhook: Webhook, dashboard_url: str = "") -> None:
        self._webhook = webhook
        self._dashboard_url = dashboard_url
        self._queue: queue.Queue[tuple[RolloutStore, Notification]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="canary-guard-notify", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def __call__(self, store: RolloutStore, notes: Sequence[Notification]) -> None:
        for note in notes:
            self._queue.put((store, note))
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def _run(self) -> None:
        while True:
            store, note = self._queue.get()
            give_up = time.monotonic() + BACKGROUND_GIVE_UP_S
            backoff = 1.0
            while True:
                try:
                    outcome, _ = deliver(note, store, self._webhook, self._dashboard_url)
                    if outcome in ("delivered", "duplicate"):
                        store.mark_notification_published(note.id)
                    break
                except (WebhookError, NotificationBusy) as exc:
                    if time.monotonic() > give_up:
                        log(
                            "WARNING",
                            f"notification not delivered, left in the outbox: {exc}",
                            notification=note.id,
                        )
                        break
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKGROUND_MAX_BACKOFF_S)
                except Exception as exc:  # Firestore trouble: leave it to the next checkpoint's resend
                    log("WARNING", f"notification not delivered now: {exc!r}", notification=note.id)
                    break
