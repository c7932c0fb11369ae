"""Cloud Run-shaped metrics for the Monitoring stand-in: one minute of a revision's traffic as
Cloud Monitoring would record it (request_count by response class, request_latencies,
memory and CPU utilisation distributions). Used by the tests, the demo and the rehearsal
(which writes what its router served)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.api import distribution_pb2

from infra.monitoring_standin import MonitoringStandin, distribution
from shared.clients.monitoring import (
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
    ok = traffic.requests - traffic.errors
    for end in sorted(minutes):
        record_minute(
            standin,
            RevisionRef(project, location, service, revision),
            end,
            responses={code: n for code, n in (("200", ok), ("500", traffic.errors)) if n},
            latencies_ms=[traffic.latency_ms] * traffic.requests,
            memory=[traffic.memory] * 2,
            cpu=[traffic.cpu] * 2,
        )


@dataclass(frozen=True)
class RevisionRef:
    project: str
    location: str
    service: str
    revision: str


def record_minute(
    standin: MonitoringStandin,
    revision: RevisionRef,
    end: datetime,
    *,
    responses: Mapping[str, int],
    latencies_ms: Sequence[float],
    memory: Sequence[float],
    cpu: Sequence[float],
) -> None:
    """One minute of a revision as Cloud Run records it, stamped at the minute's `end`:
    request_count per response code (with its class), the request_latencies distribution,
    and the memory and CPU utilisation distributions over the minute's samples (none: the
    revision had no instance that minute, so nothing is written)."""
    resource = {
        "project_id": revision.project,
        "location": revision.location,
        "service_name": revision.service,
        "revision_name": revision.revision,
    }

    def add(metric: str, value: object, **labels: str) -> None:
        standin.add_points(
            revision.project,
            metric,
            [(end, value)],
            resource_type=RUN_RESOURCE,
            resource_labels=resource,
            metric_labels=labels,
        )

    for code, count in sorted(responses.items()):
        if count:
            add(REQUEST_COUNT, count, response_code=code, response_code_class=f"{code[0]}xx")
    if latencies_ms:
        add(REQUEST_LATENCIES, distribution(latencies_ms, LATENCY_BUCKETS))
    if memory:
        add(MEMORY_UTILIZATIONS, distribution(memory, UTILIZATION_BUCKETS))
    if cpu:
        add(CPU_UTILIZATIONS, distribution(cpu, UTILIZATION_BUCKETS))


def rewind_step(project: str, rollout_id: str, by: timedelta) -> datetime:
    """Local time compression: move a rollout's step start `by` into the past, as if that much
    of its soak had been waited out, so a checkpoint can judge the step on the minutes fed for
    it. Returns the new step start."""
    from google.cloud import firestore

    from shared.clients.store import ROLLOUTS

    ref = firestore.Client(project=project).collection(ROLLOUTS).document(rollout_id)
    started = ref.get().get("step_started_at") - by
    ref.update({"step_started_at": started})
    return started
