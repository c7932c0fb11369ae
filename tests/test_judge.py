"""Decision table for the pure checkpoint rules in shared/core/judge.py (issues 3 and 9).

Real policy (shared/policy.yaml): GO bars 0.5 % errors, 200 ms P95, 85 % memory, 80 % CPU, at
least 100 requests; rollback bars > 1 % errors, > 500 ms, > 85 % memory, no CPU rollback bar.
A value exactly ON a bar passes it: `<=` holds the GO bar, only `>` crosses the rollback bar.

Issue 9 changed two rules, and the tests that encoded the old ones say so in their names:
- error-rate GO needs the one-sided Wilson upper bound (95 %, z = 1.645) of the error ratio at or
  under the GO bar, not the point value: 0.5 % measured is a HOLD, and even 0 errors needs 539
  requests to pass a 0.5 % bar;
- at the end of a step's soak a NO_GO rolls back (StepAction.ROLLBACK) instead of holding.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.judge import (
    Judgement,
    RampState,
    StepAction,
    StepDecision,
    SyntheticTraffic,
    Verdict,
    judge,
    next_step,
    soak_end_rollback,
    step_for_percent,
    synthetic_in,
    wilson_upper,
)
from shared.core.ledger import Phase
from shared.core.metrics_source import CanaryMetrics
from shared.policy import DEFAULT_POLICY_FILE, Policy, load_policy

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


def above(x: float) -> float:
    """The next float after x: the smallest value that is strictly greater."""
    return math.nextafter(x, math.inf)


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def test_the_table_assumes_the_bundled_policy_numbers():
    """If policy.yaml changes, this fails first and says why the table below no longer fits."""
    bars = POLICY.go_bars
    assert (bars.error_rate, bars.latency_p95, bars.memory, bars.cpu, bars.min_requests) == (
        0.005,
        200,
        0.85,
        0.80,
        100,
    )
    rules = POLICY.rollback_rules
    assert (rules["error_rate"].threshold, rules["latency_p95"].threshold, rules["memory"].threshold) == (
        0.01,
        500,
        0.85,
    )
    assert [(s.percent, s.soak_minutes) for s in POLICY.ramp] == [
        (5, 60),
        (10, 1440),
        (25, 1440),
        (50, 1440),
        (100, 0),
    ]
    assert POLICY.checkpoint.progress_deadline_hours == 168
    assert bars.error_rate_confidence == 0.95


# =========================================================================== judge: every verdict


def test_go_when_every_bar_holds():
    j = judge(metrics(), POLICY)
    assert j.verdict is Verdict.GO
    assert j.reasons == ("every GO bar holds",)
    assert j.request_count == 1000


def test_hold_for_the_checklist_example_of_0_7_percent_errors_names_the_upper_bound():
    j = judge(metrics(error_rate=0.007, error_count=7), POLICY)
    assert j.verdict is Verdict.HOLD
    assert j.reasons == ("error_rate 0.70% (upper 95% bound 1.29%) > GO bar 0.50%",)


def test_no_go_when_a_rollback_bar_is_crossed():
    j = judge(metrics(error_rate=0.02, error_count=20), POLICY)
    assert j.verdict is Verdict.NO_GO
    assert j.reasons == ("error_rate 2.00% > rollback bar 1.00%",)


def test_inconclusive_with_too_few_requests():
    j = judge(metrics(request_count=99), POLICY)
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("99 requests < 100 needed to judge",)
    assert j.request_count == 99


def test_inconclusive_with_no_traffic_at_all_names_both_causes():
    j = judge(
        metrics(
            request_count=0,
            error_count=0,
            error_rate=None,
            latency_p95_ms=None,
            memory_utilization=0.1,
            cpu_utilization=0.01,
        ),
        POLICY,
    )
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("0 requests < 100 needed to judge", "no data for error_rate, latency_p95")


# =========================================================== judge: every bar below / on / above


@pytest.mark.parametrize(
    ("overrides", "expected", "reason"),
    [
        # error rate (1000 requests): GO needs the upper 95 % bound <= 0.5 %, rollback bar 1 % (>).
        # Issue 9: a point value under or ON the GO bar is no longer GO on 1000 requests.
        ({"error_rate": 0.0}, Verdict.GO, None),  # upper bound 0.27 %
        ({"error_rate": 0.001}, Verdict.GO, None),  # upper bound 0.45 %
        ({"error_rate": 0.0049}, Verdict.HOLD, "error_rate 0.49% (upper 95% bound 1.01%) > GO bar 0.50%"),
        ({"error_rate": 0.005}, Verdict.HOLD, "error_rate 0.50% (upper 95% bound 1.02%) > GO bar 0.50%"),
        (
            {"error_rate": above(0.005)},
            Verdict.HOLD,
            "error_rate 0.50% (upper 95% bound 1.02%) > GO bar 0.50%",
        ),
        ({"error_rate": 0.0051}, Verdict.HOLD, "error_rate 0.51% (upper 95% bound 1.04%) > GO bar 0.50%"),
        ({"error_rate": 0.0099}, Verdict.HOLD, "error_rate 0.99% (upper 95% bound 1.65%) > GO bar 0.50%"),
        # on the rollback bar: the bound (1.67 %) is over it, but only the point value can roll back
        ({"error_rate": 0.01}, Verdict.HOLD, "error_rate 1.00% (upper 95% bound 1.67%) > GO bar 0.50%"),
        ({"error_rate": above(0.01)}, Verdict.NO_GO, "error_rate 1.00% > rollback bar 1.00%"),
        ({"error_rate": 0.0101}, Verdict.NO_GO, "error_rate 1.01% > rollback bar 1.00%"),
        ({"error_rate": 1.0}, Verdict.NO_GO, "error_rate 100.00% > rollback bar 1.00%"),
        # latency P95: GO bar 200 ms, rollback bar 500 ms
        ({"latency_p95_ms": 199.9}, Verdict.GO, None),
        ({"latency_p95_ms": 200.0}, Verdict.GO, None),
        ({"latency_p95_ms": above(200.0)}, Verdict.HOLD, "latency_p95 200 ms > GO bar 200 ms"),
        ({"latency_p95_ms": 201.0}, Verdict.HOLD, "latency_p95 201 ms > GO bar 200 ms"),
        ({"latency_p95_ms": 499.0}, Verdict.HOLD, "latency_p95 499 ms > GO bar 200 ms"),
        ({"latency_p95_ms": 500.0}, Verdict.HOLD, "latency_p95 500 ms > GO bar 200 ms"),
        ({"latency_p95_ms": above(500.0)}, Verdict.NO_GO, "latency_p95 500 ms > rollback bar 500 ms"),
        ({"latency_p95_ms": 501.0}, Verdict.NO_GO, "latency_p95 501 ms > rollback bar 500 ms"),
        # memory: GO bar == rollback bar == 85 %, so there is no HOLD band
        ({"memory_utilization": 0.84}, Verdict.GO, None),
        ({"memory_utilization": below(0.85)}, Verdict.GO, None),
        ({"memory_utilization": 0.85}, Verdict.GO, None),  # exactly 85 % is GO
        ({"memory_utilization": above(0.85)}, Verdict.NO_GO, "memory 85.00% > rollback bar 85.00%"),
        ({"memory_utilization": 0.86}, Verdict.NO_GO, "memory 86.00% > rollback bar 85.00%"),
        # CPU: GO bar 80 %, no rollback bar, so even 100 % is only a HOLD
        ({"cpu_utilization": 0.79}, Verdict.GO, None),
        ({"cpu_utilization": 0.80}, Verdict.GO, None),
        ({"cpu_utilization": above(0.80)}, Verdict.HOLD, "cpu 80.00% > GO bar 80.00%"),
        ({"cpu_utilization": 0.81}, Verdict.HOLD, "cpu 81.00% > GO bar 80.00%"),
        ({"cpu_utilization": 1.0}, Verdict.HOLD, "cpu 100.00% > GO bar 80.00%"),
        # request count: min_requests 100 (>= is judged). Issue 9: at 100 requests even 0 errors
        # is a HOLD (upper bound 2.63 %); 0 errors passes the 0.5 % bar from 539 requests on.
        ({"request_count": 99, "error_rate": 0.0}, Verdict.INCONCLUSIVE, "99 requests < 100 needed to judge"),
        (
            {"request_count": 100, "error_rate": 0.0},
            Verdict.HOLD,
            "error_rate 0.00% (upper 95% bound 2.63%) > GO bar 0.50%",
        ),
        (
            {"request_count": 101, "error_rate": 0.0},
            Verdict.HOLD,
            "error_rate 0.00% (upper 95% bound 2.61%) > GO bar 0.50%",
        ),
        (
            {"request_count": 538, "error_rate": 0.0},
            Verdict.HOLD,
            "error_rate 0.00% (upper 95% bound 0.50%) > GO bar 0.50%",
        ),
        ({"request_count": 539, "error_rate": 0.0}, Verdict.GO, None),
    ],
    ids=lambda v: ",".join(f"{k}={x!r}" for k, x in v.items()) if isinstance(v, dict) else repr(v),
)
def test_bar_edges(overrides, expected, reason):
    j = judge(metrics(**overrides), POLICY)
    assert j.verdict is expected
    if reason is None:
        assert j.reasons == ("every GO bar holds",)
    else:
        assert j.reasons == (reason,)


@pytest.mark.parametrize(
    ("errors", "requests", "expected"),
    [
        # Issue 9: 0.5 % on the GO bar was GO; its upper bound (1.02 %) now holds it.
        (5, 1000, Verdict.HOLD),
        (6, 1000, Verdict.HOLD),
        (1, 100, Verdict.HOLD),  # 1 % exactly: HOLD, not NO_GO
        (10, 1000, Verdict.HOLD),
        (11, 1000, Verdict.NO_GO),
        (0, 538, Verdict.HOLD),
        (0, 539, Verdict.GO),
        (27, 10_000, Verdict.GO),  # 0.27 %, upper bound 0.37 %
        (45, 10_000, Verdict.HOLD),  # 0.45 %: under the bar, its bound is not
    ],
)
def test_error_rates_as_the_reader_computes_them(errors, requests, expected):
    """The reader divides error_count / request_count; the judge multiplies back for the bound.
    The on-bar cases must survive that."""
    rate = errors / requests
    assert verdict_of(request_count=requests, error_count=errors, error_rate=rate) is expected


def test_exactly_on_every_other_bar_with_a_confident_error_rate_is_go():
    """Issue 9: was 'exactly on every bar at once is GO' with 0.5 % errors on 100 requests. The
    error rate now passes on its bound: 0 errors on 539 requests is the smallest such window."""
    j = judge(
        metrics(
            request_count=539,
            error_count=0,
            error_rate=0.0,
            latency_p95_ms=200.0,
            memory_utilization=0.85,
            cpu_utilization=0.80,
        ),
        POLICY,
    )
    assert j.verdict is Verdict.GO
    assert j.measured["error_rate"]["upper_bound"] <= 0.005


def test_a_point_error_rate_exactly_on_the_go_bar_now_holds():
    """Issue 9: the point value on the bar used to pass; on 100 requests its bound is 3.5 %."""
    j = judge(
        metrics(
            request_count=100,
            error_count=0,
            error_rate=0.005,
            latency_p95_ms=200.0,
            memory_utilization=0.85,
            cpu_utilization=0.80,
        ),
        POLICY,
    )
    assert j.verdict is Verdict.HOLD
    assert j.reasons == ("error_rate 0.50% (upper 95% bound 3.54%) > GO bar 0.50%",)


@pytest.mark.parametrize(("errors", "requests"), [(0, 600), (3, 2000), (40, 20_000)])
def test_an_upper_bound_exactly_on_the_go_bar_passes(errors, requests):
    """`<=` applies to the bound: a GO bar set to the bound itself passes, one ulp under holds."""
    rate = errors / requests
    bound = wilson_upper(rate * requests, requests, 0.95)
    assert bound is not None and bound > rate
    on_bar = POLICY.model_copy(update={"go_bars": POLICY.go_bars.model_copy(update={"error_rate": bound})})
    assert verdict_of(on_bar, request_count=requests, error_rate=rate) is Verdict.GO
    under = POLICY.model_copy(
        update={"go_bars": POLICY.go_bars.model_copy(update={"error_rate": below(bound)})}
    )
    j = judge(metrics(request_count=requests, error_rate=rate), under)
    assert j.verdict is Verdict.HOLD
    assert j.reasons[0].startswith(f"error_rate {rate * 100:.2f}% (upper 95% bound ")


def test_on_every_rollback_bar_at_once_is_hold_not_no_go():
    j = judge(metrics(error_rate=0.01, latency_p95_ms=500.0, memory_utilization=0.85), POLICY)
    assert j.verdict is Verdict.HOLD
    assert j.reasons == (
        "error_rate 1.00% (upper 95% bound 1.67%) > GO bar 0.50%",
        "latency_p95 500 ms > GO bar 200 ms",
    )


def test_several_holds_are_all_reported_in_measure_order():
    j = judge(metrics(error_rate=0.008, latency_p95_ms=350.0, cpu_utilization=0.95), POLICY)
    assert j.verdict is Verdict.HOLD
    assert j.reasons == (
        "error_rate 0.80% (upper 95% bound 1.41%) > GO bar 0.50%",
        "latency_p95 350 ms > GO bar 200 ms",
        "cpu 95.00% > GO bar 80.00%",
    )


def test_no_go_lists_every_crossed_bar_then_the_holds():
    j = judge(
        metrics(error_rate=0.03, latency_p95_ms=900.0, memory_utilization=0.97, cpu_utilization=0.99),
        POLICY,
    )
    assert j.verdict is Verdict.NO_GO
    assert j.reasons == (
        "error_rate 3.00% > rollback bar 1.00%",
        "latency_p95 900 ms > rollback bar 500 ms",
        "memory 97.00% > rollback bar 85.00%",
        "cpu 99.00% > GO bar 80.00%",
    )


# ================================================================= judge: missing series


@pytest.mark.parametrize(
    "attribute, name",
    [
        ("error_rate", "error_rate"),
        ("latency_p95_ms", "latency_p95"),
        ("memory_utilization", "memory"),
        ("cpu_utilization", "cpu"),
    ],
)
def test_a_missing_series_is_inconclusive_even_when_the_rest_is_fine(attribute, name):
    j = judge(metrics(**{attribute: None}), POLICY)
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == (f"no data for {name}",)
    assert j.measured[name]["value"] is None


def test_every_series_missing_lists_them_all():
    j = judge(
        metrics(error_rate=None, latency_p95_ms=None, memory_utilization=None, cpu_utilization=None),
        POLICY,
    )
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("no data for error_rate, latency_p95, memory, cpu",)


def test_missing_series_beats_a_hold():
    """A HOLD value next to a missing series is INCONCLUSIVE; the hold value stays in `measured`."""
    j = judge(metrics(latency_p95_ms=300.0, cpu_utilization=None), POLICY)
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("no data for cpu",)
    assert j.measured["latency_p95"]["value"] == 300.0


def test_too_few_requests_beats_a_hold():
    j = judge(metrics(request_count=10, error_rate=0.007), POLICY)
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("10 requests < 100 needed to judge",)


@pytest.mark.parametrize(
    "crossed, missing, reason",
    [
        ({"error_rate": 0.02}, "cpu_utilization", "error_rate 2.00% > rollback bar 1.00%"),
        ({"error_rate": 0.02}, "latency_p95_ms", "error_rate 2.00% > rollback bar 1.00%"),
        ({"latency_p95_ms": 750.0}, "memory_utilization", "latency_p95 750 ms > rollback bar 500 ms"),
        ({"memory_utilization": 0.9}, "error_rate", "memory 90.00% > rollback bar 85.00%"),
    ],
)
def test_no_go_wins_over_a_missing_series(crossed, missing, reason):
    """Implementation: NO_GO is returned before the missing/low-count check, and its reasons do not
    mention the missing series (only `measured` shows the None)."""
    j = judge(metrics(**crossed, **{missing: None}), POLICY)
    assert j.verdict is Verdict.NO_GO
    assert j.reasons == (reason,)


@pytest.mark.parametrize("crossed", [{"error_rate": 0.2}, {"latency_p95_ms": 900.0}])
def test_a_request_measure_on_too_few_requests_is_inconclusive_not_no_go(crossed):
    """One 5xx (or one slow call) among 20 requests is noise, never a rollback bar crossed."""
    j = judge(metrics(request_count=20, error_count=4, **crossed), POLICY)
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("20 requests < 100 needed to judge",)
    assert j.request_count == 20


def test_memory_over_its_bar_is_no_go_whatever_the_request_count():
    j = judge(metrics(request_count=3, memory_utilization=0.9), POLICY)
    assert j.verdict is Verdict.NO_GO
    assert j.reasons == ("memory 90.00% > rollback bar 85.00%",)


@pytest.mark.parametrize(
    "attribute", ["error_rate", "latency_p95_ms", "memory_utilization", "cpu_utilization"]
)
def test_a_nan_measurement_is_never_go(attribute):
    assert verdict_of(**{attribute: math.nan}) is Verdict.INCONCLUSIVE


# ======================================================================== judge: the record


def test_measured_carries_value_and_both_bars_for_every_metric():
    j = judge(metrics(), POLICY)
    assert j.measured == {
        "error_rate": {
            "value": 0.001,
            "go_bar": 0.005,
            "rollback_bar": 0.01,
            "upper_bound": pytest.approx(0.00447, abs=1e-5),
            "confidence": 0.95,
        },
        "latency_p95": {"value": 120.0, "go_bar": 200, "rollback_bar": 500},
        "memory": {"value": 0.40, "go_bar": 0.85, "rollback_bar": 0.85},
        "cpu": {"value": 0.30, "go_bar": 0.80, "rollback_bar": None},
    }


@pytest.mark.parametrize("verdict_overrides", [{}, {"error_rate": 0.02}, {"cpu_utilization": None}])
def test_measured_is_complete_for_every_verdict(verdict_overrides):
    j = judge(metrics(**verdict_overrides), POLICY)
    assert list(j.measured) == ["error_rate", "latency_p95", "memory", "cpu"]
    error_keys = {"value", "go_bar", "rollback_bar", "upper_bound", "confidence"}
    assert set(j.measured["error_rate"]) == error_keys
    assert all(set(j.measured[name]) == {"value", "go_bar", "rollback_bar"} for name in list(j.measured)[1:])


def test_measured_has_no_bound_without_an_error_rate():
    j = judge(metrics(error_rate=None), POLICY)
    assert j.measured["error_rate"] == {"value": None, "go_bar": 0.005, "rollback_bar": 0.01}


def test_zero_requests_give_no_bound_so_the_error_rate_counts_as_missing():
    """A rate with no requests behind it (inconsistent input) has no bound: no data, never GO."""
    j = judge(metrics(request_count=0, error_rate=0.0), POLICY)
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.reasons == ("0 requests < 100 needed to judge", "no data for error_rate")
    assert j.measured["error_rate"]["upper_bound"] is None


def test_the_record_shows_value_bound_and_confidence_for_a_hold():
    j = judge(metrics(error_rate=0.007), POLICY)
    entry = j.measured["error_rate"]
    assert entry["value"] == 0.007
    assert entry["upper_bound"] == pytest.approx(0.01286, abs=1e-5)
    assert entry["confidence"] == 0.95


@pytest.mark.parametrize(
    ("confidence", "expected", "reason"),
    [
        (0.5, Verdict.GO, None),  # z = 0: the bound is the point value, the old rule
        (0.8, Verdict.HOLD, "error_rate 0.40% (upper 80% bound 0.54%) > GO bar 0.50%"),
        (0.95, Verdict.HOLD, "error_rate 0.40% (upper 95% bound 0.71%) > GO bar 0.50%"),
        (0.99, Verdict.HOLD, "error_rate 0.40% (upper 99% bound 0.89%) > GO bar 0.50%"),
    ],
)
def test_the_confidence_comes_from_the_policy(confidence, expected, reason):
    policy = POLICY.model_copy(
        update={"go_bars": POLICY.go_bars.model_copy(update={"error_rate_confidence": confidence})}
    )
    j = judge(metrics(request_count=2000, error_rate=0.004), policy)
    assert j.verdict is expected
    assert j.reasons == (("every GO bar holds",) if reason is None else (reason,))
    assert j.measured["error_rate"]["confidence"] == confidence


# ============================================================================ wilson_upper


@pytest.mark.parametrize(
    ("errors", "requests", "expected"),
    [
        (7, 1000, 0.012861),  # the checklist's 0.7 % example
        (0, 100, 0.026343),  # z^2 / (n + z^2)
        (0, 539, 0.0049945),
        (5, 1000, 0.010235),
        (50, 100, 0.58115),
    ],
)
def test_wilson_upper_known_values(errors, requests, expected):
    assert wilson_upper(errors, requests, 0.95) == pytest.approx(expected, rel=1e-4)


def test_wilson_upper_edges():
    assert wilson_upper(0, 0, 0.95) is None
    assert wilson_upper(3, -1, 0.95) is None
    assert wilson_upper(10, 10, 0.95) == 1.0  # every request failed: capped at 1
    assert wilson_upper(12, 10, 0.95) == 1.0  # a ratio over 1 (inconsistent input) is clamped
    assert wilson_upper(-1, 10, 0.95) == wilson_upper(0, 10, 0.95)
    assert wilson_upper(3, 100, 0.5) == pytest.approx(0.03)  # z = 0: the point value


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    requests=st.integers(1, 1_000_000),
    share=st.floats(0, 1, allow_nan=False),
    confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_wilson_upper_solves_the_score_equation(requests, share, confidence):
    """Independent of how judge.py arranges the formula: the bound u is the root above p of
    n (p - u)^2 = z^2 u (1 - u), it is at least p, and it shrinks with more requests."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    errors = share * requests
    u = wilson_upper(errors, requests, confidence)
    assert u is not None
    p = errors / requests
    assert p - 1e-12 <= u <= 1.0
    if u < 1.0:
        assert requests * (p - u) ** 2 == pytest.approx(z * z * u * (1 - u), rel=1e-6, abs=1e-12)
    more = wilson_upper(share * requests * 4, requests * 4, confidence)
    assert more is not None and more <= u + 1e-12


