"""The pure decision core: consecutive-breach streaks and when to request a rollback.

No I/O: the Firestore store reads the rollout state, calls `apply_observation` inside a
transaction, and writes back what it returns. Alerts and checkpoints feed the same function,
so both kinds of observation count in one streak per rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    RUNNING = "RUNNING"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    PROMOTED = "PROMOTED"
    FROZEN = "FROZEN"
    SUPERSEDED = "SUPERSEDED"  # a newer canary of the same service took over


class Kind(StrEnum):
    BREACH = "breach"
    RECOVERY = "recovery"


class Outcome(StrEnum):
    COUNTED = "counted"  # breach added to the streak
    TRIPPED = "tripped"  # breach reached the rule's limit: request a rollback now
    RESET = "reset"  # recovery: streak back to 0
    DUPLICATE = "duplicate"  # this event id was applied before
    STALE = "stale"  # older than the last applied observation of the rule
    NOT_RUNNING = "not_running"  # rollout is rolling/rolled back, promoted or superseded: nothing to count
    # Names no revision and came too soon after this rollout started: may be about the previous canary.
    TOO_EARLY = "too_early"


IGNORED = frozenset({Outcome.DUPLICATE, Outcome.STALE, Outcome.NOT_RUNNING, Outcome.TOO_EARLY})
# The canary still serves traffic in these phases, so its breaches must still trip a rollback
# (FROZEN only stops the ramp).
COUNTING_PHASES = frozenset({Phase.RUNNING, Phase.FROZEN})


@dataclass(frozen=True)
class Observation:
    rule: str
    kind: Kind
    event_time: datetime
    event_id: str
    source: str  # "alert" | "checkpoint"
    detail: Mapping[str, Any] = field(default_factory=dict)  # incident id, measured value, threshold
    # The event named no revision (an uptime-check incident): it was attributed to the live canary.
    inferred_revision: bool = False


@dataclass(frozen=True)
class Streak:
    count: int = 0
    last_event_time: datetime | None = None


@dataclass(frozen=True)
class StreakState:
    """The part of a rollout the streak rules read and write."""

    phase: Phase = Phase.RUNNING
    streaks: Mapping[str, Streak] = field(default_factory=dict)
    rollback_requested: bool = False
    created_at: datetime | None = None  # when the rollout was registered (None: unknown, no grace)


@dataclass(frozen=True)
class StreakDecision:
    outcome: Outcome
    state: StreakState
    rule: str
    count: int
    limit: int
    reason: str

    @property
    def request_rollback(self) -> bool:
        return self.outcome is Outcome.TRIPPED


def repeated_notification(obs: Observation, last: Mapping[str, Any] | None, gap: timedelta) -> bool:
    """Another message about the same open incident within `gap` of the one last counted: the
    same notification delivered twice (Cloud Monitoring may send distinct messages for one
    incident), not a renotification, which comes a whole renotify interval later."""
    incident = obs.detail.get("incident_id")
    return bool(
        obs.source == "alert"
        and obs.kind is Kind.BREACH
        and incident
        and last
        and last.get("incident_id") == incident
        and abs(obs.event_time - last["at"]) < gap
    )


def _opened_after(obs: Observation, moment: datetime) -> bool:
    """The incident opened after `moment`: it cannot be about a canary that was live before then
    (a canary down from its first minute is rolled back at its first alert, not 30 min later)."""
    opened = obs.detail.get("incident_started_at")
    return isinstance(opened, datetime) and opened >= moment


def apply_observation(
    state: StreakState,
    obs: Observation,
    limits: Mapping[str, int],
    *,
    duplicate: bool = False,
    repeated: bool = False,
    attribution_grace: Mapping[str, timedelta] | None = None,
) -> StreakDecision:
    """Apply one observation to the rollout's streaks.

    `limits` maps each rule to its consecutive-breach limit (from the policy); `duplicate`
    says the store already holds this event id; `repeated` that it is a repeated delivery of
    the incident notification last counted (see `repeated_notification`). `attribution_grace`
    maps a rule to how long after a rollout starts a breach that names no revision may still be
    about the previous canary (an uptime check needs that long to see the new one); such a
    breach is TOO_EARLY. Rollback is requested at most once per rollout.
    """
    limit = limits[obs.rule]
    streak = state.streaks.get(obs.rule, Streak())

    def ignored(outcome: Outcome, reason: str) -> StreakDecision:
        return StreakDecision(outcome, state, obs.rule, streak.count, limit, reason)

    if duplicate:
        return ignored(Outcome.DUPLICATE, f"event {obs.event_id} was already applied")
    if repeated:
        return ignored(
            Outcome.DUPLICATE, f"incident {obs.detail.get('incident_id')} was already counted moments ago"
        )
    if state.phase not in COUNTING_PHASES:
        return ignored(Outcome.NOT_RUNNING, f"rollout is {state.phase}")
    grace = (attribution_grace or {}).get(obs.rule)
    if (
        grace is not None
        and obs.kind is Kind.BREACH
        and obs.inferred_revision
        and state.created_at is not None
        and obs.event_time < state.created_at + grace
        and not _opened_after(obs, state.created_at)
    ):
        return ignored(
            Outcome.TOO_EARLY,
            f"{obs.rule} alert names no revision and was sent at {obs.event_time.isoformat()}, within "
            f"{grace.total_seconds():.0f} s of this rollout starting ({state.created_at.isoformat()}): "
            "it may be about the previous canary; a renotification after that counts",
        )
    if streak.last_event_time is not None and obs.event_time < streak.last_event_time:
        return ignored(
            Outcome.STALE,
            f"observed at {obs.event_time.isoformat()}, before the last applied "
            f"{streak.last_event_time.isoformat()}",
        )

    if obs.kind is Kind.RECOVERY:
        new_streak = Streak(0, obs.event_time)
        outcome, reason = Outcome.RESET, f"{obs.rule} recovered; streak reset from {streak.count}"
    else:
        new_streak = Streak(streak.count + 1, obs.event_time)
        if new_streak.count >= limit and not state.rollback_requested:
            outcome = Outcome.TRIPPED
            reason = f"{obs.rule} breached {new_streak.count} times in a row (limit {limit}): roll back"
        else:
            outcome = Outcome.COUNTED
            reason = f"{obs.rule} breach {new_streak.count} of {limit}"
            if state.rollback_requested:
                reason += "; rollback already requested"

    new_state = replace(
        state,
        streaks={**state.streaks, obs.rule: new_streak},
        rollback_requested=state.rollback_requested or outcome is Outcome.TRIPPED,
    )
    return StreakDecision(outcome, new_state, obs.rule, new_streak.count, limit, reason)
