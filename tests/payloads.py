"""Builders for real-schema test payloads: Cloud Monitoring incidents (schema 1.2), the CloudEvent
data that carries them (Eventarc's shape and the functions-framework-from-emulator-push shape),
the raw Pub/Sub push body, binary-mode CloudEvent headers, rollback requests and bearer tokens.

Every builder takes keyword overrides. `DROP` as an override value removes that key, so the
malformed-payload catalogue can start from a valid incident and take one thing away:

    incident_message(rule="memory", state="closed", resource_labels={"revision_name": DROP})
    cloudevent_data(incident_message(), message_id="42", shape="push")

Field names and casing follow ../shared/GCP_NOTES.md: snake_case at the incident's top level,
camelCase inside `condition`; `threshold_value` / `observed_value` are strings; `started_at` /
`ended_at` are unix seconds (`ended_at` null while open).
"""

from __future__ import annotations

import base64
import itertools
import json
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

DROP: Any = object()  # an override value that removes the key

PROJECT = "demo-project"
PROJECT_NUMBER = 123456789012
LOCATION = "europe-west1"
SERVICE = "shop"
STABLE_REVISION = "shop-00001-abc"
CANARY_REVISION = "shop-00002-xyz"
SERVICE_NAME = f"projects/{PROJECT}/locations/{LOCATION}/services/{SERVICE}"
ALERTS_TOPIC = "canary-alerts"
ROLLBACK_TOPIC = "canary-rollback-requests"
PUBSUB_MESSAGE_TYPE = "type.googleapis.com/google.pubsub.v1.PubsubMessage"
MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
BASE_TIME = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)

# Per rule: metric type, the policy's rollback threshold (as Monitoring sends it: a string), a
# breaching observed value, the comparison and a display name.
RULES: dict[str, dict[str, str]] = {
    "error_rate": {
        "metric": "run.googleapis.com/request_count",
        "threshold": "0.01",
        "observed": "0.052",
        "display": "Canary 5xx ratio above 1%",
    },
    "latency_p95": {
        "metric": "run.googleapis.com/request_latencies",
        "threshold": "500",
        "observed": "812.5",
        "display": "Canary P95 latency above 500 ms",
    },
    "memory": {
        "metric": "run.googleapis.com/container/memory/utilizations",
        "threshold": "0.85",
        "observed": "0.93",
        "display": "Canary memory utilisation above 85%",
    },
    "canary_down": {
        "metric": "run.googleapis.com/request_count",
        "threshold": "1",
        "observed": "3",
        "display": "Canary not serving",
    },
}

_ids = itertools.count(1)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`base` updated with `overrides`; a `DROP` value removes the key."""
    merged = dict(base)
    for key, value in (overrides or {}).items():
        if value is DROP:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def iso(moment: datetime) -> str:
    """RFC 3339 with a Z suffix and milliseconds, as Pub/Sub writes publishTime."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def at(seconds: float = 0) -> datetime:
    """BASE_TIME + `seconds` (aware, UTC)."""
    return BASE_TIME + timedelta(seconds=seconds)


