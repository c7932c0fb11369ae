"""Scheduled checkpoints on the real emulators and the Cloud Run / Monitoring stand-ins: the
ramp walk, rollback by per-minute evidence alone, alerts and checkpoints in one ledger, the
end-of-soak decision, the advance/rollback race, holds, freezes, and the chat notifications."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests
import yaml
from google.cloud import pubsub_v1

from infra.localstack import PROJECT, ROLLBACK_TOPIC, free_port, push_endpoint, serve_function, wire_push
from infra.metrics_feed import HEALTHY, Minute, feed, rewind_step
from shared.clients.cloudrun import CloudRunTraffic, ControlPlaneError
from shared.clients.monitoring import MonitoringReader
from shared.clients.pubsub import Publisher
from shared.clients.store import RolloutStore, rollout_id
from shared.config import load_settings
from shared.core.judge import SyntheticTraffic, judge
from shared.core.ledger import Phase
from shared.core.notifications import Context, Notification, plain_text
from shared.events import RollbackRequest
from shared.handlers.checkpoint import Clients, change_step, run_checkpoints
from shared.handlers.rollback import execute_rollback
from shared.policy import DEFAULT_POLICY_FILE, load_policy
from tests.conftest import LOCATION, SHOP, WATCHED, deploy_canary
from tests.payloads import cloudevent_data, incident_message
from tests.test_pipeline import post_event

pytestmark = pytest.mark.emulators
CANARY = rollout_id(SHOP, "shop-00002")
POLICY = load_policy()
LAG = timedelta(minutes=POLICY.checkpoint.data_lag_minutes)


class ChatCapture:
    """The store's notification sink, in process: what the channel would read (rendered as the
    notify function renders it). The Pub/Sub → notify → webhook path is tests/test_notify.py."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def sink(self, store: RolloutStore, notes: list[Notification]) -> None:
        for note in notes:
            rollout = store.get(note.rollout)
            ctx = (
                Context(rollout.service, rollout.canary_revision, rollout.stable_revision)
                if rollout
                else Context()
            )
            self.messages.append(plain_text(note, ctx))

    def said(self, text: str) -> list[str]:
        return [m for m in self.messages if text in m]


@pytest.fixture
def chat():
    return ChatCapture()


@pytest.fixture
def settings(function_env):
    return load_settings(function_env)


@pytest.fixture
def clients(firestore_clean, cloudrun, monitoring, chat):
    monitoring.reset()
    return Clients(
        store=RolloutStore(PROJECT, notifications=chat.sink),
        traffic=CloudRunTraffic(cloudrun.url, sleep=lambda _s: None),
        reader=MonitoringReader(PROJECT, monitoring.target),
        writer=None,  # simulated clocks run days ahead; Monitoring refuses such points (checked below)
        publisher=Publisher(PROJECT),
    )


def minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def soon() -> datetime:
    """A whole-minute checkpoint time a little ahead of the wall clock (a simulated clock), well
    inside the first step's soak."""
    return minute(datetime.now(UTC)) + timedelta(minutes=10)


def half_an_hour_ago() -> datetime:
    """A whole-minute time in the past: what an alert-triggered judgement (wall clock) can see."""
    return minute(datetime.now(UTC)) - timedelta(minutes=30)


def serve_traffic(
    monitoring, now: datetime, traffic: Minute, *, minutes: int = 6, revision: str = "shop-00002"
):
    """The canary's traffic for the `minutes` minutes that the checkpoint at `now` reads."""
    end = minute(now - LAG)
    serve_minutes(monitoring, [end - timedelta(minutes=m) for m in range(minutes)], traffic, revision)


def serve_minutes(monitoring, stamps: list[datetime], traffic: Minute, revision: str = "shop-00002") -> None:
    """The canary's traffic in the minutes ending at `stamps` (Monitoring's point times)."""
    feed(
        monitoring,
        project=PROJECT,
        location=LOCATION,
        service="shop",
        revision=revision,
        minutes=stamps,
        traffic=traffic,
    )


def live(cloudrun) -> dict[str, int]:
    return {t["revision"]: t.get("percent", 0) for t in cloudrun.service(SHOP)["traffic"] if t.get("percent")}


def step_to(clients, rollout, percent: int, *, by: str, **options):
    """change_step with the test's clients."""
    return change_step(
        rollout,
        percent,
        by=by,
        reason=f"{by} says so",
        store=clients.store,
        traffic=clients.traffic,
        **options,
    )


def check(clients, settings, now):
    reports = run_checkpoints(now=now, settings=settings, policy=POLICY, clients=clients)
    return {r.fields.get("rollout"): r for r in reports}


