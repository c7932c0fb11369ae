"""The rehearsal's scaled clock (shared/clock.py): every process that reads CANARY_GUARD_CLOCK
agrees on one accelerated time; without it, the wall clock."""

from datetime import UTC, datetime, timedelta

import pytest

from shared import clock
from shared.clock import ScaledClock

ORIGIN = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def test_without_the_variable_it_is_the_wall_clock(monkeypatch):
    monkeypatch.delenv(clock.ENV, raising=False)
    before = datetime.now(UTC)
    assert before <= clock.now() <= datetime.now(UTC)
    assert clock.current() is None


def test_scaled_clock_runs_speed_times_as_fast():
    scaled = ScaledClock(ORIGIN, real_origin=1000.0, speed=12)
    assert scaled.at_real(1000.0) == ORIGIN
    assert scaled.at_real(1005.0) == ORIGIN + timedelta(minutes=1)  # a minute in five seconds
    assert scaled.real_at(ORIGIN + timedelta(minutes=2)) == pytest.approx(1010.0)
    assert scaled.real_seconds(timedelta(hours=1)) == pytest.approx(300.0)


def test_the_spec_round_trips_and_the_variable_sets_every_reader(monkeypatch):
    scaled = ScaledClock(ORIGIN, real_origin=1_764_842_400.25, speed=12)
    assert ScaledClock.parse(scaled.spec()) == scaled
    monkeypatch.setenv(clock.ENV, ScaledClock(ORIGIN, real_origin=0.0, speed=1).spec())
    # real origin at the Unix epoch, speed 1: "now" is ORIGIN plus the seconds since 1970
    assert clock.now() - ORIGIN == pytest.approx(
        datetime.now(UTC) - datetime(1970, 1, 1, tzinfo=UTC), abs=timedelta(seconds=1)
    )
    assert clock.current() == ScaledClock(ORIGIN, 0.0, 1)


@pytest.mark.parametrize(
    "text",
    [
        "tomorrow",
        "2026-12-04T10:00:00 from 1 x12",
        "2026-12-04T10:00:00+00:00 at 1 x12",
        "2026-12-04T10:00:00+00:00 from 1 12",
        "2026-12-04T10:00:00+00:00 from 1 x0",
        "2026-12-04T10:00:00+00:00 from now x12",
    ],
)
def test_a_malformed_clock_says_what_to_write(text):
    with pytest.raises(ValueError, match="<ISO time with zone> from <unix seconds> x<speed>"):
        ScaledClock.parse(text)
