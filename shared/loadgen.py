"""Bounded HTTP load generation: the daily load test and the rate-limit probe.

Pure of storage: every run returns frozen results; the caller writes them to Firestore and
Cloud Monitoring. Three modes, each request on a keep-alive HTTP/1.1 connection of its own worker
or slot (see "The HTTP client" below):

- closed model (`run_closed`): `requests` in total, issued by `concurrency` workers that each
  send the next request as soon as their previous one finished;
- open model (`run_open`): a constant arrival rate. Request i is due at t0 + i/rate and its
  latency is measured from that intended time, so a stalled target shows up as latency instead
  of silently slowing the generator down (no coordinated omission). Requests that fall due
  while all `max_in_flight` slots are busy are sent as soon as a slot frees and still count;
- probe (`run_probe`): N requests per side, one after another with a fixed delay, sides
  concurrently (the go-live checklist's rate-limit probe).

Every run is bounded: a hard cap on the number of requests, a per-request timeout and a
wall-clock deadline after which outstanding requests are cancelled and counted as
"cancelled". `plan_fits` (shared/load_rules.py, with the results and how they are judged)
refuses a configuration that cannot finish inside the Cloud Function's timeout or memory before
any traffic is sent.

Latency is the time from the (intended) send to the last byte of the body, recorded in a
fixed-size `LatencyHistogram` only for requests that got an HTTP response (any status);
timeouts, connection errors and cancellations are counted as failures instead.

The HTTP client is our own, small one: asyncio Protocols over `loop.create_connection` (TLS
through an `ssl.SSLContext` with the system's CAs for https URLs, as a Cloud Run URL needs) and
httptools' C parser (llhttp, Node.js's) for the responses. A general-purpose client spent ~70-100
µs of CPU per request in its own Python code (aiohttp's ClientSession: ~228 calls per request),
so the generator measured itself more than the target (bench/README.md). Here the request bytes
are built once per target, sockets are read into one buffer shared by the run's connections
(not a new 256 KiB object per read), and a response costs one Python callback whatever its size
(bodies are skipped inside the parser, never kept). What it does: status, Content-Length, chunked and
close-delimited bodies, 1xx interim answers, HEAD, keep-alive vs `Connection: close` (then a new
connection), reconnecting after a drop, a per-request timeout covering connect, TLS handshake and
the whole response. What it does not: redirects are not followed (a 3xx is a success, as the
target answered), no retries (a drop is a connection error, counted once), no proxies, no
cookies, no decompression (bodies are dropped unread), no HTTP/2 (ALPN offers http/1.1 only).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

import httptools

from shared.load_rules import (
    FUNCTION_MARGIN_S,
    MAX_CONCURRENCY,
    MAX_REQUESTS,
    LatencyHistogram,
    LatencySummary,
    Mode,
    TargetResult,
    least_target_s,
    open_arrivals,
    open_deadline,
    plan_fits,
    probe_deadline,
)
from shared.policy import LoadTest

KEEPALIVE_IDLE_S = 15.0  # a connection idle longer is replaced, not reused (aiohttp's default)
USER_AGENT = "canary-guard-loadgen"
RECEIVE_BUFFER_BYTES = 256 * 1024  # what asyncio reads at most per call anyway


class _BadResponse(ConnectionError):
    """The target's answer was not valid HTTP/1.1: counted as a connection error."""


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one run sends its requests, and the request itself, built once as bytes."""

    url: str  # as given, for the results
    host: str  # to connect to (IDNA-encoded; an IPv6 literal without brackets)
    port: int
    tls: bool
    request: bytes
    head: bool  # a HEAD request: its answer has no body, whatever its Content-Length says


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: method and header names
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SAFE_PATH = "/%!$&'()*+,;=:@-._~"


def _target(url: str, method: str = "GET", headers: Mapping[str, str] | None = None) -> _Target:
    """Parse `url` and build the request's bytes; ValueError for anything that cannot be sent."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as exc:
        raise ValueError(f"target URL must be an absolute http(s) URL, got {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target URL must be an absolute http(s) URL, got {url!r}")
    method = method.upper()
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode("ascii")
    tls = scheme == "https"
    default_port = 443 if tls else 80
    authority = f"[{host}]" if ":" in host else host  # an IPv6 literal
    if port is not None and port != default_port:
        authority += f":{port}"
    # Percent-encode what may not appear raw (spaces, non-ASCII); existing escapes stay as written.
    target = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE_PATH + "?")
    fields = {  # lower-case name -> (name, value); the caller's headers replace these
        "host": ("Host", authority),
        "user-agent": ("User-Agent", USER_AGENT),
        "accept": ("Accept", "*/*"),
        # What common clients (and aiohttp before) send, so the target works as it does for them;
        # a compressed body is dropped like any other, never inflated.
        "accept-encoding": ("Accept-Encoding", "gzip, deflate"),
        "connection": ("Connection", "keep-alive"),
    }
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        fields["authorization"] = ("Authorization", "Basic " + base64.b64encode(credentials).decode())
    if method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        fields["content-length"] = ("Content-Length", "0")  # no body, said explicitly
    for name, value in (headers or {}).items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"not an HTTP header name: {name!r}")
        if name.lower() in ("content-length", "transfer-encoding"):
            raise ValueError(f"the load generator sends no body: header {name!r} is not allowed")
        if _FORBIDDEN_IN_VALUE.search(value):  # no header injection through a value
            raise ValueError(f"header {name!r} has a control character in its value")
        fields[name.lower()] = (name, value)
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields.values())
    return _Target(url, host, port or default_port, tls, (head + "\r\n").encode(), method == "HEAD")


