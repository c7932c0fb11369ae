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

RolloutStore is made of parts, one concern each: store_base.py (the client, transactions, the
outbox write), store_evidence.py (the evidence ledger's transaction, rollback requests),
store_coordination.py (outbox delivery, rollback markers, checkpoint leases), store_records.py
(history and records) and store_docs.py (the documents as plain values); this module holds the
reads and the lifecycle's transitions (register, phase, step, pause).

The dedupe markers carry `expires_at` (MARKER_TTL after they are written) and the decisions
`expires_at` when a retention is configured: Firestore's TTL policy on that field
(terraform/firestore.tf) deletes them after it. Rollouts and service pointers stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.cloud import firestore

from shared.clients.store_base import (
    NotificationSink,
    RolloutConflict,
    StoreContention,
    StoreError,
    StoreUnavailable,
    _KeyedLocks,
    wall_clock,
)
from shared.clients.store_coordination import CoordinationStore
from shared.clients.store_docs import (
    APPLIED,
    CHECKPOINT_LEASES,
    DECISIONS,
    EXPIRES_AT,
    MARKER_TTL,
    NOTIFICATION_LEASE,
    NOTIFICATIONS,
    ROLLBACK_MESSAGES,
    ROLLOUTS,
    SERVICES,
    RollbackMarker,
    Rollout,
    _key,
    rollout_id,
)
from shared.clients.store_evidence import EvidenceStore
from shared.clients.store_records import RecordsStore
from shared.core.ledger import Phase
from shared.core.lifecycle import Action, allows, transition
from shared.core.traffic import CanarySplit

# Re-exported: callers import these from shared.clients.store.
__all__ = [
    "APPLIED",
    "CHECKPOINT_LEASES",
    "DECISIONS",
    "EXPIRES_AT",
    "MARKER_TTL",
    "NOTIFICATIONS",
    "NOTIFICATION_LEASE",
    "ROLLBACK_MESSAGES",
    "ROLLOUTS",
    "SERVICES",
    "NotificationSink",
    "RollbackMarker",
    "Rollout",
    "RolloutConflict",
    "RolloutStore",
    "StoreContention",
    "StoreError",
    "StoreUnavailable",
    "_KeyedLocks",
    "rollout_id",
    "wall_clock",
]


class RolloutStore(EvidenceStore, CoordinationStore, RecordsStore):
    """The rollouts and every transition of their phase, each inside a transaction (the
    evidence ledger's in shared/clients/store_evidence.py)."""

    def get(self, rid: str) -> Rollout | None:
        snap = self._rollout_ref(rid).get()
        return Rollout.from_doc(snap.id, snap.to_dict()) if snap.exists else None

    def active(self, service_name: str) -> Rollout | None:
        """The service's most recent rollout (whatever its phase), or None."""
        return self.active_many([service_name])[service_name]

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
                    self._rollout_ref(previous.id),
                    {"phase": Phase.SUPERSEDED.value, "updated_at": self._now()},
                )
                self._decision(
                    txn, previous.id, "superseded", {"message": f"superseded by canary {canary_revision}"}
                )
            now = self._now()
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
                txn.set(self._marker_ref(marker.message_id), marker.as_doc(self._now()))
            if not snap.exists or Phase(snap.get("phase")) not in only_from:
                return False
            txn.update(rollout_ref, {"phase": phase.value, "updated_at": self._now()})
            self._decision(txn, rid, kind, data)
            return True

        return self._transact(rid, txn_body)

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
        at = now or self._now()

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
                "updated_at": self._now(),
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
                now = self._now()
                update = {"phase": move.to.value, "paused": False, "step_started_at": now, "updated_at": now}
                txn.update(rollout_ref, update)
                self._decision(txn, rid, "unfrozen", {"message": reason, "by": by})
                return True
            txn.update(rollout_ref, {"paused": paused, "updated_at": self._now()})
            self._decision(txn, rid, "paused" if paused else "resumed", {"message": reason, "by": by})
            return True

        return self._transact(rid, txn_body)
