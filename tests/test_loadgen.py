"""The load generator against the local target server (infra/target_server.py), whose
behaviour is deterministic (every k-th answer fails), so most counts are asserted exactly; and
its HTTP client against a scripted server for the answers the target never gives (chunked,
Connection: close, close-delimited, HEAD, 1xx, malformed, TLS)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.target_server import TargetHandle, start_target_server
from infra.tls import self_signed_certificate
from shared.clients import loadgen
from shared.clients.http_client import USER_AGENT, client_ssl_context, target_of
from shared.clients.loadgen import (
    run_closed,
    run_load_test,
    run_open,
    run_probe,
)
from shared.core.load_rules import (
    MAX_REQUESTS,
    LatencyHistogram,
    LatencySummary,
    TargetResult,
    judge_load,
    judge_probe,
    plan_fits,
)
from shared.policy import LoadTest, RateLimitProbe, load_policy

POLICY = load_policy()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[TargetHandle, TargetHandle]]:
    with start_target_server() as canary, start_target_server() as legacy:
        yield canary, legacy


@pytest.fixture
def target(servers: tuple[TargetHandle, TargetHandle]) -> TargetHandle:
    servers[0].configure()  # default behaviour, fresh counters
    return servers[0]


@pytest.fixture
def legacy(servers: tuple[TargetHandle, TargetHandle]) -> TargetHandle:
    servers[1].configure()
    return servers[1]


def closed(url: str, requests: int, concurrency: int = 4, timeout_s: float = 5, deadline_s: float = 20):
    return asyncio.run(
        run_closed(
            url, requests=requests, concurrency=concurrency, timeout_s=timeout_s, deadline_s=deadline_s
        )
    )


def assert_adds_up(result: TargetResult) -> None:
    assert result.requests == result.successes + sum(result.failures.values())
    assert result.latency.count == result.successes + result.status_4xx + result.status_5xx


def load_policy_with(**update: object) -> LoadTest:
    return POLICY.load_test.model_copy(update=update)


def synthetic(
    requests: int, successes: int, *, p95: float | None = 100.0, cancelled: int = 0
) -> TargetResult:
    return TargetResult(
        url="http://127.0.0.1:1/health",
        mode="closed",
        planned=requests,
        requests=requests,
        successes=successes,
        status_4xx=0,
        status_5xx=requests - successes - cancelled,
        rate_limited=0,
        timeouts=0,
        connection_errors=0,
        cancelled=cancelled,
        duration_s=1.0,
        latency=LatencySummary(requests - cancelled, p95, p95, p95, p95, p95),
    )


# --- LatencyHistogram ------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(round(q * len(ordered) / 100, 9))) - 1]


def bound_ms(true_ms: float) -> float:
    """The error bound documented on LatencyHistogram."""
    return max(0.0005, (true_ms + 0.0005) / 256) + 1e-9


def test_histogram_is_exact_to_the_microsecond_below_256us():
    histogram = LatencyHistogram()
    for us in range(1, 201):
        histogram.record(us / 1000)
    assert histogram.percentile(50) == 0.1
    assert histogram.percentile(99) == 0.198
    assert histogram.percentile(100) == histogram.max == 0.2
    assert histogram.percentile(0) == histogram.min == 0.001


def test_histogram_percentiles_of_a_uniform_distribution():
    histogram = LatencyHistogram()
    for ms in range(1, 10_001):  # 1..10000 ms, each once
        histogram.record(float(ms))
    for q, exact in ((50, 5000), (90, 9000), (95, 9500), (99, 9900)):
        assert abs(histogram.percentile(q) - exact) <= bound_ms(exact)
    assert histogram.max == 10_000
    assert histogram.count == 10_000


def test_histogram_buckets_tile_the_range_within_the_error_bound():
    previous_end = 0
    for index in range(LatencyHistogram.SIZE):
        low, width = LatencyHistogram.bucket(index)
        assert low == previous_end  # contiguous, no gaps or overlaps
        assert width == 1 or width / low <= 1 / 128
        assert LatencyHistogram.bucket_index(low / 1000) == index
        assert LatencyHistogram.bucket_index((low + width - 1) / 1000) == index
        previous_end = low + width
    assert previous_end == 2**32  # 71 minutes in µs, in a fixed 3,328 counters


def test_histogram_clamps_huge_values_but_keeps_the_exact_max():
    histogram = LatencyHistogram()
    histogram.record(10.0)
    histogram.record(10 * 3_600_000.0)  # ten hours
    assert LatencyHistogram.bucket_index(10 * 3_600_000.0) == LatencyHistogram.SIZE - 1
    assert histogram.percentile(100) == histogram.max == 36_000_000.0


def test_histogram_merge_equals_recording_everything_in_one():
    one, two, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for ms in (0.3, 1.5, 2.0, 40.0, 41.0):
        one.record(ms)
        both.record(ms)
    for ms in (0.1, 7.0, 900.0):
        two.record(ms)
        both.record(ms)
    one.merge(two)
    assert (one.count, one.min, one.max) == (both.count, both.min, both.max) == (8, 0.1, 900.0)
    for q in (0, 10, 50, 75, 90, 99, 100):
        assert one.percentile(q) == both.percentile(q)


def test_histogram_rejects_bad_input():
    histogram = LatencyHistogram()
    with pytest.raises(ValueError, match="empty"):
        histogram.percentile(50)
    with pytest.raises(ValueError, match=">= 0"):
        histogram.record(-1.0)
    histogram.record(1.0)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        histogram.percentile(101)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=120_000, allow_nan=False), min_size=1, max_size=300),
    q=st.floats(min_value=0, max_value=100),
)
def test_histogram_percentile_is_within_the_documented_bound(values, q):
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    exact = nearest_rank(values, q)
    assert abs(histogram.percentile(q) - exact) <= bound_ms(exact)


# --- counts, statuses, errors ----------------------------------------------------------------


def test_error_share_gives_an_exact_5xx_count_and_the_counts_add_up(target):
    target.configure(error_share=0.1)
    result = closed(target.url + "/health", 1000, concurrency=8)
    assert_adds_up(result)
    assert (result.requests, result.successes, result.status_5xx) == (1000, 900, 100)
    assert result.failures == {"4xx": 0, "5xx": 100, "timeout": 0, "connection": 0, "cancelled": 0}
    # The cap is respected exactly: the target saw every request once, and no more.
    assert target.stats() == {
        "requests": 1000,
        "responses": {"200": 900, "500": 100},
        "dropped": 0,
        "connections": 8,
    }
    json.dumps(result.as_dict())  # JSON-friendly


def test_added_latency_lands_in_the_right_buckets(target):
    target.configure(latency_ms=50)
    result = closed(target.url + "/health", 40)
    assert_adds_up(result)
    assert result.successes == 40
    p50, p99 = result.latency.p50_ms, result.latency.p99_ms
    assert p50 is not None and p99 is not None
    # The target never answers early, so every sample is in a bucket at or above 50 ms; a
    # loaded machine may add a few ms, not tens.
    assert LatencyHistogram.bucket_index(p50) >= LatencyHistogram.bucket_index(50.0)
    assert 50.0 - bound_ms(50.0) <= p50 < 60.0
    assert p99 < 100.0


def test_query_overrides_status_and_latency(target):
    result = closed(target.url + "/x?status=503&latency_ms=20", 10, concurrency=2)
    assert (result.status_5xx, result.successes) == (10, 0)
    assert result.latency.p50_ms is not None and result.latency.p50_ms >= 20.0 - bound_ms(20.0)


def test_timeouts_are_classified(target):
    target.configure(latency_ms=500)
    result = closed(target.url + "/health", 6, concurrency=3, timeout_s=0.1)
    assert_adds_up(result)
    assert (result.requests, result.timeouts, result.successes) == (6, 6, 0)
    assert result.latency == LatencySummary(0, None, None, None, None, None)


def test_connection_drops_are_counted_once_and_not_retried(target):
    target.configure(drop_share=0.05)
    result = closed(target.url + "/health", 200)
    assert_adds_up(result)
    assert (result.requests, result.connection_errors, result.successes) == (200, 10, 190)
    stats = target.stats()
    # A client that silently resends a dropped GET (aiohttp does by default) would hide the
    # drop from the target's count; ours never retries.
    assert (stats["requests"], stats["dropped"]) == (200, 10)


def test_rate_limited_answers_are_counted_as_429(target):
    target.configure(rate_limit_rps=0.01, rate_limit_burst=5)
    result = closed(target.url + "/health", 50, concurrency=5)
    assert_adds_up(result)
    assert (result.successes, result.rate_limited, result.status_4xx) == (5, 45, 45)


def test_a_refused_connection_is_a_connection_error():
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        result = closed(f"http://127.0.0.1:{port}/health", 3, concurrency=1, timeout_s=2)
    assert (result.requests, result.connection_errors) == (3, 3)


# --- bounds ----------------------------------------------------------------------------------


def test_the_deadline_cancels_outstanding_requests(target):
    target.configure(latency_ms=200)
    result = closed(target.url + "/health", 1000, concurrency=4, deadline_s=0.5)
    assert_adds_up(result)
    # At 0.5 s each worker is inside its third 200 ms request.
    assert (result.cancelled, result.successes, result.requests) == (4, 8, 12)
    assert result.planned == 1000
    assert result.duration_s < 0.7


def test_the_request_cap_is_enforced_before_sending():
    with pytest.raises(ValueError, match="requests must be in"):
        closed("http://127.0.0.1:9/", MAX_REQUESTS + 1)
    with pytest.raises(ValueError, match=r"rate_per_s \* duration_s"):
        asyncio.run(
            run_open(
                "http://127.0.0.1:9/",
                rate_per_s=10_000,
                duration_s=101,
                timeout_s=1,
                deadline_s=200,
                max_in_flight=10,
            )
        )
    with pytest.raises(ValueError, match="absolute http"):
        closed("127.0.0.1:9/health", 1)


# --- open model ------------------------------------------------------------------------------


def test_open_model_sends_the_schedule(target):
    result = asyncio.run(
        run_open(
            target.url + "/health", rate_per_s=100, duration_s=1, timeout_s=5, deadline_s=5, max_in_flight=8
        )
    )
    assert_adds_up(result)
    assert (result.planned, result.requests, result.successes) == (100, 100, 100)
    assert result.duration_s >= 0.99  # the last arrival is due at 0.99 s
    assert target.stats()["requests"] == 100


def test_open_model_reports_a_stall_that_the_closed_model_hides(target):
    # A 0.6 s stall starting 0.2 s into each run. The closed model's 2 workers wait it out
    # and send nothing meanwhile, so only 2 of its 400 requests see it; the open model keeps
    # its arrivals coming and measures each from its intended send time.
    target.configure(latency_ms=5, stall_at_s=0.2, stall_s=0.6)
    closed_result = closed(target.url + "/health", 400, concurrency=2)
    target.configure(latency_ms=5, stall_at_s=0.2, stall_s=0.6)
    open_result = asyncio.run(
        run_open(
            target.url + "/health", rate_per_s=200, duration_s=1, timeout_s=5, deadline_s=5, max_in_flight=32
        )
    )
    for result in (closed_result, open_result):
        assert_adds_up(result)
        assert result.successes == result.requests
    closed_latency, open_latency = closed_result.latency, open_result.latency
    assert closed_latency.max_ms is not None and closed_latency.max_ms >= 500  # it did stall
    assert closed_latency.p99_ms is not None and closed_latency.p99_ms < 100
    assert open_latency.p99_ms is not None and open_latency.p99_ms >= 400
    assert open_latency.p99_ms > 10 * closed_latency.p99_ms


def test_open_model_counts_overdue_arrivals_cut_by_the_deadline(target):
    # Every slot is stuck on a 2 s answer; arrivals keep falling due and cannot go out.
    target.configure(latency_ms=2000)
    result = asyncio.run(
        run_open(
            target.url + "/health", rate_per_s=100, duration_s=1, timeout_s=5, deadline_s=0.5, max_in_flight=5
        )
    )
    assert_adds_up(result)
    assert result.successes == 0
    # Due by 0.5 s: arrivals 0..50. Five went out; all count as cancelled.
    assert 49 <= result.cancelled == result.requests <= 53
    assert target.stats()["requests"] == 5


# --- probe -----------------------------------------------------------------------------------


def test_probe_fails_a_side_at_exactly_95_percent(target, legacy):
    target.configure(error_share=0.05)  # 1 in 20
    results = asyncio.run(
        run_probe(
            {"canary": target.url + "/health", "legacy": legacy.url + "/health"},
            requests_per_side=20,
            delay_ms=10,
            timeout_s=5,
        )
    )
    assert (results["canary"].successes, results["legacy"].successes) == (19, 20)
    for result in results.values():
        assert_adds_up(result)
        assert result.requests == 20
        assert result.duration_s >= 19 * 0.010  # the delay between requests is kept
    verdict = judge_probe(results, POLICY.rate_limit_probe)
    assert verdict.status == "FAIL"
    assert verdict.sides == {"canary": "FAIL", "legacy": "PASS"}
    assert verdict.reasons[0] == "canary: 19/20 succeeded (95.0%) <= 95.0%"


def test_probe_passes_above_95_percent(target, legacy):
    target.configure(error_share=0.025)  # 1 in 40
    results = asyncio.run(
        run_probe(
            {"canary": target.url + "/health", "legacy": legacy.url + "/health"},
            requests_per_side=40,
            delay_ms=5,
            timeout_s=5,
        )
    )
    verdict = judge_probe(results, POLICY.rate_limit_probe)
    assert verdict.status == "PASS"
    assert verdict.reasons == (
        "canary: 39/40 succeeded (97.5%) > 95.0%",
        "legacy: 40/40 succeeded (100.0%) > 95.0%",
    )


def test_probe_sees_a_slow_start(target):
    target.configure(slow_start_s=0.5, slow_start_ms=200)
    results = asyncio.run(
        run_probe({"canary": target.url + "/"}, requests_per_side=2, delay_ms=600, timeout_s=5)
    )
    latency = results["canary"].latency
    assert latency.max_ms is not None and latency.max_ms >= 150  # the first, cold request
    assert latency.p50_ms is not None and latency.p50_ms < 50  # the second, warm one


# --- verdicts --------------------------------------------------------------------------------


def test_judge_load_bars():
    bars = POLICY.load_test  # max_error_rate 0.01, max_latency_p95 500
    passing = judge_load(synthetic(2000, 1980, p95=500.0), bars)
    assert passing.status == "PASS"
    assert passing.reasons == ("error ratio 20/2000 = 1.00% <= 1.00%", "p95 500.0 ms <= 500 ms")
    assert judge_load(synthetic(2000, 1979), bars).status == "FAIL"
    slow = judge_load(synthetic(2000, 2000, p95=500.5), bars)
    assert (slow.status, slow.reasons[1]) == ("FAIL", "p95 500.5 ms > 500 ms")
    no_response = judge_load(synthetic(10, 0, p95=None), bars)
    assert no_response.status == "FAIL"
    assert "no request got a response" in no_response.reasons[1]
    nothing = judge_load(synthetic(16, 0, p95=None, cancelled=16), bars)
    assert (nothing.status, nothing.reasons) == ("INCONCLUSIVE", ("no request completed (16 cancelled)",))


def test_judge_probe_edges():
    bars = RateLimitProbe(requests_per_side=10, delay_ms=0, min_success_rate=0.95)
    assert judge_probe({"canary": synthetic(100, 95)}, bars).status == "FAIL"
    assert judge_probe({"canary": synthetic(100, 96)}, bars).status == "PASS"
    idle = judge_probe({"canary": synthetic(100, 100), "legacy": synthetic(10, 0, cancelled=10)}, bars)
    assert (idle.status, idle.sides) == ("INCONCLUSIVE", {"canary": "PASS", "legacy": "INCONCLUSIVE"})
    with pytest.raises(ValueError):
        judge_probe({}, bars)


# --- plan_fits and the load test wrapper ------------------------------------------------------


def test_plan_fits_accepts_the_default_policy():
    plan_fits(POLICY.load_test, 540, 512, targets=2, deadline_s=260)
    plan_fits(load_policy_with(mode="open"), 540, 512, targets=2)
    plan_fits(POLICY.rate_limit_probe, 60, 256, targets=2, request_timeout_s=2)


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (POLICY.load_test, {}, "closed model: its duration depends on the target's latency"),
        (POLICY.load_test, {"deadline_s": 300}, "leaves 530 s after the 10 s margin"),
        (
            load_policy_with(mode="open", duration_s=300),
            {},
            r"the open model may take 622 s \(2 target\(s\) x 311 s: 300 s of arrivals",
        ),
        (load_policy_with(mode="open"), {"deadline_s": 30}, "shorter than duration_s 60 s"),
        (
            load_policy_with(concurrency=1000),
            {"deadline_s": 100},
            "1000 concurrent connection.* over the 410 MiB usable .* lower the concurrency",
        ),
        (POLICY.rate_limit_probe, {}, "pass request_timeout_s"),
        (  # the probe's deadline includes the slack after its last timeout
            POLICY.rate_limit_probe,
            {"request_timeout_s": 60},
            r"the probe may take 606 s \(10 requests x \(0.5 s delay \+ 60 s timeout\) \+ 1 s\)",
        ),
        (POLICY.load_test, {"deadline_s": 10}, r"shorter than one request timeout \(10 s\) \+ 1 s"),
    ],
)
def test_plan_fits_refuses_with_a_clear_message(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_fits(config, 540, 512, targets=2, **kwargs)


def test_plan_fits_refuses_a_timeout_smaller_than_the_margin():
    with pytest.raises(ValueError, match="leaves no time for a run"):
        plan_fits(POLICY.load_test, 10, 512, deadline_s=1)


def test_plan_fits_counts_every_service_and_what_runs_beside_it():
    """One invocation tests the services one after another: their runs add up."""
    open_model = load_policy_with(mode="open")  # 2 targets x 71 s per service
    plan_fits(open_model, 540, 512, targets=2, services=3)
    with pytest.raises(
        ValueError, match=r"142 s .*, 568 s for 4 services one after another, .* leaves 530 s"
    ):
        plan_fits(open_model, 540, 512, targets=2, services=4)
    plan_fits(POLICY.load_test, 540, 512, targets=2, services=2, deadline_s=130)
    with pytest.raises(
        ValueError, match=r"260 s .* plus 21 s of other runs per service, 562 s for 2 services one after"
    ):
        plan_fits(POLICY.load_test, 540, 512, targets=2, services=2, deadline_s=130, alongside_s=21)
    # 2 x 10 x (0.5 + 26) s is exactly the 530 s left: the slack after each probe tips it over.
    with pytest.raises(ValueError, match=r"266 s .* \+ 1 s\), 532 s for 2 services one after another"):
        plan_fits(POLICY.rate_limit_probe, 540, 512, targets=2, services=2, request_timeout_s=26)


def test_run_load_test_runs_each_target_and_passes(target, legacy):
    policy = load_policy_with(requests=200, concurrency=4, path="/health")
    results = run_load_test(
        {"canary": target.url, "stable": legacy.url + "/"}, policy, function_timeout_s=60, memory_mb=256
    )
    assert list(results) == ["canary", "stable"]
    assert (results["canary"].url, results["stable"].url) == (target.url + "/health", legacy.url + "/health")
    for result in results.values():
        assert_adds_up(result)
        assert (result.requests, result.successes) == (200, 200)
        assert judge_load(result, policy).status == "PASS"


def test_run_load_test_open_model_and_refusal_before_any_traffic(target):
    policy = load_policy_with(mode="open", rate_per_s=50, duration_s=0.4, request_timeout_s=2)
    results = run_load_test({"canary": target.url}, policy, function_timeout_s=60, memory_mb=256)
    assert (results["canary"].mode, results["canary"].requests) == ("open", 20)
    target.configure()
    with pytest.raises(ValueError, match="function timeout"):
        run_load_test(
            {"canary": target.url}, load_policy_with(mode="open"), function_timeout_s=30, memory_mb=256
        )
    assert target.stats()["requests"] == 0


def test_run_load_test_budget_is_shared_between_the_targets(target, legacy):
    """A closed run cut by its share of the budget leaves the rest to the next target."""
    policy = load_policy_with(requests=1000, concurrency=2, request_timeout_s=1, path="/health")
    target.configure(latency_ms=1500)  # every canary request times out
    results = run_load_test(
        {"canary": target.url, "stable": legacy.url},
        policy,
        function_timeout_s=60,
        memory_mb=256,
        budget_s=4.4,
    )
    canary, stable = results["canary"], results["stable"]
    assert canary.timeouts > 0 and canary.cancelled > 0  # cut at its share, not run to 1000 requests
    assert canary.duration_s < 4.4
    assert (stable.requests, stable.successes) == (1000, 1000)


def test_run_load_test_refuses_a_budget_it_cannot_fit_before_any_traffic(target):
    policy = load_policy_with(requests=10, concurrency=1, request_timeout_s=2)
    with pytest.raises(ValueError, match=r"needs at least 6 s \(3 s each\), but was given 5 s"):
        run_load_test(
            {"canary": target.url, "stable": target.url},
            policy,
            function_timeout_s=60,
            memory_mb=256,
            budget_s=5,
        )
    assert target.stats()["requests"] == 0


# --- the target's control endpoint -----------------------------------------------------------


def test_target_config_rejects_bad_behaviour(target):
    with pytest.raises(ValueError, match="unknown behaviour field"):
        target.configure(error_rate=0.1)
    request = urllib.request.Request(target.url + "/_target/config", data=b'{"drop_share": 2}')
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400
    assert json.load(raised.value) == {"error": "drop_share must be in [0, 1], got 2"}


# --- the HTTP client: request bytes, framing, connections, TLS --------------------------------

T = TypeVar("T")


class Scripted:
    """A minimal HTTP/1.1 server in the test's own event loop, for answers the target server
    never gives. Request n (from 1) gets the pieces of `answer(n)`, written `pause_s` apart (so
    the client reads them separately); with `close_after_s` set, the server then closes the
    connection that many seconds later, whatever the answer said. It records each request head
    and how many connections it accepted (and, with TLS, the protocol ALPN picked)."""

    def __init__(
        self,
        answer: Callable[[int], Sequence[bytes]],
        *,
        pause_s: float = 0.0,
        close_after_s: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer = answer
        self.pause_s = pause_s
        self.close_after_s = close_after_s
        self.tls = tls
        self.heads: list[bytes] = []
        self.connections = 0
        self.alpn: list[str | None] = []
        self.url = ""
        self.handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers[task] = writer
        self.connections += 1
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.alpn.append(ssl_object.selected_alpn_protocol())
        try:
            while True:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                for index, piece in enumerate(self.answer(len(self.heads))):
                    if index and self.pause_s:
                        await asyncio.sleep(self.pause_s)
                    writer.write(piece)
                    await writer.drain()
                if self.close_after_s is not None:
                    await asyncio.sleep(self.close_after_s)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed or dropped the connection
        finally:
            writer.close()

    def run(self, body: Callable[[str], Awaitable[T]]) -> T:
        """Serve while `body(base_url)` runs, in one event loop."""

        async def main() -> T:
            server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.tls)
            port = server.sockets[0].getsockname()[1]
            self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
            async with server:
                try:
                    return await body(self.url)
                finally:
                    # Close what the client left open and let the handlers end by themselves,
                    # rather than have asyncio.run cancel them (Python 3.11 logs that).
                    for writer in self.handlers.values():
                        writer.close()
                    await asyncio.gather(*self.handlers, return_exceptions=True)

        return asyncio.run(main())


def scripted_closed(server: Scripted, requests: int, concurrency: int = 1, **kwargs: object) -> TargetResult:
    async def body(url: str) -> TargetResult:
        options = {"timeout_s": 5, "deadline_s": 20} | kwargs
        return await run_closed(url + "/x", requests=requests, concurrency=concurrency, **options)  # type: ignore[arg-type]

    return server.run(body)


def scripted_probe(server: Scripted, requests: int, delay_ms: int) -> TargetResult:
    async def body(url: str) -> TargetResult:
        results = await run_probe(
            {"side": url + "/x"}, requests_per_side=requests, delay_ms=delay_ms, timeout_s=5
        )
        return results["side"]

    return server.run(body)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_request_bytes_carry_host_and_the_callers_headers():
    target = target_of(
        "https://canary---shop-abc123-ew.a.run.app/health?q=a b&x=1",
        "get",
        {"Authorization": "Bearer t0k3n", "accept": "application/json"},
    )
    assert (target.host, target.port, target.tls, target.head) == (
        "canary---shop-abc123-ew.a.run.app",
        443,
        True,
        False,
    )
    assert (
        target.request
        == (
            b"GET /health?q=a%20b&x=1 HTTP/1.1\r\n"
            b"Host: canary---shop-abc123-ew.a.run.app\r\n"
            b"User-Agent: " + USER_AGENT.encode() + b"\r\n"
            b"accept: application/json\r\n"  # the caller's header replaces the default in place
            b"Accept-Encoding: gzip, deflate\r\n"
            b"Connection: keep-alive\r\n"
            b"Authorization: Bearer t0k3n\r\n"
            b"\r\n"
        )
    )


def test_request_bytes_for_other_urls_and_methods():
    ipv6 = target_of("http://[::1]:8080")
    assert (ipv6.host, ipv6.port, ipv6.tls) == ("::1", 8080, False)
    assert ipv6.request.startswith(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n")
    assert b"Host: example.com\r\n" in target_of("https://example.com:443/").request  # default port
    assert b"Host: xn--bcher-kva.example:8443\r\n" in target_of("https://bücher.example:8443/").request
    basic = target_of("http://user:p%40ss@example.com/").request
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in basic  # user:p@ss
    post = target_of("http://example.com/x", "POST").request
    assert post.startswith(b"POST /x HTTP/1.1\r\n") and b"Content-Length: 0\r\n" in post
    assert target_of("http://example.com/", "HEAD").head
    assert b"Host: other\r\n" in target_of("http://example.com/", headers={"Host": "other"}).request


@pytest.mark.parametrize(
    ("url", "method", "headers", "message"),
    [
        ("ftp://example.com/", "GET", {}, "absolute http"),
        ("http://example.com:99999/", "GET", {}, "absolute http"),
        ("http://example.com/", "GE T", {}, "not an HTTP method"),
        ("http://example.com/", "GET", {"X-Evil": "a\r\nX-Injected: 1"}, "control character"),
        ("http://example.com/", "GET", {"Bad Name": "1"}, "not an HTTP header name"),
        ("http://example.com/", "GET", {"Content-Length": "5"}, "sends no body"),
    ],
)
def test_requests_that_cannot_be_sent_are_refused(url, method, headers, message):
    with pytest.raises(ValueError, match=message):
        target_of(url, method, headers)


def test_https_urls_get_a_verifying_tls_context():
    context = client_ssl_context()
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert not target_of("http://example.com/").tls


def test_headers_reach_the_target_exactly(target):
    # Against the real target, with an Authorization header as the load_test function sends.
    result = asyncio.run(
        run_closed(
            target.url + "/health",
            requests=3,
            concurrency=1,
            timeout_s=5,
            deadline_s=10,
            headers={"Authorization": "Bearer t0k3n"},
        )
    )
    assert result.successes == 3
    server = Scripted(lambda n: [OK])
    scripted_closed(server, 2, headers={"Authorization": "Bearer t0k3n", "X-Canary": "1"})
    port = server.url.rsplit(":", 1)[1]
    assert server.heads == 2 * [
        b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"User-Agent: " + USER_AGENT.encode() + b"\r\n"
        b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"Authorization: Bearer t0k3n\r\nX-Canary: 1\r\n\r\n"
    ]
    assert server.connections == 1  # keep-alive: both on one connection


def test_chunked_answers_are_read_to_their_last_chunk():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = Scripted(lambda n: [head + b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"], pause_s=0.005)
    result = scripted_closed(server, 20, concurrency=2)
    assert_adds_up(result)
    assert (result.requests, result.successes) == (20, 20)
    assert server.connections == 2  # the connections were reused after each chunked body
    p50 = result.latency.p50_ms
    assert p50 is not None and p50 >= 10 - bound_ms(10)  # it waited for the last of 3 pieces


def test_a_large_body_is_read_and_dropped_on_a_reused_connection():
    body = b"x" * (1 << 20)
    server = Scripted(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body])
    result = scripted_closed(server, 10)
    assert (result.successes, server.connections) == (10, 1)


def test_connection_close_from_the_server_opens_a_new_connection():
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    server = Scripted(lambda n: [close], close_after_s=0.05)  # the client closes first
    result = scripted_closed(server, 12, concurrency=3)
    assert (result.successes, result.connection_errors) == (12, 0)
    assert server.connections == 12


def test_a_connection_the_server_closed_while_idle_is_replaced():
    # The answer promises keep-alive, then the server closes the idle connection after 10 ms;
    # the next request (50 ms later) goes out on a new one instead of failing.
    server = Scripted(lambda n: [OK], close_after_s=0.01)
    result = scripted_probe(server, 5, delay_ms=50)
    assert (result.successes, result.connection_errors, server.connections) == (5, 0, 5)


def test_a_connection_idle_longer_than_the_keepalive_limit_is_not_reused(monkeypatch):
    result = scripted_probe(server := Scripted(lambda n: [OK]), 4, delay_ms=30)
    assert (result.successes, server.connections) == (4, 1)
    monkeypatch.setattr(loadgen, "KEEPALIVE_IDLE_S", 0.01)
    result = scripted_probe(server := Scripted(lambda n: [OK]), 4, delay_ms=30)
    assert (result.successes, server.connections) == (4, 4)


def test_close_delimited_bodies_complete_and_truncated_ones_fail():
    eof_body = Scripted(lambda n: [b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], close_after_s=0)
    result = scripted_closed(eof_body, 4)
    assert (result.successes, eof_body.connections) == (4, 4)
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ):
        server = Scripted(lambda n, answer=answer: [answer], close_after_s=0)
        result = scripted_closed(server, 4)
        assert_adds_up(result)
        assert (result.connection_errors, result.successes) == (4, 0)


def test_head_answers_have_no_body_and_keep_the_connection():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # the length a GET would get
    server = Scripted(lambda n: [head])
    result = scripted_closed(server, 6, method="HEAD")
    assert (result.successes, server.connections) == (6, 1)
    assert server.heads[0].startswith(b"HEAD /x HTTP/1.1\r\n")


def test_interim_1xx_and_bodiless_statuses():
    answers = {
        1: [b"HTTP/1.1 100 Continue\r\n\r\n", OK],
        2: [b"HTTP/1.1 204 No Content\r\n\r\n"],
        3: [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"],
        4: [b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"],
    }
    server = Scripted(lambda n: answers[n])
    result = scripted_closed(server, 4)
    assert (result.successes, server.connections) == (4, 1)  # a redirect is not followed
    assert len(server.heads) == 4


def test_malformed_answers_are_connection_errors():
    server = Scripted(lambda n: [b"HTTP/1.1 abc\r\n\r\n" if n % 2 else OK])
    result = scripted_closed(server, 6)
    assert_adds_up(result)
    assert (result.successes, result.connection_errors, server.connections) == (3, 3, 4)


def test_the_timeout_covers_the_whole_body():
    server = Scripted(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok", b"ok"], pause_s=0.5)
    result = scripted_closed(server, 3, timeout_s=0.1)
    assert_adds_up(result)
    assert (result.timeouts, result.successes) == (3, 0)


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def tls_server(certificate: tuple[Path, Path], answer: Callable[[int], Sequence[bytes]]) -> Scripted:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.set_alpn_protocols(["h2", "http/1.1"])  # like a front end that speaks both
    return Scripted(answer, tls=context)


def test_https_targets_are_loaded_over_verified_tls(certificate, monkeypatch):
    # The client trusts the system's CAs; SSL_CERT_FILE points OpenSSL at our test CA instead.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = tls_server(certificate, lambda n: [head + b"2\r\nok\r\n0\r\n\r\n"])
    result = scripted_closed(server, 20, concurrency=2, headers={"Authorization": "Bearer t0k3n"})
    assert server.url.startswith("https://")
    assert_adds_up(result)
    assert (result.successes, server.connections) == (20, 2)
    assert server.alpn == ["http/1.1", "http/1.1"]  # never HTTP/2, which we do not speak
    assert b"\r\nAuthorization: Bearer t0k3n\r\n" in server.heads[0]


def test_an_untrusted_certificate_is_a_connection_error(certificate, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = tls_server(certificate, lambda n: [OK])
    result = scripted_closed(server, 3)
    assert (result.connection_errors, result.successes, len(server.heads)) == (3, 0, 0)
