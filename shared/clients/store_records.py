"""The store's records: a rollout's decision history, and the records that change no phase
(an observation, a checkpoint's verdict, a load test, a published or re-sent rollback)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.cloud import firestore

from shared.clients.store_base import StoreBase
from shared.clients.store_docs import DECISIONS, EXPIRES_AT, RollbackMarker, synthetic_doc
from shared.core.judge import SyntheticTraffic


class RecordsStore(StoreBase):
    def history(self, rid: str, limit: int = 200) -> list[dict[str, Any]]:
        query = (
            self._rollout_ref(rid)
            .collection(DECISIONS)
            .order_by("at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        entries = ({k: v for k, v in snap.to_dict().items() if k != EXPIRES_AT} for snap in query.stream())
        return list(reversed(list(entries)))

    def record(
        self, rid: str, kind: str, data: Mapping[str, Any], *, marker: RollbackMarker | None = None
    ) -> None:
        """Append a history entry outside any state change (dry runs, no-ops, load tests), with
        `marker` (a rollback request carried out) in the same batch."""
        now = self._now()
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
        self._rollout_ref(rid).update(synthetic_doc(run_id, traffic))

    def record_load_test(
        self,
        rid: str,
        record: Mapping[str, Any],
        synthetic: tuple[str, SyntheticTraffic] | None = None,
    ) -> None:
        """The last load test / probe result on the rollout plus its history entry, and when the
        run (by id) hit the canary: checkpoints leave those minutes out of its request metrics."""
        extra = synthetic_doc(*synthetic) if synthetic else {}
        self._record_latest(rid, "last_load_test", "load_test", record, extra)

    def _record_latest(
        self,
        rid: str,
        field_name: str,
        kind: str,
        data: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        now = self._now()
        rollout_ref = self._rollout_ref(rid)
        batch = self._db.batch()
        batch.update(rollout_ref, {field_name: {"at": now, **data}, "updated_at": now, **(extra or {})})
        self._batch_decision(batch, rid, kind, now, data)
        self._commit(batch)

    def record_redrive(self, rid: str, message_id: str, *, at: datetime) -> None:
        """A checkpoint re-sent an unfinished rollback (its count drives the backoff)."""
        self._rollout_ref(rid).update(
            {"redrive_count": firestore.Increment(1), "redrive_at": at, "updated_at": self._now()}
        )
        self.record(
            rid,
            "rollback_redriven",
            {"message": "rollback not finished: request re-sent", "message_id": message_id},
        )
