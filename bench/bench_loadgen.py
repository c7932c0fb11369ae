"""Benchmark: the closed-model load generator against wrk, same target, concurrency and duration.

    .venv/bin/python -m bench.bench_loadgen [--concurrency 16] [--duration 10] [--rounds 3]

The target (infra/target_server.py) runs in its own process on loopback; wrk (-t1) and our
generator each run as a child process, alternating, so both see the same machine state. For
each run it prints requests/s, the child's peak RSS (VmHWM) and CPU time per request (rusage
of the reaped child), and the target's CPU use (near 100 % means the target was the limit).
Installs wrk with apt-get when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.target_server import TargetHandle, start_target_server
from shared.loadgen import MAX_REQUESTS, run_closed

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk and ours alternate this many times")
    parser.add_argument("--generator", metavar="URL", help=argparse.SUPPRESS)  # the child's entry
    args = parser.parse_args()
    if args.generator:
        generator(args.generator, args.concurrency, args.duration)
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
