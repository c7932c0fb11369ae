"""How long one alert observation takes end to end on the local stack: publish an incident to
the alerts topic → Pub/Sub emulator push → breach_counter (functions-framework) → Firestore
transaction → visible in the rollout's streak. Prints median / p90 / max over N observations.

    .venv/bin/python -m bench.bench_observation [-n 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from infra.demo import SERVICE, incident
from infra.localstack import ALERTS_TOPIC, PROJECT, local_stack


def last_applied(store: object, rid: str) -> object:
    rollout = store.get(rid)
    streak = rollout.streaks.get("error_rate") if rollout else None
    return streak.last_event_time if streak else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="observations to time (default 50)")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="canary-guard-bench-"))
    with local_stack(log_dir, [SERVICE], functions=("breach_counter",)) as stack:
        from google.cloud import pubsub_v1

        from shared.store import RolloutStore, rollout_id

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
        timings_ms: list[float] = []
        previous = None
        for n in range(args.n + 1):  # the first one discovers the rollout: reported apart
            # Alternate open/closed so the streak never trips a rollback during the run.
            state = "open" if n % 2 == 0 else "closed"
            sent = time.monotonic()
            publisher.publish(
                topic, json.dumps(incident("error_rate", "shop-00002", state)).encode()
            ).result()

            # Poll one document every 5 ms: each message has a new publish time, so the rule's
            # last applied event time changes exactly when this observation lands.
            while last_applied(store, rid) == previous:
                if time.monotonic() - sent > 30:
                    raise TimeoutError(f"observation {n} did not land")
                time.sleep(0.005)
            timings_ms.append((time.monotonic() - sent) * 1000)
            previous = last_applied(store, rid)
        first, rest = timings_ms[0], sorted(timings_ms[1:])
        print(f"first observation (discovers the rollout from Cloud Run, cold caches): {first:.0f} ms")
        print(
            f"{len(rest)} observations publish→Firestore: median {statistics.median(rest):.0f} ms, "
            f"p90 {rest[int(len(rest) * 0.9) - 1]:.0f} ms, max {rest[-1]:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
