"""One minute's checkpoint over many rollouts: N services, each with a canary at 5 %, on the
real Firestore and Pub/Sub emulators and the Cloud Run / Monitoring stand-ins, every Google API
call delayed by a latency proxy (infra/latency_proxy.py) as it would be in GCP.

For each N it runs two checkpoint minutes through the documented in-process call
(`shared.handlers.checkpoint.run_checkpoints`, which is also what the scheduled function runs when it has
no CHECKPOINT_TOPIC): the first discovers and registers the N rollouts, the second is a steady
minute. It prints each run's wall time, whether every rollout was judged and recorded, and the
calls per rollout by kind.

    .venv/bin/python -m bench.bench_checkpoint_scale [--rollouts 1 10 100 300] [--latency-ms 150]
    .venv/bin/python -m bench.bench_checkpoint_scale --fanout 32 [--rollouts ...]
    .venv/bin/python -m bench.bench_checkpoint_scale --into-step 600   (day-long soaks: hour blocks)

--fanout K runs what Terraform deploys instead: the checkpoint dispatches one Pub/Sub message
per service (CHECKPOINT_TOPIC), the emulator pushes them to a checkpoint_worker served by
functions-framework with K threads (K instances at one request each, sharing two cores), and the
minute's wall time runs until every rollout holds that minute's verdict.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.cloudrun_standin import start_cloudrun_standin
from infra.latency_proxy import LatencyProxy
from infra.localstack import CHECKPOINT_TOPIC, PROJECT, ROLLBACK_TOPIC, ensure_topic, start_emulators
from infra.metrics_feed import HEALTHY, feed
from infra.monitoring_standin import start_monitoring_standin

LOCATION = "us-central1"


def service_name(index: int) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/services/svc-{index:03d}"


def stand_up(count: int, cloudrun, monitoring, now: datetime, minutes: int = 40) -> list[str]:
    """`count` services with a canary at 5 %, and `minutes` healthy minutes of both revisions."""
    services = [service_name(i) for i in range(count)]
    stamps = [now - timedelta(minutes=m) for m in range(minutes)]
    for index, name in enumerate(services):
        short = f"svc-{index:03d}"
        stable, canary = f"{short}-00001", f"{short}-00002"
        cloudrun.put_service(
            name,
            [stable, canary],
            [{"revision": stable, "percent": 95}, {"revision": canary, "percent": 5, "tag": "canary"}],
        )
        for revision in (stable, canary):
            feed(
                monitoring,
                project=PROJECT,
                location=LOCATION,
                service=short,
                revision=revision,
                minutes=stamps,
                traffic=HEALTHY,
            )
    return services


def function_env(services: list[str], proxies: dict[str, LatencyProxy]) -> dict[str, str]:
    return dict(os.environ) | {
        "CANARY_SERVICES": ",".join(services),
        "ROLLBACK_TOPIC": ROLLBACK_TOPIC,
        "CLOUD_RUN_API_ENDPOINT": proxies["cloudrun"].url,
        "MONITORING_API_ENDPOINT": proxies["monitoring"].host,
    }


def run_minute(
    now: datetime,
    services: list[str],
    proxies: dict[str, LatencyProxy],
    cloudrun,
    *,
    fanout: bool = False,
    direct=None,
) -> dict:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.monitoring import MonitoringReader
    from shared.clients.pubsub import Publisher
    from shared.clients.store import RolloutStore
    from shared.config import load_settings
    from shared.handlers.checkpoint import Clients, handle_checkpoint, run_checkpoints
    from shared.policy import load_policy

    env = function_env(services, proxies) | ({"CHECKPOINT_TOPIC": CHECKPOINT_TOPIC} if fanout else {})
    settings = load_settings(env)
    clients = Clients(
        store=RolloutStore(PROJECT),  # FIRESTORE_EMULATOR_HOST points at the proxy
        traffic=CloudRunTraffic(proxies["cloudrun"].url, sleep=lambda _s: None),
        reader=MonitoringReader(PROJECT, proxies["monitoring"].host),
        writer=None,
        publisher=Publisher(PROJECT),
    )
    for proxy in proxies.values():
        proxy.reset_count()
    cloudrun_before = len(cloudrun.calls())
    started = time.perf_counter()
    policy = load_policy(settings.policy_file)
    if fanout:  # dispatch, then wait until every worker has recorded its service's verdict
        handle_checkpoint(None, settings=settings, policy=policy, clients=clients, now=now)
        reports = []
        deadline = time.monotonic() + 600
        while recorded(services, now, direct) < len(services) and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        reports = run_checkpoints(now=now, settings=settings, policy=policy, clients=clients)
    wall = time.perf_counter() - started
    calls = Counter({name: proxy.reset_count() for name, proxy in proxies.items() if name != "cloudrun"})
    calls["cloudrun"] = len(cloudrun.calls()) - cloudrun_before
    actions = Counter(str(report.fields.get("action")) for report in reports)
    return {"wall_s": wall, "calls": calls, "actions": actions, "reports": len(reports)}


def recorded(services: list[str], now: datetime, store) -> int:
    """How many of the services' rollouts hold the step verdict of the minute at `now` (read
    past the proxy)."""
    from shared.policy import load_policy

    end = now - timedelta(minutes=load_policy().checkpoint.data_lag_minutes)
    count = 0
    for name in services:
        rollout = store.active(name)
        window = ((rollout.last_verdict or {}) if rollout else {}).get("window") or {}
        count += window.get("end") == end
    return count


def start_worker(
    services: list[str], proxies: dict[str, LatencyProxy], emulators, threads: int, log_dir: Path
):
    """checkpoint_worker under functions-framework (`threads` requests at once, every Google
    call through the proxies), pushed the checkpoints topic by the emulator as delivery.tf does."""
    from infra.localstack import free_port, push_endpoint, serve_function, wire_push

    port = free_port()
    env = function_env(services, proxies) | {"THREADS": str(threads)}
    worker = serve_function("checkpoint_worker", port, env, log_dir)
    direct = os.environ["PUBSUB_EMULATOR_HOST"]
    os.environ["PUBSUB_EMULATOR_HOST"] = emulators.pubsub_host  # wiring is not a measured call
    try:
        wire_push(PROJECT, CHECKPOINT_TOPIC, "bench-checkpoint-worker", push_endpoint(port))
    finally:
        os.environ["PUBSUB_EMULATOR_HOST"] = direct
    return worker


def soak_half_done(store, services: list[str], minutes: int = 30) -> None:
    """Move each rollout's step start `minutes` back (past the proxy), as if that much of its
    soak had passed: the steady minute then judges a step window of whole minutes."""
    for name in services:
        rollout = store.active(name)
        if rollout is not None:
            store._rollout_ref(rollout.id).update(
                {"step_started_at": rollout.step_started_at - timedelta(minutes=minutes)}
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, nargs="+", default=[1, 10, 100, 300])
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument(
        "--into-step", type=int, default=30, metavar="MIN", help="how far into its step each rollout is"
    )
    parser.add_argument(
        "--fanout", type=int, default=0, metavar="K", help="dispatch to a worker with K threads"
    )
    args = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    emulators = start_emulators(log_dir)
    cloudrun = start_cloudrun_standin()
    monitoring = start_monitoring_standin()
    delay = args.latency_ms / 1000
    proxies = {
        "firestore": LatencyProxy(emulators.firestore_host, delay),
        "pubsub": LatencyProxy(emulators.pubsub_host, delay),
        "monitoring": LatencyProxy(monitoring.target, delay),
        "cloudrun": LatencyProxy(cloudrun.url.removeprefix("http://"), delay),
    }
    os.environ.update(emulators.env())
    ensure_topic(PROJECT, ROLLBACK_TOPIC)
    ensure_topic(PROJECT, CHECKPOINT_TOPIC)
    from shared.clients.store import RolloutStore

    direct = RolloutStore(PROJECT)  # built before the proxies go into the environment
    os.environ["FIRESTORE_EMULATOR_HOST"] = proxies["firestore"].host
    os.environ["PUBSUB_EMULATOR_HOST"] = proxies["pubsub"].host
    print(f"latency {args.latency_ms:.0f} ms on every Firestore, Pub/Sub, Monitoring and Cloud Run call")
    print(f"{'rollouts':>8}  {'run':<8} {'wall s':>7}  {'judged':>9}  calls per rollout")
    try:
        for count in args.rollouts:
            emulators.reset_firestore()
            cloudrun.reset()
            monitoring.reset()
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            services = stand_up(count, cloudrun, monitoring, now, minutes=args.into_step + 10)
            worker = start_worker(services, proxies, emulators, args.fanout, log_dir) if args.fanout else None
            for label, at in (("first", now), ("steady", now + timedelta(minutes=1))):
                if label == "steady":  # mid-soak: the step's window holds half an hour of minutes
                    soak_half_done(direct, services, args.into_step)
                result = run_minute(at, services, proxies, cloudrun, fanout=bool(args.fanout), direct=direct)
                judged = recorded(services, at, direct)
                per = "  ".join(f"{kind} {n / count:.1f}" for kind, n in sorted(result["calls"].items()))
                errors = result["actions"].get("error", 0)
                print(
                    f"{count:>8}  {label:<8} {result['wall_s']:>7.1f}  {judged:>4}/{count:<4}  {per}"
                    + (f"  ({errors} failed)" if errors else ""),
                    flush=True,
                )
            if worker is not None:
                worker.stop()
    finally:
        for proxy in proxies.values():
            proxy.stop()
        monitoring.stop()
        cloudrun.stop()
        emulators.stop()


if __name__ == "__main__":
    main()
