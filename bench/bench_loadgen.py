"""Benchmark: the closed-model load generator against wrk, same target, concurrency and duration.

    .venv/bin/python -m bench.bench_loadgen [--concurrency 16] [--duration 10] [--rounds 3]
    .venv/bin/python -m bench.bench_loadgen --memory

The target (infra/target_server.py) runs in its own process on loopback; wrk (-t1) and our
generator each run as a child process, alternating, so both see the same machine state. For
each run it prints requests/s, the child's peak RSS (VmHWM) and CPU time per request (rusage
of the reaped child), and the target's CPU use (near 100 % means the target was the limit).
Installs wrk with apt-get when it is missing.

`--memory` measures the constants of shared.core.load_rules.plan_fits: the RSS of a process with the
load_test function's imports, and the peak RSS per concurrent connection over plain HTTP and
TLS, with 2-byte and 1 MiB bodies, against a fixed-answer server in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from infra.target_server import TargetHandle, start_target_server
from infra.tls import self_signed_certificate
from shared.clients.loadgen import run_closed
from shared.core.load_rules import MAX_REQUESTS

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    label: str  # "wrk" or "loadgen"
    rate: float
    peak_rss_mib: float
    cpu_s: float
    requests: int
    target_cpu: float  # share of one core the target used during the run
    detail: str = ""

    @property
    def cpu_per_request_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def line(self, prefix: str) -> str:
        return (
            f"{prefix:<9} {self.label:<8} {self.rate:>9,.0f} req/s  peak RSS {self.peak_rss_mib:5.1f} MiB  "
            f"CPU {self.cpu_per_request_us:5.1f} µs/req  target CPU {self.target_cpu:4.0%}  {self.detail}"
        )


def ensure_wrk() -> str | None:
    """Path of wrk, installing it with apt-get when missing; None (and a message) if impossible."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get ...", flush=True)
    if shutil.which("apt-get"):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
        subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet)
        if shutil.which("wrk") is None:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet)
        found = shutil.which("wrk")
        if found:
            return found
    print(
        "ERROR: wrk is not installed and could not be installed (tried `apt-get install -y wrk`, "
        "as root, after `apt-get update`). Install it by hand and rerun; only our generator is measured.",
        flush=True,
    )
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(command: list[str], target: TargetHandle) -> tuple[str, float, float, int, float]:
    """Run `command` as a child process and return its stdout, its peak RSS (MiB), its CPU
    time (s), how many requests the target served, and the target's CPU use (cores)."""
    target.configure()  # reset the target's counters
    cpu_before, started = cpu_seconds(target.pid), time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    # Peak RSS from the child's VmHWM, polled until it exits: getrusage's ru_maxrss would also
    # count the parent's pages that the (v)forked child held until it exec'd (~47 MiB here).
    peak = 0.0
    while True:
        with contextlib.suppress(OSError):  # it may exit between the two calls
            peak = max(peak, peak_rss_mib(child.pid))
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # reap it ourselves: CPU time
        if pid:
            break
        time.sleep(0.05)
    child.returncode = os.waitstatus_to_exitcode(status)
    output = child.stdout.read()
    elapsed = time.perf_counter() - started
    target_cpu = (cpu_seconds(target.pid) - cpu_before) / elapsed
    if child.returncode:
        raise SystemExit(f"{command[0]} failed with exit code {child.returncode}:\n{output}")
    served = target.stats()["requests"]
    return output, peak, usage.ru_utime + usage.ru_stime, served, target_cpu


def run_wrk(wrk: str, url: str, concurrency: int, duration: int, target: TargetHandle) -> Run:
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", url]
    output, rss, cpu, served, target_cpu = measure(command, target)
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    p50 = re.search(r"\s50%\s+(\S+)", output)
    p99 = re.search(r"\s99%\s+(\S+)", output)
    detail = f"p50 {p50.group(1) if p50 else '?'}  p99 {p99.group(1) if p99 else '?'}"
    return Run("wrk", float(match.group(1)), rss, cpu, served, target_cpu, detail)


def run_ours(url: str, concurrency: int, duration: int, target: TargetHandle) -> Run:
    command = [sys.executable, "-m", "bench.bench_loadgen", "--generator", url]
    command += ["--concurrency", str(concurrency), "--duration", str(duration)]
    output, rss, cpu, served, target_cpu = measure(command, target)
    result = json.loads(output)
    latency = result["latency_ms"]
    detail = f"p50 {latency['p50']:.2f}ms  p99 {latency['p99']:.2f}ms"
    return Run("loadgen", result["achieved_rate_per_s"], rss, cpu, served, target_cpu, detail)


def generator(url: str, concurrency: int, duration: int) -> None:
    """Child process: the closed model for `duration` seconds (the deadline ends it), as JSON."""
    run = run_closed(url, requests=MAX_REQUESTS, concurrency=concurrency, timeout_s=10, deadline_s=duration)
    print(json.dumps(asyncio.run(run).as_dict()))


# --- memory, for plan_fits ---------------------------------------------------------------------

