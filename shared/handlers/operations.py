"""What a release owner does by hand (the operator CLI's verbs), on the same Firestore state
and Google APIs as the functions: start, status, metrics, advance, pause, resume, rollback,
history. Each returns plain data; the CLI only renders it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import clock
from shared.clients.store import Rollout, RolloutConflict, rollout_id
from shared.config import ServiceRef, Settings
from shared.core.judge import judge, next_ramp_step, step_for_percent
from shared.core.ledger import Phase
from shared.core.lifecycle import Action, allows, transition
from shared.core.traffic import plan_canary_share, stable_beside
from shared.events import RollbackRequest
from shared.handlers.rollback import execute_rollback
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.handlers.checkpoint import Clients

METRICS_WINDOW = timedelta(minutes=5)  # `metrics`: the last five complete minutes


class OperationError(RuntimeError):
    """The operation cannot be done in the current state; the message says why."""


@dataclass
class Operations:
    settings: Settings
    policy: Policy
    clients: Clients
    operator: str = "operator"

    def service(self, name: str) -> ServiceRef:
        try:
            return self.settings.resolve_service(name)
        except (LookupError, ValueError) as exc:  # not watched / ambiguous / malformed
            raise OperationError(str(exc)) from None

    def rollout(self, service: ServiceRef) -> Rollout:
        rollout = self.clients.store.active(service.name)
        if rollout is None:
            raise OperationError(f"{service.service} has no rollout yet (start one, or wait for an alert)")
        return rollout

    # -- verbs -------------------------------------------------------------------------
    def start(self, name: str, revision: str, percent: int) -> dict[str, Any]:
        """Tag `revision` as the canary with `percent` of traffic; one active rollout per service."""
        service = self.service(name)
        if not 0 < percent < 100:
            raise OperationError(f"--percent must be between 1 and 99, got {percent}")
        live = self.clients.traffic.get(service.name)
        stable, tied = stable_beside(live, revision)
        if stable is None:
            raise OperationError(f"{service.service} has no other revision serving traffic to use as stable")
        if len(tied) > 1:
            raise OperationError(
                f"cannot tell the stable revision: {', '.join(tied)} each serve {live.percent_of(stable)}%; "
                "give one of them all the traffic first"
            )
        # Refuse before touching traffic: one active rollout per service, and a revision that
        # was rolled out once is not started again (a repeat at the same share only re-applies).
        active = self.clients.store.active(service.name)
        if active and active.canary_revision != revision and allows(active.phase, Action.SUPERSEDE):
            raise OperationError(
                f"{service.service} already has an active rollout of {active.canary_revision} "
                f"({active.phase}); roll it back or promote it first"
            )
        existing = self.clients.store.get(rollout_id(service.name, revision))
        if existing and (existing.phase is not Phase.RUNNING or existing.canary_percent != percent):
            raise OperationError(
                f"{revision} is already rolled out ({existing.phase} at {existing.canary_percent}%); "
                "use advance / rollback, or deploy a new revision"
            )
        # Traffic first: if Cloud Run refuses, no rollout is left behind without its traffic.
        before, after = self.clients.traffic.update_traffic(
            service.name, lambda current: plan_canary_share(current, revision, stable, percent)
        )
        try:
            rollout = self.clients.store.register(
                service.name,
                revision,
                stable,
                canary_percent=percent,
                started_by=self.operator,
                refuse_if_active=True,
            )
        except RolloutConflict as exc:  # another start won the race after our check
            raise OperationError(str(exc)) from None
        return {
            "rollout": rollout.id,
            "canary": revision,
            "stable": stable,
            "before": before.as_dicts(),
            "after": after.as_dicts(),
        }

    def status(self, name: str) -> dict[str, Any]:
        service = self.service(name)
        rollout = self.rollout(service)
        return {"service": service.name, **rollout_status(rollout, self.policy)}

    def statuses(self) -> list[dict[str, Any]]:
        found = []
        for service in self.settings.services:
            rollout = self.clients.store.active(service.name)
            found.append(
                {
                    "service": service.name,
                    **(rollout_status(rollout, self.policy) if rollout else {"health": "NONE"}),
                }
            )
        return found

    def metrics(self, name: str, now: datetime | None = None) -> dict[str, Any]:
        """The canary's values over the recent window against the GO and rollback bars."""
        service = self.service(name)
        rollout = self.rollout(service)
        end = (now or clock.now()).replace(second=0, microsecond=0) - timedelta(
            minutes=self.policy.checkpoint.data_lag_minutes
        )
        start = end - METRICS_WINDOW
        measured = self.clients.reader.canary_metrics(
            location=service.location,
            service=service.service,
            revision=rollout.canary_revision,
            start=start,
            end=end,
        )
        judgement = judge(measured, self.policy)
        return {
            "service": service.name,
            "canary_revision": rollout.canary_revision,
            "window": {"start": start.isoformat(), "end": end.isoformat()},
            "request_count": measured.request_count,
            "error_count": measured.error_count,
            **judgement.as_dict(),
        }

    def advance(self, name: str, reason: str = "advanced by hand") -> dict[str, Any]:
        """The next ramp step now, whatever the verdict and soak (the release owner decides)."""
        from shared.handlers.step import change_step

        service = self.service(name)
        rollout = self.rollout(service)
        if not (step := transition(rollout.phase, Action.STEP)).allowed:
            raise OperationError(
                f"rollout of {rollout.canary_revision} is {rollout.phase}: nothing to advance ({step.reason})"
            )
        target = next_ramp_step(self.policy, rollout.canary_percent)
        if target is None:
            raise OperationError("already at the last ramp step")
        to_percent = target.percent
        result = change_step(
            rollout,
            to_percent,
            by=self.operator,
            reason=reason,
            store=self.clients.store,
            traffic=self.clients.traffic,
            respect_pause=False,  # the release owner decides, paused or not
        )
        if result.status != "changed":
            raise OperationError(result.message)
        return {
            "rollout": rollout.id,
            "message": result.message,
            "before": result.before,
            "after": result.after,
        }

    def pause(self, name: str, reason: str = "paused by hand") -> dict[str, Any]:
        return self._set_paused(name, True, reason)

    def resume(self, name: str, reason: str = "resumed by hand") -> dict[str, Any]:
        return self._set_paused(name, False, reason)

    def _set_paused(self, name: str, paused: bool, reason: str) -> dict[str, Any]:
        rollout = self.rollout(self.service(name))
        if not self.clients.store.set_paused(rollout.id, paused, by=self.operator, reason=reason):
            raise OperationError(
                f"rollout of {rollout.canary_revision} is {rollout.phase}: only a running one can be paused, "
                "and only a running or frozen one resumed"
            )
        return {"rollout": rollout.id, "paused": paused}

    def rollback(self, name: str, reason: str, dry_run: bool = False) -> dict[str, Any]:
        service = self.service(name)
        request = RollbackRequest(
            service=service.name, reason=reason, dry_run=dry_run, requested_by=self.operator
        )
        result = execute_rollback(
            request,
            service,
            mode="manual",
            store=self.clients.store,
            traffic_client=self.clients.traffic,
        )
        if result.status == "no_canary":
            raise OperationError(result.message)
        return result.as_dict()

    def load_test(self, name: str, mode: str = "both") -> dict[str, Any]:
        """Run the daily load test and/or the rate-limit probe now (same engine and bars)."""
        from shared.handlers.loadtest import run_service_tests

        service = self.service(name)
        try:
            report = run_service_tests(
                service,
                mode=mode,
                settings=self.settings,
                policy=self.policy,
                store=self.clients.store,
                traffic=self.clients.traffic,
                writer=self.clients.writer,
                auth=self.settings.load_test_auth,
                requested_by=self.operator,
            )
        except ValueError as exc:  # the configuration cannot fit one run
            raise OperationError(str(exc)) from None
        if report.fields.get("outcome") == "no_canary":
            raise OperationError(report.message)
        return report.as_dict()

    def history(self, name: str, limit: int = 200) -> dict[str, Any]:
        rollout = self.rollout(self.service(name))
        return {"rollout": rollout.id, "entries": self.clients.store.history(rollout.id, limit=limit)}


