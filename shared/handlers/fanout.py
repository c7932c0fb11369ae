"""The checkpoint spread over instances: with CHECKPOINT_TOPIC set, the scheduled checkpoint is a
dispatcher and `checkpoint_worker` judges one service per message.

The dispatcher reads Monitoring once for every watched service (shared/core/minutes.py), and
publishes one message per service carrying that service's minutes; Pub/Sub pushes each to a
checkpoint_worker instance, which runs the same per-service checkpoint as the in-process path
(`shared.handlers.checkpoint_rollout.checkpoint_service`) on those minutes. Cloud Functions
scales the workers out, so a minute over hundreds of rollouts takes about as long as a few.

At-least-once delivery is harmless: a minute is judged into the evidence ledger (a join: the
same minute twice is one entry), a step is taken only from the percentage it was judged at, and
the rollout's checkpoint lease keeps two minutes from judging one rollout at once. A message
older than the rollout's last verdict is acknowledged without judging (a later minute already
spoke).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.clients.pubsub import encode_json
from shared.config import ServiceRef, Settings
from shared.events import MAX_PAYLOAD_BYTES, MalformedEvent, parse_time, pubsub_message
from shared.handlers.breach import lookback_window
from shared.handlers.checkpoint_minute import read_minutes, resend_notifications, runtime_clients
from shared.handlers.checkpoint_rollout import Clients, checkpoint_service, rollout_step_window
from shared.logs import Report
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.clients.store import Rollout
    from shared.core.metrics_source import MetricsSource


def checkpoint_message(
    service: ServiceRef,
    now: datetime,
    source: MetricsSource,
    *,
    rollout: Rollout | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """See `encoded_checkpoint_message`: the message itself."""
    return encoded_checkpoint_message(service, now, source, rollout=rollout, policy=policy)[0]


def encoded_checkpoint_message(
    service: ServiceRef,
    now: datetime,
    source: MetricsSource,
    *,
    rollout: Rollout | None = None,
    policy: Policy | None = None,
) -> tuple[dict[str, Any], bytes]:
    """One worker's message: the service, the checkpoint's time, and the service's minutes
    (left out when the batched read failed or they would not fit: the worker then reads its own).
    Minutes older than the lookback window travel only for `rollout`'s canary (its step window);
    every revision's recent minutes travel."""
    from shared.core.minutes import RecordedMinutes, revisions_json

    message: dict[str, Any] = {"service": service.name, "now": now.isoformat()}
    if isinstance(source, RecordedMinutes):
        keep_from = lookback_window(now, policy)[0] if policy is not None else source.start
        whole = [rollout.canary_revision] if rollout is not None else []
        revisions = source.revisions.get((service.location, service.service), {})
        with_minutes = message | {
            "read": {"start": source.start.isoformat(), "end": source.end.isoformat()},
            "keep_from": keep_from.isoformat(),
            "whole": whole,
            "minutes": revisions_json(revisions, keep_from=keep_from, whole=whole),
        }
        hours = source.hours
        if hours is not None and whole:  # the canary's long step window, in hour blocks
            blocks = hours.revisions.get((service.location, service.service), {})
            with_minutes["hours"] = {
                "read": {"start": hours.start.isoformat(), "end": hours.end.isoformat()},
                "minutes": revisions_json({name: blocks.get(name, {}) for name in whole}),
            }
        data = encode_json(with_minutes)
        if len(data) <= MAX_PAYLOAD_BYTES:
            return with_minutes, data
    return message, encode_json(message)


def dispatch_checkpoints(
    *, now: datetime, settings: Settings, policy: Policy, clients: Clients
) -> list[Report]:
    """The minute's batched read, then one message per watched service to CHECKPOINT_TOPIC."""
    assert settings.checkpoint_topic, "dispatch needs CHECKPOINT_TOPIC"
    resend_notifications(clients)
    services = list(settings.services)
    rollouts = clients.store.active_many([s.name for s in services])
    source = read_minutes(services, rollouts, now=now, policy=policy, reader=clients.reader)
    encoded = [
        encoded_checkpoint_message(service, now, source, rollout=rollouts.get(service.name), policy=policy)
        for service in services
    ]
    messages = [message for message, _data in encoded]
    message_ids = clients.publisher.publish_many(
        settings.checkpoint_topic, [data for _message, data in encoded]
    )
    return [
        Report(
            "INFO",
            f"{service.service}: checkpoint sent to a worker"
            + ("" if "minutes" in message else " (it reads its own metrics)"),
            service=service.name,
            action="dispatched",
            message_id=message_id,
        )
        for service, message, message_id in zip(services, messages, message_ids, strict=True)
    ]


