"""The pure streak core (shared/core.py): limits from the real policy, resets, event-time
ordering, dedupe, at-most-once rollback, sticky phases; plus property tests against a tiny
reference model."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core import (
    IGNORED,
    Kind,
    Observation,
    Outcome,
    Phase,
    Streak,
    StreakDecision,
    StreakState,
    apply_observation,
)
from shared.policy import RULE_NAMES, load_policy

POLICY = load_policy()
LIMITS: dict[str, int] = {rule: spec.consecutive for rule, spec in POLICY.rollback_rules.items()}
T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
# FROZEN only stops the ramp: the canary still serves traffic, so its streaks count.
COUNTING_PHASES = [Phase.RUNNING, Phase.FROZEN]
NOT_RUNNING_PHASES = [phase for phase in Phase if phase not in COUNTING_PHASES]

_ids = iter(range(10**9))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def obs(
    rule: str = "error_rate", kind: Kind = Kind.BREACH, t: float = 0, eid: str | None = None
) -> Observation:
    return Observation(
        rule=rule,
        kind=kind,
        event_time=at(t),
        event_id=eid if eid is not None else f"evt-{next(_ids)}",
        source="alert",
        detail={"incident_id": "0.abc"},
    )


def breach(rule: str = "error_rate", t: float = 0, eid: str | None = None) -> Observation:
    return obs(rule, Kind.BREACH, t, eid)


def recovery(rule: str = "error_rate", t: float = 0, eid: str | None = None) -> Observation:
    return obs(rule, Kind.RECOVERY, t, eid)


def apply(state: StreakState, o: Observation, *, duplicate: bool = False) -> StreakDecision:
    return apply_observation(state, o, LIMITS, duplicate=duplicate)


def feed(state: StreakState, observations: list[Observation]) -> tuple[StreakState, list[StreakDecision]]:
    decisions = []
    for o in observations:
        decision = apply(state, o)
        decisions.append(decision)
        state = decision.state
    return state, decisions


def count(state: StreakState, rule: str) -> int:
    streak = state.streaks.get(rule)
    return streak.count if streak else 0


# --------------------------------------------------------------------------- limits and tripping


def test_limits_come_from_the_bundled_policy():
    assert LIMITS == {"error_rate": 3, "latency_p95": 3, "memory": 2, "canary_down": 1}


@pytest.mark.parametrize(("rule", "limit"), sorted(LIMITS.items()))
def test_rule_trips_exactly_at_its_limit_not_before(rule, limit):
    state = StreakState()
    for n in range(1, limit):
        decision = apply(state, breach(rule, t=n))
        assert decision.outcome is Outcome.COUNTED
        assert decision.count == n
        assert decision.limit == limit
        assert decision.rule == rule
        assert decision.request_rollback is False
        assert decision.reason == f"{rule} breach {n} of {limit}"
        state = decision.state
        assert state.rollback_requested is False
        assert state.streaks[rule] == Streak(n, at(n))
    decision = apply(state, breach(rule, t=limit))
    assert decision.outcome is Outcome.TRIPPED
    assert decision.request_rollback is True
    assert decision.count == limit
    assert decision.limit == limit
    assert f"limit {limit}" in decision.reason and "roll back" in decision.reason
    assert decision.state.rollback_requested is True
    assert decision.state.phase is Phase.RUNNING  # the core only requests; the store changes phase
    assert decision.state.streaks[rule] == Streak(limit, at(limit))


def test_canary_down_trips_on_the_first_breach():
    decision = apply(StreakState(), breach("canary_down"))
    assert decision.outcome is Outcome.TRIPPED
    assert decision.count == 1


@pytest.mark.parametrize(("rule", "limit"), sorted(LIMITS.items()))
def test_breaches_after_the_trip_are_counted_but_request_nothing(rule, limit):
    state, decisions = feed(StreakState(), [breach(rule, t=n) for n in range(limit + 3)])
    outcomes = [d.outcome for d in decisions]
    assert outcomes == [Outcome.COUNTED] * (limit - 1) + [Outcome.TRIPPED] + [Outcome.COUNTED] * 3
    for n, decision in enumerate(decisions[limit:], start=limit + 1):
        assert decision.count == n
        assert decision.request_rollback is False
        assert decision.reason == f"{rule} breach {n} of {limit}; rollback already requested"
    assert state.rollback_requested is True
    assert count(state, rule) == limit + 3


def test_another_rule_reaching_its_limit_after_a_trip_does_not_request_again():
    _, decisions = feed(
        StreakState(),
        [
            breach("memory", 1),
            breach("memory", 2),
            breach("error_rate", 3),
            breach("error_rate", 4),
            breach("error_rate", 5),
            breach("canary_down", 6),
        ],
    )
    assert [d.outcome for d in decisions] == [
        Outcome.COUNTED,
        Outcome.TRIPPED,
        Outcome.COUNTED,
        Outcome.COUNTED,
        Outcome.COUNTED,
        Outcome.COUNTED,
    ]
    assert decisions[4].reason == "error_rate breach 3 of 3; rollback already requested"
    assert decisions[5].reason == "canary_down breach 1 of 1; rollback already requested"
    assert sum(d.request_rollback for d in decisions) == 1


def test_a_state_that_already_requested_never_trips():
    state = StreakState(rollback_requested=True)
    decision = apply(state, breach("canary_down"))
    assert decision.outcome is Outcome.COUNTED
    assert decision.count == 1
    assert decision.state.rollback_requested is True


# --------------------------------------------------------------------------- recovery


def test_recovery_resets_the_streak_and_the_next_breach_counts_from_one():
    state, decisions = feed(
        StreakState(), [breach(t=1), breach(t=2), recovery(t=3), breach(t=4), breach(t=5), breach(t=6)]
    )
    assert [(d.outcome, d.count) for d in decisions] == [
        (Outcome.COUNTED, 1),
        (Outcome.COUNTED, 2),
        (Outcome.RESET, 0),
        (Outcome.COUNTED, 1),
        (Outcome.COUNTED, 2),
        (Outcome.TRIPPED, 3),
    ]
    assert decisions[2].reason == "error_rate recovered; streak reset from 2"
    assert decisions[2].state.streaks["error_rate"] == Streak(0, at(3))
    assert decisions[2].request_rollback is False
    assert state.rollback_requested is True


def test_recovery_of_a_rule_never_seen_resets_from_zero_and_records_its_time():
    decision = apply(StreakState(), recovery("latency_p95", t=7))
    assert decision.outcome is Outcome.RESET
    assert decision.count == 0
    assert decision.reason == "latency_p95 recovered; streak reset from 0"
    assert decision.state.streaks == {"latency_p95": Streak(0, at(7))}


def test_recovery_after_a_trip_does_not_clear_the_request():
    state, decisions = feed(
        StreakState(),
        [
            breach("memory", 1),
            breach("memory", 2),
            recovery("memory", 3),
            breach("memory", 4),
            breach("memory", 5),
        ],
    )
    assert [d.outcome for d in decisions] == [
        Outcome.COUNTED,
        Outcome.TRIPPED,
        Outcome.RESET,
        Outcome.COUNTED,
        Outcome.COUNTED,
    ]
    assert state.rollback_requested is True
    assert count(state, "memory") == 2


def test_alternating_breach_and_recovery_never_trips():
    observations = []
    for n in range(20):
        observations += [
            breach("error_rate", 2 * n),
            breach("error_rate", 2 * n),
            recovery("error_rate", 2 * n + 1),
        ]
    state, decisions = feed(StreakState(), observations)
    assert Outcome.TRIPPED not in {d.outcome for d in decisions}
    assert max(d.count for d in decisions) == 2
    assert state.rollback_requested is False
    assert state.streaks["error_rate"] == Streak(0, at(39))


# --------------------------------------------------------------------------- event-time ordering


def test_an_older_observation_than_the_last_applied_is_stale_and_changes_nothing():
    state, _ = feed(StreakState(), [breach(t=10), breach(t=20)])
    late = breach(t=15)
    decision = apply(state, late)
    assert decision.outcome is Outcome.STALE
    assert decision.state is state
    assert decision.count == 2
    assert decision.request_rollback is False
    assert decision.reason == (
        f"observed at {at(15).isoformat()}, before the last applied {at(20).isoformat()}"
    )


def test_a_stale_recovery_does_not_reset():
    state, _ = feed(StreakState(), [breach(t=10), breach(t=11)])
    decision = apply(state, recovery(t=5))
    assert decision.outcome is Outcome.STALE
    assert decision.state is state
    assert count(decision.state, "error_rate") == 2


def test_a_stale_breach_after_a_recovery_does_not_count():
    state, _ = feed(StreakState(), [breach(t=10), recovery(t=20)])
    decision = apply(state, breach(t=19))
    assert decision.outcome is Outcome.STALE
    assert decision.state.streaks["error_rate"] == Streak(0, at(20))


def test_a_stale_breach_cannot_trip():
    state, _ = feed(StreakState(), [breach("memory", t=10)])
    state, _ = feed(state, [recovery("memory", t=30)])
    decision = apply(state, breach("memory", t=20))  # would be the 2nd in a row if it were applied
    assert decision.outcome is Outcome.STALE
    assert decision.state.rollback_requested is False


def test_an_observation_at_the_same_time_as_the_last_applied_is_applied():
    state, decisions = feed(StreakState(), [breach(t=10), breach(t=10), breach(t=10)])
    assert [d.outcome for d in decisions] == [Outcome.COUNTED, Outcome.COUNTED, Outcome.TRIPPED]
    decision = apply(state, recovery(t=10))
    assert decision.outcome is Outcome.RESET


def test_ordering_is_per_rule():
    state, decisions = feed(
        StreakState(), [breach("error_rate", t=100), breach("memory", t=50), recovery("latency_p95", t=1)]
    )
    assert [d.outcome for d in decisions] == [Outcome.COUNTED, Outcome.COUNTED, Outcome.RESET]
    assert state.streaks == {
        "error_rate": Streak(1, at(100)),
        "memory": Streak(1, at(50)),
        "latency_p95": Streak(0, at(1)),
    }
    # An older error_rate observation is still stale although memory's last time is older.
    assert apply(state, breach("error_rate", t=60)).outcome is Outcome.STALE
    assert apply(state, breach("memory", t=60)).outcome is Outcome.TRIPPED  # 2nd memory breach


def test_late_arrivals_between_applied_observations_are_ignored():
    _, decisions = feed(StreakState(), [breach(t=1), breach(t=3), breach(t=2)])
    assert [d.outcome for d in decisions] == [Outcome.COUNTED, Outcome.COUNTED, Outcome.STALE]


# --------------------------------------------------------------------------- dedupe


@pytest.mark.parametrize("kind", list(Kind))
def test_a_duplicate_is_reported_and_changes_nothing(kind):
    state, _ = feed(StreakState(), [breach(t=1, eid="m-1"), breach(t=2, eid="m-2")])
    decision = apply(state, obs("error_rate", kind, t=3, eid="m-2"), duplicate=True)
    assert decision.outcome is Outcome.DUPLICATE
    assert decision.state is state
    assert decision.count == 2
    assert decision.limit == 3
    assert decision.request_rollback is False
    assert decision.reason == "event m-2 was already applied"


def test_a_duplicate_of_the_tripping_event_does_not_trip_again():
    trip = breach("canary_down", t=1, eid="m-9")
    first = apply(StreakState(), trip)
    again = apply(first.state, trip, duplicate=True)
    assert first.outcome is Outcome.TRIPPED
    assert again.outcome is Outcome.DUPLICATE
    assert again.state is first.state


def test_duplicate_takes_precedence_over_stale():
    state, _ = feed(StreakState(), [breach(t=10)])
    assert apply(state, breach(t=1), duplicate=True).outcome is Outcome.DUPLICATE


# --------------------------------------------------------------------------- phases


@pytest.mark.parametrize("phase", NOT_RUNNING_PHASES)
@pytest.mark.parametrize("kind", list(Kind))
def test_a_rollout_that_is_not_running_counts_nothing(phase, kind):
    state = StreakState(phase=phase, streaks={"canary_down": Streak(0, at(0))})
    decision = apply(state, obs("canary_down", kind, t=5))
    assert decision.outcome is Outcome.NOT_RUNNING
    assert decision.state is state
    assert decision.request_rollback is False
    assert decision.reason == f"rollout is {phase}"


def test_every_phase_is_either_counting_or_not():
    from shared import core

    assert set(COUNTING_PHASES) == core.COUNTING_PHASES  # the product's set, not this file's copy
    assert set(NOT_RUNNING_PHASES) == {
        Phase.ROLLING_BACK,
        Phase.ROLLED_BACK,
        Phase.PROMOTED,
        Phase.SUPERSEDED,
    }


@pytest.mark.parametrize("phase", COUNTING_PHASES)
@pytest.mark.parametrize(("rule", "limit"), sorted(LIMITS.items()))
def test_a_running_or_frozen_rollout_counts_and_trips(phase, rule, limit):
    state = StreakState(phase=phase)
    state, decisions = feed(state, [breach(rule, t=n) for n in range(1, limit + 1)])
    assert [d.outcome for d in decisions] == [Outcome.COUNTED] * (limit - 1) + [Outcome.TRIPPED]
    assert decisions[-1].request_rollback is True
    assert state.rollback_requested is True
    assert state.phase is phase  # the core only requests; the rollback changes the phase
    assert count(state, rule) == limit


def test_a_frozen_rollout_resets_on_recovery_and_ignores_stale_and_duplicates():
    state = StreakState(phase=Phase.FROZEN, streaks={"error_rate": Streak(2, at(10))})
    assert apply(state, breach(t=5)).outcome is Outcome.STALE
    assert apply(state, breach(t=11), duplicate=True).outcome is Outcome.DUPLICATE
    decision = apply(state, recovery(t=12))
    assert decision.outcome is Outcome.RESET
    assert decision.state.streaks["error_rate"] == Streak(0, at(12))


def test_rolled_back_is_sticky():
    state = StreakState(
        phase=Phase.ROLLED_BACK, streaks={"error_rate": Streak(3, at(0))}, rollback_requested=True
    )
    observations = [
        obs(rule, kind, t=n)
        for n, (rule, kind) in enumerate(
            [(r, k) for r in RULE_NAMES for k in (Kind.RECOVERY, Kind.BREACH, Kind.BREACH, Kind.BREACH)],
            start=1,
        )
    ]
    final, decisions = feed(state, observations)
    assert {d.outcome for d in decisions} == {Outcome.NOT_RUNNING}
    assert final is state
    assert final.phase is Phase.ROLLED_BACK


def test_ignored_outcomes():
    assert frozenset({Outcome.DUPLICATE, Outcome.STALE, Outcome.NOT_RUNNING, Outcome.TOO_EARLY}) == IGNORED
    assert Outcome.TRIPPED not in IGNORED and Outcome.COUNTED not in IGNORED and Outcome.RESET not in IGNORED


# --------------------------------------------------------------------------- independence, fresh rollouts


def test_rules_are_independent():
    state, decisions = feed(
        StreakState(),
        [
            breach("error_rate", 1),
            breach("latency_p95", 2),
            breach("error_rate", 3),
            recovery("latency_p95", 4),
            breach("memory", 5),
            breach("latency_p95", 6),
            breach("error_rate", 7),
        ],
    )
    assert [(d.rule, d.outcome, d.count) for d in decisions] == [
        ("error_rate", Outcome.COUNTED, 1),
        ("latency_p95", Outcome.COUNTED, 1),
        ("error_rate", Outcome.COUNTED, 2),
        ("latency_p95", Outcome.RESET, 0),
        ("memory", Outcome.COUNTED, 1),
        ("latency_p95", Outcome.COUNTED, 1),
        ("error_rate", Outcome.TRIPPED, 3),
    ]
    assert {rule: s.count for rule, s in state.streaks.items()} == {
        "error_rate": 3,
        "latency_p95": 1,
        "memory": 1,
    }


def test_breaches_spread_over_rules_do_not_add_up():
    # Two breaches each of error_rate and latency_p95 (limits 3): four breaches, no trip.
    _, decisions = feed(
        StreakState(),
        [
            breach("error_rate", 1),
            breach("latency_p95", 2),
            breach("error_rate", 3),
            breach("latency_p95", 4),
        ],
    )
    assert Outcome.TRIPPED not in {d.outcome for d in decisions}


def test_a_new_rollout_starts_from_zero():
    old, decisions = feed(StreakState(), [breach("error_rate", n) for n in range(3)])
    assert decisions[-1].outcome is Outcome.TRIPPED
    fresh = StreakState()
    assert fresh.phase is Phase.RUNNING and fresh.streaks == {} and fresh.rollback_requested is False
    _, decisions = feed(fresh, [breach("error_rate", n) for n in range(3)])
    assert [d.count for d in decisions] == [1, 2, 3]
    assert decisions[-1].outcome is Outcome.TRIPPED  # the new canary can be rolled back too
    # An event time older than the old rollout's last observation is fine for the new one.
    assert apply(StreakState(), breach("error_rate", t=-100)).outcome is Outcome.COUNTED
    assert old.streaks["error_rate"].count == 3  # the old state is untouched


def test_inputs_are_not_mutated():
    streaks = {"error_rate": Streak(1, at(1))}
    state = StreakState(streaks=streaks)
    decision = apply(state, breach("error_rate", t=2))
    assert streaks == {"error_rate": Streak(1, at(1))}
    assert state.streaks == {"error_rate": Streak(1, at(1))}
    assert decision.state.streaks == {"error_rate": Streak(2, at(2))}


def test_a_rule_without_a_limit_is_refused():
    with pytest.raises(KeyError):
        apply_observation(StreakState(), breach("cpu"), LIMITS)


# --------------------------------------------------------------------------- property tests


@dataclass
class Model:
    """Reference model of the semantics, written independently of the implementation."""

    phase: Phase = Phase.RUNNING
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last: dict[str, int] = field(default_factory=dict)
    requested: bool = False
    seen: set[str] = field(default_factory=set)

    def apply(self, rule: str, kind: Kind, t: int, eid: str, *, too_early: bool = False) -> Outcome:
        if eid in self.seen:
            return Outcome.DUPLICATE
        self.seen.add(eid)
        if self.phase not in (Phase.RUNNING, Phase.FROZEN):
            return Outcome.NOT_RUNNING
        if too_early:
            return Outcome.TOO_EARLY
        if rule in self.last and t < self.last[rule]:
            return Outcome.STALE
        self.last[rule] = t
        if kind is Kind.RECOVERY:
            self.counts[rule] = 0
            return Outcome.RESET
        self.counts[rule] += 1
        if self.counts[rule] >= LIMITS[rule] and not self.requested:
            self.requested = True
            return Outcome.TRIPPED
        return Outcome.COUNTED


Step = tuple[str, Kind, int, str]

steps = st.lists(
    st.tuples(
        st.sampled_from(RULE_NAMES),
        st.sampled_from(list(Kind)),
        st.integers(min_value=0, max_value=12),
        st.integers(min_value=0, max_value=25).map(lambda n: f"msg-{n}"),  # a small pool: duplicates
    ),
    max_size=40,
)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drive(
    state: StreakState, sequence: list[Step], seen: set[str]
) -> tuple[StreakState, list[StreakDecision]]:
    """What the store does: duplicate = the id was recorded before; every processed id is recorded."""
    decisions = []
    for rule, kind, t, eid in sequence:
        decision = apply_observation(
            state, Observation(rule, kind, at(t), eid, "alert"), LIMITS, duplicate=eid in seen
        )
        seen.add(eid)
        decisions.append(decision)
        state = decision.state
    return state, decisions


@PROPERTY
@given(steps)
def test_property_matches_the_reference_model(sequence):
    final, decisions = drive(StreakState(), sequence, set())
    model = Model()
    expected = [model.apply(*step) for step in sequence]
    assert [d.outcome for d in decisions] == expected
    assert {rule: s.count for rule, s in final.streaks.items()} == {
        rule: model.counts[rule] for rule in model.last
    }
    assert {rule: s.last_event_time for rule, s in final.streaks.items()} == {
        rule: at(t) for rule, t in model.last.items()
    }
    assert final.rollback_requested is model.requested
    for decision, step in zip(decisions, sequence, strict=True):
        assert decision.rule == step[0]
        assert decision.limit == LIMITS[step[0]]
        assert decision.request_rollback is (decision.outcome is Outcome.TRIPPED)
        if decision.outcome not in IGNORED:
            assert decision.count == decision.state.streaks[step[0]].count


@PROPERTY
@given(steps)
def test_property_at_most_one_trip_and_it_is_exactly_when_a_limit_is_reached(sequence):
    _, decisions = drive(StreakState(), sequence, set())
    trips = [i for i, d in enumerate(decisions) if d.outcome is Outcome.TRIPPED]
    assert len(trips) <= 1
    # Independently of the core: replay only the applied observations and find the first time a
    # rule's run of consecutive breaches reaches its limit.
    running: dict[str, int] = defaultdict(int)
    first_reach = None
    for i, (decision, (rule, kind, _t, _eid)) in enumerate(zip(decisions, sequence, strict=True)):
        if decision.outcome in IGNORED:
            continue
        running[rule] = 0 if kind is Kind.RECOVERY else running[rule] + 1
        if first_reach is None and running[rule] >= LIMITS[rule]:
            first_reach = i
    assert trips == ([] if first_reach is None else [first_reach])


@PROPERTY
@given(steps)
def test_property_count_is_breaches_since_the_last_applied_recovery_in_event_time_order(sequence):
    final, decisions = drive(StreakState(), sequence, set())
    applied = [step for step, d in zip(sequence, decisions, strict=True) if d.outcome not in IGNORED]
    for rule in RULE_NAMES:
        mine = sorted((s for s in applied if s[0] == rule), key=lambda s: s[2])  # stable: ties keep order
        last_recovery = max((i for i, s in enumerate(mine) if s[1] is Kind.RECOVERY), default=-1)
        expected = sum(1 for s in mine[last_recovery + 1 :] if s[1] is Kind.BREACH)
        assert count(final, rule) == expected
        # Applied observations of one rule never go back in time.
        assert [s[2] for s in mine] == [s[2] for s in applied if s[0] == rule]
    # Ignored outcomes are exactly duplicates (seen id), non-running, or older than the rule's last.
    for decision in decisions:
        if decision.outcome in IGNORED:
            assert decision.outcome in (Outcome.DUPLICATE, Outcome.STALE)


@PROPERTY
@given(steps)
def test_property_replaying_the_same_sequence_changes_nothing(sequence):
    seen: set[str] = set()
    first, _ = drive(StreakState(), sequence, seen)
    second, decisions = drive(first, sequence, seen)
    assert {d.outcome for d in decisions} <= {Outcome.DUPLICATE}
    assert second is first


@PROPERTY
@given(st.sampled_from(NOT_RUNNING_PHASES), st.booleans(), steps)
def test_property_nothing_counts_unless_running(phase, requested, sequence):
    start = StreakState(phase=phase, streaks={"memory": Streak(1, at(0))}, rollback_requested=requested)
    final, decisions = drive(start, sequence, set())
    assert final is start
    assert {d.outcome for d in decisions} <= {Outcome.NOT_RUNNING, Outcome.DUPLICATE}


@PROPERTY
@given(st.booleans(), steps)
def test_property_a_frozen_rollout_counts_exactly_like_a_running_one(requested, sequence):
    running, expected = drive(StreakState(rollback_requested=requested), sequence, set())
    frozen, decisions = drive(StreakState(phase=Phase.FROZEN, rollback_requested=requested), sequence, set())
    assert [(d.outcome, d.count, d.reason) for d in decisions] == [
        (d.outcome, d.count, d.reason) for d in expected
    ]
    assert frozen == replace(running, phase=Phase.FROZEN)


# --------------------------------------------------------------------------- uptime alerts naming no revision

# 2 x uptime period (60 s) + alert duration (60 s) + 60 s, from the bundled policy.
GRACE = timedelta(seconds=240)
GRACES = {"canary_down": GRACE}
STARTED = at(0)  # the rollout's created_at in these tests


def unattributed(
    rule: str = "canary_down", t: float = 0, kind: Kind = Kind.BREACH, eid: str = ""
) -> Observation:
    """An alert that names no revision (an uptime-check incident), attributed to the live canary."""
    return replace(obs(rule, kind, t, eid or None), inferred_revision=True)


def early(state: StreakState, o: Observation, *, duplicate: bool = False) -> StreakDecision:
    return apply_observation(state, o, LIMITS, duplicate=duplicate, attribution_grace=GRACES)


def test_the_grace_comes_from_the_uptime_check_settings_of_the_policy():
    from shared.breach import attribution_grace

    alerting = POLICY.alerting
    assert (alerting.uptime_check.period_s, alerting.duration_s) == (60, 60)
    assert attribution_grace(POLICY) == GRACES
    slower = POLICY.model_copy(
        update={
            "alerting": alerting.model_copy(
                update={
                    "duration_s": 120,
                    "uptime_check": alerting.uptime_check.model_copy(update={"period_s": 300}),
                }
            )
        }
    )
    assert attribution_grace(slower) == {"canary_down": timedelta(seconds=2 * 300 + 120 + 60)}


@pytest.mark.parametrize("seconds", [-3600, -1, 0, 1, 120, 239, 239.999])
@pytest.mark.parametrize("phase", COUNTING_PHASES)
def test_canary_down_naming_no_revision_within_the_grace_is_ignored(seconds, phase):
    state = StreakState(phase=phase, created_at=STARTED)
    decision = early(state, unattributed(t=seconds))
    assert decision.outcome is Outcome.TOO_EARLY
    assert decision.outcome in IGNORED
    assert decision.state is state
    assert decision.request_rollback is False
    assert decision.count == 0 and decision.limit == 1
    assert decision.reason == (
        f"canary_down alert names no revision and was sent at {at(seconds).isoformat()}, within 240 s of "
        f"this rollout starting ({STARTED.isoformat()}): it may be about the previous canary; a "
        "renotification after that counts"
    )


@pytest.mark.parametrize("seconds", [240, 240.001, 241, 1800, 86400])
def test_canary_down_naming_no_revision_at_or_after_the_grace_trips(seconds):
    decision = early(StreakState(created_at=STARTED), unattributed(t=seconds))
    assert decision.outcome is Outcome.TRIPPED
    assert decision.state.streaks["canary_down"] == Streak(1, at(seconds))
    assert decision.state.rollback_requested is True


def opened(o: Observation, seconds: float) -> Observation:
    """The same alert, its incident opened at `seconds` (incident.started_at)."""
    return replace(o, detail={**o.detail, "incident_started_at": at(seconds)})


@pytest.mark.parametrize("opened_at", [0, 0.001, 30, 200])
def test_an_incident_opened_after_the_rollout_started_trips_at_once(opened_at):
    """A canary down from its first minute: its own new incident is no leftover of the previous
    canary, so it is rolled back at the first alert, not at a renotification 30 min later."""
    decision = early(StreakState(created_at=STARTED), opened(unattributed(t=opened_at + 5), opened_at))
    assert decision.outcome is Outcome.TRIPPED and decision.state.rollback_requested


@pytest.mark.parametrize("opened_at", [-3600, -60, -0.001])
def test_an_incident_opened_before_the_rollout_started_waits_out_the_grace(opened_at):
    decision = early(StreakState(created_at=STARTED), opened(unattributed(t=10), opened_at))
    assert decision.outcome is Outcome.TOO_EARLY
    later = early(StreakState(created_at=STARTED), opened(unattributed(t=1800), opened_at))
    assert later.outcome is Outcome.TRIPPED  # its renotification after the grace counts


@pytest.mark.parametrize("seconds", [-1, 0, 1, 239])
def test_canary_down_naming_its_revision_is_not_affected_by_the_grace(seconds):
    decision = early(StreakState(created_at=STARTED), breach("canary_down", t=seconds))
    assert decision.outcome is Outcome.TRIPPED


@pytest.mark.parametrize("rule", [rule for rule in RULE_NAMES if rule != "canary_down"])
def test_other_rules_naming_no_revision_are_not_affected_by_the_grace(rule):
    decision = early(StreakState(created_at=STARTED), unattributed(rule, t=1))
    assert decision.outcome is Outcome.COUNTED and decision.count == 1


def test_a_recovery_naming_no_revision_within_the_grace_still_resets():
    state = StreakState(created_at=STARTED, streaks={"canary_down": Streak(1, at(-10))})
    decision = early(state, unattributed(t=1, kind=Kind.RECOVERY))
    assert decision.outcome is Outcome.RESET
    assert decision.state.streaks["canary_down"] == Streak(0, at(1))


def test_no_grace_without_a_creation_time_or_without_a_grace():
    assert early(StreakState(), unattributed(t=1)).outcome is Outcome.TRIPPED  # created_at unknown
    state = StreakState(created_at=STARTED)
    assert apply_observation(state, unattributed(t=1), LIMITS).outcome is Outcome.TRIPPED


@pytest.mark.parametrize("phase", NOT_RUNNING_PHASES)
def test_a_rollout_that_is_not_running_reports_not_running_before_the_grace(phase):
    decision = early(StreakState(phase=phase, created_at=STARTED), unattributed(t=1))
    assert decision.outcome is Outcome.NOT_RUNNING


def test_a_duplicate_within_the_grace_is_a_duplicate():
    decision = early(StreakState(created_at=STARTED), unattributed(t=1), duplicate=True)
    assert decision.outcome is Outcome.DUPLICATE


def test_the_previous_canarys_renotification_is_ignored_and_the_next_one_trips():
    """The old incident renotifies moments after the new canary started (ignored, nothing
    recorded in the streak); if the new canary is really down, the renotification after the
    grace trips it."""
    state = StreakState(created_at=STARTED)
    state, decisions = feed_early(state, [unattributed(t=-30), unattributed(t=30), unattributed(t=1830)])
    assert [d.outcome for d in decisions] == [Outcome.TOO_EARLY, Outcome.TOO_EARLY, Outcome.TRIPPED]
    assert state.streaks["canary_down"] == Streak(1, at(1830))


def feed_early(
    state: StreakState, observations: list[Observation]
) -> tuple[StreakState, list[StreakDecision]]:
    decisions = []
    for o in observations:
        decisions.append(early(state, o))
        state = decisions[-1].state
    return state, decisions


EarlyStep = tuple[str, Kind, int, str, bool]
early_steps = st.lists(
    st.tuples(
        st.sampled_from(RULE_NAMES),
        st.sampled_from(list(Kind)),
        st.integers(min_value=-2, max_value=12).map(lambda n: n * 30),  # -60 s .. 360 s: across the grace
        st.integers(min_value=0, max_value=25).map(lambda n: f"msg-{n}"),
        st.booleans(),  # names no revision
    ),
    max_size=40,
)


@PROPERTY
@given(st.sampled_from(COUNTING_PHASES), early_steps)
def test_property_only_canary_down_breaches_naming_no_revision_within_the_grace_are_too_early(
    phase, sequence
):
    """Against the reference model: the grace ignores exactly the canary_down breaches that name
    no revision and were sent before created_at + grace; everything else counts as before."""
    state, seen, model = StreakState(phase=phase, created_at=STARTED), set(), Model(phase=phase)
    for rule, kind, t, eid, inferred in sequence:
        o = Observation(rule, kind, at(t), eid, "alert", inferred_revision=inferred)
        decision = early(state, o, duplicate=eid in seen)
        seen.add(eid)
        too_early = inferred and rule == "canary_down" and kind is Kind.BREACH and t < GRACE.total_seconds()
        assert decision.outcome is model.apply(rule, kind, t, eid, too_early=too_early)
        if decision.outcome in IGNORED:
            assert decision.state is state
        state = decision.state
    assert {rule: s.count for rule, s in state.streaks.items()} == {
        rule: model.counts[rule] for rule in model.last
    }
    assert state.rollback_requested is model.requested


def test_repeated_notification_of_one_incident():
    from shared.core import repeated_notification

    gap = timedelta(minutes=15)
    last = {"incident_id": "0.abc", "at": at(0)}
    first = obs("error_rate", t=60)
    assert repeated_notification(first, last, gap)  # same incident a minute later: the same notification
    assert not repeated_notification(obs("error_rate", t=15 * 60), last, gap)  # a renotification
    assert not repeated_notification(first, None, gap)
    assert not repeated_notification(first, {"incident_id": "0.other", "at": at(0)}, gap)
    recovery = obs("error_rate", t=60, kind=Kind.RECOVERY)
    assert not repeated_notification(recovery, last, gap)
    state = StreakState(streaks={"error_rate": Streak(1, at(0))})
    decision = apply_observation(state, first, LIMITS, repeated=True)
    assert decision.outcome is Outcome.DUPLICATE and decision.state == state
