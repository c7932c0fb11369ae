"""The main job, locally: a canary goes bad, alerts flow, it is rolled back, and you see how.

    ./dev demo                   a go-live rehearsal (infra/rehearsal/): real requests served by
                                 sample revisions, metrics from what was served, alerts from the
                                 policy; one canary walked up the ramp, one rolled back; a report
    ./dev demo --scenario NAME   the rehearsal with a scenario of the library (repeatable)
    ./dev demo --incidents       hand-made incidents published minute by minute (below)
    ./dev demo --ramp            checkpoints walk a healthy canary 5 % → 100 %, and the operator CLI
    ./dev demo --load-test       the load test and the rate-limit probe against two local targets

`--incidents` runs on the real Pub/Sub and Firestore emulators, the Cloud Run and Cloud
Monitoring stand-ins and the functions served by functions-framework, wired with push
subscriptions to their URLs as terraform/delivery.tf declares them. Each bad minute of the canary
is written to the Monitoring stand-in as Cloud Run would record it; the alert it raises makes
breach_counter judge those minutes.

The stack guards two services: while shop's canaries are rolled back, cart's healthy canary is
judged by the same checkpoint minute, fanned out to one checkpoint_worker per service.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from infra.demo_stack import CART, LOCATION, SERVICE, demo_minutes
from infra.localstack import ALERTS_TOPIC, PROJECT, local_stack

OBSERVED = {"error_rate": ("0.06", "0.01"), "memory": ("0.93", "0.85")}


def bad_minute(rule: str) -> Any:
    """One minute of the canary's traffic that breaches `rule` (200 requests)."""
    from infra.metrics_feed import Minute

    return Minute(requests=200, errors=12) if rule == "error_rate" else Minute(requests=200, memory=0.93)


def incident(
    rule: str, revision: str, state: str = "open", number: int = 0, started: datetime | None = None
) -> dict[str, Any]:
    """A Cloud Monitoring incident (schema 1.2) as the alert policy for `rule` publishes it.

    The demo compresses time: in GCP the next breach of an open incident is its renotification
    half an hour later (alerting.renotify_interval_s); here each alert is its own incident, because
    a repeat of the same incident moments later is one notification delivered twice."""
    observed, threshold = OBSERVED[rule]
    return {
        "version": "1.2",
        "incident": {
            "incident_id": f"demo-{rule}-{revision}-{number}",
            "scoping_project_id": PROJECT,
            "started_at": int((started or datetime.now(UTC)).timestamp()),
            "ended_at": None,
            "state": state,
            "summary": f"canary {rule} above threshold for {revision}",
            "resource": {
                "type": "cloud_run_revision",
                "labels": {
                    "project_id": PROJECT,
                    "service_name": "shop",
                    "revision_name": revision,
                    "location": LOCATION,
                },
            },
            "policy_name": f"canary-guard shop: {rule}",
            "policy_user_labels": {"canary_rule": rule, "canary_service": "shop"},
            "observed_value": observed,
            "threshold_value": threshold,
        },
    }


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def split(stack: Any) -> dict[str, int]:
    return _split_of(stack, SERVICE)


def show_split(traffic: dict[str, int]) -> str:
    return ", ".join(f"{rev} {pct}%" for rev, pct in traffic.items())


def when(value: Any) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] if isinstance(value, datetime) else "-"


def print_timeline(store: Any, rollout_id: str) -> None:
    print(f"\n  timeline of {rollout_id} (from Firestore decisions)")
    for entry in store.history(rollout_id):
        extra = ""
        if entry["kind"] == "evidence":
            extra = f"  [{entry['source']}]"
        elif entry["kind"] == "rolled_back":
            extra = f"  [{entry['mode']} by {entry['requested_by']}: {show_split(_pcts(entry['after']))}]"
        print(f"    {when(entry['at'])}  {entry['kind']:<18} {entry.get('message', '')}{extra}")


def _pcts(targets: list[dict[str, Any]]) -> dict[str, int]:
    return {t["revision"]: t["percent"] for t in targets}


