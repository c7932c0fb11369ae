"""A rollout's lifecycle: which actions each phase allows, and the phase each leads to. Pure.

Every place that changes or gates a rollout's phase asks this table (the store's
transactions, the rollback, the checkpoint, the operator's verbs), so the rules live here once:

    RUNNING ──step──▶ RUNNING ──promote──▶ PROMOTED
       │  ▲ pause/resume (a flag)             │ (watched for a while: its breaches still roll back)
       │  └──────resume──── FROZEN ◀──freeze──┘ (from RUNNING only)
       ├─────start_rollback──▶ ROLLING_BACK ──finish_rollback──▶ ROLLED_BACK
       └─────supersede (a newer canary started)──▶ SUPERSEDED
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    RUNNING = "RUNNING"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    PROMOTED = "PROMOTED"
    FROZEN = "FROZEN"
    SUPERSEDED = "SUPERSEDED"  # a newer canary of the same service took over


class Action(StrEnum):
    COUNT = "count"  # judge the canary's minutes into its ledger (its breaches can trip a rollback)
    REQUEST_ROLLBACK = "request_rollback"  # a rule tripped, or the soak ended NO_GO
    START_ROLLBACK = "start_rollback"  # mark ROLLING_BACK before the traffic write
    FINISH_ROLLBACK = "finish_rollback"  # the stable revision serves 100 % (or the canary nothing)
    STEP = "step"  # the next ramp share below 100 %
    PROMOTE = "promote"  # 100 %
    FREEZE = "freeze"  # no GO before the progress deadline: stop ramping, keep watching
    PAUSE = "pause"
    RESUME = "resume"  # a paused one ramps again; a FROZEN one gets a fresh step clock
    SUPERSEDE = "supersede"  # a newer canary of the same service took over


@dataclass(frozen=True)
class Transition:
    allowed: bool
    to: Phase | None  # the phase after it (None: unchanged)
    reason: str


_RULES: dict[tuple[Phase, Action], Phase | None] = {
    # RUNNING: everything a live, ramping canary can go through.
    (Phase.RUNNING, Action.COUNT): None,
    (Phase.RUNNING, Action.REQUEST_ROLLBACK): None,
    (Phase.RUNNING, Action.START_ROLLBACK): Phase.ROLLING_BACK,
    (Phase.RUNNING, Action.FINISH_ROLLBACK): Phase.ROLLED_BACK,
    (Phase.RUNNING, Action.STEP): None,
    (Phase.RUNNING, Action.PROMOTE): Phase.PROMOTED,
    (Phase.RUNNING, Action.FREEZE): Phase.FROZEN,
    (Phase.RUNNING, Action.PAUSE): None,
    (Phase.RUNNING, Action.RESUME): None,
    (Phase.RUNNING, Action.SUPERSEDE): Phase.SUPERSEDED,
    # FROZEN: no more steps, but it still serves its share, so it is still judged.
    (Phase.FROZEN, Action.COUNT): None,
    (Phase.FROZEN, Action.REQUEST_ROLLBACK): None,
    (Phase.FROZEN, Action.START_ROLLBACK): Phase.ROLLING_BACK,
    (Phase.FROZEN, Action.FINISH_ROLLBACK): Phase.ROLLED_BACK,
    (Phase.FROZEN, Action.RESUME): Phase.RUNNING,
    (Phase.FROZEN, Action.SUPERSEDE): Phase.SUPERSEDED,
    # ROLLING_BACK: only the rollback's end (or a newer canary) moves it on.
    (Phase.ROLLING_BACK, Action.START_ROLLBACK): None,  # a redelivered request re-drives it
    (Phase.ROLLING_BACK, Action.FINISH_ROLLBACK): Phase.ROLLED_BACK,
    (Phase.ROLLING_BACK, Action.SUPERSEDE): Phase.SUPERSEDED,
    # PROMOTED: rolling back undoes the promotion (the previous stable is kept tagged).
    (Phase.PROMOTED, Action.START_ROLLBACK): Phase.ROLLING_BACK,
    (Phase.PROMOTED, Action.FINISH_ROLLBACK): Phase.ROLLED_BACK,
    # ROLLED_BACK: final; finishing again (a redelivered request) records nothing new.
    (Phase.ROLLED_BACK, Action.FINISH_ROLLBACK): None,
    # SUPERSEDED: a request aimed at it may still pull the share it kept.
    (Phase.SUPERSEDED, Action.FINISH_ROLLBACK): Phase.ROLLED_BACK,
}

_WHY_NOT = {
    Phase.ROLLING_BACK: "a rollback is in progress",
    Phase.ROLLED_BACK: "it was rolled back",
    Phase.PROMOTED: "it was promoted to 100 %",
    Phase.FROZEN: "it is frozen (no GO before the progress deadline)",
    Phase.SUPERSEDED: "a newer canary took over",
    Phase.RUNNING: "it is running",
}


def transition(phase: Phase, action: Action) -> Transition:
    """Whether `action` is allowed in `phase`, the phase it leads to, and why (not)."""
    if (phase, action) in _RULES:
        to = _RULES[(phase, action)]
        return Transition(True, to, f"{action} from {phase}" + (f" to {to}" if to else ""))
    return Transition(False, None, f"cannot {action.replace('_', ' ')}: {_WHY_NOT[phase]}")


def allows(phase: Phase, action: Action) -> bool:
    return transition(phase, action).allowed


def phases_allowing(action: Action) -> frozenset[Phase]:
    """Every phase in which `action` is allowed (a store transaction's `only_from`)."""
    return frozenset(phase for phase in Phase if allows(phase, action))
