"""Cloud Run-shaped metrics for the Monitoring stand-in: one minute of a revision's traffic as
Cloud Monitoring would record it (request_count by response class, request_latencies,
memory and CPU utilisation distributions). Used by the checkpoint tests and the demo."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.api import distribution_pb2

from infra.monitoring_standin import MonitoringStandin, distribution
from shared.monitoring import (
    CPU_UTILIZATIONS,
    MEMORY_UTILIZATIONS,
    REQUEST_COUNT,
    REQUEST_LATENCIES,
    RUN_RESOURCE,
)

_Buckets = distribution_pb2.Distribution.BucketOptions
# Roughly Cloud Run's layout: exponential buckets, 5 % apart, from 1 ms to about 2 minutes.
LATENCY_BUCKETS = _Buckets(
    exponential_buckets=_Buckets.Exponential(num_finite_buckets=240, growth_factor=1.05, scale=1)
)
UTILIZATION_BUCKETS = _Buckets(linear_buckets=_Buckets.Linear(num_finite_buckets=100, width=0.01, offset=0))


@dataclass(frozen=True)
class Minute:
    """One minute of a revision's traffic."""

    requests: int
    errors: int = 0  # of which 5xx
    latency_ms: float = 50.0
    memory: float = 0.4
    cpu: float = 0.3


HEALTHY = Minute(requests=200, errors=0, latency_ms=80, memory=0.45, cpu=0.35)


def feed(
    standin: MonitoringStandin,
    *,
    project: str,
    location: str,
    service: str,
    revision: str,
    minutes: Iterable[datetime],
    traffic: Minute,
) -> None:
    """Record `traffic` for each minute (the end of each one-minute sample), oldest first."""
    ends = sorted(minutes)
    resource = {
        "project_id": project,
        "location": location,
        "service_name": service,
        "revision_name": revision,
    }

    def add(metric: str, value: object, **labels: str) -> None:
        standin.add_points(
            project,
            metric,
            [(end, value) for end in ends],
            resource_type=RUN_RESOURCE,
            resource_labels=resource,
            metric_labels=labels,
        )

    ok = traffic.requests - traffic.errors
    if ok:
        add(REQUEST_COUNT, ok, response_code="200", response_code_class="2xx")
    if traffic.errors:
        add(REQUEST_COUNT, traffic.errors, response_code="500", response_code_class="5xx")
    if traffic.requests:
        add(REQUEST_LATENCIES, distribution([traffic.latency_ms] * traffic.requests, LATENCY_BUCKETS))
    add(MEMORY_UTILIZATIONS, distribution([traffic.memory] * 2, UTILIZATION_BUCKETS))
    add(CPU_UTILIZATIONS, distribution([traffic.cpu] * 2, UTILIZATION_BUCKETS))


def rewind_step(project: str, rollout_id: str, by: timedelta) -> datetime:
    """Local time compression: move a rollout's step start `by` into the past, as if that much
    of its soak had been waited out, so a checkpoint can judge the step on the minutes fed for
    it. Returns the new step start."""
    from google.cloud import firestore

    from shared.store import ROLLOUTS

    ref = firestore.Client(project=project).collection(ROLLOUTS).document(rollout_id)
    started = ref.get().get("step_started_at") - by
    ref.update({"step_started_at": started})
    return started