def test_as_dict_is_the_json_record():
    j = judge(metrics(error_rate=0.007), POLICY)
    assert j.as_dict() == {
        "verdict": "HOLD",
        "reasons": ["error_rate 0.70% (upper 95% bound 1.29%) > GO bar 0.50%"],
        "measured": j.measured,
        "request_count": 1000,
    }
    assert isinstance(j, Judgement)


# =========================================================================== step_for_percent


@pytest.mark.parametrize(
    "percent, index",
    [
        (0, 0),
        (1, 0),
        (3, 0),  # below the first step: step 0
        (5, 0),
        (7, 0),  # between steps: the step at or below
        (9, 0),
        (10, 1),
        (24, 1),
        (25, 2),
        (49, 2),
        (50, 3),
        (99, 3),
        (100, 4),
    ],
)
def test_step_for_percent(percent, index):
    assert step_for_percent(POLICY, percent) == index


# ================================================================================= next_step


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


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.RUNNING])
def test_not_running_is_none_for_every_other_phase(phase):
    for on_step in (timedelta(hours=1), timedelta(hours=500)):  # even far past the deadline
        decision = decide(phase=phase, on_step=on_step, rollback_requested=True)
        assert decision == StepDecision(StepAction.NONE, f"rollout is {phase.value}")


