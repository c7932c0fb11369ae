"""Cloud Monitoring API v3 client: with shared/clients/custom_metrics.py, the only code that touches
`google.cloud.monitoring_v3`.

`MonitoringReader` measures a canary revision over a window from Cloud Run's built-in metrics
(a `CanaryMetrics`, the value defined with the seam in shared/core/metrics_source.py), and reads
every watched revision minute by minute for a checkpoint. canary-guard's own custom metrics are
written by `MetricWriter` (shared/clients/custom_metrics.py) on the same client setup.
Percentiles come from shared/core/distributions.py, which the local stand-in
(infra/monitoring_standin.py) aggregates with too, so a percentile is computed one way only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as retries
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

from shared.core.distributions import Distribution, merge_distributions, percentile
from shared.core.metrics_source import CanaryMetrics

if TYPE_CHECKING:
    from shared.core.evidence import MinuteMetrics
    from shared.core.minutes import MinuteSample

Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer

RUN_RESOURCE = "cloud_run_revision"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
MEMORY_UTILIZATIONS = "run.googleapis.com/container/memory/utilizations"
CPU_UTILIZATIONS = "run.googleapis.com/container/cpu/utilizations"
MIN_WINDOW_S = 60  # the smallest alignment period Cloud Monitoring accepts
MAX_ONE_OF = 100  # services named in one filter; beyond, the project's Cloud Run revisions are read
CALL_TIMEOUT_S = 20.0  # per API call, retries included; a checkpoint makes eight reads (see functions.tf)

# The client retries ListTimeSeries only on UNAVAILABLE by default. Reads are idempotent, so a
# server-side DEADLINE_EXCEEDED is worth another attempt too, within the same overall deadline.
READ_RETRY = retries.Retry(
    predicate=retries.if_exception_type(api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded),
    initial=0.2,
    maximum=5.0,
    multiplier=2.0,
    timeout=CALL_TIMEOUT_S,
)


def metric_service_client(endpoint: str | None = None) -> monitoring_v3.MetricServiceClient:
    """The official client: default credentials, or with `endpoint` (host:port) a plain-text
    channel to a local stand-in."""
    if endpoint is None:
        return monitoring_v3.MetricServiceClient()
    # client_options={"api_endpoint": ...} alone still speaks TLS, which a local plain-text
    # server never answers; a ready channel makes the client skip auth. Unbounded messages, as
    # the generated transport's own channel has them: a batched read of hundreds of services is
    # a long answer.
    unbounded = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(endpoint, options=unbounded)
    return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))


class MonitoringApi:
    """One project's Cloud Monitoring API: what the reader and canary-guard's own metric writer
    (shared/clients/custom_metrics.py) are built on."""

    def __init__(self, project: str, endpoint: str | None = None) -> None:
        self._project = project
        self._endpoint = endpoint
        self._client_instance: monitoring_v3.MetricServiceClient | None = None

    @property
    def _client(self) -> monitoring_v3.MetricServiceClient:
        # Built on first use: a function instance that never queries never needs credentials.
        if self._client_instance is None:
            self._client_instance = metric_service_client(self._endpoint)
        return self._client_instance


class MonitoringReader(MonitoringApi):
    """Reads a Cloud Run revision's request, latency and utilisation metrics."""

    def canary_metrics(
        self,
        *,
        location: str,
        service: str,
        revision: str,
        start: datetime,
        end: datetime,
        exclude: Sequence[tuple[datetime, datetime]] = (),
    ) -> CanaryMetrics:
        """One ListTimeSeries per metric, aligned over the whole window.

        That gives one point per series; every returned point is still combined, so an answer
        split over two alignment periods is counted once, not dropped. Request counts and
        latencies leave out the minute-aligned spans in `exclude` (canary-guard's own load
        tests): with any, those two are read per minute and the minutes inside an excluded span
        dropped, so a checkpoint makes four reads however many runs its window holds. Memory and
        CPU keep every minute: how the canary holds up under load is its own health.
        """
        _check_window(start, end)
        resource = (
            f"resource.type = {_quote(RUN_RESOURCE)}"
            f" AND resource.labels.location = {_quote(location)}"
            f" AND resource.labels.service_name = {_quote(service)}"
            f" AND resource.labels.revision_name = {_quote(revision)}"
        )

        def query(
            metric: str,
            aligner: Aligner,
            reducer: Reducer,
            group_by: Sequence[str] = (),
            *,
            per_minute: bool = False,
        ) -> list[monitoring_v3.TimeSeries]:
            found = self._list(
                f"metric.type = {_quote(metric)} AND {resource}",
                start,
                end,
                aligner,
                reducer,
                group_by,
                period=timedelta(seconds=MIN_WINDOW_S) if per_minute else end - start,
            )
            return [_without_minutes(series, exclude) for series in found] if per_minute else found

        requests_per_minute = bool(exclude)
        # Request counts are DELTA int64: sum each series over the window, then add the series
        # up per response class.
        by_class = query(
            REQUEST_COUNT,
            Aligner.ALIGN_DELTA,
            Reducer.REDUCE_SUM,
            ["metric.labels.response_code_class"],
            per_minute=requests_per_minute,
        )
        counts: dict[str, int] = {}
        for ts in by_class:
            response_class = ts.metric.labels.get("response_code_class", "")
            counts[response_class] = counts.get(response_class, 0) + _int_total(ts)
        request_count = sum(counts.values())
        error_count = counts.get("5xx", 0)

        # Latency: request_latencies has one series per response code (and route). A percentile
        # aligner (ALIGN_PERCENTILE_95) would give one P95 per series, and no reducer turns those
        # into the revision's P95 (a mean or max of percentiles is not a percentile). ALIGN_DELTA
        # + REDUCE_SUM are documented for DELTA distributions and keep the whole histogram, so
        # the P95 of every request in the window is computed here from the bucket counts.
        latencies = query(
            REQUEST_LATENCIES, Aligner.ALIGN_DELTA, Reducer.REDUCE_SUM, per_minute=requests_per_minute
        )
        latency = merge_distributions([p.value.distribution_value for ts in latencies for p in ts.points])

        # Utilisations are already distributions across all instances; P99 per series keeps the
        # near-worst sample, and REDUCE_MAX keeps the worst series (a numeric reducer is valid
        # here because the percentile aligner outputs DOUBLE).
        memory = query(MEMORY_UTILIZATIONS, Aligner.ALIGN_PERCENTILE_99, Reducer.REDUCE_MAX)
        cpu = query(CPU_UTILIZATIONS, Aligner.ALIGN_PERCENTILE_99, Reducer.REDUCE_MAX)

        return CanaryMetrics(
            window_start=start,
            window_end=end,
            request_count=request_count,
            error_count=error_count,
            error_rate=error_count / request_count if request_count else None,
            latency_p95_ms=percentile(latency, 95),
            memory_utilization=_max_double(memory),
            cpu_utilization=_max_double(cpu),
        )

    def minute_metrics(
        self, *, location: str, service: str, start: datetime, end: datetime
    ) -> dict[str, dict[datetime, MinuteMetrics]]:
        """Every revision of the service, minute by minute over (start, end] (whole minutes):
        revision → minute start → what Cloud Monitoring holds for it. A minute without a point
        is absent, never zero. The four calls of `platform_minutes`, for one service."""
        revisions = self.platform_minutes([(location, service)], start=start, end=end)[(location, service)]
        return {
            revision: {minute: sample.metrics() for minute, sample in minutes.items()}
            for revision, minutes in revisions.items()
        }

    def platform_minutes(
        self,
        services: Sequence[tuple[str, str]],
        *,
        start: datetime,
        end: datetime,
        period: timedelta = timedelta(seconds=MIN_WINDOW_S),
    ) -> dict[tuple[str, str], dict[str, dict[datetime, MinuteSample]]]:
        """Every revision of every (location, service), minute by minute over (start, end]
        (`period`: blocks of that length ending at `end` instead, e.g. hours for a long window):
        (location, service) → revision → minute start → sample; every requested service has
        an entry, empty without data. Four ListTimeSeries calls however many services and
        revisions (grouped by location, service and revision; the client pages through long
        answers), so one checkpoint minute reads Monitoring a fixed number of times."""
        _check_window(start, end)
        from shared.core.minutes import MinuteSample

        wanted = set(services)
        names = sorted({service for _, service in wanted})
        resource = f"resource.type = {_quote(RUN_RESOURCE)}"
        if len(wanted) == 1:
            ((location, service),) = wanted
            resource += (
                f" AND resource.labels.location = {_quote(location)}"
                f" AND resource.labels.service_name = {_quote(service)}"
            )
        elif len(names) <= MAX_ONE_OF:
            resource += f" AND resource.labels.service_name = one_of({', '.join(map(_quote, names))})"
        # else: the whole project's Cloud Run revisions, the unwatched ones dropped below (a
        # filter naming hundreds of services is longer than Monitoring accepts).
        group = ["resource.labels.location", "resource.labels.service_name", "resource.labels.revision_name"]
        found: dict[tuple[str, str], dict[str, dict[datetime, dict[str, Any]]]] = {key: {} for key in wanted}

        def points(metric: str, *extra_group: str) -> Iterator[tuple[Any, dict[str, Any], Any]]:
            """(raw series, the minute's slot, raw point) for each point of a watched service."""
            for series in self._list(
                f"metric.type = {_quote(metric)} AND {resource}",
                start,
                end,
                Aligner.ALIGN_DELTA,
                Reducer.REDUCE_SUM,
                [*group, *extra_group],
                period=period,
            ):
                raw = monitoring_v3.TimeSeries.pb(series)  # plain protobuf: fast on long answers
                labels = raw.resource.labels
                revisions = found.get((labels["location"], labels["service_name"]))
                if revisions is None:
                    continue
                minutes = revisions.setdefault(labels["revision_name"], {})
                for point in raw.points:
                    minute = datetime.fromtimestamp(point.interval.end_time.seconds, UTC) - period
                    yield raw, minutes.setdefault(minute, {"requests": 0, "errors": 0}), point

        # Request counts are DELTA int64 per response class; latencies and utilisations DELTA
        # distributions, merged (REDUCE_SUM) so the minute's percentiles come from all its samples.
        for raw, values, point in points(REQUEST_COUNT, "metric.labels.response_code_class"):
            values["requests"] += point.value.int64_value
            if raw.metric.labels.get("response_code_class") == "5xx":
                values["errors"] += point.value.int64_value
        for name, metric in (
            ("latency", REQUEST_LATENCIES),
            ("memory", MEMORY_UTILIZATIONS),
            ("cpu", CPU_UTILIZATIONS),
        ):
            for _raw, values, point in points(metric):
                values.setdefault(name, []).append(point.value.distribution_value)
        return {
            key: {
                revision: {
                    minute: MinuteSample(
                        span=period,
                        minute=minute,
                        requests=values["requests"],
                        errors=values["errors"],
                        **{
                            name: _one_distribution(values[name])
                            for name in ("latency", "memory", "cpu")
                            if name in values
                        },
                    )
                    for minute, values in minutes.items()
                }
                for revision, minutes in revisions.items()
            }
            for key, revisions in found.items()
        }

    def _list(
        self,
        filter_: str,
        start: datetime,
        end: datetime,
        aligner: Aligner,
        reducer: Reducer,
        group_by: Sequence[str],
        period: timedelta,
    ) -> list[monitoring_v3.TimeSeries]:
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{self._project}",
            filter=filter_,
            interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
            aggregation=monitoring_v3.Aggregation(
                alignment_period=period,
                per_series_aligner=aligner,
                cross_series_reducer=reducer,
                group_by_fields=list(group_by),
            ),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        return list(self._client.list_time_series(request=request, retry=READ_RETRY, timeout=CALL_TIMEOUT_S))


