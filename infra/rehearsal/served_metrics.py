"""What the rehearsal's revisions served and used, written to the Monitoring stand-in the way
Cloud Run records it, one minute at a time once the minute is visible (after the lag)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from infra.metrics_feed import RevisionRef, record_minute
from infra.monitoring_standin import MonitoringStandin
from infra.rehearsal.revisions import ResourceMinute, ResourceSampler
from infra.rehearsal.router import Router
from infra.rehearsal.served import ServedMinute
from infra.rehearsal.timeline import MinuteRecord

MINUTE = timedelta(minutes=1)
# Cloud Run records request_count per response code; the router keeps the class.
CODE_OF_CLASS = {"2xx": "200", "3xx": "302", "4xx": "404", "5xx": "500"}
Key = tuple[str, str, datetime]  # service, revision, minute start


def write_visible_minutes(
    router: Router,
    sampler: ResourceSampler,
    monitoring: MonitoringStandin,
    visible_before: datetime,
    role_of: Callable[[str, str], str],
) -> list[MinuteRecord]:
    """Every minute that ended by `visible_before`: its requests (by response class), latencies,
    memory and CPU samples written to Monitoring, stamped at the minute's end; returns what the
    timeline records of each (a revision with samples but no request still has its minute)."""
    served = {(m.service, m.revision, m.start): m for m in router.take_minutes(visible_before)}
    used = {(m.service, m.revision, m.start): m for m in sampler.take_minutes(visible_before)}
    totals: dict[tuple[str, datetime], int] = {}
    for (service, _, start), minute in served.items():
        totals[(service, start)] = totals.get((service, start), 0) + sum(minute.counts.values())
    records = []
    for key in sorted(served.keys() | used.keys(), key=lambda k: (k[2], k[0], k[1])):
        service, _, start = key
        served_minute, used_minute = served.get(key), used.get(key)
        _write(monitoring, router, key, served_minute, used_minute)
        total = totals.get((service, start), 0)
        records.append(_record(key, router.service_name(service), served_minute, used_minute, total, role_of))
    return records


def _write(
    monitoring: MonitoringStandin,
    router: Router,
    key: Key,
    served: ServedMinute | None,
    used: ResourceMinute | None,
) -> None:
    service, revision, start = key
    record_minute(
        monitoring,
        RevisionRef(router.project, router.location, service, revision),
        start + MINUTE,
        responses={CODE_OF_CLASS[c]: n for c, n in (served.counts if served else {}).items()},
        latencies_ms=list(served.latencies_ms) if served else [],
        memory=list(used.memory_utilizations) if used else [],
        cpu=list(used.cpu_utilizations) if used else [],
    )


def _record(
    key: Key,
    service_name: str,
    served: ServedMinute | None,
    used: ResourceMinute | None,
    service_total: int,
    role_of: Callable[[str, str], str],
) -> MinuteRecord:
    service, revision, start = key
    requests = sum(served.counts.values()) if served else 0
    errors = served.counts.get("5xx", 0) if served else 0
    latencies = list(served.latencies_ms) if served else []
    memory = used.memory_utilizations if used else ()
    cpu = used.cpu_utilizations if used else ()
    return MinuteRecord(
        at=start,
        service=service_name,
        revision=revision,
        role=role_of(service, revision),
        # The share of the service's real requests this revision answered that minute.
        share_pct=round(100 * requests / service_total, 2) if service_total else 0.0,
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        p95_ms=percentile(latencies, 0.95) if latencies else None,
        memory=max(memory) if memory else None,
        cpu=max(cpu) if cpu else None,
    )


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of raw samples (the timeline's display; Monitoring gets the
    whole distribution)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
