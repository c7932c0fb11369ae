"""What canary-guard keeps in Firestore, as plain values: the collections, document ids, the
rollout and rollback-marker documents and their mapping. Pure: shared/clients/store.py reads
and writes them (its docstring lists the layout)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.core.evidence import Evidence, Ledger, minute_key
from shared.core.judge import SyntheticTraffic
from shared.core.ledger import Phase, Streak, streaks_of

ROLLOUTS = "canary_rollouts"
SERVICES = "canary_services"
APPLIED = "applied_events"
DECISIONS = "decisions"
ROLLBACK_MESSAGES = "canary_rollback_messages"
NOTIFICATIONS = "canary_notifications"
CHECKPOINT_LEASES = "canary_checkpoint_leases"
EXPIRES_AT = "expires_at"  # the TTL field (terraform/firestore.tf)
# How long one notify delivery holds a notification: a concurrent delivery of the same message
# meanwhile is answered "busy" (and retried), so one post is in flight at a time.
NOTIFICATION_LEASE = timedelta(seconds=60)
# A marker must outlive every redelivery of its message: Pub/Sub keeps an unacknowledged
# message at most 7 days (and the topics retain published ones for 1 day for a seek), so 30
# days is far past the last delivery; an expired marker is no longer needed.
MARKER_TTL = timedelta(days=30)


def doc_key(text: str) -> str:
    """A Firestore-safe document id: readable, no '/', bounded length."""
    safe = (
        text.replace("projects/", "").replace("/locations/", "~").replace("/services/", "~").replace("/", "~")
    )
    if len(safe) <= 400:
        return safe
    return safe[:300] + "~" + hashlib.sha256(text.encode()).hexdigest()


def rollout_id(service_name: str, canary_revision: str) -> str:
    return doc_key(f"{service_name}/{canary_revision}")


def event_doc_key(event_id: str) -> str:
    """A document id derived from an event id: no input (".", "..", "__x__", "/", 1,500+ bytes)
    can form an id Firestore refuses."""
    return hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@dataclass(frozen=True)
class RollbackMarker:
    """A rollback request (by Pub/Sub message id) that was carried out, and how it ended."""

    message_id: str
    outcome: str
    message: str
    service: str
    rollout: str | None = None
    canary_revision: str | None = None
    at: datetime | None = None  # when it was written (set by the store)

    def as_doc(self, now: datetime) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "outcome": self.outcome,
            "message": self.message,
            "service": self.service,
            "rollout": self.rollout,
            "canary_revision": self.canary_revision,
            "at": now,
            EXPIRES_AT: now + MARKER_TTL,
        }


@dataclass(frozen=True)
class Rollout:
    id: str
    service: str
    canary_revision: str
    stable_revision: str
    phase: Phase
    canary_percent: int
    step_started_at: datetime
    started_by: str
    paused: bool = False
    ledger: Ledger = field(default_factory=dict)  # rule -> minute -> Evidence
    rollback_requested: bool = False
    rollback_request: Mapping[str, Any] | None = None
    rollback_published: bool = False
    rollback_published_at: datetime | None = None
    redrive_count: int = 0  # how often checkpoints re-sent an unfinished rollback
    redrive_at: datetime | None = None
    last_verdict: Mapping[str, Any] | None = None
    last_load_test: Mapping[str, Any] | None = None
    created_at: datetime | None = None  # when canary-guard registered the rollout
    synthetic_traffic: tuple[SyntheticTraffic, ...] = ()  # its load test runs, for the checkpoint
    updated_at: datetime | None = None  # its last write

    @property
    def streaks(self) -> dict[str, Streak]:
        """Each rule's current run of breach minutes (the end of its ledger)."""
        return streaks_of(self.ledger)

    @property
    def rollback_pending(self) -> bool:
        """Requested in Firestore but not yet confirmed published (the outbox)."""
        return self.rollback_requested and not self.rollback_published and self.rollback_request is not None

    @classmethod
    def from_doc(cls, doc_id: str, data: Mapping[str, Any]) -> Rollout:
        ledger = {
            rule: {
                entry.minute: entry
                for entry in (Evidence.from_doc(rule, key, doc) for key, doc in minutes.items())
            }
            for rule, minutes in (data.get("ledger") or {}).items()
        }
        return cls(
            id=doc_id,
            service=data["service"],
            canary_revision=data["canary_revision"],
            stable_revision=data["stable_revision"],
            phase=Phase(data["phase"]),
            canary_percent=int(data.get("canary_percent", 0)),
            step_started_at=plain_datetime(data["step_started_at"]),
            started_by=data.get("started_by", ""),
            paused=bool(data.get("paused", False)),
            ledger=ledger,
            rollback_requested=bool(data.get("rollback_requested", False)),
            rollback_request=data.get("rollback_request"),
            rollback_published=bool(data.get("rollback_published", False)),
            rollback_published_at=plain_datetime(data.get("rollback_published_at")),
            redrive_count=int(data.get("redrive_count", 0)),
            redrive_at=plain_datetime(data.get("redrive_at")),
            last_verdict=data.get("last_verdict"),
            last_load_test=data.get("last_load_test"),
            created_at=plain_datetime(data.get("created_at")),
            updated_at=plain_datetime(data.get("updated_at")),
            synthetic_traffic=tuple(
                SyntheticTraffic(
                    plain_datetime(load["started_at"]),
                    plain_datetime(load["ended_at"]),
                    bool(load["finished"]),
                )
                for load in (data.get("synthetic_traffic") or {}).values()
            ),
        )


def synthetic_doc(run_id: str, traffic: SyntheticTraffic) -> dict[str, Any]:
    """The update that sets one run's entry of the rollout's `synthetic_traffic` map."""
    return {f"synthetic_traffic.{run_id}": traffic.as_dict()}


def plain_datetime(moment: datetime | None) -> datetime | None:
    """Firestore's DatetimeWithNanoseconds as a plain aware datetime (safe to compute with and
    to write back)."""
    if moment is None:
        return None
    return datetime.fromisoformat(moment.isoformat()).astimezone(UTC)


def ledger_doc(ledger: Ledger) -> dict[str, Any]:
    return {rule: {minute_key(m): e.as_doc() for m, e in minutes.items()} for rule, minutes in ledger.items()}


def jsonable(value: Any) -> Any:
    """A decision's data as JSON (datetimes as RFC 3339), for the notification message."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
