"""What the tests of shared/core/judge.py (the test_judge_*.py modules) share: the bundled policy,
the checkpoint time T0, a healthy CanaryMetrics window with `metrics(**overrides)` and its verdict
`verdict_of`, and `decide`, a next_step call on a ramp state that has been on its step for a given
time; the helpers a single module needs stay in that module."""

# Real policy (shared/policy.yaml): GO bars 0.5 % errors, 200 ms P95, 85 % memory, 80 % CPU, at
# least 100 requests; rollback bars > 1 % errors, > 500 ms, > 85 % memory, no CPU rollback bar.
# A value exactly ON a bar passes it: `<=` holds the GO bar, only `>` crosses the rollback bar.
#
# Issue 9 changed two rules, and the tests that encoded the old ones say so in their names:
# - error-rate GO needs the one-sided Wilson upper bound (95 %, z = 1.645) of the error ratio at or
#   under the GO bar, not the point value: 0.5 % measured is a HOLD, and even 0 errors needs 539
#   requests to pass a 0.5 % bar;
# - at the end of a step's soak a NO_GO rolls back (StepAction.ROLLBACK) instead of holding.

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.core.judge import RampState, StepDecision, Verdict, judge, next_step
from shared.core.ledger import Phase
from shared.core.metrics_source import CanaryMetrics
from shared.policy import Policy, load_policy

POLICY = load_policy()
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# Healthy, comfortably inside every GO bar.
OK: dict[str, Any] = {
    "request_count": 1000,
    "error_count": 1,
    "error_rate": 0.001,
    "latency_p95_ms": 120.0,
    "memory_utilization": 0.40,
    "cpu_utilization": 0.30,
}


def metrics(**overrides: Any) -> CanaryMetrics:
    return CanaryMetrics(window_start=T0 - timedelta(minutes=5), window_end=T0, **(OK | overrides))


def verdict_of(policy: Policy = POLICY, **overrides: Any) -> Verdict:
    return judge(metrics(**overrides), policy).verdict


def state(
    percent: int = 5,
    *,
    on_step: timedelta = timedelta(hours=1),
    phase: Phase = Phase.RUNNING,
    paused: bool = False,
    rollback_requested: bool = False,
) -> tuple[RampState, datetime]:
    """A ramp state that has been on its step for `on_step`, and the `now` that makes it so."""
    return RampState(phase, percent, T0, paused, rollback_requested), T0 + on_step


def decide(verdict: Verdict = Verdict.GO, policy: Policy = POLICY, **kwargs: Any) -> StepDecision:
    ramp_state, now = state(**kwargs)
    return next_step(ramp_state, verdict, now, policy)
