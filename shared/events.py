"""Decoding: CloudEvent → Pub/Sub message → alert incident or rollback request.

Everything here is pure. Anything that cannot be turned into a valid observation or request
raises `MalformedEvent` with a reason the entry point logs before acknowledging the message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.core.ledger import Kind, Observation
from shared.policy import RULE_NAMES

# The cloud_run_revision resource labels that name a revision's service in full. The alert
# policies group by all three (terraform/monitoring.tf): a cross-series reducer drops every
# resource label it does not group by, and the incident carries only what is left.
REVISION_LABELS: tuple[str, ...] = ("service_name", "revision_name", "location")


class MalformedEvent(ValueError):
    """The event can never be processed; acknowledge it and log the reason."""


class TooLarge(MalformedEvent):
    """The payload is over its size limit (HTTP callers get a 413)."""


# Limits of the decode boundary (README, "Hostile input"): what no real alert, rollback request
# or operator call comes near, and what keeps every stored field inside Firestore's limits.
MAX_PAYLOAD_BYTES = 256 * 1024  # a decoded Pub/Sub message's data, or an HTTP body
MAX_JSON_DEPTH = 32  # a real incident nests 5 levels deep
MAX_FIELD_CHARS = 512  # a string copied from an event into a record (longer: cut, marked)
MAX_EXCERPT_CHARS = 200  # of a malformed payload, in its log line


def bounded(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    """A string cut to `limit` characters (marked as cut); anything else unchanged."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"…[{len(value) - limit} more]"
    return value


def excerpt(raw: bytes | str) -> str:
    """A bounded, printable excerpt of a payload for a log line."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return bounded(text, MAX_EXCERPT_CHARS)


def _depth(text: str) -> int:
    """The deepest nesting of JSON arrays/objects in `text`, strings skipped (a cheap scan that
    runs before the parser, whose recursion a hostile payload could otherwise exhaust)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(raw: bytes | str, what: str) -> Any:
    """JSON within the boundary's limits, else MalformedEvent (TooLarge) saying what to fix."""
    size = len(raw)
    if size > MAX_PAYLOAD_BYTES:
        raise TooLarge(f"{what} is {size} bytes, over the {MAX_PAYLOAD_BYTES} byte limit")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"{what} is not JSON (not UTF-8): {exc}") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise MalformedEvent(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(f"{what} is not JSON: {bounded(str(exc), 200)}") from None


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    publish_time: datetime
    data: bytes
    attributes: Mapping[str, str]

    def json(self) -> Any:
        return parse_json(self.data, "message data")


def parse_time(value: Any) -> datetime:
    """RFC 3339 string or unix seconds → aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise MalformedEvent(f"time {value!r} is out of range") from None
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedEvent(f"time {value!r} is not RFC 3339") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise MalformedEvent(f"time {value!r} is missing or not a timestamp")


def pubsub_message(data: Any, *, fallback_id: str = "", fallback_time: str = "") -> PubSubMessage:
    """The Pub/Sub message inside a CloudEvent's data.

    Accepts Eventarc's shape ({"subscription", "message": {...}}) and the shape
    functions-framework builds from a Pub/Sub emulator push ({"message": {"@type", ...}}),
    with camelCase or snake_case keys.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise MalformedEvent("event data has no Pub/Sub 'message' object")
    message = data["message"]
    message_id = str(message.get("messageId") or message.get("message_id") or fallback_id)
    if not message_id:
        raise MalformedEvent("Pub/Sub message has no messageId")
    if len(message_id) > MAX_FIELD_CHARS:
        raise MalformedEvent(f"Pub/Sub messageId is {len(message_id)} characters long: not a Pub/Sub id")
    publish_time = parse_time(message.get("publishTime") or message.get("publish_time") or fallback_time)
    raw = message.get("data") or ""
    try:
        payload = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
    except (binascii.Error, ValueError):
        raise MalformedEvent("message data is not valid base64") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise MalformedEvent("message attributes are not an object")
    return PubSubMessage(message_id, publish_time, payload, dict(attributes))


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class IncidentResource(_Lenient):
    type: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class Incident(_Lenient):
    """The parts of a Cloud Monitoring incident (schema 1.2) canary-guard reads."""

    incident_id: str
    state: str
    scoping_project_id: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    resource: IncidentResource = Field(default_factory=IncidentResource)
    policy_name: str = ""
    policy_user_labels: dict[str, str] = Field(default_factory=dict)
    condition_name: str = ""
    threshold_value: str | None = None
    observed_value: str | None = None
    summary: str = ""
    url: str = ""

    @field_validator(
        "incident_id",
        "policy_name",
        "condition_name",
        "threshold_value",
        "observed_value",
        "summary",
        "url",
        mode="before",
    )
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        return bounded(value)

    @field_validator("state")
    @classmethod
    def _state(cls, value: str) -> str:
        value = value.lower()
        if value not in ("open", "closed"):
            raise ValueError(f"state {value!r} is neither open nor closed")
        return value


@dataclass(frozen=True)
class AlertObservation:
    """An incident notification resolved to a watched service, revision and rule."""

    # projects/P/locations/L/services/S, or a short name (the incident names no location, or
    # no revision): the caller resolves it among the watched services, refusing an ambiguous one.
    service_name: str
    revision: str  # "" when the incident names no revision: the service's live canary
    observation: Observation
    incident_id: str


def decode_alert(message: PubSubMessage, default_project: str) -> AlertObservation:
    body = message.json()
    if not isinstance(body, Mapping):
        raise MalformedEvent("alert payload is not a JSON object")
    version = str(body.get("version", ""))
    if version.lower() == "test":
        raise MalformedEvent("test notification from Cloud Monitoring (version 'test')")
    if version != "1.2":
        raise MalformedEvent(f"unsupported incident schema version {version!r} (expected '1.2')")
    try:
        incident = Incident.model_validate(body.get("incident"))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'incident'}: {e['msg']}" for e in exc.errors()
        )
        raise MalformedEvent(f"incident is invalid: {problems}") from None

    rule = incident.policy_user_labels.get("canary_rule", "")
    if rule not in RULE_NAMES:
        raise MalformedEvent(
            f"alert policy {incident.policy_name or '?'} has canary_rule={rule!r}; "
            f"expected one of {', '.join(RULE_NAMES)}"
        )
    service_name, revision = _incident_service(incident, default_project)
    observation = Observation(
        rule=rule,
        kind=Kind.BREACH if incident.state == "open" else Kind.RECOVERY,
        event_time=message.publish_time,
        event_id=message.message_id,
        source="alert",
        detail={
            "incident_id": incident.incident_id,
            "state": incident.state,
            "observed_value": incident.observed_value,
            "threshold_value": incident.threshold_value,
            "policy": incident.policy_name,
            "incident_started_at": (
                datetime.fromtimestamp(incident.started_at, UTC) if incident.started_at else None
            ),
        },
    )
    return AlertObservation(service_name, revision, observation, incident.incident_id)


