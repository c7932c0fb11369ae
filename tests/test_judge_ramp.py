"""The ramp's next step in shared/core/judge.py (issues 3 and 9): step_for_percent, and next_step
for every phase and state (not running, rollback requested, paused, past the progress deadline, at
100 %), HOLD and INCONCLUSIVE holding, NO_GO rolling back at the end of the step's soak, GO soaking
and then walking the bundled ramp, and shares between or below the ramp's steps. The same rules
under another policy: tests/test_judge_custom_policy.py; shared helpers: tests/judge_cases.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.core.judge import StepAction, StepDecision, Verdict, step_for_percent
from shared.core.ledger import Phase
from tests.judge_cases import POLICY, decide

# =========================================================================== step_for_percent


@pytest.mark.parametrize(
    "percent, index",
    [
        (0, 0),
        (1, 0),
        (3, 0),  # below the first step: step 0
        (5, 0),
        (7, 0),  # between steps: the step at or below
        (9, 0),
        (10, 1),
        (24, 1),
        (25, 2),
        (49, 2),
        (50, 3),
        (99, 3),
        (100, 4),
    ],
)
def test_step_for_percent(percent, index):
    assert step_for_percent(POLICY, percent) == index


# ================================================================================= next_step


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.RUNNING])
def test_not_running_is_none_for_every_other_phase(phase):
    for on_step in (timedelta(hours=1), timedelta(hours=500)):  # even far past the deadline
        decision = decide(phase=phase, on_step=on_step, rollback_requested=True)
        assert decision == StepDecision(StepAction.NONE, f"rollout is {phase.value}")


@pytest.mark.parametrize("on_step", [timedelta(hours=1), timedelta(hours=169)])
def test_rollback_requested_holds(on_step):
    decision = decide(rollback_requested=True, paused=True, on_step=on_step)
    assert decision == StepDecision(StepAction.HOLD, "a rollback was requested")


@pytest.mark.parametrize("on_step", [timedelta(hours=1), timedelta(hours=168, seconds=1), timedelta(days=30)])
def test_paused_holds_even_past_the_deadline(on_step):
    assert decide(paused=True, on_step=on_step) == StepDecision(StepAction.HOLD, "paused by hand")


@pytest.mark.parametrize("verdict", [Verdict.HOLD, Verdict.INCONCLUSIVE])
def test_past_the_progress_deadline_freezes_a_rollout_that_cannot_pass(verdict):
    decision = decide(verdict, on_step=timedelta(hours=169))
    assert decision == StepDecision(StepAction.FREEZE, "no progress for 169.0 h (deadline 168 h)")


def test_a_no_go_past_the_deadline_rolls_back_instead_of_freezing():
    """Issue 9: NO_GO past the deadline used to freeze; its soak is long over, so it rolls back."""
    decision = decide(Verdict.NO_GO, on_step=timedelta(hours=169))
    assert decision == StepDecision(StepAction.ROLLBACK, "NO_GO at the end of the 60-min soak at 5%")


@pytest.mark.parametrize("on_step", [timedelta(hours=169), timedelta(days=30)])
def test_a_go_past_the_deadline_advances_instead_of_freezing(on_step):
    """Resumed after a long pause, or checkpoints failing for a week: a healthy, soaked canary
    that passes now moves on; freezing it would also be the wrong answer to its health."""
    decision = decide(Verdict.GO, percent=10, on_step=on_step)
    assert decision.action is StepAction.ADVANCE and decision.next_percent == 25


def test_exactly_on_the_deadline_is_not_yet_frozen():
    """`on_step > deadline`: 168 h exactly still holds; one tick later it freezes."""
    decision = decide(Verdict.HOLD, percent=10, on_step=timedelta(hours=168))
    assert decision == StepDecision(StepAction.HOLD, "verdict HOLD")
    one_tick_later = decide(Verdict.HOLD, percent=10, on_step=timedelta(hours=168, microseconds=1))
    assert one_tick_later.action is StepAction.FREEZE
    assert one_tick_later.reason == "no progress for 168.0 h (deadline 168 h)"


def test_at_100_percent_there_is_nothing_to_do():
    for verdict in Verdict:
        decision = decide(verdict, percent=100, on_step=timedelta(days=2))
        assert decision == StepDecision(StepAction.NONE, "already at the last step")


@pytest.mark.parametrize("verdict", [Verdict.HOLD, Verdict.INCONCLUSIVE])
@pytest.mark.parametrize("percent", [5, 10, 25, 50])
def test_hold_and_inconclusive_hold(verdict, percent):
    decision = decide(verdict, percent=percent, on_step=timedelta(hours=30))  # every soak is over
    assert decision == StepDecision(StepAction.HOLD, f"verdict {verdict.value}")


@pytest.mark.parametrize(
    ("percent", "soak_minutes"), [(5, 60), (7, 60), (10, 1440), (25, 1440), (50, 1440), (60, 1440)]
)
def test_no_go_at_the_end_of_the_soak_rolls_back(percent, soak_minutes):
    """Issue 9: NO_GO after the soak used to hold until the deadline (a flapping canary served
    users for a week); now the step's soak decides: NO_GO rolls back, from the soak's last tick on."""
    soak = timedelta(minutes=soak_minutes)
    before = decide(Verdict.NO_GO, percent=percent, on_step=soak - timedelta(microseconds=1))
    assert before == StepDecision(StepAction.HOLD, "verdict NO_GO")
    for on_step in (soak, soak + timedelta(minutes=1), timedelta(hours=30)):
        decision = decide(Verdict.NO_GO, percent=percent, on_step=on_step)
        assert decision == StepDecision(
            StepAction.ROLLBACK, f"NO_GO at the end of the {soak_minutes}-min soak at {percent}%"
        )
        assert (decision.next_index, decision.next_percent) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"paused": True}, StepDecision(StepAction.HOLD, "paused by hand")),
        ({"rollback_requested": True}, StepDecision(StepAction.HOLD, "a rollback was requested")),
        ({"phase": Phase.FROZEN}, StepDecision(StepAction.NONE, "rollout is FROZEN")),
        ({"phase": Phase.PROMOTED}, StepDecision(StepAction.NONE, "rollout is PROMOTED")),
        ({"percent": 100}, StepDecision(StepAction.NONE, "already at the last step")),
    ],
)
def test_no_go_after_the_soak_does_not_roll_back_when_the_ramp_does_not_run(kwargs, expected):
    """Paused, a rollback already requested, not RUNNING, or at 100 %: no end-of-soak rollback."""
    assert decide(Verdict.NO_GO, on_step=timedelta(hours=2), **kwargs) == expected


@pytest.mark.parametrize(
    "percent, on_step, left",
    [
        (5, timedelta(0), 60),
        (5, timedelta(minutes=30), 30),
        (5, timedelta(minutes=59), 1),
        (10, timedelta(minutes=60), 1380),
        (25, timedelta(hours=23), 60),
        (50, timedelta(minutes=1000), 440),
    ],
)
def test_go_before_the_soak_is_over_holds_with_minutes_left(percent, on_step, left):
    decision = decide(percent=percent, on_step=on_step)
    assert decision == StepDecision(StepAction.HOLD, f"GO, soaking: {left} min left at {percent}%")


@pytest.mark.parametrize(
    "percent, soak_minutes, action, next_index, next_percent",
    [
        (5, 60, StepAction.ADVANCE, 1, 10),
        (10, 1440, StepAction.ADVANCE, 2, 25),
        (25, 1440, StepAction.ADVANCE, 3, 50),
        (50, 1440, StepAction.PROMOTE, 4, 100),
    ],
)
def test_go_after_the_soak_walks_the_ramp(percent, soak_minutes, action, next_index, next_percent):
    soak = timedelta(minutes=soak_minutes)
    just_before = decide(percent=percent, on_step=soak - timedelta(seconds=1))
    assert just_before.action is StepAction.HOLD
    for on_step in (soak, soak + timedelta(minutes=5)):  # exactly on the soak time advances
        decision = decide(percent=percent, on_step=on_step)
        minutes = int(on_step.total_seconds() // 60)
        assert decision == StepDecision(
            action, f"GO after {minutes} min: {next_percent}%", next_index, next_percent
        )


def test_a_share_between_steps_uses_the_step_below():
    """7 % is on the 5 % step: the 5 % soak (60 min) applies and the next share is 10 %."""
    assert decide(percent=7, on_step=timedelta(minutes=30)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 30 min left at 7%"
    )
    assert decide(percent=7, on_step=timedelta(minutes=60)) == StepDecision(
        StepAction.ADVANCE, "GO after 60 min: 10%", 1, 10
    )
    # 30 % is on the 25 % step (1440 min soak) and goes to 50 %; 60 % is on the 50 % step: promote.
    assert decide(percent=30, on_step=timedelta(minutes=1439)).action is StepAction.HOLD
    assert decide(percent=30, on_step=timedelta(minutes=1440)).next_percent == 50
    assert decide(percent=60, on_step=timedelta(minutes=1440)).action is StepAction.PROMOTE


def test_a_share_below_the_first_step_goes_to_the_first_step():
    """3 % (start allows 1..99) soaks like step 0, then goes to 5 %: no ramp step is skipped."""
    assert step_for_percent(POLICY, 3) == 0
    assert decide(percent=3, on_step=timedelta(minutes=59)) == StepDecision(
        StepAction.HOLD, "GO, soaking: 1 min left at 3%"
    )
    assert decide(percent=3, on_step=timedelta(minutes=60)) == StepDecision(
        StepAction.ADVANCE, "GO after 60 min: 5%", 0, 5
    )