def incident(
    *,
    rule: str | None = "error_rate",
    state: str = "open",
    revision: str = CANARY_REVISION,
    service: str = SERVICE,
    location: str = LOCATION,
    project: str = PROJECT,
    scoping_project: str = PROJECT,
    incident_id: str | None = None,
    started_at: int | None = None,
    ended_at: int | None = None,
    observed_value: str | None = None,
    threshold_value: str | None = None,
    policy_name: str | None = None,
    resource_labels: Mapping[str, Any] | None = None,
    user_labels: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One incident object (schema 1.2) for a Cloud Run revision.

    `rule=None` leaves out the `canary_rule` policy label. `resource_labels` / `user_labels` are
    merged into the resource labels / policy user labels; any other keyword replaces (or, with
    DROP, removes) a top-level incident field.
    """
    # DROP on a named field removes it like any other override.
    named = {
        "incident_id": incident_id,
        "state": state,
        "started_at": started_at,
        "ended_at": ended_at,
        "observed_value": observed_value,
        "threshold_value": threshold_value,
        "policy_name": policy_name,
    }
    fields = {**{key: DROP for key, value in named.items() if value is DROP}, **fields}
    incident_id, started_at, ended_at, observed_value, threshold_value, policy_name = (
        None if value is DROP else value
        for value in (incident_id, started_at, ended_at, observed_value, threshold_value, policy_name)
    )
    spec = RULES.get(rule or "", RULES["error_rate"])
    started = int(at().timestamp()) if started_at is None else started_at
    if ended_at is None and str(state).lower() == "closed" and isinstance(started, int | float):
        ended_at = int(started) + 300
    iid = incident_id or f"0.{next(_ids):06d}abcdef"
    policy_id = f"{zlib.crc32((rule or '').encode()):019d}"
    labels = _merge(
        {"service_name": service, "revision_name": revision, "location": location, "project_id": project},
        resource_labels,
    )
    policy_labels = _merge(
        {"canary_rule": rule, "managed_by": "canary-guard"}
        if rule is not None
        else {"managed_by": "canary-guard"},
        user_labels,
    )
    threshold = spec["threshold"] if threshold_value is None else threshold_value
    body: dict[str, Any] = {
        "incident_id": iid,
        "scoping_project_id": scoping_project,
        "scoping_project_number": PROJECT_NUMBER,
        "url": f"https://console.cloud.google.com/monitoring/alerting/incidents/{iid}?project={scoping_project}",
        "severity": "Critical" if rule == "canary_down" else "Error",
        "started_at": started,
        "ended_at": ended_at,
        "state": state,
        "summary": f"{spec['display']} for {revision} ({state}).",
        "apigee_url": "",
        "observed_value": spec["observed"] if observed_value is None else observed_value,
        "resource": {"type": "cloud_run_revision", "labels": labels},
        "resource_type_display_name": "Cloud Run Revision",
        "resource_id": "",
        "resource_display_name": revision,
        "resource_name": f"{scoping_project} Cloud Run Revision labels "
        f"{{service_name={service}, revision_name={revision}, location={location}}}",
        "metric": {
            "type": spec["metric"],
            "displayName": spec["display"],
            "labels": {"response_code_class": "5xx"} if rule == "error_rate" else {},
        },
        "metadata": {"system_labels": {}, "user_labels": {}},
        "policy_name": policy_name if policy_name is not None else f"canary-{rule or 'unlabelled'}",
        "policy_user_labels": policy_labels,
        "documentation": {
            "content": f"canary-guard rule {rule}",
            "mime_type": "text/markdown",
            "subject": spec["display"],
        },
        "condition": {
            "name": f"projects/{scoping_project}/alertPolicies/{policy_id}/conditions/1",
            "displayName": spec["display"],
            "conditionThreshold": {
                "filter": f'metric.type="{spec["metric"]}" AND resource.type="cloud_run_revision"',
                "comparison": "COMPARISON_GT",
                "thresholdValue": float(threshold) if _is_number(threshold) else threshold,
                "duration": "60s",
                "trigger": {"count": 1},
                "aggregations": [{"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_RATE"}],
            },
        },
        "condition_name": spec["display"],
        "threshold_value": threshold,
    }
    return _merge(body, fields)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def incident_message(*, version: Any = "1.2", **incident_kwargs: Any) -> dict[str, Any]:
    """The notification body Cloud Monitoring publishes: {"version": "1.2", "incident": {...}}.

    `version=DROP` removes the version; other keywords go to `incident()`.
    """
    body = {"version": version, "incident": incident(**incident_kwargs)}
    return _merge(body, {"version": DROP} if version is DROP else None)


def grouped_incident_message(
    *group_by: str, canary_service: str | None = SERVICE, **incident_kwargs: Any
) -> dict[str, Any]:
    """The notification of a metric policy whose cross-series reducer groups by the resource
    labels `group_by` only: Monitoring aggregates the others away, so the incident's resource
    labels are those (and project_id). `canary_service` is the policy user label Terraform
    sets (None leaves it out); other keywords go to `incident()`."""
    body = incident_message(**incident_kwargs)
    incident = body["incident"]
    labels = incident["resource"]["labels"]
    incident["resource"]["labels"] = {k: v for k, v in labels.items() if k in group_by or k == "project_id"}
    if canary_service is not None:
        incident["policy_user_labels"]["canary_service"] = canary_service
    return body


def console_test_notification() -> dict[str, Any]:
    """What the console's "send test notification" publishes (version "test", upper-case state)."""
    return {
        "version": "test",
        "incident": {
            "incident_id": "12345",
            "scoping_project_id": PROJECT,
            "scoping_project_number": PROJECT_NUMBER,
            "url": "http://www.example.com",
            "started_at": 0,
            "ended_at": 0,
            "state": "OPEN",
            "summary": "Test Incident",
            "resource": {"type": "example_resource", "labels": {"example": "label_value"}},
            "policy_name": "projects/demo-project/alertPolicies/12345",
            "policy_user_labels": {"user-label-1": "important label"},
            "condition_name": "test condition",
            "threshold_value": "0.5",
            "observed_value": "1.0",
        },
    }


def encode(payload: Any) -> str:
    """Pub/Sub `data`: base64 of bytes, of a str (UTF-8), or of any other value as JSON."""
    if isinstance(payload, bytes):
        raw = payload
    elif isinstance(payload, str):
        raw = payload.encode()
    else:
        raw = json.dumps(payload).encode()
    return base64.b64encode(raw).decode("ascii")


def pubsub_message(
    payload: Any,
    *,
    message_id: str = "1000",
    publish_time: datetime | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    keys: Literal["camel", "snake"] = "camel",
    **fields: Any,
) -> dict[str, Any]:
    """A Pub/Sub message object as JSON ({"data", "attributes", "messageId", "publishTime"})."""
    when = iso(BASE_TIME) if publish_time is None else publish_time
    when = iso(when) if isinstance(when, datetime) else when
    id_key, time_key = ("messageId", "publishTime") if keys == "camel" else ("message_id", "publish_time")
    message = {
        "data": encode(payload),
        "attributes": dict(attributes)
        if isinstance(attributes, Mapping)
        else ({} if attributes is None else attributes),
        id_key: message_id,
        time_key: when,
    }
    return _merge(message, fields)


def cloudevent_data(
    payload: Any,
    *,
    message_id: str = "1000",
    publish_time: datetime | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    shape: Literal["eventarc", "push"] = "eventarc",
    keys: Literal["camel", "snake"] = "camel",
    subscription: str | None = None,
    topic: str = ALERTS_TOPIC,
    project: str = PROJECT,
    **message_fields: Any,
) -> dict[str, Any]:
    """The `data` of a messagePublished CloudEvent carrying `payload`.

    shape="eventarc": {"subscription": "projects/P/subscriptions/S", "message": {...}} (what a
    2nd-gen function gets in GCP). shape="push": what functions-framework builds from a Pub/Sub
    emulator push to /projects/P/topics/T: {"message": {"@type", "data", "attributes",
    "messageId", "publishTime"}} with no subscription. `message_fields` override (or DROP) keys
    of the message object.
    """
    message = pubsub_message(
        payload, message_id=message_id, publish_time=publish_time, attributes=attributes, keys=keys
    )
    if shape == "push":
        message = {"@type": PUBSUB_MESSAGE_TYPE, **message}
        return {"message": _merge(message, message_fields)}
    if shape != "eventarc":
        raise ValueError(f"shape must be 'eventarc' or 'push', got {shape!r}")
    sub = subscription or f"projects/{project}/subscriptions/eventarc-{topic}-sub"
    return {"subscription": sub, "message": _merge(message, message_fields)}


def push_body(
    payload: Any,
    *,
    message_id: str = "1000",
    publish_time: datetime | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    subscription: str = f"projects/{PROJECT}/subscriptions/{ALERTS_TOPIC}-push",
) -> dict[str, Any]:
    """The raw body the Pub/Sub emulator POSTs to a push endpoint (no ce-* headers)."""
    return {
        "message": pubsub_message(
            payload, message_id=message_id, publish_time=publish_time, attributes=attributes
        ),
        "subscription": subscription,
    }


def cloudevent_headers(
    *,
    message_id: str = "1000",
    publish_time: datetime | str | None = None,
    topic: str = ALERTS_TOPIC,
    project: str = PROJECT,
) -> dict[str, str]:
    """Binary-mode CloudEvent headers Eventarc sends with `cloudevent_data(..., shape="eventarc")`."""
    when = iso(BASE_TIME) if publish_time is None else publish_time
    return {
        "ce-id": message_id,
        "ce-specversion": "1.0",
        "ce-type": MESSAGE_PUBLISHED,
        "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
        "ce-time": iso(when) if isinstance(when, datetime) else when,
        "Content-Type": "application/json",
    }


def rollback_request(
    *, service: str = SERVICE_NAME, reason: str = "error rate spike", dry_run: bool = False, **fields: Any
) -> dict[str, Any]:
    """A rollback request body (emergency HTTP, or a hand-published message). DROP removes a key."""
    return _merge({}, {"service": service, "reason": reason, "dry_run": dry_run, **fields})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def bearer_token(claims: Any = None, *, raw_payload: bytes | None = None, scheme: str = "Bearer") -> str:
    """An Authorization header value with an (unsigned) JWT whose payload is `claims`.

    `raw_payload` puts arbitrary bytes in the payload segment instead of JSON.
    """
    if claims is None and raw_payload is None:
        claims = {
            "email": "oncall@example.com",
            "sub": "108234567890123456789",
            "aud": "https://example.run.app",
        }
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
    payload = _b64url(raw_payload if raw_payload is not None else json.dumps(claims).encode())
    return f"{scheme} {header}.{payload}.{_b64url(b'signature')}"
