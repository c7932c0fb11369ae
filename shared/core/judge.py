"""The pure checkpoint rules: GO / HOLD / NO-GO / INCONCLUSIVE over a step's window, and the
ramp step decision (advance, hold, freeze, or roll back at the end of the soak). The per-minute
rollback rules live in shared/core/evidence.py.

No I/O: shared/handlers/checkpoint.py reads the metrics and state and acts on what these return.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from shared.core.evidence import whole_minute
from shared.core.ledger import Phase
from shared.core.lifecycle import Action, allows
from shared.policy import Policy, RampStep

if TYPE_CHECKING:
    from shared.core.metrics_source import CanaryMetrics


class Verdict(StrEnum):
    GO = "GO"  # every GO bar holds on enough data
    HOLD = "HOLD"  # between the GO bar and the rollback bar: never a pass
    NO_GO = "NO_GO"  # a rollback bar is crossed
    INCONCLUSIVE = "INCONCLUSIVE"  # too little data to judge


# Measured value name → (CanaryMetrics attribute, rollback rule it feeds or None, unit for messages)
MEASURES: dict[str, tuple[str, str | None, str]] = {
    "error_rate": ("error_rate", "error_rate", "ratio"),
    "latency_p95": ("latency_p95_ms", "latency_p95", "ms"),
    "memory": ("memory_utilization", "memory", "ratio"),
    "cpu": ("cpu_utilization", None, "ratio"),
}


REQUEST_RULES = frozenset({"error_rate", "latency_p95"})


def _fmt(value: float, unit: str) -> str:
    return f"{value:.0f} ms" if unit == "ms" else f"{value * 100:.2f}%"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reasons: tuple[str, ...]
    measured: dict[str, dict[str, Any]]  # name → value, go_bar, rollback_bar (the record shows both)
    request_count: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "measured": self.measured,
            "request_count": self.request_count,
        }


def _finite(value: float | None) -> float | None:
    """A non-finite reading (NaN, inf) is no reading: it must never pass a bar."""
    return value if value is not None and math.isfinite(value) else None


def wilson_upper(errors: float, requests: int, confidence: float) -> float | None:
    """One-sided upper bound of the Wilson score interval for an error ratio: the rate is at or
    under it with `confidence`. `errors` may be fractional (a measured ratio × requests)."""
    if requests <= 0:
        return None
    z = NormalDist().inv_cdf(confidence)
    p = min(1.0, max(0.0, errors / requests))
    centre = p + z * z / (2 * requests)
    spread = z * math.sqrt(p * (1 - p) / requests + z * z / (4 * requests * requests))
    return min(1.0, (centre + spread) / (1 + z * z / requests))


def judge(metrics: CanaryMetrics, policy: Policy) -> Judgement:
    """GO only when every bar holds on at least `min_requests` requests; a missing series is
    INCONCLUSIVE, never a pass. Request-based measures (error rate, P95) judged on fewer requests
    are noise (one 5xx in two requests), so they make the verdict INCONCLUSIVE, not NO_GO.
    The error rate passes its GO bar only with confidence: the upper Wilson bound (at
    `go_bars.error_rate_confidence`) must be at or under it; the record shows both values."""
    bars = policy.go_bars
    enough_requests = metrics.request_count >= bars.min_requests
    measured: dict[str, dict[str, Any]] = {}
    no_go, hold, missing = [], [], []
    for name, (attribute, rule, unit) in MEASURES.items():
        value = _finite(getattr(metrics, attribute))
        go_bar = getattr(bars, name)
        rollback_bar = policy.rollback_rules[rule].threshold if rule else None
        measured[name] = {"value": value, "go_bar": go_bar, "rollback_bar": rollback_bar}
        passes = value
        if name == "error_rate" and value is not None:
            passes = wilson_upper(
                value * metrics.request_count, metrics.request_count, bars.error_rate_confidence
            )
            measured[name]["upper_bound"] = passes
            measured[name]["confidence"] = bars.error_rate_confidence
        if value is None or passes is None:
            missing.append(name)
        elif rule in REQUEST_RULES and not enough_requests:
            continue
        elif rollback_bar is not None and value > rollback_bar:
            no_go.append(f"{name} {_fmt(value, unit)} > rollback bar {_fmt(rollback_bar, unit)}")
        elif passes > go_bar:
            if passes != value:
                hold.append(
                    f"{name} {_fmt(value, unit)} (upper {bars.error_rate_confidence:.0%} bound "
                    f"{_fmt(passes, unit)}) > GO bar {_fmt(go_bar, unit)}"
                )
            else:
                hold.append(f"{name} {_fmt(value, unit)} > GO bar {_fmt(go_bar, unit)}")
    if no_go:
        return Judgement(Verdict.NO_GO, tuple(no_go + hold), measured, metrics.request_count)
    if not enough_requests or missing:
        reasons = []
        if not enough_requests:
            reasons.append(f"{metrics.request_count} requests < {bars.min_requests} needed to judge")
        if missing:
            reasons.append(f"no data for {', '.join(missing)}")
        return Judgement(Verdict.INCONCLUSIVE, tuple(reasons), measured, metrics.request_count)
    if hold:
        return Judgement(Verdict.HOLD, tuple(hold), measured, metrics.request_count)
    return Judgement(Verdict.GO, ("every GO bar holds",), measured, metrics.request_count)


@dataclass(frozen=True)
class SyntheticTraffic:
    """When canary-guard's own load test ran against the canary. Cloud Monitoring counts its
    requests with the users', so checkpoints leave its minutes out of the request-based measures:
    a quiet canary must not pass on 2,000 fast synthetic 200s, nor a streak be reset by them. A
    run in progress (or killed before it could say it ended) is not `finished`: `ended_at` is
    then its deadline."""

    started_at: datetime
    ended_at: datetime
    finished: bool = True

    @property
    def minutes(self) -> tuple[datetime, datetime]:
        """(first, last] minute boundaries of the Monitoring points that hold its requests."""
        first = self.started_at.replace(second=0, microsecond=0)
        last = self.ended_at.replace(second=0, microsecond=0)
        return first, last if last == self.ended_at else last + timedelta(minutes=1)

    def as_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "ended_at": self.ended_at, "finished": self.finished}


def synthetic_in(
    start: datetime, end: datetime, synthetic: Sequence[SyntheticTraffic]
) -> list[SyntheticTraffic]:
    """The load tests whose Monitoring points fall (at least partly) in the window (start, end]."""
    return [load for load in synthetic if load.minutes[1] > start and load.minutes[0] < end]


class StepAction(StrEnum):
    NONE = "none"  # not a running rollout
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"  # the next step is 100 %
    FREEZE = "freeze"
    ROLLBACK = "rollback"  # NO_GO on the whole step at the end of its soak


@dataclass(frozen=True)
class StepDecision:
    action: StepAction
    reason: str
    next_index: int | None = None
    next_percent: int | None = None


@dataclass(frozen=True)
class RampState:
    phase: Phase
    canary_percent: int  # the live share decides the step (no separate step counter to drift)
    step_started_at: datetime
    paused: bool = False
    rollback_requested: bool = False


def step_for_percent(policy: Policy, percent: int) -> int:
    """The ramp step a live canary share corresponds to (the last step at or below it)."""
    index = 0
    for i, step in enumerate(policy.ramp):
        if step.percent <= percent:
            index = i
    return index


def next_ramp_step(policy: Policy, percent: int) -> RampStep | None:
    """The first ramp step above the live share (a canary started at 1 % goes to 5 %, not 10 %)."""
    return next((step for step in policy.ramp if step.percent > percent), None)


def step_window(step_started_at: datetime, now: datetime, policy: Policy) -> tuple[datetime, datetime]:
    """(start, end] of a step's verdict window, ending `data_lag_minutes` before now so the
    verdict is taken on complete minutes. A point stamped at minute M counts requests in
    (M - 1 min, M]: starting at the first whole minute after the step keeps the previous share's
    traffic out of the step's verdict."""
    end = whole_minute(now - timedelta(minutes=policy.checkpoint.data_lag_minutes))
    return whole_minute(step_started_at + timedelta(minutes=1) - timedelta(microseconds=1)), end