def test_healthy_canary_walks_the_ramp_to_promoted(clients, settings, cloudrun, monitoring, chat):
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    report = check(clients, settings, t)[CANARY]  # discovers the rollout at 5 %
    assert report.fields["verdict"] == "INCONCLUSIVE" and live(cloudrun) == {
        "shop-00001": 95,
        "shop-00002": 5,
    }
    walk = [(61, 10), (1441, 25), (1441, 50), (1441, 100)]  # minutes after the previous step
    for offset, expected in walk:
        # GO but not soaked yet: one minute before the soak ends nothing moves.
        early = t + timedelta(minutes=offset - 2)
        serve_traffic(monitoring, early, HEALTHY)
        assert check(clients, settings, early)[CANARY].fields["action"] == "hold"
        now = t + timedelta(minutes=offset)
        serve_traffic(monitoring, now, HEALTHY, minutes=1)
        report = check(clients, settings, now)[CANARY]
        assert report.fields["verdict"] == "GO", report.fields["reasons"]
        assert report.fields["step"] == "changed"
        assert live(cloudrun)["shop-00002"] == expected
        t = now
    rollout = clients.store.get(CANARY)
    assert rollout.phase is Phase.PROMOTED and rollout.canary_percent == 100
    steps = [h for h in clients.store.history(CANARY) if h["kind"] in ("step", "promoted")]
    assert [h["to_percent"] for h in steps] == [10, 25, 50, 100]
    assert len(chat.said("promoted to 100%")) == 1
    # Nothing advances a promoted rollout; a later checkpoint leaves it alone.
    assert check(clients, settings, t + timedelta(days=1))[CANARY].fields["action"] == "none"


def test_bad_canary_is_rolled_back_by_checkpoints_alone(
    clients, settings, cloudrun, monitoring, functions, chat
):
    """Errors > 1 % on 3 consecutive minutes, each judged by the checkpoint that first sees it
    (data visible LAG after the minute) → rollback request → rollback function → stable."""
    port = int(functions["rollback"].url.rsplit(":", 1)[1])
    wire_push(PROJECT, ROLLBACK_TOPIC, "test-checkpoint-rollback", push_endpoint(port))
    try:
        deploy_canary(cloudrun)
        t = soon()
        bad = Minute(requests=200, errors=10, latency_ms=90)
        outcomes = []
        for n in range(3):
            now = t + timedelta(minutes=n)
            serve_minutes(monitoring, [now - LAG], bad)  # one more minute has become visible
            report = check(clients, settings, now)[CANARY]
            outcomes.append(report.fields["evidence"])
            if n < 2:  # a Scheduler retry in the same minute reads the same minutes: nothing new
                again = check(clients, settings, now + timedelta(seconds=20))[CANARY]
                assert again.fields["evidence"] == "unchanged"
        assert outcomes == ["counted", "counted", "tripped"]
        deadline = time.monotonic() + 20  # the rollback function records ROLLED_BACK after the write
        while time.monotonic() < deadline and clients.store.get(CANARY).phase is not Phase.ROLLED_BACK:
            time.sleep(0.1)
        assert live(cloudrun) == {"shop-00001": 100}
        rollout = clients.store.get(CANARY)
        assert rollout.phase is Phase.ROLLED_BACK
        done = [h for h in clients.store.history(CANARY) if h["kind"] == "rolled_back"][-1]
        assert done["rule"] == "error_rate" and done["requested_by"] == "canary-guard/checkpoint"
        [said] = chat.said("error_rate breached on 3 consecutive minutes")
        assert "5.00 % > 1.00 %" in said  # the rule and the observed value
        # Rolled back is sticky: a healthy checkpoint later never advances it.
        later = t + timedelta(hours=2)
        serve_traffic(monitoring, later, HEALTHY)
        assert check(clients, settings, later)[CANARY].fields["action"] == "none"
        assert live(cloudrun) == {"shop-00001": 100}
    finally:
        pubsub_v1.SubscriberClient().delete_subscription(
            subscription=f"projects/{PROJECT}/subscriptions/test-checkpoint-rollback"
        )


def test_a_crashed_canary_is_rolled_back_on_the_first_minute_that_shows_it(
    clients, settings, cloudrun, monitoring, rollback_requests
):
    """Failing most of its requests is "down": one minute with enough requests rolls it back."""
    deploy_canary(cloudrun)
    t = soon()
    serve_minutes(monitoring, [t - LAG], Minute(requests=30, errors=30))
    report = check(clients, settings, t)[CANARY]
    assert report.fields["evidence"] == "tripped"
    [request] = rollback_requests(expect_at_least=1)
    assert request["rule"] == "canary_down" and request["canary_revision"] == "shop-00002"
    assert "100.00 % > 50.00 %" in request["reason"]


def test_a_quiet_canary_with_errors_is_never_rolled_back_on_thin_minutes(
    clients, settings, cloudrun, monitoring
):
    """3 requests a minute, one of them a 5xx, for ten minutes: too thin to judge, no evidence."""
    deploy_canary(cloudrun)
    t = soon()
    for n in range(10):
        serve_minutes(monitoring, [t + timedelta(minutes=n) - LAG], Minute(requests=3, errors=1))
        check(clients, settings, t + timedelta(minutes=n))
    rollout = clients.store.get(CANARY)
    assert not rollout.rollback_requested
    assert {e.kind.value for e in rollout.ledger["error_rate"].values()} == {"thin"}


