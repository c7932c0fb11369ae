"""A go-live rehearsal: canary-guard guarding real traffic on the local stack, on one clock.

Each rehearsed service gets a stable and a canary revision as real processes (the sample app,
or the release owner's own commands), a router that serves their real requests split as the
Cloud Run stand-in says, and steady traffic. What the router served and what the processes used
is written to the Monitoring stand-in minute by minute, as Cloud Run records it, after a
visibility lag; the alert evaluator applies the policy's alert policies to it and publishes
incidents; a local Cloud Scheduler calls checkpoint on the policy's schedule. canary-guard
itself runs unchanged under functions-framework: `canary-guard start` registers the canary,
breach_counter / rollback / checkpoint decide, and a rollback written through the Cloud Run API
moves the router's traffic.

Time: every process reads one scaled clock (shared/clock.py, CANARY_GUARD_CLOCK): an injected
clock rather than a process-level fake-time library, because it is the clock the product code
already reads, it needs nothing installed, and only the time decisions are about runs fast
(network timeouts, retries and the emulators keep real seconds). The ramp's soaks are
compressed (`soak_minutes`); every other number comes from the policy file as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import requests
import yaml
from rich.console import Console

from infra.chat_webhook import ChatWebhook
from infra.localstack import ALERTS_TOPIC, PROJECT, local_stack
from infra.monitoring_standin import start_monitoring_standin
from infra.rehearsal.alerts import AlertEvaluator
from infra.rehearsal.report import write_report
from infra.rehearsal.revisions import ResourceSampler, RevisionProcess
from infra.rehearsal.router import Router
from infra.rehearsal.scheduler import LocalScheduler, policy_jobs
from infra.rehearsal.scripts import CanaryScript
from infra.rehearsal.served_metrics import write_visible_minutes
from infra.rehearsal.timeline import AlertRecord, DecisionRecord, Record, TimelineWriter
from infra.rehearsal.traffic_driver import TrafficDriver
from infra.rehearsal.view import LiveView
from infra.rehearsal.watch import DecisionWatcher, RehearsalResult, ServiceOutcome, summary
from shared.clients.monitoring import metric_service_client
from shared.clock import ENV as CLOCK_ENV
from shared.clock import ScaledClock
from shared.core.evidence import whole_minute
from shared.policy import DEFAULT_POLICY_FILE, load_policy

LOCATION = "us-central1"
MINUTE = timedelta(minutes=1)
FUNCTIONS = ("breach_counter", "rollback", "notify", "checkpoint")
SAMPLE_APP = f"{sys.executable} -m infra.rehearsal.sample_app"


@dataclass(frozen=True)
class RehearsalOptions:
    out_dir: Path
    speed: float = 12.0  # rehearsal minutes per real minute: 12 = a minute every 5 s
    rps: float = 120.0  # real requests per second, per service (600 a rehearsal minute at x12)
    lag_minutes: int = 2  # Cloud Monitoring's visibility lag (up to ~3 minutes in GCP)
    soak_minutes: int = 2  # every ramp step's soak, compressed
    max_minutes: int = 60  # rehearsal minutes before giving up on an expectation
    after_minutes: int = 4  # minutes kept running after the last decision (the error rate falls)
    stable_cmd: str | None = None  # bring your own: the commands that serve $PORT
    canary_cmd: str | None = None
    memory_limit_mb: int = 512
    policy_file: Path = DEFAULT_POLICY_FILE
    live: bool = True


def full_name(service: str) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/services/{service}"


def compressed_policy(source: Path, soak_minutes: int, out_dir: Path) -> Path:
    """The policy file as it is, but every step's soak compressed to `soak_minutes` (the last
    step's 0 stays 0): a rehearsal walks the ramp in minutes, judged on the same bars."""
    raw = yaml.safe_load(source.read_text())
    for step in raw["ramp"]:
        if step["soak_minutes"]:
            step["soak_minutes"] = soak_minutes
    path = out_dir / "policy-rehearsal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_policy(path)  # still a valid policy
    return path