def next_step(state: RampState, verdict: Verdict, now: datetime, policy: Policy) -> StepDecision:
    """At the end of the step's soak the whole-step verdict decides: GO advances one step, NO_GO
    (a rollback bar crossed on enough requests) rolls back, anything else holds; past the
    progress deadline a rollout that does not pass freezes."""
    if not allows(state.phase, Action.STEP):
        return StepDecision(StepAction.NONE, f"rollout is {state.phase}")
    if state.rollback_requested:
        return StepDecision(StepAction.HOLD, "a rollback was requested")
    if state.paused:
        return StepDecision(StepAction.HOLD, "paused by hand")
    # A rollout registered a moment after `now` was read is on its step for 0 s, not less.
    on_step = max(now - state.step_started_at, timedelta(0))
    index = step_for_percent(policy, state.canary_percent)
    target = next_ramp_step(policy, state.canary_percent)
    if target is None:
        return StepDecision(StepAction.NONE, "already at the last step")
    soak = timedelta(minutes=policy.ramp[index].soak_minutes)
    if verdict is Verdict.GO and on_step >= soak:
        # A healthy, soaked canary advances even past the deadline (say, resumed after a long
        # pause): the deadline is for rollouts that cannot pass, not for ones that just did.
        action = StepAction.PROMOTE if target.percent == 100 else StepAction.ADVANCE
        return StepDecision(
            action,
            f"GO after {on_step.total_seconds() / 60:.0f} min: {target.percent}%",
            policy.ramp.index(target),
            target.percent,
        )
    if verdict is Verdict.NO_GO and on_step >= soak:
        return StepDecision(
            StepAction.ROLLBACK,
            f"NO_GO at the end of the {policy.ramp[index].soak_minutes}-min soak at {state.canary_percent}%",
        )
    deadline = timedelta(hours=policy.checkpoint.progress_deadline_hours)
    if on_step > deadline:
        return StepDecision(
            StepAction.FREEZE,
            f"no progress for {on_step.total_seconds() / 3600:.1f} h "
            f"(deadline {policy.checkpoint.progress_deadline_hours} h)",
        )
    if verdict is not Verdict.GO:
        return StepDecision(StepAction.HOLD, f"verdict {verdict.value}")
    left = (soak - on_step).total_seconds() / 60
    return StepDecision(StepAction.HOLD, f"GO, soaking: {left:.0f} min left at {state.canary_percent}%")


