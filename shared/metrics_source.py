"""The seam between the rules and Cloud Monitoring: what a checkpoint or an alert needs to read.

shared/monitoring.py's `MonitoringReader` is the real one (ListTimeSeries over gRPC). The rules
(`shared.breach.judge_window`, the checkpoint's step verdict, the operator's `metrics`) take
any `MetricsSource`, so they can be run in process on recorded or made-up minutes; the
Monitoring stand-in tests then prove the reader alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shared.evidence import MinuteMetrics
    from shared.monitoring import CanaryMetrics


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
