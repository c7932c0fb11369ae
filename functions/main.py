"""canary-guard Cloud Functions entry points.

Each is a thin adapter: decode the event, call the shared core, write one structured log line,
return. Deployed, this file is the archive's main.py with shared/ beside it; in the repository
it sits in functions/ and the repository root is put on the import path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if not (_HERE / "shared").is_dir():
    sys.path.insert(0, str(_HERE.parent))

import functions_framework  # noqa: E402
from cloudevents.http import CloudEvent  # noqa: E402
from flask import Request  # noqa: E402

from shared import runtime  # noqa: E402
from shared.config import ConfigError  # noqa: E402
from shared.logs import log  # noqa: E402
from shared.policy import PolicyError  # noqa: E402

# Validate configuration and the policy file at start: a bad deploy fails loudly, naming the
# variable, instead of failing on the first alert.
try:
    runtime.settings()
    runtime.policy()
except (ConfigError, PolicyError) as exc:
    log("CRITICAL", f"canary-guard cannot start: {exc}")
    raise


def _json_response(body: dict, status: int) -> tuple[dict, int, dict[str, str]]:
    return body, status, {"Content-Type": "application/json"}


class _NotJson(ValueError):
    pass


class _TooLarge(_NotJson):
    pass


def _json_body(request: Request) -> Any:
    """None for an empty body; the parsed JSON otherwise, whatever the Content-Type (curl -d sends
    form encoding by default). A body that is not JSON, too large or too deeply nested raises
    (the caller answers 400/413): guessing would run the wrong job."""
    from shared.events import MAX_PAYLOAD_BYTES, MalformedEvent, TooLarge, parse_json

    if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
        raise _TooLarge(f"the request body is over the {MAX_PAYLOAD_BYTES} byte limit")
    raw = request.get_data(cache=True)
    if not raw:
        return None
    try:
        return parse_json(raw, "the request body")
    except TooLarge as exc:
        raise _TooLarge(str(exc)) from None
    except MalformedEvent as exc:
        raise _NotJson(str(exc)) from None


def _bad_body(exc: _NotJson, what_to_send: str) -> tuple[dict, int, dict[str, str]]:
    status = 413 if isinstance(exc, _TooLarge) else 400
    return _json_response({"error": f"{exc}: send {what_to_send}"}, status)


def _permanent(exc: Exception) -> bool:
    """A failure that no redelivery can fix: a request Google refused as invalid, forbidden or
    about something that does not exist (a missing grant or topic is fixed by a deploy, and the
    checkpoint re-sends an unfinished rollback after it). Unavailable, aborted, deadline and
    quota errors, and the project's own retried-out faults, are transient."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exceptions

    from shared.clients.cloudrun import ControlPlaneError

    permanent = (
        gexc.InvalidArgument,
        gexc.FailedPrecondition,
        gexc.PermissionDenied,
        gexc.Unauthenticated,
        gexc.NotFound,
        gexc.OutOfRange,
        auth_exceptions.DefaultCredentialsError,  # a deploy without credentials: fixed by a deploy
    )
    if isinstance(exc, ControlPlaneError):
        return exc.status in (400, 401, 403, 404)
    return isinstance(exc, permanent)


@contextmanager
def _logged_failure(entry_point: str, then: str = "will be retried", **ids: Any) -> Iterator[None]:
    """An unexpected fault (Firestore, Cloud Run, Pub/Sub after their retries) leaves one
    structured ERROR line with the event id before it propagates, so a redelivery loop can be
    found by its fields and not only by a traceback. For a Pub/Sub event a permanent failure
    (`_permanent`) is acknowledged instead: redelivering it could only fail again."""
    try:
        yield
    except Exception as exc:
        if "event_id" in ids and _permanent(exc):
            log(
                "ERROR",
                f"{entry_point} failed for good; the event is acknowledged (no redelivery can fix it): "
                f"{exc!r}",
                outcome="dropped",
                **ids,
            )
            return
        outcome = "retry" if "event_id" in ids else "error"  # Pub/Sub redelivers events; HTTP callers decide
        log("ERROR", f"{entry_point} failed and {then}: {exc!r}", outcome=outcome, **ids)
        raise


@functions_framework.cloud_event
def breach_counter(event: CloudEvent) -> None:
    """Alert incident (Pub/Sub) → judge the canary's latest minutes → at a rule's limit, one
    rollback request."""
    from shared.handlers.breach import handle_alert

    with _logged_failure("breach_counter", event_id=event["id"]):
        report = handle_alert(
            event.data,
            event_id=event["id"],
            event_time=event.get("time") or "",
            settings=runtime.settings(),
            policy=runtime.policy(),
            store=runtime.store(),
            publisher=runtime.publisher(),
            traffic_client=runtime.traffic,
            reader=runtime.reader,
        )
        report.emit()


