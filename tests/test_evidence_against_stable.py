"""judge_minute against stable in shared/core/evidence.py (issue 9): off by default (the bars are
absolute), and when the policy turns it on a canary breach shared by stable in the same minute is
OK with a note; the error-rate, canary_down, P95 and memory margins at their edges, the stable
minute's own minimum requests and readings, the policy's default margins, and a load-test minute
skipped whatever stable did. Shared helpers: tests/evidence_cases.py."""

from __future__ import annotations

import math

import pytest

from shared.core.evidence import judge_minute
from tests.evidence_cases import OK, POLICY, B, S, above, against, canary, judged, kind_of, stable

# ============================================================= judge_minute: against stable


def test_stable_is_ignored_by_default():
    """The checklist's bars are absolute: a breach shared with stable still counts."""
    bad = canary(200, 100, latency=900.0, memory=0.95)
    as_bad = stable(200, 100, latency=900.0, memory=0.95)
    found = judged(bad, as_bad)
    assert {rule: e.kind for rule, e in found.items()} == dict.fromkeys(found, B)
    assert all(e.note == "" for e in found.values())
    assert judge_minute(bad, as_bad, POLICY) == judge_minute(bad, None, POLICY)
    # ...and an explicitly disabled comparison with tiny margins is the same
    assert judge_minute(bad, as_bad, against(False)) == judge_minute(bad, None, POLICY)


def test_a_shared_outage_is_ok_with_a_note_when_judging_against_stable():
    policy = against()
    found = judged(canary(200, 100, latency=900.0, memory=0.95), stable(200, 100, 900.0, 0.95), policy)
    assert {rule: e.kind for rule, e in found.items()} == dict.fromkeys(found, OK)
    assert found["error_rate"].value == 0.5  # the canary's own value is kept
    assert found["error_rate"].note == "stable 50.00 % in the same minute: not the canary's fault"
    assert found["canary_down"].note == "stable 50.00 % in the same minute: not the canary's fault"
    assert found["latency_p95"].note == "stable 900 ms in the same minute: not the canary's fault"
    assert found["memory"].note == "stable 95.00 % in the same minute: not the canary's fault"


def test_no_stable_minute_leaves_the_breach():
    found = judged(canary(200, 100, latency=900.0, memory=0.95), None, against())
    assert all(e.kind is B and e.note == "" for e in found.values())


# margins chosen to be exact in binary: stable + margin is computed without rounding
EXACT = {"error_rate_margin": 0.125, "latency_p95_margin_ratio": 0.25, "memory_margin": 0.0625}


@pytest.mark.parametrize(
    ("canary_errors", "kind"),
    [
        (374, OK),  # 37.4 %: under stable 25 % + 12.5 points
        (375, OK),  # exactly on the margin: not worse
        (376, B),
        (1000, B),
    ],
)
def test_error_rate_margin_edges(canary_errors, kind):
    found = judged(canary(1000, canary_errors), stable(20, 5), against(**EXACT))
    assert found["error_rate"].kind is kind
    assert bool(found["error_rate"].note) is (kind is OK)


@pytest.mark.parametrize(("canary_errors", "kind"), [(625, OK), (626, B), (1000, B)])
def test_down_margin_edges(canary_errors, kind):
    """Stable at 50 % (10 / 20) with a 12.5-point margin: a canary at 62.5 % shares the outage."""
    found = judged(canary(1000, canary_errors), stable(20, 10), against(**EXACT))
    assert found["canary_down"].kind is kind


@pytest.mark.parametrize(("stable_requests", "kind"), [(0, B), (19, B), (20, OK)])
def test_stable_needs_the_minimum_requests_for_error_rules(stable_requests, kind):
    s = stable(stable_requests, stable_requests // 2)  # 50 % (or no rate at all)
    found = judged(canary(200, 100), s, against(**EXACT))
    assert found["error_rate"].kind is kind
    assert found["canary_down"].kind is kind


@pytest.mark.parametrize(("latency", "kind"), [(599.0, OK), (600.0, OK), (above(600.0), B), (700.0, B)])
def test_latency_margin_edges(latency, kind):
    """Stable 480 ms × 1.25 = 600 ms: a canary at or under it shares stable's slowness."""
    found = judged(canary(latency=latency), stable(latency=480.0), against(**EXACT))
    assert found["latency_p95"].kind is kind


@pytest.mark.parametrize(
    ("stable_kwargs", "kind"),
    [
        ({"latency": None}, B),
        ({"latency": math.nan}, B),
        ({"requests": 19, "latency": 480.0}, B),
        ({"requests": 20, "latency": 480.0}, OK),
    ],
)
def test_latency_comparison_needs_a_stable_p95_on_enough_requests(stable_kwargs, kind):
    found = judged(canary(latency=550.0), stable(**stable_kwargs), against(**EXACT))
    assert found["latency_p95"].kind is kind


@pytest.mark.parametrize(("memory", "kind"), [(0.9, OK), (0.9375, OK), (above(0.9375), B), (1.0, B)])
def test_memory_margin_edges(memory, kind):
    """Stable 87.5 % + 6.25 points = 93.75 %; memory needs no requests on either side."""
    found = judged(canary(memory=memory), stable(0, 0, None, 0.875), against(**EXACT))
    assert found["memory"].kind is kind


@pytest.mark.parametrize("stable_memory", [None, math.nan])
def test_memory_comparison_needs_a_stable_reading(stable_memory):
    found = judged(canary(memory=0.9), stable(memory=stable_memory), against(**EXACT))
    assert found["memory"].kind is B


def test_a_canary_under_its_bars_is_ok_without_a_note_whatever_stable_did():
    found = judged(canary(), stable(200, 0, 5.0, 0.01), against(**EXACT))
    assert all(e.kind is OK and e.note == "" for e in found.values())


def test_default_margins_with_the_comparison_on():
    """error 0.5 points, P95 +20 %, memory 5 points (the policy file's numbers)."""
    policy = against()
    s = stable(1000, 20, 600.0, 0.86)  # 2 %, 600 ms, 86 %
    assert kind_of(canary(1000, 25, 720.0, 0.91), "error_rate", s, policy) is OK  # 2.5 %: 2 % + 0.5
    assert kind_of(canary(1000, 26, 720.0, 0.91), "error_rate", s, policy) is B
    assert kind_of(canary(1000, 25, 720.0, 0.91), "latency_p95", s, policy) is OK  # 600 × 1.2 = 720
    assert kind_of(canary(1000, 25, 721.0, 0.91), "latency_p95", s, policy) is B
    assert kind_of(canary(1000, 25, 720.0, 0.90), "memory", s, policy) is OK
    assert kind_of(canary(1000, 25, 720.0, 0.92), "memory", s, policy) is B


def test_a_load_test_minute_is_skipped_whatever_stable_did():
    found = judged(canary(200, 200, synthetic=True), stable(200, 0), against())
    assert found["error_rate"].kind is S and found["canary_down"].kind is S
