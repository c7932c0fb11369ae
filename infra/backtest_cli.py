"""`canary-guard backtest`: the decision core over recorded per-minute series (shared/core/backtest.py).

canary-guard backtest infra/scenarios/crash.json        one scenario's timeline
canary-guard backtest --library                         the whole scenario library, as a table
canary-guard backtest my-service.csv --policy p.yaml    a recorded series under another policy
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the core loads only when the command runs: `canary-guard --help` stays fast
    from shared.core.backtest import Outcome, Scenario

LIBRARY = Path(__file__).with_name("scenarios")
BUNDLED_POLICY = Path(__file__).resolve().parent.parent / "shared" / "policy.yaml"


def library() -> list[Path]:
    return sorted(LIBRARY.glob("*.json"))


def _timeline(scenario: Scenario, outcome: Outcome) -> str:
    lines = [f"{scenario.name}: {scenario.description}"]
    lines.append("  MIN  NEW  VERDICT       ACTION    STREAKS                 WHY")
    previous = None
    for tick in outcome.ticks:
        streaks = ", ".join(f"{rule} {n}" for rule, n in tick.streaks.items()) or "-"
        row = (tick.verdict, tick.action, streaks, tick.message)
        if row == previous and tick.action == "hold":
            continue  # an unchanged hold is one line, not one per minute
        previous = row
        lines.append(
            f"  {tick.minute:>3}  {tick.judged:>3}  {tick.verdict:<12}  {tick.action:<8}  "
            f"{streaks:<22}  {tick.message}"
        )
    return "\n".join(lines)


def _summary(outcome: Outcome) -> str:
    if outcome.rollback_minute is None:
        steps = ", ".join(f"{pct}% at minute {minute}" for minute, pct in outcome.steps) or "none"
        return f"no rollback; steps: {steps}"
    took = outcome.minutes_to_rollback
    after = f", {took} min after the first bad minute ({outcome.bad_from})" if took is not None else ""
    return f"rollback requested at minute {outcome.rollback_minute} by {outcome.rollback_rule}{after}"


@click.command("backtest")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--library", "use_library", is_flag=True, help="Run every scenario of the bundled library.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=BUNDLED_POLICY,
    show_default="the bundled policy.yaml",
    help="Try another policy file.",
)
@click.option("--lag", default=3, show_default=True, help="Minutes before a minute's data is visible.")
@click.option("--json", "json_", is_flag=True, help="One JSON document on stdout.")
def backtest(files: tuple[Path, ...], use_library: bool, policy_file: Path, lag: int, json_: bool) -> None:
    """Replay recorded per-minute canary (and stable) series through the decision core on a
    simulated clock: each minute's verdict, streaks, and the rollback or step and its minute.
    Exit 0 when every scenario with an expected outcome meets it, 4 when one does not."""
    from shared.core.backtest import ScenarioError, load_scenario, run_scenario
    from shared.policy import PolicyError, load_policy

    paths = [*files, *(library() if use_library else [])]
    if not paths:
        raise click.UsageError("give scenario files (JSON or CSV) or --library")
    try:
        policy = load_policy(policy_file)
        scenarios = [load_scenario(path) for path in paths]
    except (PolicyError, ScenarioError) as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    results = []
    failed = False
    for scenario in scenarios:
        outcome = run_scenario(scenario, policy, lag=lag)
        met, why = outcome.meets(scenario.expect) if scenario.expect else (True, "no expectation")
        failed |= not met
        results.append((scenario, outcome, met, why))
    if json_:
        click.echo(json.dumps([_as_dict(s, o, met, why) for s, o, met, why in results], indent=2))
    elif len(results) == 1 and not use_library:
        scenario, outcome, met, why = results[0]
        click.echo(_timeline(scenario, outcome))
        click.echo(
            f"  → {_summary(outcome)}"
            + ("" if scenario.expect is None else f"  [{'OK' if met else 'FAIL'}: {why}]")
        )
    else:
        click.echo(
            f"{'SCENARIO':<30} {'BAD FROM':>8} {'ROLLBACK AT':>11} {'MINUTES':>7}  {'RULE':<13} RESULT"
        )
        for scenario, outcome, met, why in results:
            took = outcome.minutes_to_rollback
            click.echo(
                f"{scenario.name:<30} {_dash(outcome.bad_from):>8} {_dash(outcome.rollback_minute):>11} "
                f"{_dash(took):>7}  {outcome.rollback_rule or '-':<13} {'OK' if met else 'FAIL'}: {why}"
            )
        click.echo(
            f"lag {lag} min, policy {policy_file}: "
            f"{sum(met for *_, met, _ in results)}/{len(results)} as expected"
        )
    sys.exit(4 if failed else 0)


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _as_dict(scenario: Scenario, outcome: Outcome, met: bool, why: str) -> dict:
    return {
        "scenario": scenario.name,
        "bad_from": outcome.bad_from,
        "rollback_minute": outcome.rollback_minute,
        "rollback_rule": outcome.rollback_rule,
        "rollback_reason": outcome.rollback_reason,
        "minutes_to_rollback": outcome.minutes_to_rollback,
        "steps": [{"minute": m, "percent": p} for m, p in outcome.steps],
        "expected": met,
        "why": why,
        "timeline": [
            {
                "minute": t.minute,
                "verdict": t.verdict,
                "action": t.action,
                "streaks": dict(t.streaks),
                "message": t.message,
            }
            for t in outcome.ticks
        ],
    }
