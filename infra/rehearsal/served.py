"""What the rehearsal's router served: per (service, revision, minute) the requests by response
class and their end-to-end latencies, and per URL the totals. Thread-safe: the router's proxy
threads record, the orchestrator takes whole minutes (`take`) for the Monitoring stand-in.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.core.evidence import whole_minute

MINUTE = timedelta(minutes=1)

ANY_URL, SERVICE_URL = "*", ""  # served_counts(via=...): every URL, or the service URL alone


def response_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass(frozen=True)
class ServedMinute:
    """What one revision of a service served in one minute."""

    service: str
    revision: str
    start: datetime
    counts: dict[str, int]  # response class -> requests
    latencies_ms: tuple[float, ...]


@dataclass
class _Minute:
    counts: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


class ServedLedger:
    """Thread-safe per-minute request records."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._minutes: dict[tuple[str, str, datetime], _Minute] = {}
        self._totals: Counter[tuple[str, str, str | None]] = Counter()  # (service, revision, tag)

    def record(self, service: str, revision: str, status: int, latency_ms: float, tag: str | None) -> None:
        with self._lock:
            # The minute is read under the lock, so a request done after a take_minutes that
            # covered its minute cannot land in that (already handed over) minute.
            start = whole_minute(self._now())
            minute = self._minutes.setdefault((service, revision, start), _Minute())
            minute.counts[response_class(status)] += 1
            minute.latencies_ms.append(latency_ms)
            self._totals[(service, revision, tag)] += 1

    def take(self, before: datetime) -> list[ServedMinute]:
        with self._lock:
            done = sorted(key for key in self._minutes if key[2] + MINUTE <= before)
            taken = [(key, self._minutes.pop(key)) for key in done]
        return [
            ServedMinute(service, revision, start, dict(minute.counts), tuple(minute.latencies_ms))
            for (service, revision, start), minute in taken
        ]

    def totals(self, service: str | None, via: str | None) -> dict[str, int]:
        with self._lock:
            totals: Counter[str] = Counter()
            for (served_service, revision, tag), count in self._totals.items():
                if service not in (None, served_service):
                    continue
                if via in (ANY_URL, tag) or (via == SERVICE_URL and tag is None):
                    totals[revision] += count
            return dict(totals)