@pytest.mark.parametrize("on_step", [timedelta(hours=1), timedelta(hours=169)])
def test_rollback_requested_holds(on_step):
    decision = decide(rollback_requested=True, paused=True, on_step=on_step)
    assert decision == StepDecision(StepAction.HOLD, "a rollback was requested")


@pytest.mark.parametrize("on_step", [timedelta(hours=1), timedelta(hours=168, seconds=1), timedelta(days=30)])
def test_paused_holds_even_past_the_deadline(on_step):
    assert decide(paused=True, on_step=on_step) == StepDecision(StepAction.HOLD, "paused by hand")


@pytest.mark.parametrize("verdict", [Verdict.HOLD, Verdict.INCONCLUSIVE])
def test_past_the_progress_deadline_freezes_a_rollout_that_cannot_pass(verdict):
    decision = decide(verdict, on_step=timedelta(hours=169))
    assert decision == StepDecision(StepAction.FREEZE, "no progress for 169.0 h (deadline 168 h)")


def test_a_no_go_past_the_deadline_rolls_back_instead_of_freezing():
    """Issue 9: NO_GO past the deadline used to freeze; its soak is long over, so it rolls back."""
    decision = decide(Verdict.NO_GO, on_step=timedelta(hours=169))
    assert decision == StepDecision(StepAction.ROLLBACK, "NO_GO at the end of the 60-min soak at 5%")


