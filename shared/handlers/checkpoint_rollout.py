"""One service's checkpoint minute: discover its live canary, judge every whole minute that
has arrived into the evidence ledger the alerts use, judge the step GO/NO-GO, and walk the ramp
(at the end of a step's soak a NO_GO rolls back). Run for every service by the checkpoint
(shared/handlers/checkpoint.py) or by a checkpoint_worker (shared/handlers/fanout.py), on minutes read once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.clients.store import Rollout
from shared.config import ServiceRef, Settings
from shared.core.evidence import whole_minute
from shared.core.judge import (
    Judgement,
    RampState,
    StepAction,
    judge,
    next_step,
    rollback_redrive_due,
    soak_end_rollback,
    step_window,
    synthetic_in,
)
from shared.core.ledger import COUNTING_PHASES, Phase, watching_promoted
from shared.core.lifecycle import Action, phases_allowing
from shared.core.notifications import checkpoint_is_news
from shared.core.traffic import discover_canary
from shared.handlers.breach import judge_window, lookback_window, publish_pending_rollback, record_evidence
from shared.handlers.step import StepResult, change_step
from shared.logs import Report, log
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.custom_metrics import MetricWriter
    from shared.clients.pubsub import Publisher
    from shared.clients.store import RolloutStore
    from shared.core.metrics_source import MetricsSource


MIN_WINDOW = timedelta(seconds=60)


# A FROZEN canary stopped ramping but still serves its share: it is judged and observed (its
# breaches still roll it back, as the streak core counts them); only RUNNING ones step.
WATCHED_PHASES = COUNTING_PHASES


@dataclass
class Clients:
    """What a checkpoint talks to; built lazily by the entry point, passed in by tests."""

    store: RolloutStore
    traffic: CloudRunTraffic
    reader: MetricsSource  # shared/clients/monitoring.py MonitoringReader, or any other source
    writer: MetricWriter | None
    publisher: Publisher
    # Not used since notifications are published from the store's outbox (NOTIFY_TOPIC); kept
    # so that callers that pass one keep working.
    notifier: object | None = None


def rollout_step_window(rollout: Rollout, now: datetime, policy: Policy) -> tuple[datetime, datetime]:
    return step_window(rollout.step_started_at, now, policy)


def _awaiting_step_data(rollout: Rollout, step_start: datetime, end: datetime, policy: Policy) -> Judgement:
    """INCONCLUSIVE while not one whole minute since the step has reached Cloud Monitoring: judging
    the window before it would pass the new share on the old share's traffic."""
    from shared.core.metrics_source import CanaryMetrics

    nothing = CanaryMetrics(step_start, step_start, 0, 0, None, None, None, None)
    lag = policy.checkpoint.data_lag_minutes
    due = step_start + MIN_WINDOW + timedelta(minutes=lag)
    reason = (
        f"step to {rollout.canary_percent}% started {rollout.step_started_at:%H:%M:%S}Z; its first minute "
        f"of data is judged from {due:%H:%M}Z (Cloud Monitoring lag {lag} min)"
    )
    return replace(judge(nothing, policy), reasons=(reason,))


