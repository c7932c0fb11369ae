"""Local stand-in for the Cloud Run Admin API v2, speaking the REST/JSON of `google-cloud-run`.

The official client (transport="rest", an http:// api_endpoint, anonymous credentials) sends,
as checked against google-cloud-run 0.16.2:

    GET   /v2/projects/P/locations/L/services/S?%24alt=json%3Benum-encoding%3Dint
    PATCH /v2/projects/P/locations/L/services/S    body: the Service WITHOUT `name` (it is in the path)
    GET   /v2/projects/P/locations/L/operations/ID  (LRO polling)

JSON is camelCase, enums are integers, int64 fields are strings, and default values are omitted
(a 0 % target arrives without "percent"). Errors use the google.rpc shape
`{"error": {"code", "message", "status"}}`; google.api_core picks the exception class from the
HTTP status (409 -> Conflict, 429 -> TooManyRequests, 503 -> ServiceUnavailable, ...).

Test control, not part of Cloud Run, lives under /_standin/:
    POST /_standin/services  {"name", "revisions": [short, oldest first], "traffic": [{"revision",
                             "percent", "tag"}], "uri"?, "tag_uris"?: {tag: url}}  create or replace;
                             a traffic entry without "revision" is a LATEST target
    POST /_standin/faults    {"status"?, "count"?: 1, "methods"?: ["GET", "PATCH"], "delay_s"?: 0,
                             "resource"?: "services" | "operations"}
                             the next `count` matching API requests wait `delay_s`, then fail
                             with `status` (or are served normally when there is no status)
    POST /_standin/settings  {"pending_polls": N}: an update's operation is answered not done and
                             is done at its Nth GetOperation, as Cloud Run's are (default 0: done
                             at once, so tests do not wait for the client's polling)
    POST /_standin/next_update  {"reconcile_gets"?: N, "fail"?: {"code"?: 9, "message"?}}: the next
                             update is accepted (spec, generation and etag change at once) but
                             the service reconciles for N API GETs of it or its operation:
                             observedGeneration stays behind, reconciling is true and
                             trafficStatuses still show the old split. It then settles, or with
                             "fail" ends in a failed terminalCondition (old split still served)
                             and its operation finishes with that error code. Default: every
                             update is applied at once.
    GET  /_standin/calls     [{method, path, status}] of the API requests begun since the last reset
    POST /_standin/reset     forget services, operations, faults and calls

Run it: python -m infra.cloudrun_standin --host 127.0.0.1 --port 9001
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

# google.cloud.run.v2.TrafficTargetAllocationType, sent as integers (enum-encoding=int).
LATEST = 1
REVISION = 2

_SERVICE_PATH = re.compile(r"/v2/(projects/[^/]+/locations/[^/]+/services/[^/]+)")
_OPERATION_PATH = re.compile(r"/v2/(projects/[^/]+/locations/[^/]+/operations/[^/]+)")
_SERVICE_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/services/[^/]+")
_SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"

# google.cloud.run.v2.Condition.State and .Severity, as integers.
CONDITION_RECONCILING = 2
CONDITION_FAILED = 3
CONDITION_SUCCEEDED = 4
SEVERITY_ERROR = 1
FAILED_PRECONDITION = 9  # google.rpc.Code of a failed reconciliation, unless the test picks one

# google.rpc.Code names that Google APIs put next to each HTTP status.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": _STATUS_NAMES[self.code]}}


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """Drop default values, as proto3 JSON does."""
    return {key: value for key, value in data.items() if value not in ("", 0, False, None, [], {})}


def _new_etag() -> str:
    return uuid.uuid4().hex[:16]


def _target(raw: Any) -> dict[str, Any]:
    """Normalise one traffic target (API JSON or control JSON) to all four keys."""
    if not isinstance(raw, dict):
        raise _ApiError(400, f"traffic target must be an object, got {raw!r}")
    revision = str(raw.get("revision", ""))
    # An unspecified type (0, omitted) is read from the presence of a revision name.
    kind = int(raw.get("type", 0)) or (REVISION if revision else LATEST)
    percent = int(raw.get("percent", 0))
    return {"type": kind, "revision": revision, "percent": percent, "tag": str(raw.get("tag") or "")}


def _validated_traffic(raw: Any, revisions: list[str]) -> list[dict[str, Any]]:
    """The traffic rules Cloud Run enforces on update, with its kind of INVALID_ARGUMENT message."""
    if not isinstance(raw, list) or not raw:
        raise _ApiError(400, "spec.traffic must list at least one target")
    traffic = [_target(item) for item in raw]
    for target in traffic:
        if target["type"] not in (LATEST, REVISION):
            raise _ApiError(400, f"unknown traffic target type {target['type']}")
        if not 0 <= target["percent"] <= 100:
            raise _ApiError(400, f"traffic percent must be 0..100, got {target['percent']}")
        if target["type"] == LATEST and target["revision"]:
            raise _ApiError(400, "a LATEST traffic target must not name a revision")
        if target["type"] == REVISION and target["revision"] not in revisions:
            raise _ApiError(400, f"Revision named '{target['revision']}' does not exist.")
    total = sum(target["percent"] for target in traffic)
    if total != 100:
        raise _ApiError(400, f"traffic percents must add up to 100, got {total}")
    tags = [target["tag"] for target in traffic if target["tag"]]
    if len(tags) != len(set(tags)):
        raise _ApiError(400, f"traffic tags must be unique, got {tags}")
    return traffic


@dataclass
class _Service:
    name: str
    revisions: list[str]  # oldest first; the last one is the latest ready revision
    traffic: list[dict[str, Any]]
    uri: str
    tag_uris: dict[str, str]
    generation: int = 1
    etag: str = field(default_factory=_new_etag)
    # Status, as Cloud Run's controller reports it: what it has applied, not what was written.
    observed_generation: int = 1
    served: list[dict[str, Any]] = field(default_factory=list)  # the split trafficStatuses show
    failure: dict[str, Any] | None = None  # google.rpc.Status of the last failed reconciliation
    reconcile_gets: int = 0  # API GETs left before the current generation settles
    settle_failure: dict[str, Any] | None = None  # how it settles: None applies the spec

    def __post_init__(self) -> None:
        if not self.served:
            self.served = list(self.traffic)

    @property
    def reconciling(self) -> bool:
        return self.observed_generation < self.generation

    def observe(self) -> None:
        """After an API GET of the service or its operation has been answered: a reconciling
        service moves one step on, so `reconcile_gets` GETs see it reconciling."""
        if self.reconciling:
            self.reconcile_gets -= 1
            if self.reconcile_gets <= 0:
                self.settle()

    def settle(self) -> None:
        """The controller has caught up with the spec: applied it, or failed to."""
        self.observed_generation = self.generation
        self.failure = self.settle_failure
        if self.failure is None:
            self.served = list(self.traffic)  # a failed rollout keeps serving the old split

    def _revision_name(self, short: str) -> str:
        return f"{self.name}/revisions/{short}"

    def _terminal_condition(self) -> dict[str, Any]:
        if self.reconciling:
            return {"type": "Ready", "state": CONDITION_RECONCILING}
        if self.failure is not None:
            failed = {"type": "Ready", "state": CONDITION_FAILED, "severity": SEVERITY_ERROR}
            return failed | {"message": self.failure["message"]}
        return {"type": "Ready", "state": CONDITION_SUCCEEDED}

    def to_json(self) -> dict[str, Any]:
        short = self.name.rsplit("/", 1)[-1]
        latest = self.revisions[-1]
        statuses = []
        for target in self.served:
            status = {**target, "revision": target["revision"] or latest}
            if target["tag"]:
                default_uri = f"https://{target['tag']}---{short}-abc123-uc.a.run.app"
                status["uri"] = self.tag_uris.get(target["tag"], default_uri)
            statuses.append(_compact(status))
        return _compact(
            {
                "name": self.name,
                "generation": str(self.generation),  # int64 travels as a JSON string
                "observedGeneration": str(self.observed_generation),
                "reconciling": self.reconciling,
                "terminalCondition": self._terminal_condition(),
                "etag": self.etag,
                "traffic": [_compact(target) for target in self.traffic],
                "trafficStatuses": statuses,
                "latestReadyRevision": self._revision_name(latest),
                "latestCreatedRevision": self._revision_name(latest),
                "uri": self.uri,
                "urls": [self.uri],
            }
        )


@dataclass
class _Fault:
    status: int | None
    count: int
    methods: tuple[str, ...]
    delay_s: float
    resource: str | None  # "services" | "operations" | None (any)


class _State:
    """Everything the stand-in knows; every method takes the lock, so handlers may run in parallel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.services: dict[str, _Service] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.faults: list[_Fault] = []
        self.calls: list[dict[str, Any]] = []
        # Bumped by reset: a request that began before it (one held by an injected delay after
        # its client gave up) neither touches the next test's services nor shows in its calls.
        self.epoch = 0
        self.pending_polls = 0
        self._polls_left: dict[str, int] = {}
        self._operation_services: dict[str, str] = {}  # operation name -> service name
        self._next_update: tuple[int, dict[str, Any] | None] = (0, None)

    def reset(self) -> None:
        with self._lock:
            self.services.clear()
            self.operations.clear()
            self.faults.clear()
            self.calls.clear()
            self.epoch += 1
            self.pending_polls = 0
            self._polls_left.clear()
            self._operation_services.clear()
            self._next_update = (0, None)

    def settings(self, spec: dict[str, Any]) -> None:
        with self._lock:
            self.pending_polls = int(spec.get("pending_polls", self.pending_polls))

    def next_update(self, spec: dict[str, Any]) -> None:
        gets = int(spec.get("reconcile_gets", 0))
        fail = spec.get("fail")
        if gets < 0 or (fail is not None and not isinstance(fail, dict)):
            raise _ApiError(400, f"next_update wants reconcile_gets >= 0 and fail as an object, got {spec}")
        failure = None
        if fail is not None:
            code = int(fail.get("code", FAILED_PRECONDITION))
            failure = {"code": code, "message": str(fail.get("message") or "the traffic could not be routed")}
        with self._lock:
            self._next_update = (gets, failure)

    def put_service(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = str(spec.get("name", ""))
        if not _SERVICE_NAME.fullmatch(name):
            raise _ApiError(400, f"name must be projects/P/locations/L/services/S, got {name!r}")
        revisions = [str(revision) for revision in spec.get("revisions", [])]
        if not revisions:
            raise _ApiError(400, "revisions must name at least one revision")
        short = name.rsplit("/", 1)[-1]
        service = _Service(
            name=name,
            revisions=revisions,
            traffic=_validated_traffic(spec.get("traffic"), revisions),
            uri=spec.get("uri") or f"https://{short}-abc123-uc.a.run.app",
            tag_uris=dict(spec.get("tag_uris") or {}),
        )
        with self._lock:
            self.services[name] = service
            return service.to_json()

    def get_service(self, name: str, *, observe: bool = False) -> dict[str, Any]:
        with self._lock:
            service = self._service(name)
            answer = service.to_json()
            if observe:
                service.observe()
            return answer

    def update_service(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            service = self._service(name)
            # Optimistic concurrency: a stale etag means someone changed the service since the read.
            if body.get("etag") and body["etag"] != service.etag:
                raise _ApiError(409, f"etag mismatch for {name}: the service was changed concurrently")
            # Only traffic is modelled; output-only fields the client echoes back are ignored.
            service.traffic = _validated_traffic(body.get("traffic"), service.revisions)
            service.generation += 1
            service.etag = _new_etag()
            gets, failure = self._next_update
            self._next_update = (0, None)
            service.reconcile_gets, service.settle_failure = gets, failure
            if gets == 0:  # nothing to wait for: settled before the PATCH is answered
                service.settle()
            location = name.split("/services/")[0]
            operation_name = f"{location}/operations/{uuid.uuid4()}"
            self._operation_services[operation_name] = name
            if self.pending_polls:
                self._polls_left[operation_name] = self.pending_polls
            return self._operation(operation_name, service)

    def get_operation(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self._operation_services:
                raise _ApiError(404, f"Operation {name} not found.")
            service = self._service(self._operation_services[name])
            self._polls_left[name] = self._polls_left.get(name, 0) - 1
            answer = self._operation(name, service)
            service.observe()
            return answer

    def _operation(self, name: str, service: _Service) -> dict[str, Any]:
        """The update's operation: done once its polls are used up and the service has settled.

        Its metadata is the written Service (with the new generation), as Cloud Run's is.
        """
        if name in self.operations:  # a finished operation does not change
            return self.operations[name]
        snapshot = {"@type": _SERVICE_TYPE, **service.to_json()}
        operation: dict[str, Any] = {"name": name, "metadata": snapshot}
        if self._polls_left.get(name, 0) > 0 or service.reconciling:
            return operation
        self._polls_left.pop(name, None)
        if service.failure is not None:
            operation |= {"done": True, "error": dict(service.failure)}
        else:
            operation |= {"done": True, "response": snapshot}
        self.operations[name] = operation
        return operation

    def add_fault(self, spec: dict[str, Any]) -> None:
        status = spec.get("status")
        if status is not None and status not in _STATUS_NAMES:
            raise _ApiError(400, f"fault status must be one of {sorted(_STATUS_NAMES)}, got {status}")
        fault = _Fault(
            status=status,
            count=int(spec.get("count", 1)),
            methods=tuple(method.upper() for method in spec.get("methods", ("GET", "PATCH"))),
            delay_s=float(spec.get("delay_s", 0.0)),
            resource=spec.get("resource"),
        )
        if fault.resource not in (None, "services", "operations"):
            raise _ApiError(400, f"fault resource must be services or operations, got {fault.resource!r}")
        with self._lock:
            self.faults.append(fault)

    def take_fault(self, method: str, path: str) -> _Fault | None:
        """The first fault that matches `method` and `path`, counted down and dropped once used up."""
        with self._lock:
            for fault in self.faults:
                if method in fault.methods and (fault.resource is None or f"/{fault.resource}/" in path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def record(self, method: str, path: str, status: int, epoch: int) -> None:
        with self._lock:
            if epoch == self.epoch:
                self.calls.append({"method": method, "path": path, "status": status})

    def call_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(call) for call in self.calls]

    def _service(self, name: str) -> _Service:
        if name not in self.services:
            raise _ApiError(404, f"Resource '{name.rsplit('/', 1)[-1]}' of kind 'SERVICE' does not exist.")
        return self.services[name]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.state = _State()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like the requests.Session the client uses
    disable_nagle_algorithm = True  # headers and body go out as two writes: avoid a 40 ms stall

    def _dispatch(self) -> None:
        epoch = self.server.state.epoch
        path = unquote(urlsplit(self.path).path)
        try:
            body = self._read_json()
            if path.startswith("/_standin/"):
                status, payload = 200, self._control(path, body)
            else:
                status, payload = 200, self._api(path, body, epoch)
        except _ApiError as error:
            status, payload = error.code, error.payload()
        if not path.startswith("/_standin/"):
            self.server.state.record(self.command, path, status, epoch)
        self._send(status, payload)

    do_GET = do_PATCH = do_POST = _dispatch

    def _api(self, path: str, body: dict[str, Any], epoch: int) -> Any:
        state = self.server.state
        fault = state.take_fault(self.command, path)
        if fault is not None:
            time.sleep(fault.delay_s)
            if fault.status is not None:
                raise _ApiError(fault.status, f"injected fault: HTTP {fault.status}")
            if state.epoch != epoch:  # reset while delayed: a GET now moves a reconciling service on
                raise _ApiError(503, "the stand-in was reset while this request was delayed")
        if match := _SERVICE_PATH.fullmatch(path):
            if self.command == "GET":
                return state.get_service(match[1], observe=True)
            if self.command == "PATCH":
                return state.update_service(match[1], body)
        if (match := _OPERATION_PATH.fullmatch(path)) and self.command == "GET":
            return state.get_operation(match[1])
        raise _ApiError(404, f"no such method: {self.command} {path}")

    def _control(self, path: str, body: dict[str, Any]) -> Any:
        state = self.server.state
        route = (self.command, path)
        if route == ("POST", "/_standin/services"):
            return state.put_service(body)
        if route == ("POST", "/_standin/faults"):
            state.add_fault(body)
            return {}
        if route == ("POST", "/_standin/settings"):
            state.settings(body)
            return {}
        if route == ("POST", "/_standin/next_update"):
            state.next_update(body)
            return {}
        if route == ("GET", "/_standin/calls"):
            return state.call_log()
        if route == ("POST", "/_standin/reset"):
            state.reset()
            return {}
        raise _ApiError(404, f"no such control endpoint: {self.command} {path}")

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as error:
            raise _ApiError(400, f"request body is not JSON: {error}") from error
        if not isinstance(body, dict):
            raise _ApiError(400, "request body must be a JSON object")
        return body

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout ran out during an injected delay)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the call log at /_standin/calls is the record


class CloudRunStandin:
    """A running stand-in on a background thread, with in-process test controls."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="cloudrun-standin", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def put_service(
        self,
        name: str,
        revisions: Iterable[str],
        traffic: Iterable[dict[str, Any]],
        *,
        uri: str = "",
        tag_uris: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        spec = {"name": name, "revisions": list(revisions), "traffic": list(traffic), "uri": uri}
        return self._server.state.put_service({**spec, "tag_uris": tag_uris or {}})

    def inject_fault(
        self,
        status: int | None = None,
        *,
        count: int = 1,
        methods: Iterable[str] = ("GET", "PATCH"),
        delay_s: float = 0.0,
        resource: str | None = None,
    ) -> None:
        spec = {"status": status, "count": count, "methods": list(methods), "delay_s": delay_s}
        self._server.state.add_fault(spec | {"resource": resource})

    def pend_operations(self, polls: int) -> None:
        """Answer updates with an operation that is done only at its `polls`th GetOperation."""
        self._server.state.settings({"pending_polls": polls})

    def next_update(
        self, *, reconcile_gets: int = 0, fail_code: int | None = None, fail_message: str = ""
    ) -> None:
        """Make the next update reconcile for `reconcile_gets` API GETs; with `fail_code` (a
        google.rpc.Code) it then ends in a failed terminal condition instead of being applied."""
        fail = None if fail_code is None else {"code": fail_code, "message": fail_message}
        self._server.state.next_update({"reconcile_gets": reconcile_gets, "fail": fail})

    def calls(self) -> list[dict[str, Any]]:
        return self._server.state.call_log()

    def faults_left(self) -> int:
        """Injected faults not yet taken: 0 once the last one's request has arrived (and, with a
        delay, is being held)."""
        with self._server.state._lock:
            return sum(fault.count for fault in self._server.state.faults)

    def reset(self) -> None:
        self._server.state.reset()

    def service(self, name: str) -> dict[str, Any]:
        """The service as GET /v2/{name} would return it, without counting as an API call."""
        return self._server.state.get_service(name)


def start_cloudrun_standin(port: int = 0) -> CloudRunStandin:
    """Serve on 127.0.0.1:`port` (0 picks a free port) from a daemon thread."""
    return CloudRunStandin(_Server(("127.0.0.1", port)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args(argv)
    server = _Server((args.host, args.port))
    print(f"Cloud Run Admin API stand-in on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
