"""Rollback through the functions and the Cloud Run stand-in: the Pub/Sub-triggered rollback,
the emergency HTTP call, dry runs, idempotency and every injected control-plane fault."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from google.api_core import retry
from google.cloud import firestore, pubsub_v1

from infra.localstack import PROJECT, ROLLBACK_TOPIC, free_port, push_endpoint, wire_push
from shared.core import Phase
from shared.rollback import REGISTRATION_SLACK
from shared.store import Rollout, RolloutStore, rollout_id
from tests.conftest import API, API_EU, FOREIGN, SHOP, deploy_canary
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
    # Redelivery of the same request is a no-op that says so.
    _, again = publish_request(functions["rollback"], body)
    assert again.status_code == 200
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
    wire_push(PROJECT, ROLLBACK_TOPIC, "test-rollback-push", push_endpoint(port, PROJECT, ROLLBACK_TOPIC))
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
    assert API_EU.endswith("/api")


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
    from shared.cloudrun import CloudRunTraffic
    from shared.config import load_settings
    from shared.rollback import handle_emergency

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


# Well past REGISTRATION_SLACK: a rollout registered now went live after a request published then.
LONG_AGO = 2 * REGISTRATION_SLACK


@contextlib.contextmanager
def written_at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> Iterator[None]:
    """The store's writes in the block (this process's) carry `moment`: a rollout's past without
    waiting for it. The functions' own writes keep the real time."""
    with monkeypatch.context() as patch:
        patch.setattr("shared.store._now", lambda: moment)
        yield


def test_a_redelivered_request_naming_no_canary_leaves_a_newer_canary_alone(functions, store, shop):
    """The on-call publishes {"service", "reason"}: canary B is rolled back. Canary C goes live
    and canary-guard registers it, minutes later; then Pub/Sub redelivers that message. It was
    about B, so C keeps its traffic and the log says to publish again to roll C back."""
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    published = datetime.now(UTC) - LONG_AGO
    message_id, response = publish_request(functions["rollback"], body, published=published)
    assert response.status_code == 200 and live(shop) == AFTER
    deploy_canary(shop, canary="shop-00003")
    fresh = rollout_id(SHOP, "shop-00003")
    store.register(SHOP, "shop-00003", "shop-00001", canary_percent=5, started_by="test")

    _, again = publish_request(functions["rollback"], body, message_id=message_id, published=published)
    assert again.status_code == 200
    line = functions["rollback"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] == "superseded" and line["rollout"] == fresh and line["mode"] == "manual"
    assert "before canary shop-00003 started" in line["message"]
    assert "Publish it again" in line["message"]
    assert live(shop) == {"shop-00001": 95, "shop-00003": 5}
    assert store.get(fresh).phase is Phase.RUNNING
    assert [c["method"] for c in shop.calls()].count("PATCH") == 1

    # Published again, now that C is live: C is rolled back.
    second_id, response = publish_request(functions["rollback"], body, published=datetime.now(UTC))
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=second_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == {"shop-00001": 100, "shop-00003": 0}
    assert store.get(fresh).phase is Phase.ROLLED_BACK


@pytest.mark.parametrize("first_attempt_after", [timedelta(0), LONG_AGO], ids=["at once", "long after"])
def test_a_redelivery_after_a_failed_first_attempt_rolls_back_the_canary_it_registered(
    functions, store, shop, first_attempt_after: timedelta
):
    """The first delivery registers the live canary (after the publish time) and marks it
    ROLLING_BACK, then Cloud Run keeps failing. The redelivery is about that same canary: no
    other canary was live since the publish, so it rolls back instead of answering superseded,
    however long after the publish the first attempt ran."""
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    published = datetime.now(UTC) - first_attempt_after
    shop.inject_fault(503, count=100, methods=["PATCH"])
    message_id, first = publish_request(functions["rollback"], body, published=published)
    assert first.status_code == 500  # raised: Pub/Sub redelivers
    rollout = store.get(CANARY)
    assert rollout.phase is Phase.ROLLING_BACK and rollout.created_at > published
    assert live(shop) == BEFORE

    shop.reset()
    deploy_canary(shop)
    _, again = publish_request(functions["rollback"], body, message_id=message_id, published=published)
    assert again.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == AFTER
    assert store.get(CANARY).phase is Phase.ROLLED_BACK


