"""The load test's rules, pure: its results (latency histogram, per-target results), how a run
is judged against the policy's bars (`judge_load`, `judge_probe`), and whether a configuration
fits the function before any traffic is sent (`plan_fits`, the deadlines). The HTTP engine that
produces the results is shared/clients/loadgen.py.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import accumulate
from typing import Any, Literal

from shared.policy import LoadTest, RateLimitProbe

Mode = Literal["closed", "open", "probe"]
Status = Literal["PASS", "FAIL", "INCONCLUSIVE"]

MAX_REQUESTS = 1_000_000  # hard cap on the requests of one run against one target
MAX_CONCURRENCY = 1000  # workers (closed), in-flight slots (open) or sides (probe)
FUNCTION_MARGIN_S = 10.0  # of the function timeout: cold start, policy load, storing results
DEADLINE_SLACK_S = 1.0  # after a run's natural end (last request + its timeout)
# Memory model for plan_fits, measured on this code with `python -m bench.bench_loadgen --memory`
# (bench/README.md): RSS of a process with the load_test function's imports (functions-framework,
# the Google clients, this module: 104 MiB), and the peak RSS per concurrent connection: 8-19 KiB
# over plain HTTP, 317-323 KiB over TLS with small bodies, 593-607 KiB with 1-8 MiB bodies. TLS is
# what Cloud Run targets use and what costs: asyncio's TLS layer gives each connection a 256 KiB
# read buffer, and OpenSSL's input buffer grows to what one read brings. The worst case is planned.
BASE_MEMORY_MB = 110.0
PER_CONNECTION_KB = 640.0
MEMORY_HEADROOM = 0.8  # share of the function's memory the load generator may plan to use


class LatencyHistogram:
    """Latencies in log-linear buckets (the HdrHistogram layout): fixed memory, bounded error.

    Values are rounded to whole microseconds. Below 256 µs each microsecond has its own
    bucket; above, every power-of-two range [2^k, 2^(k+1)) µs is cut into 128 equal buckets,
    so a bucket is at most 1/128 as wide as its lower bound. A percentile is reported as the
    midpoint of the bucket holding the nearest-rank sample, clamped to the observed min/max:

        |reported - true| <= max(0.0005 ms, (true + 0.0005 ms) / 256)

    i.e. at most 0.4 % relative error from 0.128 ms up. 3,328 counters cover 0 to 2^32 µs
    (71 minutes); larger values are counted in the top bucket, reported as the exact max.
    """

    __slots__ = ("_count", "_counts", "_max", "_min")

    _SUB_BITS = 7  # 128 buckets per power of two
    _LINEAR = 1 << (_SUB_BITS + 1)  # below 256 µs: one bucket per µs
    _TOP_SHIFT = 24  # the last range is [2^31, 2^32) µs
    SIZE = (_TOP_SHIFT << _SUB_BITS) + _LINEAR

    def __init__(self) -> None:
        self._counts = [0] * self.SIZE
        self._count = 0
        self._max = 0.0
        self._min = math.inf

    def record(self, ms: float) -> None:
        self._counts[self.bucket_index(ms)] += 1
        self._count += 1
        if ms > self._max:
            self._max = ms
        if ms < self._min:
            self._min = ms

    @classmethod
    def bucket_index(cls, ms: float) -> int:
        """Index of the bucket that counts a latency of `ms`."""
        us = int(ms * 1000.0 + 0.5)
        if us < cls._LINEAR:
            if us < 0:
                raise ValueError(f"latency must be >= 0 ms, got {ms}")
            return us
        shift = us.bit_length() - (cls._SUB_BITS + 1)
        # us >> shift is in [128, 256): the bucket within its power-of-two range.
        return min((shift << cls._SUB_BITS) + (us >> shift), cls.SIZE - 1)

    @property
    def count(self) -> int:
        return self._count

    @property
    def max(self) -> float:
        """Largest recorded value, exact (0.0 when empty)."""
        return self._max

    @property
    def min(self) -> float:
        """Smallest recorded value, exact (0.0 when empty)."""
        return self._min if self._count else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in ms, `q` in [0, 100]; see the class doc for the error."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        if not self._count:
            raise ValueError("percentile of an empty histogram")
        # round() first so float noise (95/100*20 = 19.000000000000004) does not skip a rank.
        rank = max(1, math.ceil(round(q * self._count / 100, 9)))
        index = bisect_left(list(accumulate(self._counts)), rank)
        if index == self.SIZE - 1:
            return self._max  # the top bucket also holds the out-of-range values
        low, width = self.bucket(index)
        mid_ms = (low + (width - 1) / 2) / 1000.0
        return min(max(mid_ms, self._min), self._max)

    @classmethod
    def bucket(cls, index: int) -> tuple[int, int]:
        """(lower bound, width) in µs of the bucket at `index`."""
        if index < cls._LINEAR:
            return index, 1
        shift = (index >> cls._SUB_BITS) - 1
        return (index - (shift << cls._SUB_BITS)) << shift, 1 << shift

    def merge(self, other: LatencyHistogram) -> None:
        """Add `other`'s samples to this histogram (e.g. several runs of one target)."""
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self._count += other._count
        self._max = max(self._max, other._max)
        self._min = min(self._min, other._min)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles in ms of the requests that got a response; None when there were none."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, histogram: LatencyHistogram) -> LatencySummary:
        if not histogram.count:
            return cls(0, None, None, None, None, None)
        p = histogram.percentile
        return cls(histogram.count, p(50), p(90), p(95), p(99), histogram.max)

    def as_dict(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "count": self.count,
            "p50": ms(self.p50_ms),
            "p90": ms(self.p90_ms),
            "p95": ms(self.p95_ms),
            "p99": ms(self.p99_ms),
            "max": ms(self.max_ms),
        }


