"""Alert incident → streak observation → (at the limit) one rollback request.

Shared by the breach_counter entry point and, through `observe`, by scheduled checkpoints,
so both kinds of observation count in the same streaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.core import Observation, Outcome
from shared.events import MalformedEvent, decode_alert, pubsub_message
from shared.logs import Report
from shared.policy import Policy
from shared.store import Rollout, rollout_id
from shared.traffic import discover_canary

if TYPE_CHECKING:
    from shared.cloudrun import CloudRunTraffic
    from shared.pubsub import Publisher
    from shared.store import RolloutStore


def rule_limits(policy: Policy) -> dict[str, int]:
    return {rule: spec.consecutive for rule, spec in policy.rollback_rules.items()}


def attribution_grace(policy: Policy) -> dict[str, timedelta]:
    """How long after a rollout starts a canary_down alert that names no revision may still be
    about the previous canary: the uptime alert aligns over two check periods and must hold for
    the alert duration before it changes, plus a minute for delivery."""
    alerting = policy.alerting
    seconds = 2 * alerting.uptime_check.period_s + alerting.duration_s + 60
    return {"canary_down": timedelta(seconds=seconds)}


def rollback_request_for(service_name: str, canary_revision: str, obs: Observation) -> dict[str, Any]:
    """The message the rollback function receives (same JSON as the emergency HTTP body)."""
    return {
        "service": service_name,
        "canary_revision": canary_revision,
        "reason": f"{obs.rule} breached its consecutive limit ({obs.source})",
        "requested_by": "canary-guard/breach_counter" if obs.source == "alert" else "canary-guard/checkpoint",
        "rule": obs.rule,
        "trigger_event_id": obs.event_id,
        "observations": [{"event_id": obs.event_id, "event_time": obs.event_time.isoformat(), **obs.detail}],
    }


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


def observe(
    service_name: str, canary_revision: str, obs: Observation, *, policy: Policy, store: RolloutStore
) -> tuple[Outcome, Rollout, str] | None:
    """Apply one observation to the rollout of this canary. None: there is no such rollout."""
    applied = store.apply_observation(
        rollout_id(service_name, canary_revision),
        obs,
        rule_limits(policy),
        rollback_request_for(service_name, canary_revision, obs),
        same_incident_gap=timedelta(seconds=policy.alerting.renotify_interval_s / 2),
        attribution_grace=attribution_grace(policy),
    )
    if applied is None:
        return None
    decision, updated = applied
    return decision.outcome, updated, decision.reason


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
) -> Report:
    """One Pub/Sub-delivered incident. Malformed or foreign events come back as WARNING reports
    (acknowledged); Firestore, Cloud Run or Pub/Sub faults raise (redelivered)."""
    try:
        message = pubsub_message(data, fallback_id=event_id, fallback_time=event_time)
        alert = decode_alert(message, settings.project)
        service = settings.resolve_service(alert.service_name)
    except (MalformedEvent, LookupError, ValueError) as exc:
        return Report("WARNING", f"alert ignored: {exc}", event_id=event_id, outcome="malformed")

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
    # The warm path is one Firestore transaction: the rollout is read inside it.
    observed = observe(service.name, revision, obs, policy=policy, store=store) if revision else None
    if observed is None:
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
        store.register(
            service.name,
            split.canary_revision,
            split.stable_revision,
            canary_percent=split.canary_percent,
            started_by="discovered from the live service",
        )
        observed = observe(service.name, revision, obs, policy=policy, store=store)
        if observed is None:
            raise RuntimeError(f"rollout of {revision} disappeared while applying {obs.event_id}")
    outcome, rollout, reason = observed
    message_id = publish_pending_rollback(rollout, store, publisher, settings.rollback_topic)
    streak = rollout.streaks.get(obs.rule)
    return Report(
        "NOTICE" if outcome is Outcome.TRIPPED else "INFO",
        reason,
        rollout=rollout.id,
        outcome=outcome.value,
        streak=streak.count if streak else 0,
        rollback_message_id=message_id,
        **fields,
    )
