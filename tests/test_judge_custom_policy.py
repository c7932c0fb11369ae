"""A custom policy in shared/core/judge.py: every number comes from the policy, not the code. A
policy file with other GO and rollback bars, another ramp and a 2 h progress deadline drives the
verdict, the soak, the ramp, the end-of-soak NO_GO rollback and the freeze; a model_copy of the
bundled policy with short soaks does the same and leaves the bundled object untouched. Shared
helpers: tests/judge_cases.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.core.judge import StepAction, StepDecision, Verdict, judge, step_for_percent, wilson_upper
from shared.policy import DEFAULT_POLICY_FILE, Policy, load_policy
from tests.judge_cases import POLICY, decide, metrics, verdict_of

# ===================================================== a custom policy: numbers come from the policy

CUSTOM_CHANGES: dict[str, Any] = {
    "ramp": [
        {"percent": 2, "soak_minutes": 15},
        {"percent": 30, "soak_minutes": 45},
        {"percent": 100, "soak_minutes": 0},
    ],
    "go_bars": {"error_rate": 0.02, "latency_p95": 300, "memory": 0.7, "cpu": 0.5, "min_requests": 10},
    "thresholds": {"error_rate": 0.05, "latency_p95": 800, "memory": 0.9},
    "progress_deadline_hours": 2,
}


@pytest.fixture
def custom(tmp_path: Path) -> Policy:
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    raw["ramp"] = CUSTOM_CHANGES["ramp"]
    raw["go_bars"] = CUSTOM_CHANGES["go_bars"]
    for rule, threshold in CUSTOM_CHANGES["thresholds"].items():
        raw["rollback_rules"][rule]["threshold"] = threshold
    raw["checkpoint"]["progress_deadline_hours"] = CUSTOM_CHANGES["progress_deadline_hours"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_policy(path)


def test_custom_policy_bars_drive_the_verdict(custom):
    values = {"error_rate": 0.015, "latency_p95_ms": 250.0, "memory_utilization": 0.7, "cpu_utilization": 0.5}
    # every value on/below its bar; the 1.5 % error rate passes the 2 % bar on its bound (1.91 %)
    assert verdict_of(custom, request_count=3000, **values) is Verdict.GO
    # Issue 9: was GO on 10 requests (min_requests 10); the bound on 10 requests is 23.6 %.
    j = judge(metrics(request_count=10, **values), custom)
    assert (j.verdict, j.reasons) == (
        Verdict.HOLD,
        ("error_rate 1.50% (upper 95% bound 23.58%) > GO bar 2.00%",),
    )
    assert verdict_of(custom, request_count=2000, **values) is Verdict.HOLD  # bound 2.02 %
    assert verdict_of(POLICY, request_count=1000, **values) is Verdict.NO_GO  # same values, real bars
    assert verdict_of(custom, request_count=9, **values) is Verdict.INCONCLUSIVE

    j = judge(metrics(memory_utilization=0.75), custom)  # a memory HOLD band exists here
    assert (j.verdict, j.reasons) == (Verdict.HOLD, ("memory 75.00% > GO bar 70.00%",))
    j = judge(metrics(error_rate=0.05), custom)  # on the custom rollback bar
    assert (j.verdict, j.reasons) == (
        Verdict.HOLD,
        ("error_rate 5.00% (upper 95% bound 6.26%) > GO bar 2.00%",),
    )
    j = judge(metrics(error_rate=0.051, latency_p95_ms=801.0), custom)
    assert (j.verdict, j.reasons) == (
        Verdict.NO_GO,
        ("error_rate 5.10% > rollback bar 5.00%", "latency_p95 801 ms > rollback bar 800 ms"),
    )
    j = judge(metrics(request_count=5), custom)
    assert j.reasons == ("5 requests < 10 needed to judge",)
    assert j.measured["cpu"] == {"value": 0.30, "go_bar": 0.5, "rollback_bar": None}
    assert j.measured["error_rate"]["upper_bound"] == pytest.approx(wilson_upper(0.005, 5, 0.95))
    assert j.measured["memory"] == {"value": 0.40, "go_bar": 0.7, "rollback_bar": 0.9}


def test_custom_policy_soak_ramp_and_deadline(custom):
    assert [step_for_percent(custom, p) for p in (1, 2, 5, 29, 30, 99, 100)] == [0, 0, 0, 0, 1, 1, 2]
    assert decide(policy=custom, percent=2, on_step=timedelta(minutes=14)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 1 min left at 2%"
    )
    assert decide(policy=custom, percent=2, on_step=timedelta(minutes=15)) == StepDecision(
        StepAction.ADVANCE, "GO after 15 min: 30%", 1, 30
    )
    assert decide(policy=custom, percent=30, on_step=timedelta(minutes=44)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 1 min left at 30%"
    )
    assert decide(policy=custom, percent=30, on_step=timedelta(minutes=45)) == StepDecision(
        StepAction.PROMOTE, "GO after 45 min: 100%", 2, 100
    )
    # Deadline 2 h: on it still holds, past it freezes (the real policy would wait 168 h).
    hold = Verdict.HOLD
    assert decide(hold, policy=custom, percent=30, on_step=timedelta(hours=2)).action is StepAction.HOLD
    assert decide(hold, policy=custom, percent=30, on_step=timedelta(hours=2, seconds=1)) == StepDecision(
        StepAction.FREEZE, "no progress for 2.0 h (deadline 2 h)"
    )
    assert decide(policy=POLICY, percent=10, on_step=timedelta(hours=3)).action is StepAction.HOLD


def test_no_go_rollback_uses_the_policy_soak(custom):
    assert decide(Verdict.NO_GO, policy=custom, percent=2, on_step=timedelta(minutes=14)).action is (
        StepAction.HOLD
    )
    assert decide(Verdict.NO_GO, policy=custom, percent=2, on_step=timedelta(minutes=15)) == StepDecision(
        StepAction.ROLLBACK, "NO_GO at the end of the 15-min soak at 2%"
    )


def test_model_copy_policy_changes_soak_and_deadline():
    ramp = [step.model_copy(update={"soak_minutes": 5}) for step in POLICY.ramp]
    quick = POLICY.model_copy(
        update={
            "ramp": ramp,
            "checkpoint": POLICY.checkpoint.model_copy(update={"progress_deadline_hours": 1}),
        }
    )
    assert decide(policy=quick, percent=25, on_step=timedelta(minutes=4)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 1 min left at 25%"
    )
    assert decide(policy=quick, percent=25, on_step=timedelta(minutes=5)) == StepDecision(
        StepAction.ADVANCE, "GO after 5 min: 50%", 3, 50
    )
    assert decide(Verdict.HOLD, policy=quick, percent=25, on_step=timedelta(minutes=61)) == StepDecision(
        StepAction.FREEZE, "no progress for 1.0 h (deadline 1 h)"
    )
    # The bundled policy object is untouched.
    assert decide(Verdict.HOLD, percent=25, on_step=timedelta(minutes=61)).action is StepAction.HOLD
