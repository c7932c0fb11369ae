"""The rehearsal's data plane: Cloud Run's front end, splitting real requests across revisions.

A `Router` serves each added service on its own 127.0.0.1 port (the service URL) and each tag of
its traffic on another (the tag URL, e.g. `canary`, which reaches the tagged revision whatever
its percent, as Cloud Run's tag URLs do). It polls the Cloud Run Admin API stand-in
(infra/cloudrun_standin.py) every `poll_interval_s` real seconds and splits requests by what
Cloud Run reports as served: `trafficStatuses` when present, else `traffic`; a LATEST target is
the latest ready revision. So a rollback written through the Cloud Run API moves the real
traffic within a fraction of a second.

Requests are proxied whole (method, path, query, body, headers). A backend that refuses,
resets or times out gives the client a 503, counted as a 5xx of that revision. Each request is
recorded per (service, revision, minute of `now()` when its answer went out): its response class
("2xx", "3xx", "4xx", "5xx") and its end-to-end latency in ms, which `take_minutes` hands over
as the `request_count` and `request_latencies` Cloud Run would record.

What was served is kept by `infra/rehearsal/served.py`; steady load comes from
`infra/rehearsal/traffic_driver.py`.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import requests

from infra.rehearsal.served import ANY_URL, ServedLedger, ServedMinute
from shared import clock

log = logging.getLogger(__name__)

LATEST = 1  # google.cloud.run.v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
# Headers about one connection, not the request: never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_BACKEND_FAILURES = (OSError, http.client.HTTPException)  # refused, reset, timed out, garbled


def _short_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Routes:
    """A service's traffic as Cloud Run serves it."""

    percents: dict[str, int]  # revision -> percent
    tags: dict[str, str]  # tag -> revision

    def pick(self, rng: random.Random) -> str | None:
        """A revision drawn by percent; None when no revision has any."""
        serving = [(revision, percent) for revision, percent in self.percents.items() if percent > 0]
        if not serving:
            return None
        revisions, weights = zip(*serving, strict=True)
        return rng.choices(revisions, weights)[0]


def routes_of(service: dict[str, Any]) -> Routes:
    """The split a Cloud Run Service resource (REST JSON) serves."""
    latest = _short_name(str(service.get("latestReadyRevision", "")))
    targets = service.get("trafficStatuses") or service.get("traffic") or []
    percents: dict[str, int] = {}
    tags: dict[str, str] = {}
    for target in targets:
        revision = _short_name(str(target.get("revision") or ""))
        if int(target.get("type", 0)) == LATEST or not revision:
            revision = latest
        percents[revision] = percents.get(revision, 0) + int(target.get("percent", 0))
        if target.get("tag"):
            tags[str(target["tag"])] = revision
    return Routes(percents, tags)