def handle_checkpoint_message(
    data: Any,
    *,
    event_id: str,
    settings: Settings,
    policy: Policy,
    clients: Clients | None = None,
) -> Report:
    """Judge one service's minute from a dispatcher's message. A malformed message, or one for
    a service not watched, is acknowledged with the reason; a Firestore or Cloud Run failure
    raises, so Pub/Sub redelivers it. `clients`: built from the environment once the message
    has been read, when not given."""
    try:
        message = pubsub_message(data, fallback_id=event_id)
        body = message.json()
        if not isinstance(body, dict):
            raise MalformedEvent("message data must be a JSON object")
        name = str(body.get("service", ""))
        now = parse_time(body.get("now"))
    except (MalformedEvent, ValueError) as exc:
        return Report("WARNING", f"checkpoint message dropped: {exc}", event_id=event_id, outcome="malformed")
    try:
        service = settings.resolve_service(name)
    except (LookupError, ValueError) as exc:
        return Report(
            "WARNING", f"checkpoint message ignored: {exc}", event_id=event_id, outcome="not_watched"
        )
    if clients is None:
        clients = runtime_clients()
    try:
        source = _message_minutes(body, service, clients.reader)
    except (MalformedEvent, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return Report(
            "WARNING",
            f"checkpoint message dropped: its minutes are malformed: {exc!r}",
            event_id=event_id,
            outcome="malformed",
        )

    rollout = clients.store.active(service.name)
    if rollout is not None and _judged_later(
        rollout.last_verdict, rollout_step_window(rollout, now, policy)[1]
    ):
        return Report(
            "INFO",
            f"{service.service}: minute {now:%H:%M}Z already superseded by a later checkpoint",
            rollout=rollout.id,
            event_id=event_id,
            action="superseded",
        )
    report = checkpoint_service(
        service,
        now=now,
        settings=settings,
        policy=policy,
        clients=replace(clients, reader=source),
        stored=rollout,
    )
    report.fields["event_id"] = event_id
    return report


def _judged_later(last_verdict: dict[str, Any] | None, end: datetime) -> bool:
    window_end = ((last_verdict or {}).get("window") or {}).get("end")
    return isinstance(window_end, datetime) and window_end > end


def _message_minutes(body: dict[str, Any], service: ServiceRef, reader: MetricsSource) -> MetricsSource:
    if "minutes" not in body:
        return reader
    from shared.core.minutes import RecordedMinutes, revisions_from_json

    read = body.get("read")
    if not isinstance(read, dict):
        raise MalformedEvent("minutes come with their read window: {'start', 'end'}")
    start, end = parse_time(read.get("start")), parse_time(read.get("end"))
    keep_from = parse_time(body["keep_from"]) if "keep_from" in body else start
    whole = body.get("whole") or []
    if not isinstance(whole, list) or not all(isinstance(name, str) for name in whole):
        raise MalformedEvent("whole must be a list of revision names")
    revisions = revisions_from_json(body["minutes"])
    key = (service.location, service.service)
    trimmed = {key: (keep_from, frozenset(whole))}
    hours = None
    if "hours" in body:
        read_hours = body["hours"].get("read") if isinstance(body["hours"], dict) else None
        if not isinstance(read_hours, dict):
            raise MalformedEvent("hours come with their read window: {'start', 'end'}")
        hours_start, hours_end = parse_time(read_hours.get("start")), parse_time(read_hours.get("end"))
        blocks = revisions_from_json(body["hours"].get("minutes"))
        hours = RecordedMinutes(
            {key: blocks}, start=hours_start, end=hours_end, trimmed={key: (hours_end, frozenset(whole))}
        )
    return RecordedMinutes(
        {key: revisions}, start=start, end=end, fallback=reader, trimmed=trimmed, hours=hours
    )
