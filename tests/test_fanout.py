"""Many rollouts per checkpoint minute: Monitoring read once for every service (and judged as the
per-rollout read judges), the same decisions for one rollout as for many, the dispatcher and its
checkpoint_worker over the Pub/Sub emulator, the checkpoint lease, and hostile worker messages."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests

import infra.monitoring_standin as monitoring_standin
from infra.localstack import (
    CHECKPOINT_TOPIC,
    PROJECT,
    ensure_topic,
    free_port,
    push_endpoint,
    serve_function,
    wire_push,
)
from infra.metrics_feed import HEALTHY, Minute, feed
from shared.clients.monitoring import MonitoringReader
from shared.config import load_settings
from shared.core.minutes import RecordedMinutes, revisions_from_json, revisions_json
from shared.handlers.fanout import checkpoint_message, handle_checkpoint_message
from shared.policy import load_policy
from tests.conftest import LOCATION, deploy_canary
from tests.test_checkpoint import ChatCapture, minute, soon

pytestmark = pytest.mark.emulators
POLICY = load_policy()
LAG = timedelta(minutes=POLICY.checkpoint.data_lag_minutes)
MINUTE = timedelta(minutes=1)
BAD = Minute(requests=200, errors=10, latency_ms=90)
SLOW = Minute(requests=120, errors=1, latency_ms=420, memory=0.7, cpu=0.6)


def service(short: str) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/services/{short}"


def shorts(count: int) -> list[str]:
    return [f"svc-{index:02d}" for index in range(count)]


def deploy(cloudrun, short: str) -> None:
    deploy_canary(
        cloudrun,
        service(short),
        stable=f"{short}-00001",
        canary=f"{short}-00002",
        revisions=(f"{short}-00001", f"{short}-00002"),
    )


def serve(monitoring, short: str, stamps: list[datetime], traffic: Minute, *, stable: bool = True) -> None:
    revisions = [f"{short}-00002"] + ([f"{short}-00001"] if stable else [])
    for revision in revisions:
        feed(
            monitoring,
            project=PROJECT,
            location=LOCATION,
            service=short,
            revision=revision,
            minutes=stamps,
            traffic=traffic if revision.endswith("2") else HEALTHY,
        )


@pytest.fixture
def clients(firestore_clean, cloudrun, monitoring):
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.pubsub import Publisher
    from shared.clients.store import RolloutStore
    from shared.handlers.checkpoint import Clients

    chat = ChatCapture()
    return Clients(
        store=RolloutStore(PROJECT, notifications=chat.sink),
        traffic=CloudRunTraffic(cloudrun.url, sleep=lambda _s: None),
        reader=MonitoringReader(PROJECT, monitoring.target),
        writer=None,
        publisher=Publisher(PROJECT),
    )


def settings_for(function_env, names: list[str], **env: str):
    return load_settings(function_env | {"CANARY_SERVICES": ",".join(service(n) for n in names)} | env)


# -- one read for all, judged as the per-rollout read judges -----------------------------------


def test_the_batched_read_judges_every_window_as_the_per_rollout_read(monitoring):
    reader = MonitoringReader(PROJECT, monitoring.target)
    end = minute(datetime.now(UTC))
    stamps = [end - timedelta(minutes=m) for m in range(12)]
    names = shorts(3)
    for name, traffic in zip(names, (HEALTHY, BAD, SLOW), strict=True):
        serve(monitoring, name, stamps, traffic)
    start = end - timedelta(minutes=12)
    monitoring.calls.clear()
    revisions = reader.platform_minutes([(LOCATION, n) for n in names], start=start, end=end)
    assert monitoring.calls["ListTimeSeries"] == 4
    batched = RecordedMinutes(revisions, start=start, end=end)
    load_test = [(end - timedelta(minutes=6), end - timedelta(minutes=4))]
    for name in names:
        for window_start, exclude in ((start, []), (end - timedelta(minutes=7), load_test)):
            query = {"location": LOCATION, "service": name, "revision": f"{name}-00002"}
            one = reader.canary_metrics(start=window_start, end=end, exclude=exclude, **query)
            assert batched.canary_metrics(start=window_start, end=end, exclude=exclude, **query) == one
        per_minute = reader.minute_metrics(location=LOCATION, service=name, start=start, end=end)
        assert batched.minute_metrics(location=LOCATION, service=name, start=start, end=end) == per_minute
    assert batched.fallback_reads == 0


def test_calls_to_monitoring_do_not_grow_with_services_and_long_answers_are_paged(monitoring, monkeypatch):
    reader = MonitoringReader(PROJECT, monitoring.target)
    end = minute(datetime.now(UTC))
    names = shorts(24)
    for name in names:
        serve(monitoring, name, [end - MINUTE, end], HEALTHY)
    serve(monitoring, "not-watched", [end], BAD)
    monitoring.calls.clear()
    revisions = reader.platform_minutes([(LOCATION, n) for n in names], start=end - 2 * MINUTE, end=end)
    assert monitoring.calls["ListTimeSeries"] == 4
    assert set(revisions) == {(LOCATION, n) for n in names}
    assert all(len(revisions[(LOCATION, n)][f"{n}-00002"]) == 2 for n in names)

    monkeypatch.setattr(monitoring_standin, "PAGE_SIZE", 10)  # 48 series per metric: 5 pages each
    monitoring.calls.clear()
    assert (
        reader.platform_minutes([(LOCATION, n) for n in names], start=end - 2 * MINUTE, end=end) == revisions
    )
    assert monitoring.calls["ListTimeSeries"] == 4 * 5  # each metric: 48 series, 5 pages
    # Beyond MAX_ONE_OF names the project's revisions are read and the unwatched dropped.
    monkeypatch.setattr("shared.clients.monitoring.MAX_ONE_OF", 5)
    assert (
        reader.platform_minutes([(LOCATION, n) for n in names], start=end - 2 * MINUTE, end=end) == revisions
    )


def test_minutes_travel_as_json_unchanged(monitoring):
    reader = MonitoringReader(PROJECT, monitoring.target)
    end = minute(datetime.now(UTC))
    serve(monitoring, "svc-00", [end - timedelta(minutes=m) for m in range(5)], SLOW)
    revisions = reader.platform_minutes([(LOCATION, "svc-00")], start=end - 5 * MINUTE, end=end)
    carried = json.loads(json.dumps(revisions_json(revisions[(LOCATION, "svc-00")])))
    assert revisions_from_json(carried) == revisions[(LOCATION, "svc-00")]


# -- the same decisions for one rollout as for many -------------------------------------------


def decisions(store, short: str) -> list[tuple]:
    from shared.clients.store import rollout_id

    entries = store.history(rollout_id(service(short), f"{short}-00002"))
    return [
        (entry["kind"], str(entry.get("message", "")).replace(short, "SVC"), entry.get("to_percent"))
        for entry in entries
    ]


def run_scenario(clients, function_env, cloudrun, monitoring, names: list[str]) -> dict[str, list[tuple]]:
    """Registered at t; healthy through the 60-minute soak (GO → 10 %); then three bad minutes
    (error_rate tripped → rollback requested). Every service serves the same traffic."""
    from shared.handlers.checkpoint import run_checkpoints

    settings = settings_for(function_env, names)
    for name in names:
        deploy(cloudrun, name)
    # A rollout's step starts at the wall-clock time it is registered (whatever the checkpoint's
    # clock says): keep all registrations inside one wall-clock minute, so every step window
    # starts at the same minute and the decisions' texts (request counts) can be compared.
    if datetime.now(UTC).second >= 45:
        time.sleep(61 - datetime.now(UTC).second)
    t = soon()
    run_checkpoints(now=t, settings=settings, policy=POLICY, clients=clients)
    healthy = [
        t + timedelta(minutes=m) for m in range(1, 62) if t + timedelta(minutes=m) <= t + 61 * MINUTE - LAG
    ]
    for name in names:
        serve(monitoring, name, healthy, HEALTHY)
    for at in (t + 59 * MINUTE, t + 61 * MINUTE):
        run_checkpoints(now=at, settings=settings, policy=POLICY, clients=clients)
    for n in range(3):
        at = t + timedelta(minutes=62 + n)
        for name in names:
            serve(monitoring, name, [at - LAG], BAD)
        run_checkpoints(now=at, settings=settings, policy=POLICY, clients=clients)
    return {name: decisions(clients.store, name) for name in names}


def test_many_rollouts_get_the_decisions_one_rollout_gets(
    clients, function_env, cloudrun, monitoring, emulators
):
    alone = run_scenario(clients, function_env, cloudrun, monitoring, ["svc-00"])["svc-00"]
    kinds = [kind for kind, _message, _to in alone]
    assert "step" in kinds and "rollback_requested" in kinds, alone
    emulators.reset_firestore()
    cloudrun.reset()
    monitoring.reset()
    together = run_scenario(clients, function_env, cloudrun, monitoring, shorts(6))
    assert all(history == alone for history in together.values()), together


# -- the dispatcher and its workers -----------------------------------------------------------


def pubsub_event(body: object, message_id: str = "m-1") -> dict:
    data = base64.b64encode(json.dumps(body).encode()).decode()
    return {"message": {"data": data, "messageId": message_id, "publishTime": "2026-12-04T12:00:00Z"}}


def test_the_dispatcher_sends_one_message_per_service_and_workers_judge_each(
    function_env, firestore_clean, cloudrun, monitoring, log_dir
):
    """checkpoint (CHECKPOINT_TOPIC) → Pub/Sub emulator push → checkpoint_worker, as
    terraform/delivery.tf wires it: every rollout judged and recorded, Monitoring read once."""
    from shared.clients.store import RolloutStore, rollout_id

    names = shorts(5)
    env = function_env | {
        "CANARY_SERVICES": ",".join(service(n) for n in names),
        "CHECKPOINT_TOPIC": CHECKPOINT_TOPIC,
    }
    ensure_topic(PROJECT, CHECKPOINT_TOPIC)
    worker_port, checkpoint_port = free_port(), free_port()
    worker = serve_function("checkpoint_worker", worker_port, env, log_dir)
    checkpoint = serve_function("checkpoint", checkpoint_port, env, log_dir)
    try:
        wire_push(PROJECT, CHECKPOINT_TOPIC, "test-checkpoint-worker", push_endpoint(worker_port))
        end = minute(datetime.now(UTC))
        for name in names:
            deploy(cloudrun, name)
            serve(monitoring, name, [end - timedelta(minutes=m) for m in range(10)], HEALTHY)
        monitoring.calls.clear()
        answer = requests.post(f"http://127.0.0.1:{checkpoint_port}/", timeout=60)
        assert answer.status_code == 200, answer.text
        assert [r["action"] for r in answer.json()["rollouts"]] == ["dispatched"] * 5
        store = RolloutStore(PROJECT)
        ids = [rollout_id(service(n), f"{n}-00002") for n in names]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all((r := store.get(i)) and r.last_verdict for i in ids):
            time.sleep(0.2)
        assert all(store.get(i).last_verdict for i in ids)
        assert monitoring.calls["ListTimeSeries"] == 4  # the dispatcher's read; no worker read again
    finally:
        worker.stop()
        checkpoint.stop()


def test_a_rollout_judged_by_a_run_still_in_flight_is_not_judged_twice(
    clients, function_env, cloudrun, monitoring
):
    from shared.clients.store import rollout_id
    from shared.handlers.checkpoint import run_checkpoints

    settings = settings_for(function_env, ["svc-00"])
    deploy(cloudrun, "svc-00")
    t = soon()
    run_checkpoints(now=t, settings=settings, policy=POLICY, clients=clients)
    rid = rollout_id(service("svc-00"), "svc-00-00002")
    token = clients.store.claim_checkpoint(rid, t, lease=timedelta(minutes=5))  # a slow run of t
    assert token is not None
    [report] = run_checkpoints(now=t + MINUTE, settings=settings, policy=POLICY, clients=clients)
    assert report.fields["action"] == "in_flight" and "still running" in report.message
    clients.store.release_checkpoint(rid, token)
    [report] = run_checkpoints(now=t + MINUTE, settings=settings, policy=POLICY, clients=clients)
    assert report.fields["action"] == "hold"
    # A lease left by a crashed run expires and is taken over.
    assert clients.store.claim_checkpoint(rid, t, lease=timedelta(seconds=-1)) is not None
    [report] = run_checkpoints(now=t + 2 * MINUTE, settings=settings, policy=POLICY, clients=clients)
    assert report.fields["action"] == "hold"


def test_a_worker_judges_its_message_and_skips_a_minute_already_superseded(
    clients, function_env, cloudrun, monitoring, rollback_requests
):
    from shared.clients.store import rollout_id
    from shared.handlers.checkpoint import read_minutes

    settings = settings_for(function_env, ["svc-00"])
    deploy(cloudrun, "svc-00")
    t = soon()
    serve(monitoring, "svc-00", [t - LAG - timedelta(minutes=m) for m in range(5)], BAD)
    source = read_minutes(settings.services, {}, now=t, policy=POLICY, reader=clients.reader)
    message = checkpoint_message(settings.services[0], t, source)
    worker_clients = replace(clients, reader=MonitoringReader(PROJECT, "127.0.0.1:1"))  # unreachable
    report = handle_checkpoint_message(
        pubsub_event(message), event_id="e-1", settings=settings, policy=POLICY, clients=worker_clients
    )
    assert report.fields["evidence"] == "tripped", report.as_dict()  # judged on the carried minutes
    rollout = clients.store.get(rollout_id(service("svc-00"), "svc-00-00002"))
    assert rollout.rollback_requested
    assert [r["canary_revision"] for r in rollback_requests(1)] == ["svc-00-00002"]
    older = checkpoint_message(settings.services[0], t - 2 * MINUTE, source)
    report = handle_checkpoint_message(
        pubsub_event(older), event_id="e-0", settings=settings, policy=POLICY, clients=worker_clients
    )
    assert report.fields["action"] == "superseded"


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ({"service": "svc-00", "now": "2026-12-04T12:00:00Z"}, None),  # no minutes: reads its own
        ({"service": "elsewhere", "now": "2026-12-04T12:00:00Z"}, "not_watched"),
        ({"service": "svc-00"}, "malformed"),
        ({"service": "svc-00", "now": "yesterday"}, "malformed"),
        ([1, 2], "malformed"),
        ({"service": "svc-00", "now": "2026-12-04T12:00:00Z", "minutes": {}}, "malformed"),
        (
            {
                "service": "svc-00",
                "now": "2026-12-04T12:00:00Z",
                "read": {"start": "2026-12-04T11:00:00Z", "end": "2026-12-04T12:00:00Z"},
                "minutes": {"layouts": [], "revisions": {"r": [1, "x"]}},
            },
            "malformed",
        ),
        (
            {
                "service": "svc-00",
                "now": "2026-12-04T12:00:00Z",
                "read": {"start": "2026-12-04T11:00:00Z", "end": "2026-12-04T12:00:00Z"},
                "minutes": {
                    "layouts": [],
                    "revisions": {"r": [{"minute": "2026-12-04T11:00Z", "latency": [1]}]},
                },
            },
            "malformed",
        ),
        (
            {
                "service": "svc-00",
                "now": "2026-12-04T12:00:00Z",
                "read": {"start": "2026-12-04T11:00:00Z", "end": "2026-12-04T12:00:00Z"},
                "minutes": {
                    "layouts": [],
                    "revisions": {"r": [{"minute": "2026-12-04T11:00Z", "errors": 5}]},
                },
            },
            "malformed",
        ),
        (
            {
                "service": "svc-00",
                "now": "2026-12-04T12:00:00Z",
                "read": {"start": "2026-12-04T11:00:00Z", "end": "2026-12-04T12:00:00Z"},
                "minutes": {
                    "layouts": [],
                    "revisions": {
                        "r": [
                            {
                                "minute": "2026-12-04T11:00Z",
                                "latency": {
                                    "count": 1,
                                    "mean": 1,
                                    "ssd": 0,
                                    "layout": 3,
                                    "first": 0,
                                    "counts": [1],
                                    "size": 9,
                                },
                            }
                        ]
                    },
                },
            },
            "malformed",
        ),
    ],
)
def test_hostile_worker_messages_are_acknowledged_with_a_reason(
    clients, function_env, cloudrun, body, outcome
):
    settings = settings_for(function_env, ["svc-00"])
    revisions = ("svc-00-00001", "svc-00-00002")
    deploy_canary(cloudrun, service("svc-00"), stable=revisions[0], percent=0, revisions=revisions)
    report = handle_checkpoint_message(
        pubsub_event(body), event_id="e-h", settings=settings, policy=POLICY, clients=clients
    )
    if outcome is None:
        assert report.fields["action"] == "none"  # no canary deployed: nothing to judge
    else:
        assert report.fields["outcome"] == outcome and report.severity == "WARNING", report.as_dict()


def test_the_latency_proxy_delays_each_call_and_counts_it(monitoring):
    """What bench/bench_checkpoint_scale.py puts in front of every Google API."""
    from infra.latency_proxy import LatencyProxy

    proxy = LatencyProxy(monitoring.target, delay_s=0.2)
    try:
        reader = MonitoringReader(PROJECT, proxy.host)
        end = minute(datetime.now(UTC))
        started = time.monotonic()
        reader.platform_minutes([(LOCATION, "svc-00")], start=end - 2 * MINUTE, end=end)
        took = time.monotonic() - started
        assert proxy.reset_count() == 4 == monitoring.calls["ListTimeSeries"]
        assert took >= 4 * 0.2  # four calls one after another, each delayed once
    finally:
        proxy.stop()


def test_a_long_step_window_travels_for_the_canary_and_fits_a_message(monitoring):
    """A canary 80 minutes into its step, three revisions with widely spread latencies: the
    message carries the canary's whole window and the others' recent minutes, under the limit,
    and the worker judges both windows from it without reading Monitoring."""
    import random

    from infra.metrics_feed import LATENCY_BUCKETS
    from infra.monitoring_standin import distribution
    from shared.clients.store import Rollout
    from shared.config import ServiceRef
    from shared.events import MAX_PAYLOAD_BYTES
    from shared.handlers.fanout import _message_minutes

    reader = MonitoringReader(PROJECT, monitoring.target)
    end = minute(datetime.now(UTC))
    stamps = [end - timedelta(minutes=m) for m in range(88)]
    spread = random.Random(7)
    labels = {"project_id": PROJECT, "location": LOCATION, "service_name": "svc-00"}
    for revision in ("svc-00-00001", "svc-00-00002", "svc-00-00003"):
        resource = labels | {"revision_name": revision}
        latencies = distribution([spread.lognormvariate(4.4, 0.6) for _ in range(500)], LATENCY_BUCKETS)
        for metric, value, metric_labels in (
            ("run.googleapis.com/request_latencies", latencies, {}),
            ("run.googleapis.com/request_count", 500, {"response_code_class": "2xx"}),
        ):
            monitoring.add_points(
                PROJECT,
                metric,
                [(stamp, value) for stamp in sorted(stamps)],
                resource_type="cloud_run_revision",
                resource_labels=resource,
                metric_labels=metric_labels,
            )
    service_ref = ServiceRef.parse(service("svc-00"))
    start = end - timedelta(minutes=90)
    revisions = reader.platform_minutes([(LOCATION, "svc-00")], start=start, end=end)
    source = RecordedMinutes(revisions, start=start, end=end)
    rollout = Rollout.from_doc(
        "r",
        {
            "service": service("svc-00"),
            "canary_revision": "svc-00-00002",
            "stable_revision": "svc-00-00001",
            "phase": "RUNNING",
            "canary_percent": 5,
            "step_started_at": end - timedelta(minutes=80),
        },
    )
    message = checkpoint_message(service_ref, end, source, rollout=rollout, policy=POLICY)
    assert "minutes" in message and len(json.dumps(message, separators=(",", ":"))) <= MAX_PAYLOAD_BYTES
    carried = _message_minutes(json.loads(json.dumps(message)), service_ref, reader=None)
    query = {"location": LOCATION, "service": "svc-00"}
    window = {"start": end - timedelta(minutes=79), "end": end}
    assert carried.canary_metrics(revision="svc-00-00002", **query, **window) == source.canary_metrics(
        revision="svc-00-00002", **query, **window
    )
    recent = {"start": end - timedelta(minutes=POLICY.evidence.lookback_minutes), "end": end}
    assert carried.minute_metrics(**query, **recent) == source.minute_metrics(**query, **recent)
    # The stable revision's old minutes did not travel: asking for them goes to the reader.
    with pytest.raises(LookupError):
        carried.canary_metrics(revision="svc-00-00001", **query, **window)


# -- long step windows (a day's soak at 10-50 %): hour blocks, still one read for all --------


def test_a_long_step_window_is_judged_from_hour_blocks_read_once_for_all(
    clients, function_env, cloudrun, monitoring
):
    """Five canaries ten hours into their step: the minute reads Monitoring 8 times in all
    (minutes and hour blocks), judges every step window from the blocks, and each window's
    whole hours give what a read of those hours gives."""
    from infra.metrics_feed import rewind_step
    from shared.clients.store import rollout_id
    from shared.core.judge import step_window
    from shared.handlers.checkpoint import read_minutes, run_checkpoints

    names = shorts(5)
    settings = settings_for(function_env, names)
    for name in names:
        deploy(cloudrun, name)
    t = minute(datetime.now(UTC))
    run_checkpoints(now=t, settings=settings, policy=POLICY, clients=clients)
    stamps = [t - timedelta(minutes=m) for m in range(11 * 60)]
    for name in names:
        serve(monitoring, name, stamps, HEALTHY if name != "svc-03" else SLOW)
        rewind_step(PROJECT, rollout_id(service(name), f"{name}-00002"), timedelta(hours=10))
    rollouts = clients.store.active_many([s.name for s in settings.services])

    monitoring.calls.clear()
    source = read_minutes(settings.services, rollouts, now=t, policy=POLICY, reader=clients.reader)
    assert monitoring.calls["ListTimeSeries"] == 8 and source.hours is not None
    for name in names:
        start, end = step_window(rollouts[service(name)].step_started_at, t, POLICY)
        whole_hours = end - (end - start) // timedelta(hours=1) * timedelta(hours=1)
        query = {"location": LOCATION, "service": name, "revision": f"{name}-00002"}
        assert source.canary_metrics(start=start, end=end, **query) == replace(
            clients.reader.canary_metrics(start=whole_hours, end=end, **query), window_start=start
        )
    assert source.fallback_reads == 0

    monitoring.calls.clear()
    reports = run_checkpoints(now=t, settings=settings, policy=POLICY, clients=clients)
    assert monitoring.calls["ListTimeSeries"] == 8  # not 4 more per rollout
    verdicts = {r.fields["service"]: r.fields["verdict"] for r in reports}
    assert verdicts[service("svc-03")] != "GO" and verdicts[service("svc-00")] == "GO", verdicts

    # A worker judges the same from its message alone (its reader is unreachable).
    message = checkpoint_message(
        settings.services[3], t, source, rollout=rollouts[service("svc-03")], policy=POLICY
    )
    carried = handle_checkpoint_message(
        pubsub_event(json.loads(json.dumps(message))),
        event_id="e-long",
        settings=settings,
        policy=POLICY,
        clients=replace(clients, reader=MonitoringReader(PROJECT, "127.0.0.1:1")),
    )
    assert carried.fields["verdict"] == verdicts[service("svc-03")], carried.as_dict()
