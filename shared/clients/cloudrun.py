"""Cloud Run traffic client: the only module that touches `google.cloud.run_v2`.

A traffic change is one read-modify-write: GET the service, let a pure plan (shared/core/traffic.py)
compute the whole new split, PATCH it back with the etag that was read. The PATCH carries every
target at once, so traffic is never half-changed; the etag makes it fail (409) instead of
overwriting a concurrent change, and then the loop re-reads and re-plans.

The write is done when its long-running operation is. If polling that operation is refused (403
while it is not done), the service itself is read until Cloud Run has reconciled the write and
serves the plan; an operation that finished with an error is a failed update, whatever its code.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.protobuf import field_mask_pb2

from shared.core.traffic import ServiceTraffic, TrafficSplit
from shared.logs import log

__all__ = ["CloudRunTraffic", "ControlPlaneError", "ServiceTraffic", "TrafficSplit"]

T = TypeVar("T")

CALL_TIMEOUT_S = 15.0  # per HTTP request; the client's own default for UpdateService
OPERATION_TIMEOUT_S = 120.0  # waiting for the update LRO; traffic-only updates take seconds
SETTLE_POLL_S = 1.0  # between service reads while waiting for an update to be applied

# Worth another attempt: throttling, server trouble, a lost or slow connection, and 409
# (Conflict, which Aborted subclasses: an etag mismatch, i.e. a concurrent change).
_RETRYABLE: tuple[type[BaseException], ...] = (
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    api_exceptions.Conflict,
    requests.ConnectionError,
    requests.Timeout,
    TimeoutError,  # the LRO did not finish in OPERATION_TIMEOUT_S
)


class _NotApplied(api_exceptions.GoogleAPICallError):
    """Cloud Run accepted a traffic write but did not apply it (or not in time): not retried,
    since the write went through and the service now says why it is not served."""

    def __str__(self) -> str:
        return self.message  # no HTTP status to put first: every call answered 200


class ControlPlaneError(RuntimeError):
    """A Cloud Run Admin API call failed for good: not retryable, or out of attempts.

    `status` is the HTTP status of the last failure (None for a connection error or timeout).
    """

    def __init__(self, message: str, *, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def _short_name(resource: str) -> str:
    return resource.rsplit("/", 1)[-1]


def _traffic_of(service: run_v2.Service) -> ServiceTraffic:
    # latest_ready_revision is a full resource name; plans work with short revision names.
    latest = _short_name(service.latest_ready_revision)
    return ServiceTraffic(
        service=service.name,
        # A LATEST target names no revision: it follows latest_ready_revision.
        targets=tuple(TrafficSplit(t.revision or latest, t.percent, t.tag) for t in service.traffic),
        etag=service.etag,
        latest_ready_revision=latest,
        tag_uris={status.tag: status.uri for status in service.traffic_statuses if status.tag},
        uri=service.uri,
    )


def _served_split(targets: Sequence[TrafficSplit], latest: str) -> tuple[dict[str, int], dict[str, str]]:
    """Percent per revision (0 % left out) and revision per tag: what decides who gets requests."""
    percents: dict[str, int] = {}
    tags: dict[str, str] = {}
    for target in targets:
        revision = target.revision or latest
        if target.percent:
            percents[revision] = percents.get(revision, 0) + target.percent
        if target.tag:
            tags[target.tag] = revision
    return percents, tags


def _status_of(error: BaseException | None) -> int | None:
    code = getattr(error, "code", None)
    return code if isinstance(code, int) else None


class CloudRunTraffic:
    """Reads and changes the traffic split of Cloud Run services, retrying transient failures.

    `endpoint` ("http://127.0.0.1:9001") targets a local stand-in with anonymous credentials;
    None means the real API with application default credentials.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        max_attempts: int = 5,
        base_delay_s: float = 0.2,
        max_delay_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._endpoint = endpoint
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._sleep = sleep
        self._call_timeout_s = call_timeout_s
        self._client: run_v2.ServicesClient | None = None

    @property
    def _services(self) -> run_v2.ServicesClient:
        # Built on first use: a function that never changes traffic never needs credentials.
        if self._client is None:
            if self._endpoint:
                self._client = run_v2.ServicesClient(
                    transport="rest",
                    client_options={"api_endpoint": self._endpoint},
                    credentials=AnonymousCredentials(),
                )
            else:
                # REST in production too, so the stand-in tests exercise the same wire path.
                self._client = run_v2.ServicesClient(transport="rest")
        return self._client

    def get(self, service: str) -> ServiceTraffic:
        """The live traffic of `service` (projects/P/locations/L/services/S)."""
        return self._retrying(f"get {service}", lambda: _traffic_of(self._fetch(service)))

    def update_traffic(
        self, service: str, plan: Callable[[ServiceTraffic], Sequence[TrafficSplit] | None]
    ) -> tuple[ServiceTraffic, ServiceTraffic]:
        """Apply `plan(current)` as the whole new split; returns (before, after).

        `plan` must be pure: it runs again on every attempt, against freshly read traffic.
        When it returns None nothing is written and (current, current) is returned; an
        exception from `plan` propagates unchanged.
        """

        def attempt() -> tuple[ServiceTraffic, ServiceTraffic]:
            live = self._fetch(service)  # re-read every time: after a 409 the old etag is stale
            before = _traffic_of(live)
            targets = plan(before)
            if targets is None:
                return before, before
            revision_type = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
            live.traffic = [
                run_v2.TrafficTarget(type_=revision_type, revision=t.revision, percent=t.percent, tag=t.tag)
                for t in targets
            ]
            # Only `traffic` is updated (a whole-Service update can be refused for the template),
            # carrying the etag we read so a concurrent writer makes this attempt fail and re-plan.
            request = run_v2.UpdateServiceRequest(
                service=live, update_mask=field_mask_pb2.FieldMask(paths=["traffic"])
            )
            operation = self._services.update_service(
                request=request, retry=None, timeout=self._call_timeout_s
            )
            try:
                updated = operation.result(timeout=OPERATION_TIMEOUT_S)
            except api_exceptions.Forbidden as error:
                # A finished operation's error is raised from its google.rpc code, and
                # PERMISSION_DENIED (a PermissionDenied, a Forbidden too) means the update failed.
                # Only a 403 while the operation is not done came from polling it: the write was
                # accepted, but the grant may not cover run.operations.get.
                if operation.operation.done:
                    raise
                log(
                    "WARNING",
                    "Cloud Run API: traffic update accepted, but its operation cannot be read; "
                    "waiting for the service to apply it",
                    service=service,
                    error=str(error),
                )
                # The operation's metadata is the written Service; our write made at least the
                # next generation of the one we read, in case the metadata does not say.
                written = operation.metadata.generation if operation.operation.HasField("metadata") else 0
                updated = self._await_applied(service, max(written, live.generation + 1), targets)
            return before, _traffic_of(updated)

        return self._retrying(f"update traffic of {service}", attempt)

    def _await_applied(
        self, service: str, generation: int, targets: Sequence[TrafficSplit]
    ) -> run_v2.Service:
        """Read `service` until Cloud Run has reconciled `generation`, and check it serves `targets`.

        Its `traffic` is the spec we wrote and would echo the plan even if Cloud Run never routed
        it: only observed_generation, reconciling, terminal_condition and traffic_statuses say
        what is served.
        """
        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        waited = 0.0  # counted too: an injected sleep does not move the monotonic clock
        while True:
            current = self._fetch(service)
            if current.observed_generation >= generation and not current.reconciling:
                break
            if waited >= OPERATION_TIMEOUT_S or time.monotonic() >= deadline:
                raise _NotApplied(
                    f"the traffic update was accepted but not applied within {OPERATION_TIMEOUT_S:g} s "
                    f"(generation {generation}, observed {current.observed_generation}, "
                    f"reconciling {current.reconciling})"
                )
            self._sleep(SETTLE_POLL_S)
            waited += SETTLE_POLL_S
        condition = current.terminal_condition
        if condition.state == run_v2.Condition.State.CONDITION_FAILED:
            raise _NotApplied(
                f"the traffic update was accepted but not applied: {condition.type_} failed: "
                f"{condition.message or 'no message'}"
            )
        latest = _short_name(current.latest_ready_revision)
        served = _served_split(
            [TrafficSplit(s.revision, s.percent, s.tag) for s in current.traffic_statuses], latest
        )
        planned = _served_split(targets, latest)
        if served != planned:
            raise _NotApplied(
                "the traffic update was accepted but not applied: Cloud Run serves "
                f"{served}, the plan was {planned}"
            )
        return current

    def _fetch(self, service: str) -> run_v2.Service:
        # retry=None: the client would retry 503s itself with real sleeps; _retrying owns the policy.
        return self._services.get_service(name=service, retry=None, timeout=self._call_timeout_s)

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        last_error: BaseException | None = None
        for attempt in range(1, self._max_attempts + 1):
            try:
                return action()
            except _RETRYABLE as error:
                last_error = error
                if attempt < self._max_attempts:
                    delay = self._backoff(attempt)
                    log(
                        "WARNING",
                        f"Cloud Run API: {what} failed, retrying",
                        attempt=attempt,
                        status=_status_of(error),
                        error=str(error),
                        retry_in_s=round(delay, 3),
                    )
                    self._sleep(delay)
            except api_exceptions.GoogleAPICallError as error:
                raise ControlPlaneError(
                    f"Cloud Run API: {what} failed and is not retryable: {error}",
                    status=_status_of(error),
                    attempts=attempt,
                ) from error
        raise ControlPlaneError(
            f"Cloud Run API: {what} failed {self._max_attempts} times; last error: {last_error}",
            status=_status_of(last_error),
            attempts=self._max_attempts,
        ) from last_error

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with "equal jitter".

        Each wait is drawn from [cap/2, cap] and the cap doubles, so concurrent callers spread
        out while the waits of one caller still never shrink (until max_delay_s is reached).
        """
        cap = min(self._max_delay_s, self._base_delay_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)
