"""Publishing JSON messages to Pub/Sub (the emulator is found through PUBSUB_EMULATOR_HOST)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

PUBLISH_TIMEOUT_S = 30.0


class Publisher:
    def __init__(self, project: str) -> None:
        self._project = project
        self._client: pubsub_v1.PublisherClient | None = None  # built on first publish

    @property
    def client(self) -> pubsub_v1.PublisherClient:
        if self._client is None:
            from google.cloud import pubsub_v1  # only when something is published (cold start)

            self._client = pubsub_v1.PublisherClient()
        return self._client

    def publish_json(
        self,
        topic_id: str,
        payload: Mapping[str, Any],
        *,
        timeout_s: float = PUBLISH_TIMEOUT_S,
        **attributes: str,
    ) -> str:
        """Publish and wait (at most timeout_s) for the server's message id; raises if Pub/Sub
        did not take it."""
        topic = self.client.topic_path(self._project, topic_id)
        return self.client.publish(topic, encode_json(payload), **attributes).result(timeout=timeout_s)

    def publish_many(
        self, topic_id: str, datas: Sequence[bytes], *, timeout_s: float = PUBLISH_TIMEOUT_S
    ) -> list[str]:
        """Publish messages already encoded (`encode_json`) all at once (the client batches
        them), then wait for every message id; raises the first failure after all were tried."""
        topic = self.client.topic_path(self._project, topic_id)
        futures = [self.client.publish(topic, data) for data in datas]
        return [future.result(timeout=timeout_s) for future in futures]


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """A message's data: compact JSON, datetimes and other values as strings."""
    return json.dumps(payload, default=str, separators=(",", ":")).encode()
