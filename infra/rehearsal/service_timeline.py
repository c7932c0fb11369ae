"""A rehearsal's timeline read per service, and its values as text: what the live view and the
report both read a timeline with (`group_by_service`, `MetricBars`, `metric_text`, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.rehearsal.timeline import (
    AlertRecord,
    DecisionRecord,
    MinuteRecord,
    Record,
    StatusRecord,
    TrafficRecord,
)
from shared.policy import Policy


@dataclass
class ServiceTimeline:
    """One service's records, each list in timeline order."""

    service: str
    minutes: list[MinuteRecord] = field(default_factory=list)
    traffic: list[TrafficRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    alerts: list[AlertRecord] = field(default_factory=list)
    statuses: list[StatusRecord] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        return service_short_name(self.service)

    def revisions(self) -> list[str]:
        """Revisions in minutes or splits: stable first, then canary, then others, each by first sight."""
        order: dict[str, int] = {}
        rank = {"stable": 0, "canary": 1, "other": 2}
        for minute in self.minutes:
            order.setdefault(minute.revision, rank[minute.role])
        for change in self.traffic:
            for revision in change.split:
                order.setdefault(revision, 2)
        seen = list(order)
        return sorted(seen, key=lambda revision: (order[revision], seen.index(revision)))

    def role_of(self, revision: str) -> str | None:
        """The revision's role in its latest minute (roles change when a canary is promoted)."""
        for minute in reversed(self.minutes):
            if minute.revision == revision:
                return minute.role
        return None


def service_short_name(service: str) -> str:
    """`shop` for `projects/p/locations/l/services/shop`."""
    return service.rstrip("/").rsplit("/", 1)[-1]


def group_by_service(records: Iterable[Record]) -> dict[str, ServiceTimeline]:
    """Records per service, services in order of first appearance; each list sorted by time (stable)."""
    grouped: dict[str, ServiceTimeline] = {}
    for record in records:
        timeline = grouped.setdefault(record.service, ServiceTimeline(record.service))
        bucket: list[Any] = {
            "minute": timeline.minutes,
            "traffic": timeline.traffic,
            "decision": timeline.decisions,
            "alert": timeline.alerts,
            "status": timeline.statuses,
        }[record.record]
        bucket.append(record)
    for timeline in grouped.values():
        for bucket in (timeline.minutes, timeline.traffic, timeline.decisions, timeline.alerts):
            bucket.sort(key=lambda record: record.at)
        timeline.statuses.sort(key=lambda record: record.at)
    return grouped


# Metric name (as in MinuteRecord and the policy's rules) → how a value reads.
_PERCENT_METRICS = frozenset({"error_rate", "memory", "cpu"})


def metric_text(metric: str, value: float | None) -> str:
    """`6.00 %` for a ratio, `512 ms` for latency_p95, the number otherwise; `-` for no value."""
    if value is None:
        return "-"
    if metric in _PERCENT_METRICS:
        return f"{value * 100:.2f} %"
    if metric in ("latency_p95", "p95_ms"):
        return f"{value:.0f} ms"
    return f"{value:g}"


def alert_text(alert: AlertRecord) -> str:
    """`error_rate open on shop-00002 (6.00 % vs bar 1.00 %)`."""
    measured = ""
    if alert.observed is not None or alert.threshold is not None:
        measured = (
            f" ({metric_text(alert.rule, alert.observed)} vs bar {metric_text(alert.rule, alert.threshold)})"
        )
    if not alert.revision:  # the uptime check's incident names the canary's URL, not a revision
        regions = "" if alert.observed is None else f" ({alert.observed:g} checker regions failing)"
        return f"{alert.rule} {alert.state} on the canary tag URL{regions}"
    return f"{alert.rule} {alert.state} on {alert.revision}{measured}"


@dataclass(frozen=True)
class MetricBars:
    """The policy's bars per minute metric: rollback (breach when over) and GO (advance when at or under).

    Keys are the rule names: error_rate and memory as fractions, latency_p95 in ms, cpu (GO only).
    """

    rollback: Mapping[str, float]
    go: Mapping[str, float]
    min_requests_per_minute: int  # under it error_rate and latency_p95 are not judged (thin minute)

    @classmethod
    def from_policy(cls, policy: Policy) -> MetricBars:
        rules = policy.rollback_rules
        return cls(
            rollback={name: rules[name].threshold for name in ("error_rate", "latency_p95", "memory")},
            go={
                "error_rate": policy.go_bars.error_rate,
                "latency_p95": policy.go_bars.latency_p95,
                "memory": policy.go_bars.memory,
                "cpu": policy.go_bars.cpu,
            },
            min_requests_per_minute=policy.evidence.min_requests_per_minute,
        )

    def level(self, metric: str, value: float | None, requests: int | None = None) -> str:
        """`rollback` over the rollback bar, `go` over only the GO bar, `ok` under, `thin` unjudged."""
        if value is None:
            return "ok"
        judged_on_requests = metric in ("error_rate", "latency_p95") and requests is not None
        if judged_on_requests and requests < self.min_requests_per_minute:
            return "thin"
        if metric in self.rollback and value > self.rollback[metric]:
            return "rollback"
        if metric in self.go and value > self.go[metric]:
            return "go"
        return "ok"


def split_text(split: Mapping[str, int]) -> str:
    """`shop-00001 95%, shop-00002 5%`, biggest share first (stable reads first)."""
    ordered = sorted(split.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{revision} {percent}%" for revision, percent in ordered) or "-"


def clock_text(at: datetime, *, seconds: bool = True) -> str:
    return at.astimezone(UTC).strftime("%H:%M:%SZ" if seconds else "%H:%MZ")
