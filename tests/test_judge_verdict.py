"""The step verdict of shared/core/judge.py (issues 3 and 9): the table's assumption about the
bundled policy numbers, one case of every verdict (GO, HOLD, NO_GO, INCONCLUSIVE), every GO and
rollback bar just below, exactly on and just above it (a value on a bar passes it; the error rate's
GO is judged on its upper Wilson bound), several bars at once, and a property test of the verdict
over random values around the bars. The policy numbers and issue 9's rules behind the table, and
the shared helpers: tests/judge_cases.py."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.judge import Verdict, judge, wilson_upper
from tests.judge_cases import POLICY, metrics, verdict_of


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
