"""The scheduled checkpoint: every watched service's minute, with Cloud Monitoring read once for
all of them. Judged here, CHECKPOINT_CONCURRENCY services at a time (shared/handlers/checkpoint_rollout.py
judges one), or, with CHECKPOINT_TOPIC, sent to checkpoint_worker instances (shared/handlers/fanout.py).
`handle_checkpoint` is the entry point's core and the documented in-process call (README).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from shared import clock
from shared.config import ServiceRef, Settings
from shared.handlers.checkpoint_minute import read_minutes, resend_notifications, runtime_clients
from shared.handlers.checkpoint_rollout import (
    Clients,
    checkpoint_rollout,
    checkpoint_service,
)
from shared.handlers.step import StepResult, change_step
from shared.logs import Report, log
from shared.policy import Policy

# What callers import from here: the checkpoint's clients, one rollout's checkpoint, a step.
__all__ = [
    "Clients",
    "StepResult",
    "change_step",
    "checkpoint_rollout",
    "handle_checkpoint",
    "read_minutes",
    "run_checkpoints",
    "runtime_clients",
]


# Services checked at once by one process (Cloud Run reads and Firestore transactions stay per
# rollout); with CHECKPOINT_TOPIC set the work is spread over checkpoint_worker instances instead.
CHECKPOINT_CONCURRENCY = 32


RUN_BUDGET = timedelta(minutes=1)  # the checkpoint's schedule: one run per minute


def run_checkpoints(
    *,
    now: datetime,
    settings: Settings,
    policy: Policy,
    clients: Clients,
    only: ServiceRef | None = None,
) -> list[Report]:
    """One checkpoint for each watched service's live canary (or just `only`'s), in this
    process: Monitoring read once for all, then the services checked CHECKPOINT_CONCURRENCY at
    a time. A service whose checkpoint fails is reported as ERROR (and logged); the others
    still run."""
    resend_notifications(clients)
    services = [only] if only else list(settings.services)
    rollouts = clients.store.active_many([s.name for s in services])
    source = read_minutes(services, rollouts, now=now, policy=policy, reader=clients.reader)
    minute_clients = replace(clients, reader=source)

    def check(service: ServiceRef) -> Report:
        try:
            return checkpoint_service(
                service,
                now=now,
                settings=settings,
                policy=policy,
                clients=minute_clients,
                stored=rollouts.get(service.name),
            )
        except Exception as exc:  # one service's fault must not stop the others' checkpoints
            return Report(
                "ERROR", f"{service.service}: checkpoint failed: {exc}", service=service.name, action="error"
            )

    if len(services) == 1:
        return [check(services[0])]
    with ThreadPoolExecutor(min(CHECKPOINT_CONCURRENCY, len(services)), "checkpoint") as pool:
        return list(pool.map(check, services))


def handle_checkpoint(
    body: Any,
    *,
    settings: Settings,
    policy: Policy,
    clients: Clients | None = None,
    now: datetime | None = None,
) -> tuple[Report, int]:
    """The HTTP adapter's core: 400/403 on a bad body, 503 when Cloud Run or Monitoring kept
    failing for some service (the next scheduled run tries again), 200 with one entry per
    rollout otherwise. With CHECKPOINT_TOPIC set (and no single service asked for), the
    services are sent to checkpoint_worker instances instead (shared/handlers/fanout.py)."""
    only = None
    if body not in (None, {}):
        if not isinstance(body, dict) or set(body) - {"service"} or not isinstance(body.get("service"), str):
            return Report("WARNING", 'body must be empty or {"service": "name"}', outcome="bad_request"), 400
        try:
            only = settings.resolve_service(body["service"])
        except LookupError as exc:
            return Report("WARNING", str(exc), outcome="forbidden"), 403
        except ValueError as exc:
            return Report("WARNING", str(exc), outcome="bad_request"), 400
    at, clients = now or clock.now(), clients or runtime_clients()
    started = time.monotonic()
    if settings.checkpoint_topic and only is None:  # fan out: one checkpoint_worker per service
        from shared.handlers.fanout import dispatch_checkpoints

        reports = dispatch_checkpoints(now=at, settings=settings, policy=policy, clients=clients)
    else:
        reports = run_checkpoints(now=at, settings=settings, policy=policy, clients=clients, only=only)
    elapsed = time.monotonic() - started
    if elapsed > RUN_BUDGET.total_seconds():
        log(
            "WARNING",
            f"checkpoint run over {len(reports)} service(s) took {elapsed:.0f} s, more than its minute: "
            "the next scheduled run is refused or late, so evidence arrives late"
            + ("" if settings.checkpoint_topic else "; set CHECKPOINT_TOPIC to spread services over workers"),
            elapsed_s=round(elapsed, 1),
            outcome="over_budget",
        )
    summary = "; ".join(report.message for report in reports) or "no watched service"
    rollouts = [report.as_dict() for report in reports]
    if any(report.severity == "ERROR" for report in reports):
        # 503: the failure shows in Cloud Scheduler; the next run (a minute later) tries again,
        # and observations are deduplicated per window, so nothing counts twice.
        return Report("ERROR", summary, rollouts=rollouts, outcome="partial_failure"), 503
    severity = "NOTICE" if any(report.severity == "NOTICE" for report in reports) else "INFO"
    return Report(severity, summary, rollouts=rollouts, outcome="checked"), 200
