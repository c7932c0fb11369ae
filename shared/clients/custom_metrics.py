"""canary-guard's own custom metrics in Cloud Monitoring (load-test and probe results, the
checkpoint's canary share and breach streaks): `MetricWriter` writes them with CreateTimeSeries,
on the client setup of shared/clients/monitoring.py (which reads Cloud Run's built-in metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from google.api import metric_pb2, monitored_resource_pb2
from google.cloud import monitoring_v3

from shared.clients.monitoring import CALL_TIMEOUT_S, MonitoringApi

CUSTOM_METRIC_PREFIX = "custom.googleapis.com/canary_guard/"
MAX_SERIES_PER_WRITE = 200  # CreateTimeSeries limit


@dataclass(frozen=True)
class CustomPoint:
    """One value of a canary-guard custom metric, e.g. name "load_test/success_rate"."""

    name: str  # becomes custom.googleapis.com/canary_guard/<name>
    value: float | int  # int -> INT64, float -> DOUBLE; keep one Python type per name (see write)
    labels: dict[str, str]
    at: datetime


class MetricWriter(MonitoringApi):
    """Writes canary-guard custom metrics as GAUGE points on the `global` resource.

    `global` (label project_id) is one of the monitored resources Cloud Monitoring accepts for
    user-defined metrics; cloud_run_revision is not writable by users.
    """

    def write(self, points: Sequence[CustomPoint]) -> None:
        """Write in time order, in as few CreateTimeSeries calls as the API rules allow.

        The first write of a metric fixes its value type (INT64 or DOUBLE); a later point of the
        other Python type is rejected by the API. Writes are not retried: a write that reached
        the server and is sent again is rejected as out of order, so failures surface instead.
        """
        for batch in _batches(points):
            self._client.create_time_series(
                name=f"projects/{self._project}",
                time_series=[self._time_series(point) for point in batch],
                timeout=CALL_TIMEOUT_S,
            )

    def _time_series(self, point: CustomPoint) -> monitoring_v3.TimeSeries:
        is_int = isinstance(point.value, int)
        value_type = metric_pb2.MetricDescriptor.ValueType
        return monitoring_v3.TimeSeries(
            metric=metric_pb2.Metric(type=CUSTOM_METRIC_PREFIX + point.name, labels=point.labels),
            resource=monitored_resource_pb2.MonitoredResource(
                type="global", labels={"project_id": self._project}
            ),
            metric_kind=metric_pb2.MetricDescriptor.MetricKind.GAUGE,
            value_type=value_type.INT64 if is_int else value_type.DOUBLE,
            points=[
                monitoring_v3.Point(
                    interval=monitoring_v3.TimeInterval(end_time=point.at),
                    value=monitoring_v3.TypedValue(int64_value=point.value)
                    if is_int
                    else monitoring_v3.TypedValue(double_value=point.value),
                )
            ],
        )


def _batches(points: Sequence[CustomPoint]) -> list[list[CustomPoint]]:
    """Oldest first; a batch holds at most 200 series and at most one point of each series."""
    batches: list[list[CustomPoint]] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for point in sorted(points, key=lambda p: p.at):
        series = (point.name, tuple(sorted(point.labels.items())))
        if not batches or len(batches[-1]) == MAX_SERIES_PER_WRITE or series in seen:
            batches.append([])
            seen = set()
        batches[-1].append(point)
        seen.add(series)
    return batches