@pytest.mark.parametrize("on_step", [timedelta(hours=169), timedelta(days=30)])
def test_a_go_past_the_deadline_advances_instead_of_freezing(on_step):
    """Resumed after a long pause, or checkpoints failing for a week: a healthy, soaked canary
    that passes now moves on; freezing it would also be the wrong answer to its health."""
    decision = decide(Verdict.GO, percent=10, on_step=on_step)
    assert decision.action is StepAction.ADVANCE and decision.next_percent == 25


def test_exactly_on_the_deadline_is_not_yet_frozen():
    """`on_step > deadline`: 168 h exactly still holds; one tick later it freezes."""
    decision = decide(Verdict.HOLD, percent=10, on_step=timedelta(hours=168))
    assert decision == StepDecision(StepAction.HOLD, "verdict HOLD")
    one_tick_later = decide(Verdict.HOLD, percent=10, on_step=timedelta(hours=168, microseconds=1))
    assert one_tick_later.action is StepAction.FREEZE
    assert one_tick_later.reason == "no progress for 168.0 h (deadline 168 h)"


def test_at_100_percent_there_is_nothing_to_do():
    for verdict in Verdict:
        decision = decide(verdict, percent=100, on_step=timedelta(days=2))
        assert decision == StepDecision(StepAction.NONE, "already at the last step")


