"""Alert → judged minutes → rollback through the real path: CloudEvents posted to the functions
served by functions-framework, real Pub/Sub and Firestore emulators, the Cloud Run and Cloud
Monitoring stand-ins. An alert is a trigger: breach_counter judges the minutes that opened the
incident from Cloud Monitoring, with the checkpoint's rules, into the rollout's ledger."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from infra.localstack import ALERTS_TOPIC, PROJECT, ROLLBACK_TOPIC, push_endpoint, wire_push
from infra.metrics_feed import HEALTHY, Minute, feed
from shared.clients.store import (
    APPLIED,
    DECISIONS,
    EXPIRES_AT,
    MARKER_TTL,
    ROLLOUTS,
    RolloutStore,
    rollout_id,
)
from shared.core.ledger import Phase
from tests.conftest import DECISION_RETENTION_DAYS, FOREIGN, LOCATION, SHOP, deploy_canary
from tests.payloads import DROP, cloudevent_data, cloudevent_headers, incident_message
from tests.test_events import CATALOGUE

pytestmark = pytest.mark.emulators

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
ERRORS = Minute(requests=200, errors=10)  # 5 % 5xx
SLOW = Minute(requests=200, latency_ms=900)
LEAKING = Minute(requests=200, memory=0.93)
CRASHED = Minute(requests=40, errors=40)


def serve(monitoring, traffic: Minute, *ends: datetime, revision: str = "shop-00002") -> None:
    """The canary's traffic in the minutes whose Monitoring points end at `ends` (oldest first)."""
    feed(
        monitoring,
        project=PROJECT,
        location=LOCATION,
        service="shop",
        revision=revision,
        minutes=list(ends),
        traffic=traffic,
    )


def minutes_before(end: datetime, n: int) -> list[datetime]:
    """The `n` point times up to `end`: the minutes an incident opened at `end` is about."""
    return [end - m * MINUTE for m in reversed(range(n))]


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def post_event(fn, data: dict, *, event_id: str, topic: str = ALERTS_TOPIC) -> requests.Response:
    """A binary-mode CloudEvent, as Eventarc delivers a Pub/Sub message."""
    headers = cloudevent_headers(message_id=event_id, publish_time=at(0), topic=topic, project=PROJECT)
    return requests.post(fn.url + "/", data=json.dumps(data), headers=headers, timeout=30)


def alert(
    fn,
    *,
    rule: str = "error_rate",
    state: str = "open",
    revision: str = "shop-00002",
    seconds: float = 0,
    message_id: str | None = None,
    service: str = "shop",
    opened: datetime = T0,
    incident_id: str | None = None,
) -> tuple[str, requests.Response]:
    message_id = message_id or uuid.uuid4().hex
    payload = incident_message(
        rule=rule,
        state=state,
        revision=revision,
        service=service,
        project=PROJECT,
        scoping_project=PROJECT,
        location=LOCATION,
        started_at=int(opened.timestamp()),
        incident_id=incident_id,
    )
    data = cloudevent_data(payload, message_id=message_id, publish_time=at(seconds))
    return message_id, post_event(fn, data, event_id=message_id)


@pytest.fixture
def store(firestore_clean) -> RolloutStore:
    return RolloutStore(PROJECT)


@pytest.fixture
def canary(cloudrun) -> str:
    """shop: stable shop-00001 at 95 %, canary shop-00002 at 5 % tagged `canary`."""
    deploy_canary(cloudrun)
    return rollout_id(SHOP, "shop-00002")


def outcome(fn, message_id: str) -> str:
    return fn.logs_for(event_id=message_id)[-1]["outcome"]


