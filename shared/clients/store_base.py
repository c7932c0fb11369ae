"""The Firestore machinery under the rollout store: the client, the clock, transactions
serialised per rollout and retried under contention, decision records, and the notification
outbox written in the same transaction or batch as its decision."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared import clock
from shared.clients.store_docs import (
    DECISIONS,
    EXPIRES_AT,
    MARKER_TTL,
    NOTIFICATIONS,
    ROLLBACK_MESSAGES,
    ROLLOUTS,
    SERVICES,
    doc_key,
    event_doc_key,
    jsonable,
)
from shared.core.notifications import Notification, should_notify
from shared.logs import log

T = TypeVar("T")

# Concurrent deliveries for one rollout contend on one document. The client re-runs a
# transaction that lost the race (keeping its place in line on Firestore); between such
# rounds we back off with jitter so lock-timeout storms settle, and past the deadline the
# error reaches Pub/Sub, which redelivers.
TXN_ATTEMPTS = 5
TXN_DEADLINE_S = 60.0
TXN_BACKOFF_S = (0.02, 1.0)  # first and largest pause between rounds


class KeyedLocks:
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


_rollout_locks = KeyedLocks()


class StoreError(RuntimeError):
    """Firestore could not take the update now; the caller's event is retried (Pub/Sub redelivers)."""


class StoreContention(StoreError):
    """A transaction kept losing to concurrent writers until its deadline."""


class StoreUnavailable(StoreError):
    """Firestore did not answer within the client's retries."""


class RolloutConflict(RuntimeError):
    """Another rollout of the service is active (one rollout per service at a time)."""


# Called after a write commits with the notifications it enqueued (shared/handlers/notify.py publishes).
NotificationSink = Callable[["StoreBase", Sequence[Notification]], None]


def wall_clock() -> datetime:
    return clock.now()


class StoreBase:
    def __init__(
        self,
        project: str,
        client: firestore.Client | None = None,
        *,
        decision_retention: timedelta | None = None,
        notifications: NotificationSink | None = None,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        """decision_retention: how long a decision record is kept (None: for ever).
        notifications: where the notifications of committed decisions go (None: none are made).
        clock: the time its writes carry (created_at, step starts, decisions): the wall clock;
        a test that needs a rollout's past passes its own."""
        self._db = client or firestore.Client(project=project)
        self._decision_retention = decision_retention
        self._sink = notifications
        self._clock = clock
        self._queued = threading.local()  # the notifications of the write under way, per thread

    def _now(self) -> datetime:
        return self._clock()

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
        note = Notification(decision_id, rid, kind, now.isoformat(), jsonable(dict(data)))
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

    # -- reads ---------------------------------------------------------------------------
    def _rollout_ref(self, rid: str) -> firestore.DocumentReference:
        return self._db.collection(ROLLOUTS).document(rid)

    def _service_ref(self, service_name: str) -> firestore.DocumentReference:
        return self._db.collection(SERVICES).document(doc_key(service_name))

    def _marker_ref(self, message_id: str) -> firestore.DocumentReference:
        return self._db.collection(ROLLBACK_MESSAGES).document(event_doc_key(message_id))

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
        ref = decisions.document(event_doc_key(key)) if key else decisions.document()
        now = self._now()
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
