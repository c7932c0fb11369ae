"""Where evidence comes from in shared/core/evidence.py (issue 9): the tables' assumption about the
bundled policy numbers; judge_minute on one canary minute for every rule (a healthy minute, the
error rate, P95, canary_down and memory at every bar edge and minimum request count, with no or
non-finite data, and a load-test minute skipped for the request rules); uptime_evidence from an
uptime check; and aggregate, the minutes of a window added into one. The stable comparison:
tests/test_evidence_against_stable.py; shared helpers: tests/evidence_cases.py."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from shared.core.evidence import (
    REQUEST_RULES,
    Evidence,
    MinuteMetrics,
    aggregate,
    judge_minute,
    uptime_evidence,
)
from tests.evidence_cases import (
    LOAD_TEST,
    OK,
    POLICY,
    T0,
    THIN_NOTE,
    B,
    S,
    T,
    above,
    below,
    canary,
    judged,
    kind_of,
    minute,
)


def test_the_tables_assume_the_bundled_policy_numbers():
    spec = POLICY.evidence
    assert (spec.min_requests_per_minute, spec.down_error_rate, spec.down_min_requests) == (20, 0.5, 10)
    assert spec.judge_against_stable.enabled is False
    assert (
        spec.judge_against_stable.error_rate_margin,
        spec.judge_against_stable.latency_p95_margin_ratio,
        spec.judge_against_stable.memory_margin,
    ) == (0.005, 0.2, 0.05)
    rules = POLICY.rollback_rules
    assert [rules[r].threshold for r in ("error_rate", "latency_p95", "memory")] == [0.01, 500, 0.85]
    assert REQUEST_RULES == ("error_rate", "latency_p95", "canary_down")


# ============================================================== judge_minute: a healthy minute


def test_a_healthy_minute_is_ok_for_every_rule():
    found = judge_minute(canary(), None, POLICY)
    assert found == [
        Evidence("error_rate", T0, OK, "metrics", 0.0, 0.01, 200),
        Evidence("latency_p95", T0, OK, "metrics", 120.0, 500, 200),
        Evidence("canary_down", T0, OK, "metrics", 0.0, 0.5, 200),
        Evidence("memory", T0, OK, "metrics", 0.4, 0.85, None),  # memory needs no requests
    ]


def test_cpu_never_gives_evidence():
    m = MinuteMetrics(T0, 200, 0, 120.0, 0.4, cpu=1.0)
    assert set(judged(m)) == {"error_rate", "latency_p95", "canary_down", "memory"}


def test_no_requests_and_no_series_give_no_evidence():
    assert judge_minute(canary(requests=0, latency=None, memory=None), None, POLICY) == []


def test_minute_metrics_error_rate():
    assert canary(requests=0).error_rate is None
    assert canary(requests=200, errors=3).error_rate == 0.015


# ================================================================ judge_minute: the error rate


@pytest.mark.parametrize(
    ("requests", "errors", "kind"),
    [
        (200, 0, OK),
        (200, 1, OK),  # 0.5 %
        (1000, 9, OK),
        (200, 2, OK),  # exactly 1 %: on the bar is no breach
        (1000, 10, OK),
        (1001, 11, B),  # 1.099 %
        (1000, 11, B),
        (200, 3, B),
        (20, 1, B),  # 5 % on the minimum request count is judged
        (100_000, 1001, B),  # 1.001 %: just above
        (100_000, 1000, OK),
    ],
)
def test_error_rate_edges(requests, errors, kind):
    entry = judged(canary(requests, errors))["error_rate"]
    assert entry.kind is kind
    assert (entry.value, entry.threshold, entry.requests) == (errors / requests, 0.01, requests)
    assert entry.note == ""


@pytest.mark.parametrize(
    ("requests", "errors", "kind"),
    [
        (19, 0, T),  # one under min_requests_per_minute: too thin, either way
        (19, 19, T),
        (19, 1, T),
        (1, 1, T),
        (20, 0, OK),  # on the minimum: judged
        (20, 1, B),
        (21, 0, OK),
    ],
)
def test_error_rate_minimum_requests(requests, errors, kind):
    entry = judged(canary(requests, errors))["error_rate"]
    assert entry.kind is kind
    assert entry.value == errors / requests and entry.requests == requests
    assert entry.note == (THIN_NOTE if kind is T else "")


def test_error_rate_with_no_requests_gives_no_entry():
    assert "error_rate" not in judged(canary(requests=0, latency=None))


def test_error_rate_edge_moves_with_the_policy():
    strict = POLICY.model_copy(
        update={
            "rollback_rules": POLICY.rollback_rules
            | {"error_rate": POLICY.rollback_rules["error_rate"].model_copy(update={"threshold": 0.25})}
        }
    )
    assert kind_of(canary(100, 25), "error_rate", policy=strict) is OK  # 0.25 exactly
    assert kind_of(canary(100, 26), "error_rate", policy=strict) is B
    assert kind_of(canary(100, 2), "error_rate") is B  # the bundled bar


# ============================================================================ judge_minute: P95


@pytest.mark.parametrize(
    ("latency", "kind"),
    [(0.0, OK), (499.9, OK), (below(500.0), OK), (500.0, OK), (above(500.0), B), (501.0, B), (9000.0, B)],
)
def test_latency_edges(latency, kind):
    entry = judged(canary(latency=latency))["latency_p95"]
    assert (entry.kind, entry.value, entry.threshold, entry.requests) == (kind, latency, 500, 200)


@pytest.mark.parametrize(("requests", "kind"), [(0, T), (1, T), (19, T), (20, B), (500, B)])
def test_latency_minimum_requests(requests, kind):
    entry = judged(canary(requests, latency=900.0))["latency_p95"]
    assert entry.kind is kind
    assert entry.requests == requests
    assert entry.note == (THIN_NOTE if kind is T else "")


@pytest.mark.parametrize("latency", [None, math.nan, math.inf, -math.inf])
def test_no_or_non_finite_latency_gives_no_entry(latency):
    assert "latency_p95" not in judged(canary(latency=latency))


# ======================================================================= judge_minute: canary_down


@pytest.mark.parametrize(
    ("requests", "errors", "kind"),
    [
        (9, 9, T),  # one under down_min_requests: too thin even when every request failed
        (1, 1, T),
        (10, 5, B),  # exactly 50 %: down (>=, unlike the other rules)
        (10, 4, OK),
        (10, 10, B),
        (11, 5, OK),  # 45 %
        (11, 6, B),
        (1000, 499, OK),
        (1000, 500, B),
        (200, 0, OK),
    ],
)
def test_down_edges(requests, errors, kind):
    entry = judged(canary(requests, errors))["canary_down"]
    assert (entry.kind, entry.value, entry.threshold, entry.requests) == (
        kind,
        errors / requests,
        0.5,
        requests,
    )
    assert entry.note == (THIN_NOTE if kind is T else "")


def test_down_with_no_requests_gives_no_entry():
    assert "canary_down" not in judged(canary(0, 0))


def test_a_failing_canary_on_little_traffic_is_down_while_its_error_rate_is_thin():
    """10 requests, all 5xx: too few for the 1 % rule, overwhelming for the down rule."""
    found = judged(canary(10, 10, latency=30.0))
    assert found["canary_down"].kind is B
    assert found["error_rate"].kind is T
    assert found["latency_p95"].kind is T


def test_down_edges_move_with_the_policy():
    policy = POLICY.model_copy(
        update={
            "evidence": POLICY.evidence.model_copy(update={"down_error_rate": 0.75, "down_min_requests": 4})
        }
    )
    assert kind_of(canary(4, 3), "canary_down", policy=policy) is B  # 75 % on 4 requests
    assert kind_of(canary(4, 2), "canary_down", policy=policy) is OK
    assert kind_of(canary(3, 3), "canary_down", policy=policy) is T
    assert judged(canary(4, 3), policy=policy)["canary_down"].threshold == 0.75


# ========================================================================= judge_minute: memory


@pytest.mark.parametrize(
    ("memory", "kind"),
    [(0.0, OK), (0.84, OK), (below(0.85), OK), (0.85, OK), (above(0.85), B), (0.86, B), (1.0, B)],
)
def test_memory_edges(memory, kind):
    entry = judged(canary(memory=memory))["memory"]
    assert (entry.kind, entry.value, entry.threshold, entry.requests) == (kind, memory, 0.85, None)


@pytest.mark.parametrize("requests", [0, 1, 19])
def test_memory_needs_no_requests(requests):
    entry = judged(canary(requests, latency=None, memory=0.9))["memory"]
    assert entry.kind is B and entry.requests is None


@pytest.mark.parametrize("memory", [None, math.nan, math.inf])
def test_no_or_non_finite_memory_gives_no_entry(memory):
    assert "memory" not in judged(canary(memory=memory))


# ==================================================================== judge_minute: synthetic


@pytest.mark.parametrize(("requests", "errors"), [(2000, 0), (2000, 2000), (5, 5), (0, 0)])
def test_a_load_test_minute_is_skipped_for_request_rules(requests, errors):
    """Our own synthetic requests neither hide a breach nor count as one; memory is still judged."""
    found = judged(canary(requests, errors, latency=900.0, memory=0.9, synthetic=True))
    for rule, threshold in (("error_rate", 0.01), ("latency_p95", 500), ("canary_down", 0.5)):
        assert found[rule] == Evidence(rule, T0, S, "metrics", None, threshold, requests, LOAD_TEST)
    assert found["memory"].kind is B


def test_a_load_test_minute_with_healthy_memory():
    found = judged(canary(synthetic=True))
    assert [found[r].kind for r in ("error_rate", "latency_p95", "canary_down", "memory")] == [S, S, S, OK]


# ============================================================================ uptime_evidence


@pytest.mark.parametrize(("failing", "kind"), [(True, B), (False, OK)])
def test_uptime_evidence(failing, kind):
    at = datetime(2025, 3, 1, 13, 5, 42, tzinfo=timezone(timedelta(hours=1)))
    entry = uptime_evidence(at, failing, POLICY, "incident 0.abc")
    assert entry == Evidence("canary_down", minute(5), kind, "uptime", note="incident 0.abc")


# ================================================================================= aggregate


def test_aggregate_of_nothing():
    assert aggregate([]) is None


def test_aggregate_adds_counts_and_keeps_the_worst_utilisation():
    minutes = [
        MinuteMetrics(minute(0), 100, 1, 100.0, 0.5, 0.2),
        MinuteMetrics(minute(1), 100, 3, 900.0, 0.7, 0.9),
        MinuteMetrics(minute(2), 2000, 2000, 5.0, 0.95, 0.1, synthetic=True),  # our load test
        MinuteMetrics(minute(3), 50, 0, None, None, None),
    ]
    whole = aggregate(minutes)
    assert whole is not None
    assert whole.minute == minute(0)
    assert (whole.requests, whole.errors) == (250, 4)  # synthetic requests left out
    assert whole.memory == 0.95 and whole.cpu == 0.9  # utilisations: the worst minute, load test too
    assert whole.synthetic is False
    # request-weighted P95 of the real minutes' P95s: 100 ms covers 100 of 200, 900 ms the rest
    assert whole.latency_p95_ms == 900.0


def test_aggregate_p95_is_request_weighted():
    minutes = [MinuteMetrics(minute(0), 1000, 0, 100.0), MinuteMetrics(minute(1), 10, 0, 900.0)]
    whole = aggregate(minutes)
    assert whole is not None and whole.latency_p95_ms == 100.0  # 1000 of 1010 requests at 100 ms
    minutes = [MinuteMetrics(minute(0), 95, 0, 100.0), MinuteMetrics(minute(1), 5, 0, 900.0)]
    assert aggregate(minutes).latency_p95_ms == 100.0  # exactly 95 %: the 95th percentile is 100 ms
    minutes = [MinuteMetrics(minute(0), 94, 0, 100.0), MinuteMetrics(minute(1), 6, 0, 900.0)]
    assert aggregate(minutes).latency_p95_ms == 900.0


def test_aggregate_without_requests_or_with_non_finite_values():
    minutes = [
        MinuteMetrics(minute(0), 0, 0, 300.0, math.nan),
        MinuteMetrics(minute(1), 0, 0, 700.0, 0.3),
        MinuteMetrics(minute(2), 0, 0, math.nan, math.inf),
    ]
    whole = aggregate(minutes)
    assert whole is not None
    assert whole.requests == 0 and whole.error_rate is None
    assert whole.latency_p95_ms == 700.0  # no requests to weigh: the worst P95
    assert whole.memory == 0.3
    assert aggregate([MinuteMetrics(minute(0))]).latency_p95_ms is None
