"""Revision processes of a rehearsal, and what Cloud Run would measure of their containers.

`RevisionProcess` runs one revision as a local process: any shell command that serves HTTP on
$PORT (bring your own, e.g. `python -m http.server $PORT`, or `python -m
infra.rehearsal.sample_app`). It gets the environment Cloud Run gives a container (PORT,
K_SERVICE, K_REVISION), runs in its own process group (the command may spawn children) and
logs to a file.

`ResourceSampler` samples each running revision's process tree (RSS and CPU time, with psutil)
every `interval_s` real seconds and keeps the samples per (revision, minute), the minute read
from canary-guard's clock: memory utilisation (RSS / the memory limit, 512 MiB by default as on
Cloud Run) and CPU utilisation (CPU seconds per real second, per vCPU). These become the
`container/memory/utilizations` and `container/cpu/utilizations` distributions. A process that
has exited yields no samples: Cloud Run would show no instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

import psutil

from infra.localstack import free_port
from shared import clock
from shared.core.evidence import whole_minute

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT_BYTES = 512 * 1024 * 1024  # Cloud Run's default memory limit
MINUTE = timedelta(minutes=1)


class RevisionStartError(RuntimeError):
    """The revision's command exited, or never accepted connections, before the timeout."""


class RevisionProcess:
    """One revision's process: started, waited for until it accepts TCP connections, stopped."""

    def __init__(
        self,
        revision: str,
        command: str,
        *,
        service: str = "",
        port: int = 0,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.revision = revision
        self.service = service
        self.command = command
        self.port = port or free_port()
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"rehearsal-{revision}-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self._env = dict(env or {})
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the command has exited, else None."""
        return self._process.poll() if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30.0) -> RevisionProcess:
        """Start the command and wait until 127.0.0.1:port accepts connections."""
        if self._process is not None:
            raise RuntimeError(f"revision {self.revision} was already started")
        env = {**os.environ, **self._env, "PORT": str(self.port), "K_REVISION": self.revision}
        if self.service:
            env["K_SERVICE"] = self.service
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                self.command,
                shell=True,
                env=env,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches every child
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if (code := self._process.poll()) is not None:
                raise RevisionStartError(
                    f"revision {self.revision} exited with code {code} before accepting connections on"
                    f" port {self.port}; `{self.command}` logged:\n{self.log_tail()}"
                )
            if _accepts_connections(self.port):
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise RevisionStartError(
                    f"revision {self.revision} did not accept connections on port {self.port} within"
                    f" {timeout_s} s; `{self.command}` logged:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code once the process exits within `timeout_s`, else None (still running)."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout_s`."""
        if self._process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, sig)  # the group outlives its leader while children live
            try:
                self._process.wait(timeout=timeout_s)
                if sig == signal.SIGTERM:
                    # The leader is gone; make sure no child it left behind keeps the port.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self._process.pid, signal.SIGKILL)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> RevisionProcess:
        return self if self._process is not None else self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ResourceMinute:
    """One revision's container samples in one minute, as utilisations (fractions, not %)."""

    service: str
    revision: str
    start: datetime
    memory_utilizations: tuple[float, ...]
    cpu_utilizations: tuple[float, ...]


@dataclass
class _Samples:
    memory: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


@dataclass
class _TreeCpu:
    """The CPU seconds of each process of a tree at the last sample, to take differences."""

    at: float  # time.monotonic()
    seconds_by_process: dict[tuple[int, float], float]  # (pid, create_time) -> user + system


