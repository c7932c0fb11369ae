"""The scheduled checkpoint: every watched service's minute, with Cloud Monitoring read once for
all of them. Judged here, CHECKPOINT_CONCURRENCY services at a time (shared/handlers/checkpoint_rollout.py
judges one), or, with CHECKPOINT_TOPIC, sent to checkpoint_worker instances (shared/handlers/fanout.py).
`handle_checkpoint` is the entry point's core and the documented in-process call (README).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import clock
from shared.clients.store import Rollout
from shared.config import ServiceRef, Settings
from shared.core.judge import step_window
from shared.handlers.breach import lookback_window
from shared.handlers.checkpoint_rollout import (
    WATCHED_PHASES,
    Clients,
    _checkpoint_service,
    checkpoint_rollout,
)
from shared.handlers.notify import REPUBLISH_AFTER
from shared.handlers.step import StepResult, change_step
from shared.logs import Report, log
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.core.metrics_source import MetricsSource

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


# The longest window read minute by minute: the first step's hour of soak plus the Monitoring
# lag. Longer step windows (a day's soak at 10-50 %) are read in hour blocks instead.
MAX_BATCHED_READ = timedelta(minutes=90)
HOUR = timedelta(hours=1)


# Services checked at once by one process (Cloud Run reads and Firestore transactions stay per
# rollout); with CHECKPOINT_TOPIC set the work is spread over checkpoint_worker instances instead.
CHECKPOINT_CONCURRENCY = 32


RUN_BUDGET = timedelta(minutes=1)  # the checkpoint's schedule: one run per minute


def read_minutes(
    services: Sequence[ServiceRef],
    rollouts: Mapping[str, Rollout | None],
    *,
    now: datetime,
    policy: Policy,
    reader: MetricsSource,
) -> MetricsSource:
    """The minute's metrics for every service in batched reads (`platform_minutes`): minute by
    minute over the lookback window and the step windows so far, up to MAX_BATCHED_READ; and,
    when some step window is longer (a day's soak), in hour blocks up to the longest soak of the
    ramp. A reader without a batched read, or a batched read that fails, leaves each rollout to
    read its own."""
    batched = getattr(reader, "platform_minutes", None)
    if batched is None or not services:
        return reader
    from shared.core.minutes import RecordedMinutes

    keys = [(s.location, s.service) for s in services]
    start, end = lookback_window(now, policy)
    step_starts = [
        step_window(rollout.step_started_at, now, policy)[0]
        for rollout in rollouts.values()
        if rollout is not None and rollout.phase in WATCHED_PHASES
    ]
    start = max(min([start, *step_starts]), end - MAX_BATCHED_READ)
    try:
        source = RecordedMinutes(batched(keys, start=start, end=end), start=start, end=end, fallback=reader)
    except Exception as exc:  # Monitoring failing: each rollout's own read retries, or fails alone
        log("WARNING", f"batched metrics read failed, each rollout reads its own: {exc}")
        return reader
    longer = [first for first in step_starts if first < start]
    if longer:
        step_end = step_window(now, now, policy)[1]
        longest = max(step.soak_minutes for step in policy.ramp) + policy.checkpoint.data_lag_minutes
        hours = min(math.ceil((step_end - min(longer)) / HOUR), math.ceil(longest / 60))
        hours_start = step_end - hours * HOUR
        try:
            blocks = batched(keys, start=hours_start, end=step_end, period=HOUR)
            source.hours = RecordedMinutes(blocks, start=hours_start, end=step_end)
        except Exception as exc:  # those rollouts read their own step window
            log("WARNING", f"batched read of the long step windows failed: {exc}")
    return source


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
    _resend_notifications(clients)
    services = [only] if only else list(settings.services)
    rollouts = clients.store.active_many([s.name for s in services])
    source = read_minutes(services, rollouts, now=now, policy=policy, reader=clients.reader)
    minute_clients = replace(clients, reader=source)

    def check(service: ServiceRef) -> Report:
        try:
            return _checkpoint_service(
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


def _resend_notifications(clients: Clients) -> None:
    try:  # notifications committed but never sent on (the process stopped): send them now
        # The process clock, not the checkpoint's `now`: the outbox is stamped when it was written.
        clients.store.resend_notifications(older_than=clock.now() - REPUBLISH_AFTER)
    except Exception as exc:  # the next run tries again; judging the canaries comes first
        log("WARNING", f"unsent notifications not re-sent: {exc!r}")


def runtime_clients() -> Clients:
    from shared import runtime

    return Clients(
        store=runtime.store(),
        traffic=runtime.traffic(),
        reader=runtime.reader(),
        writer=runtime.writer(),
        publisher=runtime.publisher(),
    )


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