def breach_until_rollback(
    stack: Any, store: Any, monitoring: Any, rule: str, revision: str, limit: int, start: datetime
) -> None:
    """One bad minute of the canary at a time, each followed by the alert it raises, until the
    rollback lands; then show how it went. (Time is compressed: the minutes are laid out from
    `start`, in the past, and each alert is the incident opened by its minute.)"""
    from google.cloud import pubsub_v1

    from shared.clients.store import rollout_id
    from shared.core.ledger import Phase

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, ALERTS_TOPIC)
    rid = rollout_id(SERVICE, revision)
    sent = time.monotonic()
    traffic = bad_minute(rule)
    for n in range(1, limit + 1):
        minute_end = start + timedelta(minutes=n)
        demo_minutes(monitoring, "shop", revision, [minute_end], traffic)
        sent = time.monotonic()
        message = incident(rule, revision, number=n, started=minute_end + timedelta(seconds=20))
        publisher.publish(topic, json.dumps(message).encode()).result(timeout=30)

        def counted(n: int = n) -> bool:
            rollout = store.get(rid)
            return bool(rollout and rollout.streaks.get(rule) and rollout.streaks[rule].count >= n)

        wait_for(f"{rule} breach {n}", counted)
        shown = (
            f"{traffic.errors / traffic.requests:.0%} 5xx"
            if rule == "error_rate"
            else f"memory {traffic.memory:.0%}"
        )
        print(
            f"  minute {n} ({minute_end - timedelta(minutes=1):%H:%M}Z): canary serves {shown} → alert → "
            f"breach_counter judges it from Cloud Monitoring → {rule} {n}/{limit} "
            f"({(time.monotonic() - sent) * 1000:.0f} ms from publish to Firestore)"
        )

    def rolled_back() -> bool:
        # ROLLED_BACK is the rollback's last write (after the traffic change and its decision),
        # so the timeline printed next is complete.
        rollout = store.get(rid)
        return bool(rollout and rollout.phase is Phase.ROLLED_BACK and split(stack).get(revision, 0) == 0)

    wait_for("the rollback", rolled_back)
    took_ms = (time.monotonic() - sent) * 1000
    print(f"  ⟲ rolled back {took_ms:.0f} ms after the last alert was published: {show_split(split(stack))}")
    print_timeline(store, rid)


