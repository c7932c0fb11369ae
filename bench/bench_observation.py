"""How long one alert takes end to end on the local stack: publish an incident to the alerts
topic → Pub/Sub emulator push → breach_counter (functions-framework) → the minutes that opened it
read from the Monitoring stand-in and judged → Firestore transaction → visible in the rollout's
evidence ledger. Prints median / p90 / max over N alerts.

    .venv/bin/python -m bench.bench_observation [-n 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.localstack import ALERTS_TOPIC, PROJECT, local_stack
from infra.metrics_feed import HEALTHY, Minute, feed
from infra.monitoring_standin import start_monitoring_standin

SERVICE = f"projects/{PROJECT}/locations/us-central1/services/shop"


def incident(started: datetime, number: int) -> dict:
    """A real-schema (1.2) error_rate incident for the canary, opened at `started`."""
    return {
        "version": "1.2",
        "incident": {
            "incident_id": f"bench-{number}",
            "scoping_project_id": PROJECT,
            "started_at": int(started.timestamp()),
            "ended_at": None,
            "state": "open",
            "summary": "canary error rate above threshold",
            "resource": {
                "type": "cloud_run_revision",
                "labels": {
                    "project_id": PROJECT,
                    "service_name": "shop",
                    "revision_name": "shop-00002",
                    "location": "us-central1",
                },
            },
            "policy_name": "canary-guard error_rate",
            "policy_user_labels": {"canary_rule": "error_rate"},
            "threshold_value": "0.01",
            "observed_value": "0.05",
        },
    }


def ledger_size(store: object, rid: str) -> int:
    rollout = store.get(rid)
    return len(rollout.ledger.get("error_rate", {})) if rollout else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="alerts to time (default 50)")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="canary-guard-bench-"))
    monitoring = start_monitoring_standin()
    env = {"MONITORING_API_ENDPOINT": monitoring.target}
    try:
        with local_stack(log_dir, [SERVICE], functions=("breach_counter",), extra_env=env) as stack:
            from google.cloud import pubsub_v1

            from shared.clients.store import RolloutStore, rollout_id

            stack.cloudrun.put_service(
                SERVICE,
                ["shop-00001", "shop-00002"],
                [
                    {"revision": "shop-00001", "percent": 95},
                    {"revision": "shop-00002", "percent": 5, "tag": "canary"},
                ],
            )
            store = RolloutStore(PROJECT)
            rid = rollout_id(SERVICE, "shop-00002")
            publisher = pubsub_v1.PublisherClient()
            topic = publisher.topic_path(PROJECT, ALERTS_TOPIC)
            start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
            timings_ms: list[float] = []
            for n in range(args.n + 1):  # the first one discovers the rollout: reported apart
                # Breach and healthy minutes alternate, so no run ever trips a rollback.
                end = start + timedelta(minutes=n)
                traffic = Minute(requests=200, errors=10) if n % 2 == 0 else HEALTHY
                feed(
                    monitoring,
                    project=PROJECT,
                    location="us-central1",
                    service="shop",
                    revision="shop-00002",
                    minutes=[end],
                    traffic=traffic,
                )
                before = ledger_size(store, rid)
                sent = time.monotonic()
                publisher.publish(topic, json.dumps(incident(end, n)).encode()).result()
                while ledger_size(store, rid) == before:  # the new minute lands in the ledger
                    if time.monotonic() - sent > 30:
                        raise TimeoutError(f"alert {n} did not land")
                    time.sleep(0.005)
                timings_ms.append((time.monotonic() - sent) * 1000)
            first, rest = timings_ms[0], sorted(timings_ms[1:])
            print(f"first alert (discovers the rollout from Cloud Run, cold caches): {first:.0f} ms")
            print(
                f"{len(rest)} alerts publish→judged minute in Firestore: "
                f"median {statistics.median(rest):.0f} ms, "
                f"p90 {rest[int(len(rest) * 0.9) - 1]:.0f} ms, max {rest[-1]:.0f} ms"
            )
    finally:
        monitoring.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
