"""The load generator against the local target server (infra/target_server.py), whose
behaviour is deterministic (every k-th answer fails), so most counts are asserted exactly."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.target_server import TargetHandle, start_target_server
from shared.loadgen import (
    MAX_REQUESTS,
    LatencyHistogram,
    LatencySummary,
    TargetResult,
    judge_load,
    judge_probe,
    plan_fits,
    run_closed,
    run_load_test,
    run_open,
    run_probe,
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
    # aiohttp would silently resend a dropped GET; the generator turns that off.
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
        (POLICY.rate_limit_probe, {"request_timeout_s": 60}, r"the probe may take 605 s \(10 requests"),
    ],
)
def test_plan_fits_refuses_with_a_clear_message(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_fits(config, 540, 512, targets=2, **kwargs)


def test_plan_fits_refuses_a_timeout_smaller_than_the_margin():
    with pytest.raises(ValueError, match="leaves no time for a run"):
        plan_fits(POLICY.load_test, 10, 512, deadline_s=1)


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


# --- the target's control endpoint -----------------------------------------------------------


def test_target_config_rejects_bad_behaviour(target):
    with pytest.raises(ValueError, match="unknown behaviour field"):
        target.configure(error_rate=0.1)
    request = urllib.request.Request(target.url + "/_target/config", data=b'{"drop_share": 2}')
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400
    assert json.load(raised.value) == {"error": "drop_share must be in [0, 1], got 2"}