def checkpoint_rollout(
    rollout: Rollout, *, now: datetime, settings: Settings, policy: Policy, clients: Clients
) -> Report:
    service = ServiceRef.parse(rollout.service)

    # Rollback rules: every whole minute that has arrived, judged on its own, into the ledger.
    read_start, read_end = lookback_window(now, policy)
    entries = judge_window(
        rollout, start=read_start, end=read_end, now=now, policy=policy, reader=clients.reader
    )
    evidence, rollout = record_evidence(
        rollout,
        entries,
        policy=policy,
        store=clients.store,
        source="checkpoint",
        requested_by="canary-guard/checkpoint",
        now=now,
    )
    publish_pending_rollback(rollout, clients.store, clients.publisher, settings.rollback_topic)
    if rollout.phase is Phase.PROMOTED:  # the watch window after 100 %: rollback rules only
        runs = {rule: run.trailing for rule, run in evidence.runs.items() if run.trailing}
        return Report(
            "NOTICE" if evidence.request_rollback else "INFO",
            f"{service.service}: promoted {rollout.canary_revision} under watch: {evidence.reason}",
            rollout=rollout.id,
            service=rollout.service,
            action="watch",
            evidence=evidence.outcome.value,
            streaks=runs or None,
        )

    # The step's verdict over its whole window so far.
    step_start, end = rollout_step_window(rollout, now, policy)
    query = {"location": service.location, "service": service.service, "revision": rollout.canary_revision}
    # canary-guard's own load tests: their minutes are left out of request counts and latency.
    load_tests = [load.minutes for load in synthetic_in(step_start, end, rollout.synthetic_traffic)]
    left_out = [{"from": first, "to": last} for first, last in load_tests]  # Firestore: no nested arrays
    if end - step_start >= MIN_WINDOW:
        since_step = clients.reader.canary_metrics(start=step_start, end=end, exclude=load_tests, **query)
        judgement = judge(since_step, policy)
    else:
        judgement = _awaiting_step_data(rollout, step_start, end, policy)
    observed = {
        rule: {"streak": run.trailing, "limit": run.limit}
        for rule, run in evidence.runs.items()
        if run.trailing
    }

    state = RampState(
        rollout.phase,
        rollout.canary_percent,
        rollout.step_started_at,
        rollout.paused,
        rollout.rollback_requested,
    )
    window_minutes = max((end - step_start).total_seconds() / 60, 0)
    decision = soak_end_rollback(
        next_step(state, judgement.verdict, now, policy), judgement, window_minutes, policy
    )
    previous = (rollout.last_verdict or {}).get("verdict")
    clients.store.record_checkpoint(
        rollout.id,
        judgement.as_dict() | {"window": {"start": step_start, "end": end}, "load_tests_left_out": left_out},
        {
            "action": decision.action.value,
            "message": decision.reason,
            "canary_percent": rollout.canary_percent,
            "notify": checkpoint_is_news(decision.action.value, judgement.verdict.value, previous),
            "evidence": {
                "outcome": evidence.outcome.value,
                "minutes": len(evidence.changed),
                "runs": observed,
            },
        },
    )
    _write_metrics(clients.writer, rollout, service, judgement, now)

    step: StepResult | None = None
    if decision.action in (StepAction.ADVANCE, StepAction.PROMOTE):
        assert decision.next_percent is not None
        step = change_step(
            rollout,
            decision.next_percent,
            by="canary-guard/checkpoint",
            reason=decision.reason,
            store=clients.store,
            traffic=clients.traffic,
            now=now,
            respect_pause=True,
        )
    elif decision.action is StepAction.ROLLBACK:
        reason = f"{decision.reason}: {'; '.join(judgement.reasons)}"
        request = {
            "service": rollout.service,
            "canary_revision": rollout.canary_revision,
            "reason": reason,
            "requested_by": "canary-guard/checkpoint",
            "rule": "step_verdict",
            "trigger_event_id": f"soak-end-{rollout.id}-{rollout.canary_percent}"[:200],
            "observations": [{"measured": judgement.measured, "request_count": judgement.request_count}],
        }
        requested = clients.store.request_rollback(rollout.id, request, rule="step_verdict", message=reason)
        if requested is not None:
            publish_pending_rollback(requested, clients.store, clients.publisher, settings.rollback_topic)
    elif decision.action is StepAction.FREEZE:
        # Only the run that moves it to FROZEN records (and so notifies) it.
        clients.store.set_phase(
            rollout.id,
            Phase.FROZEN,
            "frozen",
            {"message": decision.reason, "canary_percent": rollout.canary_percent},
            only_from=phases_allowing(Action.FREEZE),
        )

    return Report(
        "NOTICE"
        if (step and step.status == "changed")
        or evidence.request_rollback
        or decision.action in (StepAction.FREEZE, StepAction.ROLLBACK)
        else "INFO",
        step.message if step else f"{judgement.verdict.value}: {decision.reason}",
        rollout=rollout.id,
        service=rollout.service,
        verdict=judgement.verdict.value,
        reasons=list(judgement.reasons),
        measured=judgement.measured,
        action=decision.action.value,
        step=step.status if step else None,
        evidence=evidence.outcome.value,
        streaks=observed,
        load_tests_left_out=left_out or None,
    )


