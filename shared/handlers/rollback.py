"""The one rollback routine behind the rollback topic and the emergency HTTP call.

Stable gets 100 % of traffic in one Cloud Run update; the canary keeps its tag at 0 % so it
stays reachable for debugging. ROLLED_BACK is sticky: repeating a rollback is a no-op that
says so. A request from the rollback topic is carried out once per Pub/Sub message id: a
redelivery after it was carried out changes nothing (Pub/Sub delivers at least once).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from shared.clients.cloudrun import ControlPlaneError
from shared.clients.store import RollbackMarker, Rollout, StoreError, rollout_id
from shared.config import ServiceRef, Settings
from shared.core.ledger import ACTIVE_PHASES, Phase
from shared.core.lifecycle import Action, phases_allowing, transition
from shared.core.traffic import (
    RollbackStep,
    ServiceTraffic,
    decide_rollback,
    discover_canary,
    plan_rollback,
    targets_as_dicts,
)
from shared.events import (
    MalformedEvent,
    RollbackRequest,
    caller_identity,
    decode_rollback_request,
    pubsub_message,
)
from shared.logs import Report, log

if TYPE_CHECKING:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.store import RolloutStore

# Statuses, and the HTTP code the emergency endpoint answers with.
HTTP_STATUS = {
    "rolled_back": 200,
    "already_rolled_back": 200,
    "dry_run": 200,
    "superseded": 200,
    "duplicate": 200,
    "no_canary": 409,
}
# From the lifecycle table: where a rollback may start (and move the phase), and finish.
STARTS_ROLLBACK = frozenset(
    phase for phase in phases_allowing(Action.START_ROLLBACK) if transition(phase, Action.START_ROLLBACK).to
)
FINISHES_ROLLBACK = phases_allowing(Action.FINISH_ROLLBACK)


@dataclass(frozen=True)
class RollbackResult:
    status: str
    message: str
    service: str
    rollout: str | None = None
    canary_revision: str | None = None
    stable_revision: str | None = None
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "service": self.service,
            "rollout": self.rollout,
            "canary_revision": self.canary_revision,
            "stable_revision": self.stable_revision,
            "before": self.before,
            "after": self.after,
        }


def _find_rollout(
    request: RollbackRequest, service: ServiceRef, current: ServiceTraffic, store: RolloutStore
) -> Rollout | None:
    """The rollout a request is about: the named canary, else the live one, else the last one."""
    split = discover_canary(current)
    if request.canary_revision:
        named = store.get(rollout_id(service.name, request.canary_revision))
        if named is not None or split is None or split.canary_revision != request.canary_revision:
            return named
        # Named and live, but no event has registered it yet: register it from the live split.
    if split is not None:
        # The live canary wins over stored state: it may be newer than any event seen so far.
        return store.rollout_of_live_canary(service.name, split, found_by="discovered by rollback")
    # No live canary: already rolled back, or promoted (rolling back then undoes the promotion).
    rollout = store.active(service.name)
    return rollout if rollout is not None and rollout.phase is not Phase.SUPERSEDED else None


def execute_rollback(
    request: RollbackRequest,
    service: ServiceRef,
    *,
    mode: str,
    store: RolloutStore,
    traffic_client: CloudRunTraffic,
    message_id: str | None = None,
) -> RollbackResult:
    """Roll the service back to its stable revision. Cloud Run and Firestore faults raise.

    `message_id`: the request's Pub/Sub message id (None for the HTTP call and the CLI). Once the
    request is carried out it is marked by that id, so a redelivery changes nothing: after a
    rollback the live canary may be a newer one the request was never about. Without a marker
    (first delivery, or a redelivery after a fault) the live canary is rolled back.
    """
    if message_id is not None and (done := store.rollback_marker(message_id)) is not None:
        when = done.at.isoformat() if done.at else "earlier"
        return RollbackResult(
            "duplicate",
            f"request {message_id} was already carried out: {done.outcome} at {when} ({done.message}); "
            "nothing changed. Publish a new request to roll back a canary deployed since",
            service=service.name,
            rollout=done.rollout,
            canary_revision=done.canary_revision,
        )

    def marker(status: str, message: str, rollout: Rollout) -> RollbackMarker | None:
        if message_id is None:
            return None
        return RollbackMarker(message_id, status, message, service.name, rollout.id, rollout.canary_revision)

    def carried_out(result: RollbackResult, rollout: Rollout) -> RollbackResult:
        """Mark an answer that changed no phase (no transaction to write it in)."""
        if (mark := marker(result.status, result.message, rollout)) is not None:
            store.mark_rollback_message(mark)
        return result

    current = traffic_client.get(service.name)
    rollout = _find_rollout(request, service, current, store)
    decision = decide_rollback(
        current,
        service=service.service,
        phase=rollout.phase if rollout else None,
        canary_revision=rollout.canary_revision if rollout else "",
        stable_revision=rollout.stable_revision if rollout else "",
        named=bool(request.canary_revision),
        dry_run=request.dry_run,
    )
    base = {"service": service.name, "before": current.as_dicts()}
    if rollout is None:
        # Nothing carried out, so no marker: a redelivery that finds a canary rolls it back.
        return RollbackResult("no_canary", decision.message, after=current.as_dicts(), **base)
    base |= {
        "rollout": rollout.id,
        "canary_revision": rollout.canary_revision,
        "stable_revision": rollout.stable_revision,
    }
    unchanged = RollbackResult(decision.step.value, decision.message, after=current.as_dicts(), **base)
    if decision.step in (RollbackStep.SUPERSEDED, RollbackStep.ALREADY_ROLLED_BACK):
        return carried_out(unchanged, rollout)
    if decision.step is RollbackStep.CANARY_GONE:
        store.set_phase(
            rollout.id,
            Phase.ROLLED_BACK,
            "rolled_back",
            {"message": f"canary {rollout.canary_revision} has no traffic left", "reason": request.reason},
            only_from=ACTIVE_PHASES,  # it held (or was losing) its share until now
            marker=marker("already_rolled_back", decision.message, rollout),
        )
        return replace(unchanged, status="already_rolled_back")
    if decision.step is RollbackStep.DRY_RUN:
        store.record(
            rollout.id,
            "rollback_dry_run",
            {"message": decision.message, "requested_by": request.requested_by},
            marker=marker("dry_run", decision.message, rollout),
        )
        return replace(unchanged, after=targets_as_dicts(decision.after or ()))

    only = decision.only_revision
    who = {"mode": mode, "requested_by": request.requested_by or "unknown", "reason": request.reason}
    store.set_phase(
        rollout.id,
        Phase.ROLLING_BACK,
        "rollback_started",
        {"message": f"rolling back to {rollout.stable_revision}", **who},
        only_from=STARTS_ROLLBACK,
    )
    # Re-plan on every attempt: a conflicting writer may have changed the split meanwhile.
    try:
        before, after = traffic_client.update_traffic(
            service.name, lambda live: plan_rollback(live, rollout.stable_revision, only)
        )
    except ControlPlaneError as exc:
        # The channel hears of a failure nothing will fix by itself (a refusal), or of a
        # manual one (the caller is told too); a transient one is redelivered, and a
        # checkpoint re-sends a rollback that stays unfinished.
        if mode == "manual" or exc.status in (400, 401, 403, 404):
            try:
                store.record(
                    rollout.id,
                    "rollback_failed",
                    {"message": f"Cloud Run did not take the rollback: {exc}", "status": exc.status, **who},
                )
            except Exception as record_exc:  # the caller must see Cloud Run's refusal, not this
                log("WARNING", f"rollback failure not recorded: {record_exc!r}", rollout=rollout.id)
        raise
    message = decision.message
    store.set_phase(
        rollout.id,
        Phase.ROLLED_BACK,
        "rolled_back",
        {
            "message": message,
            "rule": request.rule or None,
            "observations": request.observations,
            "before": before.as_dicts(),
            "after": after.as_dicts(),
            **who,
        },
        only_from=FINISHES_ROLLBACK,
        marker=marker("rolled_back", message, rollout),
    )
    return RollbackResult(
        "rolled_back", message, **(base | {"before": before.as_dicts()}), after=after.as_dicts()
    )


def _requested(
    request: RollbackRequest,
    settings: Settings,
    store: RolloutStore,
    traffic_client: CloudRunTraffic,
    *,
    mode: str,
    event_id: str | None = None,
    message_id: str | None = None,
) -> tuple[Report, int]:
    """Resolve the service and run the rollback; a Report plus the HTTP status it maps to."""
    try:
        service = settings.resolve_service(request.service)
    except LookupError as exc:
        return Report("WARNING", f"rollback refused: {exc}", outcome="forbidden", event_id=event_id), 403
    except ValueError as exc:
        return Report("WARNING", f"rollback refused: {exc}", outcome="ambiguous", event_id=event_id), 400
    result = execute_rollback(
        request,
        service,
        mode=mode,
        store=store,
        traffic_client=traffic_client,
        message_id=message_id,
    )
    severity = "NOTICE" if result.status == "rolled_back" else "INFO"
    fields = result.as_dict() | {
        "outcome": result.status,
        "event_id": event_id,
        "rule": request.rule or None,
        "requested_by": request.requested_by or "unknown",
        "mode": mode,
        "dry_run": request.dry_run,
    }
    fields.pop("message")
    return Report(severity, result.message, **fields), result.http_status


def handle_rollback_message(
    data: Any,
    *,
    event_id: str,
    event_time: str,
    settings: Settings,
    store: RolloutStore,
    traffic_client: CloudRunTraffic,
) -> Report:
    """A request from the rollback topic (breach counter, checkpoint, or published by hand)."""
    try:
        message = pubsub_message(data, fallback_id=event_id, fallback_time=event_time)
        request = decode_rollback_request(message.json())
    except MalformedEvent as exc:
        return Report("WARNING", f"rollback request ignored: {exc}", event_id=event_id, outcome="malformed")
    mode = "auto" if request.requested_by.startswith("canary-guard/") else "manual"
    report, _ = _requested(
        request,
        settings,
        store,
        traffic_client,
        mode=mode,
        event_id=message.message_id,
        message_id=message.message_id,
    )
    return report


def handle_emergency(
    body: Any,
    authorization: str | None,
    *,
    settings: Settings,
    store: RolloutStore,
    traffic_client: CloudRunTraffic,
) -> tuple[Report, int]:
    """The on-call engineer's HTTP call: 400 bad input, 403 not watched, 409 nothing to roll back,
    503 Cloud Run kept failing (safe to call again), 200 with traffic before and after."""
    try:
        request = decode_rollback_request(body)
    except MalformedEvent as exc:
        return Report("WARNING", str(exc), outcome="bad_request"), 400
    caller = caller_identity(authorization)
    request = request.model_copy(update={"requested_by": caller})
    try:
        return _requested(request, settings, store, traffic_client, mode="manual")
    except ControlPlaneError as exc:
        if exc.status in (400, 403, 404):  # retrying will not help: say what to fix
            message = (
                f"Cloud Run refused the rollback (HTTP {exc.status}): {exc}. Traffic is unchanged; check "
                "canary-guard's permissions on the service (its traffic_updater role, iam.serviceAccountUser)"
            )
            return Report("ERROR", message, outcome="control_plane_refused", service=request.service), 502
        message = f"Cloud Run did not accept the rollback ({exc}); traffic is unchanged, call again"
        return Report("ERROR", message, outcome="control_plane_error", service=request.service), 503
    # GoogleAPIError, not only GoogleAPICallError: a read that used up its retry deadline raises
    # RetryError, which is no call error.
    except (gexc.GoogleAPIError, StoreError) as exc:
        message = f"the rollout state could not be read or written ({exc}); call again"
        return Report("ERROR", message, outcome="store_error", service=request.service), 503
