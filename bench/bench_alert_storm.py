"""A reordered, duplicated alert storm through the real path, checked against judging every
minute in order with the pure core.

N services each serve a canary whose 12 minutes are bad or healthy at random (5 % 5xx, now and
then a crash); each minute raises an incident. The 12 × N notifications are delivered to
breach_counter (functions-framework, Firestore emulator, Monitoring stand-in) 30 % of them twice
or three times, in a scrambled order, by 8 concurrent senders. A service ends wrong when it was
rolled back and the minutes in order never trip a rule, or the other way round, or when its
rollback names a run its final ledger does not hold.

    .venv/bin/python -m bench.bench_alert_storm [--services 416] [--seed 7]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import random
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from infra.localstack import ALERTS_TOPIC, PROJECT, ROLLBACK_TOPIC, local_stack
from infra.metrics_feed import HEALTHY, Minute, feed
from infra.monitoring_standin import start_monitoring_standin

LOCATION = "us-central1"
MINUTES = 12
BAD, CRASH = Minute(requests=200, errors=10), Minute(requests=40, errors=40)


def name(i: int) -> str:
    return f"svc-{i:03d}"


def full(i: int) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/services/{name(i)}"


def incident(i: int, opened: datetime, number: int) -> dict:
    return {
        "version": "1.2",
        "incident": {
            "incident_id": f"0.{i:03d}-{number}",
            "scoping_project_id": PROJECT,
            "started_at": int(opened.timestamp()),
            "ended_at": None,
            "state": "open",
            "resource": {
                "type": "cloud_run_revision",
                "labels": {
                    "service_name": name(i),
                    "revision_name": f"{name(i)}-00002",
                    "location": LOCATION,
                },
            },
            "policy_name": "canary-guard error_rate",
            "policy_user_labels": {"canary_rule": "error_rate"},
        },
    }


def expected(pattern: list[Minute], start: datetime) -> bool:
    """Whether judging the minutes in order, one checkpoint each, trips a rule."""
    from shared.core.evidence import MinuteMetrics, judge_minute
    from shared.core.ledger import Phase, apply_evidence
    from shared.policy import load_policy

    policy = load_policy()
    ledger: dict = {}
    for n, minute in enumerate(pattern):
        metrics = MinuteMetrics(
            start + timedelta(minutes=n), minute.requests, minute.errors, 80.0, 0.45, 0.35
        )
        decision = apply_evidence(
            Phase.RUNNING,
            ledger,
            False,
            judge_minute(metrics, None, policy),
            policy.consecutive_limits,
            keep=timedelta(hours=2),
        )
        ledger = decision.ledger
        if decision.request_rollback:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=416)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="canary-guard-storm-"))
    monitoring = start_monitoring_standin()
    services = [full(i) for i in range(args.services)]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    patterns = {
        i: [
            rng.choice([BAD, BAD, HEALTHY, HEALTHY, HEALTHY]) if rng.random() > 0.02 else CRASH
            for _ in range(MINUTES)
        ]
        for i in range(args.services)
    }
    env = {"MONITORING_API_ENDPOINT": monitoring.target}
    try:
        with local_stack(log_dir, services, functions=("breach_counter",), extra_env=env) as stack:
            from google.api_core import exceptions as gexc
            from google.cloud import pubsub_v1

            from shared.clients.store import RolloutStore, rollout_id

            admin = pubsub_v1.PublisherClient()
            with contextlib.suppress(gexc.AlreadyExists):
                admin.create_topic(name=admin.topic_path(PROJECT, ROLLBACK_TOPIC))
            for i in range(args.services):
                stack.cloudrun.put_service(
                    full(i),
                    [f"{name(i)}-00001", f"{name(i)}-00002"],
                    [
                        {"revision": f"{name(i)}-00001", "percent": 95},
                        {"revision": f"{name(i)}-00002", "percent": 5, "tag": "canary"},
                    ],
                )
                ends = [start + timedelta(minutes=n + 1) for n in range(MINUTES)]
                for end, minute in zip(ends, patterns[i], strict=True):
                    feed(
                        monitoring,
                        project=PROJECT,
                        location=LOCATION,
                        service=name(i),
                        revision=f"{name(i)}-00002",
                        minutes=[end],
                        traffic=minute,
                    )
            notes = [(i, n) for i in range(args.services) for n in range(MINUTES)]
            deliveries = [(uuid.uuid4().hex, i, n) for i, n in notes]
            deliveries += [d for d in deliveries if rng.random() < 0.3 for _ in range(rng.choice([1, 2]))]
            rng.shuffle(deliveries)
            url = stack.function_urls["breach_counter"] + "/"
            payloads = {(i, n): incident(i, start + timedelta(minutes=n + 1, seconds=5), n) for i, n in notes}

            def deliver(delivery: tuple[str, int, int]) -> int:
                message_id, i, n = delivery
                data = {
                    "message": {
                        "data": base64.b64encode(json.dumps(payloads[(i, n)]).encode()).decode(),
                        "messageId": message_id,
                        "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    }
                }
                headers = {
                    "ce-id": message_id,
                    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                    "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{ALERTS_TOPIC}",
                    "ce-specversion": "1.0",
                    "Content-Type": "application/json",
                }
                for attempt in range(20):  # what Pub/Sub does with a 5xx: redeliver
                    answer = requests.post(url, data=json.dumps(data), headers=headers, timeout=120)
                    if answer.status_code == 200:
                        return attempt
                    time.sleep(0.2)
                raise RuntimeError(f"delivery {message_id} never succeeded")

            began = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                retries = sum(pool.map(deliver, deliveries))
            took = time.monotonic() - began
            store = RolloutStore(PROJECT)
            wrong = false_rollbacks = missed = bad_runs = 0
            rolled = 0
            for i in range(args.services):
                rollout = store.get(rollout_id(full(i), f"{name(i)}-00002"))
                want = expected(patterns[i], start)
                got = bool(rollout and rollout.rollback_requested)
                rolled += got
                if got and not want:
                    false_rollbacks += 1
                if want and not got:
                    missed += 1
                if got:
                    rule = rollout.rollback_request["rule"]
                    minutes = [o["minute"] for o in rollout.rollback_request["observations"]]
                    held = {
                        f"{m:%Y-%m-%dT%H:%MZ}": e.kind.value for m, e in rollout.ledger.get(rule, {}).items()
                    }
                    bad_runs += any(held.get(m) != "breach" for m in minutes)
            wrong = false_rollbacks + missed + bad_runs
            print(
                f"{args.services} services × {MINUTES} notifications, {len(deliveries)} deliveries "
                f"({len(deliveries) - len(notes)} duplicates), 8 senders, scrambled order: {took:.0f} s, "
                f"{retries} redeliveries after a 5xx"
            )
            print(
                f"rolled back {rolled}; wrong outcomes {wrong} (false rollbacks {false_rollbacks}, "
                f"missed {missed}, rollback naming a run the ledger lacks {bad_runs})"
            )
    finally:
        monitoring.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
