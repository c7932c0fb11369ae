"""Decoding (shared/events.py): CloudEvent data in both shapes → Pub/Sub message → incident or
rollback request, the malformed-payload catalogue, and the caller identity from a bearer token."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import Settings, load_settings
from shared.core.ledger import Kind, Observation
from shared.events import (
    REVISION_LABELS,
    AlertObservation,
    MalformedEvent,
    PubSubMessage,
    RollbackRequest,
    caller_identity,
    decode_alert,
    decode_rollback_request,
    parse_time,
    pubsub_message,
)
from shared.policy import RULE_NAMES
from tests.payloads import (
    BASE_TIME,
    CANARY_REVISION,
    DROP,
    LOCATION,
    PROJECT,
    PUBSUB_MESSAGE_TYPE,
    SERVICE,
    SERVICE_NAME,
    at,
    bearer_token,
    cloudevent_data,
    console_test_notification,
    encode,
    grouped_incident_message,
    incident_message,
    iso,
    rollback_request,
)

DEFAULT_PROJECT = "fallback-project"
SHAPES = ["eventarc", "push"]


def decode(payload: object, **kwargs: object) -> AlertObservation:
    """CloudEvent data → AlertObservation, the way breach_counter decodes it."""
    data = cloudevent_data(payload, **kwargs)
    return decode_alert(pubsub_message(data), DEFAULT_PROJECT)


def message(payload: object, *, message_id: str = "m-1", when: datetime = BASE_TIME) -> PubSubMessage:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return PubSubMessage(message_id, when, raw, {})


# --------------------------------------------------------------------------- the payload builders


def test_builder_shapes_match_the_two_delivery_paths():
    eventarc = cloudevent_data({"a": 1}, message_id="7", publish_time=at(5), attributes={"k": "v"})
    assert eventarc == {
        "subscription": f"projects/{PROJECT}/subscriptions/eventarc-canary-alerts-sub",
        "message": {
            "data": base64.b64encode(b'{"a": 1}').decode(),
            "attributes": {"k": "v"},
            "messageId": "7",
            "publishTime": "2024-05-01T10:00:05.000Z",
        },
    }
    push = cloudevent_data({"a": 1}, message_id="7", publish_time=at(5), shape="push")
    assert set(push) == {"message"}
    assert push["message"]["@type"] == PUBSUB_MESSAGE_TYPE
    assert push["message"]["messageId"] == "7"
    body = incident_message(rule="memory", state="closed")
    assert body["version"] == "1.2"
    incident = body["incident"]
    assert incident["policy_user_labels"]["canary_rule"] == "memory"
    assert incident["resource"] == {
        "type": "cloud_run_revision",
        "labels": {
            "service_name": SERVICE,
            "revision_name": CANARY_REVISION,
            "location": LOCATION,
            "project_id": PROJECT,
        },
    }
    assert isinstance(incident["threshold_value"], str) and isinstance(incident["observed_value"], str)
    assert isinstance(incident["ended_at"], int)
    assert incident_message(state="open")["incident"]["ended_at"] is None
    assert "canary_rule" not in incident_message(rule=None)["incident"]["policy_user_labels"]
    assert "version" not in incident_message(version=DROP)
    assert "incident_id" not in incident_message(incident_id=DROP)["incident"]
    assert "state" not in incident_message(state=DROP)["incident"]


# --------------------------------------------------------------------------- pubsub_message


@pytest.mark.parametrize("shape", SHAPES)
def test_pubsub_message_from_both_shapes(shape):
    data = cloudevent_data(
        {"hello": "world"},
        message_id="12345",
        publish_time="2024-05-01T10:00:05.123Z",
        attributes={"origin": "test"},
        shape=shape,
    )
    msg = pubsub_message(data)
    assert msg.message_id == "12345"
    assert msg.publish_time == datetime(2024, 5, 1, 10, 0, 5, 123000, tzinfo=UTC)
    assert msg.data == b'{"hello": "world"}'
    assert msg.attributes == {"origin": "test"}
    assert msg.json() == {"hello": "world"}


def test_pubsub_message_with_snake_case_keys():
    data = cloudevent_data({"x": 1}, message_id="99", publish_time="2024-05-01T10:00:00Z", keys="snake")
    assert "message_id" in data["message"] and "messageId" not in data["message"]
    msg = pubsub_message(data)
    assert msg.message_id == "99"
    assert msg.publish_time == BASE_TIME


def test_pubsub_message_takes_id_and_time_from_the_cloudevent_when_the_message_lacks_them():
    data = cloudevent_data({"x": 1}, messageId=DROP, publishTime=DROP)
    msg = pubsub_message(data, fallback_id="ce-7", fallback_time="2024-05-01T10:00:09Z")
    assert msg.message_id == "ce-7"
    assert msg.publish_time == at(9)


def test_pubsub_message_prefers_the_message_id_over_the_fallback():
    msg = pubsub_message(
        cloudevent_data({}, message_id="m-1"), fallback_id="ce-2", fallback_time="2020-01-01T00:00:00Z"
    )
    assert msg.message_id == "m-1"
    assert msg.publish_time == BASE_TIME


def test_pubsub_message_nanosecond_publish_time():
    msg = pubsub_message(cloudevent_data({}, publish_time="2024-05-01T10:00:00.123456789Z"))
    assert msg.publish_time == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def test_pubsub_message_without_data_or_attributes():
    msg = pubsub_message({"message": {"messageId": "1", "publishTime": "2024-05-01T10:00:00Z"}})
    assert msg.data == b""
    assert msg.attributes == {}
    with pytest.raises(MalformedEvent, match="not JSON"):
        msg.json()


def test_pubsub_message_attributes_are_copied():
    attributes = {"a": "1"}
    data = cloudevent_data({}, attributes=attributes)
    msg = pubsub_message(data)
    data["message"]["attributes"]["b"] = "2"
    assert msg.attributes == {"a": "1"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(None, "no Pub/Sub 'message' object", id="none"),
        pytest.param([], "no Pub/Sub 'message' object", id="list"),
        pytest.param({}, "no Pub/Sub 'message' object", id="missing-message"),
        pytest.param({"message": "hello"}, "no Pub/Sub 'message' object", id="message-not-object"),
        pytest.param({"subscription": "s"}, "no Pub/Sub 'message' object", id="subscription-only"),
        pytest.param(cloudevent_data({}, messageId=DROP), "no messageId", id="missing-id"),
        pytest.param(cloudevent_data({}, messageId=""), "no messageId", id="empty-id"),
        pytest.param(cloudevent_data({}, publishTime=DROP), "missing or not a timestamp", id="missing-time"),
        pytest.param(
            cloudevent_data({}, publishTime="yesterday"), "'yesterday' is not RFC 3339", id="bad-time"
        ),
        pytest.param(cloudevent_data({}, data="!!!not base64!!!"), "not valid base64", id="bad-base64"),
        pytest.param(cloudevent_data({}, data="abc"), "not valid base64", id="bad-base64-padding"),
        pytest.param(
            cloudevent_data({}, attributes=["a", "b"]), "attributes are not an object", id="attrs-list"
        ),
        pytest.param(
            cloudevent_data({}, attributes="a=b"), "attributes are not an object", id="attrs-string"
        ),
    ],
)
def test_pubsub_message_malformed(data, reason):
    with pytest.raises(MalformedEvent, match=reason):
        pubsub_message(data)


def test_parse_time():
    assert parse_time("2024-05-01T10:00:00Z") == BASE_TIME
    assert parse_time("2024-05-01T12:00:00+02:00") == BASE_TIME
    assert parse_time("2024-05-01T10:00:00") == BASE_TIME  # naive → UTC
    assert parse_time(BASE_TIME.timestamp()) == BASE_TIME
    assert parse_time(int(BASE_TIME.timestamp())) == BASE_TIME
    assert parse_time("2024-05-01T10:00:00Z").tzinfo is not None
    for bad in ("", None, True, [], "10 o'clock"):
        with pytest.raises(MalformedEvent):
            parse_time(bad)


@pytest.mark.parametrize("value", [1e20, -1e20, float("inf"), float("nan")])
def test_an_out_of_range_numeric_time_is_malformed(value):
    with pytest.raises(MalformedEvent):
        pubsub_message({"message": {"messageId": "1", "publishTime": value}})


# --------------------------------------------------------------------------- decode_alert


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_an_open_incident_is_a_breach(rule, shape):
    payload = incident_message(rule=rule, state="open", incident_id="0.nabc123", observed_value="0.07")
    alert = decode(payload, message_id="4711", publish_time=at(42), shape=shape)
    assert alert.service_name == SERVICE_NAME
    assert alert.revision == CANARY_REVISION
    assert alert.incident_id == "0.nabc123"
    o = alert.observation
    assert isinstance(o, Observation)
    assert o.rule == rule
    assert o.kind is Kind.BREACH
    assert o.event_time == at(42)  # publish time, not the incident's started_at
    assert o.event_id == "4711"
    assert o.source == "alert"
    assert o.detail["incident_id"] == "0.nabc123"
    assert o.detail["state"] == "open"
    assert o.detail["observed_value"] == "0.07"
    assert o.detail["threshold_value"] == payload["incident"]["threshold_value"]
    assert o.detail["policy"] == payload["incident"]["policy_name"]


@pytest.mark.parametrize("state", ["closed", "CLOSED", "Closed"])
def test_a_closed_incident_is_a_recovery(state):
    alert = decode(incident_message(rule="latency_p95", state=state))
    assert alert.observation.kind is Kind.RECOVERY
    assert alert.observation.rule == "latency_p95"
    assert alert.observation.detail["state"] == "closed"


def test_upper_case_open_is_a_breach():
    alert = decode(incident_message(state="OPEN"))
    assert alert.observation.kind is Kind.BREACH
    assert alert.observation.detail["state"] == "open"


def test_event_time_is_the_publish_time_not_the_incident_time():
    payload = incident_message(started_at=0)
    assert decode(payload, publish_time="2024-05-01T10:07:00Z").observation.event_time == at(420)


def test_renotifications_of_one_incident_are_distinct_observations():
    payload = incident_message(incident_id="0.same")
    first = decode(payload, message_id="1", publish_time=at(0)).observation
    second = decode(payload, message_id="2", publish_time=at(1800)).observation
    assert (first.event_id, second.event_id) == ("1", "2")
    assert first.detail["incident_id"] == second.detail["incident_id"] == "0.same"
    assert second.event_time > first.event_time


def test_project_comes_from_the_resource_labels_first():
    alert = decode(incident_message(project="label-project", scoping_project="scoping-project"))
    assert alert.service_name == f"projects/label-project/locations/{LOCATION}/services/{SERVICE}"


def test_project_falls_back_to_the_scoping_project():
    payload = incident_message(scoping_project="scoping-project", resource_labels={"project_id": DROP})
    assert decode(payload).service_name == f"projects/scoping-project/locations/{LOCATION}/services/{SERVICE}"


def test_project_falls_back_to_the_default_project():
    payload = incident_message(resource_labels={"project_id": DROP}, scoping_project_id=DROP)
    assert (
        decode(payload).service_name == f"projects/{DEFAULT_PROJECT}/locations/{LOCATION}/services/{SERVICE}"
    )
    payload = incident_message(resource_labels={"project_id": ""}, scoping_project="")
    assert decode(payload).service_name.startswith(f"projects/{DEFAULT_PROJECT}/")


def test_numeric_version_1_2_is_accepted():
    assert decode(incident_message(version=1.2)).observation.rule == "error_rate"


def test_unknown_incident_fields_are_ignored():
    payload = incident_message(brand_new_field={"x": 1})
    payload["future_top_level"] = True
    assert decode(payload).observation.rule == "error_rate"


# A catalogue of payloads that can never become an observation. Each must raise MalformedEvent
# whose message names the problem (the entry point logs it and acknowledges the message).
CATALOGUE = [
    pytest.param(b"this is not json", "not JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage", "not JSON", id="not-utf8"),
    pytest.param(b"", "not JSON", id="empty-data"),
    pytest.param([1, 2, 3], "not a JSON object", id="json-array"),
    pytest.param(b'"just a string"', "not a JSON object", id="json-string"),
    pytest.param(None, "not a JSON object", id="json-null"),
    pytest.param(console_test_notification(), "test notification", id="console-test-notification"),
    pytest.param(incident_message(version="TEST"), "test notification", id="version-TEST"),
    pytest.param(
        incident_message(version="1.1"), "unsupported incident schema version '1.1'", id="version-1.1"
    ),
    pytest.param(incident_message(version=DROP), "unsupported incident schema version ''", id="no-version"),
    pytest.param({"version": "1.2"}, "incident is invalid", id="missing-incident"),
    pytest.param({"version": "1.2", "incident": "open"}, "incident is invalid", id="incident-not-object"),
    pytest.param(incident_message(incident_id=DROP), "incident_id: Field required", id="missing-incident_id"),
    pytest.param(incident_message(state=DROP), "state: Field required", id="missing-state"),
    pytest.param(
        incident_message(state="acknowledged"), "'acknowledged' is neither open nor closed", id="bad-state"
    ),
    pytest.param(incident_message(state=""), "is neither open nor closed", id="empty-state"),
    pytest.param(incident_message(state=1), "state", id="state-not-string"),
    pytest.param(
        incident_message(rule="cpu"),
        "canary_rule='cpu'; expected one of error_rate, latency_p95, memory, canary_down",
        id="unknown-canary_rule",
    ),
    pytest.param(
        incident_message(rule="ERROR_RATE"), "canary_rule='ERROR_RATE'", id="upper-case-canary_rule"
    ),
    pytest.param(incident_message(rule=None), "canary_rule=''", id="missing-canary_rule-label"),
    pytest.param(incident_message(policy_user_labels=DROP), "canary_rule=''", id="no-policy-user-labels"),
    pytest.param(
        incident_message(resource_labels={"revision_name": DROP}),
        "lacks label(s) revision_name",
        id="no-revision",
    ),
    pytest.param(
        incident_message(resource_labels={"service_name": DROP}),
        "lacks label(s) service_name and alert policy canary-error_rate has no canary_service user label",
        id="no-service",
    ),
    pytest.param(
        grouped_incident_message("revision_name", canary_service=None),
        "lacks label(s) service_name, location and alert policy canary-error_rate has no "
        f"canary_service user label: no service for revision {CANARY_REVISION}",
        id="grouped-by-revision-without-canary_service",
    ),
    pytest.param(
        incident_message(resource_labels={"revision_name": ""}),
        "lacks label(s) revision_name",
        id="empty-revision",
    ),
    pytest.param(
        incident_message(resource=DROP),
        "lacks label(s) service_name, revision_name, location",
        id="no-resource",
    ),
    pytest.param(
        # An uptime check on the canary's tag URL reports an `uptime_url` resource (host, project_id),
        # not a Cloud Run revision: it cannot be mapped to a revision.
        incident_message(
            rule="canary_down",
            resource={
                "type": "uptime_url",
                "labels": {"host": "canary---shop.run.app", "project_id": PROJECT},
            },
        ),
        "lacks label(s) service_name, revision_name, location",
        id="uptime-url-resource",
    ),
    pytest.param(
        incident_message(resource_labels={"revision_name": 2}), "incident is invalid", id="label-not-string"
    ),
    pytest.param(
        incident_message(policy_user_labels=["canary_rule"]), "incident is invalid", id="user-labels-list"
    ),
]


@pytest.mark.parametrize(("payload", "reason"), CATALOGUE)
@pytest.mark.parametrize("shape", SHAPES)
def test_malformed_alert_catalogue(payload, reason, shape):
    data = cloudevent_data(payload, shape=shape)  # bytes go into `data` as they are
    with pytest.raises(MalformedEvent) as info:
        decode_alert(pubsub_message(data), DEFAULT_PROJECT)
    assert reason in str(info.value)


def test_missing_incident_reason_names_the_incident():
    with pytest.raises(MalformedEvent) as info:
        decode_alert(message({"version": "1.2"}), DEFAULT_PROJECT)
    assert str(info.value).startswith("incident is invalid: incident: ")


def test_a_missing_canary_rule_names_the_policy():
    with pytest.raises(MalformedEvent, match="alert policy canary-unlabelled has canary_rule=''"):
        decode_alert(message(incident_message(rule=None)), DEFAULT_PROJECT)


def test_several_missing_labels_are_all_named():
    payload = incident_message(
        resource_labels={"service_name": DROP, "revision_name": DROP, "location": DROP}
    )
    with pytest.raises(MalformedEvent, match=r"lacks label\(s\) service_name, revision_name, location$"):
        decode_alert(message(payload), DEFAULT_PROJECT)


# Metric policies aggregate with a cross-series reducer, which drops every resource label not
# in group_by_fields. Terraform groups by all three (tests/test_terraform_alerting.py checks it); an
# incident from a policy grouped by less still decodes when its canary_service label names the
# service.


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", ["error_rate", "latency_p95", "memory"])
def test_an_incident_grouped_by_all_revision_labels_names_the_full_service(rule, shape):
    alert = decode(grouped_incident_message(*REVISION_LABELS, rule=rule), shape=shape)
    assert (alert.service_name, alert.revision) == (SERVICE_NAME, CANARY_REVISION)
    assert alert.observation.rule == rule


@pytest.mark.parametrize("shape", SHAPES)
def test_an_incident_grouped_by_revision_only_names_the_labelled_service(shape):
    payload = grouped_incident_message("revision_name", rule="latency_p95", state="closed")
    assert set(payload["incident"]["resource"]["labels"]) == {"revision_name", "project_id"}
    alert = decode(payload, shape=shape)
    # No location: the short name, which breach_counter resolves among the watched services
    # (Settings.resolve_service refuses it when two watched services share it).
    assert (alert.service_name, alert.revision) == (SERVICE, CANARY_REVISION)
    assert alert.observation.rule == "latency_p95"
    assert alert.observation.kind is Kind.RECOVERY


def test_an_incident_with_a_location_but_no_service_label_is_named_in_full():
    alert = decode(grouped_incident_message("revision_name", "location", canary_service=SERVICE))
    assert (alert.service_name, alert.revision) == (SERVICE_NAME, CANARY_REVISION)


def test_an_incident_without_location_keeps_its_service_label_over_the_policy_label():
    payload = grouped_incident_message("revision_name", "service_name", canary_service="other")
    assert decode(payload).service_name == SERVICE


def test_the_short_name_of_a_revision_only_incident_resolves_only_when_unambiguous():
    alert = decode(grouped_incident_message("revision_name"))

    def watching(*services: str) -> Settings:
        return load_settings({"GOOGLE_CLOUD_PROJECT": PROJECT, "CANARY_SERVICES": ",".join(services)})

    watched = watching(SERVICE_NAME, "projects/p/locations/us-east1/services/api")
    assert watched.resolve_service(alert.service_name).name == SERVICE_NAME
    with pytest.raises(ValueError, match=f"service '{SERVICE}' is ambiguous"):
        watching(SERVICE_NAME, f"projects/p/locations/us-east1/services/{SERVICE}").resolve_service(
            alert.service_name
        )


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_property_arbitrary_json_is_decoded_or_refused_never_crashes(body):
    try:
        alert = decode_alert(message(body), DEFAULT_PROJECT)
    except MalformedEvent:
        return
    assert alert.observation.rule in RULE_NAMES  # only a full, valid incident gets through


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_property_arbitrary_bytes_never_crash(raw):
    with pytest.raises(MalformedEvent):
        decode_alert(message(raw), DEFAULT_PROJECT)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["incident_id", "state", "resource", "policy_user_labels", "scoping_project_id", "ended_at"]
        ),
        st.none()
        | st.integers()
        | st.text(max_size=6)
        | st.dictionaries(st.text(max_size=6), st.text(max_size=6)),
    )
)
def test_property_mangled_incident_fields_are_decoded_or_refused(overrides):
    payload = incident_message(**overrides)
    try:
        alert = decode_alert(message(payload), DEFAULT_PROJECT)
    except MalformedEvent:
        return
    assert alert.observation.rule in RULE_NAMES
    assert alert.observation.kind in (Kind.BREACH, Kind.RECOVERY)


# --------------------------------------------------------------------------- rollback requests


def test_a_valid_rollback_request():
    request = decode_rollback_request(rollback_request(reason="  5xx spike  ", dry_run=True))
    assert request == RollbackRequest(service=SERVICE_NAME, reason="5xx spike", dry_run=True)
    assert request.requested_by == "" and request.canary_revision == "" and request.rule == ""
    assert request.observations == []


def test_a_rollback_request_defaults_to_a_real_run():
    assert decode_rollback_request({"service": "shop", "reason": "x"}).dry_run is False


def test_the_breach_counters_rollback_request_is_accepted():
    body = rollback_request(
        dry_run=DROP,
        canary_revision=CANARY_REVISION,
        requested_by="canary-guard/breach_counter",
        rule="error_rate",
        observations=[{"event_id": "1", "event_time": iso(BASE_TIME), "incident_id": "0.a"}],
    )
    request = decode_rollback_request(body)
    assert request.rule == "error_rate"
    assert request.canary_revision == CANARY_REVISION
    assert request.observations[0]["incident_id"] == "0.a"
    assert request.dry_run is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param([], 'must be a JSON object like {"service": ..., "reason": ...}', id="list"),
        pytest.param("shop", "must be a JSON object", id="string"),
        pytest.param(None, "must be a JSON object", id="none"),
        pytest.param(rollback_request(service=DROP), "service: Field required", id="missing-service"),
        pytest.param(
            rollback_request(service=""),
            "service: String should have at least 1 character",
            id="empty-service",
        ),
        pytest.param(
            rollback_request(service=42), "service: Input should be a valid string", id="service-number"
        ),
        pytest.param(rollback_request(reason=DROP), "reason: Field required", id="missing-reason"),
        pytest.param(
            rollback_request(reason=""), "reason: String should have at least 1 character", id="empty-reason"
        ),
        pytest.param(
            rollback_request(reason="   "),
            "reason: String should have at least 1 character",
            id="blank-reason",
        ),
        pytest.param(
            rollback_request(reason="x" * 1001), "reason: String should have at most 1000", id="long-reason"
        ),
        pytest.param(
            rollback_request(force=True), "force: Extra inputs are not permitted", id="unknown-field"
        ),
        pytest.param(
            rollback_request(dry_run="maybe"), "dry_run: Input should be a valid boolean", id="dry-run-word"
        ),
        pytest.param(
            rollback_request(dry_run=[True]), "dry_run: Input should be a valid boolean", id="dry-run-list"
        ),
        pytest.param(rollback_request(dry_run=2), "dry_run: Input should be a valid boolean", id="dry-run-2"),
        pytest.param(
            rollback_request(observations="x"), "observations: Input should be a valid list", id="obs-str"
        ),
    ],
)
def test_invalid_rollback_requests(body, reason):
    with pytest.raises(MalformedEvent) as info:
        decode_rollback_request(body)
    assert reason in str(info.value)
    if isinstance(body, dict):
        assert str(info.value).startswith("invalid rollback request: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("false", False), (1, True), (0, False), ("yes", True)],
)
def test_dry_run_accepts_json_booleans_and_pydantics_lax_spellings(value, expected):
    # Current behaviour (pydantic lax mode): common string/int spellings are coerced. Pinned here so
    # a change to strict parsing is a deliberate one.
    assert decode_rollback_request(rollback_request(dry_run=value)).dry_run is expected


def test_several_problems_are_all_named():
    with pytest.raises(MalformedEvent) as info:
        decode_rollback_request({"reason": "", "oops": 1})
    text = str(info.value)
    assert "service: Field required" in text
    assert "reason: String should have at least 1 character" in text
    assert "oops: Extra inputs are not permitted" in text


def test_rollback_request_from_a_published_message():
    msg = pubsub_message(cloudevent_data(rollback_request(service="shop", reason="by hand"), shape="push"))
    request = decode_rollback_request(msg.json())
    assert (request.service, request.reason, request.dry_run) == ("shop", "by hand", False)


# --------------------------------------------------------------------------- caller identity


def test_caller_identity_from_the_email_claim():
    assert (
        caller_identity(bearer_token({"email": "oncall@example.com", "sub": "123"})) == "oncall@example.com"
    )


def test_caller_identity_falls_back_to_the_subject():
    assert caller_identity(bearer_token({"sub": "108234567890"})) == "108234567890"
    assert caller_identity(bearer_token({"email": "", "sub": "108234567890"})) == "108234567890"


def test_caller_identity_scheme_is_case_insensitive():
    assert caller_identity(bearer_token({"email": "a@b.c"}, scheme="bearer")) == "a@b.c"
    assert caller_identity(bearer_token({"email": "a@b.c"}, scheme="BEARER")) == "a@b.c"


def test_caller_identity_handles_unpadded_base64url():
    claims = {"email": "o?>@example.com"}  # encodes to '-' / '_' characters in base64url
    token = bearer_token(claims)
    assert "=" not in token
    assert caller_identity(token) == "o?>@example.com"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic-auth"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Bearer ", id="bearer-empty-token"),
        pytest.param("Bearer not-a-jwt", id="one-part"),
        pytest.param("Bearer a.b", id="two-parts"),
        pytest.param("Bearer a.b.c.d", id="four-parts"),
        pytest.param("Bearer x.!!!.y", id="garbage-payload"),
        pytest.param("Bearer x.%%%%.y", id="garbage-payload-2"),
        pytest.param(bearer_token(raw_payload=b"not json"), id="payload-not-json"),
        pytest.param(bearer_token(raw_payload=b"\xff\xfe"), id="payload-not-utf8"),
        pytest.param(bearer_token(["email", "x@y.z"]), id="claims-array"),
        pytest.param(bearer_token("x@y.z"), id="claims-string"),
        pytest.param(bearer_token({"aud": "x"}), id="no-email-no-sub"),
        pytest.param(bearer_token({"email": None, "sub": ""}), id="empty-claims"),
    ],
)
def test_caller_identity_is_unknown_without_usable_claims(header):
    assert caller_identity(header) == "unknown"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_property_caller_identity_never_raises(header):
    assert isinstance(caller_identity(header), str)
    assert isinstance(caller_identity("Bearer " + header), str)


def test_encode_helper_round_trips():
    assert base64.b64decode(encode(b"\x00\x01")) == b"\x00\x01"
    assert base64.b64decode(encode("é")) == "é".encode()
    assert json.loads(base64.b64decode(encode({"a": [1]}))) == {"a": [1]}
