"""What each canary of a rehearsal does, minute by minute: the sample app's faults.

A script is the sample service's fault settings for each rehearsal minute after the canary
starts (the last entry holds from then on). Two come built in for `./dev demo` (a healthy
canary walked up the ramp, one that starts failing); any scenario of the scenario library
(infra/scenarios/*.json, the backtest's) becomes one: each minute's error share, P95 and memory
become the faults that make the sample app serve that minute for real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.core.backtest import Scenario, load_scenario

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
BASE_LATENCY_MS = 5.0  # what the sample app takes on its own, left out of a scenario's P95
BASE_RSS_MB = 30  # the sample app's own resident memory, left out of a scenario's memory
Expect = Literal["rollback", "promote", "hold", "decide"]  # decide: whichever canary-guard decides
Faults = Mapping[str, Any]


@dataclass(frozen=True)
class CanaryScript:
    """One service's canary in a rehearsal."""

    service: str  # short Cloud Run service name, e.g. "shop"
    description: str
    canary: tuple[Faults, ...] = ({},)  # faults per minute since the canary started
    stable: tuple[Faults, ...] = ({},)
    expect: Expect = "hold"
    expect_rule: str | None = None  # the rule that should roll it back
    minutes: int | None = None  # how long the script runs (None: until its expectation is met)
    rps: float | None = None  # real requests/s to the service (None: the rehearsal's default)
    notes: tuple[str, ...] = field(default_factory=tuple)  # what the sample app cannot reproduce

    def faults_at(self, role: Literal["canary", "stable"], minute: int) -> Faults:
        steps = self.canary if role == "canary" else self.stable
        return steps[min(max(minute, 0), len(steps) - 1)]


# A GO needs the canary's error rate bounded under 0.5 % with 95 % confidence: about 765
# error-free canary requests per step. At 5 % of 300 requests/s that is 51 real seconds.
HEALTHY_RAMP = CanaryScript(
    service="cart",
    description="a healthy canary: no 5xx, fast; walked up the ramp 5 → 10 → 25 → 50 → 100 %",
    expect="promote",
    rps=300,
)


def failing_from(minute: int, error_share: float = 0.15, service: str = "shop") -> CanaryScript:
    return CanaryScript(
        service=service,
        description=f"a canary that starts failing at minute {minute}: {error_share:.0%} of its requests 5xx",
        canary=({},) * minute + ({"error_share": error_share},),
        expect="rollback",
        expect_rule="error_rate",
    )


def demo_scripts() -> list[CanaryScript]:
    """What `./dev demo` rehearses: one canary promoted, one rolled back, side by side."""
    return [HEALTHY_RAMP, failing_from(3)]


def scenario_names() -> list[str]:
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.json"))


def from_scenario(name: str, service: str = "shop", memory_limit_mb: int = 512) -> CanaryScript:
    """A scenario of the library as the sample app's faults, minute by minute."""
    path = SCENARIO_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no scenario {name!r}; the library has: {', '.join(scenario_names())}")
    scenario = load_scenario(path)
    notes = []
    if scenario.policy_overrides:
        notes.append(f"its policy overrides are not applied: {dict(scenario.policy_overrides)}")
    if any(m.cpu is not None and m.cpu > 0.5 for m in scenario.canary):
        notes.append("CPU load is not reproduced (the sample app serves what it serves)")
    expect: Expect = "rollback" if scenario.expect and scenario.expect.rollback else "hold"
    rule = scenario.expect.rule if scenario.expect else None
    return CanaryScript(
        service=service,
        description=f"scenario {scenario.name}: {scenario.description}",
        canary=_faults(scenario, "canary", memory_limit_mb),
        stable=_faults(scenario, "stable", memory_limit_mb) if scenario.stable else ({},),
        expect=expect,
        expect_rule=rule if rule != "step_verdict" else None,
        minutes=len(scenario.canary),
        notes=tuple(notes),
    )


def _faults(scenario: Scenario, role: str, memory_limit_mb: int) -> tuple[Faults, ...]:
    series: Sequence[Any] = scenario.canary if role == "canary" else scenario.stable
    return tuple(minute_faults(m, memory_limit_mb) for m in series)


def minute_faults(minute: Any, memory_limit_mb: int) -> dict[str, Any]:
    """The sample app's faults that serve a scenario minute: its 5xx share, its P95 (as added
    latency), its memory (as memory held beyond what the app takes on its own); every request
    failing means the process is down."""
    if minute.requests and minute.errors >= minute.requests:
        return {"crash_after_s": 0}
    faults: dict[str, Any] = {}
    if minute.requests and minute.errors:
        faults["error_share"] = round(minute.errors / minute.requests, 4)
    if minute.latency_p95_ms is not None and minute.latency_p95_ms > BASE_LATENCY_MS * 4:
        faults["latency_ms"] = round(minute.latency_p95_ms - BASE_LATENCY_MS, 1)
    if minute.memory is not None:
        faults["memory_mb"] = max(0, round(minute.memory * memory_limit_mb) - BASE_RSS_MB)
    return faults
