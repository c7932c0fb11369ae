"""shared.clients.monitoring driven through the real google-cloud-monitoring client against the stand-in."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.api import distribution_pb2, metric_pb2
from google.api_core import exceptions as api_exceptions
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

from infra.monitoring_standin import distribution, start_monitoring_standin
from shared.clients.custom_metrics import CustomPoint, MetricWriter
from shared.clients.monitoring import (
    CPU_UTILIZATIONS,
    MEMORY_UTILIZATIONS,
    REQUEST_COUNT,
    REQUEST_LATENCIES,
    RUN_RESOURCE,
    MonitoringReader,
)
from shared.core.distributions import merge_distributions, percentile
from shared.core.metrics_source import CanaryMetrics

Buckets = distribution_pb2.Distribution.BucketOptions
Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
Kind = metric_pb2.MetricDescriptor.MetricKind
ValueType = metric_pb2.MetricDescriptor.ValueType

PROJECT = "demo-project"
LOCATION, SERVICE = "europe-west1", "checkout"
CANARY, STABLE = "checkout-00002-new", "checkout-00001-old"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
END = T0 + timedelta(minutes=5)
MINUTES = [T0 + timedelta(minutes=m) for m in range(1, 6)]  # five one-minute samples ending at END

# Latency in ms: [0,25) [25,50) [50,100) [100,250) [250,500) [500,1000) and under/overflow.
LATENCY_BUCKETS = Buckets(explicit_buckets=Buckets.Explicit(bounds=[0, 25, 50, 100, 250, 500, 1000]))
# Memory: 0.0625 * 2^i -> [.0625,.125) [.125,.25) [.25,.5) [.5,1) [1,2).
MEMORY_BUCKETS = Buckets(
    exponential_buckets=Buckets.Exponential(num_finite_buckets=5, growth_factor=2, scale=0.0625)
)
# CPU: ten buckets of 0.1 from 0.
CPU_BUCKETS = Buckets(linear_buckets=Buckets.Linear(num_finite_buckets=10, width=0.1, offset=0))


@pytest.fixture(scope="module")
def standin():
    server = start_monitoring_standin()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(standin):
    standin.reset()


@pytest.fixture
def reader(standin):
    return MonitoringReader(PROJECT, endpoint=standin.target)


@pytest.fixture
def writer(standin):
    return MetricWriter(PROJECT, endpoint=standin.target)


@pytest.fixture
def client(standin):
    """The official client, as shared.clients.monitoring builds it, for stand-in level checks."""
    channel = grpc.insecure_channel(standin.target)
    return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))


def add(standin, metric, revision, points, **metric_labels):
    labels = {"project_id": PROJECT, "location": LOCATION, "service_name": SERVICE, "revision_name": revision}
    standin.add_points(
        PROJECT,
        metric,
        points,
        resource_type=RUN_RESOURCE,
        resource_labels=labels,
        metric_labels=metric_labels,
    )


def measure(reader, revision, start=T0, end=END) -> CanaryMetrics:
    return reader.canary_metrics(location=LOCATION, service=SERVICE, revision=revision, start=start, end=end)


def list_series(
    client, filter_, *, start=T0, end=END, view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL, **agg
):
    request = monitoring_v3.ListTimeSeriesRequest(
        name=f"projects/{PROJECT}",
        filter=filter_,
        interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
        view=view,
    )
    if agg:
        request.aggregation = monitoring_v3.Aggregation(**agg)
    return list(client.list_time_series(request=request))


def load_canary_and_stable(standin):
    """A canary: 2xx and 5xx split over two response codes each, latencies, utilisations.

    A much worse stable revision next to it, which must not leak into the canary's numbers.
    """
    add(
        standin,
        REQUEST_COUNT,
        CANARY,
        [(t, 35) for t in MINUTES],
        response_code="200",
        response_code_class="2xx",
    )
    add(
        standin,
        REQUEST_COUNT,
        CANARY,
        [(t, 4) for t in MINUTES],
        response_code="204",
        response_code_class="2xx",
    )
    add(
        standin,
        REQUEST_COUNT,
        CANARY,
        [(t, 1) for t in MINUTES[:3]],
        response_code="500",
        response_code_class="5xx",
    )
    add(
        standin,
        REQUEST_COUNT,
        CANARY,
        [(t, 1) for t in MINUTES[3:]],
        response_code="503",
        response_code_class="5xx",
    )
    # Per minute: 16 x 20 ms, 3 x 80 ms, 1 x 300 ms for 2xx; 4 x 700 ms for 5xx.
    ok_latency = distribution([20] * 16 + [80] * 3 + [300], LATENCY_BUCKETS)
    add(standin, REQUEST_LATENCIES, CANARY, [(t, ok_latency) for t in MINUTES], response_code_class="2xx")
    error_latency = distribution([700] * 4, LATENCY_BUCKETS)
    add(standin, REQUEST_LATENCIES, CANARY, [(t, error_latency) for t in MINUTES], response_code_class="5xx")
    # Two instances sampled each minute.
    add(
        standin, MEMORY_UTILIZATIONS, CANARY, [(t, distribution([0.3, 0.7], MEMORY_BUCKETS)) for t in MINUTES]
    )
    add(standin, CPU_UTILIZATIONS, CANARY, [(t, distribution([0.15, 0.45], CPU_BUCKETS)) for t in MINUTES])

    add(
        standin,
        REQUEST_COUNT,
        STABLE,
        [(t, 1000) for t in MINUTES],
        response_code="200",
        response_code_class="2xx",
    )
    add(
        standin,
        REQUEST_COUNT,
        STABLE,
        [(t, 500) for t in MINUTES],
        response_code="500",
        response_code_class="5xx",
    )
    slow = distribution([2000] * 50, LATENCY_BUCKETS)
    add(standin, REQUEST_LATENCIES, STABLE, [(t, slow) for t in MINUTES], response_code_class="2xx")
    hot = distribution([1.5, 1.5], MEMORY_BUCKETS)
    add(standin, MEMORY_UTILIZATIONS, STABLE, [(t, hot) for t in MINUTES])
    add(standin, CPU_UTILIZATIONS, STABLE, [(t, distribution([0.95], CPU_BUCKETS)) for t in MINUTES])


# --- MonitoringReader --------------------------------------------------------------------


def test_canary_metrics_of_one_revision(standin, reader):
    load_canary_and_stable(standin)

    metrics = measure(reader, CANARY)

    assert (metrics.window_start, metrics.window_end) == (T0, END)
    assert (metrics.request_count, metrics.error_count) == (200, 5)  # 175 + 20 ok, 3 + 2 errors
    assert metrics.error_rate == 0.025
    # 120 latencies: 80 < 25 ms, 15 in [50,100), 5 in [250,500), 20 in [500,1000). Rank 114 is
    # the 14th of the 20 in [500,1000): 500 + 14/20 * 500. The 2xx series alone would say 100.
    assert metrics.latency_p95_ms == pytest.approx(850)
    # 10 memory samples, 5 in [.25,.5) and 5 in [.5,1): rank 9.9 -> .5 + 4.9/5 * .5.
    assert metrics.memory_utilization == pytest.approx(0.99)
    # 10 CPU samples, 5 in [.1,.2) and 5 in [.4,.5): rank 9.9 -> .4 + 4.9/5 * .1.
    assert metrics.cpu_utilization == pytest.approx(0.498)


def test_stable_revision_is_measured_on_its_own(standin, reader):
    load_canary_and_stable(standin)

    metrics = measure(reader, STABLE)

    assert (metrics.request_count, metrics.error_count) == (7500, 2500)
    assert metrics.error_rate == pytest.approx(1 / 3)
    assert metrics.latency_p95_ms == 1000  # all in the overflow bucket: its finite bound
    assert metrics.memory_utilization == pytest.approx(1.99)
    assert metrics.cpu_utilization == pytest.approx(0.999)


def test_window_is_start_exclusive_and_end_inclusive(standin, reader):
    after = END + timedelta(minutes=1)
    add(standin, REQUEST_COUNT, CANARY, [(T0, 100), (END, 7), (after, 100)], response_code_class="2xx")
    add(standin, REQUEST_COUNT, CANARY, [(T0, 50), (after, 50)], response_code_class="5xx")
    memory = [(T0, [0.9]), (END, [0.3]), (after, [0.9])]
    add(standin, MEMORY_UTILIZATIONS, CANARY, [(t, distribution(s, MEMORY_BUCKETS)) for t, s in memory])

    metrics = measure(reader, CANARY)

    assert (metrics.request_count, metrics.error_count, metrics.error_rate) == (7, 0, 0.0)
    assert metrics.memory_utilization == pytest.approx(0.25 + 0.99 * 0.25)  # the 0.3 sample only


@pytest.mark.parametrize(
    "runs", [[(2, 3)], [(2, 3), (4, 5)], [(0, 1), (2, 3)]], ids=["one", "two", "at-start"]
)
def test_excluded_minutes_leave_request_counts_and_latency_but_not_memory(standin, reader, runs):
    """Users: 100 requests a minute at 300 ms. A load test's minutes add 20,000 requests at 5 ms
    and 500 5xx, and push memory to 0.9. Leaving them out gives the users' numbers back."""
    loaded = {T0 + timedelta(minutes=b) for _, b in runs}
    for t in MINUTES:
        busy = t in loaded
        add(standin, REQUEST_COUNT, CANARY, [(t, 20100 if busy else 100)], response_code_class="2xx")
        add(standin, REQUEST_COUNT, CANARY, [(t, 500 if busy else 0)], response_code_class="5xx")
        latencies = [5] * 20000 + [300] * 100 if busy else [300] * 100
        add(standin, REQUEST_LATENCIES, CANARY, [(t, distribution(latencies, LATENCY_BUCKETS))])
        memory = [0.9] if busy else [0.3]
        add(standin, MEMORY_UTILIZATIONS, CANARY, [(t, distribution(memory, MEMORY_BUCKETS))])
    exclude = [(T0 + timedelta(minutes=a), T0 + timedelta(minutes=b)) for a, b in runs]

    merged = measure(reader, CANARY)
    metrics = reader.canary_metrics(
        location=LOCATION, service=SERVICE, revision=CANARY, start=T0, end=END, exclude=exclude
    )

    assert merged.latency_p95_ms < 25  # what the whole window says: the load test's 5 ms
    users = 5 - len(runs)
    assert (metrics.request_count, metrics.error_count, metrics.error_rate) == (100 * users, 0, 0.0)
    assert 250 <= metrics.latency_p95_ms <= 500  # the users' 300 ms bucket
    assert metrics.memory_utilization == merged.memory_utilization > 0.5  # memory keeps every minute


