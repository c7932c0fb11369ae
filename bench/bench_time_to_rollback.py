"""Time from a canary's first bad minute to the rollback request, for every scenario of the
library, through the decision core on a simulated clock with Cloud Monitoring's visibility lag.

    .venv/bin/python -m bench.bench_time_to_rollback [--lag 3]
"""

from __future__ import annotations

import argparse

from infra.backtest_cli import library
from shared.core.backtest import load_scenario, run_scenario
from shared.policy import load_policy

GOALS = {"crash": 4, "error_spike": 6, "just_over": 6, "latency_creep": 6, "memory_leak": 5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lag", type=int, default=3, help="minutes before a minute's data is visible")
    args = parser.parse_args(argv)
    policy = load_policy()
    print(f"{'scenario':<30} {'bad from':>8} {'rollback at':>11} {'minutes':>7} {'goal':>5}  rule")
    for path in library():
        scenario = load_scenario(path)
        outcome = run_scenario(scenario, policy, lag=args.lag)
        took = outcome.minutes_to_rollback
        goal = GOALS.get(scenario.name)
        print(
            f"{scenario.name:<30} {outcome.bad_from if outcome.bad_from is not None else '-':>8} "
            f"{outcome.rollback_minute if outcome.rollback_minute is not None else '-':>11} "
            f"{took if took is not None else '-':>7} {goal if goal is not None else '-':>5}  "
            f"{outcome.rollback_rule or 'no rollback'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