@functions_framework.cloud_event
def rollback(event: CloudEvent) -> None:
    """Rollback request (Pub/Sub) → stable revision at 100 %."""
    from shared.handlers.rollback import handle_rollback_message

    with _logged_failure("rollback", event_id=event["id"]):
        report = handle_rollback_message(
            event.data,
            event_id=event["id"],
            event_time=event.get("time") or "",
            settings=runtime.settings(),
            store=runtime.store(),
            traffic_client=runtime.traffic(),
        )
        report.emit()


@functions_framework.cloud_event
def notify(event: CloudEvent) -> None:
    """Notification (Pub/Sub, NOTIFY_TOPIC) → the chat webhook. A webhook that refuses, stalls or
    answers garbage fails this delivery only: Pub/Sub retries it with backoff."""
    from shared.handlers.notify import handle_notification

    with _logged_failure("notify", event_id=event["id"]):
        report = handle_notification(
            event.data,
            event_id=event["id"],
            event_time=event.get("time") or "",
            settings=runtime.notify_settings(),
            store=runtime.store(),
        )
        report.emit()


@functions_framework.http
def emergency_rollback(request: Request) -> tuple[dict, int, dict[str, str]]:
    """On-call HTTP call: POST {"service", "reason", "dry_run"} → traffic before and after."""
    from shared.handlers.rollback import handle_emergency

    if request.method != "POST":
        return _json_response({"error": "use POST with a JSON body"}, 405)
    example = '{"service": "my-service", "reason": "...", "dry_run": true}'
    try:
        body = _json_body(request)
    except _NotJson as exc:
        return _bad_body(exc, f"JSON like {example}")
    if body is None:
        return _json_response({"error": f"body must be JSON like {example}"}, 400)
    with _logged_failure("emergency_rollback", "answers 500; call again"):
        report, status = handle_emergency(
            body,
            request.headers.get("Authorization"),
            settings=runtime.settings(),
            store=runtime.store(),
            traffic_client=runtime.traffic(),
        )
    report.emit()
    payload = report.as_dict()
    if status >= 400:
        payload["error"] = report.message
    return _json_response(payload, status)


@functions_framework.http
def checkpoint(request: Request) -> tuple[dict, int, dict[str, str]]:
    """Cloud Scheduler (OIDC) → GO / NO-GO for each running rollout, the ramp, streak observations.
    Body (optional): {"service": "full or short name"} to check one service."""
    from shared.handlers.checkpoint import handle_checkpoint

    if request.method != "POST":
        return _json_response({"error": "use POST (Cloud Scheduler does)"}, 405)
    try:
        body = _json_body(request)
    except _NotJson as exc:
        return _bad_body(exc, 'no body, {} or {"service": "name"}')
    with _logged_failure("checkpoint", "the next scheduled run tries again"):
        report, status = handle_checkpoint(body, settings=runtime.settings(), policy=runtime.policy())
    report.emit()
    return _json_response(report.as_dict(), status)


@functions_framework.cloud_event
def checkpoint_worker(event: CloudEvent) -> None:
    """One service's checkpoint minute (Pub/Sub, CHECKPOINT_TOPIC, sent by the checkpoint with
    the service's metrics): the same judgement as the checkpoint's own, on its own instance."""
    from shared.handlers.fanout import handle_checkpoint_message

    with _logged_failure("checkpoint_worker", event_id=event["id"]):
        report = handle_checkpoint_message(
            event.data, event_id=event["id"], settings=runtime.settings(), policy=runtime.policy()
        )
        report.emit()


@functions_framework.http
def load_test(request: Request) -> tuple[dict, int, dict[str, str]]:
    """Cloud Scheduler (OIDC, daily) → bounded load test and rate-limit probe of canary and stable.
    Body (optional): {"mode": "both" | "load" | "probe", "service": "full or short name"}."""
    from shared.handlers.loadtest import handle_load_test

    if request.method != "POST":  # a stray GET (a health probe, a crawler) must not start load
        return _json_response({"error": "use POST (Cloud Scheduler does)"}, 405)
    try:
        body = _json_body(request)
    except _NotJson as exc:
        return _bad_body(exc, 'no body, {} or {"mode": "both|load|probe", "service": "name"}')
    settings = runtime.settings()
    with _logged_failure("load_test", "runs again at its next schedule"):
        report, status = handle_load_test(
            body,
            settings=settings,
            policy=runtime.policy(),
            auth=settings.load_test_auth,
        )
    report.emit()
    return _json_response(report.as_dict(), status)
