"""What canary-guard decided during a rehearsal, as Firestore holds it, and the split the
router serves: each new decision, status and traffic change becomes a timeline record, and each
service's outcome (rolled back, promoted, and what the canary served through the service URL
after its rollback) is kept for the summary (`summary`) and the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.rehearsal.router import Router
from infra.rehearsal.served import SERVICE_URL
from infra.rehearsal.timeline import DecisionRecord, Record, StatusRecord, TrafficRecord
from shared.clients.store import RolloutStore, rollout_id
from shared.policy import Policy

# Every minute has some: the timeline and the report keep them, the summary does not.
ROUTINE_DECISIONS = frozenset({"evidence", "checkpoint", "script"})


@dataclass
class ServiceOutcome:
    service: str
    expect: str
    phase: str | None = None
    percent: int | None = None
    rolled_back_at: datetime | None = None
    promoted_at: datetime | None = None
    rollback_rule: str | None = None
    canary_requests_after_rollback: int | None = None  # via the service URL
    decisions: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        if self.expect == "rollback":
            return self.rolled_back_at is not None
        if self.expect == "promote":
            return self.promoted_at is not None
        if self.expect == "decide":  # bring your own: whatever canary-guard decides
            return self.rolled_back_at is not None or self.promoted_at is not None
        return self.rolled_back_at is None


class DecisionWatcher:
    """Polled by the rehearsal's loop; `canaries`: service (short name) -> canary revision."""

    def __init__(
        self,
        store: RolloutStore,
        router: Router,
        policy: Policy,
        canaries: dict[str, str],
        outcomes: dict[str, ServiceOutcome],
        record: Callable[[Record], None],
        now: Callable[[], datetime],
    ) -> None:
        self.store, self.router, self.policy = store, router, policy
        self.canaries, self.outcomes = canaries, outcomes
        self.record, self.now = record, now
        self._seen_decisions: set[tuple[str, str, str]] = set()
        self._last_status: dict[str, Any] = {}
        self._last_split: dict[str, dict[str, int]] = {}
        self._canary_served_at_rollback: dict[str, int] = {}
        self._rollback_seen_real: dict[str, float] = {}

    def poll(self, at: datetime) -> None:
        """canary-guard's decisions as Firestore holds them, and the split the router serves."""
        for service in self.canaries:
            split = self.router.traffic(service)
            if split != self._last_split.get(service):
                self._last_split[service] = split
                self.record(TrafficRecord(at, self.router.service_name(service), dict(split)))
            self._count_canary_after_rollback(service, split)
            rid = rollout_id(self.router.service_name(service), self.canaries[service])
            rollout = self.store.get(rid)
            if rollout is None:
                continue
            outcome = self.outcomes[service]
            status = (
                rollout.phase.value,
                rollout.canary_percent,
                self._streaks(rollout),
                self._verdict(rollout),
            )
            if status != self._last_status.get(service):
                self._last_status[service] = status
                phase, percent, streaks, verdict = status
                self.record(
                    StatusRecord(at, self.router.service_name(service), phase, percent, streaks, verdict)
                )
            outcome.phase, outcome.percent = rollout.phase.value, rollout.canary_percent
            for entry in self.store.history(rid):
                key = (service, str(entry.get("at")), entry.get("kind", ""))
                if key in self._seen_decisions:
                    continue
                self._seen_decisions.add(key)
                self._on_decision(service, rid, entry)

    def _on_decision(self, service: str, rid: str, entry: dict[str, Any]) -> None:
        at = entry.get("at") if isinstance(entry.get("at"), datetime) else self.now()
        kind, message = str(entry.get("kind", "")), str(entry.get("message", ""))
        if kind == "checkpoint" and entry.get("verdict") and entry.get("reasons"):
            message = f"{entry['verdict']}: {entry['reasons'][0]}"
        self.record(DecisionRecord(at, self.router.service_name(service), rid, kind, message))
        outcome = self.outcomes[service]
        if kind not in ROUTINE_DECISIONS:
            outcome.decisions.append(f"{at:%H:%M:%S} {kind}: {message}")
        if kind == "rollback_requested":
            outcome.rollback_rule = outcome.rollback_rule or entry.get("rule")
        elif kind == "rolled_back" and outcome.rolled_back_at is None:
            outcome.rolled_back_at = at
        elif kind == "promoted" and outcome.promoted_at is None:
            outcome.promoted_at = at

    def _streaks(self, rollout: Any) -> dict[str, str]:
        limits = self.policy.consecutive_limits
        return {
            rule: f"{streak.count}/{limits.get(rule, '?')}"
            for rule, streak in rollout.streaks.items()
            if streak.count
        }

    @staticmethod
    def _verdict(rollout: Any) -> str | None:
        verdict = rollout.last_verdict or {}
        return verdict.get("verdict")

    def _count_canary_after_rollback(self, service: str, split: dict[str, int]) -> None:
        """Once the router serves the canary nothing after its rollback, count what the canary
        answers through the service URL from then on: it must stay 0. (Counted from a second
        later: a request routed just before the change may still be finishing.)"""
        if self.outcomes[service].rolled_back_at is None or service in self._canary_served_at_rollback:
            return
        if split.get(self.canaries[service], 0) != 0:
            return
        settle = self._rollback_seen_real.setdefault(service, time.monotonic() + 1.0)
        if time.monotonic() >= settle:
            self._canary_served_at_rollback[service] = self._canary_served(service)

    def _canary_served(self, service: str) -> int:
        """Requests the canary answered through the service URL (what users reach; its tag URL
        stays up for debugging and the uptime check, and is left out)."""
        canary = self.canaries[service]
        return self.router.served_counts(service, via=SERVICE_URL).get(canary, 0)

    def canary_after_rollback(self, outcome: ServiceOutcome) -> int | None:
        if outcome.service not in self._canary_served_at_rollback:
            return None
        return self._canary_served(outcome.service) - self._canary_served_at_rollback[outcome.service]


@dataclass
class RehearsalResult:
    services: dict[str, ServiceOutcome]
    report: Path | None
    timeline: Path
    wall_s: float

    @property
    def ok(self) -> bool:
        return all(outcome.met for outcome in self.services.values())


def summary(result: RehearsalResult) -> str:
    """What happened, service by service, and where the report is."""
    lines = [f"\nrehearsal finished in {result.wall_s:.0f} s of wall time"]
    for outcome in result.services.values():
        verdict = "as expected" if outcome.met else f"NOT as expected (expected: {outcome.expect})"
        what = f"phase {outcome.phase}, canary at {outcome.percent} %"
        if outcome.rolled_back_at:
            rule = outcome.rollback_rule or "rule ?"
            what += f"; rolled back at {outcome.rolled_back_at:%H:%M:%S} ({rule})"
            after = outcome.canary_requests_after_rollback
            if after is not None:
                what += f"; canary requests through the service URL since: {after}"
        if outcome.promoted_at:
            what += f"; promoted at {outcome.promoted_at:%H:%M:%S}"
        lines.append(f"  {outcome.service}: {what} — {verdict}")
        lines.extend(f"      {decision}" for decision in outcome.decisions)
    lines.append(f"timeline: {result.timeline}")
    if result.report:
        history = result.report.with_name("history.md")
        lines.append(f"report:   {result.report}  (decision history: {history})")
    return "\n".join(lines)