class ResourceSampler:
    """Samples every added revision's process tree in a background thread, per minute of `now()`."""

    def __init__(
        self,
        revisions: Iterable[RevisionProcess] = (),
        *,
        interval_s: float = 1.0,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        vcpus: float = 1.0,
        now: Callable[[], datetime] = clock.now,
    ) -> None:
        if interval_s <= 0 or memory_limit_bytes <= 0 or vcpus <= 0:
            raise ValueError("interval_s, memory_limit_bytes and vcpus must be > 0")
        self.interval_s = interval_s
        self.memory_limit_bytes = memory_limit_bytes
        self.vcpus = vcpus
        self._now = now
        self._lock = threading.Lock()
        self._revisions: dict[str, RevisionProcess] = {}
        self._last_cpu: dict[str, _TreeCpu] = {}
        self._minutes: dict[tuple[str, str, datetime], _Samples] = {}
        self._rounds = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        for revision in revisions:
            self.add(revision)

    def add(self, revision: RevisionProcess) -> None:
        with self._lock:
            self._revisions[revision.revision] = revision

    def remove(self, revision: str) -> None:
        with self._lock:
            self._revisions.pop(revision, None)
            self._last_cpu.pop(revision, None)

    @property
    def rounds(self) -> int:
        """Sampling rounds completed so far (lets a caller await fresh samples)."""
        with self._lock:
            return self._rounds

    def start(self) -> ResourceSampler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            try:
                self.sample_once()
            except Exception:  # one bad round must not end the sampling of a long rehearsal
                log.exception("resource sampling failed")
            next_at += self.interval_s
            self._stopping.wait(max(0.0, next_at - time.monotonic()))

    def sample_once(self) -> None:
        """Sample every running revision once, into the minute `now()` is in."""
        with self._lock:
            revisions = list(self._revisions.values())
        readings = [(revision, _read_tree(revision)) for revision in revisions]
        with self._lock:
            minute = whole_minute(self._now())
            for revision, reading in readings:
                if reading is None:  # not running: no instance, no samples
                    self._last_cpu.pop(revision.revision, None)
                    continue
                rss_bytes, cpu = reading
                samples = self._minutes.setdefault((revision.service, revision.revision, minute), _Samples())
                samples.memory.append(rss_bytes / self.memory_limit_bytes)
                previous = self._last_cpu.get(revision.revision)
                if previous is not None and cpu.at > previous.at:
                    samples.cpu.append(
                        _cpu_seconds_since(previous, cpu) / (cpu.at - previous.at) / self.vcpus
                    )
                self._last_cpu[revision.revision] = cpu
            self._rounds += 1

    def take_minutes(self, before: datetime) -> list[ResourceMinute]:
        """Return and forget every minute that ended by `before` (pass the current minute's start
        for every finished minute), oldest first."""
        with self._lock:
            done = sorted(key for key in self._minutes if key[2] + MINUTE <= before)
            taken = [(key, self._minutes.pop(key)) for key in done]
        return [
            ResourceMinute(service, revision, start, tuple(samples.memory), tuple(samples.cpu))
            for (service, revision, start), samples in taken
        ]


def _read_tree(revision: RevisionProcess) -> tuple[int, _TreeCpu] | None:
    """RSS (bytes) and CPU seconds per process of the revision's process tree; None if it is gone."""
    pid = revision.pid
    if pid is None or not revision.running:
        return None
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    at = time.monotonic()
    rss_bytes = 0
    seconds_by_process: dict[tuple[int, float], float] = {}
    for process in tree:
        try:
            with process.oneshot():
                memory, cpu, created = process.memory_info(), process.cpu_times(), process.create_time()
        except psutil.Error:
            continue  # a child that exited between the listing and the read
        rss_bytes += memory.rss
        seconds_by_process[(process.pid, created)] = cpu.user + cpu.system
    return rss_bytes, _TreeCpu(at, seconds_by_process)


def _cpu_seconds_since(previous: _TreeCpu, current: _TreeCpu) -> float:
    """CPU seconds the tree used between two samples; a process new since `previous` counts whole
    (it started after it), one gone since is lost (as Cloud Run loses an instance's last moments)."""
    return sum(
        max(0.0, seconds - previous.seconds_by_process.get(key, 0.0))
        for key, seconds in current.seconds_by_process.items()
    )
