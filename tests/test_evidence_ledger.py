"""The per-minute evidence ledger in shared/core/evidence.py (issue 9): merge keeps the strongest
reading of a minute in any order and reports what changed; run_of and runs find runs of breach
minutes with gaps, thin, skipped and ok minutes; first_trip names the earliest tripped run and
breaks ties by the order of the limits; prune keeps the ledger's horizon. Shared helpers:
tests/evidence_cases.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shared.core.evidence import Evidence, Run, first_trip, merge, prune, run_of, runs
from tests.evidence_cases import LIMITS, OK, T0, B, S, T, ev, minute

RANK = {T: 0, OK: 1, S: 2, B: 3}


def ledger_of(*entries: Evidence) -> dict[str, dict[datetime, Evidence]]:
    return merge({}, entries)[0]


def series(rule: str, pattern: str, start: int = 0) -> dict[datetime, Evidence]:
    """'BBsB.T o' → B breach, o ok, s skipped, T thin, '.' / ' ' no entry, from minute `start`."""
    kinds = {"B": B, "o": OK, "s": S, "T": T}
    return {minute(start + i): ev(rule, start + i, kinds[c]) for i, c in enumerate(pattern) if c in kinds}


# ================================================================================ merge


@pytest.mark.parametrize("held", [T, S, OK, B])
@pytest.mark.parametrize("late", [T, S, OK, B])
def test_merge_keeps_the_stronger_kind_in_either_order(held, late):
    a, b = ev(i=3, kind=held, source="checkpoint"), ev(i=3, kind=late, source="alert")
    one, changed_one = merge(ledger_of(a), [b])
    two, _ = merge(ledger_of(b), [a])
    assert one["error_rate"][minute(3)].kind is two["error_rate"][minute(3)].kind
    assert one["error_rate"][minute(3)].kind is max(held, late, key=RANK.get)
    if RANK[late] > RANK[held]:
        assert changed_one == [b] and one["error_rate"][minute(3)] is b
    else:  # weaker or equal: the reading already held stays, nothing changed
        assert changed_one == [] and one["error_rate"][minute(3)] is a


def test_merge_adds_new_minutes_and_rules_and_reports_them():
    held = ledger_of(ev(i=0), ev("memory", 0, OK))
    new = [ev(i=1, kind=OK), ev("canary_down", 1), ev(i=0)]  # the last one is known already
    merged, changed = merge(held, new)
    assert changed == new[:2]
    assert set(merged) == {"error_rate", "memory", "canary_down"}
    assert sorted(merged["error_rate"]) == [minute(0), minute(1)]


def test_merge_never_mutates_its_input():
    held = ledger_of(ev(i=0, kind=T))
    before = {rule: dict(m) for rule, m in held.items()}
    merged, _ = merge(held, [ev(i=0), ev(i=1), ev("memory", 0)])
    assert held == before
    assert merged is not held and merged["error_rate"] is not held["error_rate"]


def test_merge_within_one_batch():
    """Several readings of one minute in one batch: the strongest stays, duplicates change nothing."""
    merged, changed = merge({}, [ev(i=0, kind=T), ev(i=0, kind=B), ev(i=0, kind=OK), ev(i=0, kind=B)])
    assert merged["error_rate"][minute(0)].kind is B
    assert [e.kind for e in changed] == [B]  # one entry per minute: the reading that stayed


def test_merge_of_nothing():
    assert merge({}, []) == ({}, [])
    held = ledger_of(ev(i=0))
    assert merge(held, []) == (held, [])


# ================================================================================ run_of / runs


@pytest.mark.parametrize(
    ("pattern", "limit", "trailing", "longest", "tripped"),
    [
        ("", 3, 0, 0, []),
        ("B", 1, 1, 1, [0]),
        ("B", 3, 1, 1, []),
        ("BBB", 3, 3, 3, [0, 1, 2]),
        ("BBBBB", 3, 5, 5, [0, 1, 2]),  # the first run reaching the limit, its first minutes
        ("BB.B", 3, 1, 2, []),  # a missing minute breaks
        ("BBoB", 3, 1, 2, []),
        ("BBTB", 3, 1, 2, []),
        ("BBsB", 3, 3, 3, [0, 1, 3]),  # skipped bridges and is not listed
        ("sssBsssBsssBsss", 3, 3, 3, [3, 7, 11]),  # trailing skipped keep the run
        ("BBo", 2, 0, 2, [0, 1]),  # a run anywhere trips; the trailing run is 0
        ("BoBBoBBB", 3, 3, 3, [5, 6, 7]),
        ("BoBBoBBB", 2, 3, 3, [2, 3]),
        ("TTTT", 1, 0, 0, []),
        ("oooo", 1, 0, 0, []),
        ("ssss", 1, 0, 0, []),
        ("BBBoBBBB", 4, 4, 4, [4, 5, 6, 7]),
    ],
)
def test_run_of(pattern, limit, trailing, longest, tripped):
    run = run_of("error_rate", series("error_rate", pattern), limit)
    assert (run.rule, run.limit, run.trailing, run.longest) == ("error_rate", limit, trailing, longest)
    assert [int((e.minute - T0) / timedelta(minutes=1)) for e in run.tripped] == tripped
    assert run.tripped_at == (minute(tripped[-1]) if tripped else None)
    assert all(e.kind is B for e in run.tripped)


def test_run_of_does_not_care_about_insertion_order():
    forwards = series("error_rate", "BBsBoBB.BBB")
    backwards = dict(reversed(list(forwards.items())))
    assert run_of("error_rate", forwards, 3) == run_of("error_rate", backwards, 3)


def test_runs_covers_every_rule_of_the_limits_only():
    ledger = {"error_rate": series("error_rate", "BBB"), "cpu": series("cpu", "BBBB")}
    found = runs(ledger, {"error_rate": 3, "memory": 2})
    assert set(found) == {"error_rate", "memory"}
    assert found["memory"] == Run("memory", 2, 0, 0)
    assert found["error_rate"].tripped_at == minute(2)


# ================================================================================= first_trip


def test_first_trip_none():
    assert first_trip({}, LIMITS) is None
    assert first_trip({"error_rate": series("error_rate", "BBoBB")}, LIMITS) is None


def test_first_trip_is_the_earliest_tripped_minute():
    ledger = {
        "error_rate": series("error_rate", "BBB", start=5),  # trips at minute 7
        "memory": series("memory", "BB", start=7),  # trips at minute 8
        "latency_p95": series("latency_p95", "BBB", start=4),  # trips at minute 6
    }
    trip = first_trip(ledger, LIMITS)
    assert trip is not None and trip.rule == "latency_p95" and trip.tripped_at == minute(6)


@pytest.mark.parametrize(
    ("order", "winner"),
    [
        (["error_rate", "latency_p95", "memory", "canary_down"], "error_rate"),
        (["canary_down", "memory", "latency_p95", "error_rate"], "canary_down"),
        (["memory", "error_rate", "canary_down", "latency_p95"], "memory"),
    ],
)
def test_first_trip_ties_go_to_the_order_of_the_limits(order, winner):
    """Every rule completes its run at minute 4: the earliest rule in the policy wins."""
    ledger = {
        "error_rate": series("error_rate", "BBB", start=2),
        "latency_p95": series("latency_p95", "BBB", start=2),
        "memory": series("memory", "BB", start=3),
        "canary_down": series("canary_down", "B", start=4),
    }
    limits = {rule: LIMITS[rule] for rule in order}
    trip = first_trip(ledger, limits)
    assert trip is not None and trip.rule == winner and trip.tripped_at == minute(4)


def test_first_trip_an_earlier_run_beats_an_earlier_listed_rule():
    ledger = {"error_rate": series("error_rate", "BBB", start=1), "canary_down": series("canary_down", "B")}
    trip = first_trip(ledger, LIMITS)
    assert trip is not None and trip.rule == "canary_down"


# ====================================================================================== prune


def test_prune_keeps_the_horizon_inclusive_for_every_rule():
    ledger = {
        "error_rate": series("error_rate", "BBBBB"),
        "memory": series("memory", "oo", start=3),
        "canary_down": {},
    }
    pruned = prune(ledger, keep=timedelta(minutes=2), newest=minute(4))
    assert sorted(pruned["error_rate"]) == [minute(2), minute(3), minute(4)]
    assert sorted(pruned["memory"]) == [minute(3), minute(4)]
    assert pruned["canary_down"] == {}
    assert len(ledger["error_rate"]) == 5  # not mutated


def test_prune_everything_and_nothing():
    ledger = {"error_rate": series("error_rate", "BBB")}
    assert prune(ledger, keep=timedelta(minutes=1), newest=minute(10)) == {"error_rate": {}}
    assert prune(ledger, keep=timedelta(hours=1), newest=minute(2)) == ledger
