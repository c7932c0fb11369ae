"""Evidence in, rollback requests out: what breach_counter and the checkpoint share.

Both judge the canary's per-minute Cloud Monitoring data with the same rules
(`shared.core.evidence.judge_minute`) and record it in the rollout's ledger with `record_evidence`;
an alert notification is a trigger to do that at once for the minutes that opened its incident
(an uptime-check incident is itself the evidence: canary_down). So turning alerts on can only
bring a rollback forward, never count evidence the checkpoint would call too thin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import clock
from shared.clients.store import Rollout, rollout_id
from shared.config import ServiceRef, Settings
from shared.core.evidence import MINUTE, Evidence, judge_minute, minute_key, uptime_evidence, whole_minute
from shared.core.ledger import EvidenceDecision, Kind, Observation, Outcome, too_early
from shared.core.traffic import discover_canary
from shared.events import MalformedEvent, decode_alert, pubsub_message
from shared.logs import Report
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.pubsub import Publisher
    from shared.clients.store import RolloutStore
    from shared.core.metrics_source import MetricsSource


def attribution_grace(policy: Policy) -> dict[str, timedelta]:
    """How long after a rollout starts a canary_down alert that names no revision may still be
    about the previous canary: the uptime alert aligns over two check periods and must hold for
    the alert duration before it changes, plus a minute for delivery."""
    alerting = policy.alerting
    seconds = 2 * alerting.uptime_check.period_s + alerting.duration_s + 60
    return {"canary_down": timedelta(seconds=seconds)}


def lookback_window(now: datetime, policy: Policy) -> tuple[datetime, datetime]:
    """(start, end] of the per-minute read: the last `lookback_minutes` whole minutes."""
    end = whole_minute(now)
    return end - timedelta(minutes=policy.evidence.lookback_minutes), end


def judge_window(
    rollout: Rollout,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    policy: Policy,
    reader: MetricsSource,
) -> list[Evidence]:
    """Every whole minute of the canary's data in (start, end] that has arrived, judged on its
    own (the stable revision's same minute beside it). canary-guard's own load-test minutes are
    marked, so request-based rules skip them."""
    service = ServiceRef.parse(rollout.service)
    data = reader.minute_metrics(location=service.location, service=service.service, start=start, end=end)
    canary, stable = data.get(rollout.canary_revision, {}), data.get(rollout.stable_revision, {})
    settle = timedelta(seconds=policy.evidence.settle_seconds)
    spans = [load.minutes for load in rollout.synthetic_traffic]  # (first, last] point ends
    entries: list[Evidence] = []
    for minute, metrics in sorted(canary.items()):
        if minute + MINUTE + settle > now:
            continue  # not a whole, settled minute yet
        point_end = minute + MINUTE
        synthetic = any(first < point_end <= last for first, last in spans)
        entries += judge_minute(replace(metrics, synthetic=synthetic), stable.get(minute), policy)
    return entries


def rollback_request_for(rollout: Rollout, decision: EvidenceDecision, requested_by: str) -> dict[str, Any]:
    """The message the rollback function receives (same JSON as the emergency HTTP body), with
    the minutes and values that tripped the rule."""
    assert decision.trip is not None
    trip = decision.trip
    return {
        "service": rollout.service,
        "canary_revision": rollout.canary_revision,
        "reason": decision.reason,
        "requested_by": requested_by,
        "rule": trip.rule,
        "trigger_event_id": f"{trip.rule}-{minute_key(trip.tripped[-1].minute)}",
        "observations": [
            {"minute": minute_key(e.minute), "rule": e.rule, **e.as_doc(), "describe": e.describe()}
            for e in trip.tripped
        ],
    }


def record_evidence(
    rollout: Rollout,
    entries: list[Evidence],
    *,
    policy: Policy,
    store: RolloutStore,
    source: str,
    requested_by: str,
    event_id: str = "",
    now: datetime | None = None,
) -> tuple[EvidenceDecision, Rollout]:
    applied = store.apply_evidence(
        rollout.id,
        entries,
        policy.consecutive_limits,
        lambda decision: rollback_request_for(rollout, decision, requested_by),
        keep=timedelta(minutes=policy.evidence.ledger_minutes),
        event_id=event_id,
        source=source,
        now=now,
        promoted_watch=timedelta(hours=policy.checkpoint.watch_after_promotion_hours),
    )
    if applied is None:
        raise RuntimeError(f"rollout {rollout.id} disappeared while recording evidence")
    return applied


def publish_pending_rollback(
    rollout: Rollout, store: RolloutStore, publisher: Publisher, topic: str
) -> str | None:
    """Publish the rollout's requested-but-unconfirmed rollback (the outbox). Every event that
    finds it pending publishes it again, so a failed publish is never lost; the rollback is
    idempotent, so a second copy is harmless. Raises if Pub/Sub refuses (the event is retried)."""
    if not rollout.rollback_pending:
        return None
    assert rollout.rollback_request is not None
    message_id = publisher.publish_json(topic, rollout.rollback_request, rollout=rollout.id)
    store.mark_rollback_published(rollout.id, message_id)
    return message_id


def _alert_window(obs: Observation, now: datetime, policy: Policy) -> tuple[datetime, datetime]:
    """The minutes to judge for a metric alert: the freshest ones for a live incident (what the
    checkpoint reads), or those that opened a replayed or delayed one (in its own time)."""
    opened = obs.detail.get("incident_started_at")
    anchor = opened if isinstance(opened, datetime) else obs.event_time
    lookback = timedelta(minutes=policy.evidence.lookback_minutes)
    if now - anchor < lookback:
        anchor = now
    end = whole_minute(anchor)
    return end - lookback, end


def handle_alert(
    data: Any,
    *,
    event_id: str,
    event_time: str,
    settings: Settings,
    policy: Policy,
    store: RolloutStore,
    publisher: Publisher,
    traffic_client: Callable[[], CloudRunTraffic],
    reader: Callable[[], MetricsSource],
    now: datetime | None = None,
) -> Report:
    """One Pub/Sub-delivered incident. Malformed or foreign events come back as WARNING reports
    (acknowledged); Firestore, Monitoring, Cloud Run or Pub/Sub faults raise (redelivered)."""
    try:
        message = pubsub_message(data, fallback_id=event_id, fallback_time=event_time)
        alert = decode_alert(message, settings.project)
        service = settings.resolve_service(alert.service_name)
    except (MalformedEvent, LookupError, ValueError) as exc:
        return Report("WARNING", f"alert ignored: {exc}", event_id=event_id, outcome="malformed")

    now = now or clock.now()
    # An incident naming no revision (uptime check) is attributed to the live canary below.
    obs = replace(alert.observation, inferred_revision=not alert.revision)
    fields: dict[str, Any] = {
        "event_id": obs.event_id,
        "rule": obs.rule,
        "service": service.name,
        "revision": alert.revision,
        "incident_id": alert.incident_id,
        "observation": obs.kind.value,
    }
    revision = alert.revision
    rollout = store.get(rollout_id(service.name, revision)) if revision else None
    if rollout is None:
        # First event for this revision (or one naming no revision): learn the rollout from the
        # live service. The Cloud Run client is built only here, so a warm path never pays for it.
        split = discover_canary(traffic_client().get(service.name))
        revision = revision or (split.canary_revision if split else "")
        fields["revision"] = revision or None
        if split is None or split.canary_revision != revision:
            current = split.canary_revision if split else "none"
            return Report(
                "INFO",
                f"alert ignored: {revision or 'no revision'} is not the live canary of {service.service} "
                f"(canary: {current})",
                outcome="not_canary",
                **fields,
            )
        rollout = store.rollout_of_live_canary(
            service.name, split, found_by="discovered from the live service"
        )

    if obs.inferred_revision:
        # An uptime-check incident is itself the evidence: the canary tag URL failed (or recovered).
        early = too_early(obs, rollout.created_at, attribution_grace(policy).get(obs.rule))
        if early:
            store.record(
                rollout.id,
                "evidence_ignored",
                {"rule": obs.rule, "event_id": obs.event_id, "outcome": "too_early", "message": early},
            )
            return Report("INFO", early, rollout=rollout.id, outcome=Outcome.TOO_EARLY.value, **fields)
        opened = obs.detail.get("incident_started_at")
        failing = obs.kind is Kind.BREACH
        at = opened if failing and isinstance(opened, datetime) else obs.event_time
        entries = [uptime_evidence(at, failing, policy, f"uptime incident {str(alert.incident_id)[:100]}")]
    elif obs.kind is Kind.BREACH:
        start, end = _alert_window(obs, now, policy)
        entries = judge_window(rollout, start=start, end=end, now=now, policy=policy, reader=reader())
    else:
        # A closed metric incident: the checkpoint records the recovered minutes as they arrive.
        return Report("INFO", f"{obs.rule} incident closed", rollout=rollout.id, outcome="closed", **fields)

    decision, rollout = record_evidence(
        rollout,
        entries,
        policy=policy,
        store=store,
        source="alert",
        requested_by="canary-guard/breach_counter",
        event_id=obs.event_id,
        now=now,
    )
    message_id = publish_pending_rollback(rollout, store, publisher, settings.rollback_topic)
    run = decision.runs.get(obs.rule)
    return Report(
        "NOTICE" if decision.request_rollback else "INFO",
        decision.reason,
        rollout=rollout.id,
        outcome=decision.outcome.value,
        streak=run.trailing if run else 0,
        minutes_judged=len({e.minute for e in entries}),
        rollback_message_id=message_id,
        **fields,
    )
