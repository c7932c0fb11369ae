"""The evidence ledger's decisions: what a batch of judged minutes does to a rollout's ledger
(`apply_evidence`: merged, pruned, and the first rule whose run of breach minutes reaches its
limit trips, requesting one rollback), the streaks shown for it (`streaks_of`), which phases
count evidence, and an alert's observation with its early-attribution guard (`too_early`).

No I/O: the Firestore store reads the rollout inside a transaction, calls `apply_evidence`, and
writes back what it returns. Checkpoints and alerts feed the same function with per-minute
evidence (shared/core/evidence.py), so both count in one ledger per rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.core.evidence import Evidence, EvidenceKind, Ledger, Run, first_trip, merge, prune, runs
from shared.core.lifecycle import Action, Phase, phases_allowing


class Kind(StrEnum):
    """What an alert notification says: the incident is open, or it closed."""

    BREACH = "breach"
    RECOVERY = "recovery"


class Outcome(StrEnum):
    COUNTED = "counted"  # new evidence entered the ledger
    TRIPPED = "tripped"  # a rule's run reached its limit: request a rollback now
    UNCHANGED = "unchanged"  # every minute was known already (a re-read, a redelivery)
    DUPLICATE = "duplicate"  # this event id was applied before
    NOT_RUNNING = "not_running"  # rollout is rolling/rolled back, promoted or superseded: nothing to count
    # Names no revision and came too soon after this rollout started: may be about the previous canary.
    TOO_EARLY = "too_early"


# Outcomes that leave the ledger as it was (what a log reader can filter out).
IGNORED = frozenset({Outcome.UNCHANGED, Outcome.DUPLICATE, Outcome.NOT_RUNNING, Outcome.TOO_EARLY})
# The canary still serves traffic in these phases, so its breaches must still trip a rollback
# (FROZEN only stops the ramp). From the lifecycle table (shared/core/lifecycle.py).
COUNTING_PHASES = phases_allowing(Action.COUNT)
# A canary in these phases holds (or is losing) its share: the service has an active rollout, so
# another canary may not start (one rollout per service); a new one discovered live supersedes it.
ACTIVE_PHASES = phases_allowing(Action.SUPERSEDE)


@dataclass(frozen=True)
class Observation:
    """One alert notification, decoded: which rule's incident opened (BREACH) or closed."""

    rule: str
    kind: Kind
    event_time: datetime
    event_id: str
    source: str  # "alert"
    detail: Mapping[str, Any] = field(default_factory=dict)  # incident id, values, incident_started_at
    # The event named no revision (an uptime-check incident): it was attributed to the live canary.
    inferred_revision: bool = False


@dataclass(frozen=True)
class Streak:
    """A rule's current run of breach minutes (the end of its ledger), for display."""

    count: int = 0
    last_minute: datetime | None = None


def streaks_of(ledger: Ledger) -> dict[str, Streak]:
    found = {}
    for rule, run in runs(ledger, {rule: 1_000_000 for rule in ledger}).items():
        minutes = ledger.get(rule) or {}
        found[rule] = Streak(run.trailing, max(minutes) if minutes else None)
    return found


def watching_promoted(phase: Phase, promoted_at: datetime, now: datetime, watch: timedelta) -> bool:
    """A PROMOTED revision is still under the rollback rules for `watch` after its promotion."""
    return phase is Phase.PROMOTED and now < promoted_at + watch


def too_early(obs: Observation, created_at: datetime | None, grace: timedelta | None) -> str:
    """Why an alert that names no revision is not counted on a rollout that started moments ago
    (it may be about the previous canary, still tagged and still failing); "" to count it.
    An incident that opened after the rollout started is about this canary, so it counts at once."""
    if grace is None or not obs.inferred_revision or created_at is None or obs.kind is not Kind.BREACH:
        return ""
    opened = obs.detail.get("incident_started_at")
    if isinstance(opened, datetime) and opened >= created_at:
        return ""
    if obs.event_time >= created_at + grace:
        return ""
    return (
        f"{obs.rule} alert names no revision and was sent at {obs.event_time.isoformat()}, within "
        f"{grace.total_seconds():.0f} s of this rollout starting ({created_at.isoformat()}): it may be "
        "about the previous canary; a renotification after that counts"
    )


@dataclass(frozen=True)
class EvidenceDecision:
    outcome: Outcome
    ledger: Ledger
    changed: tuple[Evidence, ...]
    runs: Mapping[str, Run]
    trip: Run | None  # the run that requests the rollback (TRIPPED only)
    reason: str

    @property
    def request_rollback(self) -> bool:
        return self.outcome is Outcome.TRIPPED


def apply_evidence(
    phase: Phase,
    ledger: Ledger,
    rollback_requested: bool,
    entries: list[Evidence],
    limits: Mapping[str, int],
    *,
    keep: timedelta,
    watching_promoted: bool = False,
) -> EvidenceDecision:
    """Add `entries` to the rollout's ledger; request a rollback (once per rollout) when a rule
    holds a run of its limit of breach minutes. A rollout that no longer serves a canary
    (rolled back, superseded, or promoted and past its watch window) takes no evidence."""
    if phase not in COUNTING_PHASES and not (phase is Phase.PROMOTED and watching_promoted):
        return EvidenceDecision(Outcome.NOT_RUNNING, ledger, (), {}, None, f"rollout is {phase}")
    merged, changed = merge(ledger, entries)
    # Runs are looked for before pruning: late evidence older than the horizon still completes one.
    found = runs(merged, limits)
    trip = first_trip(merged, limits)
    newest = max((m for minutes in merged.values() for m in minutes), default=None)
    if newest is not None:
        merged = prune(merged, keep=keep, newest=newest)
    if trip is not None and not rollback_requested:
        minutes = f"{trip.tripped[0].minute:%H:%M}Z–{trip.tripped[-1].minute:%H:%M}Z"
        worst = max(trip.tripped, key=lambda e: e.value if e.value is not None else float("-inf")).describe()
        reason = (
            f"{trip.rule} breached on {len(trip.tripped)} consecutive minutes ({minutes}; "
            f"worst {worst}): roll back"
        )
        return EvidenceDecision(Outcome.TRIPPED, merged, tuple(changed), found, trip, reason)
    if not changed:
        return EvidenceDecision(Outcome.UNCHANGED, merged, (), found, None, "no new evidence")
    breaches = [e for e in changed if e.kind is EvidenceKind.BREACH]
    parts = [f"{rule} {run.trailing}/{run.limit}" for rule, run in found.items() if run.trailing]
    reason = f"{len(changed)} new reading(s) over {len({e.minute for e in changed})} minute(s)"
    if breaches:
        reason += "; breach: " + ", ".join(e.describe() for e in breaches[:4])
    if parts:
        reason += "; runs " + ", ".join(parts)
    if rollback_requested:
        reason += "; rollback already requested"
    return EvidenceDecision(Outcome.COUNTED, merged, tuple(changed), found, None, reason)