def _incident_service(incident: Incident, default_project: str) -> tuple[str, str]:
    """(service name, revision) an incident is about; see AlertObservation."""
    labels = incident.resource.labels
    missing = [key for key in REVISION_LABELS if not labels.get(key)]
    labelled_service = incident.policy_user_labels.get("canary_service", "")
    revision = labels.get("revision_name", "")
    if not revision:
        if "revision_name" not in labels and labelled_service:
            # An uptime-check incident (canary_down) is about the checked URL, not a revision: the
            # policy names the service, and the observation is about its live canary.
            return labelled_service, ""
        raise MalformedEvent(f"incident resource lacks label(s) {', '.join(missing)}")
    # A policy that aggregated service_name / location away still names its service in the
    # canary_service label Terraform sets.
    service = labels.get("service_name") or labelled_service
    if not service:
        raise MalformedEvent(
            f"incident resource lacks label(s) {', '.join(missing)} and alert policy "
            f"{incident.policy_name or '?'} has no canary_service user label: no service for "
            f"revision {revision}"
        )
    location = labels.get("location")
    if not location:
        return service, revision
    project = labels.get("project_id") or incident.scoping_project_id or default_project
    return f"projects/{project}/locations/{location}/services/{service}", revision


class RollbackRequest(BaseModel):
    """A rollback request: the emergency HTTP body, a hand-published message, or the breach counter's."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    service: str = Field(min_length=1, description="full service name or an unambiguous short name")
    reason: str = Field(min_length=1, max_length=1000)
    dry_run: bool = False
    requested_by: str = ""
    # Set by the breach counter: the canary the request is about and what tripped it.
    canary_revision: str = ""
    rule: str = ""
    trigger_event_id: str = ""
    observations: list[dict[str, Any]] = Field(default_factory=list)


def decode_rollback_request(body: Any) -> RollbackRequest:
    if not isinstance(body, Mapping):
        raise MalformedEvent('rollback request must be a JSON object like {"service": ..., "reason": ...}')
    try:
        return RollbackRequest.model_validate(body)
    except ValidationError as exc:
        raise MalformedEvent(f"invalid rollback request: {_explain(exc)}") from None


def caller_identity(authorization: str | None) -> str:
    """The caller's e-mail (or subject) from the bearer token's claims, else "unknown".

    The platform verified the token before the request reached the function (IAM invoker
    check), so the claims are only read here, not verified again.
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        return "unknown"
    parts = authorization.split(" ", 1)[1].strip().split(".")
    if len(parts) != 3:
        return "unknown"
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return "unknown"
    if not isinstance(claims, Mapping):
        return "unknown"
    return str(claims.get("email") or claims.get("sub") or "unknown")
