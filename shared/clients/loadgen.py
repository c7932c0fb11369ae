"""Bounded HTTP load generation: the daily load test and the rate-limit probe.

Pure of storage: every run returns frozen results; the caller writes them to Firestore and
Cloud Monitoring. Three modes, each request on a keep-alive HTTP/1.1 connection of its own worker
or slot (see "The HTTP client" below):

- closed model (`run_closed`): `requests` in total, issued by `concurrency` workers that each
  send the next request as soon as their previous one finished;
- open model (`run_open`): a constant arrival rate. Request i is due at t0 + i/rate and its
  latency is measured from that intended time, so a stalled target shows up as latency instead
  of silently slowing the generator down (no coordinated omission). Requests that fall due
  while all `max_in_flight` slots are busy are sent as soon as a slot frees and still count;
- probe (`run_probe`): N requests per side, one after another with a fixed delay, sides
  concurrently (the go-live checklist's rate-limit probe).

Every run is bounded: a hard cap on the number of requests, a per-request timeout and a
wall-clock deadline after which outstanding requests are cancelled and counted as
"cancelled". `plan_fits` (shared/core/load_rules.py, with the results and how they are judged)
refuses a configuration that cannot finish inside the Cloud Function's timeout or memory before
any traffic is sent.

Latency is the time from the (intended) send to the last byte of the body, recorded in a
fixed-size `LatencyHistogram` only for requests that got an HTTP response (any status);
timeouts, connection errors and cancellations are counted as failures instead.

The HTTP client is shared/clients/http_client.py (why it is our own: its docstring).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from time import perf_counter
from typing import Any

from shared.clients.http_client import KEEPALIVE_IDLE_S, Connection, HttpClient, Target, target_of
from shared.core.load_rules import (
    FUNCTION_MARGIN_S,
    MAX_CONCURRENCY,
    MAX_REQUESTS,
    LatencyHistogram,
    LatencySummary,
    Mode,
    TargetResult,
    least_target_s,
    open_arrivals,
    open_deadline,
    plan_fits,
    probe_deadline,
)
from shared.policy import LoadTest


class _Slot:
    """A worker's (closed model), an in-flight slot's (open) or a side's (probe) connection,
    re-made when the target closed it, dropped it or it sat idle too long."""

    __slots__ = ("connection",)

    def __init__(self) -> None:
        self.connection: Connection | None = None


class _Run:
    """Counters of one run against one URL, and the one place that sends a request."""

    __slots__ = (
        "by_class",
        "client",
        "connection_errors",
        "ended",
        "in_flight",
        "latency",
        "loop",
        "rate_limited",
        "target",
        "timeouts",
    )

    def __init__(self, client: HttpClient, target: Target) -> None:
        self.client = client
        self.loop = client.loop
        self.target = target
        self.latency = LatencyHistogram()
        self.by_class = [0] * 10  # responses by status // 100
        self.rate_limited = 0
        self.timeouts = 0
        self.connection_errors = 0
        self.in_flight = 0
        self.ended: float | None = None  # probe: when this side finished

    async def fetch(self, slot: _Slot, start: float) -> None:
        """Send one request on `slot`; its latency counts from `start` (perf_counter seconds)."""
        self.in_flight += 1
        try:
            status = await self._exchange(slot)
        except TimeoutError:  # before OSError: TimeoutError is one
            self.timeouts += 1
        except OSError:  # refused, reset, DNS, TLS, a malformed answer
            self.connection_errors += 1
        else:
            self.latency.record((perf_counter() - start) * 1000.0)
            self.by_class[min(status // 100, 9)] += 1
            if status == 429:
                self.rate_limited += 1
        # Not in a `finally`: a request cancelled by the deadline stays counted in flight.
        self.in_flight -= 1

    async def _exchange(self, slot: _Slot) -> int:
        """One request and its whole answer (body read and dropped) within the timeout."""
        now = self.loop.time()
        deadline = now + self.client.timeout_s  # covers connect, TLS handshake and the answer
        connection = slot.connection
        # A connection idle for long may be closed by the target just as we write to it; like
        # aiohttp, do not reuse one idle longer than KEEPALIVE_IDLE_S, so that this race (a
        # connection error the target never saw) stays as rare as it was.
        if connection is None or not connection.open or now - connection.idle_since > KEEPALIVE_IDLE_S:
            if connection is not None:
                connection.abort()
            slot.connection = None
            connection = slot.connection = await self.client.connect(self.target, deadline)
        waiter = connection.send(self.target.request, deadline)
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.abort()  # its answer may still come: the connection is out of step
            raise

    @property
    def finished(self) -> int:
        return sum(self.by_class) + self.timeouts + self.connection_errors

    def result(self, mode: Mode, planned: int, duration_s: float, owed: int = 0) -> TargetResult:
        """Freeze the counters; `owed` are open-model arrivals that fell due but never went out."""
        successes = self.by_class[2] + self.by_class[3]
        status_4xx = self.by_class[4]
        cancelled = self.in_flight + owed
        return TargetResult(
            url=self.target.url,
            mode=mode,
            planned=planned,
            requests=self.finished + cancelled,
            successes=successes,
            status_4xx=status_4xx,
            status_5xx=sum(self.by_class) - successes - status_4xx,
            rate_limited=self.rate_limited,
            timeouts=self.timeouts,
            connection_errors=self.connection_errors,
            cancelled=cancelled,
            duration_s=duration_s,
            latency=LatencySummary.of(self.latency),
        )


def _check_run(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value:g}")


async def _bounded(workers: Iterable[Coroutine[Any, Any, None]], deadline_s: float) -> bool:
    """Run the workers until they finish or `deadline_s` passes; True when cut by the deadline."""
    tasks = [asyncio.create_task(worker) for worker in workers]
    try:
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    finally:
        # Also runs when the caller is cancelled: no worker outlives the run.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # a worker's unexpected error fails the run rather than vanish
    return bool(pending)


async def run_closed(
    url: str,
    *,
    requests: int,
    concurrency: int,
    timeout_s: float,
    deadline_s: float,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> TargetResult:
    """Closed model: `requests` in total from `concurrency` workers, stopped at `deadline_s`."""
    target = target_of(url, method, headers)
    _check_run("requests", requests, 1, MAX_REQUESTS)
    _check_run("concurrency", concurrency, 1, MAX_CONCURRENCY)
    _check_run("timeout_s", timeout_s, 1e-3, math.inf)
    _check_run("deadline_s", deadline_s, 1e-3, math.inf)
    workers = min(concurrency, requests)
    remaining = requests

    async def worker(fetch: Callable[[_Slot, float], Awaitable[None]]) -> None:
        nonlocal remaining
        slot = _Slot()  # one keep-alive connection per worker
        while remaining > 0:
            remaining -= 1
            await fetch(slot, perf_counter())

    client = HttpClient(timeout_s)
    run = _Run(client, target)
    try:
        started = perf_counter()
        await _bounded((worker(run.fetch) for _ in range(workers)), deadline_s)
        duration = perf_counter() - started
    finally:
        await client.close()
    return run.result("closed", requests, duration)


async def run_open(
    url: str,
    *,
    rate_per_s: float,
    duration_s: float,
    timeout_s: float,
    deadline_s: float,
    max_in_flight: int,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> TargetResult:
    """Open model: `rate_per_s` arrivals for `duration_s`, latency from each intended send time."""
    target = target_of(url, method, headers)
    _check_run("rate_per_s", rate_per_s, 1e-3, math.inf)
    _check_run("duration_s", duration_s, 1e-3, math.inf)
    _check_run("timeout_s", timeout_s, 1e-3, math.inf)
    _check_run("deadline_s", deadline_s, 1e-3, math.inf)
    _check_run("max_in_flight", max_in_flight, 1, MAX_CONCURRENCY)
    planned = open_arrivals(rate_per_s, duration_s)
    _check_run("rate_per_s * duration_s", planned, 1, MAX_REQUESTS)
    next_index = 0
    started = 0.0

    # Each worker is one in-flight slot: it takes the next arrival, waits for its due time
    # (not at all when it is overdue) and sends it; so the schedule never drifts, at most
    # `max_in_flight` requests are out, and no task is created per request.
    async def worker(fetch: Callable[[_Slot, float], Awaitable[None]]) -> None:
        nonlocal next_index
        slot = _Slot()
        while next_index < planned:
            intended = started + next_index / rate_per_s
            next_index += 1
            # A loop, not one sleep: timers may fire a little early (asyncio by up to its clock
            # resolution, uvloop by up to 1 ms) and a request must not go out before its time.
            while (delay := intended - perf_counter()) > 0:
                await asyncio.sleep(delay)
            await fetch(slot, intended)

    client = HttpClient(timeout_s)
    run = _Run(client, target)
    try:
        started = perf_counter()
        cut = await _bounded((worker(run.fetch) for _ in range(min(max_in_flight, planned))), deadline_s)
        duration = perf_counter() - started
    finally:
        await client.close()
    owed = 0
    if cut:
        # Arrivals that fell due before the deadline while every slot was busy: offered load
        # the target did not absorb. They fail as cancelled rather than vanish.
        due = min(planned, math.floor(duration * rate_per_s) + 1)
        owed = max(0, due - run.finished - run.in_flight)
    return run.result("open", planned, duration, owed)


async def run_probe(
    sides: Mapping[str, str],
    *,
    requests_per_side: int,
    delay_ms: int,
    timeout_s: float,
    deadline_s: float | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> dict[str, TargetResult]:
    """Rate-limit probe: per side, `requests_per_side` requests one after another with
    `delay_ms` between them; the sides run concurrently. `sides` maps a side name ("canary",
    "legacy") to the full URL to request. Without `deadline_s` the run is bounded by its own
    worst case, `probe_deadline`."""
    if not sides:
        raise ValueError("the probe needs at least one side")
    targets = {name: target_of(url, method, headers) for name, url in sides.items()}
    _check_run("requests_per_side", requests_per_side, 1, MAX_REQUESTS)
    _check_run("sides", len(sides), 1, MAX_CONCURRENCY)
    _check_run("delay_ms", delay_ms, 0, math.inf)
    _check_run("timeout_s", timeout_s, 1e-3, math.inf)
    if deadline_s is None:
        deadline_s = probe_deadline(requests_per_side, delay_ms, timeout_s)
    _check_run("deadline_s", deadline_s, 1e-3, math.inf)
    delay_s = delay_ms / 1000

    async def side(run: _Run) -> None:
        slot = _Slot()
        for i in range(requests_per_side):
            if i:
                await asyncio.sleep(delay_s)
            await run.fetch(slot, perf_counter())
        run.ended = perf_counter()

    client = HttpClient(timeout_s)
    runs = {name: _Run(client, target) for name, target in targets.items()}
    try:
        started = perf_counter()
        await _bounded((side(run) for run in runs.values()), deadline_s)
        cut_at = perf_counter()
    finally:
        await client.close()
    return {
        name: run.result("probe", requests_per_side, (run.ended or cut_at) - started)
        for name, run in runs.items()
    }


def run_load_test(
    targets: Mapping[str, str],
    policy: LoadTest,
    *,
    headers: Mapping[str, str] | None = None,
    function_timeout_s: float,
    memory_mb: float,
    budget_s: float | None = None,
) -> dict[str, TargetResult]:
    """The daily load test: `targets` maps a name ("canary", "stable") to a base URL; each gets
    `policy.path` appended and is loaded in `policy.mode`, one after the other (concurrent runs
    would share this instance's CPU and skew each other's latency). The open model uses
    `policy.concurrency` as its in-flight bound.

    `budget_s`: the seconds the whole load test may take (the caller's share of the
    invocation; default: the function timeout less FUNCTION_MARGIN_S). Each target gets what is
    left of it when its turn comes: the open model up to its natural deadline, the closed model
    an equal share with the targets still to run. Refuses (ValueError) before sending anything
    when the plan does not fit the function's timeout or memory, or `budget_s`."""
    if not targets:
        raise ValueError("the load test needs at least one target")
    headers = {**policy.headers, **(headers or {})}  # the policy's, plus the caller's (auth)
    least = least_target_s(policy)
    plan_fits(
        policy,
        function_timeout_s,
        memory_mb,
        targets=len(targets),
        deadline_s=None if policy.mode == "open" else least,
    )
    if budget_s is None:
        budget_s = function_timeout_s - FUNCTION_MARGIN_S
    if budget_s < least * len(targets):
        raise ValueError(
            f"the load test of {len(targets)} target(s) needs at least {least * len(targets):g} s "
            f"({least:g} s each), but was given {budget_s:g} s"
        )

    started = perf_counter()  # the budget counts from the call, loop start-up included

    async def main() -> dict[str, TargetResult]:
        results = {}
        for index, (name, base) in enumerate(targets.items()):
            url = base.rstrip("/") + policy.path
            left_s = budget_s - (perf_counter() - started)
            if policy.mode == "open":
                results[name] = await run_open(
                    url,
                    rate_per_s=policy.rate_per_s,
                    duration_s=policy.duration_s,
                    timeout_s=policy.request_timeout_s,
                    deadline_s=min(open_deadline(policy), left_s),
                    max_in_flight=policy.concurrency,
                    method=policy.method,
                    headers=headers,
                )
            else:
                results[name] = await run_closed(
                    url,
                    requests=policy.requests,
                    concurrency=policy.concurrency,
                    timeout_s=policy.request_timeout_s,
                    # Its length is unknown: an equal share of what is left, so time a canary
                    # did not use goes to the stable side.
                    deadline_s=left_s / (len(targets) - index),
                    method=policy.method,
                    headers=headers,
                )
        return results

    # asyncio's own loop: uvloop is not a dependency (bench/README.md).
    return asyncio.run(main())