def test_an_incident_on_three_bad_minutes_requests_one_rollback(
    functions, store, canary, monitoring, rollback_requests
):
    fn = functions["breach_counter"]
    serve(monitoring, ERRORS, *minutes_before(T0, 3))
    trip_id, response = alert(fn, opened=T0 + timedelta(seconds=20))
    assert response.status_code == 200
    rollout = store.get(canary)
    assert rollout.streaks["error_rate"].count == 3
    assert rollout.rollback_requested and rollout.rollback_published
    [request] = rollback_requests(expect_at_least=1)
    assert request["service"] == SHOP and request["canary_revision"] == "shop-00002"
    assert request["rule"] == "error_rate" and request["requested_by"] == "canary-guard/breach_counter"
    assert [o["minute"] for o in request["observations"]] == [
        "2026-11-26T11:57Z",
        "2026-11-26T11:58Z",
        "2026-11-26T11:59Z",
    ]
    assert "error_rate 5.00 % > 1.00 %" in request["reason"]
    # Its renotification re-judges the same minutes (a reminder, not new evidence); a fourth bad
    # minute counts but never requests a second rollback.
    again_id, _ = alert(fn, opened=T0 + timedelta(seconds=20))
    assert outcome(fn, again_id) == "unchanged"
    serve(monitoring, ERRORS, T0 + MINUTE)
    later_id, _ = alert(fn, opened=T0 + MINUTE + timedelta(seconds=20))
    assert outcome(fn, later_id) == "counted" and store.get(canary).streaks["error_rate"].count == 4
    assert rollback_requests() == []
    log = fn.logs_for(event_id=trip_id)
    assert log and log[-1]["severity"] == "NOTICE" and log[-1]["outcome"] == "tripped"
    assert log[-1]["rollout"] == canary and log[-1]["rule"] == "error_rate" and log[-1]["minutes_judged"] == 3


def test_dedupe_markers_and_decisions_carry_their_expiry(functions, store, canary, monitoring):
    """Firestore's TTL policies (terraform/firestore.tf) delete on expires_at: every applied-event
    marker expires MARKER_TTL after it is written, and a decision after DECISION_RETENTION_DAYS."""
    from google.cloud import firestore

    serve(monitoring, ERRORS, *minutes_before(T0, 3))
    alert(functions["breach_counter"], opened=T0 + timedelta(seconds=20))
    rollout_ref = firestore.Client(project=PROJECT).collection(ROLLOUTS).document(canary)
    markers = [snap.to_dict() for snap in rollout_ref.collection(APPLIED).stream()]
    assert markers
    for marker in markers:
        assert marker[EXPIRES_AT] - marker["applied_at"] == MARKER_TTL
    decisions = [snap.to_dict() for snap in rollout_ref.collection(DECISIONS).stream()]
    assert decisions
    for decision in decisions:
        assert decision[EXPIRES_AT] - decision["at"] == timedelta(days=DECISION_RETENTION_DAYS)
    assert all(EXPIRES_AT not in entry for entry in store.history(canary))  # not part of the record


def test_an_incident_whose_minutes_are_healthy_counts_no_breach(functions, store, canary, monitoring):
    """The alert's evidence is what Cloud Monitoring holds, judged by the checkpoint's rules: an
    incident raised on minutes that are not over the bar (or too thin) requests nothing."""
    fn = functions["breach_counter"]
    serve(monitoring, HEALTHY, *minutes_before(T0, 3))
    serve(monitoring, Minute(requests=3, errors=1), *minutes_before(T0 + 3 * MINUTE, 3))
    for opened in (T0, T0 + 3 * MINUTE):
        message_id, _ = alert(fn, opened=opened)
        assert outcome(fn, message_id) == "counted"
    rollout = store.get(canary)
    assert not rollout.rollback_requested and rollout.streaks["error_rate"].count == 0
    kinds = [rollout.ledger["error_rate"][m].kind.value for m in sorted(rollout.ledger["error_rate"])]
    assert kinds == ["ok", "ok", "ok", "thin", "thin", "thin"]


