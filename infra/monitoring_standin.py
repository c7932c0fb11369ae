"""Local stand-in for Cloud Monitoring API v3 MetricService: ListTimeSeries and CreateTimeSeries.

google-cloud-monitoring has no REST transport, so this is a gRPC server (grpcio generic handlers)
that (de)serialises the client's own protobuf messages. Reach it with
`shared.clients.monitoring.MonitoringReader(project, endpoint="127.0.0.1:PORT")` (or
`shared.clients.custom_metrics.MetricWriter`).

Answered the way the API reference describes (TimeInterval, Aggregation, Monitoring filters):
- filter: `field = "string"` or `field = one_of("a", "b")` clauses joined by AND; fields
  metric.type (exactly one), resource.type, metric.labels.KEY, resource.labels.KEY
  (`label.KEY` too). Anything else, including valid Cloud Monitoring syntax this stand-in
  lacks, is INVALID_ARGUMENT.
- interval (start, end]: a point is read when its end time is after start and not after end.
- aggregation: alignment_period >= 60 s, periods ending at the interval end time (⚠ assumed);
  aligners ALIGN_NONE/DELTA/SUM/MEAN/MAX/PERCENTILE_95/PERCENTILE_99 and reducers
  REDUCE_NONE/SUM/MEAN/MAX with group_by_fields, each only on the metric kinds and value types
  the reference allows (else INVALID_ARGUMENT). Percentiles interpolate within a bucket.
- only series with points in the interval; points newest first; view HEADERS drops the points.
- paging: at most page_size series per page (PAGE_SIZE when unset, ⚠ the API's unit and
  default are not documented this precisely), next_page_token while more remain.
- CreateTimeSeries: 1..200 series, one point each, user-defined metric types only
  (custom.googleapis.com/, external.googleapis.com/), GAUGE, a metric's value type fixed by
  its first write, each point at least 1 ms after the series' last one, end time within
  25 h past / 5 min future. Valid series are written even when others fail; the call then
  fails with INVALID_ARGUMENT naming each failed timeSeries[i].
Not modelled (UNIMPLEMENTED where a request needs it): other aligners and
reducers, CUMULATIVE metrics, BOOL/STRING values, DELTA interval contiguity, write rate limits.

Test control, Python only: `add_points` loads built-in metrics (Cloud Run's DELTA series,
which nobody can write through the API), `series`, `reset`, `fail_next`, `calls`.

Run it: python -m infra.monitoring_standin --port 9002
"""

from __future__ import annotations

import argparse
import bisect
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import grpc
from google.api import metric_pb2, monitored_resource_pb2
from google.cloud import monitoring_v3
from google.protobuf import empty_pb2, timestamp_pb2

from shared.core.distributions import Distribution, bucket_bounds, merge_distributions, percentile

_SERVICE = "google.monitoring.v3.MetricService"
PAGE_SIZE = 1000  # series per page when the request sets none
_ListRequest = monitoring_v3.ListTimeSeriesRequest.pb()
_ListResponse = monitoring_v3.ListTimeSeriesResponse.pb()
_CreateRequest = monitoring_v3.CreateTimeSeriesRequest.pb()
_TimeSeries = monitoring_v3.TimeSeries.pb()
_TimeInterval = monitoring_v3.TimeInterval.pb()
_TypedValue = monitoring_v3.TypedValue.pb()
_HEADERS = monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS

Kind = metric_pb2.MetricDescriptor.MetricKind
ValueType = metric_pb2.MetricDescriptor.ValueType
Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
Value = int | float | Distribution

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SERIES_PER_CREATE = 200
_USER_METRIC_PREFIXES = ("custom.googleapis.com/", "external.googleapis.com/")
_WRITE_MAX_AGE_NS = 25 * 3600 * _NS_PER_S
_WRITE_MAX_AHEAD_NS = 5 * 60 * _NS_PER_S

_STRING = r'"(?:[^"\\]|\\.)*"'
_ONE_OF = rf"one_of\(\s*(?P<values>{_STRING}(?:\s*,\s*{_STRING})*)\s*\)"
_CLAUSE = re.compile(rf"\s*(?P<field>[\w.]+)\s*=\s*(?:(?P<value>{_STRING})|{_ONE_OF})\s*")
_AND = re.compile(r"AND\b")
_LABEL_FIELD = re.compile(r"(?P<source>metric|resource)\.labels?\.(?P<key>\w+)")