def alert(functions, *, rule: str, started: datetime, message_id: str = "") -> dict:
    """Deliver an open incident of `rule` for the canary to breach_counter; its log line."""
    message_id = message_id or uuid.uuid4().hex
    payload = incident_message(
        rule=rule,
        revision="shop-00002",
        project=PROJECT,
        location=LOCATION,
        started_at=int(started.timestamp()),
    )
    data = cloudevent_data(payload, message_id=message_id)
    assert post_event(functions["breach_counter"], data, event_id=message_id).status_code == 200
    [line] = functions["breach_counter"].logs_for(event_id=message_id)[-1:]
    return line


def test_an_alert_judges_the_same_minutes_as_the_checkpoint(
    clients, settings, cloudrun, monitoring, functions, rollback_requests
):
    """Two bad minutes seen by a checkpoint, the third by the alert that the incident raised: one
    ledger, one run, tripped by the alert; the checkpoint re-reading them adds nothing."""
    deploy_canary(cloudrun)
    t = half_an_hour_ago()
    bad = Minute(requests=200, errors=6)
    serve_minutes(monitoring, [t - timedelta(minutes=1), t], bad)
    report = check(clients, settings, t)[CANARY]
    assert report.fields["evidence"] == "counted"
    assert clients.store.get(CANARY).streaks["error_rate"].count == 2
    serve_minutes(monitoring, [t + timedelta(minutes=1)], bad)
    line = alert(functions, rule="error_rate", started=t + timedelta(minutes=1, seconds=5))
    assert line["outcome"] == "tripped", line
    rollout = clients.store.get(CANARY)
    assert rollout.streaks["error_rate"].count == 3 and rollout.rollback_requested
    sources = [h["source"] for h in clients.store.history(CANARY) if h["kind"] == "evidence"]
    assert sources == ["checkpoint", "alert"]
    assert len(rollout.ledger["error_rate"]) == 3  # three minutes, however many readers saw them
    [request] = rollback_requests(expect_at_least=1)
    assert request["requested_by"] == "canary-guard/breach_counter" and len(request["observations"]) == 3


def test_an_alert_on_thin_minutes_counts_nothing(clients, settings, cloudrun, monitoring, functions):
    """An incident raised on 3 requests a minute (a policy without a traffic minimum) finds the
    minutes too thin when it judges them, as the checkpoint would: no rollback."""
    deploy_canary(cloudrun)
    t = half_an_hour_ago()
    serve_minutes(
        monitoring, [t - timedelta(minutes=m) for m in (4, 3, 2, 1, 0)], Minute(requests=3, errors=1)
    )
    line = alert(functions, rule="error_rate", started=t)
    assert line["outcome"] == "counted" and line["streak"] == 0
    assert not clients.store.get(CANARY).rollback_requested
    # The same notification delivered again is a duplicate.
    again = alert(functions, rule="error_rate", started=t, message_id=line["event_id"])
    assert again["outcome"] == "duplicate"


def test_a_memory_alert_rolls_back_at_once_on_two_minutes(
    clients, cloudrun, monitoring, functions, rollback_requests
):
    deploy_canary(cloudrun)
    t = half_an_hour_ago()
    serve_minutes(monitoring, [t - timedelta(minutes=1), t], Minute(requests=200, memory=0.93))
    line = alert(functions, rule="memory", started=t + timedelta(seconds=30))
    assert line["outcome"] == "tripped"
    request = clients.store.get(CANARY).rollback_request
    assert request["rule"] == "memory" and request["requested_by"] == "canary-guard/breach_counter"
    assert [o["minute"] for o in request["observations"]] == [
        f"{t - timedelta(minutes=2):%Y-%m-%dT%H:%MZ}",
        f"{t - timedelta(minutes=1):%Y-%m-%dT%H:%MZ}",
    ]


def test_no_go_at_the_end_of_the_soak_rolls_back(clients, settings, cloudrun, monitoring, rollback_requests):
    """Errors flapping 2 % / 0.2 % minute by minute: never 3 bad minutes in a row, but 1.1 % over
    the step. The step holds during the soak; at its end the whole-step NO_GO rolls back."""
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)  # registers the rollout: its step starts now
    start = minute(t) + timedelta(minutes=2)
    for n in range(60):
        errors = 4 if n % 2 == 0 else 1  # 2 % then 0.5 %: 1.25 % over the step
        serve_minutes(monitoring, [start + timedelta(minutes=n)], Minute(requests=200, errors=errors))
    during = check(clients, settings, t + timedelta(minutes=50))[CANARY]
    assert (during.fields["verdict"], during.fields["action"]) == ("NO_GO", "hold")
    assert not clients.store.get(CANARY).rollback_requested
    report = check(clients, settings, t + timedelta(minutes=60, seconds=30))[CANARY]
    assert (report.fields["verdict"], report.fields["action"]) == ("NO_GO", "rollback")
    [request] = rollback_requests(expect_at_least=1)
    assert request["rule"] == "step_verdict" and "NO_GO at the end of the 60-min soak" in request["reason"]
    assert "error_rate" in request["reason"]
    assert clients.store.get(CANARY).rollback_request["rule"] == "step_verdict"