@contextlib.contextmanager
def scaled_clock(speed: float) -> Iterator[ScaledClock]:
    """Start the rehearsal clock at the current minute and hand it to this process and every
    process it starts (they inherit the environment)."""
    real = time.time()
    origin = datetime.fromtimestamp(real, UTC).replace(second=0, microsecond=0)
    scaled = ScaledClock(origin, real, speed)
    before = os.environ.get(CLOCK_ENV)
    os.environ[CLOCK_ENV] = scaled.spec()
    try:
        yield scaled
    finally:
        if before is None:
            os.environ.pop(CLOCK_ENV, None)
        else:
            os.environ[CLOCK_ENV] = before


class Rehearsal:
    """One rehearsal: start everything, drive it minute by minute, stop everything."""

    def __init__(
        self, scripts: list[CanaryScript], options: RehearsalOptions, out: TextIO = sys.stdout
    ) -> None:
        if not scripts:
            raise ValueError("nothing to rehearse: give at least one canary script")
        if len({s.service for s in scripts}) != len(scripts):
            raise ValueError("one script per service")
        self.scripts = {s.service: s for s in scripts}
        self.options = options
        self.out = out
        self.records: list[Record] = []
        self.outcomes = {s.service: ServiceOutcome(s.service, s.expect) for s in scripts}
        self._faults_sent: dict[str, Any] = {}
        self._canary_started: dict[str, datetime] = {}
        self._settled_at: datetime | None = None

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> RehearsalResult:
        # A stopped rehearsal still stops what it started (the ExitStack unwinds on SystemExit).
        if threading.current_thread() is not threading.main_thread():
            return self._run()
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> RehearsalResult:
        options = self.options
        options.out_dir.mkdir(parents=True, exist_ok=True)
        log_dir = options.out_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        policy_file = compressed_policy(options.policy_file, options.soak_minutes, options.out_dir)
        self.policy = load_policy(policy_file)
        started = time.monotonic()
        timeline_path = options.out_dir / "timeline.jsonl"
        with contextlib.ExitStack() as stack:
            self.timeline = stack.enter_context(TimelineWriter(timeline_path))
            self.clock = stack.enter_context(scaled_clock(options.speed))
            rates = ", ".join(f"{s} {script.rps or options.rps:g}" for s, script in self.scripts.items())
            self._say(
                f"rehearsal clock: one minute every {60 / options.speed:.1f} s (x{options.speed:g}); "
                f"Cloud Monitoring lag {options.lag_minutes} min; soaks compressed to "
                f"{options.soak_minutes} min; requests/s: {rates}"
            )
            self._start(stack, policy_file, log_dir)
            self._say(f"local stack up in {time.monotonic() - started:.1f} s; files in {options.out_dir}")
            # Not a terminal (CI, a pipe): the view prints each decision, alert and split once.
            console = Console(file=self.out)
            view = stack.enter_context(LiveView(console, policy=self.policy, live=options.live))
            self._loop(view)
        report = write_report(self.records, options.out_dir, self._title(), policy=self.policy).png
        for outcome in self.outcomes.values():
            outcome.canary_requests_after_rollback = self.watcher.canary_after_rollback(outcome)
        return RehearsalResult(self.outcomes, report, timeline_path, time.monotonic() - started)

    def _start(self, stack: contextlib.ExitStack, policy_file: Path, log_dir: Path) -> None:
        monitoring = start_monitoring_standin()
        stack.callback(monitoring.stop)
        self.monitoring = monitoring
        chat = ChatWebhook()
        stack.callback(chat.stop)
        env = {
            "MONITORING_API_ENDPOINT": monitoring.target,
            "CANARY_POLICY_FILE": str(policy_file),
            "CHAT_WEBHOOK_URL": chat.url,
            CLOCK_ENV: self.clock.spec(),
        }
        services = list(self.scripts)
        self.stack = stack.enter_context(
            local_stack(log_dir, [full_name(s) for s in services], functions=FUNCTIONS, extra_env=env)
        )
        self.router = Router(self.stack.cloudrun.url, PROJECT, LOCATION)
        stack.callback(self.router.stop)
        self.sampler = ResourceSampler(
            interval_s=max(0.2, 60 / self.options.speed / 10),  # ~10 samples a rehearsal minute
            memory_limit_bytes=self.options.memory_limit_mb * 1024 * 1024,
        )
        stack.callback(self.sampler.stop)
        self.stables: dict[str, RevisionProcess] = {}
        self.canaries: dict[str, RevisionProcess] = {}
        self.drivers: dict[str, TrafficDriver] = {}
        for service in services:
            stable, canary = self._deploy(stack, service, log_dir)
            self.stables[service], self.canaries[service] = stable, canary
            self.sampler.add(stable)
            self.sampler.add(canary)
        self.sampler.start()
        from shared.clients.store import RolloutStore  # after local_stack: it points at the emulator

        self.watcher = DecisionWatcher(
            RolloutStore(PROJECT),
            self.router,
            self.policy,
            {service: process.revision for service, process in self.canaries.items()},
            self.outcomes,
            self._record,
            self.clock.now,
        )
        for service in services:
            rps = self.scripts[service].rps or self.options.rps
            driver = TrafficDriver(
                self.router.service_url(service), rps, threads=max(4, round(rps / 15))
            ).start()
            stack.callback(driver.stop)
            self.drivers[service] = driver
        self.evaluator = self._alert_evaluator(stack, services)
        self.scheduler = LocalScheduler(policy_jobs(self.policy, self.stack.function_urls, []))
        stack.callback(self.scheduler.stop)
        self.scheduler.start(self.clock.now())

    def _deploy(
        self, stack: contextlib.ExitStack, service: str, log_dir: Path
    ) -> tuple[RevisionProcess, RevisionProcess]:
        """The stable revision serving everything and the canary deployed beside it with no
        traffic and its `canary` tag (`gcloud run deploy --no-traffic --tag canary`)."""
        stable_name, canary_name = f"{service}-00001", f"{service}-00002"
        commands = {
            stable_name: self.options.stable_cmd or SAMPLE_APP,
            canary_name: self.options.canary_cmd or SAMPLE_APP,
        }
        processes = []
        for name, command in commands.items():
            env = {"K_SERVICE": service, "K_REVISION": name}
            process = RevisionProcess(
                name, command, service=service, log_path=log_dir / f"{name}.log", env=env
            )
            stack.callback(process.stop)
            processes.append(process.start())
        traffic = [
            {"revision": stable_name, "percent": 100},
            {"revision": canary_name, "percent": 0, "tag": "canary"},
        ]
        cloudrun = self.stack.cloudrun
        cloudrun.put_service(full_name(service), [stable_name, canary_name], traffic)
        url = self.router.add_service(service, {p.revision: p.url for p in processes})
        tag_url = self.router.tag_url(service, "canary")
        cloudrun.put_service(
            full_name(service), [stable_name, canary_name], traffic, uri=url, tag_uris={"canary": tag_url}
        )
        self._say(
            f"▶ {service}: {stable_name} serves 100 % at {url}; "
            f"canary {canary_name} deployed at 0 % ({tag_url})"
        )
        return processes[0], processes[1]

    def _alert_evaluator(self, stack: contextlib.ExitStack, services: list[str]) -> AlertEvaluator:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        stack.callback(publisher.stop)
        return AlertEvaluator(
            self.policy,
            PROJECT,
            [full_name(s) for s in services],
            metric_service_client(self.monitoring.target),
            publisher,
            f"projects/{PROJECT}/topics/{ALERTS_TOPIC}",
            canary_urls=lambda: {s: self.router.tag_url(s, "canary") for s in services},
            data_lag=timedelta(minutes=self.options.lag_minutes + 1),  # a minute is missing only after that
        )

    def _loop(self, view: LiveView) -> None:
        options = self.options
        start = whole_minute(self.clock.now())
        for service in self.scripts:
            self._start_canary(service)
        last_minute = start
        deadline = start + options.max_minutes * MINUTE
        while True:
            at = self.clock.now()
            if whole_minute(at) > last_minute:
                last_minute = whole_minute(at)
                self._apply_scripts(at)
                visible_before = last_minute - options.lag_minutes * MINUTE
                for record in write_visible_minutes(
                    self.router, self.sampler, self.monitoring, visible_before, self._role
                ):
                    self._record(record)
                self._evaluate_alerts(at)
            self.scheduler.tick(at)
            self.watcher.poll(at)
            view.update(self.records, at)
            if self._finished(at) or at >= deadline:
                break
            time.sleep(0.25)

    def _start_canary(self, service: str) -> None:
        """`canary-guard start`, as the release owner runs it."""
        args = ("start", service, "--revision", self.canaries[service].revision)
        args += ("--percent", str(self.policy.ramp[0].percent))  # the ramp's first step
        done = self.stack.operator_cli(*args)
        if done.returncode != 0:
            raise RuntimeError(f"canary-guard start {service} failed: {done.stderr or done.stdout}")
        self._canary_started[service] = self.clock.now()
        self._say(f"$ canary-guard {' '.join(args)}\n  {done.stdout.strip()}")

    def _apply_scripts(self, at: datetime) -> None:
        """Each sample-app revision serves its script's minute (bring-your-own apps serve as
        they are). A change of what goes wrong is a timeline event; a level moving minute by
        minute (a leak's memory) is not."""
        if self.options.canary_cmd:
            return
        for service, script in self.scripts.items():
            minute = int((at - self._canary_started[service]) / MINUTE)
            for role, process in (("stable", self.stables[service]), ("canary", self.canaries[service])):
                faults = dict(script.faults_at(role, minute))
                key = f"{service}/{role}"
                sent = self._faults_sent.get(key)
                if sent == faults or not process.running or (sent is None and not faults):
                    continue
                try:
                    requests.post(f"{process.url}/_faults", json=faults, timeout=5).raise_for_status()
                except requests.RequestException as exc:
                    self._say(f"  {service} {role}: faults not set ({exc})")
                    continue
                self._faults_sent[key] = faults
                if sent is None or set(sent) != set(faults):
                    what = f"{role} faults: {faults or 'none'}"
                    self._record(DecisionRecord(at, full_name(service), "", "script", what))

    def _role(self, service: str, revision: str) -> str:
        if revision == self.canaries[service].revision:
            return "canary"
        return "stable" if revision == f"{service}-00001" else "other"

    def _evaluate_alerts(self, at: datetime) -> None:
        try:
            notices = self.evaluator.evaluate(at)
        except Exception as exc:  # a rehearsal goes on; the next minute evaluates again
            self._say(f"  alert evaluation failed: {exc!r}")
            return
        for notice in notices:
            self._record(
                AlertRecord(
                    at,
                    notice.service,
                    notice.revision,
                    notice.rule,
                    notice.state,
                    notice.observed,
                    notice.threshold,
                )
            )

    def _finished(self, at: datetime) -> bool:
        """Every script has shown what it was for, and its aftermath has been watched: a canary
        expected to be rolled back or promoted once canary-guard did so (or its script's minutes
        ran out), one expected to be kept once its script's minutes are over."""
        for service, script in self.scripts.items():
            ran_out = script.minutes is not None and at >= (
                self._canary_started[service] + script.minutes * MINUTE
            )
            decided = script.expect != "hold" and self.outcomes[service].met
            if not (decided or ran_out):
                return False
        if self._settled_at is None:
            self._settled_at = at
        # The error rate after a rollback needs its minutes through the lag to show.
        linger = (self.options.after_minutes + self.options.lag_minutes) * MINUTE
        return at >= self._settled_at + linger

    def _record(self, record: Record) -> None:
        self.records.append(record)
        self.timeline.write(record)

    def _title(self) -> str:
        expected = {"rollback": "rolled back", "promote": "promoted", "hold": "kept", "decide": "decided"}
        parts = [f"{s} (expected: {expected[script.expect]})" for s, script in self.scripts.items()]
        return f"canary-guard rehearsal: {', '.join(parts)}"

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def run(scripts: list[CanaryScript], options: RehearsalOptions, out: TextIO = sys.stdout) -> RehearsalResult:
    result = Rehearsal(scripts, options, out).run()
    print(summary(result), file=out, flush=True)
    return result