def test_memory_trips_on_two_minutes_and_a_crash_on_one(functions, store, canary, cloudrun, monitoring):
    fn = functions["breach_counter"]
    serve(monitoring, LEAKING, T0 - MINUTE)
    first, _ = alert(fn, rule="memory", opened=T0 - MINUTE)
    assert outcome(fn, first) == "counted" and not store.get(canary).rollback_requested
    serve(monitoring, LEAKING, T0)
    second, _ = alert(fn, rule="memory", opened=T0)
    assert outcome(fn, second) == "tripped" and store.get(canary).rollback_requested
    # Next canary: failing every request is "down", rolled back on its first minute.
    deploy_canary(cloudrun, canary="shop-00003", percent=10)
    serve(monitoring, CRASHED, T0 + MINUTE, revision="shop-00003")
    crash, _ = alert(fn, revision="shop-00003", opened=T0 + MINUTE)
    assert outcome(fn, crash) == "tripped"
    fresh = store.get(rollout_id(SHOP, "shop-00003"))
    assert fresh.rollback_requested and fresh.streaks["canary_down"].count == 1
    assert fresh.rollback_request["rule"] == "canary_down" and fresh.canary_percent == 10


def test_a_closed_incident_is_acknowledged_without_judging(functions, store, canary, monitoring):
    serve(monitoring, ERRORS, *minutes_before(T0, 3))
    message_id, response = alert(functions["breach_counter"], state="closed", opened=T0)
    assert response.status_code == 200
    assert outcome(functions["breach_counter"], message_id) == "closed"
    assert not store.get(canary).rollback_requested


def test_redelivery_is_a_duplicate(functions, store, canary, monitoring):
    fn = functions["breach_counter"]
    serve(monitoring, ERRORS, T0)
    message_id, _ = alert(fn)
    for _ in range(3):
        _, response = alert(fn, message_id=message_id)
        assert response.status_code == 200
    assert store.get(canary).streaks["error_rate"].count == 1
    assert outcome(fn, message_id) == "duplicate"
    assert len([h for h in store.history(canary) if h["kind"] == "evidence"]) == 1


@pytest.mark.parametrize("old_phase", [Phase.RUNNING, Phase.FROZEN])
def test_new_canary_starts_fresh_and_old_one_is_superseded(
    functions, store, canary, cloudrun, monitoring, old_phase
):
    fn = functions["breach_counter"]
    serve(monitoring, ERRORS, T0 - MINUTE, T0)
    alert(fn)
    assert store.get(canary).streaks["error_rate"].count == 2
    if old_phase is Phase.FROZEN:
        assert store.set_phase(canary, Phase.FROZEN, "frozen", {"message": "-"}, only_from={Phase.RUNNING})
    deploy_canary(cloudrun, canary="shop-00003")
    serve(monitoring, ERRORS, T0, revision="shop-00003")
    alert(fn, revision="shop-00003")
    new = store.get(rollout_id(SHOP, "shop-00003"))
    assert new.streaks["error_rate"].count == 1
    assert store.get(canary).phase is Phase.SUPERSEDED
    serve(monitoring, ERRORS, T0 + MINUTE)
    old_id, _ = alert(fn, revision="shop-00002", opened=T0 + MINUTE)
    assert store.get(canary).streaks["error_rate"].count == 2
    assert outcome(fn, old_id) == "not_running"


def live(cloudrun) -> dict[str, int]:
    return {t["revision"]: t.get("percent", 0) for t in cloudrun.service(SHOP)["traffic"]}


def test_a_frozen_rollout_still_trips_and_is_rolled_back(
    functions, store, canary, cloudrun, monitoring, rollback_requests
):
    """FROZEN only stops the ramp: the canary keeps its 5 %, so its breaches still count and the
    rollback they request moves that 5 % to stable."""
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    assert store.set_phase(canary, Phase.FROZEN, "frozen", {"message": "test"}, only_from={Phase.RUNNING})
    fn = functions["breach_counter"]
    for n in (1, 2):
        serve(monitoring, ERRORS, T0 + n * MINUTE)
        message_id, _ = alert(fn, opened=T0 + n * MINUTE)
        assert outcome(fn, message_id) == "counted"
    serve(monitoring, ERRORS, T0 + 3 * MINUTE)
    trip_id, _ = alert(fn, opened=T0 + 3 * MINUTE)
    assert outcome(fn, trip_id) == "tripped"
    rollout = store.get(canary)
    assert rollout.streaks["error_rate"].count == 3 and rollout.rollback_published
    [request] = rollback_requests(expect_at_least=1)
    assert request["canary_revision"] == "shop-00002" and request["rule"] == "error_rate"
    message_id = uuid.uuid4().hex
    data = cloudevent_data(request, message_id=message_id, publish_time=at(4), topic=ROLLBACK_TOPIC)
    response = post_event(functions["rollback"], data, event_id=message_id, topic=ROLLBACK_TOPIC)
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "rolled_back"
    assert live(cloudrun) == {"shop-00001": 100, "shop-00002": 0}
    assert store.get(canary).phase is Phase.ROLLED_BACK