class _RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> _RpcError:
    return _RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _unimplemented(message: str) -> _RpcError:
    return _RpcError(grpc.StatusCode.UNIMPLEMENTED, f"not implemented by the local stand-in: {message}")


class _Sample(NamedTuple):
    start_ns: int
    end_ns: int
    value: Value


@dataclass
class _Series:
    project: str
    metric_type: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    kind: int
    value_type: int
    samples: list[_Sample] = field(default_factory=list)  # oldest first

    def key(self) -> tuple[Any, ...]:
        return (
            self.project,
            self.metric_type,
            tuple(sorted(self.metric_labels.items())),
            self.resource_type,
            tuple(sorted(self.resource_labels.items())),
        )

    def labels(self, source: str) -> dict[str, str]:
        return self.metric_labels if source == "metric" else self.resource_labels


# --- values ------------------------------------------------------------------------------


def _value_type(value: Value) -> int:
    if isinstance(value, Distribution):
        return ValueType.DISTRIBUTION
    return ValueType.INT64 if isinstance(value, int) else ValueType.DOUBLE


def _from_typed(typed: Any) -> Value:
    which = typed.WhichOneof("value")
    if which == "int64_value":
        return typed.int64_value
    if which == "double_value":
        return typed.double_value
    if which == "distribution_value":
        copy = Distribution()
        copy.CopyFrom(typed.distribution_value)
        return copy
    if which is None:
        raise ValueError("the point has no value")
    raise _unimplemented(f"{which} points")


def _to_typed(value: Value) -> Any:
    if isinstance(value, Distribution):
        return _TypedValue(distribution_value=value)
    if isinstance(value, int):
        return _TypedValue(int64_value=value)
    return _TypedValue(double_value=value)


def _sum(values: list[Value]) -> Value:
    if isinstance(values[0], Distribution):
        return merge_distributions(values)
    return sum(values)


def _mean(values: list[Value]) -> float | None:
    if isinstance(values[0], Distribution):
        merged = merge_distributions(values)
        return merged.mean if merged.count else None
    return sum(values) / len(values)


def _percentile(q: float) -> Callable[[list[Value]], float | None]:
    return lambda values: percentile(merge_distributions(values), q)


def distribution(samples: Sequence[float], options: Distribution.BucketOptions) -> Distribution:
    """A Distribution of raw samples in the given bucket layout, for tests and demos."""
    bounds = bucket_bounds(options)
    counts = [0] * (len(bounds) + 1)
    for sample in samples:
        counts[bisect.bisect_right(bounds, sample)] += 1  # bucket i is [b(i-1), b(i))
    mean = sum(samples) / len(samples) if samples else 0.0
    return Distribution(
        count=len(samples),
        mean=mean,
        sum_of_squared_deviation=sum((s - mean) ** 2 for s in samples),
        bucket_options=options,
        bucket_counts=counts,
    )


# --- aggregation -------------------------------------------------------------------------

_GAUGE_OR_DELTA = frozenset({Kind.GAUGE, Kind.DELTA})
_NUMERIC = frozenset({ValueType.INT64, ValueType.DOUBLE})
_NUMERIC_OR_DISTRIBUTION = _NUMERIC | {ValueType.DISTRIBUTION}
_DISTRIBUTION = frozenset({ValueType.DISTRIBUTION})


class _Op(NamedTuple):
    kinds: frozenset[int]
    value_types: frozenset[int]
    combine: Callable[[list[Value]], Value | None]
    out_kind: int | None = None  # None: the input's
    out_type: int | None = None