def checkpoint_minute(stack: Any, store: Any, monitoring: Any) -> None:
    """cart's healthy canary at 5 %, and one checkpoint minute over both services: the
    checkpoint reads Monitoring once and sends each service to a checkpoint_worker (Pub/Sub)."""
    from infra.metrics_feed import HEALTHY
    from shared.clients.store import rollout_id

    revisions = ["cart-00001", "cart-00002"]
    stack.cloudrun.put_service(
        CART,
        revisions,
        [
            {"revision": "cart-00001", "percent": 95},
            {"revision": "cart-00002", "percent": 5, "tag": "canary"},
        ],
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    for revision in revisions:
        stamps = [end - timedelta(minutes=m) for m in range(10)]
        demo_minutes(monitoring, "cart", revision, stamps, HEALTHY)
    print("\n▶ canary cart-00002 deployed at 5% on cart (healthy); Cloud Scheduler calls checkpoint")
    answer = requests.post(stack.function_urls["checkpoint"], timeout=60).json()
    for report in answer["rollouts"]:
        print(f"  checkpoint → {report['message']}")
    cart = rollout_id(CART, "cart-00002")
    wait_for("cart's checkpoint", lambda: bool((r := store.get(cart)) and r.last_verdict))
    verdict = store.get(cart).last_verdict
    evidence = verdict.get("evidence") or {}
    readings, outcome = evidence.get("minutes", 0), evidence.get("outcome")
    reason = (verdict.get("reasons") or [""])[0]
    print(
        f"  checkpoint_worker → cart: {readings} readings (rule × minute) of its healthy minutes into "
        f"the ledger ({outcome}); step verdict {verdict['verdict']}: {reason}"
    )
    print(f"  traffic of cart: {show_split(_split_of(stack, CART))} (untouched by shop's rollbacks)")


def _split_of(stack: Any, service: str) -> dict[str, int]:
    return {t["revision"]: t.get("percent", 0) for t in stack.cloudrun.service(service)["traffic"]}


def deploy(stack: Any, canary: str, revisions: list[str], percent: int = 5) -> None:
    stack.cloudrun.put_service(
        SERVICE,
        revisions,
        [
            {"revision": "shop-00001", "percent": 100 - percent},
            {"revision": canary, "percent": percent, "tag": "canary"},
        ],
    )
    print(f"\n▶ canary {canary} deployed at {percent}%: {show_split(split(stack))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, help="keep the stack's logs here (default: a temp dir)")
    parser.add_argument("--ramp", action="store_true", help="show the checkpoint ramp and the CLI instead")
    parser.add_argument(
        "--incidents", action="store_true", help="publish hand-made incidents instead of a rehearsal"
    )
    parser.add_argument(
        "--scenario", action="append", default=[], metavar="NAME", help="rehearse a scenario of the library"
    )
    parser.add_argument(
        "--load-test",
        action="store_true",
        help="run the load test and the probe against local sample targets",
    )
    args = parser.parse_args(argv)
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="canary-guard-demo-"))
    if args.load_test:
        print(f"starting the local stack and two sample targets; logs in {log_dir}")
        from infra.demo_ramp import load_test_demo

        return load_test_demo(log_dir)
    if args.ramp:
        print(f"starting the local stack with the checkpoint function; logs in {log_dir}")
        from infra.demo_ramp import ramp_demo

        return ramp_demo(log_dir)
    if not args.incidents:
        from infra.rehearsal.cli import rehearse

        # The rehearsal's own command line: its exit code says whether every canary did what
        # its scenario expects.
        options = [opt for name in args.scenario for opt in ("--scenario", name)]
        return rehearse.main([*options, "--out", str(log_dir)], standalone_mode=False) or 0
    print(f"starting the local stack (emulators, Cloud Run and Monitoring stand-ins, functions): {log_dir}")
    started = time.monotonic()
    from infra.chat_webhook import ChatWebhook
    from infra.monitoring_standin import start_monitoring_standin

    monitoring = start_monitoring_standin()
    channel = ChatWebhook()  # the team's chat channel, locally: what notify posts lands here
    extra = {"MONITORING_API_ENDPOINT": monitoring.target, "CHAT_WEBHOOK_URL": channel.url}
    functions = (
        "breach_counter",
        "rollback",
        "emergency_rollback",
        "notify",
        "checkpoint",
        "checkpoint_worker",
    )
    with local_stack(log_dir, [SERVICE, CART], functions=functions, extra_env=extra) as stack:
        from shared.clients.store import RolloutStore
        from shared.policy import load_policy

        print(f"stack up in {time.monotonic() - started:.1f} s: {', '.join(stack.function_urls)}")
        store = RolloutStore(PROJECT)
        limits = load_policy().consecutive_limits

        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
        deploy(stack, "shop-00002", ["shop-00001", "shop-00002"])
        breach_until_rollback(
            stack, store, monitoring, "error_rate", "shop-00002", limits["error_rate"], start
        )

        deploy(stack, "shop-00003", ["shop-00001", "shop-00002", "shop-00003"])
        breach_until_rollback(stack, store, monitoring, "memory", "shop-00003", limits["memory"], start)

        deploy(stack, "shop-00004", ["shop-00001", "shop-00002", "shop-00003", "shop-00004"], percent=10)
        url = stack.function_urls["emergency_rollback"]
        for dry_run in (True, False):
            body = {"service": "shop", "reason": "on-call: checkout errors", "dry_run": dry_run}
            answer = requests.post(url, json=body, timeout=60)
            result = answer.json()
            print(
                f"  emergency_rollback dry_run={dry_run} → HTTP {answer.status_code} {result['status']}: "
                f"{show_split(_pcts(result['before']))} → {show_split(_pcts(result['after']))}"
            )
        print(f"\nfinal traffic of shop: {show_split(split(stack))}")
        checkpoint_minute(stack, store, monitoring)
        channel.wait_for("ROLLED BACK canary shop-00004", timeout_s=20)
        print("\nwhat the team's chat channel read (notify → webhook):")
        for text in channel.texts():
            print(f"  {text}")
        print(f"function logs (one JSON line per event): {log_dir}")
    monitoring.stop()
    channel.stop()
    print("stack stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
