"""A small HTTP/1.1 client for load generation (shared/clients/loadgen.py runs it).

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
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, unquote, urlsplit

import httptools

KEEPALIVE_IDLE_S = 15.0  # a connection idle longer is replaced, not reused (aiohttp's default)
USER_AGENT = "canary-guard-loadgen"
RECEIVE_BUFFER_BYTES = 256 * 1024  # what asyncio reads at most per call anyway


class BadResponse(ConnectionError):
    """The target's answer was not valid HTTP/1.1: counted as a connection error."""


@dataclass(frozen=True, slots=True)
class Target:
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


def target_of(url: str, method: str = "GET", headers: Mapping[str, str] | None = None) -> Target:
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
    return Target(url, host, port or default_port, tls, (head + "\r\n").encode(), method == "HEAD")


def client_ssl_context() -> ssl.SSLContext:
    """Verifying TLS client context: the system's CAs (or SSL_CERT_FILE's), hostname checked."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])  # a front end that speaks HTTP/2 must not pick it
    return context


class HttpClient:
    """The connections of one run: opens them, and closes all of them at the end."""

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.connections: set[Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        # One receive buffer for all connections: the transport fills it (recv_into) and the
        # parser consumes it within the same callback. With a plain Protocol each read is a
        # fresh 256 KiB bytes object: mmap, mremap and munmap, ~15 µs of kernel time per request
        # here, more than all the rest of the generator (bench/README.md).
        self.buffer = memoryview(bytearray(RECEIVE_BUFFER_BYTES))

    async def connect(self, target: Target, deadline: float) -> Connection:
        """A new connection to `target`; TimeoutError past `deadline` (loop time), OSError else."""
        tls = None
        if target.tls:
            if self._ssl is None:  # made once per run: loading the CA store takes milliseconds
                self._ssl = client_ssl_context()
            tls = self._ssl
        connection = Connection(self, target.head)
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


class Connection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time.

    httptools calls back into this object while it parses. There is deliberately no `on_body`:
    llhttp then skips body bytes in C, so a response of any size costs one Python callback
    (`on_message_complete`) and no buffering.
    """

    def __init__(self, client: HttpClient, head: bool) -> None:
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
            self._fail(BadResponse(f"malformed HTTP response: {exc!r}"))

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
            self._fail(BadResponse(f"unsolicited HTTP {status} answer"))
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