def test_rollback_wins_over_a_step_change_in_flight(clients, cloudrun):
    """The advance's traffic write is slowed down; a rollback starts meanwhile: stable wins."""
    deploy_canary(cloudrun)
    rollout = clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    cloudrun.inject_fault(None, count=1, methods=["PATCH"], delay_s=1.5)
    results = {}

    def advance() -> None:
        results["step"] = change_step(
            rollout,
            10,
            by="test",
            reason="race",
            store=clients.store,
            traffic=clients.traffic,
        )

    stepper = threading.Thread(target=advance)
    stepper.start()
    # The rollback starts only once the advance's PATCH is in flight: the stand-in holds it.
    deadline = time.monotonic() + 10
    while cloudrun.faults_left() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cloudrun.faults_left() == 0, "the advance never sent its traffic write"
    request = RollbackRequest(service=SHOP, reason="race", requested_by="oncall")
    result = execute_rollback(
        request, SERVICE_REF, mode="manual", store=clients.store, traffic_client=clients.traffic
    )
    stepper.join()
    assert result.status == "rolled_back"
    assert results["step"].status == "aborted"
    assert live(cloudrun) == {"shop-00001": 100}
    final = clients.store.get(rollout.id)
    assert final.phase is Phase.ROLLED_BACK and final.canary_percent == 5


def test_a_paused_rollout_holds_and_after_resume_a_go_advances_even_past_the_deadline(
    clients, settings, cloudrun, monitoring, chat
):
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)
    clients.store.set_paused(CANARY, True, by="owner", reason="waiting for marketing")
    now = t + timedelta(minutes=61)
    serve_traffic(monitoring, now, HEALTHY)
    report = check(clients, settings, now)[CANARY]
    assert report.fields["verdict"] == "GO" and report.fields["action"] == "hold"
    assert "paused" in report.message
    assert live(cloudrun)["shop-00002"] == 5
    clients.store.set_paused(CANARY, False, by="owner", reason="go")
    # Resumed after the progress deadline: a healthy canary moves on, it is not frozen.
    late = t + timedelta(hours=POLICY.checkpoint.progress_deadline_hours, minutes=1)
    serve_traffic(monitoring, late, HEALTHY)
    report = check(clients, settings, late)[CANARY]
    assert report.fields["action"] == "advance" and live(cloudrun)["shop-00002"] == 10
    assert not chat.said("FROZEN")


def test_a_rollout_that_cannot_pass_freezes_and_its_breaches_still_roll_it_back(
    clients, settings, cloudrun, monitoring, chat, rollback_requests
):
    deploy_canary(cloudrun)
    t = soon()
    check(clients, settings, t)
    # HOLD (P95 between the GO bar and the rollback bar) past the progress deadline: FROZEN.
    late = t + timedelta(hours=POLICY.checkpoint.progress_deadline_hours, minutes=5)
    serve_traffic(monitoring, late, Minute(requests=200, latency_ms=300), minutes=5)
    report = check(clients, settings, late)[CANARY]
    assert report.fields["verdict"] == "HOLD" and report.fields["action"] == "freeze"
    assert clients.store.get(CANARY).phase is Phase.FROZEN
    assert len(chat.said("FROZEN at 5%")) == 1
    again = check(clients, settings, late + timedelta(minutes=1))[CANARY]
    assert again.fields["action"] == "none" and len(chat.said("FROZEN")) == 1  # said once
    assert live(cloudrun)["shop-00002"] == 5
    # Frozen, the canary still serves 5 %: errors over the rollback bar count and trip it.
    bad = Minute(requests=200, errors=10, latency_ms=90)
    limit = POLICY.rollback_rules["error_rate"].consecutive
    for n in range(1, limit + 1):
        now = late + timedelta(minutes=n)
        serve_minutes(monitoring, [now - LAG], bad)
        report = check(clients, settings, now)[CANARY]
        assert report.fields["evidence"] == ("tripped" if n == limit else "counted")
    assert clients.store.get(CANARY).rollback_requested
    [request] = rollback_requests(expect_at_least=1)
    assert request["rule"] == "error_rate" and request["canary_revision"] == "shop-00002"


def test_hold_between_bars_and_inconclusive_never_advance(clients, settings, cloudrun, monitoring, chat):
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)
    now = t + timedelta(minutes=61)
    serve_traffic(monitoring, now, Minute(requests=10), minutes=1)  # too little data to judge
    report = check(clients, settings, now)[CANARY]
    assert report.fields["verdict"] == "INCONCLUSIVE"
    assert "10 requests < 100" in report.fields["reasons"][0]
    later = now + timedelta(minutes=1)
    serve_traffic(
        monitoring, later, Minute(requests=1000, errors=7, latency_ms=80), minutes=1
    )  # ≈0.7 % errors
    report = check(clients, settings, later)[CANARY]
    assert report.fields["verdict"] == "HOLD" and report.fields["action"] == "hold"
    assert report.fields["measured"]["error_rate"]["go_bar"] == 0.005
    assert report.fields["measured"]["error_rate"]["rollback_bar"] == 0.01
    assert chat.said("holds at 5%: HOLD")
    assert live(cloudrun)["shop-00002"] == 5


