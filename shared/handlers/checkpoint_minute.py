"""The start of every checkpoint minute, judged in one process (shared/handlers/checkpoint.py) or
spread over checkpoint_worker instances (shared/handlers/fanout.py): the clients, the unsent
notifications re-sent, and the minute's metrics read once for all services."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import clock
from shared.clients.store import Rollout
from shared.config import ServiceRef
from shared.core.judge import step_window
from shared.handlers.breach import lookback_window
from shared.handlers.checkpoint_rollout import WATCHED_PHASES, Clients
from shared.handlers.notify import REPUBLISH_AFTER
from shared.logs import log
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.core.metrics_source import MetricsSource


# The longest window read minute by minute: the first step's hour of soak plus the Monitoring
# lag. Longer step windows (a day's soak at 10-50 %) are read in hour blocks instead.
MAX_BATCHED_READ = timedelta(minutes=90)
HOUR = timedelta(hours=1)


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


def resend_notifications(clients: Clients) -> None:
    """Notifications committed but never sent on (their process stopped): sent now."""
    try:
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
