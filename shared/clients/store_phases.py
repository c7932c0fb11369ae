"""The rollout's phase transitions after registration: a phase moved (rolling back, rolled
back), a ramp step committed, a pause or resume; each in one Firestore transaction, each asking
the lifecycle table (shared/core/lifecycle.py). Part of RolloutStore (shared/clients/store.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.cloud import firestore

from shared.clients.store_base import StoreBase
from shared.clients.store_docs import RollbackMarker, Rollout
from shared.core.ledger import Phase
from shared.core.lifecycle import Action, allows, transition


class PhaseStore(StoreBase):
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