def test_a_notification_that_cannot_be_published_never_blocks_a_rollback(clients, cloudrun):
    """Pub/Sub refusing the notification changes nothing for the rollback; the notification
    stays in the outbox, unpublished, for the next checkpoint to re-send."""
    deploy_canary(cloudrun)

    def refused(store: RolloutStore, notes: list[Notification]) -> None:
        raise RuntimeError("Pub/Sub is down")

    store = RolloutStore(PROJECT, notifications=refused)
    request = RollbackRequest(service=SHOP, reason="webhook down", requested_by="oncall")
    result = execute_rollback(
        request, SERVICE_REF, mode="manual", store=store, traffic_client=clients.traffic
    )
    assert result.status == "rolled_back" and live(cloudrun) == {"shop-00001": 100}
    later = datetime.now(UTC) + timedelta(minutes=5)
    # The rollout found by the rollback was registered ("started") and rolled back: both wait.
    assert sorted(n.kind for n in store.unpublished_notifications(older_than=later)) == [
        "rolled_back",
        "started",
    ]


@pytest.fixture(scope="module")
def fast_ramp_checkpoint(function_env, log_dir, tmp_path_factory, monitoring_session):
    """The checkpoint entry point under functions-framework, with a policy whose soak is 0."""
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    for step in policy["ramp"]:
        step["soak_minutes"] = 0
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    port = free_port()
    env = {
        **function_env,
        "CANARY_POLICY_FILE": str(path),
        "MONITORING_API_ENDPOINT": monitoring_session.target,
    }
    process = serve_function("checkpoint", port, env, log_dir)
    yield f"http://127.0.0.1:{port}/"
    process.stop()