def rollout_status(rollout: Rollout, policy: Policy) -> dict[str, Any]:
    """A rollout at a glance: HEALTHY / DEGRADED / PAUSED / ROLLING_BACK / ROLLED_BACK / ... and why."""
    verdict = dict(rollout.last_verdict or {})
    breaching = {rule: s.count for rule, s in rollout.streaks.items() if s.count}
    if rollout.phase is Phase.RUNNING:
        if rollout.rollback_requested:
            health, why = "ROLLING_BACK", "rollback requested"
        elif breaching or verdict.get("verdict") in ("NO_GO", "HOLD"):
            health = "DEGRADED"
            parts = [
                f"{rule} streak {count}/{policy.rollback_rules[rule].consecutive}"
                for rule, count in breaching.items()
            ]
            why = "; ".join(parts + list(verdict.get("reasons", []))) or "last verdict not GO"
        elif rollout.paused:
            health, why = "PAUSED", "paused by hand"
        else:
            health, why = "HEALTHY", "; ".join(verdict.get("reasons", [])) or "no breach seen"
    elif rollout.phase is Phase.ROLLED_BACK:
        reason = (rollout.rollback_request or {}).get("reason")
        health = rollout.phase.value
        why = f"rolled back from {rollout.canary_percent}%" + (f": {reason}" if reason else "")
    else:
        health, why = rollout.phase.value, ""
    # A rolled-back canary serves nothing, whatever share it had when it was pulled.
    share = 0 if rollout.phase is Phase.ROLLED_BACK else rollout.canary_percent
    return {
        "health": health,
        "why": why,
        "rollout": rollout.id,
        "phase": rollout.phase.value,
        "canary_revision": rollout.canary_revision,
        "stable_revision": rollout.stable_revision,
        "canary_percent": share,
        "step": f"{step_for_percent(policy, rollout.canary_percent) + 1}/{len(policy.ramp)}",
        "step_started_at": rollout.step_started_at,
        "paused": rollout.paused,
        "streaks": {rule: s.count for rule, s in rollout.streaks.items()},
        "last_verdict": verdict.get("verdict"),
        "last_verdict_at": verdict.get("at"),
        "last_verdict_reasons": verdict.get("reasons", []),
        "last_load_test": (rollout.last_load_test or {}).get("verdict"),
        "last_load_test_at": (rollout.last_load_test or {}).get("at"),
        "last_load_test_summary": (rollout.last_load_test or {}).get("message"),
        "started_by": rollout.started_by,
    }