def test_no_data_is_none_never_zero(standin, reader):
    load_canary_and_stable(standin)

    metrics = measure(reader, "checkout-00003-unseen")

    assert metrics == CanaryMetrics(
        window_start=T0,
        window_end=END,
        request_count=0,
        error_count=0,
        error_rate=None,
        latency_p95_ms=None,
        memory_utilization=None,
        cpu_utilization=None,
    )


def test_as_dict_is_json_ready(standin, reader):
    load_canary_and_stable(standin)

    data = measure(reader, CANARY).as_dict()

    assert json.loads(json.dumps(data))["window_start"] == "2025-01-01T12:00:00+00:00"
    assert data["error_rate"] == 0.025


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (T0.replace(tzinfo=None), END.replace(tzinfo=None)),  # naive
        (T0, T0 + timedelta(seconds=59)),  # shorter than the minimum alignment period
        (T0, T0 + timedelta(seconds=90, milliseconds=5)),  # not whole seconds
        (END, T0),
    ],
)
def test_bad_window_is_a_value_error(reader, start, end):
    with pytest.raises(ValueError, match="window"):
        measure(reader, CANARY, start, end)


def test_unavailable_and_deadline_exceeded_reads_are_retried(standin, reader):
    load_canary_and_stable(standin)
    standin.fail_next("ListTimeSeries", grpc.StatusCode.UNAVAILABLE, times=2)
    standin.fail_next("ListTimeSeries", grpc.StatusCode.DEADLINE_EXCEEDED)

    assert measure(reader, CANARY).request_count == 200


