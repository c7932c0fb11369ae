"""The evidence ledger's transaction: a batch of judged minutes merged into a rollout's ledger,
the trip checked and, at a rule's limit, the rollback request stored with the rollout (the
outbox) and recorded in its history, all in one Firestore transaction; and the rollback request
that is not a rule's trip (the end-of-soak NO_GO). Part of RolloutStore (shared/clients/store.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared.clients.store_base import StoreBase
from shared.clients.store_docs import APPLIED, EXPIRES_AT, MARKER_TTL, Rollout, _event_key, _ledger_doc
from shared.core.evidence import Evidence, minute_key
from shared.core.ledger import EvidenceDecision, Outcome, apply_evidence, watching_promoted
from shared.core.lifecycle import Action, allows


class EvidenceStore(StoreBase):
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
                {"rollback_requested": True, "rollback_request": dict(request), "updated_at": self._now()},
            )
            self._decision(
                txn, rid, "rollback_requested", {"rule": rule, "message": message}, key=f"req-{rid}"
            )
            found["rollout"] = replace(rollout, rollback_requested=True, rollback_request=dict(request))

        self._transact(rid, txn_body)
        return found.get("rollout")