def _without_minutes(
    series: monitoring_v3.TimeSeries, exclude: Sequence[tuple[datetime, datetime]]
) -> monitoring_v3.TimeSeries:
    """The series less its points whose minute ends inside an excluded span (start, end]."""
    kept = [
        point
        for point in series.points
        if not any(cut_start < point.interval.end_time <= cut_end for cut_start, cut_end in exclude)
    ]
    return monitoring_v3.TimeSeries(metric=series.metric, resource=series.resource, points=kept)


def _one_distribution(parts: list[Distribution]) -> Distribution:
    """The minute's distribution: REDUCE_SUM already merged each revision's series into one
    point per minute, so there is usually nothing left to merge (merging copies ~240 buckets)."""
    return parts[0] if len(parts) == 1 else merge_distributions(parts)


def _check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("window bounds must be timezone-aware")
    seconds = (end - start).total_seconds()
    if seconds < MIN_WINDOW_S or seconds != int(seconds):
        raise ValueError(f"window must be a whole number of seconds, at least {MIN_WINDOW_S}: got {seconds}")


def _quote(value: str) -> str:
    """A filter string literal."""
    return '"' + re.sub(r'(["\\])', r"\\\1", value) + '"'


def _int_total(series: monitoring_v3.TimeSeries) -> int:
    return sum(point.value.int64_value for point in series.points)


def _max_double(series: Sequence[monitoring_v3.TimeSeries]) -> float | None:
    return max((point.value.double_value for ts in series for point in ts.points), default=None)
