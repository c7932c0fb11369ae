"""What shared/core/judge.py decides about a rollback: soak_end_rollback lets an end-of-soak NO_GO
roll back only on enough requests per minute of the soak (memory over its bar rolls back whatever
the traffic) and passes every other decision through, and rollback_redrive_due re-sends an
unanswered rollback request with a backoff capped at an hour, never giving up. Shared helpers:
tests/judge_cases.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.core.judge import StepAction, StepDecision, Verdict, judge, soak_end_rollback
from tests.judge_cases import POLICY, metrics


def test_rollback_redrive_backs_off_but_never_gives_up():
    from shared.core.judge import rollback_redrive_due

    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def due(
        count: int, minutes_since: float, *, unpublished: bool = False, last: datetime | None = t0
    ) -> bool:
        now = t0 + timedelta(minutes=minutes_since)
        return rollback_redrive_due(
            unpublished=unpublished, published_at=last, redrive_count=count, redrive_at=None, now=now
        )

    assert due(0, 0, unpublished=True)  # never published: at once
    assert due(0, 0, last=None)  # a rollback that failed half-way with no request on record
    assert not due(0, 4.9) and due(0, 5)  # first re-send 5 min after the publish
    assert not due(1, 9.9) and due(1, 10)
    assert not due(3, 39.9) and due(3, 40)
    assert not due(10, 59.9) and due(10, 60)  # capped at an hour, for ever


# ============================================================== soak_end_rollback (thin steps)

ROLLBACK = StepDecision(StepAction.ROLLBACK, "NO_GO at the end of the 60-min soak at 5%")


@pytest.mark.parametrize(
    ("requests", "errors", "minutes", "action"),
    [
        (180, 60, 60, StepAction.HOLD),  # 3 requests a minute, a third failing: too thin
        (1199, 30, 60, StepAction.HOLD),  # one request short of 20 a minute
        (1200, 30, 60, StepAction.ROLLBACK),  # 20 a minute: dense enough
        (12000, 150, 60, StepAction.ROLLBACK),
    ],
)
def test_the_end_of_soak_rollback_needs_the_per_minute_density(requests, errors, minutes, action):
    j = judge(metrics(request_count=requests, error_count=errors, error_rate=errors / requests), POLICY)
    assert j.verdict is Verdict.NO_GO
    decided = soak_end_rollback(ROLLBACK, j, minutes, POLICY)
    assert decided.action is action
    if action is StepAction.HOLD:
        assert "too thin to roll back on" in decided.reason and f"{requests} requests" in decided.reason


def test_memory_over_its_bar_rolls_back_at_the_end_of_the_soak_whatever_the_traffic():
    j = judge(metrics(request_count=10, error_count=0, error_rate=0.0, memory_utilization=0.95), POLICY)
    assert soak_end_rollback(ROLLBACK, j, 60, POLICY) is ROLLBACK


@pytest.mark.parametrize("action", [StepAction.HOLD, StepAction.ADVANCE, StepAction.FREEZE, StepAction.NONE])
def test_other_decisions_pass_through_untouched(action):
    decision = StepDecision(action, "x")
    assert soak_end_rollback(decision, judge(metrics(request_count=1), POLICY), 60, POLICY) is decision