def _client_ssl_context() -> ssl.SSLContext:
    """Verifying TLS client context: the system's CAs (or SSL_CERT_FILE's), hostname checked."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])  # a front end that speaks HTTP/2 must not pick it
    return context


class _Client:
    """The connections of one run: opens them, and closes all of them at the end."""

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.connections: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        # One receive buffer for all connections: the transport fills it (recv_into) and the
        # parser consumes it within the same callback. With a plain Protocol each read is a
        # fresh 256 KiB bytes object: mmap, mremap and munmap, ~15 µs of kernel time per request
        # here, more than all the rest of the generator (bench/README.md).
        self.buffer = memoryview(bytearray(RECEIVE_BUFFER_BYTES))

    async def connect(self, target: _Target, deadline: float) -> _Connection:
        """A new connection to `target`; TimeoutError past `deadline` (loop time), OSError else."""
        tls = None
        if target.tls:
            if self._ssl is None:  # made once per run: loading the CA store takes milliseconds
                self._ssl = _client_ssl_context()
            tls = self._ssl
        connection = _Connection(self, target.head)
        async with asyncio.timeout_at(deadline):
            # Happy eyeballs (RFC 8305), as aiohttp does: a host with an unreachable IPv6 address
            # must not cost the whole timeout before its IPv4 address is tried.
            await self.loop.create_connection(
                lambda: connection, target.host, target.port, ssl=tls, happy_eyeballs_delay=0.25
            )
        return connection

    async def close(self) -> None:
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)  # let the transports run connection_lost and free their sockets


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time.

    httptools calls back into this object while it parses. There is deliberately no `on_body`:
    llhttp then skips body bytes in C, so a response of any size costs one Python callback
    (`on_message_complete`) and no buffering.
    """

    def __init__(self, client: _Client, head: bool) -> None:
        self.client = client
        self.loop = client.loop
        self.head = head
        self.transport: asyncio.Transport | None = None
        self.open = False  # connected and not closing: it may carry the next request
        self.waiter: asyncio.Future[int] | None = None  # the answer's status, while one is owed
        self.head_done = False  # the owed answer's status line and headers are in
        self.idle_since = 0.0  # loop time
        self.deadline = 0.0  # loop time by which the owed answer must be complete
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        # The answer's headers, kept only to tell at EOF whether its body was complete. Bound C
        # methods as the callbacks: recording a header then costs no Python frame.
        self.headers: dict[bytes, bytes] = {}
        self.on_header = self.headers.__setitem__
        self.on_message_begin = self.headers.clear
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open = True
        self.idle_since = self.loop.time()
        self.client.connections.add(self)

    def send(self, request: bytes, deadline: float) -> asyncio.Future[int]:
        """Write `request`; the future gets the answer's status, or TimeoutError / OSError."""
        if self.transport is None or not self.open:  # the target closed it right after accepting
            raise ConnectionResetError("connection closed before the request was sent")
        waiter = self.loop.create_future()
        self.waiter = waiter
        self.deadline = deadline
        if self.timer is None:
            self.timer_due = deadline
            self.timer = self.loop.call_at(deadline, self._check_deadline)
        self.transport.write(request)
        return waiter

    def _check_deadline(self) -> None:
        # One timer per connection rather than one per request (a timer costs more than the
        # rest of a request): it fires at the deadline of the request it was armed for, and
        # re-arms for the deadline of the one owed now if that one started later.
        self.timer = None
        if self.waiter is None:
            return
        if self.deadline > self.timer_due:
            self.timer_due = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)
            return
        self._fail(TimeoutError("no complete answer within the request timeout"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.client.buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.parser.feed_data(self.client.buffer[:nbytes])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(_BadResponse(f"malformed HTTP response: {exc!r}"))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            return  # an interim 1xx: the real answer follows
        self.head_done = True
        if self.head:
            # The answer to a HEAD has no body whatever its Content-Length says, and llhttp
            # cannot be told so: the answer ends here and a fresh parser reads the next one.
            self.parser = httptools.HttpResponseParser(self)
            self._complete(status, parser.should_keep_alive())

    def on_message_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status >= 200 and not self.head:
            self._complete(status, parser.should_keep_alive())

    def _complete(self, status: int, keep_alive: bool) -> None:
        self.head_done = False
        waiter = self.waiter
        if waiter is None:  # an answer nobody asked for: the connection is out of step
            self._fail(_BadResponse(f"unsolicited HTTP {status} answer"))
            return
        self.waiter = None
        self.idle_since = self.loop.time()
        if not keep_alive:  # Connection: close, or HTTP/1.0: the next request gets a new one
            self.open = False
            if self.transport is not None:
                self.transport.close()
        if not waiter.done():  # done: the request was cancelled meanwhile
            waiter.set_result(status)

    def eof_received(self) -> None:
        return None  # the transport closes itself; connection_lost settles what is owed

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.transport = None
        self.client.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if self.head_done and self._ends_at_eof():
            waiter.set_result(self.parser.get_status_code())  # a body delimited by the close
        else:
            waiter.set_exception(
                ConnectionResetError(f"connection closed before the answer was complete ({exc or 'EOF'})")
            )

    def _ends_at_eof(self) -> bool:
        """Whether the owed answer's body runs to the end of the connection (RFC 9112 6.3):
        then the close completes it; a close inside a Content-Length or chunked body truncates it."""
        if self.parser.get_status_code() in (204, 304):
            return False  # never has a body: llhttp completes it at its headers
        names = {name.lower(): value for name, value in self.headers.items()}
        if b"content-length" in names:
            return False
        coding = names.get(b"transfer-encoding", b"").lower().rstrip()
        return not coding.endswith(b"chunked")

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        """Close at once, dropping whatever is owed (after a timeout, a cancel, a bad answer)."""
        self.open = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()


class _Slot:
    """A worker's (closed model), an in-flight slot's (open) or a side's (probe) connection,
    re-made when the target closed it, dropped it or it sat idle too long."""

    __slots__ = ("connection",)

    def __init__(self) -> None:
        self.connection: _Connection | None = None


class _Run:
    """Counters of one run against one URL, and the one place that sends a request."""

    __slots__ = (
        "by_class",
        "client",
        "connection_errors",
        "ended",
        "in_flight",
        "latency",
        "loop",
        "rate_limited",
        "target",
        "timeouts",
    )

    def __init__(self, client: _Client, target: _Target) -> None:
        self.client = client
        self.loop = client.loop
        self.target = target
        self.latency = LatencyHistogram()
        self.by_class = [0] * 10  # responses by status // 100
        self.rate_limited = 0
        self.timeouts = 0
        self.connection_errors = 0
        self.in_flight = 0
        self.ended: float | None = None  # probe: when this side finished

    async def fetch(self, slot: _Slot, start: float) -> None:
        """Send one request on `slot`; its latency counts from `start` (perf_counter seconds)."""
        self.in_flight += 1
        try:
            status = await self._exchange(slot)
        except TimeoutError:  # before OSError: TimeoutError is one
            self.timeouts += 1
        except OSError:  # refused, reset, DNS, TLS, a malformed answer
            self.connection_errors += 1
        else:
            self.latency.record((perf_counter() - start) * 1000.0)
            self.by_class[min(status // 100, 9)] += 1
            if status == 429:
                self.rate_limited += 1
        # Not in a `finally`: a request cancelled by the deadline stays counted in flight.
        self.in_flight -= 1

    async def _exchange(self, slot: _Slot) -> int:
        """One request and its whole answer (body read and dropped) within the timeout."""
        now = self.loop.time()
        deadline = now + self.client.timeout_s  # covers connect, TLS handshake and the answer
        connection = slot.connection
        # A connection idle for long may be closed by the target just as we write to it; like
        # aiohttp, do not reuse one idle longer than KEEPALIVE_IDLE_S, so that this race (a
        # connection error the target never saw) stays as rare as it was.
        if connection is None or not connection.open or now - connection.idle_since > KEEPALIVE_IDLE_S:
            if connection is not None:
                connection.abort()
            slot.connection = None
            connection = slot.connection = await self.client.connect(self.target, deadline)
        waiter = connection.send(self.target.request, deadline)
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.abort()  # its answer may still come: the connection is out of step
            raise

    @property
    def finished(self) -> int:
        return sum(self.by_class) + self.timeouts + self.connection_errors

    def result(self, mode: Mode, planned: int, duration_s: float, owed: int = 0) -> TargetResult:
        """Freeze the counters; `owed` are open-model arrivals that fell due but never went out."""
        successes = self.by_class[2] + self.by_class[3]
        status_4xx = self.by_class[4]
        cancelled = self.in_flight + owed
        return TargetResult(
            url=self.target.url,
            mode=mode,
            planned=planned,
            requests=self.finished + cancelled,
            successes=successes,
            status_4xx=status_4xx,
            status_5xx=sum(self.by_class) - successes - status_4xx,
            rate_limited=self.rate_limited,
            timeouts=self.timeouts,
            connection_errors=self.connection_errors,
            cancelled=cancelled,
            duration_s=duration_s,
            latency=LatencySummary.of(self.latency),
        )


def _check_run(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value:g}")


async def _bounded(workers: Iterable[Coroutine[Any, Any, None]], deadline_s: float) -> bool:
    """Run the workers until they finish or `deadline_s` passes; True when cut by the deadline."""
    tasks = [asyncio.create_task(worker) for worker in workers]
    try:
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    finally:
        # Also runs when the caller is cancelled: no worker outlives the run.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # a worker's unexpected error fails the run rather than vanish
    return bool(pending)


async def run_closed(
    url: str,
    *,
    requests: int,
    concurrency: int,
    timeout_s: float,
    deadline_s: float,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> TargetResult:
    """Closed model: `requests` in total from `concurrency` workers, stopped at `deadline_s`."""
    target = _target(url, method, headers)
    _check_run("requests", requests, 1, MAX_REQUESTS)
    _check_run("concurrency", concurrency, 1, MAX_CONCURRENCY)
    _check_run("timeout_s", timeout_s, 1e-3, math.inf)
    _check_run("deadline_s", deadline_s, 1e-3, math.inf)
    workers = min(concurrency, requests)
    remaining = requests

    async def worker(fetch: Callable[[_Slot, float], Awaitable[None]]) -> None:
        nonlocal remaining
        slot = _Slot()  # one keep-alive connection per worker
        while remaining > 0:
            remaining -= 1
            await fetch(slot, perf_counter())

    client = _Client(timeout_s)
    run = _Run(client, target)
    try:
        started = perf_counter()
        await _bounded((worker(run.fetch) for _ in range(workers)), deadline_s)
        duration = perf_counter() - started
    finally:
        await client.close()
    return run.result("closed", requests, duration)


async def run_open(
    url: str,
    *,
    rate_per_s: float,
    duration_s: float,
    timeout_s: float,
    deadline_s: float,
    max_in_flight: int,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> TargetResult:
    """Open model: `rate_per_s` arrivals for `duration_s`, latency from each intended send time."""
    target = _target(url, method, headers)
    _check_run("rate_per_s", rate_per_s, 1e-3, math.inf)
    _check_run("duration_s", duration_s, 1e-3, math.inf)
    _check_run("timeout_s", timeout_s, 1e-3, math.inf)
    _check_run("deadline_s", deadline_s, 1e-3, math.inf)
    _check_run("max_in_flight", max_in_flight, 1, MAX_CONCURRENCY)
    planned = open_arrivals(rate_per_s, duration_s)
    _check_run("rate_per_s * duration_s", planned, 1, MAX_REQUESTS)
    next_index = 0
    started = 0.0

    # Each worker is one in-flight slot: it takes the next arrival, waits for its due time
    # (not at all when it is overdue) and sends it; so the schedule never drifts, at most
    # `max_in_flight` requests are out, and no task is created per request.
    async def worker(fetch: Callable[[_Slot, float], Awaitable[None]]) -> None:
        nonlocal next_index
        slot = _Slot()
        while next_index < planned:
            intended = started + next_index / rate_per_s
            next_index += 1
            # A loop, not one sleep: timers may fire a little early (asyncio by up to its clock
            # resolution, uvloop by up to 1 ms) and a request must not go out before its time.
            while (delay := intended - perf_counter()) > 0:
                await asyncio.sleep(delay)
            await fetch(slot, intended)

    client = _Client(timeout_s)
    run = _Run(client, target)
    try:
        started = perf_counter()
        cut = await _bounded((worker(run.fetch) for _ in range(min(max_in_flight, planned))), deadline_s)
        duration = perf_counter() - started
    finally:
        await client.close()
    owed = 0
    if cut:
        # Arrivals that fell due before the deadline while every slot was busy: offered load
        # the target did not absorb. They fail as cancelled rather than vanish.
        due = min(planned, math.floor(duration * rate_per_s) + 1)
        owed = max(0, due - run.finished - run.in_flight)
    return run.result("open", planned, duration, owed)


async def run_probe(
    sides: Mapping[str, str],
    *,
    requests_per_side: int,
    delay_ms: int,
    timeout_s: float,
    deadline_s: float | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> dict[str, TargetResult]:
    """Rate-limit probe: per side, `requests_per_side` requests one after another with
    `delay_ms` between them; the sides run concurrently. `sides` maps a side name ("canary",
    "legacy") to the full URL to request. Without `deadline_s` the run is bounded by its own
    worst case, `probe_deadline`."""
    if not sides:
        raise ValueError("the probe needs at least one side")
    targets = {name: _target(url, method, headers) for name, url in sides.items()}
    _check_run("requests_per_side", requests_per_side, 1, MAX_REQUESTS)
    _check_run("sides", len(sides), 1, MAX_CONCURRENCY)
    _check_run("delay_ms", delay_ms, 0, math.inf)
    _check_run("timeout_s", timeout_s, 1e-3, math.inf)
    if deadline_s is None:
        deadline_s = probe_deadline(requests_per_side, delay_ms, timeout_s)
    _check_run("deadline_s", deadline_s, 1e-3, math.inf)
    delay_s = delay_ms / 1000

    async def side(run: _Run) -> None:
        slot = _Slot()
        for i in range(requests_per_side):
            if i:
                await asyncio.sleep(delay_s)
            await run.fetch(slot, perf_counter())
        run.ended = perf_counter()

    client = _Client(timeout_s)
    runs = {name: _Run(client, target) for name, target in targets.items()}
    try:
        started = perf_counter()
        await _bounded((side(run) for run in runs.values()), deadline_s)
        cut_at = perf_counter()
    finally:
        await client.close()
    return {
        name: run.result("probe", requests_per_side, (run.ended or cut_at) - started)
        for name, run in runs.items()
    }


def run_load_test(
    targets: Mapping[str, str],
    policy: LoadTest,
    *,
    headers: Mapping[str, str] | None = None,
    function_timeout_s: float,
    memory_mb: float,
    budget_s: float | None = None,
) -> dict[str, TargetResult]:
    """The daily load test: `targets` maps a name ("canary", "stable") to a base URL; each gets
    `policy.path` appended and is loaded in `policy.mode`, one after the other (concurrent runs
    would share this instance's CPU and skew each other's latency). The open model uses
    `policy.concurrency` as its in-flight bound.

    `budget_s`: the seconds the whole load test may take (the caller's share of the
    invocation; default: the function timeout less FUNCTION_MARGIN_S). Each target gets what is
    left of it when its turn comes: the open model up to its natural deadline, the closed model
    an equal share with the targets still to run. Refuses (ValueError) before sending anything
    when the plan does not fit the function's timeout or memory, or `budget_s`."""
    if not targets:
        raise ValueError("the load test needs at least one target")
    headers = {**policy.headers, **(headers or {})}  # the policy's, plus the caller's (auth)
    least = least_target_s(policy)
    plan_fits(
        policy,
        function_timeout_s,
        memory_mb,
        targets=len(targets),
        deadline_s=None if policy.mode == "open" else least,
    )
    if budget_s is None:
        budget_s = function_timeout_s - FUNCTION_MARGIN_S
    if budget_s < least * len(targets):
        raise ValueError(
            f"the load test of {len(targets)} target(s) needs at least {least * len(targets):g} s "
            f"({least:g} s each), but was given {budget_s:g} s"
        )

    started = perf_counter()  # the budget counts from the call, loop start-up included

    async def main() -> dict[str, TargetResult]:
        results = {}
        for index, (name, base) in enumerate(targets.items()):
            url = base.rstrip("/") + policy.path
            left_s = budget_s - (perf_counter() - started)
            if policy.mode == "open":
                results[name] = await run_open(
                    url,
                    rate_per_s=policy.rate_per_s,
                    duration_s=policy.duration_s,
                    timeout_s=policy.request_timeout_s,
                    deadline_s=min(open_deadline(policy), left_s),
                    max_in_flight=policy.concurrency,
                    method=policy.method,
                    headers=headers,
                )
            else:
                results[name] = await run_closed(
                    url,
                    requests=policy.requests,
                    concurrency=policy.concurrency,
                    timeout_s=policy.request_timeout_s,
                    # Its length is unknown: an equal share of what is left, so time a canary
                    # did not use goes to the stable side.
                    deadline_s=left_s / (len(targets) - index),
                    method=policy.method,
                    headers=headers,
                )
        return results

    # asyncio's own loop: uvloop is not a dependency (bench/README.md).
    return asyncio.run(main())
