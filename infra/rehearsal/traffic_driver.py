"""Steady load for the rehearsal: `TrafficDriver` sends requests to a URL from a few threads, at
a fixed rate, and counts what came back by response class."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable

import requests

from infra.rehearsal.served import response_class


class TrafficDriver:
    """Steady load on `url`: `rps` requests per real second in all, from `threads` threads (one
    requests.Session each), cycling through `paths`, until stopped. Counts outcomes by response
    class, and "error" for requests that got no answer."""

    def __init__(
        self,
        url: str,
        rps: float,
        paths: Iterable[str] = ("/",),
        *,
        threads: int = 4,
        timeout_s: float = 10.0,
    ) -> None:
        if rps <= 0 or threads <= 0:
            raise ValueError("rps and threads must be > 0")
        self.url = url.rstrip("/")
        self.rps = rps
        self.paths = tuple(paths) or ("/",)
        self.timeout_s = timeout_s
        self._thread_count = threads
        self._lock = threading.Lock()
        self._outcomes: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> TrafficDriver:
        interval = self._thread_count / self.rps
        for index in range(self._thread_count):
            # Staggered, so the threads' requests interleave instead of arriving in bursts.
            first_at = time.monotonic() + index * interval / self._thread_count
            thread = threading.Thread(
                target=self._drive, args=(index, first_at, interval), name=f"driver-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> dict[str, int]:
        """Stop, wait for the requests in flight, and return the outcomes."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        return self.outcomes()

    def outcomes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outcomes)

    def sent(self) -> int:
        with self._lock:
            return sum(self._outcomes.values())

    def _drive(self, index: int, next_at: float, interval: float) -> None:
        with requests.Session() as session:
            sent = 0
            while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
                path = self.paths[(index + sent * self._thread_count) % len(self.paths)]
                try:
                    outcome = response_class(session.get(self.url + path, timeout=self.timeout_s).status_code)
                except requests.RequestException:
                    outcome = "error"
                with self._lock:
                    self._outcomes[outcome] += 1
                sent += 1
                # Fixed schedule, no catch-up burst after a slow answer of more than a second.
                next_at = max(next_at + interval, time.monotonic() - 1.0)

    def __enter__(self) -> TrafficDriver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
