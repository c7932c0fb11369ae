"""The time canary-guard's decisions carry: the wall clock, or one scaled clock for a rehearsal.

In production `now()` is the wall clock. A rehearsal (`canary-guard rehearse`) runs an hour's
soak in minutes: it sets CANARY_GUARD_CLOCK for every process of the local stack (functions,
router, alert evaluator, scheduler), so all of them read the same accelerated time:

    CANARY_GUARD_CLOCK="2026-12-04T10:00:00+00:00 from 1764842400.0 x12"

means "at real (Unix) time 1764842400.0 it was 10:00:00 UTC, and time runs 12 times as fast".
Only the time decisions are about is scaled: timeouts, retries and backoff keep real seconds
(they use time.monotonic / time.sleep), because the emulators and the network do not speed up.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

ENV = "CANARY_GUARD_CLOCK"


@dataclass(frozen=True)
class ScaledClock:
    """`origin` at real time `real_origin` (Unix seconds), running `speed` times as fast."""

    origin: datetime
    real_origin: float
    speed: float

    def __post_init__(self) -> None:
        if self.origin.tzinfo is None:
            raise ValueError("the clock's origin needs a time zone (e.g. +00:00)")
        if not 0 < self.speed <= 3600:
            raise ValueError(f"speed {self.speed} is out of range: 0 < speed <= 3600")

    def now(self) -> datetime:
        return self.at_real(time.time())

    def at_real(self, real: float) -> datetime:
        return (self.origin + timedelta(seconds=(real - self.real_origin) * self.speed)).astimezone(UTC)

    def real_at(self, at: datetime) -> float:
        """The real (Unix) time at which this clock shows `at`."""
        return self.real_origin + (at - self.origin).total_seconds() / self.speed

    def real_seconds(self, span: timedelta) -> float:
        return span.total_seconds() / self.speed

    def spec(self) -> str:
        return f"{self.origin.isoformat()} from {self.real_origin!r} x{self.speed!r}"

    @classmethod
    def parse(cls, text: str) -> ScaledClock:
        try:
            origin, keyword, real, speed = text.split()
            if keyword != "from" or not speed.startswith("x"):
                raise ValueError
            return cls(datetime.fromisoformat(origin), float(real), float(speed[1:]))
        except ValueError as exc:
            raise ValueError(
                f"{ENV}={text!r} is not '<ISO time with zone> from <unix seconds> x<speed>'"
                f" (e.g. '2026-12-04T10:00:00+00:00 from 1764842400.0 x12'): {exc}"
            ) from None


@lru_cache(maxsize=4)
def _scaled(text: str) -> ScaledClock:
    return ScaledClock.parse(text)


def current() -> ScaledClock | None:
    """The rehearsal's clock if this process runs on one, else None (the wall clock)."""
    text = os.environ.get(ENV, "").strip()
    return _scaled(text) if text else None


def now() -> datetime:
    """The time of canary-guard's decisions: the wall clock unless CANARY_GUARD_CLOCK is set."""
    clock = current()
    return clock.now() if clock else datetime.now(UTC)
