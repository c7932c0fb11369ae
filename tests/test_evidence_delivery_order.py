"""Delivery order and duplication in shared/core/evidence.py with shared/core/ledger.py's
apply_evidence (issue 9): a property test that any permutation and duplication of the deliveries
from two sources (metrics windows and uptime checks) gives the same ledger and the same rollback
decision as time order, and the cases it singles out: which of two runs is named, a load-test
minute also read as ok, and two sources breaching the same minute. Shared helpers:
tests/evidence_cases.py."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.evidence import Evidence, uptime_evidence
from shared.core.ledger import Outcome, Phase, apply_evidence
from tests.evidence_cases import LIMITS, OK, POLICY, B, S, T, ev, minute

KEEP = timedelta(minutes=POLICY.evidence.ledger_minutes)


# ==================================================== property: order and duplication proof


def _facts_strategy():
    """Per (rule, minute): what the metrics source said (maybe an early thin read first) and, for
    canary_down, what the uptime check said."""
    rules = st.sampled_from(list(LIMITS))
    kinds = st.sampled_from([B, B, B, B, OK, S, T])
    metric = st.tuples(rules, st.integers(0, 14), kinds, st.booleans())
    uptime = st.tuples(st.integers(0, 14), st.sampled_from([B, OK]))
    return st.tuples(st.lists(metric, max_size=40), st.lists(uptime, max_size=8))


def _deliveries(data, metric_facts, uptime_facts):
    """Metrics arrive as windows of consecutive minutes (a checkpoint's lookback, an alert's
    judgement of the latest minutes), uptime one minute per notification; then some deliveries
    are duplicated (at-least-once)."""
    readings: dict[int, list[Evidence]] = {}
    seen_kinds: dict[tuple[str, int], set] = {}
    for rule, i, kind, early_thin in metric_facts:
        seen_kinds.setdefault((rule, i), set()).add(kind)
        readings.setdefault(i, []).append(
            Evidence(rule, minute(i), kind, "metrics", 1.0 if kind is B else 0.0, 0.5, 100)
        )
        if early_thin:  # a first read of the minute before all its points were in
            readings.setdefault(i, []).append(Evidence(rule, minute(i), T, "metrics", 0.0, 0.5, 3))
    for i, kind in uptime_facts:
        seen_kinds.setdefault(("canary_down", i), set()).add(kind)
    deliveries: list[tuple[Evidence, ...]] = []
    start = 0
    cuts = sorted(readings)
    while start < len(cuts):
        size = data.draw(st.integers(1, 4), label="window")
        window = cuts[start : start + size]
        deliveries.append(tuple(e for i in window for e in readings[i]))
        start += max(1, size - data.draw(st.integers(0, size - 1), label="overlap"))
    deliveries += [(uptime_evidence(minute(i), kind is B, POLICY, "incident"),) for i, kind in uptime_facts]
    copies = data.draw(st.lists(st.integers(1, 3), min_size=len(deliveries), max_size=len(deliveries)))
    return [d for d, n in zip(deliveries, copies, strict=True) for _ in range(n)]


def _play(deliveries):
    ledger: dict = {}
    requested = False
    trips = []
    for batch in deliveries:
        decision = apply_evidence(Phase.RUNNING, ledger, requested, list(batch), LIMITS, keep=KEEP)
        if decision.outcome is Outcome.TRIPPED:
            assert decision.trip is not None
            trips.append((decision.trip.rule, tuple(e.minute for e in decision.trip.tripped)))
        requested = requested or decision.request_rollback
        ledger = dict(decision.ledger)
    return ledger, trips


def _kinds(ledger):
    return {(rule, m): e.kind for rule, minutes in ledger.items() for m, e in minutes.items()}


def _windows(ledger):
    """Every set of `limit` consecutive breach minutes (skipped minutes bridging) per rule."""
    found = []
    for rule, limit in LIMITS.items():
        minutes = ledger.get(rule, {})
        if not minutes:
            continue
        run: list[datetime] = []
        m, last = min(minutes), max(minutes)
        while m <= last:
            entry = minutes.get(m)
            if entry is None or entry.kind in (OK, T):
                run = []
            elif entry.kind is B:
                run.append(m)
                if len(run) >= limit:
                    found.append((rule, tuple(run[-limit:])))
            m += timedelta(minutes=1)
    return found


@settings(max_examples=250, deadline=None, derandomize=True)
@given(facts=_facts_strategy(), data=st.data())
def test_any_order_and_duplication_of_the_deliveries_gives_the_same_outcome(facts, data):
    deliveries = _deliveries(data, *facts)
    in_time_order = sorted(deliveries, key=lambda d: (max(e.minute for e in d), min(e.minute for e in d)))
    shuffled = data.draw(st.permutations(deliveries), label="delivery order")
    ledger_t, trips_t = _play(in_time_order)
    ledger_p, trips_p = _play(shuffled)

    # the same ledger: one entry per rule and minute, the strongest reading
    assert _kinds(ledger_p) == _kinds(ledger_t)
    # a rollback is requested at most once, and in both orders or in neither
    assert len(trips_t) <= 1 and len(trips_p) <= 1
    windows = _windows(ledger_t)
    assert bool(trips_p) == bool(trips_t) == bool(windows)
    # the trip names breach minutes that form a run of the final ledger
    for rule, tripped in trips_t + trips_p:
        assert len(tripped) == LIMITS[rule]
        minutes = ledger_t[rule]
        assert all(minutes[m].kind is B for m in tripped)
        m = tripped[0]
        while m < tripped[-1]:
            assert m in minutes and minutes[m].kind in (B, S)
            m += timedelta(minutes=1)
    # when the evidence holds exactly one such run, both orders name it: same rule, same minutes
    if len(windows) == 1:
        assert trips_p == trips_t == windows


def test_which_run_is_named_depends_on_which_was_seen_complete_first():
    """Not a bug, a limit of any online rule: with two tripping runs, the rollback is requested
    at the first one complete in delivery order; the later evidence cannot undo that request."""
    early = [ev("error_rate", i) for i in range(3)]
    late = [ev("memory", i) for i in (10, 11)]
    assert _play([early, late])[1] == [("error_rate", tuple(minute(i) for i in range(3)))]
    assert _play([late, early])[1] == [("memory", (minute(10), minute(11)))]


def test_a_load_test_minute_read_as_ok_too_gives_the_same_decision_in_both_orders():
    """Minute 1 was our load test: one read knew it (skipped), another did not (ok)."""
    run = [ev("error_rate", 0), ev("error_rate", 1, S), ev("error_rate", 2), ev("error_rate", 3)]
    plain = [ev("error_rate", 1, OK)]
    _, skipped_first = _play([run, plain])
    _, ok_first = _play([plain, run])
    assert skipped_first == [("error_rate", (minute(0), minute(2), minute(3)))]  # tripped
    assert ok_first == skipped_first  # actual: [] — never rolled back


def test_two_sources_breaching_the_same_minute_give_the_same_ledger_in_both_orders():
    metrics = Evidence("canary_down", minute(0), B, "metrics", 0.9, 0.5, 40)
    uptime = uptime_evidence(minute(0), True, POLICY, "incident 0.abc")
    one, _ = _play([(metrics,), (uptime,)])
    two, _ = _play([(uptime,), (metrics,)])
    assert one == two
