"""The evidence ledger's decisions (shared/core/ledger.py, issue 9): apply_evidence over the
per-minute ledger (limits from the real policy, gaps, thin / skipped / ok minutes, at-most-once
rollback, phases, pruning), the early-alert attribution guard too_early(), and streaks_of() for
display; plus a property test of apply_evidence against a reference model written from the
rule's definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.evidence import Evidence, EvidenceKind, Run
from shared.core.ledger import (
    COUNTING_PHASES,
    IGNORED,
    EvidenceDecision,
    Kind,
    Observation,
    Outcome,
    Phase,
    Streak,
    apply_evidence,
    streaks_of,
    too_early,
)
from shared.policy import RULE_NAMES, load_policy

POLICY = load_policy()
LIMITS: dict[str, int] = {rule: spec.consecutive for rule, spec in POLICY.rollback_rules.items()}
KEEP = timedelta(minutes=POLICY.evidence.ledger_minutes)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
B, OK, S, T = EvidenceKind.BREACH, EvidenceKind.OK, EvidenceKind.SKIPPED, EvidenceKind.THIN
NOT_COUNTING = [phase for phase in Phase if phase not in COUNTING_PHASES]
THRESHOLDS = {"error_rate": 0.01, "latency_p95": 500.0, "memory": 0.85, "canary_down": 0.5}


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def ev(
    rule: str = "error_rate",
    i: int = 0,
    kind: EvidenceKind = B,
    *,
    source: str = "metrics",
    value: float | None = None,
    requests: int | None = 200,
    note: str = "",
) -> Evidence:
    """Evidence for minute T0 + i. Breaches default to twice the threshold, others to half."""
    threshold = THRESHOLDS[rule]
    if value is None and kind in (B, OK):
        value = threshold * (2 if kind is B else 0.5)
    if rule == "memory":
        requests = None
    return Evidence(rule, minute(i), kind, source, value, threshold, requests, note)


def series(rule: str, pattern: str, start: int = 0) -> list[Evidence]:
    """'BBsB.T o' → one entry per character from minute `start`: B breach, o ok, s skipped,
    T thin, '.' or ' ' no entry."""
    kinds = {"B": B, "o": OK, "s": S, "T": T}
    return [ev(rule, start + i, kinds[c]) for i, c in enumerate(pattern) if c in kinds]


def apply(
    entries: list[Evidence],
    ledger: dict | None = None,
    *,
    phase: Phase = Phase.RUNNING,
    requested: bool = False,
    limits: dict[str, int] | None = None,
    keep: timedelta = KEEP,
) -> EvidenceDecision:
    return apply_evidence(
        phase, ledger or {}, requested, entries, LIMITS if limits is None else limits, keep=keep
    )


def feed(batches: list[list[Evidence]], **kwargs) -> tuple[dict, list[EvidenceDecision]]:
    """Apply batches one at a time, as the store does: the ledger and the requested flag carry over."""
    ledger: dict = {}
    requested = False
    decisions = []
    for batch in batches:
        decision = apply(batch, ledger, requested=requested, **kwargs)
        decisions.append(decision)
        if decision.outcome not in (Outcome.NOT_RUNNING,):
            ledger = {rule: dict(m) for rule, m in decision.ledger.items()}
        requested = requested or decision.request_rollback
    return ledger, decisions


def kinds(ledger, rule: str) -> dict[int, str]:
    return {int((m - T0).total_seconds() // 60): e.kind.value for m, e in ledger.get(rule, {}).items()}


def test_the_limits_are_the_bundled_policy_numbers():
    """If policy.yaml changes, this fails first and says why the tables below no longer fit."""
    assert LIMITS == {"error_rate": 3, "latency_p95": 3, "memory": 2, "canary_down": 1}
    assert list(LIMITS) == list(RULE_NAMES)
    assert timedelta(minutes=120) == KEEP


def test_enums_and_sets():
    assert {Phase.RUNNING, Phase.FROZEN} == COUNTING_PHASES
    assert {Outcome.UNCHANGED, Outcome.DUPLICATE, Outcome.NOT_RUNNING, Outcome.TOO_EARLY} == IGNORED
    assert Outcome.COUNTED not in IGNORED and Outcome.TRIPPED not in IGNORED
    assert {k.value for k in Kind} == {"breach", "recovery"}


# ====================================================================== apply_evidence: phases


@pytest.mark.parametrize("phase", NOT_COUNTING)
@pytest.mark.parametrize("requested", [False, True])
def test_a_rollout_that_serves_no_canary_takes_no_evidence(phase, requested):
    held = {"error_rate": {minute(0): ev(i=0), minute(1): ev(i=1)}}
    decision = apply([ev(i=2), ev("canary_down", 2)], held, phase=phase, requested=requested)
    assert decision.outcome is Outcome.NOT_RUNNING
    assert decision.ledger is held  # untouched, not even copied
    assert decision.changed == ()
    assert decision.runs == {}
    assert decision.trip is None
    assert not decision.request_rollback
    assert decision.reason == f"rollout is {phase.value}"


@pytest.mark.parametrize("phase", sorted(COUNTING_PHASES))
def test_running_and_frozen_count_and_trip(phase):
    """FROZEN only stops the ramp: the canary still serves users, so a breach run still trips."""
    decision = apply([ev("canary_down", 0)], phase=phase)
    assert decision.outcome is Outcome.TRIPPED
    assert decision.request_rollback
    decision = apply([ev("error_rate", 0)], phase=phase)
    assert decision.outcome is Outcome.COUNTED


# ======================================================================= apply_evidence: counting


def test_first_evidence_is_counted_with_its_runs():
    decision = apply([ev(i=0), ev("latency_p95", 0, OK)])
    assert decision.outcome is Outcome.COUNTED
    assert decision.changed == (ev(i=0), ev("latency_p95", 0, OK))
    assert decision.ledger == {
        "error_rate": {minute(0): ev(i=0)},
        "latency_p95": {minute(0): ev("latency_p95", 0, OK)},
    }
    assert decision.trip is None and not decision.request_rollback
    assert set(decision.runs) == set(LIMITS)  # every rule of the policy, with or without evidence
    assert decision.runs["error_rate"] == Run("error_rate", 3, 1, 1)
    assert decision.runs["memory"] == Run("memory", 2, 0, 0)
    assert decision.reason == (
        "2 new reading(s) over 1 minute(s); breach: error_rate 2.00 % > 1.00 % at 12:00Z (200 requests); "
        "runs error_rate 1/3"
    )


def test_counted_reason_without_breaches_or_runs():
    decision = apply([ev(i=0, kind=OK), ev("memory", 0, OK)])
    assert decision.outcome is Outcome.COUNTED
    assert decision.reason == "2 new reading(s) over 1 minute(s)"


def test_counted_reason_lists_at_most_four_breaches_and_every_trailing_run():
    entries = [ev("error_rate", 0), ev("error_rate", 1), ev("latency_p95", 0), ev("latency_p95", 1)]
    entries += [ev("error_rate", 5, OK), ev("memory", 0, OK)]
    decision = apply([*entries, ev("latency_p95", 2, OK), ev("error_rate", 7)])
    assert decision.outcome is Outcome.COUNTED
    assert decision.reason.count(" > ") == 4  # five breaches, four described
    assert decision.reason.startswith(
        "8 new reading(s) over 5 minute(s); breach: error_rate 2.00 % > 1.00 % at 12:00Z"
    )
    # latency ended on an ok minute: no trailing run; error_rate's run restarted at minute 7
    assert decision.reason.endswith("; runs error_rate 1/3")


@pytest.mark.parametrize("requested", [False, True])
def test_a_redelivery_is_unchanged(requested):
    first = apply([ev(i=0), ev(i=1, kind=OK)])
    again = apply([ev(i=0), ev(i=1, kind=OK)], first.ledger, requested=requested)
    assert again.outcome is Outcome.UNCHANGED
    assert again.changed == ()
    assert again.trip is None
    assert again.reason == "no new evidence"
    assert again.ledger == first.ledger


@pytest.mark.parametrize(
    ("held", "late", "outcome"),
    [
        (T, S, Outcome.COUNTED),
        (T, OK, Outcome.COUNTED),
        (T, B, Outcome.COUNTED),
        (S, OK, Outcome.UNCHANGED),
        (S, B, Outcome.COUNTED),
        (OK, B, Outcome.COUNTED),
        (T, T, Outcome.UNCHANGED),
        (S, T, Outcome.UNCHANGED),
        (S, S, Outcome.UNCHANGED),
        (OK, T, Outcome.UNCHANGED),
        (OK, S, Outcome.COUNTED),
        (OK, OK, Outcome.UNCHANGED),
        (B, T, Outcome.UNCHANGED),
        (B, S, Outcome.UNCHANGED),
        (B, OK, Outcome.UNCHANGED),
        (B, B, Outcome.UNCHANGED),
    ],
)
def test_a_second_reading_of_a_minute_counts_only_when_stronger(held, late, outcome):
    """breach > ok > skipped > thin; an equal reading keeps the one already held."""
    first = apply([ev("latency_p95", 4, held, source="checkpoint")])
    second = apply([ev("latency_p95", 4, late, source="alert")], first.ledger)
    assert second.outcome is outcome
    kept = second.ledger["latency_p95"][minute(4)]
    if outcome is Outcome.COUNTED:
        assert (kept.kind, kept.source) == (late, "alert")
        assert second.changed == (ev("latency_p95", 4, late, source="alert"),)
    else:
        assert (kept.kind, kept.source) == (held, "checkpoint")


def test_the_callers_ledger_is_never_mutated():
    held = {"error_rate": {minute(0): ev(i=0, kind=OK)}}
    snapshot = {rule: dict(m) for rule, m in held.items()}
    decision = apply([ev(i=0), ev(i=1), ev("memory", 1)], held)
    assert held == snapshot
    assert decision.ledger["error_rate"][minute(0)].kind is B


# ========================================================================= apply_evidence: trips


@pytest.mark.parametrize("rule", list(LIMITS))
def test_each_rule_trips_at_exactly_its_limit(rule):
    limit = LIMITS[rule]
    _ledger, decisions = feed([[ev(rule, i)] for i in range(limit + 2)])
    outcomes = [d.outcome for d in decisions]
    assert outcomes == [Outcome.COUNTED] * (limit - 1) + [Outcome.TRIPPED] + [Outcome.COUNTED] * 2
    trip = decisions[limit - 1].trip
    assert trip is not None and trip.rule == rule
    assert [e.minute for e in trip.tripped] == [minute(i) for i in range(limit)]
    assert trip.tripped_at == minute(limit - 1)
    # after the request: counted as usual, said so, never a second request
    assert decisions[-1].reason.endswith("; rollback already requested")
    assert decisions[-1].trip is None and not decisions[-1].request_rollback
    assert sum(d.request_rollback for d in decisions) == 1


def test_tripped_reason_names_the_rule_the_minutes_and_the_worst_minute():
    entries = [ev(i=0, value=0.02), ev(i=1, value=0.0734), ev(i=2, value=0.05)]
    decision = apply(entries)
    assert decision.outcome is Outcome.TRIPPED
    assert decision.trip is not None and decision.trip.tripped == tuple(entries)
    assert decision.reason == (
        "error_rate breached on 3 consecutive minutes (12:00Z–12:02Z; "
        "worst error_rate 7.34 % > 1.00 % at 12:01Z (200 requests)): roll back"
    )
    assert decision.changed == tuple(entries)


def test_tripped_reason_for_uptime_evidence_without_values():
    down = Evidence("canary_down", minute(3), B, "uptime", note="uptime check failing in 3 regions")
    decision = apply([down])
    assert decision.outcome is Outcome.TRIPPED
    assert decision.reason == (
        "canary_down breached on 1 consecutive minutes (12:03Z–12:03Z; "
        "worst canary_down breach at 12:03Z (uptime check failing in 3 regions)): roll back"
    )


@pytest.mark.parametrize(
    ("pattern", "trips"),
    [
        ("BBB", True),
        ("BB", False),
        ("BB.B", False),  # a minute with no entry breaks the run
        ("BBoB", False),
        ("BBTB", False),  # too thin to judge breaks it
        ("BBsB", True),  # our own load test bridges it
        ("BsBsB", True),
        ("BssssB", False),  # bridged, but only two breaches
        ("sBBB", True),
        ("BBBo", True),  # a run anywhere trips, not only at the end
        ("oBoBoBo", False),
        ("TTTTTT", False),
        ("ssssss", False),
        ("BB.BB.BB", False),
    ],
)
def test_which_error_rate_patterns_trip(pattern, trips):
    decision = apply(series("error_rate", pattern))
    assert (decision.outcome is Outcome.TRIPPED) is trips
    assert decision.request_rollback is trips


def test_a_bridged_trip_lists_only_its_breach_minutes():
    decision = apply(series("error_rate", "BsBsB", start=10))
    assert decision.trip is not None
    assert [e.minute for e in decision.trip.tripped] == [minute(10), minute(12), minute(14)]
    assert "(12:10Z–12:14Z;" in decision.reason


def test_a_late_minute_that_fills_a_gap_trips():
    """Minutes 0, 1 and 3 breach; minute 2 arrives last (a late read) and completes 0-2."""
    _ledger, decisions = feed([series("error_rate", "BB.B"), [ev(i=2)]])
    assert decisions[0].outcome is Outcome.COUNTED
    assert decisions[1].outcome is Outcome.TRIPPED
    assert decisions[1].trip is not None
    assert [e.minute for e in decisions[1].trip.tripped] == [minute(0), minute(1), minute(2)]


def test_a_late_thin_minute_in_a_gap_does_not_trip():
    _, decisions = feed([series("error_rate", "BB.B"), [ev(i=2, kind=T)]])
    assert [d.outcome for d in decisions] == [Outcome.COUNTED, Outcome.COUNTED]


def test_the_earliest_run_trips_first_and_ties_go_to_policy_order():
    # memory (limit 2) completes at minute 1, error_rate (limit 3) at minute 2: memory first
    decision = apply(series("error_rate", "BBB") + series("memory", "BB"))
    assert decision.trip is not None and decision.trip.rule == "memory"
    # both complete at minute 2: error_rate comes before memory in the policy
    decision = apply(series("error_rate", "BBB") + series("memory", "BB", start=1))
    assert decision.trip is not None and decision.trip.rule == "error_rate"
    # reverse the limits' order and the tie goes the other way
    reversed_limits = dict(reversed(list(LIMITS.items())))
    decision = apply(series("error_rate", "BBB") + series("memory", "BB", start=1), limits=reversed_limits)
    assert decision.trip is not None and decision.trip.rule == "memory"


def test_a_rule_missing_from_the_limits_never_trips():
    decision = apply(series("canary_down", "BBBB"), limits={"error_rate": 3})
    assert decision.outcome is Outcome.COUNTED
    assert set(decision.runs) == {"error_rate"}
    assert "canary_down" in decision.ledger


def test_a_ledger_that_already_trips_trips_again_until_the_request_is_recorded():
    """apply_evidence has no memory besides `rollback_requested`: the store must record the
    request in the same transaction, or every later call requests again."""
    tripped = apply(series("canary_down", "B")).ledger
    again = apply([], tripped)
    assert again.outcome is Outcome.TRIPPED and again.changed == ()
    assert apply([], tripped, requested=True).outcome is Outcome.UNCHANGED


def test_evidence_after_the_request_is_counted_not_tripped():
    tripped = apply(series("error_rate", "BBB")).ledger
    decision = apply(series("error_rate", "BBB", start=5) + series("memory", "BB"), tripped, requested=True)
    assert decision.outcome is Outcome.COUNTED
    assert decision.trip is None and not decision.request_rollback
    assert decision.reason.endswith("; rollback already requested")
    assert decision.runs["error_rate"].longest == 3


def test_every_request_path_requests_at_most_once_over_a_long_feed():
    batches = [series("error_rate", "B", start=i) + series("canary_down", "B", start=i) for i in range(30)]
    _, decisions = feed(batches)
    assert [d.outcome for d in decisions].count(Outcome.TRIPPED) == 1
    assert decisions[0].outcome is Outcome.TRIPPED  # canary_down trips on its first minute
    assert decisions[0].trip is not None and decisions[0].trip.rule == "canary_down"


# ==================================================================== apply_evidence: pruning


def test_pruning_keeps_exactly_keep_before_the_newest_minute_of_any_rule():
    keep = timedelta(minutes=10)
    entries = [*series("error_rate", "oooo", start=0), ev("memory", 12, OK)]
    decision = apply(entries, keep=keep)
    # newest is minute 12 (memory): the horizon is minute 2, kept inclusive
    assert sorted(kinds(decision.ledger, "error_rate")) == [2, 3]
    assert sorted(kinds(decision.ledger, "memory")) == [12]


def test_pruning_with_the_policy_window():
    decision = apply([ev(i=0, kind=OK), ev(i=120, kind=OK), ev(i=121, kind=OK)])
    assert sorted(kinds(decision.ledger, "error_rate")) == [120, 121]  # 121 minutes old: gone
    decision = apply([ev(i=0, kind=OK), ev(i=120, kind=OK)])
    assert sorted(kinds(decision.ledger, "error_rate")) == [0, 120]  # exactly `keep` old: kept


def test_a_run_trips_before_it_could_be_pruned_in_time_order():
    keep = timedelta(minutes=10)
    batches = [[ev(i=i)] for i in range(3)] + [[ev(i=i, kind=OK)] for i in range(3, 30)]
    ledger, decisions = feed(batches, keep=keep)
    assert decisions[2].outcome is Outcome.TRIPPED
    assert min(kinds(ledger, "error_rate")) == 19  # the run itself is gone from the ledger now


def test_a_late_run_older_than_the_horizon_still_trips():
    keep = timedelta(minutes=10)
    newer = [ev(i=i, kind=OK) for i in range(20, 30)]
    run = [ev(i=i) for i in range(3)]
    _, in_time_order = feed([run, newer], keep=keep)
    assert in_time_order[0].outcome is Outcome.TRIPPED
    _, late = feed([newer, run], keep=keep)
    assert late[1].outcome is Outcome.TRIPPED  # actual: COUNTED, and the run is not in the ledger


# ===================================================================================== streaks_of


def test_streaks_of_an_empty_ledger():
    assert streaks_of({}) == {}
    assert streaks_of({"error_rate": {}}) == {"error_rate": Streak(0, None)}


def test_streaks_are_the_trailing_run_and_the_newest_minute():
    ledger = apply(
        series("error_rate", "BBoBB")
        + series("latency_p95", "BBBo")
        + series("memory", "BsB")
        + series("canary_down", "BB.B"),
        requested=True,
    ).ledger
    assert streaks_of(ledger) == {
        "error_rate": Streak(2, minute(4)),
        "latency_p95": Streak(0, minute(3)),  # the run ended on an ok minute
        "memory": Streak(2, minute(2)),  # bridged by the load test
        "canary_down": Streak(1, minute(3)),  # the gap broke it
    }


def test_streaks_ignore_limits_and_keep_counting_past_them():
    ledger = {"error_rate": {e.minute: e for e in series("error_rate", "B" * 12)}}
    assert streaks_of(ledger)["error_rate"] == Streak(12, minute(11))


def test_a_trailing_skipped_or_thin_minute():
    ledger = {
        "error_rate": {e.minute: e for e in series("error_rate", "BBs")},
        "latency_p95": {e.minute: e for e in series("latency_p95", "BBT")},
    }
    streaks = streaks_of(ledger)
    assert streaks["error_rate"] == Streak(2, minute(2))  # skipped carries the run
    assert streaks["latency_p95"] == Streak(0, minute(2))  # thin breaks it


def test_streak_defaults():
    assert Streak() == Streak(0, None)


# ======================================================================================= too_early

CREATED = T0
GRACE = timedelta(minutes=5)


def alert(
    kind: Kind = Kind.BREACH,
    sent: timedelta = timedelta(minutes=1),
    *,
    inferred: bool = True,
    opened: object = None,
    rule: str = "canary_down",
) -> Observation:
    detail = {} if opened is None else {"incident_started_at": opened}
    return Observation(rule, kind, CREATED + sent, "evt-1", "alert", detail, inferred_revision=inferred)


def test_observation_defaults():
    o = Observation("error_rate", Kind.BREACH, T0, "evt", "alert")
    assert o.detail == {} and o.inferred_revision is False


def test_an_inferred_breach_inside_the_grace_is_too_early():
    reason = too_early(alert(), CREATED, GRACE)
    assert reason == (
        "canary_down alert names no revision and was sent at 2025-03-01T12:01:00+00:00, within 300 s "
        "of this rollout starting (2025-03-01T12:00:00+00:00): it may be about the previous canary; "
        "a renotification after that counts"
    )


@pytest.mark.parametrize(
    ("sent", "early"),
    [
        (-timedelta(minutes=1), True),  # sent before the rollout started
        (timedelta(0), True),
        (GRACE - timedelta(microseconds=1), True),
        (GRACE, False),  # on the edge: counts
        (GRACE + timedelta(seconds=1), False),
    ],
)
def test_the_grace_edge(sent, early):
    assert bool(too_early(alert(sent=sent), CREATED, GRACE)) is early


@pytest.mark.parametrize(
    ("opened", "early"),
    [
        (CREATED - timedelta(seconds=1), True),  # opened before this rollout: maybe the old canary
        (CREATED, False),  # opened as this rollout started: about this canary
        (CREATED + timedelta(seconds=30), False),
        ("2025-03-01T12:00:30Z", True),  # not a datetime: ignored, the grace decides
    ],
)
def test_an_incident_opened_after_the_rollout_started_counts_at_once(opened, early):
    assert bool(too_early(alert(opened=opened), CREATED, GRACE)) is early


@pytest.mark.parametrize(
    "case",
    [
        {"grace": None},
        {"created": None},
        {"inferred": False},
        {"kind": Kind.RECOVERY},
    ],
)
def test_what_is_never_too_early(case):
    """No grace for the rule, no creation time, a named revision, or a recovery: counted."""
    obs = alert(kind=case.get("kind", Kind.BREACH), inferred=case.get("inferred", True), sent=timedelta(0))
    assert too_early(obs, case.get("created", CREATED), case.get("grace", GRACE)) == ""
    # the same observation with the defaults is too early: each case alone makes the difference
    assert too_early(alert(sent=timedelta(0)), CREATED, GRACE) != ""


# =================================================================== property: a reference model


def reference_trip(ledger, limits) -> tuple[str, list[datetime]] | None:
    """From the rule's definition: a rule trips at breach minute m when `limit` breach minutes
    end at m and every minute between the first and m is a breach or a skipped minute. The
    earliest such m wins; ties go to the order of `limits`."""
    best = None
    for order, (rule, limit) in enumerate(limits.items()):
        minutes = ledger.get(rule, {})
        for m in sorted(minutes):
            if minutes[m].kind is not B:
                continue
            picked, cursor, ok = [], m, True
            while len(picked) < limit:
                entry = minutes.get(cursor)
                if entry is None or entry.kind in (OK, T):
                    ok = False
                    break
                if entry.kind is B:
                    picked.append(cursor)
                cursor -= timedelta(minutes=1)
            if ok:
                key = (m, order)
                if best is None or key < best[0]:
                    best = (key, rule, sorted(picked))
                break
    return None if best is None else (best[1], best[2])


ENTRY = st.tuples(st.sampled_from(list(LIMITS)), st.integers(0, 15), st.sampled_from([B, B, B, OK, S, T]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(batches=st.lists(st.lists(ENTRY, max_size=8), min_size=1, max_size=8))
def test_apply_evidence_matches_the_reference_model(batches):
    ledger: dict = {}
    requested = False
    trips = 0
    for batch in batches:
        entries = [ev(rule, i, kind) for rule, i, kind in batch]
        decision = apply(entries, ledger, requested=requested)
        expected = reference_trip(decision.ledger, LIMITS)
        if decision.outcome is Outcome.TRIPPED:
            trips += 1
            assert not requested
            assert decision.trip is not None
            assert (decision.trip.rule, [e.minute for e in decision.trip.tripped]) == expected
        elif not requested:
            assert expected is None
            assert decision.outcome is (Outcome.COUNTED if decision.changed else Outcome.UNCHANGED)
        # every entry of the batch is in the ledger at its kind or a stronger one
        rank = {T: 0, OK: 1, S: 2, B: 3}
        for e in entries:
            assert rank[decision.ledger[e.rule][e.minute].kind] >= rank[e.kind]
        ledger, requested = dict(decision.ledger), requested or decision.request_rollback
    assert trips <= 1