def test_other_read_errors_surface(standin, reader):
    standin.fail_next("ListTimeSeries", grpc.StatusCode.PERMISSION_DENIED)

    with pytest.raises(api_exceptions.PermissionDenied):
        measure(reader, CANARY)


# --- MetricWriter ------------------------------------------------------------------------


def test_write_round_trip_splits_into_batches_of_200(standin, writer, client):
    now = datetime.now(UTC).replace(microsecond=0)
    points = [
        CustomPoint("load_test/latency_p95_ms", float(i), {"target": f"t{i:03d}"}, now) for i in range(450)
    ]
    points.append(CustomPoint("load_test/requests", 2000, {"side": "canary"}, now))

    writer.write(points)  # the stand-in, like the API, refuses more than 200 series per call

    stored = standin.series(PROJECT)
    assert len(stored) == 451
    read = list_series(
        client,
        'metric.type = "custom.googleapis.com/canary_guard/load_test/latency_p95_ms"'
        ' AND resource.type = "global" AND metric.labels.target = "t449"',
        start=now - timedelta(minutes=1),
        end=now,
    )
    assert len(read) == 1
    assert read[0].resource.labels == {"project_id": PROJECT}
    assert (read[0].metric_kind, read[0].value_type) == (Kind.GAUGE, ValueType.DOUBLE)
    assert [p.value.double_value for p in read[0].points] == [449.0]
    requests = next(ts for ts in stored if ts.metric.type.endswith("/requests"))
    assert requests.value_type == ValueType.INT64
    assert requests.points[0].value.int64_value == 2000


