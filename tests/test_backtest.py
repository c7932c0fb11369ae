"""The backtest runs the decision core over recorded series; the scenario library's expected
outcomes are checked here (CI runs the whole library), and the real checkpoint agrees with it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from infra.backtest_cli import backtest, library
from shared.core.backtest import (
    T0,
    Expectation,
    ScenarioError,
    load_scenario,
    run_scenario,
    simulate,
    with_overrides,
)
from shared.core.evidence import MinuteMetrics
from shared.policy import load_policy

POLICY = load_policy()
GOALS = {"crash": 4, "error_spike": 6, "just_over": 6, "latency_creep": 6, "memory_leak": 5}
NEVER = {"healthy", "exactly_on_the_bar", "flapping_below", "low_traffic_errors", "cpu_hot"}


def test_the_library_holds_every_scenario_the_issue_names():
    names = {path.stem for path in library()}
    assert set(GOALS) | NEVER | {"flapping_over", "pulsing_errors", "shared_outage"} <= names


@pytest.mark.parametrize("path", library(), ids=lambda p: p.stem)
def test_each_scenario_meets_its_expected_outcome(path):
    scenario = load_scenario(path)
    assert scenario.expect is not None, "every library scenario states its expected outcome"
    outcome = run_scenario(scenario, POLICY)
    met, why = outcome.meets(scenario.expect)
    assert met, why
    if scenario.name in GOALS:
        assert outcome.minutes_to_rollback is not None and outcome.minutes_to_rollback <= GOALS[scenario.name]
    if scenario.name in NEVER:
        assert outcome.rollback_minute is None


def test_a_healthy_canary_advances_at_the_end_of_its_soak():
    outcome = run_scenario(load_scenario(next(p for p in library() if p.stem == "healthy")), POLICY)
    assert outcome.steps == ((60, 10),)


def test_more_lag_is_later_by_as_much():
    crash = load_scenario(next(p for p in library() if p.stem == "crash"))
    assert run_scenario(crash, POLICY, lag=3).minutes_to_rollback == 4
    assert run_scenario(crash, POLICY, lag=5).minutes_to_rollback == 6


def test_another_policy_changes_the_decision():
    spike = load_scenario(next(p for p in library() if p.stem == "error_spike"))
    strict = with_overrides(POLICY, {"rollback_rules": {"error_rate": {"consecutive": 5}}})
    assert run_scenario(spike, POLICY).minutes_to_rollback == 6
    assert run_scenario(spike, strict).minutes_to_rollback == 8


def test_meets_says_why_not():
    minutes = [
        MinuteMetrics(T0 + timedelta(minutes=i), 200, 200 if i >= 2 else 0, 80, 0.4, 0.3) for i in range(10)
    ]
    outcome = simulate(minutes, POLICY, bad_from=2)
    assert outcome.meets(Expectation(rollback=False)) == (
        False,
        "rolled back at minute 6 (canary_down): expected none",
    )
    assert not outcome.meets(Expectation(rollback=True, rule="memory"))[0]
    assert not outcome.meets(Expectation(rollback=True, within=3))[0]
    assert outcome.meets(Expectation(rollback=True, within=4, rule="canary_down"))[0]


def test_csv_series_with_a_stable_side(tmp_path):
    rows = [
        "minute,requests,errors,p95_ms,memory,cpu,stable_requests,stable_errors,stable_p95_ms,stable_memory,stable_cpu"
    ]
    rows += [
        f"{i},200,{10 if i >= 5 else 0},80,0.4,0.3,3800,{190 if i >= 5 else 0},80,0.4,0.3" for i in range(20)
    ]
    path = tmp_path / "shop.csv"
    path.write_text("\n".join(rows))
    scenario = load_scenario(path)
    assert len(scenario.canary) == len(scenario.stable) == 20
    assert run_scenario(scenario, POLICY).rollback_rule == "error_rate"
    against = with_overrides(POLICY, {"evidence": {"judge_against_stable": {"enabled": True}}})
    assert run_scenario(scenario, against).rollback_minute is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[]", 'at least "canary"'),
        ("{", "Expecting"),
        ('{"canary": {"rows": [{"requests": 1}]}}', "minute 0"),
    ],
)
def test_bad_scenario_files_say_what_to_fix(tmp_path, text, says):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=says):
        load_scenario(path)


def test_cli_library_table_and_exit_codes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(backtest, ["--library"])
    assert result.exit_code == 0, result.output
    assert f"{len(library())}/{len(library())} as expected" in result.output
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"name": "wrong", "canary": {}, "expect": {"rollback": True}}))
    failed = runner.invoke(backtest, [str(wrong)])
    assert failed.exit_code == 4 and "FAIL: never rolled back" in failed.output
    timeline = runner.invoke(backtest, [str(next(p for p in library() if p.stem == "crash")), "--json"])
    [data] = json.loads(timeline.output)
    assert (data["rollback_minute"], data["rollback_rule"], data["minutes_to_rollback"]) == (
        9,
        "canary_down",
        4,
    )
    assert runner.invoke(backtest, []).exit_code == 2
