"""Cloud Monitoring's condition and incident lifecycle for one time series, as pure functions.

The rehearsal's alert evaluator (`infra/rehearsal/alerts.py`) reads aligned points and asks this
module what Cloud Monitoring would do with them; nothing here does I/O or reads a clock.

What is mirrored (terraform/monitoring.tf, the policy file's `alerting` block):

- One aligned point per `step` (the alignment period, 60 s), stamped with the end of its period.
  The condition is *met* at a point when its value is GREATER than the threshold
  (`comparison = "COMPARISON_GT"`): a value equal to the threshold is not a breach.
- `duration`: "a condition resets its duration window each time a measurement doesn't satisfy
  the condition" (Cloud Monitoring, "Behavior of metric-based alerting policies"), so an incident
  OPENS when `required_points = max(1, duration // step)` consecutive aligned points are met.
  With the policy's 60 s alignment and 60 s duration that is the first breaching point;
  duration 0 is one point too.
- Missing data. `evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"` (the metric
  policies): a period with no point is evaluated as false: it resets the run and closes an open
  incident. The canary_down policy sets nothing, which the API documents as
  EVALUATION_MISSING_DATA_NO_OP: a period with no point is not evaluated at all (the run and an
  open incident stand); only `auto_close` ends such an incident.
- Data arrives late (Cloud Run metrics up to 180 s after their minute). A period is judged as soon
  as a point for it is visible, or once something newer of the same condition has arrived
  (`arrived_through`); a period with nothing yet is judged missing only `data_lag` after it ended.
  A point that turns up for a period already judged is ignored (Cloud Monitoring does not
  re-evaluate the past either).
- While an incident is open it is renotified every `renotify_interval` of evaluation time
  (alert_strategy.notification_channel_strategy.renotify_interval): the same incident, the latest
  observed value.
- It CLOSES at the first period that is not met (recovered, or no data under INACTIVE), or
  `auto_close` after its series' newest point (alert_strategy.auto_close), whichever comes first.
- Each series (one revision of one service, per policy) has its own incident: `advance_all`
  keeps them independent, and closes the incident of a series that stops appearing as above.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Key = TypeVar("Key")


class MissingData(StrEnum):
    """How a period without data is evaluated (AlertPolicy.Condition.EvaluationMissingData)."""

    INACTIVE = "EVALUATION_MISSING_DATA_INACTIVE"  # as false
    NO_OP = "EVALUATION_MISSING_DATA_NO_OP"  # not at all (also what "unspecified" means)


class Change(StrEnum):
    """What a notification says about its incident (the timeline's AlertState)."""

    OPEN = "open"
    RENOTIFY = "renotify"
    CLOSE = "closed"


@dataclass(frozen=True)
class IncidentRules:
    """One alert policy condition's timing and threshold."""

    threshold: float
    step: timedelta  # the alignment period: one aligned point per step
    duration: timedelta
    renotify_interval: timedelta | None
    auto_close: timedelta
    missing_data: MissingData
    data_lag: timedelta = timedelta(0)  # how long after its period a point may still appear

    def __post_init__(self) -> None:
        if self.step <= timedelta(0) or self.step % timedelta(seconds=1):
            raise ValueError(f"step must be a positive whole number of seconds, got {self.step}")
        if self.duration < timedelta(0) or self.data_lag < timedelta(0):
            raise ValueError("duration and data_lag cannot be negative")

    @property
    def required_points(self) -> int:
        """Consecutive met points that make the condition hold for `duration`."""
        return max(1, self.duration // self.step)


@dataclass(frozen=True)
class OpenIncident:
    started_at: datetime  # the end of the period that completed the duration
    notified_at: datetime  # evaluation time of the open or latest renotification
    observed: float | None  # the latest value that met the condition


@dataclass(frozen=True)
class SeriesState:
    """What the evaluator remembers of one time series between evaluations."""

    evaluated_through: datetime | None = None  # the end of the last period judged
    run: int = 0  # consecutive met periods up to evaluated_through
    last_point_at: datetime | None = None  # the end of the newest period that had a point
    incident: OpenIncident | None = None

    def forgettable(self, at: datetime, keep_for: timedelta) -> bool:
        """Nothing open, nothing running, no point for `keep_for`: the state can go."""
        return (
            self.incident is None
            and self.run == 0
            and (self.last_point_at is None or at - self.last_point_at > keep_for)
        )


@dataclass(frozen=True)
class Transition:
    """One notification the incident's lifecycle calls for."""

    change: Change
    started_at: datetime
    ended_at: datetime | None  # set when closed
    observed: float | None
    period_end: datetime | None  # the aligned point that decided it (None: decided by time)
    reason: str  # "threshold crossed", "still open", "recovered", "no data", "auto close"


def floor_to(moment: datetime, step: timedelta) -> datetime:
    """The latest multiple of `step` since the Unix epoch at or before `moment`."""
    return moment - (moment - _EPOCH) % step


def advance(
    state: SeriesState,
    points: Mapping[datetime, float],
    at: datetime,
    rules: IncidentRules,
    *,
    arrived_through: datetime | None = None,
) -> tuple[SeriesState, list[Transition]]:
    """Judge every period of one series not judged yet, as of evaluation time `at`.

    `points`: aligned values by period end (any already judged are ignored, so the caller may pass
    its whole lookback window). `arrived_through`: the newest period the condition's data is known
    to have arrived for (e.g. a ratio's denominator point when its numerator has none): periods up
    to it are judged now, without waiting `data_lag`.
    """
    step = rules.step
    for end in points:
        if floor_to(end, step) != end:
            raise ValueError(f"point {end.isoformat()} is not at the end of a {step} period")
    fresh = sorted(
        end
        for end in points
        if end <= at and (state.evaluated_through is None or end > state.evaluated_through)
    )
    if state.evaluated_through is None:
        if not fresh:
            return state, []  # a series never seen: nothing to judge
        first = fresh[0]
    else:
        first = state.evaluated_through + step
    candidates = [floor_to(at - rules.data_lag, step)]
    if fresh:
        candidates.append(fresh[-1])
    if arrived_through is not None:
        candidates.append(min(floor_to(arrived_through, step), floor_to(at, step)))
    last = max(candidates)

    run, last_point_at, incident = state.run, state.last_point_at, state.incident
    transitions: list[Transition] = []
    period = first
    while period <= last:
        value = points.get(period)
        if value is None and rules.missing_data is MissingData.NO_OP:
            period += step
            continue  # not evaluated: the run and an open incident stand
        if value is not None:
            last_point_at = period
        if value is not None and value > rules.threshold:
            run += 1
            if incident is None and run >= rules.required_points:
                incident = OpenIncident(started_at=period, notified_at=at, observed=value)
                transitions.append(Transition(Change.OPEN, period, None, value, period, "threshold crossed"))
            elif incident is not None:
                incident = replace(incident, observed=value)
        else:
            run = 0
            if incident is not None:
                reason = "recovered" if value is not None else "no data"
                transitions.append(
                    Transition(Change.CLOSE, incident.started_at, period, value, period, reason)
                )
                incident = None
        period += step
    evaluated_through = max(last, state.evaluated_through) if state.evaluated_through else last

    if incident is not None and last_point_at is not None and at - last_point_at >= rules.auto_close:
        transitions.append(Transition(Change.CLOSE, incident.started_at, at, None, None, "auto close"))
        incident, run = None, 0
    if (
        incident is not None
        and rules.renotify_interval is not None
        and at - incident.notified_at >= rules.renotify_interval
    ):
        transitions.append(
            Transition(Change.RENOTIFY, incident.started_at, None, incident.observed, None, "still open")
        )
        incident = replace(incident, notified_at=at)
    return SeriesState(evaluated_through, run, last_point_at, incident), transitions


def advance_all(
    states: Mapping[Key, SeriesState],
    series: Mapping[Key, Mapping[datetime, float]],
    at: datetime,
    rules: IncidentRules,
    *,
    arrived_through: Mapping[Key, datetime] | None = None,
    keep_for: timedelta,
) -> tuple[dict[Key, SeriesState], list[tuple[Key, Transition]]]:
    """`advance` for every series of one condition, each on its own: the series read now and those
    remembered (a series that stopped appearing is judged on its missing periods). States with
    nothing left to remember after `keep_for` are dropped."""
    arrived = arrived_through or {}
    kept: dict[Key, SeriesState] = {}
    changes: list[tuple[Key, Transition]] = []
    for key in _ordered({*states, *series}):
        state, transitions = advance(
            states.get(key, SeriesState()), series.get(key, {}), at, rules, arrived_through=arrived.get(key)
        )
        changes.extend((key, transition) for transition in transitions)
        if state.evaluated_through is not None and not state.forgettable(at, keep_for):
            kept[key] = state
    return kept, changes


def _ordered(keys: Iterable[Key]) -> list[Key]:
    """Keys in a stable order (sorted when they sort), so notifications go out deterministically."""
    listed = list(keys)
    try:
        return sorted(listed)  # type: ignore[type-var]
    except TypeError:
        return listed


def next_older_count_false(
    results: Iterable[tuple[datetime, bool]],
    ends: Iterable[datetime],
    *,
    window: timedelta,
    regions: int,
) -> dict[datetime, float]:
    """The canary_down condition's aligned points: ALIGN_NEXT_OLDER over `window` per checker
    region, then REDUCE_COUNT_FALSE across regions.

    `results`: (check time, passed) of the one local probe, which stands for every checker region
    (they would all reach the same local server). At each period end, each region's value is its
    latest result in (end - window, end]; the point counts the regions whose value is false: all
    of them or none. No result in the window: no point.
    """
    ordered = sorted(results)
    points: dict[datetime, float] = {}
    for end in ends:
        latest = [passed for when, passed in ordered if end - window < when <= end]
        if latest:
            points[end] = 0.0 if latest[-1] else float(regions)
    return points
