"""Hostile input against the real entry points (functions-framework, the emulators, the Cloud
Run stand-in): nothing a sender controls makes a function answer 5xx or touch traffic.

Pub/Sub-triggered functions (breach_counter, rollback, notify, checkpoint_worker) must
acknowledge every malformed message (2xx, so Pub/Sub never redelivers it); the on-call's HTTP
function answers 4xx with a JSON message. Generated cases are derandomized and bounded so CI
stays fast; the classes a hostile run found are kept as named regression cases.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.localstack import PROJECT, ROLLBACK_TOPIC
from infra.metrics_feed import Minute
from tests.conftest import SHOP, deploy_canary
from tests.payloads import cloudevent_data, incident_message
from tests.test_pipeline import post_event, serve

pytestmark = pytest.mark.emulators
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
incident_fields = st.fixed_dictionaries(
    {},
    optional={
        "incident_id": json_values,
        "state": st.sampled_from(["open", "closed", "OPEN", "", "bogus"]) | json_values,
        "started_at": st.integers(-(2**63), 2**63) | json_values,
        "resource": json_values
        | st.fixed_dictionaries(
            {
                "labels": st.dictionaries(
                    st.sampled_from(["service_name", "revision_name", "location", "project_id"]),
                    st.text(max_size=300),
                )
            }
        ),
        "policy_user_labels": json_values
        | st.fixed_dictionaries(
            {"canary_rule": st.sampled_from(["error_rate", "memory", "canary_down", "nope"])}
        ),
        "observed_value": json_values,
    },
)
hostile_payloads = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | incident_fields.map(lambda inc: json.dumps({"version": "1.2", "incident": inc}).encode())
    | st.integers(100, 5000).map(lambda n: ("[" * n + "]" * n).encode())
)
message_ids = st.text(min_size=1, max_size=30) | st.sampled_from([".", "..", "__x__", "a/b", "x" * 2000])


def raw_event(payload: bytes, message_id: str) -> dict:
    return {
        "subscription": f"projects/{PROJECT}/subscriptions/s",
        "message": {
            "data": base64.b64encode(payload).decode(),
            "messageId": message_id,
            "publishTime": "2024-05-01T10:00:00Z",
        },
    }


def incident_on_a_bad_minute(monitoring, traffic: Minute) -> dict:
    """One minute of the canary's `traffic` in the Monitoring stand-in (an hour ago), and the
    error_rate incident it opened."""
    opened = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    serve(monitoring, traffic, opened)
    return incident_message(
        rule="error_rate",
        revision="shop-00002",
        project=PROJECT,
        location="us-central1",
        started_at=int(opened.timestamp()),
    )


def post_raw(fn, data: dict, *, event_id: str, topic: str = "canary-alerts") -> requests.Response:
    return post_event(fn, data, event_id=event_id[:200] or "x", topic=topic)


@pytest.fixture
def served(functions, firestore_clean, cloudrun, monitoring, rollback_requests):
    deploy_canary(cloudrun)
    return functions


def traffic(cloudrun) -> list:
    return cloudrun.service(SHOP)["traffic"]


@FUZZ
@given(payload=hostile_payloads, message_id=message_ids)
def test_breach_counter_acknowledges_any_payload_and_never_moves_traffic(
    served, cloudrun, payload, message_id
):
    before = traffic(cloudrun)
    answer = post_raw(served["breach_counter"], raw_event(payload, message_id), event_id=uuid.uuid4().hex)
    assert answer.status_code < 500, answer.text[:300]
    assert traffic(cloudrun) == before


@FUZZ
@given(body=json_values | incident_fields, message_id=message_ids)
def test_rollback_acknowledges_any_request_and_moves_nothing_unless_valid(served, cloudrun, body, message_id):
    before = traffic(cloudrun)
    data = raw_event(json.dumps(body).encode(), message_id)
    answer = post_raw(served["rollback"], data, event_id=uuid.uuid4().hex, topic=ROLLBACK_TOPIC)
    assert answer.status_code < 500, answer.text[:300]
    valid = (
        isinstance(body, dict)
        and isinstance(body.get("service"), str)
        and isinstance(body.get("reason"), str)
    )
    if not valid:
        assert traffic(cloudrun) == before


@FUZZ
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_emergency_rollback_answers_4xx_with_a_message_to_any_bad_body(served, cloudrun, body):
    before = traffic(cloudrun)
    answer = requests.post(served["emergency_rollback"].url + "/", data=body, timeout=30)
    if answer.status_code == 200:  # a body that happens to be a valid request
        return
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    message = answer.json()
    assert message.get("error") or message.get("message")
    assert traffic(cloudrun) == before


# --- named regression cases from the hostile-input run -------------------------------------


def test_deeply_nested_json_is_acknowledged_with_its_reason(served, cloudrun):
    nested = ("[" * 5000 + "]" * 5000).encode()
    message_id = uuid.uuid4().hex
    answer = post_raw(served["breach_counter"], raw_event(nested, message_id), event_id=message_id)
    assert answer.status_code == 200
    [line] = served["breach_counter"].logs_for(event_id=message_id)
    assert line["outcome"] == "malformed" and "nests deeper than" in line["message"]
    rollback = post_raw(
        served["rollback"], raw_event(nested, message_id), event_id=message_id, topic=ROLLBACK_TOPIC
    )
    assert rollback.status_code == 200
    http = requests.post(served["emergency_rollback"].url + "/", data=nested, timeout=30)
    assert http.status_code == 400 and "nests deeper than" in http.json()["error"]


@pytest.mark.parametrize("message_id", [".", "..", "__x__", "x" * 1600, "a/b/c"])
def test_message_ids_firestore_would_refuse_still_work(served, monitoring, message_id):
    """Every document id is derived (a hash), so a hostile message id is a plain event."""
    payload = incident_on_a_bad_minute(monitoring, Minute(requests=200, errors=10))
    data = cloudevent_data(payload, message_id=message_id)
    answer = post_raw(served["breach_counter"], data, event_id=message_id)
    assert answer.status_code == 200, answer.text[:300]
    again = post_raw(served["breach_counter"], data, event_id=message_id)
    assert again.status_code == 200
    lines = [ln for ln in served["breach_counter"].log_lines() if ln.get("rule") == "error_rate"]
    if len(message_id) > 512:  # not a Pub/Sub id: acknowledged as malformed
        assert any(ln.get("outcome") == "malformed" for ln in served["breach_counter"].log_lines())
    else:
        assert [ln["outcome"] for ln in lines[-2:]] == ["counted", "duplicate"]


@pytest.mark.parametrize(
    "field", ["incident_id", "observed_value", "threshold_value", "policy_name", "summary"]
)
def test_megabyte_fields_are_acknowledged_not_retried(served, field):
    payload = incident_message(
        rule="error_rate", revision="shop-00002", project=PROJECT, location="us-central1"
    )
    payload["incident"][field] = "x" * 1_000_000
    message_id = uuid.uuid4().hex
    answer = post_raw(
        served["breach_counter"], cloudevent_data(payload, message_id=message_id), event_id=message_id
    )
    assert answer.status_code == 200
    [line] = served["breach_counter"].logs_for(event_id=message_id)
    assert line["severity"] == "WARNING" and "byte limit" in line["message"]


def test_fields_under_the_payload_limit_are_cut_before_they_are_stored(served, monitoring):
    payload = incident_message(
        rule="error_rate", revision="shop-00002", project=PROJECT, location="us-central1"
    )
    payload["incident"]["incident_id"] = "i" * 100_000
    message_id = uuid.uuid4().hex
    answer = post_raw(
        served["breach_counter"], cloudevent_data(payload, message_id=message_id), event_id=message_id
    )
    assert answer.status_code == 200, answer.text[:200]
    line = served["breach_counter"].logs_for(event_id=message_id)[-1]
    assert line["outcome"] in ("counted", "unchanged"), line
    assert line["incident_id"].startswith("iii") and len(line["incident_id"]) < 600


def test_oversized_http_bodies_get_413(served):
    answer = requests.post(
        served["emergency_rollback"].url + "/", data=b"{" + b" " * 300_000 + b"}", timeout=30
    )
    assert answer.status_code == 413 and "byte limit" in answer.json()["error"]


def test_the_functions_still_serve_a_valid_event_after_the_storm(
    served, monitoring, cloudrun, rollback_requests
):
    """After hostile input, a real emergency rollback still works."""
    requests.post(served["emergency_rollback"].url + "/", data=b"[" * 4000, timeout=30)
    body = {"service": "shop", "reason": "fuzz done", "dry_run": False}
    answer = requests.post(served["emergency_rollback"].url + "/", json=body, timeout=60)
    assert answer.status_code == 200 and answer.json()["status"] == "rolled_back"
    assert {t["revision"]: t.get("percent", 0) for t in traffic(cloudrun) if t.get("percent")} == {
        "shop-00001": 100
    }


@pytest.fixture
def counter_without_rollback_topic(function_env, log_dir):
    from infra.localstack import free_port, serve_function
    from tests.conftest import ServedFunction

    port = free_port()
    env = {**function_env, "ROLLBACK_TOPIC": f"missing-{uuid.uuid4().hex[:8]}"}
    process = serve_function("breach_counter", port, env, log_dir)
    yield ServedFunction("breach_counter", f"http://127.0.0.1:{port}", process.log_path)
    process.stop()


def test_a_permanent_failure_is_acknowledged_and_the_outbox_keeps_the_rollback(
    counter_without_rollback_topic, firestore_clean, cloudrun, monitoring
):
    """The rollback topic does not exist (a deploy mistake): Pub/Sub's NotFound is permanent, so
    the alert is acknowledged with an ERROR line instead of being redelivered until dead-lettered;
    the requested rollback stays in Firestore for the checkpoint to re-send."""

    from shared.clients.store import RolloutStore, rollout_id

    deploy_canary(cloudrun)
    payload = incident_on_a_bad_minute(monitoring, Minute(requests=40, errors=40))
    message_id = uuid.uuid4().hex
    fn = counter_without_rollback_topic
    answer = post_raw(fn, cloudevent_data(payload, message_id=message_id), event_id=message_id)
    assert answer.status_code == 200
    [line] = fn.logs_for(event_id=message_id)
    assert line["severity"] == "ERROR" and line["outcome"] == "dropped" and "NotFound" in line["message"]
    rollout = RolloutStore(PROJECT).get(rollout_id(SHOP, "shop-00002"))
    assert rollout.rollback_requested and rollout.rollback_pending


@pytest.fixture(scope="module")
def notify(function_env, log_dir):
    """notify with a webhook that records what it is sent: nothing hostile may reach it."""
    from infra.chat_webhook import ChatWebhook
    from infra.localstack import free_port, serve_function
    from tests.conftest import ServedFunction

    hook = ChatWebhook()
    port = free_port()
    process = serve_function("notify", port, {**function_env, "CHAT_WEBHOOK_URL": hook.url}, log_dir)
    yield ServedFunction("notify", f"http://127.0.0.1:{port}", process.log_path), hook
    process.stop()
    hook.stop()


notification_shapes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=40) | json_values,
        "rollout": st.text(max_size=40) | json_values,
        "kind": st.sampled_from(["rolled_back", "started", "load_test", "x"]) | json_values,
        "at": st.text(max_size=30) | json_values,
        "data": json_values,
    },
)


@FUZZ
@given(
    payload=hostile_payloads | notification_shapes.map(lambda n: json.dumps(n).encode()),
    message_id=message_ids,
)
def test_notify_acknowledges_any_message_and_posts_nothing_it_did_not_decide(
    notify, firestore_clean, payload, message_id
):
    fn, hook = notify
    hook.received.clear()
    answer = post_raw(
        fn, raw_event(payload, message_id), event_id=uuid.uuid4().hex, topic="canary-notifications"
    )
    assert answer.status_code < 500, answer.text[:300]
    assert hook.received == []


@pytest.fixture(scope="module")
def checkpoint_worker(function_env, log_dir):
    from infra.localstack import free_port, serve_function
    from tests.conftest import ServedFunction

    port = free_port()
    process = serve_function("checkpoint_worker", port, function_env, log_dir)
    yield ServedFunction("checkpoint_worker", f"http://127.0.0.1:{port}", process.log_path)
    process.stop()


checkpoint_shapes = st.fixed_dictionaries(
    {},
    optional={
        "service": st.sampled_from([SHOP, "shop", "api", "not-watched", ""]) | json_values,
        "now": st.sampled_from(["2026-12-04T12:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
        | json_values,
        "read": st.fixed_dictionaries({"start": json_values, "end": json_values}) | json_values,
        "minutes": st.fixed_dictionaries(
            {
                "layouts": json_values,
                "revisions": st.dictionaries(st.text(max_size=12), json_values, max_size=3),
            }
        )
        | json_values,
    },
)


@FUZZ
@given(
    payload=hostile_payloads | checkpoint_shapes.map(lambda m: json.dumps(m).encode()),
    message_id=message_ids,
)
def test_checkpoint_worker_acknowledges_any_message_and_never_moves_traffic(
    checkpoint_worker, served, cloudrun, payload, message_id
):
    before = traffic(cloudrun)
    answer = post_raw(
        checkpoint_worker,
        raw_event(payload, message_id),
        event_id=uuid.uuid4().hex,
        topic="canary-checkpoints",
    )
    assert answer.status_code < 500, answer.text[:300]
    assert traffic(cloudrun) == before
