"""Two more demos on the local stack: `./dev demo --ramp` (checkpoints walk a healthy canary
5 % → 100 %, and the operator CLI) and `./dev demo --load-test` (the load test and the
rate-limit probe against two local targets). The main demo is infra/demo.py; what they
share, infra/demo_stack.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from infra.demo_stack import SERVICE, cli, demo_minutes
from infra.localstack import PROJECT, local_stack


def ramp_demo(log_dir: Path) -> int:
    """A healthy canary walked from 5 % to 100 % by checkpoint runs alone (soak 0 for the demo)."""
    import yaml

    from infra.metrics_feed import HEALTHY, rewind_step
    from infra.monitoring_standin import start_monitoring_standin
    from shared.clients.store import rollout_id
    from shared.policy import DEFAULT_POLICY_FILE

    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    for step in policy["ramp"]:
        step["soak_minutes"] = 0  # the demo does not wait an hour per step
    policy_file = log_dir / "policy-fast-ramp.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    monitoring = start_monitoring_standin()
    extra = {"MONITORING_API_ENDPOINT": monitoring.target, "CANARY_POLICY_FILE": str(policy_file)}
    try:
        with local_stack(log_dir, [SERVICE], functions=("checkpoint",), extra_env=extra) as stack:
            stack.cloudrun.put_service(
                SERVICE, ["shop-00001", "shop-00005"], [{"revision": "shop-00001", "percent": 100}]
            )
            cli(stack, "start", "shop", "--revision", "shop-00005", "--percent", "5")
            lag = timedelta(minutes=policy["checkpoint"]["data_lag_minutes"])
            end = (datetime.now(UTC) - lag).replace(second=0, microsecond=0)
            minutes = [end - timedelta(minutes=m) for m in range(20)]
            demo_minutes(monitoring, "shop", "shop-00005", minutes, HEALTHY)
            print("\n▶ Cloud Scheduler calls checkpoint (healthy canary: 200 req/min, 0 % 5xx, P95 80 ms)")
            print("  (time compressed: before each call the step's start moves 10 minutes back)")
            for _ in range(4):
                rewind_step(PROJECT, rollout_id(SERVICE, "shop-00005"), timedelta(minutes=10))
                answer = requests.post(
                    stack.function_urls["checkpoint"], json={"service": "shop"}, timeout=60
                ).json()
                rollout = answer["rollouts"][0]
                print(f"  checkpoint → {rollout['verdict']:<5} {rollout['message']}")
            cli(stack, "status", "shop")
            cli(stack, "metrics", "shop")
            cli(stack, "history", "shop", "--limit", "6")
    finally:
        monitoring.stop()
    return 0


def load_test_demo(log_dir: Path) -> int:
    """The load test and the rate-limit probe, by hand, against two local sample targets: the
    canary rate-limits at 1 request/s (the probe sends 2/s), the stable side does not."""
    from infra.monitoring_standin import start_monitoring_standin
    from infra.target_server import start_target_server

    canary, stable = start_target_server(latency_ms=20), start_target_server(latency_ms=20)
    monitoring = start_monitoring_standin()  # the results are written as custom metrics too
    policy = yaml_policy(log_dir, load_test={"requests": 200, "concurrency": 8})
    extra = {"CANARY_POLICY_FILE": str(policy), "MONITORING_API_ENDPOINT": monitoring.target}
    try:
        with local_stack(log_dir, [SERVICE], functions=(), extra_env=extra) as stack:
            stack.cloudrun.put_service(
                SERVICE,
                ["shop-00001", "shop-00002"],
                [
                    {"revision": "shop-00001", "percent": 95},
                    {"revision": "shop-00002", "percent": 5, "tag": "canary"},
                ],
                uri=stable.url,
                tag_uris={"canary": canary.url},
            )
            print(f"\n▶ sample targets: canary {canary.url} (rate limit 1/s), stable {stable.url}")
            canary.configure(latency_ms=20, rate_limit_rps=1, rate_limit_burst=1)
            cli(stack, "start", "shop", "--revision", "shop-00002", "--percent", "5")
            cli(stack, "probe", "shop")
            canary.configure(latency_ms=20)
            cli(stack, "load-test", "shop", "--mode", "load")
            cli(stack, "history", "shop", "--limit", "3")
    finally:
        canary.stop()
        stable.stop()
        monitoring.stop()
    return 0


def yaml_policy(log_dir: Path, **sections: dict[str, Any]) -> Path:
    """The bundled policy with some fields of some sections changed, written to log_dir."""
    import yaml

    from shared.policy import DEFAULT_POLICY_FILE

    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    for section, changes in sections.items():
        policy[section].update(changes)
    path = log_dir / "policy-demo.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path