# Valid kinds and value types as the Aligner/Reducer reference lists them (ALIGN_DELTA also
# takes CUMULATIVE, which the stand-in does not store).
_ALIGNERS = {
    Aligner.ALIGN_DELTA: _Op(frozenset({Kind.DELTA}), _NUMERIC_OR_DISTRIBUTION, _sum, Kind.DELTA),
    Aligner.ALIGN_SUM: _Op(_GAUGE_OR_DELTA, _NUMERIC_OR_DISTRIBUTION, _sum),
    Aligner.ALIGN_MEAN: _Op(_GAUGE_OR_DELTA, _NUMERIC, _mean, None, ValueType.DOUBLE),
    Aligner.ALIGN_MAX: _Op(_GAUGE_OR_DELTA, _NUMERIC, max),
    Aligner.ALIGN_PERCENTILE_95: _Op(
        _GAUGE_OR_DELTA, _DISTRIBUTION, _percentile(95), Kind.GAUGE, ValueType.DOUBLE
    ),
    Aligner.ALIGN_PERCENTILE_99: _Op(
        _GAUGE_OR_DELTA, _DISTRIBUTION, _percentile(99), Kind.GAUGE, ValueType.DOUBLE
    ),
}
_REDUCERS = {
    Reducer.REDUCE_SUM: _Op(_GAUGE_OR_DELTA, _NUMERIC_OR_DISTRIBUTION, _sum),
    Reducer.REDUCE_MEAN: _Op(_GAUGE_OR_DELTA, _NUMERIC_OR_DISTRIBUTION, _mean, None, ValueType.DOUBLE),
    Reducer.REDUCE_MAX: _Op(_GAUGE_OR_DELTA, _NUMERIC, max),
}


def _operation(table: Mapping[int, _Op], enum: type, number: int) -> tuple[_Op, str]:
    try:
        name = enum(number).name
    except ValueError:
        raise _invalid(f"unknown {enum.__name__} {number}") from None
    if number not in table:
        raise _unimplemented(name)
    return table[number], name


def _check_applicable(op: _Op, name: str, series: _Series) -> None:
    if series.kind not in op.kinds or series.value_type not in op.value_types:
        raise _invalid(
            f"{name} cannot be applied to metrics with kind {Kind.Name(series.kind)}"
            f" and value type {ValueType.Name(series.value_type)}"
        )


def _combined(op: _Op, groups: Mapping[int, list[_Sample]], kind: int, period_ns: int) -> list[_Sample]:
    samples = []
    for end_ns in sorted(groups):
        value = op.combine([sample.value for sample in groups[end_ns]])
        if value is not None:
            samples.append(_Sample(end_ns - period_ns if kind == Kind.DELTA else end_ns, end_ns, value))
    return samples


