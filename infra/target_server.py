"""A local HTTP target with controllable behaviour, for the load generator's tests and benchmark.

Every path answers `200 ok` unless the behaviour says otherwise:

- `error_share`: that fraction of requests gets a 500. Deterministic, not random: request n
  (counting from 1 since the last configure) fails when floor(n x share) steps up, so the first
  N requests hold exactly floor(N x share) failures, evenly spread;
- `drop_share`: that fraction of requests (same deterministic rule) has its connection reset
  without an answer;
- `rate_limit_rps` / `rate_limit_burst`: a token bucket (full at configure time, burst defaults
  to one second of rate); a request finding it empty gets a 429;
- `latency_ms`: added to every answer;
- `slow_start_s` / `slow_start_ms`: extra latency that starts at `slow_start_ms` and falls
  linearly to 0 over the first `slow_start_s` seconds after configure (a cold instance);
- `stall_at_s` / `stall_s`: every answer due between `stall_at_s` and `stall_at_s + stall_s`
  seconds after configure is held until the stall ends (a GC pause, a stuck dependency).

A request can also override its own answer with the query parameters `status=NNN` and
`latency_ms=X`. Control endpoints (not counted): `POST /_target/config` with a JSON object
replaces the behaviour (fields left out return to their defaults), restarts its clock and
resets the counters; `GET /_target/config` returns it; `GET /_target/stats` returns the counts.

The server is a small asyncio protocol rather than a web framework: at ~13 µs of CPU per
request it costs a fraction of aiohttp.web's, so the Python load generator cannot saturate it
(bench/README.md). HTTP/1.1 keep-alive, one request at a time per connection, Content-Length
bodies only.

Run: `python -m infra.target_server --port 9100 --error-share 0.01`, or from Python
`start_target_server(port=0, latency_ms=20)`, which starts it in a subprocess (so the load and
the target do not share a GIL) and returns a handle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import subprocess
import sys
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


@dataclass(frozen=True)
class Behaviour:
    error_share: float = 0.0
    drop_share: float = 0.0
    rate_limit_rps: float = 0.0  # 0: no rate limit
    rate_limit_burst: float = 0.0  # 0: one second of rate_limit_rps
    latency_ms: float = 0.0
    slow_start_s: float = 0.0
    slow_start_ms: float = 0.0
    stall_at_s: float = 0.0
    stall_s: float = 0.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{item.name} must be a number >= 0, got {value!r}")
        for name in ("error_share", "drop_share"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_json(cls, data: Any) -> Behaviour:
        if not isinstance(data, dict):
            raise ValueError("the config must be a JSON object")
        unknown = set(data) - {item.name for item in fields(cls)}
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {sorted(unknown)}")
        return cls(**data)


def _share(value: float) -> tuple[int, int]:
    """A share as an exact fraction of the decimal written, for integer-only step tests."""
    exact = Fraction(repr(float(value)))
    return exact.numerator, exact.denominator


def _response(status: int, body: bytes, *, close: bool = False, content_type: bytes = b"text/plain") -> bytes:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}".encode(),
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(body),
    ]
    if status == 429:
        head.append(b"Retry-After: 1")
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# Pre-built answers: the hot path only writes bytes.
_CANNED = {
    (status, close): _response(status, body, close=close)
    for status, body in ((200, b"ok"), (429, b"rate limited"), (500, b"error"))
    for close in (False, True)
}


class _Target:
    """Behaviour, its clock and counters, shared by all connections of the server."""

    def __init__(self, loop: asyncio.AbstractEventLoop, behaviour: Behaviour) -> None:
        self.loop = loop
        self.generation = 0
        self.configure(behaviour)

    def configure(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.generation += 1  # connections count again once they carry a request
        self.since = self.loop.time()
        self.arrivals = 0
        self.dropped = 0
        self.connections = 0
        self.responses: Counter[int] = Counter()
        self.error = _share(behaviour.error_share)
        self.drop = _share(behaviour.drop_share)
        self.burst = behaviour.rate_limit_burst or behaviour.rate_limit_rps
        self.tokens = self.burst
        self.tokens_at = self.since
        self.stall_from = self.since + behaviour.stall_at_s
        self.stall_until = self.stall_from + behaviour.stall_s

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.arrivals,
            "responses": {str(status): n for status, n in sorted(self.responses.items())},
            "dropped": self.dropped,
            "connections": self.connections,  # that carried a request since configure
        }

    @staticmethod
    def _steps(n: int, share: tuple[int, int]) -> bool:
        numerator, denominator = share
        return n * numerator // denominator > (n - 1) * numerator // denominator

    def decide(self, query: bytes) -> tuple[int, float] | None:
        """(status, when to answer in loop time) for the next request, or None to drop it."""
        behaviour = self.behaviour
        self.arrivals += 1
        n = self.arrivals
        if self._steps(n, self.drop):
            self.dropped += 1
            return None
        now = self.loop.time()
        status = 200
        if behaviour.rate_limit_rps:
            self.tokens = min(self.burst, self.tokens + (now - self.tokens_at) * behaviour.rate_limit_rps)
            self.tokens_at = now
            if self.tokens >= 1:
                self.tokens -= 1
            else:
                status = 429
        if status == 200 and self._steps(n, self.error):
            status = 500
        delay_ms = behaviour.latency_ms
        if query:
            overrides = parse_qs(query.decode("latin-1"))
            if "status" in overrides:
                status = int(overrides["status"][0])
                if not 200 <= status <= 599:
                    raise ValueError(f"status override must be in [200, 599], got {status}")
            if "latency_ms" in overrides:
                delay_ms = float(overrides["latency_ms"][0])
        warm = now - self.since
        if warm < behaviour.slow_start_s:
            delay_ms += behaviour.slow_start_ms * (1 - warm / behaviour.slow_start_s)
        when = now + delay_ms / 1000
        if self.stall_from <= when < self.stall_until:
            when = self.stall_until
        return status, when


class _Connection(asyncio.Protocol):
    """One client connection: parse a request, answer it (maybe later), then the next one."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.TimerHandle | None = None  # an answer waiting for its time
        self.generation = -1  # the target's configuration this connection was counted in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.pending is not None:
            self.pending.cancel()  # nobody is left to answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.pending is None:
            self.process()

    def process(self) -> None:
        while self.transport is not None and self.pending is None:
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self.reply(_response(431, b"request head too large", close=True), close=True)
                return
            head = buffer[:end]
            lower = head.lower()
            if _header(lower, b"transfer-encoding") is not None:
                self.reply(_response(501, b"chunked bodies are not supported", close=True), close=True)
                return
            length = _header(lower, b"content-length") or b"0"
            if not length.isdigit():
                self.reply(_response(400, b"bad content-length", close=True), close=True)
                return
            body_length = int(length)
            if body_length > MAX_BODY_BYTES:
                self.reply(_response(413, b"body too large", close=True), close=True)
                return
            total = end + 4 + body_length
            if len(buffer) < total:
                return  # wait for the rest of the body
            body = buffer[end + 4 : total]
            self.buffer = buffer[total:]
            line_end = head.find(b"\r\n")
            parts = (head if line_end < 0 else head[:line_end]).split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self.reply(_response(400, b"malformed request line", close=True), close=True)
                return
            method, target, version = parts
            connection = _header(lower, b"connection")
            close = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
            path, _, query = target.partition(b"?")
            if path.startswith(b"/_target/"):
                self.control(method, path, body, close)
            else:
                self.serve(query, close)

    def serve(self, query: bytes, close: bool) -> None:
        if self.generation != self.target.generation:
            self.generation = self.target.generation
            self.target.connections += 1
        try:
            decision = self.target.decide(query)
        except ValueError:
            self.reply(_response(400, b"bad status or latency_ms override", close=close), close=close)
            return
        if decision is None:
            assert self.transport is not None
            self.transport.abort()  # reset the connection without answering
            self.transport = None
            return
        status, when = decision
        if when <= self.target.loop.time():
            self.answer(status, close)
        else:
            self.pending = self.target.loop.call_at(when, self.answer_later, status, close)

    def answer_later(self, status: int, close: bool) -> None:
        self.pending = None
        self.answer(status, close)
        self.process()  # a request that arrived meanwhile

    def answer(self, status: int, close: bool) -> None:
        payload = _CANNED.get((status, close)) or _response(status, b"status %d" % status, close=close)
        self.target.responses[status] += 1
        self.reply(payload, close=close)

    def control(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        target = self.target
        status, document = 200, None
        if path == b"/_target/stats" and method == b"GET":
            document = target.stats()
        elif path == b"/_target/config" and method == b"GET":
            document = asdict(target.behaviour)
        elif path == b"/_target/config" and method == b"POST":
            try:
                target.configure(Behaviour.from_json(json.loads(body or b"{}")))
                document = asdict(target.behaviour)
            except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
                status, document = 400, {"error": str(exc)}
        else:
            status, document = 404, {"error": f"no control endpoint {method.decode()} {path.decode()}"}
        payload = json.dumps(document).encode()
        self.reply(_response(status, payload, close=close, content_type=b"application/json"), close=close)

    def reply(self, payload: bytes, *, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(payload)
        if close:
            self.transport.close()  # after the write is flushed
            self.transport = None


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """Value of header `name` (lower case) in a lower-cased request head, or None."""
    start = lower_head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : None if end < 0 else end].strip()


async def serve(host: str, port: int, behaviour: Behaviour) -> None:
    loop = asyncio.get_running_loop()
    target = _Target(loop, behaviour)
    server = await loop.create_server(lambda: _Connection(target), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"target listening on http://{host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


class TargetHandle:
    """A target server running in a subprocess: its base URL and its control endpoints."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    @property
    def pid(self) -> int:
        return self.process.pid

    def _call(self, path: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def configure(self, **behaviour: float) -> dict[str, Any]:
        """Replace the behaviour (unnamed fields go back to defaults) and reset the counters."""
        Behaviour.from_json(behaviour)  # a bad field fails here, with its name, not as an HTTP 400
        return self._call("/_target/config", behaviour)

    def stats(self) -> dict[str, Any]:
        return self._call("/_target/stats")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> TargetHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _flags(behaviour: Behaviour) -> list[str]:
    return [
        part
        for name, value in asdict(behaviour).items()
        if value
        for part in (f"--{name.replace('_', '-')}", repr(value))
    ]


def start_target_server(
    port: int = 0, *, host: str = "127.0.0.1", startup_timeout_s: float = 10.0, **behaviour: float
) -> TargetHandle:
    """Start the target in a subprocess on `host`:`port` (0: a free port) and wait until it answers."""
    initial = Behaviour.from_json(behaviour)
    command = [sys.executable, "-m", "infra.target_server", "--host", host, "--port", str(port)]
    process = subprocess.Popen([*command, *_flags(initial)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], startup_timeout_s)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("target listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"the target server did not start (exit code {process.returncode}): {line!r}")
    handle = TargetHandle(process, line.removeprefix("target listening on ").strip())
    try:
        handle.stats()  # answers over HTTP, not just bound
    except OSError:
        handle.stop()
        raise
    return handle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    for item in fields(Behaviour):
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=float, default=item.default)
    args = parser.parse_args(argv)
    try:
        behaviour = Behaviour(**{item.name: getattr(args, item.name) for item in fields(Behaviour)})
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, behaviour))


if __name__ == "__main__":
    main()
