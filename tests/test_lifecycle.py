"""The lifecycle table (shared/core/lifecycle.py), every phase x action, and that the phase sets the
rest of the code uses are read from it."""

from __future__ import annotations

import pytest

from shared.core import ledger
from shared.core.lifecycle import Action, Phase, allows, phases_allowing, transition
from shared.handlers import rollback

# The whole table, written out once more by hand: a change to it must change this too.
ALLOWED = {
    Phase.RUNNING: {
        Action.COUNT: None,
        Action.REQUEST_ROLLBACK: None,
        Action.START_ROLLBACK: Phase.ROLLING_BACK,
        Action.FINISH_ROLLBACK: Phase.ROLLED_BACK,
        Action.STEP: None,
        Action.PROMOTE: Phase.PROMOTED,
        Action.FREEZE: Phase.FROZEN,
        Action.PAUSE: None,
        Action.RESUME: None,
        Action.SUPERSEDE: Phase.SUPERSEDED,
    },
    Phase.FROZEN: {
        Action.COUNT: None,
        Action.REQUEST_ROLLBACK: None,
        Action.START_ROLLBACK: Phase.ROLLING_BACK,
        Action.FINISH_ROLLBACK: Phase.ROLLED_BACK,
        Action.RESUME: Phase.RUNNING,
        Action.SUPERSEDE: Phase.SUPERSEDED,
    },
    Phase.ROLLING_BACK: {
        Action.START_ROLLBACK: None,
        Action.FINISH_ROLLBACK: Phase.ROLLED_BACK,
        Action.SUPERSEDE: Phase.SUPERSEDED,
    },
    Phase.PROMOTED: {Action.START_ROLLBACK: Phase.ROLLING_BACK, Action.FINISH_ROLLBACK: Phase.ROLLED_BACK},
    Phase.ROLLED_BACK: {Action.FINISH_ROLLBACK: None},
    Phase.SUPERSEDED: {Action.FINISH_ROLLBACK: Phase.ROLLED_BACK},
}


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("action", list(Action))
def test_every_phase_and_action(phase, action):
    move = transition(phase, action)
    expected = ALLOWED[phase]
    assert move.allowed is (action in expected)
    assert allows(phase, action) is move.allowed
    if move.allowed:
        assert move.to == expected[action]
    else:
        assert move.to is None and move.reason.startswith(f"cannot {action.replace('_', ' ')}: ")


def test_nothing_leaves_rolled_back_but_a_repeated_finish():
    for action in Action:
        assert transition(Phase.ROLLED_BACK, action).to is None


def test_only_a_live_canary_is_judged_steps_or_freezes():
    assert phases_allowing(Action.COUNT) == {Phase.RUNNING, Phase.FROZEN}
    assert phases_allowing(Action.STEP) == phases_allowing(Action.PROMOTE) == {Phase.RUNNING}
    assert phases_allowing(Action.FREEZE) == {Phase.RUNNING}


def test_the_phase_sets_elsewhere_come_from_the_table():
    assert phases_allowing(Action.COUNT) == ledger.COUNTING_PHASES
    assert phases_allowing(Action.SUPERSEDE) == ledger.ACTIVE_PHASES
    assert {Phase.RUNNING, Phase.FROZEN, Phase.PROMOTED} == rollback.STARTS_ROLLBACK
    assert set(Phase) == rollback.FINISHES_ROLLBACK
    assert ledger.Phase is Phase