def test_points_of_one_series_are_written_oldest_first_one_per_call(standin, writer):
    now = datetime.now(UTC)
    times = [now - timedelta(seconds=s) for s in (0, 20, 40)]

    values = [0.9, 0.8, 0.7]

    writer.write(
        [
            CustomPoint("probe/success_rate", v, {"side": "canary"}, t)
            for v, t in zip(values, times, strict=True)
        ]
    )

    (series,) = standin.series(PROJECT)
    assert [p.value.double_value for p in series.points] == values  # newest first


def test_backwards_point_is_rejected(writer):
    now = datetime.now(UTC)
    writer.write([CustomPoint("probe/success_rate", 1.0, {"side": "legacy"}, now)])

    with pytest.raises(api_exceptions.InvalidArgument, match="written in order"):
        writer.write([CustomPoint("probe/success_rate", 0.5, {"side": "legacy"}, now - timedelta(minutes=1))])


def test_value_type_of_a_metric_is_fixed_by_its_first_write(writer):
    now = datetime.now(UTC)
    writer.write([CustomPoint("load_test/requests", 2000, {}, now - timedelta(minutes=1))])

    with pytest.raises(api_exceptions.InvalidArgument, match="value type"):
        writer.write([CustomPoint("load_test/requests", 1999.5, {}, now)])


