"""Chat notifications (Slack-compatible incoming webhook). Optional and best effort: a failed
delivery is logged and never blocks a rollback or a step."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from shared.logs import log

TIMEOUT_S = 5.0


class Notifier:
    def __init__(self, webhook_url: str | None) -> None:
        self._url = webhook_url

    def send(self, text: str, **fields: Any) -> bool:
        """Post `text` (and the fields as a compact attachment). True when the webhook took it."""
        if not self._url:
            return False
        body: dict[str, Any] = {"text": text}
        if fields:
            rows = [{"title": key, "value": str(value), "short": True} for key, value in fields.items()]
            body["attachments"] = [{"fields": rows}]
        request = urllib.request.Request(
            self._url,
            data=json.dumps(body, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log("WARNING", f"chat notification not delivered: {exc}", notification=text)
            return False
