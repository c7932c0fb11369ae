"""The store's at-most-once coordination: the notification outbox (published, claimed by one
delivery at a time, delivered once), the markers of rollback requests carried out, and the
checkpoint lease that keeps two runs from judging one rollout at once."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared.clients.store_base import StoreBase
from shared.clients.store_docs import (
    CHECKPOINT_LEASES,
    EXPIRES_AT,
    MARKER_TTL,
    NOTIFICATION_LEASE,
    NOTIFICATIONS,
    RollbackMarker,
    plain_datetime,
)
from shared.core.notifications import Notification


class CoordinationStore(StoreBase):
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
        self._db.collection(NOTIFICATIONS).document(nid).update(
            {"published": True, "published_at": self._now()}
        )

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
            now = self._now()
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
            {"delivered": True, "delivered_at": self._now(), "lease_until": None}
        )

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
            at=plain_datetime(data.get("at")),
        )

    def mark_rollback_message(self, marker: RollbackMarker) -> None:
        """Record a request carried out without a phase change (`set`: concurrent deliveries of
        one message did the same request, so whichever answer lands last is a true one)."""
        self._marker_ref(marker.message_id).set(marker.as_doc(self._now()))

    # -- checkpoint leases: one run at a time judges a rollout --------------------------------
    def claim_checkpoint(self, rid: str, minute: datetime, *, lease: timedelta) -> Any | None:
        """Take the rollout's checkpoint lease for `minute`: a token for `release_checkpoint`, or
        None while another run holds an unexpired one (its minute is still in flight). A lease
        left by a crashed run expires after `lease` and is taken over."""
        ref = self._db.collection(CHECKPOINT_LEASES).document(rid)
        now = self._now()
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