def test_writes_are_not_retried(standin, writer):
    standin.fail_next("CreateTimeSeries", grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(api_exceptions.ServiceUnavailable):
        writer.write([CustomPoint("probe/success_rate", 1.0, {}, datetime.now(UTC))])
    assert standin.series(PROJECT) == []


# --- the stand-in as Cloud Monitoring ----------------------------------------------------

CANARY_REQUESTS = f'metric.type = "{REQUEST_COUNT}" AND resource.labels.revision_name = "{CANARY}"'


@pytest.mark.parametrize(
    "filter_",
    [
        f'metric.type = "{REQUEST_COUNT}" OR resource.type = "{RUN_RESOURCE}"',
        'metric.type = starts_with("run.googleapis.com/")',
        f'resource.type = "{RUN_RESOURCE}"',  # no metric type
        f'metric.type = "{REQUEST_COUNT}" AND metric.type = "{REQUEST_LATENCIES}"',
        f'metric.type = "{REQUEST_COUNT}" AND resource.labels.revision_name != "{CANARY}"',
        f'metric.type = "{REQUEST_COUNT}" AND project = "{PROJECT}"',
        f'metric.type = "{REQUEST_COUNT}" AND',
    ],
)
def test_unsupported_filter_is_invalid_argument(client, filter_):
    with pytest.raises(api_exceptions.InvalidArgument):
        list_series(client, filter_)


def test_raw_points_newest_first_and_headers_without_points(standin, client):
    load_canary_and_stable(standin)
    ok = CANARY_REQUESTS + ' AND metric.label.response_code = "200"'  # `label` works like `labels`

    (raw,) = list_series(client, ok)
    (header,) = list_series(client, ok, view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS)

    assert [p.interval.end_time for p in raw.points] == MINUTES[::-1]
    assert [p.interval.start_time for p in raw.points] == [t - timedelta(minutes=1) for t in MINUTES[::-1]]
    assert header.metric.labels["response_code"] == "200"
    assert list(header.points) == []


def test_reduce_sum_groups_by_label_and_periods_end_at_interval_end(standin, client):
    load_canary_and_stable(standin)

    series = list_series(
        client,
        CANARY_REQUESTS,
        start=T0 - timedelta(minutes=5),
        end=END,
        alignment_period=timedelta(minutes=5),
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_SUM,
        group_by_fields=["metric.labels.response_code_class"],
    )

    assert [dict(ts.metric.labels) for ts in series] == [
        {"response_code_class": "2xx"},
        {"response_code_class": "5xx"},
    ]
    assert dict(series[0].resource.labels) == {}
    assert [(p.interval.start_time, p.interval.end_time, p.value.int64_value) for p in series[0].points] == [
        (T0, END, 195)  # the earlier period (T0 - 5 min, T0] has no data and no point
    ]


def test_reduce_sum_merges_distribution_buckets(standin, client):
    load_canary_and_stable(standin)

    (merged,) = list_series(
        client,
        f'metric.type = "{REQUEST_LATENCIES}" AND resource.labels.revision_name = "{CANARY}"',
        alignment_period=timedelta(minutes=5),
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_SUM,
    )

    value = merged.points[0].value.distribution_value
    assert merged.value_type == ValueType.DISTRIBUTION
    assert (value.count, list(value.bucket_counts)) == (120, [0, 80, 0, 15, 0, 5, 20, 0])


def test_percentile_aligner_outputs_gauge_double(standin, client):
    load_canary_and_stable(standin)

    (series,) = list_series(
        client,
        f'metric.type = "{MEMORY_UTILIZATIONS}" AND resource.labels.revision_name = "{CANARY}"',
        alignment_period=timedelta(minutes=5),
        per_series_aligner=Aligner.ALIGN_PERCENTILE_95,
    )

    assert (series.metric_kind, series.value_type) == (Kind.GAUGE, ValueType.DOUBLE)
    assert series.points[0].interval.start_time == series.points[0].interval.end_time == END
    assert series.points[0].value.double_value == pytest.approx(0.5 + 4.5 / 5 * 0.5)


@pytest.mark.parametrize(
    ("aggregation", "error"),
    [
        ({"per_series_aligner": Aligner.ALIGN_DELTA}, api_exceptions.InvalidArgument),  # no period
        (
            {"alignment_period": timedelta(seconds=30), "per_series_aligner": Aligner.ALIGN_DELTA},
            api_exceptions.InvalidArgument,
        ),
        (
            {"alignment_period": timedelta(minutes=5), "cross_series_reducer": Reducer.REDUCE_SUM},
            api_exceptions.InvalidArgument,  # a reducer needs an aligner
        ),
        (
            {"alignment_period": timedelta(minutes=5), "per_series_aligner": Aligner.ALIGN_MAX},
            api_exceptions.InvalidArgument,  # ALIGN_MAX is for numeric values only
        ),
        (
            {"alignment_period": timedelta(minutes=5), "per_series_aligner": Aligner.ALIGN_STDDEV},
            api_exceptions.MethodNotImplemented,
        ),
        (
            {
                "alignment_period": timedelta(minutes=5),
                "per_series_aligner": Aligner.ALIGN_DELTA,
                "cross_series_reducer": Reducer.REDUCE_SUM,
                "group_by_fields": ["metadata.system_labels.zone"],
            },
            api_exceptions.InvalidArgument,
        ),
    ],
)
def test_invalid_aggregation(standin, client, aggregation, error):
    load_canary_and_stable(standin)

    with pytest.raises(error):
        list_series(client, f'metric.type = "{REQUEST_LATENCIES}"', **aggregation)


def test_create_refuses_more_than_200_series_and_built_in_metrics(client):
    now = datetime.now(UTC)

    def series(metric_type, i):
        return monitoring_v3.TimeSeries(
            metric={"type": metric_type, "labels": {"i": str(i)}},
            resource={"type": "global", "labels": {"project_id": PROJECT}},
            points=[monitoring_v3.Point(interval={"end_time": now}, value={"double_value": 1.0})],
        )

    with pytest.raises(api_exceptions.InvalidArgument, match="200"):
        client.create_time_series(
            name=f"projects/{PROJECT}", time_series=[series("custom.googleapis.com/x", i) for i in range(201)]
        )
    with pytest.raises(api_exceptions.InvalidArgument, match="user-defined"):
        client.create_time_series(name=f"projects/{PROJECT}", time_series=[series(REQUEST_COUNT, 0)])


def test_add_points_refuses_a_point_that_does_not_move_forward(standin):
    add(standin, REQUEST_COUNT, CANARY, [(END, 1)])

    with pytest.raises(ValueError, match="in order"):
        add(standin, REQUEST_COUNT, CANARY, [(END, 1)])


def test_runs_as_a_module(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.monitoring_standin", "--port", str(port)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout.readline().strip() == f"monitoring stand-in listening on 127.0.0.1:{port}"
        reader = MonitoringReader(PROJECT, endpoint=f"127.0.0.1:{port}")
        assert measure(reader, CANARY).request_count == 0
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


# --- distribution helpers ----------------------------------------------------------------


def test_percentile_interpolates_within_the_bucket():
    # The worked example of cloud.google.com/monitoring/api/v3/distribution-metrics: scale 1,
    # growth 2, one sample in bucket [128, 256); p-th percentile = low + (up - low) * p / 100.
    one = distribution(
        [200],
        Buckets(exponential_buckets=Buckets.Exponential(num_finite_buckets=10, growth_factor=2, scale=1)),
    )

    assert [percentile(one, q) for q in (50, 95, 99)] == pytest.approx([192, 249.6, 254.72])


def test_percentile_edges():
    # Rank exactly at a bucket's end: the smallest value with 95 % of samples at or below it.
    assert percentile(distribution([20] * 95 + [300] * 5, LATENCY_BUCKETS), 95) == 25
    assert percentile(distribution([-3], LATENCY_BUCKETS), 50) == 0  # underflow: its upper bound
    assert percentile(distribution([5000], LATENCY_BUCKETS), 50) == 1000  # overflow: its lower bound
    assert percentile(distribution([], LATENCY_BUCKETS), 95) is None


def test_merge_matches_the_union_of_samples():
    a, b = [20, 30, 80], [300, 700, 700, 10]

    merged = merge_distributions([distribution(a, LATENCY_BUCKETS), distribution(b, LATENCY_BUCKETS)])

    union = distribution(a + b, LATENCY_BUCKETS)
    assert merged.count == union.count
    assert merged.mean == pytest.approx(union.mean)
    assert merged.sum_of_squared_deviation == pytest.approx(union.sum_of_squared_deviation)
    assert list(merged.bucket_counts) == list(union.bucket_counts)
    with pytest.raises(ValueError, match="bucket options"):
        merge_distributions([distribution(a, LATENCY_BUCKETS), distribution(a, CPU_BUCKETS)])