@pytest.mark.parametrize("verdict", [Verdict.HOLD, Verdict.INCONCLUSIVE])
@pytest.mark.parametrize("percent", [5, 10, 25, 50])
def test_hold_and_inconclusive_hold(verdict, percent):
    decision = decide(verdict, percent=percent, on_step=timedelta(hours=30))  # every soak is over
    assert decision == StepDecision(StepAction.HOLD, f"verdict {verdict.value}")


@pytest.mark.parametrize(
    ("percent", "soak_minutes"), [(5, 60), (7, 60), (10, 1440), (25, 1440), (50, 1440), (60, 1440)]
)
def test_no_go_at_the_end_of_the_soak_rolls_back(percent, soak_minutes):
    """Issue 9: NO_GO after the soak used to hold until the deadline (a flapping canary served
    users for a week); now the step's soak decides: NO_GO rolls back, from the soak's last tick on."""
    soak = timedelta(minutes=soak_minutes)
    before = decide(Verdict.NO_GO, percent=percent, on_step=soak - timedelta(microseconds=1))
    assert before == StepDecision(StepAction.HOLD, "verdict NO_GO")
    for on_step in (soak, soak + timedelta(minutes=1), timedelta(hours=30)):
        decision = decide(Verdict.NO_GO, percent=percent, on_step=on_step)
        assert decision == StepDecision(
            StepAction.ROLLBACK, f"NO_GO at the end of the {soak_minutes}-min soak at {percent}%"
        )
        assert (decision.next_index, decision.next_percent) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"paused": True}, StepDecision(StepAction.HOLD, "paused by hand")),
        ({"rollback_requested": True}, StepDecision(StepAction.HOLD, "a rollback was requested")),
        ({"phase": Phase.FROZEN}, StepDecision(StepAction.NONE, "rollout is FROZEN")),
        ({"phase": Phase.PROMOTED}, StepDecision(StepAction.NONE, "rollout is PROMOTED")),
        ({"percent": 100}, StepDecision(StepAction.NONE, "already at the last step")),
    ],
)
def test_no_go_after_the_soak_does_not_roll_back_when_the_ramp_does_not_run(kwargs, expected):
    """Paused, a rollback already requested, not RUNNING, or at 100 %: no end-of-soak rollback."""
    assert decide(Verdict.NO_GO, on_step=timedelta(hours=2), **kwargs) == expected


