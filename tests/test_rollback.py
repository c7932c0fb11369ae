"""Rollback through the functions and the Cloud Run stand-in: the Pub/Sub-triggered rollback,
the emergency HTTP call, dry runs, idempotency and every injected control-plane fault."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from google.api_core import retry
from google.cloud import firestore, pubsub_v1

from infra.localstack import PROJECT, ROLLBACK_TOPIC, free_port, push_endpoint, wire_push
from shared.clients.store import EXPIRES_AT, MARKER_TTL, ROLLBACK_MESSAGES, Rollout, RolloutStore, rollout_id
from shared.core.ledger import Phase
from tests.conftest import API, FOREIGN, SHOP, deploy_canary
from tests.payloads import cloudevent_data
from tests.test_pipeline import post_event

pytestmark = pytest.mark.emulators
CANARY = rollout_id(SHOP, "shop-00002")
BEFORE = {"shop-00001": 95, "shop-00002": 5}
AFTER = {"shop-00001": 100, "shop-00002": 0}


@pytest.fixture
def store(firestore_clean) -> RolloutStore:
    return RolloutStore(PROJECT)


@pytest.fixture
def shop(cloudrun):
    deploy_canary(cloudrun)
    return cloudrun


def live(cloudrun, service: str = SHOP) -> dict[str, int]:
    return {t["revision"]: t.get("percent", 0) for t in cloudrun.service(service)["traffic"]}


def tags(cloudrun, service: str = SHOP) -> dict[str, str]:
    return {t["revision"]: t.get("tag", "") for t in cloudrun.service(service)["traffic"]}


def token(email: str) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"Bearer {part({'alg': 'RS256'})}.{part({'email': email, 'aud': 'x'})}.c2ln"


def emergency(functions, body, *, auth: str | None = None) -> requests.Response:
    headers = {"Authorization": auth} if auth else {}
    return requests.post(functions["emergency_rollback"].url + "/", json=body, headers=headers, timeout=60)


def as_split(targets: list[dict]) -> dict[str, int]:
    return {t["revision"]: t["percent"] for t in targets}


def test_emergency_dry_run_changes_nothing(functions, store, shop):
    response = emergency(functions, {"service": "shop", "reason": "errors on checkout", "dry_run": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "dry_run"
    assert as_split(body["before"]) == BEFORE
    assert as_split(body["after"]) == AFTER
    assert live(shop) == BEFORE
    assert not [c for c in shop.calls() if c["method"] == "PATCH"]


def test_emergency_rollback_moves_traffic_and_records_who(functions, store, shop):
    response = emergency(
        functions, {"service": SHOP, "reason": "errors on checkout"}, auth=token("oncall@example.com")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "rolled_back"
    assert as_split(body["before"]) == BEFORE and as_split(body["after"]) == AFTER
    assert live(shop) == AFTER
    assert tags(shop)["shop-00002"] == "canary"  # still reachable for debugging
    rollout = store.get(CANARY)
    assert rollout.phase is Phase.ROLLED_BACK
    done = [h for h in store.history(CANARY) if h["kind"] == "rolled_back"]
    assert len(done) == 1
    assert done[0]["requested_by"] == "oncall@example.com"
    assert done[0]["mode"] == "manual" and done[0]["reason"] == "errors on checkout"
    assert as_split(done[0]["before"]) == BEFORE and as_split(done[0]["after"]) == AFTER

    again = emergency(functions, {"service": "shop", "reason": "again"})
    assert again.status_code == 200 and again.json()["status"] == "already_rolled_back"
    assert len([c for c in shop.calls() if c["method"] == "PATCH"]) == 1
    assert store.get(CANARY).phase is Phase.ROLLED_BACK
    # No message id, no marker: every emergency call is its own request.
    assert not list(firestore.Client(project=PROJECT).collection(ROLLBACK_MESSAGES).stream())


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"reason": "x"}, 400, "service"),
        ({"service": "shop"}, 400, "reason"),
        ({"service": "shop", "reason": "x", "dry_run": "perhaps"}, 400, "dry_run"),
        ({"service": "shop", "reason": "x", "force": True}, 400, "force"),
        (["shop"], 400, "JSON object"),
        ({"service": "not-watched", "reason": "x"}, 403, "not in CANARY_SERVICES"),
        ({"service": FOREIGN, "reason": "x"}, 403, "not in CANARY_SERVICES"),
        ({"service": "api", "reason": "x"}, 400, "ambiguous"),
    ],
)
def test_emergency_bad_input_answers_4xx_with_a_message(functions, store, shop, body, status, says):
    response = emergency(functions, body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert live(shop) == BEFORE


def test_emergency_non_json_body_is_400(functions, shop):
    response = requests.post(functions["emergency_rollback"].url + "/", data="roll back!", timeout=30)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_emergency_without_a_canary_is_409(functions, store, cloudrun):
    cloudrun.put_service(API, ["api-00001"], [{"revision": "api-00001", "percent": 100}])
    response = emergency(functions, {"service": API, "reason": "x"})
    assert response.status_code == 409
    assert "no canary" in response.json()["error"]


@pytest.mark.parametrize("status", [429, 500, 503, 409])
def test_transient_faults_are_retried_then_succeed(functions, store, shop, status):
    shop.inject_fault(status, count=2, methods=["PATCH"])
    response = emergency(functions, {"service": "shop", "reason": f"fault {status}"})
    assert response.status_code == 200, response.text
    assert live(shop) == AFTER
    patches = [c for c in shop.calls() if c["method"] == "PATCH"]
    assert [c["status"] for c in patches] == [status, status, 200]


def test_persistent_fault_answers_503_and_leaves_traffic_whole(functions, store, shop):
    shop.inject_fault(503, count=100, methods=["PATCH"])
    response = emergency(functions, {"service": "shop", "reason": "cloud run down"})
    assert response.status_code == 503
    assert "call again" in response.json()["error"]
    assert live(shop) == BEFORE
    assert store.get(CANARY).phase is Phase.ROLLING_BACK  # a retry will finish it
    shop.reset()
    deploy_canary(shop)
    retry = emergency(functions, {"service": "shop", "reason": "cloud run back"})
    assert retry.status_code == 200 and retry.json()["status"] == "rolled_back"
    assert store.get(CANARY).phase is Phase.ROLLED_BACK


def test_slow_control_plane_still_rolls_back(functions, store, shop):
    shop.inject_fault(None, count=2, delay_s=1.5)
    response = emergency(functions, {"service": "shop", "reason": "slow"})
    assert response.status_code == 200
    assert live(shop) == AFTER


def publish_request(
    fn, body: dict, *, message_id: str | None = None, published: datetime | str = "2026-11-26T12:00:00Z"
) -> tuple[str, requests.Response]:
    message_id = message_id or uuid.uuid4().hex
    data = cloudevent_data(body, message_id=message_id, publish_time=published)
    return message_id, post_event(fn, data, event_id=message_id, topic=ROLLBACK_TOPIC)


def test_rollback_function_from_a_breach_counter_request(functions, store, shop):
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    body = {
        "service": SHOP,
        "canary_revision": "shop-00002",
        "reason": "error_rate breached its consecutive limit (alert)",
        "requested_by": "canary-guard/breach_counter",
        "rule": "error_rate",
        "trigger_event_id": "m-3",
        "observations": [{"event_id": "m-3"}],
    }
    message_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200
    assert live(shop) == AFTER
    line = functions["rollback"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] == "rolled_back" and line["mode"] == "auto" and line["rule"] == "error_rate"
    marker = store.rollback_marker(message_id)
    assert marker.outcome == "rolled_back" and marker.rollout == CANARY and marker.at is not None
    # Redelivery of the same message is a no-op that says so; so is the same request published again.
    _, again = publish_request(functions["rollback"], body, message_id=message_id)
    assert again.status_code == 200
    line = functions["rollback"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] == "duplicate" and line["rollout"] == CANARY
    second_id, republished = publish_request(functions["rollback"], body)
    assert republished.status_code == 200
    assert functions["rollback"].logs_for(event_id=second_id)[-1]["outcome"] == "already_rolled_back"
    assert len([c for c in shop.calls() if c["method"] == "PATCH"]) == 1


def test_rollback_request_for_a_superseded_canary_changes_nothing(functions, store, shop):
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    deploy_canary(shop, canary="shop-00003")
    store.register(SHOP, "shop-00003", "shop-00001", canary_percent=5, started_by="test")
    message_id, response = publish_request(
        functions["rollback"], {"service": SHOP, "canary_revision": "shop-00002", "reason": "late request"}
    )
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "superseded"
    assert live(shop) == {"shop-00001": 95, "shop-00003": 5}


def test_rollback_function_raises_on_persistent_fault_for_redelivery(functions, store, shop):
    shop.inject_fault(500, count=100, methods=["PATCH"])
    _, response = publish_request(functions["rollback"], {"service": "shop", "reason": "x"})
    assert response.status_code == 500
    assert live(shop) == BEFORE


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"message": {"data": "!!!not-base64", "messageId": "m"}}, "base64"),
        ({"message": {"data": base64.b64encode(b"roll back").decode(), "messageId": "m"}}, "not JSON"),
        ({"nothing": 1}, "no Pub/Sub 'message'"),
    ],
)
def test_malformed_rollback_messages_are_acknowledged(functions, shop, data, says):
    message_id = uuid.uuid4().hex
    response = post_event(functions["rollback"], data, event_id=message_id, topic=ROLLBACK_TOPIC)
    assert response.status_code == 200
    line = functions["rollback"].logs_for(event_id=message_id)[-1]
    assert line["severity"] == "WARNING" and says in line["message"]
    assert live(shop) == BEFORE


def test_hand_published_request_through_the_push_subscription(functions, store, shop, emulators):
    """What `gcloud pubsub topics publish canary-rollback-requests --message '{...}'` does."""
    port = int(functions["rollback"].url.rsplit(":", 1)[1])
    wire_push(PROJECT, ROLLBACK_TOPIC, "test-rollback-push", push_endpoint(port))
    publisher = pubsub_v1.PublisherClient()
    try:
        publisher.publish(
            publisher.topic_path(PROJECT, ROLLBACK_TOPIC),
            json.dumps({"service": "shop", "reason": "published by hand", "requested_by": "oncall"}).encode(),
        ).result(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and live(shop) != AFTER:
            time.sleep(0.1)
        assert live(shop) == AFTER
    finally:
        pubsub_v1.SubscriberClient().delete_subscription(
            subscription=f"projects/{PROJECT}/subscriptions/test-rollback-push"
        )
    # Carried out as the hand-published request it was: manual, by whoever it names.
    [done] = [e for e in store.history(CANARY) if e["kind"] == "rolled_back"]
    assert (done["mode"], done["requested_by"], done["reason"]) == ("manual", "oncall", "published by hand")


def test_a_redelivered_request_never_touches_a_newer_canary(functions, store, shop):
    """A rollback request for canary A, delivered again after A was rolled back and canary B
    started, reports 'already rolled back' and leaves B's traffic alone."""
    body = {"service": SHOP, "canary_revision": "shop-00002", "reason": "error_rate", "requested_by": "x"}
    _, first = publish_request(functions["rollback"], body)
    assert first.status_code == 200 and live(shop) == AFTER
    deploy_canary(shop, canary="shop-00003")
    message_id, again = publish_request(functions["rollback"], body)
    assert again.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "already_rolled_back"
    assert live(shop) == {"shop-00001": 95, "shop-00003": 5}