def test_alerts_for_the_stable_revision_are_ignored(functions, store, canary):
    message_id, response = alert(functions["breach_counter"], revision="shop-00001")
    assert response.status_code == 200
    assert store.get(rollout_id(SHOP, "shop-00001")) is None
    assert functions["breach_counter"].logs_for(event_id=message_id)[-1]["outcome"] == "not_canary"


def test_cloud_run_fault_during_discovery_raises_for_redelivery(
    functions, store, canary, cloudrun, monitoring
):
    serve(monitoring, ERRORS, T0)
    cloudrun.inject_fault(500, count=50, methods=["GET"])
    message_id, response = alert(functions["breach_counter"])
    assert response.status_code == 500  # Pub/Sub will redeliver
    assert store.get(canary) is None
    cloudrun.reset()
    deploy_canary(cloudrun)
    _, response = alert(functions["breach_counter"], message_id=message_id)
    assert response.status_code == 200
    assert store.get(canary).streaks["error_rate"].count == 1


def test_a_reordered_duplicated_alert_storm_decides_as_in_time_order(
    functions, store, canary, monitoring, rollback_requests
):
    """30 minutes of canary data with bad spells, 60 incidents opened along it (each judging the
    minutes before it), delivered 160 times: 30 % twice or three times, in a scrambled order, 8 at
    a time. The ledger and the rollback are what judging every minute in order gives."""
    from shared.core.evidence import MinuteMetrics, judge_minute
    from shared.core.ledger import apply_evidence
    from shared.policy import load_policy

    policy = load_policy()
    start = T0 - 30 * MINUTE
    pattern = {7: ERRORS, 8: ERRORS, 12: SLOW, 13: SLOW, 19: ERRORS, 20: ERRORS, 21: ERRORS, 25: LEAKING}
    traffic = {start + n * MINUTE: pattern.get(n, HEALTHY) for n in range(1, 31)}
    for end, minute in traffic.items():
        serve(monitoring, minute, end)
    fn = functions["breach_counter"]
    incidents = [
        (uuid.uuid4().hex, start + (n // 2 + 1) * MINUTE + timedelta(seconds=n % 2 * 7)) for n in range(60)
    ]
    deliveries = incidents + [incidents[(i * 7) % 60] for i in range(100)]
    order = sorted(range(len(deliveries)), key=lambda i: (i * 37) % len(deliveries))

    def deliver(index: int) -> int:
        message_id, opened = deliveries[index]
        for _ in range(5):  # what Pub/Sub would do on a 5xx
            _, response = alert(fn, opened=opened, message_id=message_id, incident_id=f"0.{message_id[:8]}")
            if response.status_code == 200:
                return 200
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(deliver, order))
    assert statuses == [200] * len(deliveries)

    # The same minutes judged one by one, in time order, by the pure core.
    expected: dict = {}
    trip = None
    for end, minute in traffic.items():
        metrics = MinuteMetrics(end - MINUTE, minute.requests, minute.errors, None, minute.memory, minute.cpu)
        entries = [e for e in judge_minute(metrics, None, policy) if e.rule != "latency_p95"]
        decision = apply_evidence(
            Phase.RUNNING,
            expected,
            trip is not None,
            entries,
            policy.consecutive_limits,
            keep=2 * 60 * MINUTE,
        )
        expected = decision.ledger
        trip = trip or decision.trip
    rollout = store.get(canary)
    for rule in ("error_rate", "memory", "canary_down"):
        got = {m: e.kind for m, e in rollout.ledger[rule].items()}
        assert got == {m: e.kind for m, e in expected[rule].items()}, rule
    assert [h["kind"] for h in store.history(canary, limit=1000)].count("rollback_requested") == 1
    assert rollout.rollback_request["rule"] == trip.rule == "error_rate"
    assert [o["minute"] for o in rollout.rollback_request["observations"]] == [
        f"{e.minute:%Y-%m-%dT%H:%MZ}" for e in trip.tripped
    ]
    assert {p["canary_revision"] for p in rollback_requests(expect_at_least=1)} == {"shop-00002"}


def test_foreign_service_is_acknowledged_with_reason(functions, store, canary):
    message_id, response = alert(functions["breach_counter"], service="not-watched")
    assert response.status_code == 200
    line = functions["breach_counter"].logs_for(event_id=message_id)[-1]
    assert line["severity"] == "WARNING" and line["outcome"] == "malformed"
    assert FOREIGN.rsplit("/", 1)[1] in line["message"] and "not in CANARY_SERVICES" in line["message"]
    assert store.get(rollout_id(FOREIGN, "shop-00002")) is None and store.get(canary) is None


def test_push_subscription_delivers_to_breach_counter(functions, store, canary, emulators, monitoring):
    """The Pub/Sub emulator pushes to the function's URL, as terraform/delivery.tf's subscription does."""
    port = int(functions["breach_counter"].url.rsplit(":", 1)[1])
    wire_push(PROJECT, ALERTS_TOPIC, "test-breach-push", push_endpoint(port))
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, ALERTS_TOPIC)
    serve(monitoring, SLOW, T0 - MINUTE, T0)
    try:
        for n in range(2):
            publisher.publish(
                topic,
                json.dumps(
                    incident_message(
                        rule="latency_p95",
                        project=PROJECT,
                        location=LOCATION,
                        revision="shop-00002",
                        started_at=int((T0 - (1 - n) * MINUTE).timestamp()),
                    )
                ).encode(),
            ).result(timeout=10)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rollout = store.get(canary)
                if (
                    rollout
                    and rollout.streaks.get("latency_p95")
                    and rollout.streaks["latency_p95"].count == n + 1
                ):
                    break
                time.sleep(0.1)
            assert store.get(canary).streaks["latency_p95"].count == n + 1
    finally:
        pubsub_v1.SubscriberClient().delete_subscription(
            subscription=f"projects/{PROJECT}/subscriptions/test-breach-push"
        )