def test_no_go_rollback_uses_the_policy_soak(custom):
    assert decide(Verdict.NO_GO, policy=custom, percent=2, on_step=timedelta(minutes=14)).action is (
        StepAction.HOLD
    )
    assert decide(Verdict.NO_GO, policy=custom, percent=2, on_step=timedelta(minutes=15)) == StepDecision(
        StepAction.ROLLBACK, "NO_GO at the end of the 15-min soak at 2%"
    )


@pytest.mark.parametrize(
    "percent, on_step, left",
    [
        (5, timedelta(0), 60),
        (5, timedelta(minutes=30), 30),
        (5, timedelta(minutes=59), 1),
        (10, timedelta(minutes=60), 1380),
        (25, timedelta(hours=23), 60),
        (50, timedelta(minutes=1000), 440),
    ],
)
def test_go_before_the_soak_is_over_holds_with_minutes_left(percent, on_step, left):
    decision = decide(percent=percent, on_step=on_step)
    assert decision == StepDecision(StepAction.HOLD, f"GO, soaking: {left} min left at {percent}%")


@pytest.mark.parametrize(
    "percent, soak_minutes, action, next_index, next_percent",
    [
        (5, 60, StepAction.ADVANCE, 1, 10),
        (10, 1440, StepAction.ADVANCE, 2, 25),
        (25, 1440, StepAction.ADVANCE, 3, 50),
        (50, 1440, StepAction.PROMOTE, 4, 100),
    ],
)
def test_go_after_the_soak_walks_the_ramp(percent, soak_minutes, action, next_index, next_percent):
    soak = timedelta(minutes=soak_minutes)
    just_before = decide(percent=percent, on_step=soak - timedelta(seconds=1))
    assert just_before.action is StepAction.HOLD
    for on_step in (soak, soak + timedelta(minutes=5)):  # exactly on the soak time advances
        decision = decide(percent=percent, on_step=on_step)
        minutes = int(on_step.total_seconds() // 60)
        assert decision == StepDecision(
            action, f"GO after {minutes} min: {next_percent}%", next_index, next_percent
        )


def test_a_share_between_steps_uses_the_step_below():
    """7 % is on the 5 % step: the 5 % soak (60 min) applies and the next share is 10 %."""
    assert decide(percent=7, on_step=timedelta(minutes=30)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 30 min left at 7%"
    )
    assert decide(percent=7, on_step=timedelta(minutes=60)) == StepDecision(
        StepAction.ADVANCE, "GO after 60 min: 10%", 1, 10
    )
    # 30 % is on the 25 % step (1440 min soak) and goes to 50 %; 60 % is on the 50 % step: promote.
    assert decide(percent=30, on_step=timedelta(minutes=1439)).action is StepAction.HOLD
    assert decide(percent=30, on_step=timedelta(minutes=1440)).next_percent == 50
    assert decide(percent=60, on_step=timedelta(minutes=1440)).action is StepAction.PROMOTE


def test_a_share_below_the_first_step_goes_to_the_first_step():
    """3 % (start allows 1..99) soaks like step 0, then goes to 5 %: no ramp step is skipped."""
    assert step_for_percent(POLICY, 3) == 0
    assert decide(percent=3, on_step=timedelta(minutes=59)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 1 min left at 3%"
    )
    assert decide(percent=3, on_step=timedelta(minutes=60)) == StepDecision(
        StepAction.ADVANCE, "GO after 60 min: 5%", 0, 5
    )


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


# ============================================================================ property test


def _around(*bars: float, low: float, high: float) -> st.SearchStrategy[float | None]:
    """None, the bars themselves and their float neighbours, or any finite value in [low, high]."""
    edges = [v for bar in bars for v in (below(bar), bar, above(bar))]
    return st.none() | st.sampled_from(edges) | st.floats(low, high, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    requests=st.sampled_from([0, 1, 99, 100, 101]) | st.integers(0, 100_000),
    error_rate=_around(0.005, 0.01, low=0.0, high=1.0),
    latency=_around(200.0, 500.0, low=0.0, high=5_000.0),
    memory=_around(0.85, low=0.0, high=1.0),
    cpu=_around(0.80, low=0.0, high=1.0),
)
def test_verdict_properties(requests, error_rate, latency, memory, cpu):
    m = metrics(
        request_count=requests,
        error_count=0,
        error_rate=error_rate,
        latency_p95_ms=latency,
        memory_utilization=memory,
        cpu_utilization=cpu,
    )
    j = judge(m, POLICY)
    values = {"error_rate": error_rate, "latency_p95": latency, "memory": memory, "cpu": cpu}
    go_bars = {"error_rate": 0.005, "latency_p95": 200.0, "memory": 0.85, "cpu": 0.80}
    rollback_bars = {"error_rate": 0.01, "latency_p95": 500.0, "memory": 0.85}

    # Error-rate GO is judged on its upper Wilson bound (issue 9); no requests, no bound.
    bound = None if error_rate is None else wilson_upper(error_rate * requests, requests, 0.95)
    passes = values | {"error_rate": bound}
    all_within_go = all(v is not None and v <= go_bars[k] for k, v in passes.items())
    missing = any(v is None for v in passes.values())
    # Error rate and P95 on fewer than min_requests are noise: they cross nothing.
    crossed = any(
        passes[k] is not None and values[k] > bar and (k == "memory" or requests >= 100)
        for k, bar in rollback_bars.items()
    )

    assert (j.verdict is Verdict.GO) == (all_within_go and requests >= 100)
    assert (j.verdict is Verdict.NO_GO) == crossed
    assert (j.verdict is Verdict.INCONCLUSIVE) == (not crossed and (missing or requests < 100))
    if j.verdict is Verdict.HOLD:
        assert not missing and requests >= 100 and not all_within_go
    # The record always shows every value next to its bars, and the error rate's bound.
    assert {k: e["value"] for k, e in j.measured.items()} == values
    if error_rate is not None:
        assert j.measured["error_rate"]["upper_bound"] == bound
        assert bound is None or bound >= error_rate - 1e-12
    if j.verdict is Verdict.GO:
        assert bound is not None and bound <= 0.005 and requests >= 539


def test_rollback_redrive_backs_off_but_never_gives_up():
    from shared.core.judge import rollback_redrive_due

    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def due(
        count: int, minutes_since: float, *, unpublished: bool = False, last: datetime | None = t0
    ) -> bool:
        now = t0 + timedelta(minutes=minutes_since)
        return rollback_redrive_due(
            unpublished=unpublished, published_at=last, redrive_count=count, redrive_at=None, now=now
        )

    assert due(0, 0, unpublished=True)  # never published: at once
    assert due(0, 0, last=None)  # a rollback that failed half-way with no request on record
    assert not due(0, 4.9) and due(0, 5)  # first re-send 5 min after the publish
    assert not due(1, 9.9) and due(1, 10)
    assert not due(3, 39.9) and due(3, 40)
    assert not due(10, 59.9) and due(10, 60)  # capped at an hour, for ever


# ============================================================ canary-guard's own load-test traffic

# Checkpoint windows here: (T0 - 5 min, T0].
W_START, W_END = T0 - timedelta(minutes=5), T0


def load(start_s: float, end_s: float, *, finished: bool = True) -> SyntheticTraffic:
    """A load test from T0 + start_s to T0 + end_s (seconds, negative: before T0)."""
    return SyntheticTraffic(T0 + timedelta(seconds=start_s), T0 + timedelta(seconds=end_s), finished)


def minutes_ago(n: float) -> datetime:
    return T0 - timedelta(minutes=n)


@pytest.mark.parametrize(
    ("start_s", "end_s", "first", "last"),
    [
        (-150, -100, -180, -60),  # 11:57:30-11:58:20 lands in the points ending 11:58 and 11:59
        (-180, -120, -180, -120),  # 11:57:00-11:58:00 is (11:57, 11:58]: the point ending 11:58 alone
        (-179.5, -179, -180, -120),
    ],
)
def test_a_load_test_lands_in_the_minute_points_that_hold_it(start_s, end_s, first, last):
    assert load(start_s, end_s).minutes == (T0 + timedelta(seconds=first), T0 + timedelta(seconds=last))


@pytest.mark.parametrize(("start_s", "end_s"), [(-600, -301), (-400, -300), (1, 30), (60, 120)])
def test_a_load_test_outside_the_window_is_not_in_it(start_s, end_s):
    assert synthetic_in(W_START, W_END, [load(start_s, end_s)]) == []


@pytest.mark.parametrize(("start_s", "end_s"), [(-330, -290), (-20, 10), (-400, 400), (-150, -100)])
def test_a_load_test_touching_the_window_is_in_it(start_s, end_s):
    assert len(synthetic_in(W_START, W_END, [load(start_s, end_s)])) == 1


def test_a_run_in_progress_reaches_to_its_deadline():
    going = load(-120, 400, finished=False)
    assert going.minutes == (minutes_ago(2), T0 + timedelta(minutes=7))


# ============================================================== soak_end_rollback (thin steps)

ROLLBACK = StepDecision(StepAction.ROLLBACK, "NO_GO at the end of the 60-min soak at 5%")


@pytest.mark.parametrize(
    ("requests", "errors", "minutes", "action"),
    [
        (180, 60, 60, StepAction.HOLD),  # 3 requests a minute, a third failing: too thin
        (1199, 30, 60, StepAction.HOLD),  # one request short of 20 a minute
        (1200, 30, 60, StepAction.ROLLBACK),  # 20 a minute: dense enough
        (12000, 150, 60, StepAction.ROLLBACK),
    ],
)
def test_the_end_of_soak_rollback_needs_the_per_minute_density(requests, errors, minutes, action):
    j = judge(metrics(request_count=requests, error_count=errors, error_rate=errors / requests), POLICY)
    assert j.verdict is Verdict.NO_GO
    decided = soak_end_rollback(ROLLBACK, j, minutes, POLICY)
    assert decided.action is action
    if action is StepAction.HOLD:
        assert "too thin to roll back on" in decided.reason and f"{requests} requests" in decided.reason


def test_memory_over_its_bar_rolls_back_at_the_end_of_the_soak_whatever_the_traffic():
    j = judge(metrics(request_count=10, error_count=0, error_rate=0.0, memory_utilization=0.95), POLICY)
    assert soak_end_rollback(ROLLBACK, j, 60, POLICY) is ROLLBACK


@pytest.mark.parametrize("action", [StepAction.HOLD, StepAction.ADVANCE, StepAction.FREEZE, StepAction.NONE])
def test_other_decisions_pass_through_untouched(action):
    decision = StepDecision(action, "x")
    assert soak_end_rollback(decision, judge(metrics(request_count=1), POLICY), 60, POLICY) is decision
