"""canary-guard's own load-test traffic in shared/core/judge.py: SyntheticTraffic.minutes, the
per-minute metric points a load test lands in, and synthetic_in, which load tests touch a
checkpoint window (T0 - 5 min, T0], including a run still in progress up to its deadline. Shared
helpers: tests/judge_cases.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shared.core.judge import SyntheticTraffic, synthetic_in
from tests.judge_cases import T0

# ============================================================ canary-guard's own load-test traffic

# Checkpoint windows here: (T0 - 5 min, T0].
W_START, W_END = T0 - timedelta(minutes=5), T0


def load(start_s: float, end_s: float, *, finished: bool = True) -> SyntheticTraffic:
    """A load test from T0 + start_s to T0 + end_s (seconds, negative: before T0)."""
    return SyntheticTraffic(T0 + timedelta(seconds=start_s), T0 + timedelta(seconds=end_s), finished)


def minutes_ago(n: float) -> datetime:
    return T0 - timedelta(minutes=n)


@pytest.mark.parametrize(
    ("start_s", "end_s", "first", "last"),
    [
        (-150, -100, -180, -60),  # 11:57:30-11:58:20 lands in the points ending 11:58 and 11:59
        (-180, -120, -180, -120),  # 11:57:00-11:58:00 is (11:57, 11:58]: the point ending 11:58 alone
        (-179.5, -179, -180, -120),
    ],
)
def test_a_load_test_lands_in_the_minute_points_that_hold_it(start_s, end_s, first, last):
    assert load(start_s, end_s).minutes == (T0 + timedelta(seconds=first), T0 + timedelta(seconds=last))


@pytest.mark.parametrize(("start_s", "end_s"), [(-600, -301), (-400, -300), (1, 30), (60, 120)])
def test_a_load_test_outside_the_window_is_not_in_it(start_s, end_s):
    assert synthetic_in(W_START, W_END, [load(start_s, end_s)]) == []


@pytest.mark.parametrize(("start_s", "end_s"), [(-330, -290), (-20, 10), (-400, 400), (-150, -100)])
def test_a_load_test_touching_the_window_is_in_it(start_s, end_s):
    assert len(synthetic_in(W_START, W_END, [load(start_s, end_s)])) == 1


def test_a_run_in_progress_reaches_to_its_deadline():
    going = load(-120, 400, finished=False)
    assert going.minutes == (minutes_ago(2), T0 + timedelta(minutes=7))