@pytest.mark.parametrize("ended_before_publish", [False, True])
def test_a_canary_registered_long_after_the_publish_is_rolled_back_if_none_was_live_then(
    functions, store, shop, monkeypatch, ended_before_publish
):
    """A checkpoint registers the live canary well after the publish, and no other canary was
    live at the publish (none at all, or one that had already ended): nothing newer replaced
    what the request was about, so the canary is rolled back."""
    published = datetime.now(UTC) - LONG_AGO
    if ended_before_publish:
        with written_at(monkeypatch, published - REGISTRATION_SLACK):
            store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
            assert store.set_phase(CANARY, Phase.ROLLED_BACK, "rolled_back", {}, only_from={Phase.RUNNING})
        deploy_canary(shop, canary="shop-00003")
    canary = "shop-00003" if ended_before_publish else "shop-00002"
    store.register(SHOP, canary, "shop-00001", canary_percent=5, started_by="discovered by checkpoint")
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    message_id, response = publish_request(functions["rollback"], body, published=published)
    assert response.status_code == 200
    assert functions["rollback"].logs_for(event_id=message_id)[-1]["outcome"] == "rolled_back"
    assert live(shop) == {"shop-00001": 100, canary: 0}
    assert store.get(rollout_id(SHOP, canary)).phase is Phase.ROLLED_BACK


def request_after_a_new_canary(
    functions,
    store: RolloutStore,
    shop,
    monkeypatch: pytest.MonkeyPatch,
    published: datetime,
    registered_by: str,
) -> dict:
    """Canary A registered before `published`, B deployed since; B registered now (unless by
    "this request"), then the request naming no canary, published at `published`, delivered.
    The delivery's log line."""
    with written_at(monkeypatch, published - REGISTRATION_SLACK):
        store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    deploy_canary(shop, canary="shop-00003")
    if registered_by != "this request":
        store.register(SHOP, "shop-00003", "shop-00001", canary_percent=5, started_by=registered_by)
    body = {"service": "shop", "reason": "checkout errors", "requested_by": "oncall"}
    message_id, response = publish_request(functions["rollback"], body, published=published)
    assert response.status_code == 200
    assert store.get(rollout_id(SHOP, "shop-00003")).created_at > published
    assert store.get(CANARY).phase is Phase.SUPERSEDED
    return functions["rollback"].logs_for(event_id=message_id)[-1]


@pytest.mark.parametrize(
    ("registered_by", "after_publish"),
    [("this request", timedelta(0)), ("a checkpoint", REGISTRATION_SLACK / 3)],
)
def test_a_canary_deployed_before_the_publish_is_rolled_back_though_registered_after_it(
    functions, store, shop, monkeypatch, registered_by, after_publish
):
    """Canary A was registered; B was deployed by hand and the on-call published a rollback
    before canary-guard registered B. Registering B (by this delivery, or a checkpoint a minute
    after the publish) ends A after the publish, yet B is what the request is about: rolled back."""
    published = datetime.now(UTC) - after_publish
    line = request_after_a_new_canary(functions, store, shop, monkeypatch, published, registered_by)
    assert line["outcome"] == "rolled_back" and line["rollout"] == rollout_id(SHOP, "shop-00003")
    assert live(shop) == {"shop-00001": 100, "shop-00003": 0}
    assert store.get(rollout_id(SHOP, "shop-00003")).phase is Phase.ROLLED_BACK


@pytest.mark.parametrize("registered_by", ["deploy event", "this request"])
def test_a_canary_registered_long_after_the_publish_while_another_was_live_is_left_alone(
    functions, store, shop, monkeypatch, registered_by
):
    """Canary A was live when the request was published; B went live more than the slack later
    and was registered (by its deploy event, or by this late delivery) before the delivery:
    the request was about A, so B keeps its traffic."""
    published = datetime.now(UTC) - LONG_AGO
    line = request_after_a_new_canary(functions, store, shop, monkeypatch, published, registered_by)
    assert line["outcome"] == "superseded" and line["rollout"] == rollout_id(SHOP, "shop-00003")
    assert "canary shop-00002 was live in between" in line["message"]
    assert live(shop) == {"shop-00001": 95, "shop-00003": 5}
    assert [c["method"] for c in shop.calls()].count("PATCH") == 0