@dataclass(frozen=True, slots=True)
class TargetResult:
    """What one run against one target measured.

    requests == successes + status_4xx + status_5xx + timeouts + connection_errors + cancelled.
    Successes are 2xx/3xx (redirects are not followed); status_5xx also holds any status
    outside 200-499; rate_limited counts the 429s, which are also in status_4xx.
    """

    url: str
    mode: Mode
    planned: int  # requests the run meant to send; `requests` is what it sent (or owed)
    requests: int
    successes: int
    status_4xx: int
    status_5xx: int
    rate_limited: int
    timeouts: int
    connection_errors: int
    cancelled: int
    duration_s: float
    latency: LatencySummary

    @property
    def failures(self) -> dict[str, int]:
        return {
            "4xx": self.status_4xx,
            "5xx": self.status_5xx,
            "timeout": self.timeouts,
            "connection": self.connection_errors,
            "cancelled": self.cancelled,
        }

    @property
    def achieved_rate(self) -> float:
        """Finished (not cancelled) requests per second of the run."""
        return (self.requests - self.cancelled) / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "mode": self.mode,
            "planned": self.planned,
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "rate_limited_429": self.rate_limited,
            "achieved_rate_per_s": round(self.achieved_rate, 3),
            "duration_s": round(self.duration_s, 3),
            "latency_ms": self.latency.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class LoadVerdict:
    """A run judged against the policy's bars; `reasons` show the measured value next to each bar."""

    status: Status
    reasons: tuple[str, ...]
    sides: Mapping[str, Status] = field(default_factory=dict)  # probe: the verdict of each side

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": list(self.reasons), "sides": dict(self.sides)}


def open_arrivals(rate_per_s: float, duration_s: float) -> int:
    # round() first: 0.29/s for 100 s is 28.999999999999996 in floats, and means 29 arrivals.
    return math.floor(round(rate_per_s * duration_s, 6))


def _exact(bar: float) -> Fraction:
    # The bar as the decimal written in policy.yaml: 19/20 must not pass a "> 0.95" bar
    # because the binary double nearest 0.95 is a hair below it.
    return Fraction(repr(bar))


