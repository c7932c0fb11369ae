"""When shared/core/judge.py cannot judge (issue 3): a missing series or too few requests make a
step INCONCLUSIVE even next to a HOLD value, a crossed rollback bar still wins over both (NO_GO),
request measures on too few requests are noise while memory over its bar is NO_GO on any traffic,
and a NaN measurement is never GO. Shared helpers: tests/judge_cases.py."""

from __future__ import annotations

import math

import pytest

from shared.core.judge import Verdict, judge
from tests.judge_cases import POLICY, metrics, verdict_of

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