def _write_metrics(
    writer: MetricWriter | None, rollout: Rollout, service: ServiceRef, judgement: Judgement, now: datetime
) -> None:
    """Streaks and the canary share as custom metrics for the dashboard; best effort."""
    if writer is None:
        return
    from shared.clients.custom_metrics import CustomPoint

    labels = {"service": service.service}
    points = [CustomPoint("canary_percent", float(rollout.canary_percent), labels, now)]
    points += [
        CustomPoint("breaches", float(streak.count), labels | {"rule": rule}, now)
        for rule, streak in rollout.streaks.items()
    ]
    try:
        writer.write(points)
    except Exception as exc:  # metrics must never block a checkpoint
        log("WARNING", f"custom metrics not written: {exc}", rollout=rollout.id)


# A rollout's checkpoint lease outlives a run that died holding it by at most this: a normal run
# takes seconds; two runs that overlap past it are still kept consistent by the transactions.
MAX_LEASE = timedelta(minutes=2)


def checkpoint_service(
    service: ServiceRef,
    *,
    now: datetime,
    settings: Settings,
    policy: Policy,
    clients: Clients,
    stored: Rollout | None,
) -> Report:
    """`stored`: the service's rollout as this run read it (`store.active`), a moment ago."""
    # The live service decides which canary to judge: a canary deployed outside the CLI, or
    # after the last rollout ended, is picked up here (a RUNNING predecessor is superseded).
    split = discover_canary(clients.traffic.get(service.name))
    rollout = stored
    if split is not None and (rollout is None or rollout.canary_revision != split.canary_revision):
        rollout = clients.store.rollout_of_live_canary(
            service.name, split, found_by="discovered by checkpoint"
        )
    if rollout is None:
        return Report("INFO", f"{service.service}: no canary", service=service.name, action="none")
    watched = rollout.phase in WATCHED_PHASES or watching_promoted(
        rollout.phase,
        rollout.step_started_at,
        now,
        timedelta(hours=policy.checkpoint.watch_after_promotion_hours),
    )
    if (rollout.rollback_requested and watched) or rollout.phase is Phase.ROLLING_BACK:
        # A rollback that was requested but has not finished (never published, dead-lettered,
        # or failed half-way): re-send it, with backoff, until the rollback function finishes it.
        due = rollback_redrive_due(
            unpublished=rollout.rollback_pending,
            published_at=rollout.rollback_published_at,
            redrive_count=rollout.redrive_count,
            redrive_at=rollout.redrive_at,
            now=now,
        )
        if not due:
            return Report(
                "INFO",
                f"{service.service}: waiting for the rollback of {rollout.canary_revision}",
                rollout=rollout.id,
                action="rollback_awaited",
            )
        message_id = _redrive_rollback(rollout, settings=settings, clients=clients)
        clients.store.record_redrive(rollout.id, message_id, at=now)
        message = (
            f"{service.service}: rollback of {rollout.canary_revision} not finished; request re-sent "
            f"(attempt {rollout.redrive_count + 1})"
        )
        return Report(
            "WARNING", message, rollout=rollout.id, action="rollback_redriven", rollback_message_id=message_id
        )
    if not watched:
        return Report(
            "INFO", f"{service.service}: rollout is {rollout.phase}", rollout=rollout.id, action="none"
        )
    lease = min(timedelta(seconds=settings.function_timeout_s), MAX_LEASE)
    token = clients.store.claim_checkpoint(rollout.id, whole_minute(now), lease=lease)
    if token is None:
        held = clients.store.checkpoint_lease(rollout.id) or {}
        message = (
            f"{service.service}: minute {whole_minute(now):%H:%M}Z not judged: the checkpoint of "
            f"{held.get('minute', 'an earlier minute')} is still running (the next minute catches up)"
        )
        return Report("WARNING", message, rollout=rollout.id, action="in_flight")
    try:
        return checkpoint_rollout(rollout, now=now, settings=settings, policy=policy, clients=clients)
    finally:
        clients.store.release_checkpoint(rollout.id, token)


def _redrive_rollback(rollout: Rollout, *, settings: Settings, clients: Clients) -> str:
    if rollout.rollback_pending:
        message_id = publish_pending_rollback(
            rollout, clients.store, clients.publisher, settings.rollback_topic
        )
        assert message_id is not None
        return message_id
    request = dict(rollout.rollback_request or {}) or {
        "service": rollout.service,
        "canary_revision": rollout.canary_revision,
        "reason": "rollback did not finish; re-driven by checkpoint",
        "requested_by": "canary-guard/checkpoint",
    }
    return clients.publisher.publish_json(settings.rollback_topic, request, rollout=rollout.id)
