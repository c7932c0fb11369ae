"""One JSON object per line on stdout, in the shape Cloud Logging parses.

`severity` and `message` are Cloud Logging's special fields; the rest (rollout, rule,
event_id, ...) become jsonPayload fields that can be filtered on.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

Severity = str  # DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def log(severity: Severity, message: str, *, stream: TextIO | None = None, **fields: Any) -> dict[str, Any]:
    """Write one structured log line and return the entry (handy for responses and tests)."""
    entry: dict[str, Any] = {"severity": severity, "message": message}
    entry.update({key: value for key, value in fields.items() if value is not None})
    line = json.dumps(entry, default=_default, separators=(",", ":"))
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()
    return entry


class Report:
    """What a handler did, as the one log line its entry point writes (and an HTTP body)."""

    def __init__(self, severity: Severity, message: str, **fields: Any) -> None:
        self.severity = severity
        self.message = message
        self.fields = {key: value for key, value in fields.items() if value is not None}

    def emit(self) -> dict[str, Any]:
        return log(self.severity, self.message, **self.fields)

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "message": self.message, **self.fields}
