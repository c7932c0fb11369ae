"""What the tests of shared/core/evidence.py (the test_evidence_*.py modules) share: the bundled
policy and its consecutive-minute limits, the minute T0 and `minute(i)` after it, the evidence kinds
as B / OK / S / T, the load-test and thin notes, a canary minute `canary(...)` and a stable one
`stable(...)`, `judged` (judge_minute's entries by rule) and `kind_of`, `against` (the policy with
the stable comparison on) and `ev`, one Evidence entry; the helpers a single module needs stay in
that module."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from shared.core.evidence import Evidence, EvidenceKind, MinuteMetrics, judge_minute
from shared.policy import load_policy

POLICY = load_policy()
LIMITS: dict[str, int] = POLICY.consecutive_limits
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
B, OK, S, T = EvidenceKind.BREACH, EvidenceKind.OK, EvidenceKind.SKIPPED, EvidenceKind.THIN
LOAD_TEST = "canary-guard load test"
THIN_NOTE = "too few requests to judge"


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def canary(
    requests: int = 200,
    errors: int = 0,
    latency: float | None = 120.0,
    memory: float | None = 0.4,
    *,
    synthetic: bool = False,
    i: int = 0,
) -> MinuteMetrics:
    return MinuteMetrics(minute(i), requests, errors, latency, memory, 0.3, synthetic)


def judged(m: MinuteMetrics, stable: MinuteMetrics | None = None, policy=POLICY) -> dict[str, Evidence]:
    found = judge_minute(m, stable, policy)
    by_rule = {e.rule: e for e in found}
    assert len(by_rule) == len(found), "one entry per rule"
    assert all(e.minute == m.minute and e.source == "metrics" for e in found)
    return by_rule


def kind_of(m: MinuteMetrics, rule: str, stable: MinuteMetrics | None = None, policy=POLICY):
    entry = judged(m, stable, policy).get(rule)
    return None if entry is None else entry.kind


def against(enabled: bool = True, **margins: float):
    spec = POLICY.evidence.judge_against_stable.model_copy(update={"enabled": enabled, **margins})
    return POLICY.model_copy(
        update={"evidence": POLICY.evidence.model_copy(update={"judge_against_stable": spec})}
    )


def ev(
    rule: str = "error_rate", i: int = 0, kind: EvidenceKind = B, source: str = "metrics", **kw
) -> Evidence:
    return Evidence(rule, minute(i), kind, source, **kw)


def stable(requests: int = 200, errors: int = 0, latency: float | None = 120.0, memory: float | None = 0.4):
    return MinuteMetrics(T0, requests, errors, latency, memory)