class _Listener(ThreadingHTTPServer):
    """One URL of a service: the service URL (tag None) or a tag URL."""

    daemon_threads = True
    request_queue_size = 128  # a burst of new connections must not be refused by the backlog

    def __init__(self, router: Router, service: str, tag: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.router = router
        self.service = service
        self.tag = tag
        self.thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name=f"router-{service}-{tag or 'service'}", daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _proxy(self) -> None:
        started = time.perf_counter()
        body = self._read_body()
        if body is None:
            return
        server = self.server
        revision = server.router.choose(server.service, server.tag)
        if revision is None:
            what = f"tag {server.tag}" if server.tag else "any revision"
            self._send(404 if server.tag else 503, [], f"no traffic is routed to {what}\n".encode())
            return
        status, headers, payload = server.router.forward(server.service, revision, self, body)
        # Counted as the answer goes out (writing a small answer adds microseconds), so whoever
        # has the answer finds it counted.
        server.router.ledger.record(
            server.service, revision, status, (time.perf_counter() - started) * 1000, server.tag
        )
        self._send(status, headers, payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering a bad request."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self._send(400, [], b"bad chunked body\n")
                    self.close_connection = True
                    return None
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)  # the CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if self.command != "HEAD" or not any(name.lower() == "content-length" for name, _ in headers):
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up; the backend's answer still counts

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is in the ledger


class Router:
    """Cloud Run's data plane for services in the stand-in: real requests, split by the served traffic."""

    def __init__(
        self,
        cloudrun_url: str,
        project: str,
        location: str,
        *,
        now: Callable[[], datetime] = clock.now,
        poll_interval_s: float = 0.2,
        backend_timeout_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.cloudrun_url = cloudrun_url.rstrip("/")
        self.project = project
        self.location = location
        self.poll_interval_s = poll_interval_s
        self.backend_timeout_s = backend_timeout_s
        self.ledger = ServedLedger(now)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._routes: dict[str, Routes] = {}
        self._backends: dict[str, dict[str, str]] = {}  # service -> revision -> base URL
        self._listeners: dict[tuple[str, str | None], _Listener] = {}
        self._connections = threading.local()  # per handler thread: backend netloc -> connection
        self._api = requests.Session()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    def service_name(self, service: str) -> str:
        return f"projects/{self.project}/locations/{self.location}/services/{service}"

    def add_service(self, service: str, backends: dict[str, str]) -> str:
        """Serve `service` (short name, as in the stand-in) with `backends` (revision -> base URL;
        a full revision resource name counts as its last segment). Returns the service URL."""
        if "/" in service:
            raise ValueError(f"give the service's short name, not {service!r}")
        routes = self._fetch_routes(service)  # raises if the stand-in does not know the service
        with self._lock:
            self._backends[service] = {_short_name(name): url.rstrip("/") for name, url in backends.items()}
            self._routes[service] = routes
        listener = self._listen(service, None)
        for tag in routes.tags:
            self._listen(service, tag)
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_forever, name="router-poller", daemon=True)
            self._poller.start()
        return listener.url

    def set_backend(self, service: str, revision: str, url: str) -> None:
        """Add or move one revision's backend (e.g. a canary deployed during the rehearsal)."""
        with self._lock:
            self._backends[service][_short_name(revision)] = url.rstrip("/")

    def service_url(self, service: str) -> str:
        return self._listeners[(service, None)].url

    def tag_url(self, service: str, tag: str) -> str:
        """The URL of `tag` (KeyError if the service's traffic has never had that tag)."""
        return self._listeners[(service, tag)].url

    def traffic(self, service: str) -> dict[str, int]:
        """The percent per revision the router splits by now."""
        with self._lock:
            return dict(self._routes[service].percents)

    def served_counts(self, service: str | None = None, *, via: str = ANY_URL) -> dict[str, int]:
        """Requests answered per revision since the start (all minutes, taken or not), through
        any URL, the service URL only (SERVICE_URL: the split users see), or one tag's URL."""
        return self.ledger.totals(service, via)

    def take_minutes(self, before: datetime) -> list[ServedMinute]:
        """Return and forget every minute that ended by `before` (pass the current minute's start
        for every finished minute), oldest first."""
        return self.ledger.take(before)

    def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for listener in listeners:
            listener.stop()
        self._api.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the control plane's view --------------------------------------------------------------

    def _fetch_routes(self, service: str) -> Routes:
        response = self._api.get(f"{self.cloudrun_url}/v2/{self.service_name(service)}", timeout=5)
        response.raise_for_status()
        return routes_of(response.json())

    def _listen(self, service: str, tag: str | None) -> _Listener:
        with self._lock:
            listener = self._listeners.get((service, tag))
            if listener is None:
                listener = self._listeners[(service, tag)] = _Listener(self, service, tag)
            return listener

    def _poll_forever(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            with self._lock:
                services = list(self._routes)
            for service in services:
                try:
                    routes = self._fetch_routes(service)
                except (requests.RequestException, ValueError) as error:
                    # Keep serving the last known split, as Cloud Run's data plane would.
                    log.warning("router: cannot read %s from Cloud Run: %s", service, error)
                    continue
                with self._lock:
                    changed = self._routes.get(service) != routes
                    self._routes[service] = routes
                if changed:
                    log.info("router: %s now serves %s (tags %s)", service, routes.percents, routes.tags)
                for tag in routes.tags:
                    self._listen(service, tag)

    # -- the data plane ------------------------------------------------------------------------

    def choose(self, service: str, tag: str | None) -> str | None:
        """The revision for one request: the tag's revision, or one drawn by the current split."""
        with self._lock:
            routes = self._routes[service]
        if tag is not None:
            return routes.tags.get(tag)
        return routes.pick(self._rng)

    def forward(
        self, service: str, revision: str, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The backend's answer (status, headers, body) to `request`, or a 503 if it failed."""
        with self._lock:
            base = self._backends[service].get(revision)
        if base is None:
            return 503, [], f"revision {revision} has no backend in this rehearsal\n".encode()
        headers = [(name, value) for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP]
        headers = [(name, value) for name, value in headers if name.lower() not in ("host", "content-length")]
        headers.append(("Host", urlsplit(base).netloc))
        headers.append(("X-Forwarded-For", request.client_address[0]))
        if body or request.command in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        for attempt in (1, 2):
            connection, reused = self._connection(base)
            try:
                connection.putrequest(
                    request.command, request.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in headers:
                    connection.putheader(name, value)
                connection.endheaders(body or None)
                response = connection.getresponse()
                payload = response.read()
            except _BACKEND_FAILURES as error:
                connection.close()
                # A kept-alive connection the backend has since closed fails at once: try a new one.
                # A fresh connection's failure (refused, reset, timed out) is the revision's.
                if reused and attempt == 1 and not isinstance(error, TimeoutError):
                    continue
                return 503, [], f"revision {revision} failed: {type(error).__name__}: {error}\n".encode()
            if response.will_close:
                connection.close()
            kept = [
                (name, value)
                for name, value in response.getheaders()
                if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "date", "server")
            ]
            if request.command == "HEAD" and response.getheader("Content-Length"):
                kept.append(("Content-Length", str(response.getheader("Content-Length"))))
            return response.status, kept, payload
        raise AssertionError("unreachable: the second attempt returns")

    def _connection(self, base: str) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept-alive connection to `base`, and whether it has carried a request."""
        pool: dict[str, http.client.HTTPConnection] | None = getattr(self._connections, "pool", None)
        if pool is None:
            pool = self._connections.pool = {}
        netloc = urlsplit(base).netloc
        connection = pool.get(netloc)
        if connection is None:
            host, _, port = netloc.rpartition(":")
            connection = pool[netloc] = http.client.HTTPConnection(
                host, int(port), timeout=self.backend_timeout_s
            )
        return connection, connection.sock is not None