def judge_load(result: TargetResult, bars: LoadTest) -> LoadVerdict:
    """PASS when the failure ratio <= max_error_rate and p95 <= max_latency_p95; FAIL otherwise;
    INCONCLUSIVE when no request completed (all were cancelled or none was sent)."""
    if result.requests - result.cancelled == 0:
        return LoadVerdict("INCONCLUSIVE", (f"no request completed ({result.cancelled} cancelled)",))
    failed = result.requests - result.successes
    ratio = Fraction(failed, result.requests)
    error_ok = ratio <= _exact(bars.max_error_rate)
    reasons = [
        f"error ratio {failed}/{result.requests} = {float(ratio):.2%} "
        f"{'<=' if error_ok else '>'} {bars.max_error_rate:.2%}"
    ]
    p95 = result.latency.p95_ms
    latency_ok = p95 is not None and p95 <= bars.max_latency_p95
    if p95 is None:
        reasons.append("p95 latency unknown: no request got a response")
    else:
        reasons.append(f"p95 {p95:.1f} ms {'<=' if latency_ok else '>'} {bars.max_latency_p95:g} ms")
    return LoadVerdict("PASS" if error_ok and latency_ok else "FAIL", tuple(reasons))


def judge_probe(results: Mapping[str, TargetResult], bars: RateLimitProbe) -> LoadVerdict:
    """Each side PASSes when its success rate is > min_success_rate; overall PASS when every
    side passes, FAIL when one fails, else INCONCLUSIVE (a side sent nothing)."""
    if not results:
        raise ValueError("judge_probe needs the result of at least one side")
    bar = _exact(bars.min_success_rate)
    sides: dict[str, Status] = {}
    reasons = []
    for name, result in results.items():
        if result.requests - result.cancelled == 0:
            sides[name] = "INCONCLUSIVE"
            reasons.append(f"{name}: no request completed ({result.cancelled} cancelled)")
            continue
        rate = Fraction(result.successes, result.requests)
        sides[name] = "PASS" if rate > bar else "FAIL"
        reasons.append(
            f"{name}: {result.successes}/{result.requests} succeeded ({float(rate):.1%}) "
            f"{'>' if rate > bar else '<='} {float(bar):.1%}"
        )
    statuses = set(sides.values())
    status: Status = "PASS"
    if "FAIL" in statuses:
        status = "FAIL"
    elif "INCONCLUSIVE" in statuses:
        status = "INCONCLUSIVE"
    return LoadVerdict(status, tuple(reasons), sides)


