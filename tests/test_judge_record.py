"""The judgement record of shared/core/judge.py (issue 9): `measured` carries every value with its
GO and rollback bars and, for the error rate, its upper bound and confidence (taken from the
policy); wilson_upper at known values, at its edges and against the score equation (a property
test); and as_dict, the JSON record. Shared helpers: tests/judge_cases.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.judge import Judgement, Verdict, judge, wilson_upper
from tests.judge_cases import POLICY, metrics

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
