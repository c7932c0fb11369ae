"""One alert condition read from Cloud Monitoring as the policy states it: filter, aligner,
cross-series reducer grouped by service, location and revision, and the ratio's denominator;
per revision series, the aligned values and the newest period any data has arrived for.

The stand-in lacks ALIGN_RATE and REDUCE_PERCENTILE_*: the exact aggregation is asked first and,
on UNIMPLEMENTED, the same value is computed from what it has (infra/rehearsal/alerts.py says how).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from google.api_core import exceptions as api_exceptions
from google.cloud import monitoring_v3

from infra.rehearsal.alert_policies import AggregationSpec, ConditionSpec
from infra.rehearsal.alert_rules import (
    floor_to,
)
from shared.clients.monitoring import CALL_TIMEOUT_S, READ_RETRY
from shared.core.distributions import percentile

if TYPE_CHECKING:  # the publisher is google-cloud-pubsub's, built by the caller
    pass

log = logging.getLogger(__name__)


class RevisionSeries(NamedTuple):
    """One time series of a metric policy: what its group_by_fields keep."""

    service: str
    location: str
    revision: str


@dataclass(frozen=True)
class Substitute:
    """A stand-in-supported aggregation giving the same aligned value as the one asked for."""

    aligner: str
    reducer: str
    divide_by: float = 1.0  # ALIGN_RATE from ALIGN_DELTA: per second
    percentile: float | None = None  # REDUCE_PERCENTILE_q from REDUCE_SUM of distributions


def standin_substitute(aggregation: AggregationSpec) -> Substitute | None:
    """What to ask the stand-in instead of an aggregation it does not implement; None: no equivalent."""
    aligner, reducer = aggregation.per_series_aligner, aggregation.cross_series_reducer
    divide_by, quantile = 1.0, None
    if aligner == "ALIGN_RATE":
        aligner, divide_by = "ALIGN_DELTA", float(aggregation.alignment_period_s)
    if reducer.startswith("REDUCE_PERCENTILE_"):
        reducer, quantile = "REDUCE_SUM", float(reducer.removeprefix("REDUCE_PERCENTILE_"))
    if (aligner, reducer) == (aggregation.per_series_aligner, aggregation.cross_series_reducer):
        return None
    return Substitute(aligner, reducer, divide_by, quantile)


def _point_value(value: Any, substitute: Substitute | None) -> float | None:
    """An aligned point's value as a float (None: no value, e.g. an empty distribution)."""
    which = value.WhichOneof("value")
    if which == "distribution_value":
        if substitute is None or substitute.percentile is None:
            raise ValueError("a distribution where the condition needs a number")
        return percentile(value.distribution_value, substitute.percentile)
    number = float(value.double_value if which == "double_value" else value.int64_value)
    return number / substitute.divide_by if substitute else number


class ConditionReader:
    """Reads conditions through a MetricServiceClient over the evaluator's lookback."""

    def __init__(
        self, client: monitoring_v3.MetricServiceClient, project: str, *, step: timedelta, lookback: timedelta
    ) -> None:
        self._client = client
        self._project = project
        self._step = step
        self._lookback = lookback
        # (aligner, reducer) the stand-in refused -> what is asked instead
        self.substitutes: dict[tuple[str, str], Substitute] = {}

    def read(
        self, condition: ConditionSpec, at: datetime
    ) -> tuple[dict[RevisionSeries, dict[datetime, float]], dict[RevisionSeries, datetime]]:
        """The condition's aligned values per revision series, and per series the newest period
        any of its data (numerator or denominator) has arrived for."""
        end = floor_to(at, self._step)
        start = end - self._lookback
        numerator = self._aligned(condition.filter, condition.aggregation, start, end)
        arrived = {key: max(points) for key, points in numerator.items() if points}
        if condition.denominator_filter is None or condition.denominator_aggregation is None:
            return numerator, arrived
        denominator = self._aligned(
            condition.denominator_filter, condition.denominator_aggregation, start, end
        )
        ratios: dict[RevisionSeries, dict[datetime, float]] = {}
        for key, totals in denominator.items():
            if totals:
                arrived[key] = max(arrived.get(key, max(totals)), max(totals))
            parts = numerator.get(key, {})
            # No numerator point (no 5xx that minute): no ratio, i.e. no data (see the docstring).
            values = {when: parts[when] / total for when, total in totals.items() if total and when in parts}
            if values:
                ratios[key] = values
        return ratios, arrived

    def _aligned(
        self, filter_: str, aggregation: AggregationSpec, start: datetime, end: datetime
    ) -> dict[RevisionSeries, dict[datetime, float]]:
        wanted = (aggregation.per_series_aligner, aggregation.cross_series_reducer)
        substitute = self.substitutes.get(wanted)
        try:
            found = self._list(filter_, aggregation, substitute, start, end)
        except api_exceptions.MethodNotImplemented:
            substitute = None if substitute else standin_substitute(aggregation)
            if substitute is None:
                raise
            log.info("the Monitoring stand-in lacks %s + %s: reading %s", *wanted, substitute)
            self.substitutes[wanted] = substitute
            found = self._list(filter_, aggregation, substitute, start, end)
        series: dict[RevisionSeries, dict[datetime, float]] = {}
        for one in found:
            raw = monitoring_v3.TimeSeries.pb(one)
            labels = raw.resource.labels
            key = RevisionSeries(labels["service_name"], labels["location"], labels["revision_name"])
            points = series.setdefault(key, {})
            for point in raw.points:
                value = _point_value(point.value, substitute)
                if value is not None:
                    points[datetime.fromtimestamp(point.interval.end_time.seconds, UTC)] = value
        return series

    def _list(
        self,
        filter_: str,
        aggregation: AggregationSpec,
        substitute: Substitute | None,
        start: datetime,
        end: datetime,
    ) -> list[monitoring_v3.TimeSeries]:
        aligner = substitute.aligner if substitute else aggregation.per_series_aligner
        reducer = substitute.reducer if substitute else aggregation.cross_series_reducer
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{self._project}",
            filter=filter_,
            interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
            aggregation=monitoring_v3.Aggregation(
                alignment_period=timedelta(seconds=aggregation.alignment_period_s),
                per_series_aligner=monitoring_v3.Aggregation.Aligner[aligner],
                cross_series_reducer=monitoring_v3.Aggregation.Reducer[reducer],
                group_by_fields=list(aggregation.group_by_fields),
            ),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        return list(self._client.list_time_series(request=request, retry=READ_RETRY, timeout=CALL_TIMEOUT_S))
