"""Scheduled checkpoints and step changes: read the canary's metrics, feed per-rule
observations into the same streaks the alerts use, judge GO/NO-GO, and walk the ramp.

A step change re-checks Firestore before every traffic write and writes with the service's
etag, so a rollback that starts meanwhile always wins (see `change_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.breach import observe, publish_pending_rollback
from shared.config import ServiceRef, Settings
from shared.core import Observation, Outcome, Phase
from shared.judge import Judgement, RampState, StepAction, judge, next_step, rule_observations
from shared.logs import Report, log
from shared.policy import Policy
from shared.store import Rollout
from shared.traffic import discover_canary, plan_canary_share

if TYPE_CHECKING:
    from shared.cloudrun import CloudRunTraffic
    from shared.monitoring import MetricWriter, MonitoringReader
    from shared.notify import Notifier
    from shared.pubsub import Publisher
    from shared.store import RolloutStore

MIN_WINDOW = timedelta(seconds=60)


@dataclass
class Clients:
    """What a checkpoint talks to; built lazily by the entry point, passed in by tests."""

    store: RolloutStore
    traffic: CloudRunTraffic
    reader: MonitoringReader
    writer: MetricWriter | None
    publisher: Publisher
    notifier: Notifier


def _minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class StepResult:
    status: str  # "changed" | "aborted" | "unchanged"
    message: str
    before: list[dict[str, Any]]
    after: list[dict[str, Any]]


def change_step(
    rollout: Rollout,
    to_percent: int,
    *,
    by: str,
    reason: str,
    store: RolloutStore,
    traffic: CloudRunTraffic,
    notifier: Notifier,
    now: datetime | None = None,
) -> StepResult:
    """Move the canary's share to `to_percent` (100 promotes), then record it.

    Safe against a concurrent rollback: the rollback marks the rollout ROLLING_BACK before its
    own traffic write; this re-reads that state inside every attempt of its read-modify-write,
    and its write carries the etag it read, so either it sees the rollback and stops, or the
    rollback's write comes after it and wins.
    """
    allowed = True

    def plan(live: Any) -> Any:
        nonlocal allowed
        allowed = store.step_change_allowed(rollout.id, rollout.canary_percent)
        if not allowed:
            return None
        return plan_canary_share(live, rollout.canary_revision, rollout.stable_revision, to_percent)

    before, after = traffic.update_traffic(rollout.service, plan)
    if not allowed:
        message = (
            f"step to {to_percent}% not taken: {rollout.canary_revision} is no longer running "
            f"at {rollout.canary_percent}%"
        )
        return StepResult("aborted", message, before.as_dicts(), after.as_dicts())
    if not store.commit_step(rollout.id, rollout.canary_percent, to_percent, by=by, reason=reason, now=now):
        message = (
            f"step to {to_percent}% applied, then a rollback was requested: the rollback restores stable"
        )
        return StepResult("aborted", message, before.as_dicts(), after.as_dicts())
    verb = "promoted to 100%" if to_percent == 100 else f"{rollout.canary_percent}% → {to_percent}%"
    message = (
        f"{ServiceRef.parse(rollout.service).service}: canary {rollout.canary_revision} {verb} ({reason})"
    )
    notifier.send(f"canary-guard: {message}", by=by)
    return StepResult("changed", message, before.as_dicts(), after.as_dicts())


def _metrics_window(rollout: Rollout, now: datetime, policy: Policy) -> tuple[datetime, datetime, datetime]:
    """(recent start, step start, end): minute-aligned, ending `data_lag_minutes` before now."""
    end = _minute(now - timedelta(minutes=policy.checkpoint.data_lag_minutes))
    recent_start = end - timedelta(minutes=policy.checkpoint.recent_window_minutes)
    step_start = min(_minute(rollout.step_started_at), end - MIN_WINDOW)
    return recent_start, step_start, end


def checkpoint_rollout(
    rollout: Rollout, *, now: datetime, settings: Settings, policy: Policy, clients: Clients
) -> Report:
    service = ServiceRef.parse(rollout.service)
    recent_start, step_start, end = _metrics_window(rollout, now, policy)
    query = {"location": service.location, "service": service.service, "revision": rollout.canary_revision}
    recent = clients.reader.canary_metrics(start=recent_start, end=end, **query)
    since_step = clients.reader.canary_metrics(start=step_start, end=end, **query)
    judgement = judge(since_step, policy)

    # Rollback rules: one observation per rule per checkpoint minute, through the alert streaks.
    observed: dict[str, str] = {}
    for rule, (kind, detail) in rule_observations(recent, policy).items():
        obs = Observation(
            rule=rule,
            kind=kind,
            event_time=end,
            event_id=f"checkpoint-{end:%Y%m%dT%H%MZ}-{rule}",
            source="checkpoint",
            detail=detail,
        )
        applied = observe(rollout, obs, policy=policy, store=clients.store)
        if applied is None:
            raise RuntimeError(f"rollout {rollout.id} disappeared during its checkpoint")
        outcome, rollout, _reason = applied
        observed[rule] = outcome.value
        publish_pending_rollback(
            rollout, outcome, obs, clients.store, clients.publisher, settings.rollback_topic
        )
        if outcome is Outcome.TRIPPED:
            clients.notifier.send(
                f"canary-guard: rolling back {service.service} canary {rollout.canary_revision}: {rule} "
                f"{detail['observed_value']} > {detail['threshold_value']} (checkpoint)",
                rule=rule,
            )

    state = RampState(
        rollout.phase,
        rollout.canary_percent,
        rollout.step_started_at,
        rollout.paused,
        rollout.rollback_requested,
    )
    decision = next_step(state, judgement.verdict, now, policy)
    previous = (rollout.last_verdict or {}).get("verdict")
    clients.store.record_checkpoint(
        rollout.id,
        judgement.as_dict() | {"window": {"start": step_start, "end": end}},
        {"action": decision.action.value, "message": decision.reason, "observations": observed},
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
            notifier=clients.notifier,
            now=now,
        )
    elif decision.action is StepAction.FREEZE:
        clients.store.set_phase(
            rollout.id, Phase.FROZEN, "frozen", {"message": decision.reason}, only_from={Phase.RUNNING}
        )
        clients.notifier.send(
            f"canary-guard: {service.service} canary {rollout.canary_revision} FROZEN: {decision.reason}"
        )
    elif decision.action is StepAction.HOLD and judgement.verdict.value != previous:
        clients.notifier.send(
            f"canary-guard: {service.service} canary {rollout.canary_revision} holds at "
            f"{rollout.canary_percent}%: {judgement.verdict.value} ({'; '.join(judgement.reasons)})"
        )

    return Report(
        "NOTICE" if (step and step.status == "changed") or decision.action is StepAction.FREEZE else "INFO",
        step.message if step else f"{judgement.verdict.value}: {decision.reason}",
        rollout=rollout.id,
        service=rollout.service,
        verdict=judgement.verdict.value,
        reasons=list(judgement.reasons),
        measured=judgement.measured,
        action=decision.action.value,
        step=step.status if step else None,
        observations=observed,
    )


def _write_metrics(
    writer: MetricWriter | None, rollout: Rollout, service: ServiceRef, judgement: Judgement, now: datetime
) -> None:
    """Streaks and the canary share as custom metrics for the dashboard; best effort."""
    if writer is None:
        return
    from shared.monitoring import CustomPoint

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


def run_checkpoints(
    *,
    now: datetime,
    settings: Settings,
    policy: Policy,
    clients: Clients,
    only: ServiceRef | None = None,
) -> list[Report]:
    """One checkpoint for each watched service's running rollout (or just `only`'s). A service
    whose checkpoint fails (Cloud Run, Monitoring) is reported as ERROR; the others still run."""
    from google.api_core import exceptions as gexc

    from shared.cloudrun import ControlPlaneError

    reports = []
    for service in [only] if only else settings.services:
        try:
            reports.append(
                _checkpoint_service(service, now=now, settings=settings, policy=policy, clients=clients)
            )
        except (ControlPlaneError, gexc.GoogleAPICallError) as exc:
            reports.append(
                Report(
                    "ERROR",
                    f"{service.service}: checkpoint failed: {exc}",
                    service=service.name,
                    action="error",
                )
            )
    return reports


def _checkpoint_service(
    service: ServiceRef, *, now: datetime, settings: Settings, policy: Policy, clients: Clients
) -> Report:
    rollout = clients.store.active(service.name)
    if rollout is None or rollout.phase is Phase.SUPERSEDED:
        split = discover_canary(clients.traffic.get(service.name))
        if split is None:
            return Report("INFO", f"{service.service}: no canary", service=service.name, action="none")
        rollout = clients.store.register(
            service.name,
            split.canary_revision,
            split.stable_revision,
            canary_percent=split.canary_percent,
            started_by="discovered by checkpoint",
        )
    if rollout.phase is not Phase.RUNNING:
        return Report(
            "INFO", f"{service.service}: rollout is {rollout.phase}", rollout=rollout.id, action="none"
        )
    return checkpoint_rollout(rollout, now=now, settings=settings, policy=policy, clients=clients)


def runtime_clients() -> Clients:
    from shared import runtime

    return Clients(
        store=runtime.store(),
        traffic=runtime.traffic(),
        reader=runtime.reader(),
        writer=runtime.writer(),
        publisher=runtime.publisher(),
        notifier=runtime.notifier(),
    )


def handle_checkpoint(
    body: Any,
    *,
    settings: Settings,
    policy: Policy,
    clients: Clients | None = None,
    now: datetime | None = None,
) -> tuple[Report, int]:
    """The HTTP adapter's core: 400/403 on a bad body, 503 when Cloud Run or Monitoring kept
    failing for some service (Cloud Scheduler retries), 200 with one entry per rollout otherwise."""
    only = None
    if body not in (None, {}):
        if not isinstance(body, dict) or set(body) - {"service"} or not isinstance(body.get("service"), str):
            return Report("WARNING", 'body must be empty or {"service": "name"}', outcome="bad_request"), 400
        try:
            only = settings.resolve_service(body["service"])
        except LookupError as exc:
            return Report("WARNING", str(exc), outcome="forbidden"), 403
        except ValueError as exc:
            return Report("WARNING", str(exc), outcome="bad_request"), 400
    reports = run_checkpoints(
        now=now or datetime.now(UTC),
        settings=settings,
        policy=policy,
        clients=clients or runtime_clients(),
        only=only,
    )
    summary = "; ".join(report.message for report in reports) or "no watched service"
    rollouts = [report.as_dict() for report in reports]
    if any(report.severity == "ERROR" for report in reports):
        # 503: Cloud Scheduler retries; observations are deduplicated per checkpoint minute.
        return Report("ERROR", summary, rollouts=rollouts, outcome="partial_failure"), 503
    severity = "NOTICE" if any(report.severity == "NOTICE" for report in reports) else "INFO"
    return Report(severity, summary, rollouts=rollouts, outcome="checked"), 200