def _align(series: _Series, aligner: int, period_ns: int, end_ns: int) -> _Series:
    op, name = _operation(_ALIGNERS, Aligner, aligner)
    _check_applicable(op, name, series)
    periods: dict[int, list[_Sample]] = defaultdict(list)
    for sample in series.samples:
        # The period (e - k*P - P, e - k*P] that holds the point's end time.
        periods[end_ns - (end_ns - sample.end_ns) // period_ns * period_ns].append(sample)
    kind = op.out_kind or series.kind
    return replace(
        series,
        kind=kind,
        value_type=op.out_type or series.value_type,
        samples=_combined(op, periods, kind, period_ns),
    )


def _group_field(text: str) -> tuple[str, str] | None:
    if text == "resource.type":
        return None  # always grouped by: series of different resource types never combine
    match = _LABEL_FIELD.fullmatch(text)
    if match is None:
        raise _invalid(f"unsupported group_by_fields entry {text!r}")
    return match["source"], match["key"]


def _reduce(series: list[_Series], reducer: int, group_by: Iterable[str], period_ns: int) -> list[_Series]:
    op, name = _operation(_REDUCERS, Reducer, reducer)
    fields = [f for f in map(_group_field, group_by) if f is not None]
    groups: dict[tuple[Any, ...], list[_Series]] = defaultdict(list)
    for one in series:
        _check_applicable(op, name, one)
        groups[(one.resource_type, *(one.labels(source).get(key) for source, key in fields))].append(one)
    reduced = []
    for members in groups.values():
        first = members[0]
        by_time: dict[int, list[_Sample]] = defaultdict(list)
        for member in members:
            for sample in member.samples:
                by_time[sample.end_ns].append(sample)
        kept = {source: {key for s, key in fields if s == source} for source in ("metric", "resource")}
        reduced.append(
            replace(
                first,
                metric_labels={k: v for k, v in first.metric_labels.items() if k in kept["metric"]},
                resource_labels={k: v for k, v in first.resource_labels.items() if k in kept["resource"]},
                value_type=op.out_type or first.value_type,
                samples=_combined(op, by_time, first.kind, period_ns),
            )
        )
    return reduced


def _aggregate(series: list[_Series], aggregation: Any, end_ns: int) -> list[_Series]:
    aligner, reducer = aggregation.per_series_aligner, aggregation.cross_series_reducer
    if aligner == Aligner.ALIGN_NONE:
        if reducer != Reducer.REDUCE_NONE:
            raise _invalid("cross_series_reducer needs a per_series_aligner other than ALIGN_NONE")
        return series
    period_ns = aggregation.alignment_period.ToNanoseconds()
    if period_ns < 60 * _NS_PER_S:
        raise _invalid("aggregation.alignment_period is required and must be at least 60 seconds")
    aligned = [_align(one, aligner, period_ns, end_ns) for one in series]
    if reducer == Reducer.REDUCE_NONE:
        return aligned
    return _reduce(aligned, reducer, aggregation.group_by_fields, period_ns)


# --- requests ----------------------------------------------------------------------------


def _project(name: str) -> str:
    match = re.fullmatch(r"projects/([^/]+)", name)
    if match is None:
        raise _invalid(f"name must be projects/PROJECT, got {name!r}")
    return match[1]


def _parse_filter(text: str) -> list[tuple[str, frozenset[str]]]:
    """[(field, accepted values)] from `field = "value" AND field = one_of("a", "b") ...`;
    label fields become metric.labels.KEY."""
    clauses: list[tuple[str, frozenset[str]]] = []
    position = 0
    while True:
        clause = _CLAUSE.match(text, position)
        if clause is None:
            raise _invalid(
                f"unsupported filter near {text[position:][:40]!r}:"
                ' only field = "string" or field = one_of("a", ...) joined by AND'
            )
        name = clause["field"]
        label = _LABEL_FIELD.fullmatch(name)
        if label:
            name = f"{label['source']}.labels.{label['key']}"
        elif name not in ("metric.type", "resource.type"):
            raise _invalid(f"unsupported filter field {name!r}")
        literals = [clause["value"]] if clause["value"] else re.findall(_STRING, clause["values"])
        clauses.append((name, frozenset(re.sub(r"\\(.)", r"\1", literal[1:-1]) for literal in literals)))
        position = clause.end()
        if position == len(text):
            break
        conjunction = _AND.match(text, position)
        if conjunction is None:
            raise _invalid(f"unsupported filter near {text[position:][:40]!r}: only AND joins clauses")
        position = conjunction.end()
    if sum(name == "metric.type" for name, _ in clauses) != 1:
        raise _invalid("the filter must specify exactly one metric.type")
    return clauses


def _matches(series: _Series, clauses: list[tuple[str, frozenset[str]]]) -> bool:
    fields = {"metric.type": series.metric_type, "resource.type": series.resource_type}
    fields.update({f"metric.labels.{k}": v for k, v in series.metric_labels.items()})
    fields.update({f"resource.labels.{k}": v for k, v in series.resource_labels.items()})
    return all(fields.get(name) in values for name, values in clauses)


def _nanos(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1) * 1000


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _to_proto(series: _Series, *, with_points: bool) -> Any:
    proto = _TimeSeries(
        metric=metric_pb2.Metric(type=series.metric_type, labels=series.metric_labels),
        resource=monitored_resource_pb2.MonitoredResource(
            type=series.resource_type, labels=series.resource_labels
        ),
        metric_kind=series.kind,
        value_type=series.value_type,
    )
    if with_points:
        for sample in reversed(series.samples):  # newest first, as the API returns them
            proto.points.add(
                interval=_TimeInterval(
                    start_time=_timestamp(sample.start_ns), end_time=_timestamp(sample.end_ns)
                ),
                value=_to_typed(sample.value),
            )
    return proto


def _written(project: str, proto: Any, now_ns: int) -> tuple[_Series, _Sample]:
    """A CreateTimeSeries entry as (series, point); ValueError says why the API refuses it."""
    if not proto.metric.type.startswith(_USER_METRIC_PREFIXES):
        raise ValueError(
            f"{proto.metric.type!r} is not a user-defined metric type; only those can be written"
        )
    if len(proto.points) != 1:
        raise ValueError("exactly one point must be written per TimeSeries")
    point = proto.points[0]
    value = _from_typed(point.value)
    value_type = _value_type(value)
    if proto.value_type not in (ValueType.VALUE_TYPE_UNSPECIFIED, value_type):
        raise ValueError(f"value_type {ValueType.Name(proto.value_type)} does not match the point's value")
    if proto.metric_kind == Kind.CUMULATIVE:
        raise _unimplemented("CUMULATIVE metrics")
    if proto.metric_kind not in (Kind.METRIC_KIND_UNSPECIFIED, Kind.GAUGE):
        raise ValueError("user-defined metrics must be GAUGE or CUMULATIVE")
    if not point.interval.HasField("end_time"):
        raise ValueError("the point's interval needs an end_time")
    end_ns = point.interval.end_time.ToNanoseconds()
    if point.interval.HasField("start_time") and point.interval.start_time.ToNanoseconds() != end_ns:
        raise ValueError("a GAUGE point's start time must equal its end time")
    if not now_ns - _WRITE_MAX_AGE_NS <= end_ns <= now_ns + _WRITE_MAX_AHEAD_NS:
        raise ValueError("the point's end time must be within the last 25 hours and at most 5 minutes ahead")
    series = _Series(
        project=project,
        metric_type=proto.metric.type,
        metric_labels=dict(proto.metric.labels),
        resource_type=proto.resource.type,
        resource_labels=dict(proto.resource.labels),
        kind=Kind.GAUGE,
        value_type=value_type,
    )
    return series, _Sample(end_ns, end_ns, value)


# --- the server --------------------------------------------------------------------------


class MonitoringStandin:
    """A running stand-in: `target` is what MonitoringReader/MetricWriter take as `endpoint`."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[Any, ...], _Series] = {}
        # (project, metric type) -> (kind, value type), fixed by the first write like a metric descriptor
        self._descriptors: dict[tuple[str, str], tuple[int, int]] = {}
        self._faults: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self.calls: Counter[str] = Counter()  # answered or failed, by method (pages count one each)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                self._serve("ListTimeSeries", self._list_time_series),
                request_deserializer=_ListRequest.FromString,
                response_serializer=_ListResponse.SerializeToString,
            ),
            "CreateTimeSeries": grpc.unary_unary_rpc_method_handler(
                self._serve("CreateTimeSeries", self._create_time_series),
                request_deserializer=_CreateRequest.FromString,
                response_serializer=empty_pb2.Empty.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(_SERVICE, handlers)])
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.target = f"127.0.0.1:{self.port}"

    def start(self) -> MonitoringStandin:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def reset(self) -> None:
        """Forget all series, metric descriptors and pending faults."""
        with self._lock:
            self._series.clear()
            self._descriptors.clear()
            self._faults.clear()
            self.calls.clear()

    def fail_next(
        self, method: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, times: int = 1
    ) -> None:
        """The next `times` calls of `method` ("ListTimeSeries" or "CreateTimeSeries") fail with `code`."""
        with self._lock:
            self._faults[method].extend([code] * times)

    def add_points(
        self,
        project: str,
        metric_type: str,
        points: Iterable[tuple[datetime, Value]],
        *,
        resource_type: str,
        resource_labels: Mapping[str, str],
        metric_labels: Mapping[str, str] | None = None,
        kind: int = Kind.DELTA,
        sample_period: timedelta = timedelta(seconds=60),
    ) -> None:
        """Load (end time, value) points of any metric, built-in ones included, oldest first.

        A DELTA point covers [end - sample_period, end]; a GAUGE point is an instant. Raises
        ValueError for what the API would refuse: a point not after the last, a second value type.
        """
        header = _Series(
            project=project,
            metric_type=metric_type,
            metric_labels=dict(metric_labels or {}),
            resource_type=resource_type,
            resource_labels=dict(resource_labels),
            kind=kind,
            value_type=ValueType.VALUE_TYPE_UNSPECIFIED,
        )
        period_ns = _nanos(sample_period) if kind == Kind.DELTA else 0
        with self._lock:
            for end, value in points:
                end_ns = _nanos(end - _EPOCH)
                self._append(
                    replace(header, value_type=_value_type(value)), _Sample(end_ns - period_ns, end_ns, value)
                )

    def series(self, project: str | None = None) -> list[monitoring_v3.TimeSeries]:
        """Everything stored (of one project, if given), points newest first."""
        with self._lock:
            stored = [s for s in self._series.values() if project in (None, s.project)]
            return [monitoring_v3.TimeSeries.wrap(_to_proto(s, with_points=True)) for s in stored]

    def _append(self, series: _Series, sample: _Sample) -> None:
        """Store one point under the lock; ValueError when the API rules refuse it."""
        if series.kind == Kind.DELTA and sample.start_ns >= sample.end_ns:
            raise ValueError("a DELTA point's start time must be before its end time")
        metric = (series.project, series.metric_type)
        kind, value_type = self._descriptors.get(metric, (series.kind, series.value_type))
        if (kind, value_type) != (series.kind, series.value_type):
            raise ValueError(
                f"metric {series.metric_type} is {Kind.Name(kind)} {ValueType.Name(value_type)},"
                f" this point is {Kind.Name(series.kind)} {ValueType.Name(series.value_type)}"
                " (the value type of a metric is fixed by its first write)"
            )
        stored = self._series.setdefault(series.key(), replace(series, samples=[]))
        if stored.samples and sample.end_ns < stored.samples[-1].end_ns + _NS_PER_MS:
            raise ValueError(
                "Points must be written in order. One or more of the points specified had an older"
                " start time than the most recent point."
            )
        self._descriptors[metric] = (kind, value_type)
        stored.samples.append(sample)

    def _serve(
        self, method: str, handler: Callable[[Any], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                with self._lock:
                    self.calls[method] += 1
                    fault = self._faults[method].pop(0) if self._faults[method] else None
                if fault is not None:
                    raise _RpcError(fault, f"injected fault: {fault.name}")
                return handler(request)
            except _RpcError as error:
                context.abort(error.code, error.message)

        return serve

    def _list_time_series(self, request: Any) -> Any:
        project = _project(request.name)
        clauses = _parse_filter(request.filter)
        interval = request.interval
        if not (interval.HasField("start_time") and interval.HasField("end_time")):
            raise _invalid("interval needs a start_time and an end_time")
        start_ns, end_ns = interval.start_time.ToNanoseconds(), interval.end_time.ToNanoseconds()
        if start_ns >= end_ns:
            raise _invalid("interval.start_time must be earlier than interval.end_time")
        with self._lock:
            matched = [
                replace(s, samples=[p for p in s.samples if start_ns < p.end_ns <= end_ns])
                for s in self._series.values()
                if s.project == project and _matches(s, clauses)
            ]
        found = [s for s in matched if s.samples]
        try:
            result = sorted(_aggregate(found, request.aggregation, end_ns), key=_Series.key)
        except ValueError as error:  # e.g. distributions in different bucket layouts
            raise _unimplemented(str(error)) from None
        with_points = request.view != _HEADERS
        result = [s for s in result if s.samples]
        try:
            first = int(request.page_token or 0)
        except ValueError:
            raise _invalid(f"page_token {request.page_token!r} was not returned by this server") from None
        page = result[first : first + (request.page_size or PAGE_SIZE)]
        following = first + len(page)
        return _ListResponse(
            time_series=[_to_proto(s, with_points=with_points) for s in page],
            next_page_token=str(following) if following < len(result) else "",
        )

    def _create_time_series(self, request: Any) -> Any:
        project = _project(request.name)
        if not 1 <= len(request.time_series) <= MAX_SERIES_PER_CREATE:
            raise _invalid(f"a request must write 1 to {MAX_SERIES_PER_CREATE} TimeSeries")
        now_ns = time.time_ns()
        errors: list[str] = []
        seen: set[tuple[Any, ...]] = set()
        parsed = []
        for index, proto in enumerate(request.time_series):
            try:
                parsed.append((index, *_written(project, proto, now_ns)))
            except ValueError as error:
                errors.append(f"timeSeries[{index}]: {error}")
        with self._lock:
            for index, series, sample in parsed:
                try:
                    if series.key() in seen:
                        raise ValueError("Only one point can be written per TimeSeries per request.")
                    seen.add(series.key())
                    self._append(series, sample)
                except ValueError as error:
                    errors.append(f"timeSeries[{index}]: {error}")
        if errors:
            raise _invalid("One or more TimeSeries could not be written: " + "; ".join(errors))
        return empty_pb2.Empty()


def start_monitoring_standin(port: int = 0) -> MonitoringStandin:
    """Start the stand-in on 127.0.0.1:`port` (0: any free port) in background threads."""
    return MonitoringStandin(port).start()


def main() -> None:
    parser = argparse.ArgumentParser(description="Local stand-in for Cloud Monitoring API v3 (gRPC)")
    parser.add_argument("--port", type=int, default=9002)
    # Ctrl-C and SIGTERM stop it, even when started from a background job of a non-interactive
    # shell, which starts its children with SIGINT ignored (POSIX).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    standin = start_monitoring_standin(parser.parse_args().port)
    try:  # announced inside the try: a Ctrl-C right after the announcement still stops the server
        print(f"monitoring stand-in listening on {standin.target}", flush=True)
        standin.wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
