"""How evidence is stored and told in shared/core/evidence.py (issue 9): the minute keys of the
Firestore ledger map, the Evidence doc round trip (what is unknown left out), describe() for every
kind and source (never saying a value over its bar is under it) and format_value. Shared helpers:
tests/evidence_cases.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.core.evidence import Evidence, format_value, minute_key, parse_minute_key, whole_minute
from tests.evidence_cases import (
    LOAD_TEST,
    OK,
    POLICY,
    T0,
    THIN_NOTE,
    B,
    S,
    T,
    against,
    canary,
    ev,
    judged,
    minute,
    stable,
)

# ============================================================================= keys and docs


def test_minute_keys():
    assert minute_key(datetime(2025, 3, 1, 12, 5, 42, 123, tzinfo=UTC)) == "2025-03-01T12:05Z"
    plus_two = timezone(timedelta(hours=2))
    assert minute_key(datetime(2025, 3, 1, 14, 5, tzinfo=plus_two)) == "2025-03-01T12:05Z"
    assert "." not in minute_key(T0)  # a Firestore map key
    assert parse_minute_key("2025-03-01T12:05Z") == minute(5)
    assert parse_minute_key(minute_key(minute(59))) == minute(59)
    assert whole_minute(datetime(2025, 3, 1, 13, 5, 59, tzinfo=timezone(timedelta(hours=1)))) == minute(5)


@pytest.mark.parametrize(
    "entry",
    [
        Evidence("error_rate", minute(5), B, "metrics", 0.0734, 0.01, 200, ""),
        Evidence("latency_p95", minute(5), T, "metrics", 900.0, 500, 3, THIN_NOTE),
        Evidence("memory", minute(5), OK, "metrics", 0.4, 0.85, None),
        Evidence("error_rate", minute(5), S, "metrics", None, 0.01, 2000, LOAD_TEST),
        Evidence("canary_down", minute(5), B, "uptime", note="incident 0.abc open"),
        Evidence("canary_down", minute(5), OK, "metrics", 0.0, 0.5, 0),  # zeroes are kept
    ],
)
def test_evidence_doc_round_trip(entry):
    doc = entry.as_doc()
    assert Evidence.from_doc(entry.rule, minute_key(entry.minute), doc) == entry


def test_evidence_doc_leaves_out_what_is_unknown():
    assert ev("canary_down", 5, B, "uptime").as_doc() == {"kind": "breach", "source": "uptime"}
    full = Evidence("error_rate", minute(5), B, "metrics", 0.05, 0.01, 200, "n")
    assert full.as_doc() == {
        "kind": "breach",
        "source": "metrics",
        "value": 0.05,
        "threshold": 0.01,
        "requests": 200,
        "note": "n",
    }


def test_evidence_from_a_minimal_doc():
    entry = Evidence.from_doc("memory", "2025-03-01T12:05Z", {"kind": "ok"})
    assert entry == Evidence("memory", minute(5), OK, "", None, None, None, "")
    with pytest.raises(ValueError):
        Evidence.from_doc("memory", "2025-03-01T12:05Z", {"kind": "maybe"})


# ================================================================================== describe


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        (
            Evidence("error_rate", minute(5), B, "metrics", 0.0734, 0.01, 200),
            "error_rate 7.34 % > 1.00 % at 12:05Z (200 requests)",
        ),
        (
            Evidence("error_rate", minute(5), OK, "metrics", 0.002, 0.01, 200),
            "error_rate 0.20 % <= 1.00 % at 12:05Z (200 requests)",
        ),
        (
            Evidence("latency_p95", minute(5), B, "metrics", 812.4, 500, 40),
            "latency_p95 812 ms > 500 ms at 12:05Z (40 requests)",
        ),
        (Evidence("memory", minute(5), B, "metrics", 0.9, 0.85), "memory 90.00 % > 85.00 % at 12:05Z"),
        (
            Evidence("error_rate", minute(5), S, "metrics", None, 0.01, 2000, LOAD_TEST),
            "error_rate skipped at 12:05Z (canary-guard load test)",
        ),
        (Evidence("canary_down", minute(5), B, "uptime"), "canary_down breach at 12:05Z"),
        (
            Evidence("canary_down", minute(5), OK, "uptime", note="incident closed"),
            "canary_down ok at 12:05Z (incident closed)",
        ),
        (
            Evidence("canary_down", minute(5), B, "metrics", 0.9, 0.5, 40, "x"),
            "canary_down 90.00 % > 50.00 % at 12:05Z (40 requests); x",
        ),
    ],
)
def test_describe(entry, text):
    assert entry.describe() == text


def test_format_value():
    assert format_value("latency_p95", 499.6) == "500 ms"
    assert format_value("error_rate", 0.01) == "1.00 %"
    assert format_value("memory", 0.855) == "85.50 %"
    assert format_value("canary_down", 1.0) == "100.00 %"


@pytest.mark.parametrize(
    ("m", "stable_minute", "policy", "rule"),
    [
        (canary(5, 5), None, POLICY, "error_rate"),  # 100 % on 5 requests: THIN
        (canary(200, 100), stable(200, 100), against(), "error_rate"),  # 50 %, stable as bad: OK
    ],
    ids=["thin", "stable-explained"],
)
def test_describe_never_says_a_value_over_its_bar_is_under_it(m, stable_minute, policy, rule):
    entry = judged(m, stable_minute, policy)[rule]
    assert entry.value is not None and entry.threshold is not None and entry.value > entry.threshold
    assert "<=" not in entry.describe(), entry.describe()


def test_describe_a_down_minute_exactly_on_the_bar():
    entry = judged(canary(10, 5))["canary_down"]
    assert entry.kind is B
    assert "50.00 % > 50.00 %" not in entry.describe(), entry.describe()
