"""Rollout state in Firestore. Every transition happens inside a transaction.

Layout:
  canary_rollouts/{rollout_id}                   the rollout: revisions, phase, step, evidence ledger
  canary_rollouts/{rollout_id}/applied_events/{event_id}   dedupe markers (same txn as streaks)
  canary_rollouts/{rollout_id}/decisions/{id}    append-only history (status/history read it)
  canary_services/{service_key}                  which rollout is active for a service
  canary_rollback_messages/{message_id}          rollback requests (Pub/Sub) already carried out
  canary_notifications/{decision_id}             the notification outbox: one per decision the chat
                                                 channel hears about, written with that decision
  canary_checkpoint_leases/{rollout_id}          a checkpoint run judging the rollout right now

The dedupe markers carry `expires_at` (MARKER_TTL after they are written) and the decisions
`expires_at` when a retention is configured: Firestore's TTL policy on that field
(terraform/firestore.tf) deletes them after it. Rollouts and service pointers stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared.core import (
    EvidenceDecision,
    Outcome,
    Phase,
    Streak,
    apply_evidence,
    streaks_of,
    watching_promoted,
)
from shared.evidence import Evidence, Ledger, minute_key
from shared.judge import SyntheticTraffic
from shared.lifecycle import Action, allows, transition
from shared.logs import log
from shared.notifications import Notification, should_notify
from shared.traffic import CanarySplit

T = TypeVar("T")

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
# Concurrent deliveries for one rollout contend on one document. The client re-runs a
# transaction that lost the race (keeping its place in line on Firestore); between such
# rounds we back off with jitter so lock-timeout storms settle, and past the deadline the
# error reaches Pub/Sub, which redelivers.
TXN_ATTEMPTS = 5
TXN_DEADLINE_S = 60.0
TXN_BACKOFF_S = (0.02, 1.0)  # first and largest pause between rounds


class _KeyedLocks:
    """One lock per rollout id within this process. Concurrent requests in one instance then
    queue instead of contending in Firestore (where lock-upgrade conflicts abort both). A key's
    lock exists only while someone holds or waits for it: a warm instance that sees thousands of
    rollouts keeps none of them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, holders + waiters)

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


_rollout_locks = _KeyedLocks()


class StoreError(RuntimeError):
    """Firestore could not take the update now; the caller's event is retried (Pub/Sub redelivers)."""


class StoreContention(StoreError):
    """A transaction kept losing to concurrent writers until its deadline."""


class StoreUnavailable(StoreError):
    """Firestore did not answer within the client's retries."""


class RolloutConflict(RuntimeError):
    """Another rollout of the service is active (one rollout per service at a time)."""


def _key(text: str) -> str:
    """A Firestore-safe document id: readable, no '/', bounded length."""
    safe = (
        text.replace("projects/", "").replace("/locations/", "~").replace("/services/", "~").replace("/", "~")
    )
    if len(safe) <= 400:
        return safe
    return safe[:300] + "~" + hashlib.sha256(text.encode()).hexdigest()


def rollout_id(service_name: str, canary_revision: str) -> str:
    return _key(f"{service_name}/{canary_revision}")


def _event_key(event_id: str) -> str:
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
            step_started_at=_plain(data["step_started_at"]),
            started_by=data.get("started_by", ""),
            paused=bool(data.get("paused", False)),
            ledger=ledger,
            rollback_requested=bool(data.get("rollback_requested", False)),
            rollback_request=data.get("rollback_request"),
            rollback_published=bool(data.get("rollback_published", False)),
            rollback_published_at=_plain(data.get("rollback_published_at")),
            redrive_count=int(data.get("redrive_count", 0)),
            redrive_at=_plain(data.get("redrive_at")),
            last_verdict=data.get("last_verdict"),
            last_load_test=data.get("last_load_test"),
            created_at=_plain(data.get("created_at")),
            updated_at=_plain(data.get("updated_at")),
            synthetic_traffic=tuple(
                SyntheticTraffic(_plain(load["started_at"]), _plain(load["ended_at"]), bool(load["finished"]))
                for load in (data.get("synthetic_traffic") or {}).values()
            ),
        )


