"""The rules read Cloud Monitoring through `MetricsSource` (shared/core/metrics_source.py): judged
here in process on minutes made up for the test, with no gRPC and no stand-in."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

from shared.clients.monitoring import MonitoringReader
from shared.clients.store import Rollout
from shared.core.evidence import EvidenceKind, MinuteMetrics
from shared.core.metrics_source import MetricsSource
from shared.handlers.breach import judge_window
from shared.policy import load_policy

POLICY = load_policy()
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SERVICE = "projects/p/locations/europe-west1/services/shop"


class MadeUpMinutes:
    """A MetricsSource over a dict: revision -> minute start -> metrics."""

    def __init__(self, minutes: dict[str, dict[datetime, MinuteMetrics]]) -> None:
        self.minutes = minutes
        self.reads: list[tuple[str, datetime, datetime]] = []

    def minute_metrics(self, *, location, service, start, end):
        self.reads.append((service, start, end))
        return {
            revision: {m: v for m, v in by_minute.items() if start <= m and m + MINUTE <= end}
            for revision, by_minute in self.minutes.items()
        }

    def canary_metrics(self, **query):
        raise AssertionError("the rollback rules read minute by minute")


def rollout(**changes) -> Rollout:
    doc = {
        "service": SERVICE,
        "canary_revision": "shop-00002",
        "stable_revision": "shop-00001",
        "phase": "RUNNING",
        "canary_percent": 5,
        "step_started_at": T0 - timedelta(hours=1),
    }
    return Rollout.from_doc("r", doc | changes)


def test_each_whole_minute_is_judged_on_its_own_and_the_open_one_waits():
    bad, thin = MinuteMetrics(T0, requests=200, errors=12), MinuteMetrics(T0 + MINUTE, requests=5, errors=5)
    still_open = MinuteMetrics(T0 + 2 * MINUTE, requests=200, errors=100)
    source = MadeUpMinutes({"shop-00002": {m.minute: m for m in (bad, thin, still_open)}})
    entries = judge_window(
        rollout(),
        start=T0 - 5 * MINUTE,
        end=T0 + 3 * MINUTE,
        now=T0 + 2 * MINUTE + timedelta(seconds=30),
        policy=POLICY,
        reader=source,
    )
    by_minute = {(e.minute, e.rule): e.kind for e in entries}
    assert by_minute[(T0, "error_rate")] is EvidenceKind.BREACH  # 6 % > 1 %
    assert by_minute[(T0 + MINUTE, "error_rate")] is EvidenceKind.THIN  # 5 requests < 20
    assert not any(e.minute == T0 + 2 * MINUTE for e in entries)  # not a whole minute yet
    assert source.reads == [("shop", T0 - 5 * MINUTE, T0 + 3 * MINUTE)]


def test_a_load_test_minute_is_skipped_by_the_request_rules():
    synthetic = MinuteMetrics(T0, requests=2000, errors=200)
    source = MadeUpMinutes({"shop-00002": {T0: synthetic}})
    run = {"started_at": T0 - timedelta(seconds=10), "ended_at": T0 + MINUTE, "finished": True}
    entries = judge_window(
        rollout(synthetic_traffic={"run_1": run}),
        start=T0 - MINUTE,
        end=T0 + MINUTE,
        now=T0 + 2 * MINUTE,
        policy=POLICY,
        reader=source,
    )
    assert {e.kind for e in entries if e.rule == "error_rate"} == {EvidenceKind.SKIPPED}


def test_the_monitoring_reader_is_a_metrics_source():
    """Same methods, same keyword parameters as the seam: what the rules call exists on the reader."""
    for name in ("minute_metrics", "canary_metrics"):
        seam = inspect.signature(getattr(MetricsSource, name)).parameters
        real = inspect.signature(getattr(MonitoringReader, name)).parameters
        assert list(seam) == list(real), name
