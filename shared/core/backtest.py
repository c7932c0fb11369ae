"""Backtest: the decision core run over recorded per-minute series on a simulated clock. No I/O.

The same functions the checkpoint uses decide here: `judge_minute` turns each minute that has
become visible into evidence, `apply_evidence` keeps the ledger and trips a rule, `judge` gives
the step's verdict over its visible minutes, and `next_step` + `soak_end_rollback` walk the ramp
or roll back at the end of a soak. A checkpoint runs every simulated minute; a minute of data
becomes visible `lag` minutes after it ends (Cloud Monitoring's ingestion delay).

Scenario files (JSON) are documented in README.md ("Backtest and the scenario library"); a CSV
file is one row per minute: minute,requests,errors,p95_ms,memory,cpu[,stable_requests,
stable_errors,stable_p95_ms,stable_memory,stable_cpu].
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.core.evidence import (
    MINUTE,
    Evidence,
    EvidenceKind,
    Ledger,
    MinuteMetrics,
    aggregate,
    judge_minute,
)
from shared.core.judge import RampState, StepAction, judge, next_step, soak_end_rollback
from shared.core.ledger import Phase, apply_evidence
from shared.core.metrics_source import CanaryMetrics
from shared.policy import Policy

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the simulated clock's minute 0
DEFAULTS = {"requests": 200, "errors": 0, "p95_ms": 80.0, "memory": 0.45, "cpu": 0.35}


@dataclass(frozen=True)
class Expectation:
    rollback: bool
    rule: str | None = None  # the rule that must request it (None: any)
    within: int | None = None  # minutes from `bad_from` to the request, at most
    by_minute: int | None = None  # or: requested by this simulated minute


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    canary: tuple[MinuteMetrics, ...]
    stable: tuple[MinuteMetrics, ...] = ()
    bad_from: int | None = None  # the first bad minute (index), for time-to-rollback
    expect: Expectation | None = None
    percent: int = 5
    policy_overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tick:
    """One simulated checkpoint."""

    minute: int  # checkpoint time, minutes after T0
    judged: int  # minutes of data newly visible
    verdict: str
    action: str
    streaks: Mapping[str, int]
    message: str


@dataclass(frozen=True)
class Outcome:
    scenario: str
    ticks: tuple[Tick, ...]
    rollback_minute: int | None
    rollback_rule: str | None
    rollback_reason: str
    steps: tuple[tuple[int, int], ...]  # (minute, new percent)
    bad_from: int | None

    @property
    def minutes_to_rollback(self) -> int | None:
        if self.rollback_minute is None or self.bad_from is None:
            return None
        return self.rollback_minute - self.bad_from

    def meets(self, expect: Expectation) -> tuple[bool, str]:
        """Whether the outcome is the expected one, and why not."""
        if not expect.rollback:
            if self.rollback_minute is None:
                return True, "no rollback, as expected"
            return (
                False,
                f"rolled back at minute {self.rollback_minute} ({self.rollback_rule}): expected none",
            )
        if self.rollback_minute is None:
            return False, "never rolled back: expected a rollback"
        if expect.rule and self.rollback_rule != expect.rule:
            return False, f"rolled back by {self.rollback_rule}, expected {expect.rule}"
        took = self.minutes_to_rollback
        if expect.within is not None and (took is None or took > expect.within):
            return False, f"rolled back {took} min after the first bad minute, expected <= {expect.within}"
        if expect.by_minute is not None and self.rollback_minute > expect.by_minute:
            return False, f"rolled back at minute {self.rollback_minute}, expected by {expect.by_minute}"
        return True, f"rolled back at minute {self.rollback_minute} by {self.rollback_rule}, as expected"


def _canary_metrics(window: MinuteMetrics | None, start: datetime, end: datetime) -> CanaryMetrics:
    if window is None:
        return CanaryMetrics(start, end, 0, 0, None, None, None, None)
    return CanaryMetrics(
        start,
        end,
        window.requests,
        window.errors,
        window.error_rate,
        window.latency_p95_ms,
        window.memory,
        window.cpu,
    )


def simulate(
    canary: Sequence[MinuteMetrics],
    policy: Policy,
    *,
    stable: Sequence[MinuteMetrics] = (),
    lag: int = 3,
    percent: int = 5,
    extra_minutes: int = 10,
    name: str = "",
    bad_from: int | None = None,
) -> Outcome:
    """Checkpoints at T0 + 1 min, + 2 min, ... until the data's end (plus lag and
    `extra_minutes`) or the rollback request. The rollout starts at T0 at `percent`."""
    by_minute = {m.minute: m for m in canary}
    stable_by_minute = {m.minute: m for m in stable}
    limits = policy.consecutive_limits
    keep = timedelta(minutes=policy.evidence.ledger_minutes)
    lookback = timedelta(minutes=policy.evidence.lookback_minutes)
    ledger: Ledger = {}
    phase, step_start, requested = Phase.RUNNING, T0, False
    judged: set[datetime] = set()
    ticks: list[Tick] = []
    steps: list[tuple[int, int]] = []
    rollback_minute = rollback_rule = None
    rollback_reason = ""
    last = max(by_minute, default=T0)
    total = int((last - T0) / MINUTE) + 1 + lag + extra_minutes
    for k in range(1, total + 1):
        now = T0 + k * MINUTE
        visible = [m for m in sorted(by_minute) if m + MINUTE + timedelta(minutes=lag) <= now]
        fresh = [m for m in visible if m + MINUTE > now - lookback]
        entries: list[Evidence] = []
        for m in fresh:
            entries += judge_minute(by_minute[m], stable_by_minute.get(m), policy)
        new = [m for m in fresh if m not in judged]
        judged.update(fresh)
        decision = apply_evidence(phase, ledger, requested, entries, limits, keep=keep)
        ledger = decision.ledger
        streaks = {rule: run.trailing for rule, run in decision.runs.items() if run.trailing}
        if decision.request_rollback:
            assert decision.trip is not None
            ticks.append(Tick(k, len(new), "-", "rollback", streaks, decision.reason))
            rollback_minute, rollback_rule, rollback_reason = k, decision.trip.rule, decision.reason
            break
        # The step's verdict over its visible minutes, ending data_lag_minutes before now.
        window_start = step_start.replace(second=0, microsecond=0) + MINUTE
        window_end = now - timedelta(minutes=policy.checkpoint.data_lag_minutes)
        in_window = [by_minute[m] for m in visible if window_start <= m and m + MINUTE <= window_end]
        if window_end - window_start < MINUTE:
            verdict_metrics = _canary_metrics(None, window_start, window_start)
        else:
            verdict_metrics = _canary_metrics(aggregate(in_window), window_start, window_end)
        judgement = judge(verdict_metrics, policy)
        state = RampState(phase, percent, step_start, False, requested)
        window_minutes = max((window_end - window_start) / MINUTE, 0)
        step = soak_end_rollback(
            next_step(state, judgement.verdict, now, policy), judgement, window_minutes, policy
        )
        message = f"{judgement.verdict.value}: {step.reason}"
        if step.action is StepAction.ROLLBACK:
            ticks.append(Tick(k, len(new), judgement.verdict.value, "rollback", streaks, message))
            rollback_minute, rollback_rule = k, "step_verdict"
            rollback_reason = f"{step.reason}: {'; '.join(judgement.reasons)}"
            break
        if step.action in (StepAction.ADVANCE, StepAction.PROMOTE):
            assert step.next_percent is not None
            percent, step_start = step.next_percent, now
            steps.append((k, percent))
            if step.action is StepAction.PROMOTE:
                phase = Phase.PROMOTED
        elif step.action is StepAction.FREEZE:
            phase = Phase.FROZEN
        ticks.append(Tick(k, len(new), judgement.verdict.value, step.action.value, streaks, message))
    return Outcome(
        name, tuple(ticks), rollback_minute, rollback_rule, rollback_reason, tuple(steps), bad_from
    )


# --------------------------------------------------------------------------------- file formats


class ScenarioError(ValueError):
    """A scenario or series file that cannot be read; the message says what to fix."""


def _minute(index: int, values: Mapping[str, Any]) -> MinuteMetrics:
    try:
        requests = int(values["requests"])
        errors = int(values["errors"])
        p95 = values.get("p95_ms")
        memory, cpu = values.get("memory"), values.get("cpu")
        return MinuteMetrics(
            minute=T0 + index * MINUTE,
            requests=requests,
            errors=min(errors, requests),
            latency_p95_ms=None if p95 in (None, "") else float(p95),
            memory=None if memory in (None, "") else float(memory),
            cpu=None if cpu in (None, "") else float(cpu),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(
            f"minute {index}: {exc!r} (needs requests, errors; p95_ms, memory, cpu)"
        ) from None


def _series(spec: Mapping[str, Any], minutes: int) -> tuple[MinuteMetrics, ...]:
    """{"default": {...}, "segments": [{"from": i, "to": j, "every": n, "phase": p, ...}],
    "ramp": {"field": "p95_ms", "from": i, "start": v, "per_minute": d}} or {"rows": [...]}."""
    if "rows" in spec:
        return tuple(_minute(i, row) for i, row in enumerate(spec["rows"]))
    rows = []
    for i in range(minutes):
        values = dict(DEFAULTS) | dict(spec.get("default", {}))
        for segment in spec.get("segments", []):
            start, end = segment.get("from", 0), segment.get("to", minutes)
            every, offset = segment.get("every", 1), segment.get("phase", 0)
            if start <= i < end and (i - start) % every == offset:
                values |= {k: v for k, v in segment.items() if k not in ("from", "to", "every", "phase")}
        for ramp in spec.get("ramps", []):
            if i >= ramp.get("from", 0):
                values[ramp["field"]] = ramp["start"] + ramp["per_minute"] * (i - ramp.get("from", 0))
        rows.append(_minute(i, values))
    return tuple(rows)


def load_scenario(path: Path) -> Scenario:
    if path.suffix == ".csv":
        return _csv_scenario(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or "canary" not in data:
        raise ScenarioError(f'{path}: a scenario is a JSON object with at least "canary"')
    minutes = int(data.get("minutes", 70))
    expect = data.get("expect")
    return Scenario(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        canary=_series(data["canary"], minutes),
        stable=_series(data["stable"], minutes) if "stable" in data else (),
        bad_from=data.get("bad_from"),
        expect=Expectation(**expect) if expect else None,
        percent=int(data.get("percent", 5)),
        policy_overrides=data.get("policy", {}),
    )


def _csv_scenario(path: Path) -> Scenario:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    canary = tuple(_minute(i, row) for i, row in enumerate(rows))
    stable = ()
    if rows and "stable_requests" in rows[0]:
        stable = tuple(
            _minute(i, {k.removeprefix("stable_"): v for k, v in row.items() if k.startswith("stable_")})
            for i, row in enumerate(rows)
        )
    return Scenario(name=path.stem, description=f"recorded series {path.name}", canary=canary, stable=stable)


def with_overrides(policy: Policy, overrides: Mapping[str, Any]) -> Policy:
    """The policy with a scenario's overrides merged in (validated like the policy file)."""
    if not overrides:
        return policy

    def merged(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {k: merged(base.get(k), v) for k, v in extra.items()} | {
                k: v for k, v in base.items() if k not in extra
            }
        return extra

    return Policy.model_validate(merged(policy.model_dump(), dict(overrides)))


def first_breach_minute(series: Sequence[MinuteMetrics], policy: Policy) -> int | None:
    """The first minute (index) whose own evidence breaches a rule: where "bad" starts."""
    for i, m in enumerate(series):
        if any(e.kind is EvidenceKind.BREACH for e in judge_minute(m, None, policy)):
            return i
    return None


def run_scenario(scenario: Scenario, policy: Policy, *, lag: int = 3) -> Outcome:
    policy = with_overrides(policy, scenario.policy_overrides)
    bad_from = (
        scenario.bad_from if scenario.bad_from is not None else first_breach_minute(scenario.canary, policy)
    )
    return simulate(
        scenario.canary,
        policy,
        stable=scenario.stable,
        lag=lag,
        percent=scenario.percent,
        name=scenario.name,
        bad_from=bad_from,
    )
