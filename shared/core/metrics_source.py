"""The seam between the rules and Cloud Monitoring: what a checkpoint or an alert needs to read,
and what a window read answers (`CanaryMetrics`, a plain value the rules judge).

shared/clients/monitoring.py's `MonitoringReader` is the real one (ListTimeSeries over gRPC). The rules
(`shared.handlers.breach.judge_window`, the checkpoint's step verdict, the operator's `metrics`) take
any `MetricsSource`, so they can be run in process on recorded or made-up minutes; the
Monitoring stand-in tests then prove the reader alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shared.core.evidence import MinuteMetrics


@dataclass(frozen=True)
class CanaryMetrics:
    """What Cloud Monitoring saw of one revision in (window_start, window_end].

    None means "no data" (the caller judges INCONCLUSIVE), never zero.
    """

    window_start: datetime
    window_end: datetime
    request_count: int  # run.googleapis.com/request_count, all response classes
    error_count: int  # response_code_class = "5xx"
    error_rate: float | None  # None when request_count == 0
    latency_p95_ms: float | None  # P95 of the merged request_latencies distribution
    memory_utilization: float | None  # P99 of container/memory/utilizations (0..1)
    cpu_utilization: float | None  # P99 of container/cpu/utilizations (0..1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the window as ISO-8601 strings, everything else as is."""
        data = asdict(self)
        data["window_start"] = self.window_start.isoformat()
        data["window_end"] = self.window_end.isoformat()
        return data


class MetricsSource(Protocol):
    def minute_metrics(
        self, *, location: str, service: str, start: datetime, end: datetime
    ) -> dict[str, dict[datetime, MinuteMetrics]]:
        """Every revision of the service, minute by minute over (start, end]: revision → minute
        start → its metrics. A minute without data is absent, never zero."""
        ...

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
        """One revision over the whole window (start, end], leaving out the `exclude` spans from
        request counts and latency."""
        ...