def uptime_alert(
    fn,
    *,
    sent: datetime,
    incident_id: str = "0.uptime",
    message_id: str | None = None,
    state: str = "open",
    opened: datetime | None = None,
) -> tuple[str, requests.Response]:
    """A canary_down incident from the uptime check on the canary tag URL: its resource is the
    URL, so it names no revision; the policy's `canary_service` label names the service."""
    message_id = message_id or uuid.uuid4().hex
    payload = incident_message(
        rule="canary_down",
        state=state,
        incident_id=incident_id,
        project=PROJECT,
        scoping_project=PROJECT,
        resource_labels={
            "service_name": DROP,
            "revision_name": DROP,
            "location": DROP,
            "host": "canary---shop.run.app",
        },
        user_labels={"canary_service": "shop"},
        **({"started_at": int(opened.timestamp())} if opened else {}),
    )
    data = cloudevent_data(payload, message_id=message_id, publish_time=sent)
    return message_id, post_event(fn, data, event_id=message_id)


# 2 x uptime period + alert duration + 60 s (policy.yaml), plus a second: publish times carry
# milliseconds only.
AFTER_GRACE = timedelta(seconds=241)


def test_uptime_check_incident_counts_against_the_live_canary(functions, store, canary, rollback_requests):
    rollout = store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    message_id, response = uptime_alert(functions["breach_counter"], sent=rollout.created_at + AFTER_GRACE)
    assert response.status_code == 200
    line = functions["breach_counter"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] == "tripped" and line["rollout"] == canary
    rollout = store.get(canary)
    assert rollout.streaks["canary_down"].count == 1 and rollout.rollback_requested
    assert [r["canary_revision"] for r in rollback_requests(expect_at_least=1)] == ["shop-00002"]