def test_a_request_naming_the_live_but_unregistered_canary_rolls_it_back(functions, store, shop):
    body = {"service": SHOP, "canary_revision": "shop-00002", "reason": "rolled back before any event"}
    message_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == AFTER and store.get(CANARY).phase is Phase.ROLLED_BACK


def test_permission_refusal_answers_502_saying_what_to_fix(functions, store, shop):
    shop.inject_fault(403, count=100, methods=["PATCH"])
    response = emergency(functions, {"service": "shop", "reason": "missing role"})
    assert response.status_code == 502
    assert "permissions" in response.json()["error"]
    assert live(shop) == BEFORE
    # The failure is on the record (and so in the channel: rollback_failed notifies).
    [failed] = [e for e in store.history(CANARY) if e["kind"] == "rollback_failed"]
    assert failed["status"] == 403 and failed["mode"] == "manual" and "missing role" in failed["reason"]


def test_a_superseded_canary_still_serving_has_only_its_share_rolled_back(functions, store, shop):
    """Canary A tripped, but B took the `canary` tag before the rollback ran and A kept an
    untagged 5 %: the request for A moves A's share to stable and leaves B alone."""
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    shop.put_service(
        SHOP,
        ["shop-00001", "shop-00002", "shop-00003"],
        [
            {"revision": "shop-00001", "percent": 85},
            {"revision": "shop-00002", "percent": 5},
            {"revision": "shop-00003", "percent": 10, "tag": "canary"},
        ],
    )
    store.register(SHOP, "shop-00003", "shop-00001", canary_percent=10, started_by="test")
    assert store.get(CANARY).phase is Phase.SUPERSEDED
    body = {"service": SHOP, "canary_revision": "shop-00002", "reason": "error_rate", "requested_by": "x"}
    message_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == {"shop-00001": 90, "shop-00003": 10}  # A had no tag: its entry goes


