"""A ramp step: move the canary's share and record it, safe against a concurrent rollback.

The step re-checks Firestore before every traffic write and writes with the service's etag, so
a rollback that starts meanwhile always wins. Used by the checkpoint (GO at the end of a soak)
and by the release owner's `advance` / `promote`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.clients.store import Rollout
from shared.config import ServiceRef
from shared.core.traffic import discover_canary, plan_canary_share

if TYPE_CHECKING:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.store import RolloutStore


@dataclass(frozen=True)
class StepResult:
    status: str  # "changed" | "aborted"
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
    now: datetime | None = None,
    respect_pause: bool = True,
) -> StepResult:
    """Move the canary's share to `to_percent` (100 promotes), then record it.

    The scheduler's steps stop at a pause taken meanwhile (`respect_pause`); the release owner's
    manual advance does not. The step is only taken while `rollout`'s canary is the live one.

    Safe against a concurrent rollback: the rollback marks the rollout ROLLING_BACK before its
    own traffic write; this re-reads that state inside every attempt of its read-modify-write,
    and its write carries the etag it read, so either it sees the rollback and stops, or the
    rollback's write comes after it and wins.
    """
    allowed = True

    def plan(live: Any) -> Any:
        nonlocal allowed
        split = discover_canary(live)
        allowed = (
            split is not None
            and split.canary_revision == rollout.canary_revision
            and store.step_change_allowed(rollout.id, rollout.canary_percent, respect_pause=respect_pause)
        )
        if not allowed:
            return None
        return plan_canary_share(live, rollout.canary_revision, rollout.stable_revision, to_percent)

    before, after = traffic.update_traffic(rollout.service, plan)
    if not allowed:
        message = (
            f"step to {to_percent}% not taken: {rollout.canary_revision} is no longer the running, "
            f"unpaused canary at {rollout.canary_percent}%"
        )
        return StepResult("aborted", message, before.as_dicts(), after.as_dicts())
    if not store.commit_step(rollout.id, rollout.canary_percent, to_percent, by=by, reason=reason, now=now):
        message = (
            f"step to {to_percent}% applied, but the rollout changed meanwhile (a rollback was requested, "
            "or another run recorded this step): not recorded again; a rollback restores stable"
        )
        return StepResult("aborted", message, before.as_dicts(), after.as_dicts())
    verb = "promoted to 100%" if to_percent == 100 else f"{rollout.canary_percent}% → {to_percent}%"
    message = (
        f"{ServiceRef.parse(rollout.service).service}: canary {rollout.canary_revision} {verb} ({reason})"
    )
    return StepResult("changed", message, before.as_dicts(), after.as_dicts())