def test_checkpoint_entry_point_walks_a_fast_ramp(
    fast_ramp_checkpoint, firestore_clean, cloudrun, monitoring
):
    monitoring.reset()
    deploy_canary(cloudrun)
    serve_traffic(monitoring, datetime.now(UTC), HEALTHY, minutes=20)

    def checkpoint() -> dict:
        answer = requests.post(fast_ramp_checkpoint, json={"service": "shop"}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["rollouts"][0]

    # A step just taken has no data of its own yet: never judged on the previous share's minutes.
    first = checkpoint()
    assert first["verdict"] == "INCONCLUSIVE" and "its first minute of data" in first["reasons"][0]
    percents = []
    for _ in range(5):
        rewind_step(PROJECT, CANARY, timedelta(minutes=10))  # as if ten minutes had passed
        checkpoint()
        percents.append(live(cloudrun)["shop-00002"])
    assert percents == [10, 25, 50, 100, 100]
    assert RolloutStore(PROJECT).get(CANARY).phase is Phase.PROMOTED
    written = {series.metric.type for series in monitoring.series(PROJECT)}
    assert "custom.googleapis.com/canary_guard/canary_percent" in written
    assert "custom.googleapis.com/canary_guard/breaches" in written


@pytest.mark.parametrize(
    ("body", "status"), [({"service": "not-watched"}, 403), ({"service": 5}, 400), ({"force": True}, 400)]
)
def test_checkpoint_entry_point_refuses_bad_bodies(fast_ramp_checkpoint, body, status):
    answer = requests.post(fast_ramp_checkpoint, json=body, timeout=30)
    assert answer.status_code == status
    assert answer.json()["message"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [("service=shop", "not JSON"), ("[]", "body must be empty"), ("false", "body must be empty")],
)
def test_checkpoint_entry_point_says_what_to_send(fast_ramp_checkpoint, firestore_clean, raw, says):
    """A body that is not the selection is refused, never read as "check every service"."""
    answer = requests.post(fast_ramp_checkpoint, data=raw, timeout=30)
    assert answer.status_code == 400
    assert says in (answer.json().get("error") or answer.json()["message"])


@pytest.mark.parametrize("raw", ["", "{}", '{"service": "shop"}'])
def test_checkpoint_entry_point_takes_the_scheduler_body_and_curl_without_content_type(
    fast_ramp_checkpoint, firestore_clean, cloudrun, raw
):
    for service in WATCHED:
        name = service.rsplit("/", 1)[1]
        deploy_canary(cloudrun, service, stable=f"{name}-00001", canary=f"{name}-00002")
    answer = requests.post(fast_ramp_checkpoint, data=raw, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "checked"
    assert len(answer.json()["rollouts"]) == (1 if "shop" in raw else len(WATCHED))


SERVICE_REF = load_settings(
    {"GOOGLE_CLOUD_PROJECT": PROJECT, "CANARY_SERVICES": ",".join(WATCHED)}
).resolve_service(SHOP)


def test_the_live_canary_wins_over_stored_state(clients, settings, cloudrun, monitoring):
    """Canary A is RUNNING in Firestore, but CI moved the `canary` tag to B: the checkpoint judges
    B (A is superseded) and never moves the tag back to A."""
    deploy_canary(cloudrun)
    clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    deploy_canary(cloudrun, canary="shop-00003")
    t = datetime.now(UTC)
    report = check(clients, settings, t)[rollout_id(SHOP, "shop-00003")]
    assert report.fields["rollout"] == rollout_id(SHOP, "shop-00003")
    assert clients.store.get(CANARY).phase is Phase.SUPERSEDED
    assert live(cloudrun) == {"shop-00001": 95, "shop-00003": 5}


def test_a_step_is_judged_on_its_own_minutes_only(clients, settings, cloudrun, monitoring):
    """Step to 10 % at hh:mm:30: the minute point ending at hh:mm+1 still holds 30 s of the 5 %
    share's traffic (bad here) and stays out of the step's verdict; the next ones decide."""
    deploy_canary(cloudrun)
    rollout = clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    stepped_at = minute(datetime.now(UTC)) + timedelta(hours=2, seconds=30)
    step = step_to(clients, rollout, 10, by="test", now=stepped_at)
    assert step.status == "changed"
    first_minute = minute(stepped_at) + timedelta(minutes=1)  # ends 30 s after the step
    later = [first_minute + timedelta(minutes=m) for m in (1, 2)]
    serve_minutes(monitoring, [first_minute], Minute(requests=200, errors=20, latency_ms=90))
    serve_minutes(monitoring, later, replace(HEALTHY, requests=1000))  # enough to pass with confidence
    # Only the mixed minute is in: nothing of the step's own to judge yet.
    report = check(clients, settings, first_minute + LAG)[CANARY]
    assert report.fields["verdict"] == "INCONCLUSIVE", report.fields["reasons"]
    assert "its first minute of data" in report.fields["reasons"][0]
    # Two whole minutes of the step: judged on them alone, the mixed minute left out.
    report = check(clients, settings, later[-1] + LAG)[CANARY]
    assert report.fields["verdict"] == "GO", report.fields["reasons"]
    assert report.fields["measured"]["error_rate"]["value"] == 0


def serve_with_load_test(
    clients,
    monitoring,
    now: datetime,
    users: Minute,
    *,
    minutes: int,
    busy: datetime,
    requests: int,
    latency_ms: float = 6,
    finished: bool = True,
) -> SyntheticTraffic:
    """Users' traffic for the `minutes` minutes the checkpoint at `now` reads, plus a load test of
    `requests` fast 200s within the minute ending `busy`, noted on the rollout as load_test does."""
    end = minute(now - LAG)
    stamps = [end - timedelta(minutes=m) for m in reversed(range(minutes))]
    with_load = replace(users, requests=users.requests + requests, latency_ms=latency_ms)
    for stamp in stamps:  # in time order: Monitoring refuses an older point after a newer one
        serve_minutes(monitoring, [stamp], with_load if stamp == busy else users)
    run = SyntheticTraffic(busy - timedelta(seconds=50), busy - timedelta(seconds=20), finished)
    clients.store.note_synthetic_traffic(CANARY, "run_test", run)
    return run


@pytest.mark.parametrize(
    ("users", "minutes", "synthetic", "verdict", "why"),
    [
        # Quiet: 50 user requests; with the run's 2,000 fast 200s, Monitoring shows 2,050.
        (Minute(requests=1), 50, 2000, "INCONCLUSIVE", "49 requests < 100 needed to judge"),
        # Slow: 120 user requests at 450 ms are 3.8 % of all: the merged P95 is the run's 6 ms.
        (Minute(requests=2, latency_ms=450), 60, 3000, "HOLD", "> GO bar 200 ms"),
    ],
    ids=["quiet", "slow"],
)
def test_a_canary_does_not_pass_on_its_own_load_test(
    clients, settings, cloudrun, monitoring, users, minutes, synthetic, verdict, why
):
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)
    now = t + timedelta(minutes=61)
    busy = minute(now - LAG) - timedelta(minutes=10)
    serve_with_load_test(clients, monitoring, now, users, minutes=minutes, busy=busy, requests=synthetic)
    seen = clients.reader.canary_metrics(
        location=LOCATION, service="shop", revision="shop-00002", start=minute(t), end=minute(now - LAG)
    )
    assert judge(seen, POLICY).verdict.value == "GO"  # what Cloud Monitoring's totals would say
    report = check(clients, settings, now)[CANARY]
    assert report.fields["verdict"] == verdict, report.fields["reasons"]
    assert any(why in reason for reason in report.fields["reasons"]), report.fields["reasons"]
    assert report.fields["action"] == "hold" and live(cloudrun)["shop-00002"] == 5


def test_a_load_test_across_the_step_start_does_not_hold_the_step(clients, settings, cloudrun, monitoring):
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)  # registers the rollout: its step starts now
    across = SyntheticTraffic(t - timedelta(seconds=60), t + timedelta(seconds=90))
    clients.store.note_synthetic_traffic(CANARY, "run_across", across)
    now = t + timedelta(minutes=61)
    end = minute(now - LAG)
    overloaded = Minute(requests=3000, errors=300, latency_ms=900)  # the run's own minutes
    for stamp in [end - timedelta(minutes=m) for m in reversed(range(62))]:
        in_run = across.minutes[0] < stamp <= across.minutes[1]
        serve_minutes(monitoring, [stamp], overloaded if in_run else HEALTHY)
    report = check(clients, settings, now)[CANARY]
    assert (report.fields["verdict"], report.fields["action"]) == ("GO", "advance"), report.fields["reasons"]
    left_out = clients.store.get(CANARY).last_verdict["load_tests_left_out"]
    assert left_out == [{"from": across.minutes[0], "to": across.minutes[1]}]


