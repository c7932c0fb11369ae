"""Cloud Scheduler on the rehearsal clock: each job fires on its cron schedule and time zone
from the policy file, POSTing to its function what the Terraform job sends (scheduler.tf).

Like Cloud Scheduler it never backfills: a tick that finds several fire times passed fires once
and moves on to the next time after the tick. Calls run on worker threads, so a slow checkpoint
does not hold the next one back (Cloud Scheduler does not wait either)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import requests
from cronsim import CronSim

from shared.policy import Policy


@dataclass(frozen=True)
class Job:
    name: str
    schedule: str  # cron, as in the policy file
    time_zone: str
    url: str
    body: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Firing:
    """One call of a job: when it was due, and what the function answered."""

    job: str
    due: datetime
    status: int | None = None
    body: object = None
    error: str | None = None


def policy_jobs(policy: Policy, function_urls: dict[str, str], services: list[str]) -> list[Job]:
    """The jobs Terraform declares for the served functions: one checkpoint job (`{}`: every
    watched service) and one load_test job per service (`{"service": <full name>}`)."""
    jobs = []
    if "checkpoint" in function_urls:
        cfg = policy.checkpoint
        jobs.append(Job("checkpoint", cfg.schedule, cfg.time_zone, function_urls["checkpoint"]))
    if "load_test" in function_urls:
        cfg = policy.load_test
        for service in services:
            name = f"load_test_{service.rsplit('/', 1)[-1]}"
            body = {"service": service}
            jobs.append(Job(name, cfg.schedule, cfg.time_zone, function_urls["load_test"], body))
    return jobs


@dataclass
class LocalScheduler:
    jobs: list[Job]
    on_fired: Callable[[Firing], None] = lambda firing: None
    timeout_s: float = 120.0
    _next: dict[str, datetime] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, "scheduler"))

    def start(self, at: datetime) -> None:
        """Arm every job from `at` (its first firing is its next fire time after `at`)."""
        for job in self.jobs:
            self._next[job.name] = self._after(job, at)

    def tick(self, at: datetime) -> list[Future[Firing]]:
        """Fire each job whose time has come by `at`; returns the calls under way."""
        calls = []
        for job in self.jobs:
            due = self._next.get(job.name)
            if due is None or due > at:
                continue
            self._next[job.name] = self._after(job, at)
            calls.append(self._pool.submit(self._call, job, due))
        return calls

    def next_fire(self, name: str) -> datetime | None:
        return self._next.get(name)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _after(job: Job, at: datetime) -> datetime:
        return next(CronSim(job.schedule, at.astimezone(ZoneInfo(job.time_zone))))

    def _call(self, job: Job, due: datetime) -> Firing:
        try:
            answer = requests.post(job.url, json=job.body, timeout=self.timeout_s)
            try:
                body: object = answer.json()
            except ValueError:
                body = answer.text
            firing = Firing(job.name, due, answer.status_code, body)
        except requests.RequestException as exc:
            firing = Firing(job.name, due, error=repr(exc))
        self.on_fired(firing)
        return firing