def soak_end_rollback(
    decision: StepDecision, judgement: Judgement, window_minutes: float, policy: Policy
) -> StepDecision:
    """The end-of-soak NO_GO rolls back only on evidence the per-minute rules would also call
    enough: memory over its bar, or a request-based bar crossed on at least
    `evidence.min_requests_per_minute` requests per minute of the window on average. A quiet
    canary (3 requests a minute) is held instead, as the per-minute rules hold it; it freezes at
    the progress deadline."""
    if decision.action is not StepAction.ROLLBACK:
        return decision
    memory = judgement.measured.get("memory", {})
    if memory.get("value") is not None and memory["value"] > (memory.get("rollback_bar") or math.inf):
        return decision
    needed = policy.evidence.min_requests_per_minute * max(window_minutes, 1)
    if judgement.request_count >= needed:
        return decision
    return StepDecision(
        StepAction.HOLD,
        f"{decision.reason}, but on {judgement.request_count} requests over {window_minutes:.0f} min "
        f"(< {policy.evidence.min_requests_per_minute}/min): too thin to roll back on, held",
    )


REDRIVE_FIRST_WAIT = timedelta(minutes=5)  # the rollback function's own retries come first
REDRIVE_MAX_WAIT = timedelta(minutes=60)


def rollback_redrive_due(
    *,
    unpublished: bool,
    published_at: datetime | None,
    redrive_count: int,
    redrive_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether a checkpoint should re-send a requested rollback that has not finished: at once
    when it was never published, else with exponential backoff (5, 10, 20, 40, 60, 60 ... min)
    so a rollback Cloud Run keeps refusing is retried for ever but never floods Pub/Sub."""
    if unpublished:
        return True
    last = redrive_at or published_at
    if last is None:
        return True
    wait = min(REDRIVE_FIRST_WAIT * 2**redrive_count, REDRIVE_MAX_WAIT)
    return now - last >= wait