def test_a_load_test_in_progress_is_left_out_up_to_its_deadline(clients, settings, cloudrun, monitoring):
    """Noted before its first request; killed or still going, its minutes never count."""
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)
    now = t + timedelta(minutes=61)
    end = minute(now - LAG)
    bad_then = Minute(requests=2000, errors=0, latency_ms=900)  # slow under the run's load
    serve_traffic(monitoring, now - timedelta(minutes=3), HEALTHY, minutes=57)
    serve_minutes(monitoring, [end - timedelta(minutes=m) for m in (2, 1, 0)], bad_then)
    going = SyntheticTraffic(end - timedelta(minutes=3), end + timedelta(minutes=5), finished=False)
    clients.store.note_synthetic_traffic(CANARY, "run_going", going)
    report = check(clients, settings, now)[CANARY]
    assert (report.fields["verdict"], report.fields["action"]) == ("GO", "advance"), report.fields["reasons"]
    assert report.fields["measured"]["latency_p95"]["value"] < 200


def test_a_load_test_neither_hides_nor_resets_an_error_streak(clients, settings, cloudrun, monitoring):
    """Bad users' minutes, one of them drowned in a load test's 5,000 fast 200s: that minute is
    skipped (it bridges the run), so the two bad minutes around it plus a third still trip."""
    deploy_canary(cloudrun)
    clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    t = soon()
    bad = Minute(requests=200, errors=10, latency_ms=90)
    busy = t - LAG - timedelta(minutes=1)
    serve_minutes(monitoring, [busy - timedelta(minutes=1)], bad)
    serve_with_load_test(
        clients, monitoring, t - timedelta(minutes=1), bad, minutes=1, busy=busy, requests=5000
    )
    serve_minutes(monitoring, [t - LAG], bad)
    report = check(clients, settings, t)[CANARY]
    assert report.fields["evidence"] == "counted"
    ledger = clients.store.get(CANARY).ledger["error_rate"]
    assert [e.kind.value for _, e in sorted(ledger.items())] == ["breach", "skipped", "breach"]
    assert clients.store.get(CANARY).streaks["error_rate"].count == 2
    serve_minutes(monitoring, [t + timedelta(minutes=1) - LAG], bad)
    assert check(clients, settings, t + timedelta(minutes=1))[CANARY].fields["evidence"] == "tripped"


def test_a_step_in_flight_stops_at_a_pause(clients, cloudrun):
    deploy_canary(cloudrun)
    rollout = clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    clients.store.set_paused(CANARY, True, by="owner", reason="hold on")
    result = step_to(clients, rollout, 10, by="canary-guard/checkpoint")
    assert result.status == "aborted" and live(cloudrun)["shop-00002"] == 5
    manual = step_to(clients, rollout, 10, by="owner", respect_pause=False)
    assert manual.status == "changed" and live(cloudrun)["shop-00002"] == 10


def test_an_unfinished_rollback_is_redriven_by_the_checkpoint(clients, settings, cloudrun, rollback_requests):
    """A rollback that failed half-way (Cloud Run kept refusing) stays ROLLING_BACK; every
    checkpoint re-sends the request until the rollback function finishes it."""
    deploy_canary(cloudrun)
    cloudrun.inject_fault(503, count=100, methods=["PATCH"])
    request = RollbackRequest(service=SHOP, reason="cloud run down", requested_by="oncall")
    with pytest.raises(ControlPlaneError):
        execute_rollback(
            request, SERVICE_REF, mode="manual", store=clients.store, traffic_client=clients.traffic
        )
    assert clients.store.get(CANARY).phase is Phase.ROLLING_BACK
    report = check(clients, settings, datetime.now(UTC))[CANARY]
    assert report.fields["action"] == "rollback_redriven"
    assert [r["canary_revision"] for r in rollback_requests(expect_at_least=1)] == ["shop-00002"]


def test_a_published_rollback_that_never_finished_is_resent_with_backoff(
    clients, settings, cloudrun, rollback_requests
):
    """The request was published but never executed (e.g. dead-lettered): checkpoints re-send it
    5 min after the publish, then back off (10 min), and never leave the canary serving."""
    deploy_canary(cloudrun)
    rollout = clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    from shared.core.evidence import uptime_evidence

    down = uptime_evidence(datetime.now(UTC), True, POLICY, "uptime incident")
    clients.store.apply_evidence(
        rollout.id,
        [down],
        {"canary_down": 1},
        lambda _decision: {"service": SHOP, "reason": "down", "canary_revision": "shop-00002"},
        keep=timedelta(hours=2),
        source="alert",
    )
    clients.store.mark_rollback_published(rollout.id, "m-1")
    published = clients.store.get(rollout.id).rollback_published_at
    actions = [
        check(clients, settings, published + timedelta(minutes=m))[CANARY].fields["action"]
        for m in (1, 5, 6, 14, 15)
    ]
    assert actions == [
        "rollback_awaited",
        "rollback_redriven",
        "rollback_awaited",
        "rollback_awaited",
        "rollback_redriven",
    ]
    assert [r["canary_revision"] for r in rollback_requests(expect_at_least=2)] == ["shop-00002"] * 2
    assert clients.store.get(rollout.id).redrive_count == 2