def test_a_canary_down_from_its_first_minute_is_rolled_back_at_its_first_alert(
    functions, store, canary, rollback_requests
):
    """Its incident opened after the rollout started, so it cannot be the previous canary's."""
    rollout = store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    opened = rollout.created_at + timedelta(seconds=2)
    message_id, response = uptime_alert(
        functions["breach_counter"], sent=opened + timedelta(seconds=1), incident_id="0.new", opened=opened
    )
    assert response.status_code == 200
    assert functions["breach_counter"].logs_for(event_id=message_id)[-1]["outcome"] == "tripped"
    assert [r["canary_revision"] for r in rollback_requests(expect_at_least=1)] == ["shop-00002"]


def test_an_old_canary_down_incident_does_not_roll_back_the_next_canary(
    functions, store, canary, cloudrun, rollback_requests
):
    """Canary B fails its uptime check and is rolled back, keeping its `canary` tag at 0 %, so
    the check keeps failing and the incident renotifies. Canary C takes the tag; a
    renotification (or a redelivery of the first message) that arrives before the check can
    have seen C is ignored. If C is really down, the renotification after the grace trips it."""
    fn = functions["breach_counter"]
    # Event times are Pub/Sub publish times compared with the rollouts' real creation times, so
    # they are set relative to those (B's first notification comes after B's grace).
    old = store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    first_id, _ = uptime_alert(fn, sent=old.created_at + AFTER_GRACE)
    assert fn.logs_for(event_id=first_id)[-1]["outcome"] == "tripped"
    [request] = rollback_requests(expect_at_least=1)
    assert request["canary_revision"] == "shop-00002"
    rollback_id = uuid.uuid4().hex
    data = cloudevent_data(
        request, message_id=rollback_id, publish_time=datetime.now(UTC), topic=ROLLBACK_TOPIC
    )
    assert (
        post_event(functions["rollback"], data, event_id=rollback_id, topic=ROLLBACK_TOPIC).status_code == 200
    )
    assert live(cloudrun) == {"shop-00001": 100, "shop-00002": 0}
    assert store.get(canary).phase is Phase.ROLLED_BACK

    deploy_canary(cloudrun, canary="shop-00003")
    fresh = rollout_id(SHOP, "shop-00003")
    renotified_id, response = uptime_alert(fn, sent=datetime.now(UTC))
    assert response.status_code == 200
    line = fn.logs_for(event_id=renotified_id)[-1]
    assert line["severity"] == "INFO" and line["outcome"] == "too_early"
    assert line["rollout"] == fresh and line["rule"] == "canary_down" and line["revision"] == "shop-00003"
    assert "names no revision" in line["message"] and "previous canary" in line["message"]
    redelivered_id, response = uptime_alert(fn, sent=old.created_at + AFTER_GRACE, message_id=first_id)
    assert response.status_code == 200
    assert fn.logs_for(event_id=redelivered_id)[-1]["outcome"] == "too_early"
    rollout = store.get(fresh)
    assert rollout.phase is Phase.RUNNING and not rollout.rollback_requested
    assert rollout.streaks.get("canary_down") is None
    assert rollback_requests() == []
    assert live(cloudrun) == {"shop-00001": 95, "shop-00003": 5}
    ignored = [h for h in store.history(fresh) if h["kind"] == "evidence_ignored"]
    assert [(h["event_id"], h["outcome"]) for h in ignored] == [
        (renotified_id, "too_early"),
        (first_id, "too_early"),
    ]

    # C really is down: the next renotification, after the grace, trips it.
    late_id, _ = uptime_alert(fn, sent=rollout.created_at + AFTER_GRACE + timedelta(minutes=26))
    assert fn.logs_for(event_id=late_id)[-1]["outcome"] == "tripped"
    assert store.get(fresh).rollback_requested
    [request] = rollback_requests(expect_at_least=1)
    assert request["canary_revision"] == "shop-00003"


