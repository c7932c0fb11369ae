"""One batched read of Cloud Monitoring, judged many times. Pure, no I/O.

A checkpoint minute reads every watched service's revisions minute by minute in one go
(`MonitoringReader.platform_minutes`: four ListTimeSeries calls however many rollouts). What a
minute holds is kept whole (`MinuteSample`: request counts and the latency, memory and CPU
distributions), so any window of whole minutes can be judged from it exactly as Cloud Monitoring
would aggregate it: counts add up, distributions merge, percentiles come from the merged buckets.

`RecordedMinutes` serves those samples through the `MetricsSource` seam, so the per-rollout rules
(the evidence ledger, the step verdict) run on them unchanged; the samples travel as JSON in a
checkpoint worker's message. A window outside what was read goes to the fallback source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.core.distributions import Distribution, merge_distributions, percentile
from shared.core.evidence import MinuteMetrics
from shared.core.metrics_source import CanaryMetrics

if TYPE_CHECKING:
    from shared.core.metrics_source import MetricsSource

MINUTE = timedelta(minutes=1)
MAX_BUCKETS = 4096  # Cloud Monitoring's distributions hold far fewer; a bound for hostile input
MAX_SPAN_MINUTES = 60  # the longest aligned block a message may carry (the hourly tier)
ServiceKey = tuple[str, str]  # (location, service)
Revisions = dict[str, dict[datetime, "MinuteSample"]]  # revision -> minute start -> sample


@dataclass(frozen=True)
class MinuteSample:
    """What Cloud Monitoring holds for one revision in one minute (the point ending at minute + 1),
    or in one longer aligned block (`span`, an hour: the batched read of long step windows)."""

    minute: datetime  # start of the minute (of the block)
    requests: int = 0
    errors: int = 0  # 5xx
    latency: Distribution | None = None  # request_latencies, ms
    memory: Distribution | None = None  # container/memory/utilizations, 0..1
    cpu: Distribution | None = None  # container/cpu/utilizations, 0..1
    span: timedelta = MINUTE

    def metrics(self) -> MinuteMetrics:
        return MinuteMetrics(
            minute=self.minute,
            requests=self.requests,
            errors=self.errors,
            latency_p95_ms=percentile(self.latency, 95) if self.latency else None,
            memory=percentile(self.memory, 99) if self.memory else None,
            cpu=percentile(self.cpu, 99) if self.cpu else None,
        )

    def as_json(self, layouts: list[dict[str, Any]]) -> dict[str, Any]:
        """JSON; each distribution's bucket layout goes into `layouts` once and is named by its
        index (a message of 90 minutes would otherwise repeat it hundreds of times)."""
        data: dict[str, Any] = {"minute": f"{self.minute:%Y-%m-%dT%H:%MZ}"}
        if self.span != MINUTE:
            data["span_minutes"] = self.span // MINUTE
        if self.requests:
            data |= {"requests": self.requests, "errors": self.errors}
        for name in ("latency", "memory", "cpu"):
            if (value := getattr(self, name)) is not None:
                data[name] = _distribution_json(value, layouts)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], layouts: Sequence[Mapping[str, Any]]) -> MinuteSample:
        """Raises ValueError / KeyError / TypeError / IndexError on a malformed sample."""
        requests, errors = int(data.get("requests", 0)), int(data.get("errors", 0))
        if not 0 <= errors <= requests:
            raise ValueError(f"errors {errors} must be between 0 and requests {requests}")
        span = int(data.get("span_minutes", 1))
        if not 1 <= span <= MAX_SPAN_MINUTES:
            raise ValueError(f"span_minutes {span} must be between 1 and {MAX_SPAN_MINUTES}")
        return cls(
            span=span * MINUTE,
            minute=datetime.strptime(str(data["minute"]), "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC),
            requests=requests,
            errors=errors,
            **{
                name: _distribution_from_json(_mapping(data[name]), layouts)
                for name in ("latency", "memory", "cpu")
                if data.get(name) is not None
            },
        )


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"a distribution must be an object, not {type(value).__name__}")
    return value


def _distribution_json(value: Distribution, layouts: list[dict[str, Any]]) -> dict[str, Any]:
    """A latency layout has ~240 buckets; a minute fills a band of them."""
    from google.protobuf import json_format

    layout = json_format.MessageToDict(value.bucket_options)
    if layout not in layouts:
        layouts.append(layout)
    filled = [index for index, count in enumerate(value.bucket_counts) if count]
    first, last = (filled[0], filled[-1]) if filled else (0, -1)
    return {
        "count": value.count,
        "mean": value.mean,
        "ssd": value.sum_of_squared_deviation,
        "layout": layouts.index(layout),
        # The counts from the first non-empty bucket to the last: a minute fills a narrow band.
        "first": first,
        "counts": list(value.bucket_counts[first : last + 1]),
        "size": len(value.bucket_counts),
    }


def _distribution_from_json(data: Mapping[str, Any], layouts: Sequence[Mapping[str, Any]]) -> Distribution:
    from google.protobuf import json_format

    size = int(data["size"])
    if not 0 <= size <= MAX_BUCKETS:
        raise ValueError(f"a distribution of {size} buckets: at most {MAX_BUCKETS}")
    first, band = int(data["first"]), [int(count) for count in data["counts"]]
    if first < 0 or first + len(band) > size or any(count < 0 for count in band):
        raise ValueError(f"bucket counts from {first} ({len(band)} of them) do not fit {size} buckets")
    counts = [0] * first + band + [0] * (size - first - len(band))
    if sum(counts) != int(data["count"]):
        raise ValueError("bucket counts do not add up to the distribution's count")
    options = json_format.ParseDict(layouts[int(data["layout"])], Distribution.BucketOptions())
    return Distribution(
        count=int(data["count"]),
        mean=float(data["mean"]),
        sum_of_squared_deviation=float(data["ssd"]),
        bucket_options=options,
        bucket_counts=counts,
    )


def _in_window(sample: MinuteSample, start: datetime, end: datetime) -> bool:
    """The sample's point (ending at minute + span) lies in (start, end]; a longer block only
    when all of it does."""
    ends = sample.minute + sample.span
    return start < ends <= end and (sample.span == MINUTE or start <= sample.minute)


def _excluded(sample: MinuteSample, exclude: Sequence[tuple[datetime, datetime]]) -> bool:
    """The point ends inside an excluded span (first, last]; a longer block when any of it does."""
    ends = sample.minute + sample.span
    if sample.span == MINUTE:
        return any(first < ends <= last for first, last in exclude)
    return any(first < ends and sample.minute < last for first, last in exclude)


def window_metrics(
    samples: Iterable[MinuteSample],
    *,
    start: datetime,
    end: datetime,
    exclude: Sequence[tuple[datetime, datetime]] = (),
) -> CanaryMetrics:
    """One revision over (start, end], as `MonitoringReader.canary_metrics` reads it: request
    counts and latency leave out the `exclude` spans (canary-guard's own load tests), memory
    and CPU keep every minute (how the canary holds up under load is its own health)."""
    inside = [sample for sample in samples if _in_window(sample, start, end)]
    served = [sample for sample in inside if not _excluded(sample, exclude)]
    requests = sum(sample.requests for sample in served)
    errors = sum(sample.errors for sample in served)

    def merged(name: str, samples: list[MinuteSample]) -> Distribution:
        return merge_distributions([d for sample in samples if (d := getattr(sample, name)) is not None])

    return CanaryMetrics(
        window_start=start,
        window_end=end,
        request_count=requests,
        error_count=errors,
        error_rate=errors / requests if requests else None,
        latency_p95_ms=percentile(merged("latency", served), 95),
        memory_utilization=percentile(merged("memory", inside), 99),
        cpu_utilization=percentile(merged("cpu", inside), 99),
    )


def revisions_json(
    revisions: Mapping[str, Mapping[datetime, MinuteSample]],
    *,
    keep_from: datetime | None = None,
    whole: Sequence[str] = (),
) -> dict[str, Any]:
    """{"layouts": [...], "revisions": {revision: [sample, ...]}}: what a worker's message carries.
    With `keep_from`, minutes before it are kept only for the `whole` revisions (the canary,
    whose step window reaches back; the others are needed only for the recent minutes)."""
    layouts: list[dict[str, Any]] = []
    by_revision = {
        revision: [
            minutes[minute].as_json(layouts)
            for minute in sorted(minutes)
            if keep_from is None or revision in whole or minute + MINUTE > keep_from
        ]
        for revision, minutes in revisions.items()
    }
    return {"layouts": layouts, "revisions": by_revision}


def revisions_from_json(data: Any) -> Revisions:
    """Raises ValueError / KeyError / TypeError / IndexError on anything but what
    `revisions_json` writes."""
    if not isinstance(data, dict) or not isinstance(data.get("revisions"), dict):
        raise TypeError('minutes must be {"layouts": [...], "revisions": {name: [minute, ...]}}')
    layouts = data.get("layouts") or []
    if not isinstance(layouts, list) or not all(isinstance(layout, dict) for layout in layouts):
        raise TypeError("layouts must be a list of bucket layouts")
    revisions: Revisions = {}
    for revision, samples in data["revisions"].items():
        if not isinstance(samples, list):
            raise TypeError(f"revision {revision!r}: minutes must be a list")
        if not all(isinstance(sample, dict) for sample in samples):
            raise TypeError(f"revision {revision!r}: every minute must be an object")
        parsed = [MinuteSample.from_json(sample, layouts) for sample in samples]
        revisions[str(revision)] = {sample.minute: sample for sample in parsed}
    return revisions


class RecordedMinutes:
    """A `MetricsSource` over one batched read: the services in `revisions` (read, with or
    without data) over (start, end]. Anything else is asked of `fallback` (the live reader), so
    a rollout whose step window began before the read still gets its whole window judged."""

    def __init__(
        self,
        revisions: Mapping[ServiceKey, Revisions],
        *,
        start: datetime,
        end: datetime,
        fallback: MetricsSource | None = None,
        trimmed: Mapping[ServiceKey, tuple[datetime, frozenset[str]]] | None = None,
        hours: RecordedMinutes | None = None,
    ) -> None:
        """trimmed: (location, service) -> (keep_from, whole): that service's minutes before
        keep_from are held only for the `whole` revisions (see `revisions_json`).
        hours: the same services read in hour blocks ending at the step windows' end, for the
        windows longer than the minute-by-minute read (a day's soak at 10 %, 25 %, 50 %)."""
        self.revisions = dict(revisions)
        self.start, self.end = start, end
        self.fallback = fallback
        self.trimmed = dict(trimmed or {})
        self.hours = hours
        self.fallback_reads = 0  # windows this source could not answer itself

    def covers(
        self, location: str, service: str, start: datetime, end: datetime, revision: str | None = None
    ) -> bool:
        """Whether (start, end] of the service (of `revision` only, or of all its revisions) was read."""
        key = (location, service)
        if key not in self.revisions or not self.start <= start or not end <= self.end:
            return False
        keep_from, whole = self.trimmed.get(key, (self.start, frozenset()))
        return start >= keep_from or (revision is not None and revision in whole)

    def _source(self, location: str, service: str, start: datetime, end: datetime) -> MetricsSource:
        if self.fallback is None:
            raise LookupError(
                f"{service} ({location}) over {start:%H:%M}-{end:%H:%M}Z was not read"
                f" (read: {self.start:%H:%M}-{self.end:%H:%M}Z) and there is no reader to ask"
            )
        self.fallback_reads += 1
        return self.fallback

    def minute_metrics(
        self, *, location: str, service: str, start: datetime, end: datetime
    ) -> dict[str, dict[datetime, MinuteMetrics]]:
        if not self.covers(location, service, start, end):
            source = self._source(location, service, start, end)
            return source.minute_metrics(location=location, service=service, start=start, end=end)
        return {
            revision: {
                minute: sample.metrics()
                for minute, sample in minutes.items()
                if _in_window(sample, start, end)
            }
            for revision, minutes in self.revisions[(location, service)].items()
        }

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
        hours = self.hours
        if not self.covers(location, service, start, end, revision):
            if (
                hours is not None
                and end == hours.end
                and hours.covers(location, service, start, end, revision)
            ):
                # The window's whole hours, newest first: the part of its oldest hour that
                # does not fill an hour block is left out (the window starts under an hour later).
                samples = hours.revisions[(location, service)].get(revision, {}).values()
                return window_metrics(samples, start=start, end=end, exclude=exclude)
            source = self._source(location, service, start, end)
            return source.canary_metrics(
                location=location, service=service, revision=revision, start=start, end=end, exclude=exclude
            )
        samples = self.revisions[(location, service)].get(revision, {}).values()
        return window_metrics(samples, start=start, end=end, exclude=exclude)