def plan_fits(
    config: LoadTest | RateLimitProbe,
    function_timeout_s: float,
    memory_mb: float,
    *,
    targets: int = 1,
    services: int = 1,
    deadline_s: float | None = None,
    request_timeout_s: float | None = None,
    alongside_s: float = 0.0,
) -> None:
    """Raise ValueError, saying why, when a run cannot finish inside one function invocation.

    `targets`: how many targets the load test runs one after another, or how many sides the
    probe runs concurrently. `services`: how many services get this run one after another in
    the same invocation. `deadline_s`: the per-target deadline; required for the closed
    model, whose duration depends on the target's latency, and at least `least_target_s`.
    `request_timeout_s`: the probe's per-request timeout (the load test's is in its policy).
    `alongside_s`: what each service also spends on other runs (the probe beside the load
    test). Time: services x (the worst case + alongside_s) plus FUNCTION_MARGIN_S must fit in
    `function_timeout_s`. Memory: BASE_MEMORY_MB plus PER_CONNECTION_KB per connection must fit
    in MEMORY_HEADROOM of `memory_mb` (the runs are sequential, so services do not add up).
    """
    if targets < 1:
        raise ValueError(f"targets must be >= 1, got {targets}")
    if services < 1:
        raise ValueError(f"services must be >= 1, got {services}")
    budget = function_timeout_s - FUNCTION_MARGIN_S
    if budget <= 0:
        raise ValueError(
            f"the function timeout of {function_timeout_s:g} s leaves no time for a run after "
            f"the {FUNCTION_MARGIN_S:g} s kept for start-up and storing results"
        )
    if isinstance(config, RateLimitProbe):
        if request_timeout_s is None:
            raise ValueError("the probe's duration is bounded by its request timeout: pass request_timeout_s")
        worst = probe_deadline(config.requests_per_side, config.delay_ms, request_timeout_s)
        what = (
            f"the probe may take {worst:g} s ({config.requests_per_side} requests x "
            f"({config.delay_ms / 1000:g} s delay + {request_timeout_s:g} s timeout) + "
            f"{DEADLINE_SLACK_S:g} s)"
        )
        connections = targets
    elif config.mode == "open":
        planned = open_arrivals(config.rate_per_s, config.duration_s)
        if planned > MAX_REQUESTS:
            raise ValueError(
                f"open model: {config.rate_per_s:g}/s for {config.duration_s:g} s is {planned} "
                f"requests per target, over the cap of {MAX_REQUESTS}"
            )
        if deadline_s is not None and deadline_s < config.duration_s:
            raise ValueError(
                f"open model: deadline_s {deadline_s:g} s is shorter than duration_s "
                f"{config.duration_s:g} s, so the run would always be cut short"
            )
        per_target = open_deadline(config) if deadline_s is None else deadline_s
        worst = per_target * targets
        what = (
            f"the open model may take {worst:g} s ({targets} target(s) x {per_target:g} s: "
            f"{config.duration_s:g} s of arrivals + {config.request_timeout_s:g} s request "
            f"timeout + {DEADLINE_SLACK_S:g} s)"
            if deadline_s is None
            else f"the open model may take {worst:g} s ({targets} target(s) x {per_target:g} s deadline)"
        )
        connections = config.concurrency
    else:
        if deadline_s is None:
            most = (budget / services - alongside_s) / targets
            raise ValueError(
                "closed model: its duration depends on the target's latency and cannot be "
                f"estimated, so pass an explicit deadline_s per target (at most {most:g} s "
                f"for {targets} target(s) within a {function_timeout_s:g} s function timeout)"
            )
        if deadline_s < least_target_s(config):
            raise ValueError(
                f"closed model: a deadline of {deadline_s:g} s per target is shorter than one "
                f"request timeout ({config.request_timeout_s:g} s) + {DEADLINE_SLACK_S:g} s, so a "
                "slow answer could never come back"
            )
        worst = deadline_s * targets
        what = f"the closed model may take {worst:g} s ({targets} target(s) x {deadline_s:g} s deadline)"
        connections = config.concurrency
    total = services * (worst + alongside_s)
    if total > budget:
        if alongside_s:
            what += f" plus {alongside_s:g} s of other runs per service"
        if services > 1:
            what += f", {total:g} s for {services} services one after another"
        raise ValueError(
            f"{what}, but the function timeout of {function_timeout_s:g} s leaves {budget:g} s "
            f"after the {FUNCTION_MARGIN_S:g} s margin"
        )
    needed = BASE_MEMORY_MB + connections * PER_CONNECTION_KB / 1024
    usable = memory_mb * MEMORY_HEADROOM
    if needed > usable:
        raise ValueError(
            f"{connections} concurrent connection(s) need about {needed:.0f} MiB ({BASE_MEMORY_MB:g} "
            f"MiB base + {PER_CONNECTION_KB:g} KiB each), over the {usable:.0f} MiB usable of the "
            f"function's {memory_mb:g} MiB: lower the concurrency or give the function more memory"
        )


def open_deadline(config: LoadTest) -> float:
    """The open model's natural per-target deadline: the last arrival plus its timeout."""
    return config.duration_s + config.request_timeout_s + DEADLINE_SLACK_S


def least_target_s(config: LoadTest) -> float:
    """The least time one target of the load test must be given: the open model's natural
    deadline; for the closed model, whose length depends on the target, one request timeout
    (plus slack), so that a slow answer can still come back instead of being cancelled."""
    if config.mode == "open":
        return open_deadline(config)
    return config.request_timeout_s + DEADLINE_SLACK_S


def probe_deadline(requests_per_side: int, delay_ms: float, timeout_s: float) -> float:
    """The probe's natural deadline: every request of a side waits its delay and its whole timeout."""
    return requests_per_side * (delay_ms / 1000 + timeout_s) + DEADLINE_SLACK_S