def _synthetic_entry(run_id: str, traffic: SyntheticTraffic) -> dict[str, Any]:
    """The update that sets one run's entry of the rollout's `synthetic_traffic` map."""
    return {f"synthetic_traffic.{run_id}": traffic.as_dict()}


def _plain(moment: datetime | None) -> datetime | None:
    """Firestore's DatetimeWithNanoseconds as a plain aware datetime (safe to compute with and
    to write back)."""
    if moment is None:
        return None
    return datetime.fromisoformat(moment.isoformat()).astimezone(UTC)


def _ledger_doc(ledger: Ledger) -> dict[str, Any]:
    return {rule: {minute_key(m): e.as_doc() for m, e in minutes.items()} for rule, minutes in ledger.items()}


def _now() -> datetime:
    return datetime.now(UTC)


# Called after a write commits with the notifications it enqueued (shared/notify.py publishes).
NotificationSink = Callable[["RolloutStore", Sequence[Notification]], None]


def _jsonable(value: Any) -> Any:
    """A decision's data as JSON (datetimes as RFC 3339), for the notification message."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class RolloutStore:
    def __init__(
        self,
        project: str,
        client: firestore.Client | None = None,
        *,
        decision_retention: timedelta | None = None,
        notifications: NotificationSink | None = None,
    ) -> None:
        """decision_retention: how long a decision record is kept (None: for ever).
        notifications: where the notifications of committed decisions go (None: none are made)."""
        self._db = client or firestore.Client(project=project)
        self._decision_retention = decision_retention
        self._sink = notifications
        self._queued = threading.local()  # the notifications of the write under way, per thread

    def _decision_doc(self, now: datetime, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
        doc = {"at": now, "kind": kind, **data}
        if self._decision_retention is not None:
            doc[EXPIRES_AT] = now + self._decision_retention
        return doc

    # -- the notification outbox ------------------------------------------------------------
    def _queue(self) -> list[Notification]:
        if not hasattr(self._queued, "notes"):
            self._queued.notes = []
        return self._queued.notes

    def _enqueue(
        self, writer: Any, decision_id: str, rid: str, kind: str, now: datetime, data: Mapping[str, Any]
    ) -> None:
        """With the decision (same transaction or batch `writer`), its notification, if the
        channel should hear of it: a crash after the commit loses nothing (checkpoints re-send)."""
        if self._sink is None or not should_notify(kind, data):
            return
        note = Notification(decision_id, rid, kind, now.isoformat(), _jsonable(dict(data)))
        writer.set(
            self._db.collection(NOTIFICATIONS).document(decision_id),
            {
                "rollout": rid,
                "kind": kind,
                "at": now,
                "message": note.as_message(),
                "published": False,
                "delivered": False,
                EXPIRES_AT: now + MARKER_TTL,
            },
        )
        self._queue().append(note)

    def _flush(self) -> None:
        """Hand the committed write's notifications to the sink; a sink failure is only logged
        (the notifications stay in the outbox, unpublished, for the next checkpoint)."""
        notes, self._queued.notes = list(self._queue()), []
        if not notes or self._sink is None:
            return
        try:
            self._sink(self, notes)
        except Exception as exc:  # never let a notification change an operation's answer
            log("WARNING", f"notifications not published now (a checkpoint re-sends them): {exc!r}")

    def resend_notifications(self, *, older_than: datetime) -> int:
        """Hand the sink again the notifications committed before `older_than` that it never
        took (the process stopped in between, or Pub/Sub refused); every checkpoint calls it."""
        if self._sink is None:
            return 0
        notes = self.unpublished_notifications(older_than=older_than)
        if notes:
            self._sink(self, notes)
        return len(notes)

    def mark_notification_published(self, nid: str) -> None:
        self._db.collection(NOTIFICATIONS).document(nid).update({"published": True, "published_at": _now()})

    def unpublished_notifications(self, *, older_than: datetime, limit: int = 50) -> list[Notification]:
        """Notifications whose decision committed before `older_than` but that were never
        published (the process stopped in between, or Pub/Sub refused)."""
        query = self._db.collection(NOTIFICATIONS).where(
            filter=firestore.FieldFilter("published", "==", False)
        )
        found = []
        for snap in query.limit(limit * 4).stream():
            doc = snap.to_dict()
            if doc.get("at") and doc["at"] < older_than:
                found.append(Notification.from_message(doc["message"]))
        return found[:limit]

    def claim_notification(self, nid: str, *, lease: timedelta = NOTIFICATION_LEASE) -> str:
        """'claimed' (post it now), 'delivered' (already posted), 'busy' (another delivery holds
        it) or 'unknown' (no outbox entry: not ours, or long expired)."""
        ref = self._db.collection(NOTIFICATIONS).document(nid)

        def txn_body(txn: firestore.Transaction) -> str:
            snap = ref.get(transaction=txn)
            if not snap.exists:
                return "unknown"
            doc = snap.to_dict()
            if doc.get("delivered"):
                return "delivered"
            now = _now()
            if doc.get("lease_until") and doc["lease_until"] > now:
                return "busy"
            txn.update(ref, {"lease_until": now + lease, "attempts": firestore.Increment(1)})
            return "claimed"

        # Not serialised per key in this process (that lock table is per rollout): the lease does it.
        return self._transact_unlocked(txn_body)

    def release_notification(self, nid: str) -> None:
        """The post failed: the next delivery may try at once."""
        self._db.collection(NOTIFICATIONS).document(nid).update({"lease_until": None})

    def mark_notification_delivered(self, nid: str) -> None:
        self._db.collection(NOTIFICATIONS).document(nid).update(
            {"delivered": True, "delivered_at": _now(), "lease_until": None}
        )

    # -- reads ---------------------------------------------------------------------------
    def _rollout_ref(self, rid: str) -> firestore.DocumentReference:
        return self._db.collection(ROLLOUTS).document(rid)

    def _service_ref(self, service_name: str) -> firestore.DocumentReference:
        return self._db.collection(SERVICES).document(_key(service_name))

    def get(self, rid: str) -> Rollout | None:
        snap = self._rollout_ref(rid).get()
        return Rollout.from_doc(snap.id, snap.to_dict()) if snap.exists else None

    def _marker_ref(self, message_id: str) -> firestore.DocumentReference:
        return self._db.collection(ROLLBACK_MESSAGES).document(_event_key(message_id))

    def rollback_marker(self, message_id: str) -> RollbackMarker | None:
        """How the rollback request with this Pub/Sub message id was carried out, or None."""
        snap = self._marker_ref(message_id).get()
        if not snap.exists:
            return None
        data = snap.to_dict()
        return RollbackMarker(
            message_id=message_id,
            outcome=data.get("outcome", ""),
            message=data.get("message", ""),
            service=data.get("service", ""),
            rollout=data.get("rollout"),
            canary_revision=data.get("canary_revision"),
            at=_plain(data.get("at")),
        )

    def mark_rollback_message(self, marker: RollbackMarker) -> None:
        """Record a request carried out without a phase change (`set`: concurrent deliveries of
        one message did the same request, so whichever answer lands last is a true one)."""
        self._marker_ref(marker.message_id).set(marker.as_doc(_now()))

    def active(self, service_name: str) -> Rollout | None:
        """The service's most recent rollout (whatever its phase), or None."""
        snap = self._service_ref(service_name).get()
        rid = (snap.to_dict() or {}).get("active_rollout") if snap.exists else None
        return self.get(rid) if rid else None

    def active_many(self, service_names: Sequence[str]) -> dict[str, Rollout | None]:
        """`active` for many services in two batched reads (whatever their number)."""
        pointers = self._db.get_all([self._service_ref(name) for name in service_names])
        by_key = {snap.id: (snap.to_dict() or {}).get("active_rollout") for snap in pointers if snap.exists}
        rids = {name: by_key.get(_key(name)) for name in service_names}
        wanted = sorted({rid for rid in rids.values() if rid})
        found = {
            snap.id: Rollout.from_doc(snap.id, snap.to_dict())
            for snap in (self._db.get_all([self._rollout_ref(rid) for rid in wanted]) if wanted else [])
            if snap.exists
        }
        return {name: found.get(rid) if rid else None for name, rid in rids.items()}

    # -- checkpoint leases: one run at a time judges a rollout --------------------------------
    def claim_checkpoint(self, rid: str, minute: datetime, *, lease: timedelta) -> Any | None:
        """Take the rollout's checkpoint lease for `minute`: a token for `release_checkpoint`, or
        None while another run holds an unexpired one (its minute is still in flight). A lease
        left by a crashed run expires after `lease` and is taken over."""
        ref = self._db.collection(CHECKPOINT_LEASES).document(rid)
        now = _now()
        doc = {"minute": minute, "until": now + lease, EXPIRES_AT: now + lease + MARKER_TTL}
        try:
            return ref.create(doc).update_time
        except gexc.Conflict:  # AlreadyExists: held, or left behind
            pass
        snap = ref.get()
        if snap.exists and snap.get("until") > now:
            return None
        try:
            if not snap.exists:
                return ref.create(doc).update_time
            unchanged = self._db.write_option(last_update_time=snap.update_time)
            return ref.update(doc, option=unchanged).update_time
        except (gexc.Conflict, gexc.FailedPrecondition):  # another run took it over first
            return None

    def checkpoint_lease(self, rid: str) -> dict[str, Any] | None:
        snap = self._db.collection(CHECKPOINT_LEASES).document(rid).get()
        return snap.to_dict() if snap.exists else None

    def release_checkpoint(self, rid: str, token: Any) -> None:
        """Give the lease back, unless it expired and another run took it over meanwhile."""
        ref = self._db.collection(CHECKPOINT_LEASES).document(rid)
        with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
            ref.delete(option=self._db.write_option(last_update_time=token))

    def history(self, rid: str, limit: int = 200) -> list[dict[str, Any]]:
        query = (
            self._rollout_ref(rid)
            .collection(DECISIONS)
            .order_by("at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        entries = ({k: v for k, v in snap.to_dict().items() if k != EXPIRES_AT} for snap in query.stream())
        return list(reversed(list(entries)))

    def _transact(self, key: str, body: Callable[[firestore.Transaction], T]) -> T:
        """Run `body` in a transaction, serialised per rollout within this process and retrying
        cross-instance contention with jittered backoff."""
        with _rollout_locks(key):
            try:
                result = self._transact_unlocked(body)
            except BaseException:
                self._queue().clear()  # nothing committed: its notifications never happened
                raise
        self._flush()
        return result

    def _transact_unlocked(self, body: Callable[[firestore.Transaction], T]) -> T:
        deadline = time.monotonic() + TXN_DEADLINE_S
        pause, max_pause = TXN_BACKOFF_S

        def attempt(txn: firestore.Transaction) -> T:
            self._queue().clear()  # a retried attempt enqueues its notifications again
            return body(txn)

        wrapped = firestore.transactional(attempt)
        while True:
            try:
                return wrapped(self._db.transaction(max_attempts=TXN_ATTEMPTS))
            except (gexc.Aborted, ValueError) as exc:
                contended = isinstance(exc, gexc.Aborted) or isinstance(exc.__cause__, gexc.Aborted)
                if isinstance(exc, ValueError) and isinstance(exc.__context__, gexc.GoogleAPIError):
                    # The client's "no transaction ID, cannot be rolled back" hides the real
                    # failure: its BeginTransaction never got through.
                    raise StoreUnavailable(f"Firestore unavailable: {exc.__context__}") from exc.__context__
                if not contended:
                    raise
                if time.monotonic() + pause > deadline:
                    raise StoreContention(
                        f"transaction still contended after {TXN_DEADLINE_S:.0f} s"
                    ) from exc
            time.sleep(random.uniform(pause / 2, pause))
            pause = min(max_pause, pause * 2)

    def _decision(
        self, txn: firestore.Transaction, rid: str, kind: str, data: Mapping[str, Any], key: str = ""
    ) -> None:
        """Append one history entry; a deterministic key makes a redelivered write land on the same doc."""
        decisions = self._rollout_ref(rid).collection(DECISIONS)
        ref = decisions.document(_event_key(key)) if key else decisions.document()
        now = _now()
        txn.set(ref, self._decision_doc(now, kind, data))
        self._enqueue(txn, ref.id, rid, kind, now, data)

    def _batch_decision(
        self, batch: firestore.WriteBatch, rid: str, kind: str, now: datetime, data: Mapping[str, Any]
    ) -> None:
        self._queue().clear()
        ref = self._rollout_ref(rid).collection(DECISIONS).document()
        batch.set(ref, self._decision_doc(now, kind, data))
        self._enqueue(batch, ref.id, rid, kind, now, data)

    def _commit(self, batch: firestore.WriteBatch) -> None:
        try:
            batch.commit()
        except BaseException:
            self._queue().clear()
            raise
        self._flush()

    # -- writes --------------------------------------------------------------------------
    def rollout_of_live_canary(self, service_name: str, split: CanarySplit, *, found_by: str) -> Rollout:
        """The rollout of the canary the live service serves: stored, or registered now (an
        event or run that is the first to see a canary deployed outside the CLI). Every caller
        that learns the canary from Cloud Run comes here."""
        return self.get(rollout_id(service_name, split.canary_revision)) or self.register(
            service_name,
            split.canary_revision,
            split.stable_revision,
            canary_percent=split.canary_percent,
            started_by=found_by,
        )

    def register(
        self,
        service_name: str,
        canary_revision: str,
        stable_revision: str,
        *,
        canary_percent: int,
        started_by: str,
        refuse_if_active: bool = False,
    ) -> Rollout:
        """Create the rollout for this canary (idempotent) and make it the service's active one.

        A previous RUNNING rollout of the service is SUPERSEDED, unless `refuse_if_active`
        (the operator's `start`), which raises RolloutConflict instead.
        """
        rid = rollout_id(service_name, canary_revision)
        rollout_ref, service_ref = self._rollout_ref(rid), self._service_ref(service_name)

        def txn_body(txn: firestore.Transaction) -> None:
            rollout_snap = rollout_ref.get(transaction=txn)
            service_snap = service_ref.get(transaction=txn)
            previous_id = (
                (service_snap.to_dict() or {}).get("active_rollout") if service_snap.exists else None
            )
            previous = None
            if previous_id and previous_id != rid:
                previous_snap = self._rollout_ref(previous_id).get(transaction=txn)
                if previous_snap.exists:
                    previous = Rollout.from_doc(previous_id, previous_snap.to_dict())
            if rollout_snap.exists:
                return
            # A FROZEN canary still serves its share: it is as active as a RUNNING one.
            if previous is not None and allows(previous.phase, Action.SUPERSEDE):
                if refuse_if_active:
                    raise RolloutConflict(
                        f"{service_name} already has an active rollout of {previous.canary_revision} "
                        f"({previous.phase}); roll it back or promote it first"
                    )
                txn.update(
                    self._rollout_ref(previous.id), {"phase": Phase.SUPERSEDED.value, "updated_at": _now()}
                )
                self._decision(
                    txn, previous.id, "superseded", {"message": f"superseded by canary {canary_revision}"}
                )
            now = _now()
            txn.set(
                rollout_ref,
                {
                    "service": service_name,
                    "canary_revision": canary_revision,
                    "stable_revision": stable_revision,
                    "phase": Phase.RUNNING.value,
                    "canary_percent": canary_percent,
                    "step_started_at": now,
                    "started_by": started_by,
                    "created_at": now,
                    "updated_at": now,
                    "paused": False,
                    "ledger": {},
                    "rollback_requested": False,
                    "rollback_published": False,
                },
            )
            txn.set(service_ref, {"service": service_name, "active_rollout": rid, "updated_at": now})
            self._decision(
                txn,
                rid,
                "started",
                {
                    "message": f"canary {canary_revision} at {canary_percent}%, stable {stable_revision}",
                    "started_by": started_by,
                    "canary_percent": canary_percent,
                },
            )

        self._transact(service_name, txn_body)
        rollout = self.get(rid)
        assert rollout is not None  # written or found by the transaction above
        return rollout

    def apply_evidence(
        self,
        rid: str,
        entries: list[Evidence],
        limits: Mapping[str, int],
        rollback_request: Callable[[EvidenceDecision], Mapping[str, Any]],
        *,
        keep: timedelta,
        event_id: str = "",
        source: str,
        now: datetime | None = None,
        promoted_watch: timedelta = timedelta(0),
    ) -> tuple[EvidenceDecision, Rollout] | None:
        """Ledger merge + trip check + history in one transaction. None: no such rollout.

        `event_id` (an alert's Pub/Sub message id) is recorded in the same transaction, so its
        redelivery is reported as a duplicate (the ledger would not change anyway). When the
        evidence trips a rule, `rollback_request(decision)` is stored with the rollout, so the
        request can be (re)published until it is confirmed (outbox pattern).
        """
        rollout_ref = self._rollout_ref(rid)
        marker_ref = rollout_ref.collection(APPLIED).document(_event_key(event_id)) if event_id else None
        result: dict[str, Any] = {}

        def txn_body(txn: firestore.Transaction) -> None:
            result.clear()
            rollout_snap = rollout_ref.get(transaction=txn)
            if not rollout_snap.exists:
                return
            rollout = Rollout.from_doc(rid, rollout_snap.to_dict())
            if marker_ref is not None and marker_ref.get(transaction=txn).exists:
                duplicate = EvidenceDecision(
                    Outcome.DUPLICATE, rollout.ledger, (), {}, None, f"event {event_id} was already applied"
                )
                result.update(decision=duplicate, rollout=rollout)
                return
            watching = watching_promoted(
                rollout.phase, rollout.step_started_at, now or _now(), promoted_watch
            )
            decision = apply_evidence(
                rollout.phase,
                rollout.ledger,
                rollout.rollback_requested,
                entries,
                limits,
                keep=keep,
                watching_promoted=watching,
            )
            written_at = _now()
            if marker_ref is not None:
                txn.create(
                    marker_ref,
                    {
                        "applied_at": written_at,
                        "outcome": decision.outcome.value,
                        EXPIRES_AT: written_at + MARKER_TTL,
                    },
                )
            request = dict(rollback_request(decision)) if decision.request_rollback else None
            result.update(decision=decision, rollout=rollout, request=request)
            if decision.outcome in (Outcome.NOT_RUNNING, Outcome.UNCHANGED):
                return
            update: dict[str, Any] = {"ledger": _ledger_doc(decision.ledger), "updated_at": written_at}
            changed = [
                {"minute": minute_key(e.minute), "rule": e.rule, **e.as_doc()} for e in decision.changed
            ]
            history_key = hashlib.sha256(repr((source, changed)).encode()).hexdigest()[:40]
            self._decision(
                txn,
                rid,
                "evidence",
                {
                    "source": source,
                    "event_id": event_id or None,
                    "outcome": decision.outcome.value,
                    "message": decision.reason,
                    "entries": changed,
                },
                key=f"ev-{history_key}",
            )
            if request is not None:
                assert decision.trip is not None
                update |= {"rollback_requested": True, "rollback_request": request}
                self._decision(
                    txn,
                    rid,
                    "rollback_requested",
                    {
                        "rule": decision.trip.rule,
                        "message": decision.reason,
                        "event_id": event_id or None,
                        "minutes": [minute_key(e.minute) for e in decision.trip.tripped],
                        "evidence": [e.describe() for e in decision.trip.tripped],
                    },
                    key=f"req-{rid}",
                )
            txn.update(rollout_ref, update)

        try:
            self._transact(rid, txn_body)
        except gexc.Conflict:
            # The marker was created by a concurrent delivery after our read: that one applied it.
            return self.apply_evidence(
                rid,
                entries,
                limits,
                rollback_request,
                keep=keep,
                event_id=event_id,
                source=source,
                now=now,
                promoted_watch=promoted_watch,
            )
        if not result:
            return None
        decision: EvidenceDecision = result["decision"]
        rollout: Rollout = result["rollout"]
        if decision.outcome not in (Outcome.NOT_RUNNING, Outcome.DUPLICATE):
            # what the transaction wrote, without reading it back
            rollout = replace(
                rollout,
                ledger=decision.ledger,
                rollback_requested=rollout.rollback_requested or decision.request_rollback,
                rollback_request=result.get("request") or rollout.rollback_request,
            )
        return decision, rollout

    def request_rollback(
        self, rid: str, request: Mapping[str, Any], *, rule: str, message: str
    ) -> Rollout | None:
        """Request a rollback that is not a rule's trip (the end-of-soak NO_GO), once per rollout:
        stored with the rollout (the outbox), in the same transaction as its history entry. None:
        the rollout no longer serves its canary, or a rollback was requested already."""
        rollout_ref = self._rollout_ref(rid)
        found: dict[str, Rollout] = {}

        def txn_body(txn: firestore.Transaction) -> None:
            found.clear()
            snap = rollout_ref.get(transaction=txn)
            if not snap.exists:
                return
            rollout = Rollout.from_doc(rid, snap.to_dict())
            if not allows(rollout.phase, Action.REQUEST_ROLLBACK) or rollout.rollback_requested:
                return
            txn.update(
                rollout_ref,
                {"rollback_requested": True, "rollback_request": dict(request), "updated_at": _now()},
            )
            self._decision(
                txn, rid, "rollback_requested", {"rule": rule, "message": message}, key=f"req-{rid}"
            )
            found["rollout"] = replace(rollout, rollback_requested=True, rollback_request=dict(request))

        self._transact(rid, txn_body)
        return found.get("rollout")

    def mark_rollback_published(self, rid: str, message_id: str) -> None:
        now = _now()
        self._rollout_ref(rid).update(
            {
                "rollback_published": True,
                "rollback_message_id": message_id,
                "rollback_published_at": now,
                "updated_at": now,
            }
        )

    def record_redrive(self, rid: str, message_id: str, *, at: datetime) -> None:
        """A checkpoint re-sent an unfinished rollback (its count drives the backoff)."""
        self._rollout_ref(rid).update(
            {"redrive_count": firestore.Increment(1), "redrive_at": at, "updated_at": _now()}
        )
        self.record(
            rid,
            "rollback_redriven",
            {"message": "rollback not finished: request re-sent", "message_id": message_id},
        )

    def set_phase(
        self,
        rid: str,
        phase: Phase,
        kind: str,
        data: Mapping[str, Any],
        *,
        only_from: set[Phase],
        marker: RollbackMarker | None = None,
    ) -> bool:
        """Move to `phase` if the rollout is currently in `only_from`; record it. False: not moved.

        `marker` (the rollback request carried out) is written in the same transaction, moved or
        not: a redelivery of that request then never sees the phase change without it."""
        rollout_ref = self._rollout_ref(rid)

        def txn_body(txn: firestore.Transaction) -> bool:
            snap = rollout_ref.get(transaction=txn)
            if marker is not None:
                txn.set(self._marker_ref(marker.message_id), marker.as_doc(_now()))
            if not snap.exists or Phase(snap.get("phase")) not in only_from:
                return False
            txn.update(rollout_ref, {"phase": phase.value, "updated_at": _now()})
            self._decision(txn, rid, kind, data)
            return True

        return self._transact(rid, txn_body)

    def record(
        self, rid: str, kind: str, data: Mapping[str, Any], *, marker: RollbackMarker | None = None
    ) -> None:
        """Append a history entry outside any state change (dry runs, no-ops, load tests), with
        `marker` (a rollback request carried out) in the same batch."""
        now = _now()
        batch = self._db.batch()
        self._batch_decision(batch, rid, kind, now, data)
        if marker is not None:
            batch.set(self._marker_ref(marker.message_id), marker.as_doc(now))
        self._commit(batch)

    def record_checkpoint(self, rid: str, verdict: Mapping[str, Any], decision: Mapping[str, Any]) -> None:
        """The last verdict on the rollout (what `status` shows) plus its history entry."""
        self._record_latest(rid, "last_verdict", "checkpoint", {**verdict, **decision})

    def note_synthetic_traffic(self, rid: str, run_id: str, traffic: SyntheticTraffic) -> None:
        """When a load test run hits the canary (before it starts: until its deadline), by run.
        `run_id` must be a plain field name (letters, digits, _), e.g. "run_" + a uuid's hex."""
        self._rollout_ref(rid).update(_synthetic_entry(run_id, traffic))

    def record_load_test(
        self,
        rid: str,
        record: Mapping[str, Any],
        synthetic: tuple[str, SyntheticTraffic] | None = None,
    ) -> None:
        """The last load test / probe result on the rollout plus its history entry, and when the
        run (by id) hit the canary: checkpoints leave those minutes out of its request metrics."""
        extra = _synthetic_entry(*synthetic) if synthetic else {}
        self._record_latest(rid, "last_load_test", "load_test", record, extra)

    def _record_latest(
        self,
        rid: str,
        field_name: str,
        kind: str,
        data: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        now = _now()
        rollout_ref = self._rollout_ref(rid)
        batch = self._db.batch()
        batch.update(rollout_ref, {field_name: {"at": now, **data}, "updated_at": now, **(extra or {})})
        self._batch_decision(batch, rid, kind, now, data)
        self._commit(batch)

    def step_change_allowed(self, rid: str, from_percent: int, *, respect_pause: bool = True) -> bool:
        """Still RUNNING at `from_percent` with no rollback requested (and not paused, for the
        scheduler): read before each traffic write of a step change, so a rollback or a pause
        that started meanwhile wins."""
        rollout = self.get(rid)
        return bool(
            rollout
            and allows(rollout.phase, Action.STEP)
            and not rollout.rollback_requested
            and rollout.canary_percent == from_percent
            and not (respect_pause and rollout.paused)
        )

    def commit_step(
        self,
        rid: str,
        from_percent: int,
        to_percent: int,
        *,
        by: str,
        reason: str,
        now: datetime | None = None,
    ) -> bool:
        """Record a step change that Cloud Run already applied. False: the rollout left RUNNING or
        a rollback was requested meanwhile (the rollback then owns the traffic)."""
        rollout_ref = self._rollout_ref(rid)
        at = now or _now()

        def txn_body(txn: firestore.Transaction) -> bool:
            snap = rollout_ref.get(transaction=txn)
            if not snap.exists:
                return False
            rollout = Rollout.from_doc(rid, snap.to_dict())
            promoted = to_percent == 100
            step = transition(rollout.phase, Action.PROMOTE if promoted else Action.STEP)
            if not step.allowed or rollout.rollback_requested or rollout.canary_percent != from_percent:
                return False
            update: dict[str, Any] = {
                "canary_percent": to_percent,
                "step_started_at": at,
                "updated_at": _now(),
            }
            if step.to is not None:
                update["phase"] = step.to.value
            txn.update(rollout_ref, update)
            self._decision(
                txn,
                rid,
                "promoted" if promoted else "step",
                {"message": reason, "from_percent": from_percent, "to_percent": to_percent, "by": by},
            )
            return True

        return self._transact(rid, txn_body)

    def set_paused(self, rid: str, paused: bool, *, by: str, reason: str) -> bool:
        """Pause or resume a RUNNING rollout (the scheduler never advances a paused one). Resuming
        a FROZEN one is the release owner's call to try again: RUNNING, with a fresh step clock
        (its soak and progress deadline start over)."""
        rollout_ref = self._rollout_ref(rid)

        def txn_body(txn: firestore.Transaction) -> bool:
            snap = rollout_ref.get(transaction=txn)
            if not snap.exists:
                return False
            move = transition(Phase(snap.get("phase")), Action.PAUSE if paused else Action.RESUME)
            if not move.allowed:
                return False
            if move.to is not None:  # a FROZEN one resumed: ramping again, with a fresh step clock
                if snap.get("rollback_requested"):
                    return False
                now = _now()
                update = {"phase": move.to.value, "paused": False, "step_started_at": now, "updated_at": now}
                txn.update(rollout_ref, update)
                self._decision(txn, rid, "unfrozen", {"message": reason, "by": by})
                return True
            txn.update(rollout_ref, {"paused": paused, "updated_at": _now()})
            self._decision(txn, rid, "paused" if paused else "resumed", {"message": reason, "by": by})
            return True

        return self._transact(rid, txn_body)
