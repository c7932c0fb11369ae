"""Pure traffic plans (shared/core/traffic.py): canary discovery, rollback and canary-share plans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.lifecycle import Phase
from shared.core.traffic import (
    CANARY_TAG,
    CanarySplit,
    RollbackStep,
    ServiceTraffic,
    TrafficPlanError,
    TrafficSplit,
    decide_rollback,
    discover_canary,
    plan_canary_share,
    plan_rollback,
    stable_beside,
)

SERVICE = "projects/demo-project/locations/europe-west1/services/shop"
STABLE = "shop-00001-abc"
CANARY = "shop-00002-xyz"
OTHER = "shop-00003-new"


def live(*targets: tuple) -> ServiceTraffic:
    """ServiceTraffic from (revision, percent[, tag]) tuples."""
    return ServiceTraffic(SERVICE, tuple(TrafficSplit(*t) for t in targets), etag="etag-1")


def as_set(plan: list[TrafficSplit] | None) -> set[tuple[str, int, str]]:
    assert plan is not None
    return {(t.revision, t.percent, t.tag) for t in plan}


def total(plan: list[TrafficSplit]) -> int:
    return sum(t.percent for t in plan)


# --------------------------------------------------------------------------- values


def test_service_traffic_helpers():
    traffic = live((STABLE, 95), (CANARY, 5, "canary"), (CANARY, 0, "debug"))
    assert traffic.percent_of(STABLE) == 95
    assert traffic.percent_of(CANARY) == 5
    assert traffic.percent_of("nope") == 0
    assert traffic.as_dicts() == [
        {"revision": STABLE, "percent": 95, "tag": ""},
        {"revision": CANARY, "percent": 5, "tag": "canary"},
        {"revision": CANARY, "percent": 0, "tag": "debug"},
    ]
    assert CANARY_TAG == "canary"
    assert issubclass(TrafficPlanError, ValueError)


# --------------------------------------------------------------------------- discover_canary


def test_discover_tagged_canary_and_its_percent():
    assert discover_canary(live((STABLE, 95), (CANARY, 5, "canary"))) == CanarySplit(CANARY, STABLE, 5)


def test_discover_ignores_target_order():
    assert discover_canary(live((CANARY, 25, "canary"), (STABLE, 75, "stable"))) == CanarySplit(
        CANARY, STABLE, 25
    )


def test_no_canary_tag_means_no_canary():
    assert discover_canary(live((STABLE, 95), (CANARY, 5))) is None
    assert discover_canary(live((STABLE, 95), (CANARY, 5, "beta"))) is None
    assert discover_canary(live((STABLE, 100))) is None


def test_a_canary_at_zero_percent_is_not_live():
    assert discover_canary(live((STABLE, 100), (CANARY, 0, "canary"))) is None


def test_a_canary_at_100_percent_has_no_stable():
    assert discover_canary(live((CANARY, 100, "canary"))) is None
    assert discover_canary(live((CANARY, 100, "canary"), (STABLE, 0, "stable"))) is None


def test_three_way_split_picks_the_largest_other_revision_as_stable():
    traffic = live((OTHER, 30), (CANARY, 10, "canary"), (STABLE, 60))
    assert discover_canary(traffic) == CanarySplit(CANARY, STABLE, 10)
    traffic = live((STABLE, 20), (CANARY, 10, "canary"), (OTHER, 70))
    assert discover_canary(traffic) == CanarySplit(CANARY, OTHER, 10)


def test_canary_percent_sums_every_target_of_the_canary_revision():
    traffic = live((STABLE, 90), (CANARY, 5, "canary"), (CANARY, 5))
    assert discover_canary(traffic) == CanarySplit(CANARY, STABLE, 10)


def test_discover_canary_when_tag_and_share_are_separate_targets():
    traffic = live((STABLE, 95), (CANARY, 5), (CANARY, 0, "canary"))
    assert discover_canary(traffic) == CanarySplit(CANARY, STABLE, 5)


# --------------------------------------------------------------------------- plan_rollback


def test_rollback_puts_stable_at_100_and_keeps_the_canary_tag_at_0():
    plan = plan_rollback(live((STABLE, 95), (CANARY, 5, "canary")), STABLE)
    assert plan == [TrafficSplit(STABLE, 100, ""), TrafficSplit(CANARY, 0, "canary")]


def test_rollback_drops_untagged_others_and_keeps_other_tags_at_0():
    current = live((STABLE, 60, "stable"), (CANARY, 20, "canary"), (OTHER, 15), ("shop-00004-old", 5, "blue"))
    plan = plan_rollback(current, STABLE)
    assert as_set(plan) == {
        (STABLE, 100, "stable"),
        (CANARY, 0, "canary"),
        ("shop-00004-old", 0, "blue"),
    }
    assert total(plan) == 100


def test_rollback_keeps_zero_percent_tagged_targets_and_drops_zero_percent_untagged_ones():
    plan = plan_rollback(
        live((STABLE, 90), (CANARY, 10, "canary"), (OTHER, 0, "preview"), ("x-1", 0)), STABLE
    )
    assert as_set(plan) == {(STABLE, 100, ""), (CANARY, 0, "canary"), (OTHER, 0, "preview")}


def test_rollback_of_an_already_rolled_back_service_is_none():
    assert plan_rollback(live((STABLE, 100), (CANARY, 0, "canary")), STABLE) is None
    # Order and untagged 0 % targets do not matter.
    assert plan_rollback(live((CANARY, 0, "canary"), (STABLE, 100), (OTHER, 0)), STABLE) is None


def test_rollback_infers_stable_from_the_live_split_when_none_is_given():
    plan = plan_rollback(live((OTHER, 30), (STABLE, 60), (CANARY, 10, "canary")), None)
    assert as_set(plan) == {(STABLE, 100, ""), (CANARY, 0, "canary")}
    assert plan_rollback(live((STABLE, 95), (CANARY, 5, "canary")), "") == [
        TrafficSplit(STABLE, 100, ""),
        TrafficSplit(CANARY, 0, "canary"),
    ]


def test_rollback_without_a_canary_or_a_stable_is_an_error():
    with pytest.raises(TrafficPlanError, match=f"{SERVICE} has no live canary and no known stable revision"):
        plan_rollback(live((STABLE, 100)), None)
    with pytest.raises(TrafficPlanError, match="no live canary"):
        plan_rollback(live((CANARY, 100, "canary")), None)


def test_rollback_with_unknown_stable_of_an_already_rolled_back_service_is_an_error():
    # Documented current behaviour: stable cannot be inferred once the canary is at 0 %, so the
    # caller must pass the stored stable revision to get the "already there" answer.
    with pytest.raises(TrafficPlanError):
        plan_rollback(live((STABLE, 100), (CANARY, 0, "canary")), None)


def test_rollback_to_a_revision_that_had_no_traffic():
    plan = plan_rollback(live((CANARY, 100, "canary")), STABLE)
    assert plan == [TrafficSplit(STABLE, 100, ""), TrafficSplit(CANARY, 0, "canary")]


def test_rollback_does_not_change_its_input():
    current = live((STABLE, 95), (CANARY, 5, "canary"))
    plan_rollback(current, STABLE)
    assert current == live((STABLE, 95), (CANARY, 5, "canary"))


def test_rollback_keeps_every_tag_of_a_revision_with_two_tags():
    current = live((STABLE, 95, "stable"), (STABLE, 0, "prod"), (CANARY, 5, "canary"))
    plan = plan_rollback(current, STABLE)
    assert plan is not None
    assert {t.tag for t in plan if t.tag} == {"stable", "prod", "canary"}
    assert total(plan) == 100


# --------------------------------------------------------------------------- plan_canary_share


def test_canary_share_sets_the_percent_and_stable_gets_the_rest():
    plan = plan_canary_share(live((STABLE, 95), (CANARY, 5, "canary")), CANARY, STABLE, 10)
    assert as_set(plan) == {(STABLE, 90, ""), (CANARY, 10, "canary")}
    assert total(plan) == 100


def test_canary_share_moves_the_canary_tag_to_the_new_revision():
    current = live((STABLE, 100), (CANARY, 0, "canary"))
    plan = plan_canary_share(current, OTHER, STABLE, 5)
    # The old canary had only the tag: it loses it and, untagged at 0 %, drops out.
    assert as_set(plan) == {(STABLE, 95, ""), (OTHER, 5, "canary")}
    assert [t.tag for t in plan].count("canary") == 1


def test_canary_share_of_100_percent_tags_the_previous_stable_for_the_watch():
    plan = plan_canary_share(live((STABLE, 50), (CANARY, 50, "canary")), CANARY, STABLE, 100)
    assert as_set(plan) == {(CANARY, 100, "canary"), (STABLE, 0, "stable")}
    # The rollback during the watch window puts it back in one plan.
    rolled = plan_rollback(live((CANARY, 100, "canary"), (STABLE, 0, "stable")), STABLE, CANARY)
    assert as_set(rolled) == {(STABLE, 100, "stable"), (CANARY, 0, "canary")}


def test_canary_share_of_0_percent_keeps_the_canary_reachable():
    plan = plan_canary_share(live((STABLE, 95), (CANARY, 5, "canary")), CANARY, STABLE, 0)
    assert as_set(plan) == {(STABLE, 100, ""), (CANARY, 0, "canary")}


def test_canary_share_keeps_other_tags_and_drops_untagged_others():
    current = live((STABLE, 80, "stable"), (CANARY, 10, "canary"), (OTHER, 10), ("x-1", 0, "blue"))
    plan = plan_canary_share(current, CANARY, STABLE, 25)
    assert as_set(plan) == {(STABLE, 75, "stable"), (CANARY, 25, "canary"), ("x-1", 0, "blue")}


def test_canary_share_already_there_is_none():
    assert plan_canary_share(live((STABLE, 90), (CANARY, 10, "canary")), CANARY, STABLE, 10) is None
    assert plan_canary_share(live((CANARY, 10, "canary"), (STABLE, 90)), CANARY, STABLE, 10) is None


@pytest.mark.parametrize("percent", [-1, 101, 1000])
def test_canary_share_refuses_an_invalid_percent(percent):
    with pytest.raises(TrafficPlanError, match=f"canary percent must be 0..100, got {percent}"):
        plan_canary_share(live((STABLE, 95), (CANARY, 5, "canary")), CANARY, STABLE, percent)


# --------------------------------------------------------------------------- properties

REVISIONS = [f"shop-0000{n}" for n in range(1, 6)]
TAGS = ["", "", "", "canary", "stable", "blue"]


@st.composite
def traffics(draw: st.DrawFn) -> ServiceTraffic:
    """A valid live split: shares of a few revisions summing to 100, a tag names one revision."""
    revisions = draw(st.lists(st.sampled_from(REVISIONS), min_size=1, max_size=5, unique=True))
    cuts = sorted(
        draw(st.lists(st.integers(0, 100), min_size=len(revisions) - 1, max_size=len(revisions) - 1))
    )
    shares = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    used: set[str] = set()
    targets = []
    for revision, share in zip(revisions, shares, strict=True):
        tag = draw(st.sampled_from(TAGS))
        if tag in used:
            tag = ""
        if tag:
            used.add(tag)
        if share or tag:
            targets.append(TrafficSplit(revision, share, tag))
    return ServiceTraffic(SERVICE, tuple(targets))


def check_plan(plan: list[TrafficSplit] | None) -> None:
    if plan is None:
        return
    assert total(plan) == 100
    tags = [t.tag for t in plan if t.tag]
    assert len(tags) == len(set(tags))
    assert all(0 <= t.percent <= 100 for t in plan)
    assert all(t.percent > 0 or t.tag for t in plan)  # untagged 0 % targets are dropped
    # A revision may appear more than once only to carry further tags, at 0 %.
    shares = [t.revision for t in plan if t.percent > 0]
    assert len(set(shares)) == len(shares)


@settings(max_examples=200, deadline=None)
@given(traffics(), st.sampled_from([None, *REVISIONS]))
def test_property_rollback_plans_sum_to_100_with_unique_tags(current, stable):
    try:
        plan = plan_rollback(current, stable)
    except TrafficPlanError:
        assert stable is None and discover_canary(current) is None
        return
    check_plan(plan)
    target = stable or discover_canary(current).stable_revision
    wanted = plan if plan is not None else current.targets
    assert {t.revision: t.percent for t in wanted if t.percent} == {target: 100}
    # Every tag the service had survives (this generator gives each revision at most one tag).
    assert {t.tag for t in wanted if t.tag} == {t.tag for t in current.targets if t.tag}
    # Applying the plan reaches a fixed point.
    if plan is not None:
        assert plan_rollback(ServiceTraffic(SERVICE, tuple(plan)), target) is None


@settings(max_examples=200, deadline=None)
@given(
    traffics(),
    st.sampled_from(REVISIONS),
    st.sampled_from(REVISIONS),
    st.integers(min_value=0, max_value=100),
)
def test_property_canary_share_plans_sum_to_100_with_unique_tags(current, canary, stable, percent):
    if canary == stable:
        return
    plan = plan_canary_share(current, canary, stable, percent)
    check_plan(plan)
    wanted = plan if plan is not None else current.targets
    shares = {t.revision: t.percent for t in wanted if t.percent}
    assert shares == {rev: share for rev, share in ((canary, percent), (stable, 100 - percent)) if share}
    assert [t.revision for t in wanted if t.tag == CANARY_TAG] == [canary]
    if plan is not None:
        assert plan_canary_share(ServiceTraffic(SERVICE, tuple(plan)), canary, stable, percent) is None


def test_rollback_aimed_at_one_canary_moves_only_its_share():
    live = ServiceTraffic(
        SERVICE,
        (TrafficSplit("a", 85), TrafficSplit("b", 5), TrafficSplit("c", 10, "canary")),
    )
    plan = plan_rollback(live, "a", only_revision="b")
    assert {(t.revision, t.percent, t.tag) for t in plan} == {("a", 90, ""), ("c", 10, "canary")}
    assert plan_rollback(live, "a", only_revision="d") is None  # serves nothing: nothing to move


# --- decide_rollback: what a rollback request does, for every phase and request --------------

ALL_PHASES = [None, *Phase]


@pytest.mark.parametrize("phase", ALL_PHASES, ids=lambda p: str(p))
@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("canary_share", [0, 5])
@pytest.mark.parametrize("newer_canary", [False, True])
def test_a_rollback_decision_never_moves_what_it_must_not(phase, named, dry_run, canary_share, newer_canary):
    targets = [(STABLE, 100 - canary_share - (10 if newer_canary else 0))]
    if canary_share:
        targets.append((CANARY, canary_share, "" if newer_canary else CANARY_TAG))
    if newer_canary:
        targets.append((OTHER, 10, CANARY_TAG))
    current = live(*targets)
    decision = decide_rollback(
        current,
        service="shop",
        phase=phase,
        canary_revision=CANARY,
        stable_revision=STABLE,
        named=named,
        dry_run=dry_run,
    )
    step = decision.step
    if phase is None:
        assert step is RollbackStep.NO_CANARY
        return
    if phase is Phase.SUPERSEDED and not (named and canary_share):
        assert step is RollbackStep.SUPERSEDED  # the newer canary is not its to touch
        return
    if named and canary_share == 0:
        assert step is RollbackStep.CANARY_GONE  # a stale request: traffic is someone else's
        return
    if dry_run:
        assert step is RollbackStep.DRY_RUN and "dry run" in decision.message
    elif step is RollbackStep.ALREADY_ROLLED_BACK:
        assert phase is Phase.ROLLED_BACK and decision.after is None
        return
    else:
        assert step is RollbackStep.ROLL_BACK
    # Revisions at 0 % keep their tags (the canary stays reachable): compare the shares only.
    after = {t.revision: t.percent for t in decision.after or () if t.percent}
    assert after.get(CANARY, 0) == 0  # the canary ends with no share
    if named:
        # Only the named canary's share moves: a newer canary keeps its own.
        assert after.get(OTHER, 0) == (10 if newer_canary else 0)
        assert after[STABLE] == 100 - after.get(OTHER, 0)
    else:
        assert after == {STABLE: 100}


def test_the_stable_revision_beside_a_canary_is_the_largest_other_share_and_ties_are_named():
    assert stable_beside(live((STABLE, 90), (CANARY, 10, CANARY_TAG)), CANARY) == (STABLE, [STABLE])
    assert stable_beside(live((STABLE, 45), (OTHER, 45), (CANARY, 10, CANARY_TAG)), CANARY) == (
        min(STABLE, OTHER),
        sorted([STABLE, OTHER]),
    )
    assert stable_beside(live((CANARY, 100, CANARY_TAG)), CANARY) == (None, [])
