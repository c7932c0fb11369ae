"""A sample service to play a revision (stable or canary) in a go-live rehearsal, with faults.

`python -m infra.rehearsal.sample_app` listens on $PORT (Cloud Run's convention) or `--port`:

    GET  /         a small JSON answer after a little CPU work (names K_SERVICE / K_REVISION)
    GET  /health   200 while healthy: the uptime check's path (503 while every request fails)
    GET  /_faults  the faults, the seconds on the fault clock, whether they are active now
    POST /_faults  a JSON object of faults REPLACES them (keys left out are off) and restarts
                   the fault clock; unknown keys or bad values are answered 400

Faults (CLI flags `--error-share 0.05` and the same JSON keys):

    error_share               0..1: share of `/` requests answered 500 (drawn at random)
    latency_ms                added to every answer (real milliseconds, ±10 % jitter)
    cpu_ms                    extra CPU work per `/` request (real milliseconds)
    memory_growth_mb_per_min  memory allocated and held at that rate per minute (RSS really
                              grows; held memory is never given back, like a leak)
    memory_mb                 memory held while the faults are on, on top of any leak (a level:
                              a lower value frees the difference, as far as malloc returns it)
    crash_after_s             the process exits (code 3) that many seconds after the faults start
    flap_period_s             the faults are on for a period, off for the next, and so on
    slow_start_s              the port is not opened until then (a slow cold start)
    faults_from_s             the faults start that many seconds after the fault clock started
                              (the process start, or the last POST): healthy before

Every `_s` and per-minute fault runs on canary-guard's clock (shared/clock.py): a rehearsal sets
CANARY_GUARD_CLOCK, so `faults_from_s=600` starts the faults ten rehearsal minutes in (50 real
seconds at x12). Latency and CPU work are real time: the requests really take that long.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared import clock

MIB = 1024 * 1024
CRASH_EXIT_CODE = 3
TICK_S = 0.1  # real seconds between memory-growth and crash checks
DEFAULT_MEMORY_CAP_MB = 2048  # a safety stop for memory growth, so a long rehearsal cannot swap the host
BASE_WORK_ROUNDS = 300  # sha256 rounds per `/` request: "a little CPU work" (~0.1-0.3 ms)


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and when (see the module docstring)."""

    error_share: float = 0.0
    latency_ms: float = 0.0
    cpu_ms: float = 0.0
    memory_growth_mb_per_min: float = 0.0
    memory_mb: float = 0.0
    crash_after_s: float | None = None  # None: never
    flap_period_s: float = 0.0  # 0: no flapping
    slow_start_s: float = 0.0  # read at start only
    faults_from_s: float = 0.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name == "crash_after_s":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{item.name} must be a number >= 0, got {value!r}")
        if self.error_share > 1:
            raise ValueError(f"error_share must be in 0..1, got {self.error_share}")

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        if not isinstance(data, dict):
            raise ValueError(f"faults must be a JSON object, got {data!r}")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SampleApp:
    """The service's state: its faults on a fault clock, and the memory it holds."""

    def __init__(
        self,
        faults: Faults,
        *,
        now: Callable[[], datetime] = clock.now,
        rng: random.Random | None = None,
        memory_cap_mb: float = DEFAULT_MEMORY_CAP_MB,
    ) -> None:
        self._now = now
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._faults = faults
        self._fault_clock_start = now()
        self._memory_cap_mb = memory_cap_mb
        self._leaked: list[bytes] = []  # memory_growth_mb_per_min's, kept for good
        self._level: list[bytes] = []  # memory_mb's, resized to the fault
        self._memory_owed_mb = 0.0
        self._last_tick = self._fault_clock_start

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._fault_clock_start = self._now()

    def _elapsed_s(self, at: datetime) -> float:
        return (at - self._fault_clock_start).total_seconds()

    def _active(self, faults: Faults, elapsed_s: float) -> bool:
        since_faults = elapsed_s - faults.faults_from_s
        if since_faults < 0:
            return False
        if faults.flap_period_s > 0:
            return int(since_faults // faults.flap_period_s) % 2 == 0  # on, off, on, ...
        return True

    def active_faults(self) -> Faults | None:
        """The faults in force at this moment, or None while healthy."""
        with self._lock:
            faults, elapsed = self._faults, self._elapsed_s(self._now())
        return faults if self._active(faults, elapsed) else None

    def status(self) -> dict[str, Any]:
        with self._lock:
            faults, elapsed = self._faults, self._elapsed_s(self._now())
            held_mb = self._held_mb()
        return {
            "faults": faults.to_json(),
            "elapsed_s": round(elapsed, 3),
            "active": self._active(faults, elapsed),
            "held_mb": held_mb,
        }

    def crash_due(self) -> bool:
        with self._lock:
            faults, elapsed = self._faults, self._elapsed_s(self._now())
        return faults.crash_after_s is not None and elapsed >= faults.faults_from_s + faults.crash_after_s

    def hold_memory(self) -> None:
        """Allocate what the growth rate owes since the last call, and resize the memory_mb level
        (both only while the faults are on)."""
        with self._lock:
            at = self._now()
            minutes = max(0.0, (at - self._last_tick).total_seconds() / 60)
            self._last_tick = at
            faults = self._faults
            active = self._active(faults, self._elapsed_s(at))
            level_mb = int(faults.memory_mb) if active else 0
            del self._level[level_mb:]
            while len(self._level) < level_mb and self._held_mb() < self._memory_cap_mb:
                self._level.append(_filled_mib())
            if not active or not faults.memory_growth_mb_per_min:
                return
            self._memory_owed_mb += faults.memory_growth_mb_per_min * minutes
            while self._memory_owed_mb >= 1 and self._held_mb() < self._memory_cap_mb:
                self._leaked.append(_filled_mib())
                self._memory_owed_mb -= 1

    def _held_mb(self) -> int:
        return len(self._leaked) + len(self._level)

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of a GET of `path` (the fault clock decides; sleeps the latency)."""
        faults = self.active_faults()
        if faults is not None and faults.latency_ms:
            time.sleep(faults.latency_ms * self._rng.uniform(0.9, 1.1) / 1000)
        if path == "/health":
            if faults is not None and faults.error_share >= 1:
                return 503, {"status": "failing"}
            return 200, {"status": "ok"}
        if path != "/":
            return 404, {"error": f"no such path {path}"}
        digest = _busy(BASE_WORK_ROUNDS, faults.cpu_ms if faults is not None else 0.0)
        if faults is not None and self._rng.random() < faults.error_share:
            return 500, {"error": "injected fault"}
        body = {
            "service": os.environ.get("K_SERVICE", ""),
            "revision": os.environ.get("K_REVISION", ""),
            "digest": digest[:16],
        }
        return 200, body


def _filled_mib() -> bytes:
    # Filled, not just reserved: every page is written, so RSS grows by the full MiB.
    return b"\x5a" * MIB


def _busy(rounds: int, extra_cpu_ms: float) -> str:
    """Hash in a loop: a little fixed work, then more until `extra_cpu_ms` of CPU time is spent."""
    digest = b"canary-guard"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    if extra_cpu_ms > 0:
        until = time.thread_time() + extra_cpu_ms / 1000
        while time.thread_time() < until:
            for _ in range(100):
                digest = hashlib.sha256(digest).digest()
    return digest.hex()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: SampleApp) -> None:
        super().__init__(address, _Handler)
        self.app = app


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: a load driver's session reuses its connection
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_faults":
            self._send(200, self.server.app.status())
            return
        self._send(*self.server.app.answer(path))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path != "/_faults":
            self._send(404, {"error": f"no such path {path}"})
            return
        try:
            faults = Faults.from_json(json.loads(raw or b"{}"))
        except (ValueError, TypeError) as error:
            self._send(400, {"error": str(error)})
            return
        self.server.app.set_faults(faults)
        print(f"faults set: {faults.to_json()}", flush=True)
        self._send(200, self.server.app.status())

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the router counts requests; a log line per request would only fill the disk


def _tick_forever(app: SampleApp) -> None:
    while True:
        if app.crash_due():
            print("crashing as the crash_after_s fault says", flush=True)
            os._exit(CRASH_EXIT_CODE)  # no cleanup, like an instance that dies
        app.hold_memory()
        time.sleep(TICK_S)


def _wait_slow_start(seconds: float, started: datetime, now: Callable[[], datetime]) -> None:
    while (now() - started).total_seconds() < seconds:
        time.sleep(0.02)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="default: $PORT, else 8080")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=None, help="seed of the error draw")
    parser.add_argument("--memory-cap-mb", type=float, default=DEFAULT_MEMORY_CAP_MB)
    for item in fields(Faults):
        flag = "--" + item.name.replace("_", "-")
        parser.add_argument(flag, dest=item.name, type=float, default=item.default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = clock.now()
    try:
        faults = Faults(**{item.name: getattr(args, item.name) for item in fields(Faults)})
    except ValueError as error:
        sys.exit(f"sample_app: {error}")
    port = args.port if args.port is not None else int(os.environ.get("PORT", "8080"))
    app = SampleApp(faults, rng=random.Random(args.seed), memory_cap_mb=args.memory_cap_mb)
    threading.Thread(target=_tick_forever, args=(app,), name="faults", daemon=True).start()
    _wait_slow_start(faults.slow_start_s, started, clock.now)
    server = _Server((args.host, port), app)
    revision = os.environ.get("K_REVISION", "sample")
    print(f"{revision} serving on http://{args.host}:{port} with faults {faults.to_json()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