def test_a_promoted_revision_stays_under_watch_and_a_trip_restores_the_previous_stable(
    clients, settings, cloudrun, monitoring, functions, rollback_requests
):
    """After 100 % the rollback rules still apply for the watch window; the previous stable keeps a
    `stable` tag, and the rollback puts it back at 100 % in one traffic write."""
    deploy_canary(cloudrun)
    rollout = clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    promoted_at = soon()
    assert step_to(clients, rollout, 100, by="test", now=promoted_at).status == "changed"
    tags = {t.get("tag"): t["revision"] for t in cloudrun.service(SHOP)["traffic"] if t.get("tag")}
    assert tags == {"canary": "shop-00002", "stable": "shop-00001"}
    assert live(cloudrun) == {"shop-00002": 100}
    t = promoted_at + timedelta(hours=2)
    serve_minutes(monitoring, [t - LAG - timedelta(minutes=1)], HEALTHY)
    report = check(clients, settings, t)[CANARY]
    assert (report.fields["action"], report.fields["evidence"]) == ("watch", "counted")
    serve_minutes(monitoring, [t - LAG], Minute(requests=200, errors=200))  # down
    report = check(clients, settings, t + timedelta(minutes=1))[CANARY]
    assert report.fields["evidence"] == "tripped"
    [request] = rollback_requests(expect_at_least=1)
    assert request["rule"] == "canary_down" and request["canary_revision"] == "shop-00002"
    writes = len([c for c in cloudrun.calls() if c["method"] == "PATCH"])
    message_id = uuid.uuid4().hex
    data = cloudevent_data(request, message_id=message_id, topic=ROLLBACK_TOPIC)
    assert (
        post_event(functions["rollback"], data, event_id=message_id, topic=ROLLBACK_TOPIC).status_code == 200
    )
    assert live(cloudrun) == {"shop-00001": 100}
    assert len([c for c in cloudrun.calls() if c["method"] == "PATCH"]) == writes + 1  # one write
    assert clients.store.get(CANARY).phase is Phase.ROLLED_BACK


def test_past_the_watch_window_a_promoted_revision_is_left_alone(clients, settings, cloudrun, monitoring):
    deploy_canary(cloudrun)
    rollout = clients.store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    promoted_at = soon()
    step_to(clients, rollout, 100, by="test", now=promoted_at)
    t = promoted_at + timedelta(hours=POLICY.checkpoint.watch_after_promotion_hours, minutes=5)
    serve_minutes(monitoring, [t - LAG], Minute(requests=200, errors=200))
    report = check(clients, settings, t)[CANARY]
    assert report.fields["action"] == "none" and "PROMOTED" in report.message
    assert not clients.store.get(CANARY).rollback_requested and live(cloudrun) == {"shop-00002": 100}


def test_a_quiet_canary_with_errors_is_held_not_rolled_back_at_the_end_of_the_soak(
    clients, settings, cloudrun, monitoring
):
    """3 requests a minute, one failing: NO_GO over the step, but as thin as each of its minutes."""
    deploy_canary(cloudrun)
    t = datetime.now(UTC)
    check(clients, settings, t)
    start = minute(t) + timedelta(minutes=2)
    serve_minutes(monitoring, [start + timedelta(minutes=n) for n in range(60)], Minute(requests=3, errors=1))
    report = check(clients, settings, t + timedelta(minutes=60, seconds=30))[CANARY]
    assert (report.fields["verdict"], report.fields["action"]) == ("NO_GO", "hold")
    assert "too thin to roll back on" in report.message
    assert not clients.store.get(CANARY).rollback_requested


def test_the_checkpoint_and_the_backtest_agree_on_a_library_scenario(
    clients, settings, cloudrun, monitoring, rollback_requests
):
    """error_spike through the real checkpoint (Monitoring stand-in, a minute visible 3 minutes
    after it ends) requests the rollback at the same minute as the backtest of the same series."""
    from infra.backtest_cli import library
    from shared.core.backtest import load_scenario, run_scenario

    scenario = load_scenario(next(p for p in library() if p.stem == "error_spike"))
    expected = run_scenario(scenario, POLICY, lag=3).rollback_minute
    deploy_canary(cloudrun)
    t0 = soon()
    got = None
    for k in range(1, 30):
        index = k - 4  # the minute that ends 3 minutes before this checkpoint becomes visible
        if index >= 0:
            m = scenario.canary[index]
            serve_minutes(
                monitoring,
                [t0 + timedelta(minutes=index + 1)],
                Minute(
                    requests=m.requests,
                    errors=m.errors,
                    latency_ms=m.latency_p95_ms,
                    memory=m.memory,
                    cpu=m.cpu,
                ),
            )
        report = check(clients, settings, t0 + timedelta(minutes=k))[CANARY]
        if report.fields["evidence"] == "tripped":
            got = k
            break
    assert got == expected == 16