# What the load_test function has imported when it runs (functions/main.py, shared/handlers/loadtest.py).
FUNCTION_IMPORTS = (
    "functions_framework",
    "google.cloud.firestore",
    "google.cloud.monitoring_v3",
    "google.cloud.run_v2",
    "google.cloud.pubsub_v1",
    "google.auth.transport.requests",
    "google.oauth2.id_token",
    "shared.handlers.loadtest",
)
# (body bytes, TLS, concurrent connections): the cases plan_fits must cover.
MEMORY_CASES = ((2, False, 1000), (2, True, 1000), (1 << 20, False, 200), (1 << 20, True, 200))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))


class _FixedAnswer(asyncio.Protocol):
    """Server side: every request (a head; no bodies) gets the same pre-built answer."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            assert self.transport is not None
            self.transport.write(self.answer)


def serve_body(size: int, cert: str | None, key: str | None) -> None:
    """Child process: answer `size` bytes to every request on 127.0.0.1 (TLS with cert/key)."""
    raise_fd_limit()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    context = None
    if cert and key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _FixedAnswer(answer), "127.0.0.1", 0, ssl=context, backlog=4096
        )
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    asyncio.run(serve())


def memory_child(url: str, concurrency: int) -> None:
    """Child process: RSS before, and peak RSS of, a closed run with `concurrency` connections."""
    raise_fd_limit()
    before = status_kib("VmRSS")
    run = run_closed(url, requests=4 * concurrency, concurrency=concurrency, timeout_s=60, deadline_s=300)
    result = asyncio.run(run)
    print(json.dumps({"before_kib": before, "peak_kib": status_kib("VmHWM"), "successes": result.successes}))


def self_signed(folder: Path) -> tuple[Path, Path]:
    return self_signed_certificate(folder, "bench target")


def measure_memory() -> None:
    imports = "; ".join(f"import {name}" for name in FUNCTION_IMPORTS)
    probe = f"{imports}; from bench.bench_loadgen import status_kib; print(status_kib('VmRSS'))"
    base = int(
        subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, check=True, text=True
        ).stdout
    )
    print(f"RSS with the load_test function's imports: {base / 1024:.1f} MiB")
    with tempfile.TemporaryDirectory() as folder:
        cert, key = self_signed(Path(folder))
        for size, tls, connections in MEMORY_CASES:
            command = [sys.executable, "-m", "bench.bench_loadgen", "--serve-body", str(size)]
            if tls:
                command += ["--tls-cert", str(cert), "--tls-key", str(key)]
            server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None
                port = server.stdout.readline().split()[1]
                url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
                child = [sys.executable, "-m", "bench.bench_loadgen", "--memory-child", url]
                child += ["--concurrency", str(connections)]
                env = os.environ | {"SSL_CERT_FILE": str(cert)}  # trust the self-signed certificate
                out = subprocess.run(
                    child, cwd=REPO_ROOT, capture_output=True, check=True, text=True, env=env
                )
                measured = json.loads(out.stdout)
            finally:
                server.terminate()
                server.wait()
            grown = measured["peak_kib"] - measured["before_kib"]
            print(
                f"{'https' if tls else 'http':<5} {size:>8,} B bodies  {connections:>5} connections  "
                f"{measured['successes']:>5} answers  RSS {measured['before_kib'] / 1024:5.1f} -> "
                f"peak {measured['peak_kib'] / 1024:6.1f} MiB  = {grown / connections:6.1f} KiB/connection",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk and ours alternate this many times")
    parser.add_argument("--memory", action="store_true", help="measure plan_fits' memory constants")
    # The child processes' entries.
    parser.add_argument("--generator", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-body", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-cert", help=argparse.SUPPRESS)
    parser.add_argument("--tls-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        generator(args.generator, args.concurrency, args.duration)
        return
    if args.memory_child:
        memory_child(args.memory_child, args.concurrency)
        return
    if args.serve_body is not None:
        serve_body(args.serve_body, args.tls_cert, args.tls_key)
        return
    if args.memory:
        measure_memory()
        return

    wrk = ensure_wrk()
    runs: dict[str, list[Run]] = {"wrk": [], "loadgen": []}
    with start_target_server() as target:
        url = target.url + "/health"
        print(
            f"target {url} (own process), concurrency {args.concurrency}, {args.duration} s per run, "
            f"{args.rounds} round(s), {os.cpu_count()} cores",
            flush=True,
        )
        for number in range(1, args.rounds + 1):
            if wrk:
                runs["wrk"].append(run_wrk(wrk, url, args.concurrency, args.duration, target))
                print(runs["wrk"][-1].line(f"round {number}"), flush=True)
            runs["loadgen"].append(run_ours(url, args.concurrency, args.duration, target))
            print(runs["loadgen"][-1].line(f"round {number}"), flush=True)

    print(f"median of {args.rounds} round(s):")
    for measured in runs.values():
        if measured:
            rate = statistics.median(run.rate for run in measured)
            cpu = statistics.median(run.cpu_per_request_us for run in measured)
            rss = max(run.peak_rss_mib for run in measured)
            label = measured[0].label
            print(f"  {label:<8} {rate:>9,.0f} req/s  peak RSS {rss:5.1f} MiB  CPU {cpu:5.1f} µs/req")
    ours = statistics.median(run.rate for run in runs["loadgen"])
    if not runs["wrk"]:
        print("wrk unavailable: no ratio")
        raise SystemExit(1)
    ratio = ours / statistics.median(run.rate for run in runs["wrk"])
    print(f"ours/wrk = {ratio:.2f} (goal >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
