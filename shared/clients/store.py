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

RolloutStore is made of parts. This module holds what an alert's path uses, end to end: the
reads, registration (the first event of a canary), the evidence ledger's transaction (a batch of
judged minutes merged, the trip checked and, at a rule's limit, the rollback request stored with
the rollout, the outbox, in the same transaction), the rollback request that is not a trip (the
end-of-soak NO_GO) and its publication. The rest, one concern each: store_phases.py (the phase
moves after registration: roll back, step, pause), store_coordination.py (outbox delivery,
rollback markers, checkpoint leases), store_records.py (history and records); underneath,
store_base.py (the client, the transaction runner, the outbox write) and store_docs.py (the
documents as plain values).

The dedupe markers carry `expires_at` (MARKER_TTL after they are written) and the decisions
`expires_at` when a retention is configured: Firestore's TTL policy on that field
(terraform/firestore.tf) deletes them after it. Rollouts and service pointers stay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared.clients.store_base import (
    KeyedLocks,
    NotificationSink,
    RolloutConflict,
    StoreContention,
    StoreError,
    StoreUnavailable,
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
    doc_key,
    event_doc_key,
    ledger_doc,
    rollout_id,
)
from shared.clients.store_phases import PhaseStore
from shared.clients.store_records import RecordsStore
from shared.core.evidence import Evidence, minute_key
from shared.core.ledger import EvidenceDecision, Outcome, Phase, apply_evidence, watching_promoted
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
    "KeyedLocks",
    "NotificationSink",
    "RollbackMarker",
    "Rollout",
    "RolloutConflict",
    "RolloutStore",
    "StoreContention",
    "StoreError",
    "StoreUnavailable",
    "rollout_id",
    "wall_clock",
]


class RolloutStore(PhaseStore, CoordinationStore, RecordsStore):
    """The rollouts and every transition of their phase, each inside a transaction."""

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
        rids = {name: by_key.get(doc_key(name)) for name in service_names}
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
            supersede = transition(previous.phase, Action.SUPERSEDE) if previous is not None else None
            if previous is not None and supersede is not None and supersede.allowed:
                if refuse_if_active:
                    raise RolloutConflict(
                        f"{service_name} already has an active rollout of {previous.canary_revision} "
                        f"({previous.phase}); roll it back or promote it first"
                    )
                txn.update(
                    self._rollout_ref(previous.id),
                    {"phase": (supersede.to or previous.phase).value, "updated_at": self._now()},
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
        marker_ref = rollout_ref.collection(APPLIED).document(event_doc_key(event_id)) if event_id else None
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
                rollout.phase, rollout.step_started_at, now or self._now(), promoted_watch
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
            written_at = self._now()
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
            update: dict[str, Any] = {"ledger": ledger_doc(decision.ledger), "updated_at": written_at}
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
                {"rollback_requested": True, "rollback_request": dict(request), "updated_at": self._now()},
            )
            self._decision(
                txn, rid, "rollback_requested", {"rule": rule, "message": message}, key=f"req-{rid}"
            )
            found["rollout"] = replace(rollout, rollback_requested=True, rollback_request=dict(request))

        self._transact(rid, txn_body)
        return found.get("rollout")

    def mark_rollback_published(self, rid: str, message_id: str) -> None:
        now = self._now()
        self._rollout_ref(rid).update(
            {
                "rollback_published": True,
                "rollback_message_id": message_id,
                "rollback_published_at": now,
                "updated_at": now,
            }
        )