def freeze(store: RolloutStore) -> None:
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    assert store.set_phase(CANARY, Phase.FROZEN, "frozen", {"message": "test"}, only_from={Phase.RUNNING})


def test_emergency_rolls_back_a_frozen_rollout(functions, store, shop):
    """FROZEN stops the ramp, not the canary's traffic: the on-call can still roll it back."""
    freeze(store)
    response = emergency(functions, {"service": "shop", "reason": "frozen and failing"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "rolled_back"
    assert live(shop) == AFTER
    assert store.get(CANARY).phase is Phase.ROLLED_BACK
    assert [h["kind"] for h in store.history(CANARY)][-2:] == ["rollback_started", "rolled_back"]


def test_a_request_for_a_frozen_canary_without_traffic_closes_it(functions, store, shop):
    """The frozen canary's share was already taken away by hand: nothing to move, and the
    rollout is recorded as rolled back instead of staying FROZEN."""
    freeze(store)
    deploy_canary(shop, percent=0)
    body = {"service": SHOP, "canary_revision": "shop-00002", "reason": "error_rate", "requested_by": "x"}
    message_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "already_rolled_back"
    assert live(shop) == {"shop-00001": 100}
    assert store.get(CANARY).phase is Phase.ROLLED_BACK


class ImpatientStore(RolloutStore):
    """Firestore retries a failing read for up to 300 s and then raises RetryError (a
    GoogleAPIError that is no GoogleAPICallError); the same error from the real client, sooner."""

    def get(self, rid: str) -> Rollout | None:
        snap = self._rollout_ref(rid).get(retry=retry.Retry(initial=0.05, maximum=0.2, timeout=1.0))
        return Rollout.from_doc(snap.id, snap.to_dict()) if snap.exists else None


def test_emergency_answers_503_when_a_firestore_read_runs_out_of_retries(function_env, shop, monkeypatch):
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.config import load_settings
    from shared.handlers.rollback import handle_emergency

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    store = ImpatientStore(PROJECT, client=firestore.Client(project=PROJECT))
    report, status = handle_emergency(
        {"service": "shop", "reason": "firestore unreachable"},
        None,
        settings=load_settings(function_env),
        store=store,
        traffic_client=CloudRunTraffic(shop.url),
    )
    assert status == 503
    assert report.severity == "ERROR" and report.fields["outcome"] == "store_error"
    assert "call again" in report.message and "Timeout of 1.0s exceeded" in report.message
    assert live(shop) == BEFORE


# How late a delivery of a request may come: a Firestore or Cloud Run outage during the incident
# (the old rule dropped requests whose canary was registered over 3 minutes after the publish).
LATE = timedelta(minutes=10)


def store_at(moment: datetime) -> RolloutStore:
    """A store whose writes carry `moment` (its clock): a rollout's past without waiting for it.
    The functions' own writes keep the real time."""
    return RolloutStore(PROJECT, clock=lambda: moment)


def test_a_redelivery_after_success_leaves_a_newer_canary_alone(functions, store, shop):
    """The on-call publishes {"service", "reason"}: canary B is rolled back. Canary C goes live
    and is registered; then Pub/Sub redelivers that message. It was carried out already, so it
    is a duplicate: C keeps its traffic, and publishing a new request rolls C back."""
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    message_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200 and live(shop) == AFTER
    deploy_canary(shop, canary="shop-00003")
    fresh = rollout_id(SHOP, "shop-00003")
    store.register(SHOP, "shop-00003", "shop-00001", canary_percent=5, started_by="test")

    _, again = publish_request(functions["rollback"], body, message_id=message_id)
    assert again.status_code == 200
    line = functions["rollback"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] == "duplicate" and line["mode"] == "manual"
    assert line["rollout"] == CANARY and line["canary_revision"] == "shop-00002"
    assert line["message"].startswith(f"request {message_id} was already carried out: rolled_back")
    assert live(shop) == {"shop-00001": 95, "shop-00003": 5}
    assert store.get(fresh).phase is Phase.RUNNING
    assert [c["method"] for c in shop.calls()].count("PATCH") == 1

    # A new request (a new message id), now that C is live: C is rolled back.
    second_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=second_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == {"shop-00001": 100, "shop-00003": 0}
    assert store.get(fresh).phase is Phase.ROLLED_BACK


def test_a_redelivered_dry_run_is_a_duplicate(functions, store, shop):
    body = {"service": "shop", "reason": "what would happen", "dry_run": True}
    message_id, _ = publish_request(functions["rollback"], body)
    _, again = publish_request(functions["rollback"], body, message_id=message_id)
    assert again.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "duplicate"
    assert [h["kind"] for h in store.history(CANARY)].count("rollback_dry_run") == 1
    assert live(shop) == BEFORE


@pytest.mark.parametrize("published_before", [timedelta(0), LATE], ids=["at once", "late"])
def test_a_redelivery_after_a_failed_first_attempt_rolls_back(
    functions, store, shop, published_before: timedelta
):
    """The first delivery registers the live canary and marks it ROLLING_BACK, then Cloud Run
    keeps failing: no marker, so the redelivery rolls the canary back, however long after the
    publish it comes."""
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    published = datetime.now(UTC) - published_before
    shop.inject_fault(503, count=100, methods=["PATCH"])
    message_id, first = publish_request(functions["rollback"], body, published=published)
    assert first.status_code == 500  # raised: Pub/Sub redelivers
    assert store.get(CANARY).phase is Phase.ROLLING_BACK
    assert store.rollback_marker(message_id) is None
    assert live(shop) == BEFORE

    shop.reset()
    deploy_canary(shop)
    _, again = publish_request(functions["rollback"], body, message_id=message_id, published=published)
    assert again.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == AFTER
    assert store.get(CANARY).phase is Phase.ROLLED_BACK
    assert store.rollback_marker(message_id).outcome == "rolled_back"


@pytest.mark.parametrize("registered_by", ["this request", "a checkpoint", "deploy event"])
def test_a_late_delivery_rolls_back_a_canary_registered_late(functions, store, shop, registered_by):
    """Canary A was registered; B was deployed during an outage and the on-call published a
    rollback before canary-guard registered B. The request is delivered 10 minutes after its
    publish, B registered meanwhile or by the delivery itself: B is rolled back (the old rule
    took B for a newer canary and dropped the emergency rollback)."""
    published = datetime.now(UTC) - LATE
    store_at(published - LATE).register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    deploy_canary(shop, canary="shop-00003")
    if registered_by != "this request":
        store.register(SHOP, "shop-00003", "shop-00001", canary_percent=5, started_by=registered_by)
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    message_id, response = publish_request(functions["rollback"], body, published=published)
    assert response.status_code == 200
    fresh = store.get(rollout_id(SHOP, "shop-00003"))
    assert fresh.created_at > published + LATE / 2 and store.get(CANARY).phase is Phase.SUPERSEDED
    line = functions["rollback"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] == "rolled_back" and line["rollout"] == fresh.id
    assert live(shop) == {"shop-00001": 100, "shop-00003": 0}
    assert fresh.phase is Phase.ROLLED_BACK


def test_a_carried_out_request_is_remembered_for_the_marker_ttl(functions, store, shop):
    """The rollback-message marker expires (Firestore TTL on expires_at) MARKER_TTL after it is
    written: long after Pub/Sub's last redelivery of that message."""
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    body = {"service": SHOP, "canary_revision": "shop-00002", "reason": "manual: bad canary"}
    message_id, response = publish_request(functions["rollback"], body)
    assert response.status_code == 200 and live(shop) == AFTER
    [marker] = [
        doc
        for snap in firestore.Client(project=PROJECT).collection(ROLLBACK_MESSAGES).stream()
        if (doc := snap.to_dict())["message_id"] == message_id
    ]
    assert marker[EXPIRES_AT] - marker["at"] == MARKER_TTL