@pytest.mark.parametrize(("payload", "reason"), CATALOGUE)
def test_malformed_alerts_are_acknowledged_with_their_reason(functions, store, canary, payload, reason):
    """Every entry of the decoding catalogue, delivered to the running function: acknowledged
    (200, so Pub/Sub does not retry it forever) with one WARNING line naming the reason."""
    message_id = uuid.uuid4().hex
    data = cloudevent_data(payload, message_id=message_id, publish_time=at(1))
    response = post_event(functions["breach_counter"], data, event_id=message_id)
    assert response.status_code == 200
    line = functions["breach_counter"].logs_for(event_id=message_id)[-1]
    assert line["severity"] == "WARNING" and line["outcome"] == "malformed"
    assert reason in line["message"]
    assert store.get(canary) is None  # nothing counted, nothing discovered


def test_a_failed_rollback_publish_is_retried_by_the_next_event(
    emulators, store, canary, cloudrun, monitoring, function_env
):
    """The tripping event's publish fails (topic missing); a later, different event publishes the
    stored request (outbox), so the rollback is never lost."""
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.monitoring import MonitoringReader
    from shared.clients.pubsub import Publisher
    from shared.config import load_settings
    from shared.handlers.breach import handle_alert
    from shared.policy import load_policy

    serve(monitoring, CRASHED, T0)

    topic = f"rollback-{uuid.uuid4().hex[:8]}"
    settings = load_settings(function_env | {"ROLLBACK_TOPIC": topic})
    publisher = Publisher(PROJECT)

    def deliver(seconds: float, rule: str = "error_rate"):
        payload = incident_message(
            rule=rule,
            revision="shop-00002",
            project=PROJECT,
            location=LOCATION,
            started_at=int(T0.timestamp()),
        )
        data = cloudevent_data(payload, message_id=uuid.uuid4().hex, publish_time=at(seconds))
        return handle_alert(
            data,
            event_id="",
            event_time="",
            settings=settings,
            policy=load_policy(),
            store=store,
            publisher=publisher,
            traffic_client=lambda: CloudRunTraffic(cloudrun.url),
            reader=lambda: MonitoringReader(PROJECT, monitoring.target),
        )

    with pytest.raises(gexc.NotFound):
        deliver(
            1
        )  # the crashed minute trips canary_down; Pub/Sub refuses: the function fails, Pub/Sub would retry
    rollout = store.get(canary)
    assert rollout.rollback_requested and not rollout.rollback_published
    admin = pubsub_v1.PublisherClient()
    admin.create_topic(name=admin.topic_path(PROJECT, topic))
    subscriber = pubsub_v1.SubscriberClient()
    sub = subscriber.subscription_path(PROJECT, f"{topic}-pull")
    subscriber.create_subscription(name=sub, topic=admin.topic_path(PROJECT, topic))
    report = deliver(2, rule="memory")  # a different event, not a redelivery
    assert report.fields["rollback_message_id"]
    assert store.get(canary).rollback_published
    pulled = subscriber.pull(subscription=sub, max_messages=5, timeout=10).received_messages
    assert [json.loads(m.message.data)["rule"] for m in pulled] == ["canary_down"]


def test_notifications_of_one_incident_are_one_piece_of_evidence(functions, store, canary, monitoring):
    """Distinct messages for the same open incident, and its renotification 30 min later, judge
    the same minutes: one entry per minute, never a second breach."""
    fn = functions["breach_counter"]
    serve(monitoring, ERRORS, T0)
    ids = [alert(fn, opened=T0, incident_id="0.incident-a")[0] for _ in range(3)]
    assert [outcome(fn, i) for i in ids] == ["counted", "unchanged", "unchanged"]
    assert store.get(canary).streaks["error_rate"].count == 1
    assert len(store.get(canary).ledger["error_rate"]) == 1
