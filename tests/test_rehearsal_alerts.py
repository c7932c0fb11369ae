"""The rehearsal's alert evaluator: Cloud Monitoring's condition and incident lifecycle (pure,
exhaustively), the alert policies against Terraform's own, and the real path: metrics in the
Monitoring stand-in read with the official client, incidents published to the Pub/Sub emulator
and accepted by breach_counter's decoder, the canary_down uptime probe on a real HTTP server."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.cloud import pubsub_v1

from infra.localstack import PROJECT
from infra.metrics_feed import HEALTHY, Minute, feed
from infra.rehearsal.alert_policies import (
    CHECKER_REGIONS,
    AlertPolicySpec,
    canary_down_policy,
    incident_message,
    metric_alert_policies,
    service_groups,
    uptime_check,
)
from infra.rehearsal.alert_rules import (
    Change,
    IncidentRules,
    MissingData,
    SeriesState,
    Transition,
    advance,
    advance_all,
    next_older_count_false,
)
from infra.rehearsal.alerts import AlertEvaluator, IncidentNotice
from shared.clients.monitoring import metric_service_client
from shared.core.ledger import Kind
from shared.events import AlertObservation, decode_alert, pubsub_message
from shared.policy import load_policy
from tests.payloads import cloudevent_data
from tests.payloads import incident as reference_incident

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
POLICY = load_policy()
LOCATION = "us-central1"
SHOP = f"projects/{PROJECT}/locations/{LOCATION}/services/shop"
CART = f"projects/{PROJECT}/locations/{LOCATION}/services/cart"


def minute(n: float) -> datetime:
    return T0 + n * MINUTE


def rules(
    *,
    threshold: float = 0.01,
    duration_s: int = 60,
    missing: MissingData = MissingData.INACTIVE,
    lag_s: int = 0,
    renotify_s: int | None = 1800,
    auto_close_s: int = 1800,
) -> IncidentRules:
    return IncidentRules(
        threshold=threshold,
        step=MINUTE,
        duration=timedelta(seconds=duration_s),
        renotify_interval=None if renotify_s is None else timedelta(seconds=renotify_s),
        auto_close=timedelta(seconds=auto_close_s),
        missing_data=missing,
        data_lag=timedelta(seconds=lag_s),
    )


class Series:
    """One time series fed minute by minute: `value(n, v)` makes the point ending at minute n
    visible, `at(t)` evaluates at minute t; every transition is kept with its evaluation time."""

    def __init__(self, rules: IncidentRules) -> None:
        self.rules = rules
        self.points: dict[datetime, float] = {}
        self.state = SeriesState()
        self.log: list[tuple[float, Transition]] = []

    def value(self, n: int, value: float) -> Series:
        self.points[minute(n)] = value
        return self

    def at(self, t: float, *, arrived_through: float | None = None) -> list[Transition]:
        arrived = None if arrived_through is None else minute(arrived_through)
        self.state, transitions = advance(
            self.state, self.points, minute(t), self.rules, arrived_through=arrived
        )
        self.log.extend((t, transition) for transition in transitions)
        return transitions

    def changes(self) -> list[tuple[float, Change]]:
        return [(t, transition.change) for t, transition in self.log]


# --- the condition: threshold and duration ------------------------------------------------


@pytest.mark.parametrize(("duration_s", "points"), [(0, 1), (60, 1), (119, 1), (120, 2), (180, 3)])
def test_duration_is_a_number_of_consecutive_aligned_points(duration_s, points):
    assert rules(duration_s=duration_s).required_points == points


def test_a_value_equal_to_the_threshold_is_not_a_breach():
    series = Series(rules(threshold=0.01)).value(1, 0.01)
    assert series.at(1) == []
    assert series.state.run == 0


def test_a_value_just_over_the_threshold_opens_at_once_with_a_60s_duration():
    series = Series(rules(threshold=0.01)).value(1, 0.0100001)
    (opened,) = series.at(1.2)
    assert opened == Transition(Change.OPEN, minute(1), None, 0.0100001, minute(1), "threshold crossed")
    assert series.state.incident is not None and series.state.incident.notified_at == minute(1.2)


def test_a_longer_duration_needs_that_many_consecutive_breaches_and_a_dip_resets_it():
    series = Series(rules(duration_s=180))
    for n, value in enumerate([0.05, 0.05, 0.001, 0.05, 0.05], start=1):
        series.value(n, value)
        assert series.at(n) == [], f"minute {n}"
    series.value(6, 0.05)
    (opened,) = series.at(6)
    assert (opened.change, opened.started_at) == (Change.OPEN, minute(6))
    series.value(7, 0.07)
    assert series.at(7) == []  # still open: no second incident
    assert series.state.incident.observed == 0.07


# --- missing data ---------------------------------------------------------------------------


def test_inactive_a_gap_is_evaluated_false_it_closes_and_restarts_the_run():
    series = Series(rules(duration_s=120))
    series.value(1, 0.05).value(2, 0.05)
    assert [t.change for t in series.at(2)] == [Change.OPEN]
    series.value(4, 0.05)  # minute 3 has no point, minute 4 has one: 3 is missing
    (closed,) = series.at(4)
    assert (closed.change, closed.ended_at, closed.observed, closed.reason) == (
        Change.CLOSE,
        minute(3),
        None,
        "no data",
    )
    assert series.state.run == 1  # minute 4 alone is not the two minutes the duration needs
    series.value(5, 0.05)
    (reopened,) = series.at(5)
    assert (reopened.change, reopened.started_at) == (Change.OPEN, minute(5))


def test_no_op_a_gap_neither_resets_the_run_nor_closes_the_incident():
    series = Series(rules(duration_s=120, missing=MissingData.NO_OP))
    series.value(1, 0.05)
    assert series.at(2) == []
    series.value(3, 0.05)  # minute 2 missing: not evaluated, the run goes on
    (opened,) = series.at(3)
    assert opened.started_at == minute(3)
    assert series.at(10) == []  # no data for minutes 4..10: still open
    assert series.state.incident is not None


def test_a_missing_minute_is_judged_only_once_the_data_lag_has_passed():
    series = Series(rules(lag_s=180)).value(1, 0.05)
    assert [t.change for t in series.at(1)] == [Change.OPEN]
    assert series.at(4.99) == []  # minute 2 may still arrive (it ended 2.99 minutes ago)
    (closed,) = series.at(5)
    assert (closed.change, closed.ended_at, closed.reason) == (Change.CLOSE, minute(2), "no data")


def test_a_minute_of_the_condition_that_arrived_without_a_value_is_judged_at_once():
    """A ratio with a denominator point but no numerator point (no 5xx): the minute's data is in,
    the ratio has none, so the missing minute is judged now, not after the data lag."""
    series = Series(rules(lag_s=180)).value(1, 0.05)
    series.at(1)
    (closed,) = series.at(2.1, arrived_through=2)
    assert (closed.change, closed.ended_at, closed.reason) == (Change.CLOSE, minute(2), "no data")


def test_a_point_for_a_minute_already_judged_is_ignored():
    series = Series(rules(lag_s=0))
    series.value(1, 0.001)
    series.at(1)
    assert series.at(2) == []  # minute 2 judged missing (no lag allowed)
    series.value(2, 0.9)  # ... and its point turns up late
    assert series.at(2.5) == []
    assert series.state.incident is None


def test_a_point_stamped_after_the_evaluation_waits_for_its_time():
    series = Series(rules()).value(1, 0.001).value(2, 0.05)
    assert series.at(1.5) == []
    assert [t.change for t in series.at(2)] == [Change.OPEN]


def test_several_minutes_arriving_at_once_are_judged_in_order():
    series = Series(rules()).value(1, 0.05).value(2, 0.001).value(3, 0.05)
    opened, closed, reopened = series.at(3.5)
    assert (opened.change, opened.started_at) == (Change.OPEN, minute(1))
    assert (closed.change, closed.started_at, closed.ended_at, closed.observed) == (
        Change.CLOSE,
        minute(1),
        minute(2),
        0.001,
    )
    assert (reopened.change, reopened.started_at) == (Change.OPEN, minute(3))


def test_a_point_off_the_alignment_grid_is_refused():
    with pytest.raises(ValueError, match="not at the end of"):
        advance(SeriesState(), {minute(1) + timedelta(seconds=5): 0.5}, minute(2), rules())


# --- renotify, recovery, auto close ------------------------------------------------------------


def test_an_open_incident_is_renotified_every_interval_with_its_latest_value():
    series = Series(rules(renotify_s=1800))
    for n in range(1, 66):
        series.value(n, 0.05 + n / 1000)
        series.at(n)
    assert series.changes() == [(1, Change.OPEN), (31, Change.RENOTIFY), (61, Change.RENOTIFY)]
    _, renotified = series.log[1]
    assert (renotified.started_at, renotified.observed, renotified.ended_at) == (
        minute(1),
        0.05 + 31 / 1000,
        None,
    )


def test_recovery_closes_the_incident_with_the_value_that_recovered():
    series = Series(rules()).value(1, 0.05).value(2, 0.06)
    series.at(2)
    series.value(3, 0.004)
    (closed,) = series.at(3)
    assert closed == Transition(Change.CLOSE, minute(1), minute(3), 0.004, minute(3), "recovered")
    assert series.state.incident is None and series.state.run == 0


def test_auto_close_ends_an_incident_whose_data_stopped():
    series = Series(rules(missing=MissingData.NO_OP, auto_close_s=1800, renotify_s=1800)).value(1, 0.05)
    series.at(1)
    assert series.at(30.9) == []
    (closed,) = series.at(31)  # 30 minutes after the last point (minute 1)
    assert (closed.change, closed.ended_at, closed.observed, closed.reason) == (
        Change.CLOSE,
        minute(31),
        None,
        "auto close",
    )
    assert series.at(40) == []  # closed: no renotification, no second close


# --- many series: one incident per revision ---------------------------------------------------


def test_each_revision_has_its_own_incident():
    states: dict[str, SeriesState] = {}
    kept = timedelta(minutes=11)

    def step(t: int, values: Mapping[str, float]) -> list[tuple[str, Change]]:
        nonlocal states
        series = {revision: {minute(t): value} for revision, value in values.items()}
        states, changes = advance_all(states, series, minute(t), rules(), keep_for=kept)
        return [(revision, transition.change) for revision, transition in changes]

    assert step(1, {"shop-canary": 0.06, "shop-stable": 0.0}) == [("shop-canary", Change.OPEN)]
    assert step(2, {"shop-canary": 0.06, "shop-stable": 0.0}) == []
    assert step(3, {"shop-canary": 0.0, "shop-stable": 0.02}) == [
        ("shop-canary", Change.CLOSE),
        ("shop-stable", Change.OPEN),
    ]


def test_a_revision_that_disappears_closes_after_the_lag_and_is_forgotten():
    states: dict[str, SeriesState] = {}
    lagged = rules(lag_s=180)
    kept = timedelta(minutes=11)
    states, changes = advance_all(
        states, {"old": {minute(1): 0.3}, "new": {minute(1): 0.0}}, minute(1), lagged, keep_for=kept
    )
    assert [(key, t.change) for key, t in changes] == [("old", Change.OPEN)]
    for t in (2, 3, 4):  # "old" no longer appears at all; "new" goes on
        states, changes = advance_all(states, {"new": {minute(t): 0.0}}, minute(t), lagged, keep_for=kept)
        assert changes == []
    states, changes = advance_all(states, {"new": {minute(5): 0.0}}, minute(5), lagged, keep_for=kept)
    assert [(key, t.change, t.ended_at, t.reason) for key, t in changes] == [
        ("old", Change.CLOSE, minute(2), "no data")
    ]
    assert set(states) == {"old", "new"}
    states, _ = advance_all(states, {"new": {minute(13): 0.0}}, minute(13), lagged, keep_for=kept)
    assert set(states) == {"new"}  # nothing open, no point for over `kept`: forgotten


# --- canary_down's aligned points --------------------------------------------------------------


def test_uptime_points_are_the_latest_result_per_window_counted_over_every_region():
    window = timedelta(minutes=2)
    results = [(minute(0.2), False), (minute(2.1), True), (minute(4.5), False)]
    ends = [minute(n) for n in range(0, 8)]
    points = next_older_count_false(results, ends, window=window, regions=6)
    assert points == {
        minute(1): 6.0,  # (-1, 1]: the failure at 0.2
        minute(2): 6.0,  # (0, 2]: still it
        minute(3): 0.0,  # (1, 3]: the pass at 2.1 is the latest
        minute(4): 0.0,
        minute(5): 6.0,
        minute(6): 6.0,
    }  # minute 7: (5, 7] holds no result: no point


# --- the policies are Terraform's ---------------------------------------------------------------


def _terraform():
    from tests.tf_model import TerraformUnavailable, load

    try:
        return load(Path(__file__).resolve().parent.parent / "terraform")
    except TerraformUnavailable as exc:
        pytest.skip(str(exc))


def test_metric_policies_are_the_ones_terraform_builds_from_the_policy_file():
    from tests.tf_hcl import Evaluator, block, blocks
    from tests.tf_model import CHECK_SERVICES, CHECK_VARIABLES, instances

    tf = _terraform()
    ev = Evaluator(tf, CHECK_VARIABLES)
    ours = {spec.key: spec for spec in metric_alert_policies(POLICY, sorted(CHECK_SERVICES))}
    theirs = {
        i.key: i.body for i in instances(tf, "google_monitoring_alert_policy") if i.name == "metric_rule"
    }
    assert set(ours) == set(theirs)
    for key, body in theirs.items():
        spec = ours[key]
        condition = block(block(body, "conditions"), "condition_threshold")
        strategy = block(body, "alert_strategy")
        (aggregation,) = blocks(condition, "aggregations")
        denominators = blocks(condition, "denominator_aggregations")
        assert ev.value(body["display_name"]) == spec.display_name
        assert body["severity"] == spec.severity
        assert ev.value(block(body, "conditions")["display_name"]) == spec.condition.display_name
        assert ev.value(condition["filter"]) == spec.condition.filter
        assert condition["comparison"] == spec.condition.comparison
        assert ev.value(condition["threshold_value"]) == spec.condition.threshold_value
        assert ev.value(condition["duration"]) == f"{spec.condition.duration_s}s"
        assert condition["evaluation_missing_data"] == spec.condition.evaluation_missing_data
        # The offline evaluator cannot nest a template in a conditional: the expression is
        # checked as written, and its two branches evaluated here.
        rule, group = key.split("/")
        rule_denominator = f'local.alerting.metric_conditions["{rule}"].denominator_filter'
        group_filter = f'local.service_groups["{group}"].filter'
        assert condition["denominator_filter"] == (
            f'${{{rule_denominator} == "" ? null : "${{{rule_denominator}}} AND ${{{group_filter}}}"}}'
        )
        denominator = ev.value(f"${{{rule_denominator}}}")
        expected = None if denominator == "" else f"{denominator} AND {ev.value(f'${{{group_filter}}}')}"
        assert expected == spec.condition.denominator_filter
        for theirs_agg, ours_agg in [
            (aggregation, spec.condition.aggregation),
            *[(d, spec.condition.denominator_aggregation) for d in denominators],
        ]:
            assert ours_agg is not None
            assert ev.value(theirs_agg["alignment_period"]) == f"{ours_agg.alignment_period_s}s"
            assert ev.value(theirs_agg["per_series_aligner"]) == ours_agg.per_series_aligner
            assert ev.value(theirs_agg["cross_series_reducer"]) == ours_agg.cross_series_reducer
            assert ev.value(theirs_agg["group_by_fields"]) == list(ours_agg.group_by_fields)
        assert bool(denominators) == (spec.condition.denominator_aggregation is not None)
        assert ev.value(strategy["auto_close"]) == f"{spec.auto_close_s}s"
        assert tuple(strategy["notification_prompts"]) == spec.notification_prompts
        renotify = block(strategy, "notification_channel_strategy")["renotify_interval"]
        assert ev.value(renotify) == f"{spec.renotify_interval_s}s"
        assert body["user_labels"] == dict(spec.user_labels)
        assert ev.value(block(body, "documentation")["subject"]) == spec.documentation_subject


def test_canary_down_is_terraforms_uptime_check_and_policy():
    from tests.tf_hcl import Evaluator, block
    from tests.tf_model import CHECK_SERVICES, CHECK_VARIABLES, instances

    tf = _terraform()
    ev = Evaluator(tf, CHECK_VARIABLES)
    (check_body,) = [i.body for i in instances(tf, "google_monitoring_uptime_check_config")]
    (policy_body,) = [
        i.body for i in instances(tf, "google_monitoring_alert_policy") if i.name == "canary_down"
    ]
    check = uptime_check(POLICY, "checkout", CHECK_SERVICES["checkout"]["canary_tag_url"])
    spec = canary_down_policy(POLICY, check)
    http = block(check_body, "http_check")
    assert ev.value(check_body["period"]) == f"{check.period_s}s"
    assert ev.value(check_body["timeout"]) == f"{check.timeout_s}s"
    assert ev.value(http["path"]) == check.path
    assert http["request_method"] == check.request_method
    assert block(http, "accepted_response_status_codes")["status_class"] == check.accepted_status_class
    assert ev.value(block(check_body, "monitored_resource")["labels"]["host"]) == check.host

    condition = block(block(policy_body, "conditions"), "condition_threshold")
    aggregation = block(condition, "aggregations")
    assert ev.value(policy_body["display_name"]) == spec.display_name
    assert policy_body["severity"] == spec.severity
    assert block(policy_body, "conditions")["display_name"] == spec.condition.display_name
    check_ref = '${google_monitoring_uptime_check_config.canary["checkout"].uptime_check_id}'
    assert condition["filter"].replace(check_ref, check.check_id) == spec.condition.filter
    assert condition["comparison"] == spec.condition.comparison
    assert ev.value(condition["threshold_value"]) == spec.condition.threshold_value
    assert ev.value(condition["duration"]) == f"{spec.condition.duration_s}s"
    assert "evaluation_missing_data" not in condition and spec.condition.evaluation_missing_data is None
    assert ev.value(aggregation["alignment_period"]) == f"{spec.condition.aggregation.alignment_period_s}s"
    assert aggregation["per_series_aligner"] == spec.condition.aggregation.per_series_aligner
    assert aggregation["cross_series_reducer"] == spec.condition.aggregation.cross_series_reducer
    assert aggregation["group_by_fields"] == list(spec.condition.aggregation.group_by_fields)
    assert ev.value(policy_body["user_labels"]) == dict(spec.user_labels)
    strategy = block(policy_body, "alert_strategy")
    assert ev.value(strategy["auto_close"]) == f"{spec.auto_close_s}s"
    assert ev.value(block(strategy, "notification_channel_strategy")["renotify_interval"]) == (
        f"{spec.renotify_interval_s}s"
    )


def test_services_are_grouped_25_to_a_policy_as_services_tf_does():
    from tests.tf_model import evaluate_services

    tf = _terraform()
    names = [f"svc-{n:02d}" for n in range(30)]
    evaluated = evaluate_services(tf, {name: {} for name in names})
    theirs = {group: g["services"] for group, g in evaluated["service_groups"].items()}
    assert service_groups(names) == theirs
    assert [len(g) for g in theirs.values()] == [25, 5]
    titles = {spec.key: spec.display_name for spec in metric_alert_policies(POLICY, names)}
    assert titles["memory/01"] == "canary-guard memory utilisation (group 01: 5 services, svc-25 … svc-29)"


# --- the incident message ------------------------------------------------------------------------


def _decode(message: Mapping, message_id: str = "42") -> AlertObservation:
    data = cloudevent_data(dict(message), message_id=message_id, publish_time=T0)
    return decode_alert(pubsub_message(data), PROJECT)


def _metric_spec(rule: str) -> AlertPolicySpec:
    return next(spec for spec in metric_alert_policies(POLICY, ["shop"]) if spec.rule == rule)


def _revision_message(transition: Transition, rule: str = "error_rate") -> dict:
    labels = {
        "project_id": PROJECT,
        "service_name": "shop",
        "location": LOCATION,
        "revision_name": "shop-00002",
    }
    return incident_message(
        _metric_spec(rule),
        transition,
        project=PROJECT,
        project_number=123,
        resource_type="cloud_run_revision",
        resource_labels=labels,
        metric_type="run.googleapis.com/request_count",
        incident="0.abc",
    )


def test_an_incident_carries_every_field_of_a_real_one_and_decodes():
    opened = Transition(Change.OPEN, minute(1), None, 0.06, minute(1), "threshold crossed")
    message = _revision_message(opened)
    body = message["incident"]
    assert message["version"] == "1.2"
    assert set(reference_incident()) <= set(body)
    assert set(reference_incident()["condition"]) <= set(body["condition"])
    assert (body["state"], body["ended_at"], body["started_at"]) == ("open", None, int(minute(1).timestamp()))
    assert (body["threshold_value"], body["observed_value"]) == ("0.01", "0.06")  # strings
    assert body["policy_user_labels"] == {"app": "canary-guard", "canary_rule": "error_rate"}
    threshold = body["condition"]["conditionThreshold"]
    assert threshold["denominatorFilter"].startswith('metric.type = "run.googleapis.com/request_count"')
    assert threshold["evaluationMissingData"] == "EVALUATION_MISSING_DATA_INACTIVE"
    decoded = _decode(message)
    assert decoded.service_name == SHOP
    assert (decoded.revision, decoded.incident_id) == ("shop-00002", "0.abc")
    assert (decoded.observation.rule, decoded.observation.kind) == ("error_rate", Kind.BREACH)
    assert decoded.observation.detail["incident_started_at"] == minute(1)

    closed = Transition(Change.CLOSE, minute(1), minute(4), 0.0, minute(4), "recovered")
    body = _revision_message(closed, "latency_p95")["incident"]
    assert (body["state"], body["ended_at"], body["threshold_value"]) == (
        "closed",
        int(minute(4).timestamp()),
        "500",
    )
    assert _decode({"version": "1.2", "incident": body}).observation.kind == Kind.RECOVERY


def test_a_canary_down_incident_names_its_service_and_no_revision():
    check = uptime_check(POLICY, "shop", "http://127.0.0.1:8123")
    opened = Transition(Change.OPEN, minute(1), None, 6.0, minute(1), "threshold crossed")
    message = incident_message(
        canary_down_policy(POLICY, check),
        opened,
        project=PROJECT,
        project_number=123,
        resource_type="uptime_url",
        resource_labels={"project_id": PROJECT, "host": check.host},
        metric_type="monitoring.googleapis.com/uptime_check/check_passed",
        incident="0.down",
    )
    body = message["incident"]
    assert body["resource"] == {
        "type": "uptime_url",
        "labels": {"project_id": PROJECT, "host": "127.0.0.1:8123"},
    }
    assert (body["severity"], body["threshold_value"], body["observed_value"]) == ("Critical", "1", "6")
    decoded = _decode(message)
    assert (decoded.service_name, decoded.revision, decoded.observation.rule) == ("shop", "", "canary_down")


# --- the real path: the Monitoring stand-in, the Pub/Sub emulator, HTTP probes ---------------


class Topic:
    """A fresh alerts topic with a pull subscription on the Pub/Sub emulator."""

    def __init__(self) -> None:
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:8]
        self.path = self.publisher.topic_path(PROJECT, f"alerts-{suffix}")
        self.subscription = self.subscriber.subscription_path(PROJECT, f"alerts-{suffix}-pull")
        self.publisher.create_topic(name=self.path)
        self.subscriber.create_subscription(name=self.subscription, topic=self.path)

    def pull(self, expect: int, timeout_s: float = 10) -> list[AlertObservation]:
        """The next `expect` messages, decoded as breach_counter decodes them (by publish order)."""
        received = []
        deadline = time.monotonic() + timeout_s
        while len(received) < expect and time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=self.subscription, max_messages=50, timeout=5)
            if response.received_messages:
                self.subscriber.acknowledge(
                    subscription=self.subscription, ack_ids=[r.ack_id for r in response.received_messages]
                )
            received.extend(r.message for r in response.received_messages)
        assert len(received) == expect, f"expected {expect} messages, got {len(received)}"
        decoded = []
        for message in sorted(received, key=lambda m: m.publish_time):
            data = {
                "message": {
                    "data": base64.b64encode(message.data).decode(),
                    "messageId": message.message_id,
                    "publishTime": message.publish_time.isoformat(),
                }
            }
            decoded.append(decode_alert(pubsub_message(data), PROJECT))
        return decoded

    def nothing_more(self) -> bool:
        response = self.subscriber.pull(subscription=self.subscription, max_messages=10, timeout=2)
        return not response.received_messages

    def delete(self) -> None:
        self.subscriber.delete_subscription(subscription=self.subscription)
        self.publisher.delete_topic(topic=self.path)


@pytest.fixture
def topic(emulators) -> Iterator[Topic]:
    created = Topic()
    yield created
    created.delete()


def serve(monitoring, service: str, revision: str, n: int, traffic: Minute) -> None:
    feed(
        monitoring,
        project=PROJECT,
        location=LOCATION,
        service=service,
        revision=revision,
        minutes=[minute(n)],
        traffic=traffic,
    )


def evaluator(monitoring, topic: Topic, publisher: object = None, **kwargs) -> AlertEvaluator:
    return AlertEvaluator(
        POLICY,
        PROJECT,
        [SHOP, CART],
        metric_service_client(monitoring.target),
        publisher or topic.publisher,
        topic.path,
        now=lambda: pytest.fail("the evaluator read the clock instead of the time it was given"),
        **kwargs,
    )


BAD = Minute(requests=200, errors=12)  # 6 % 5xx


@pytest.mark.emulators
def test_three_bad_canary_minutes_open_one_error_rate_incident_and_recovery_closes_it(monitoring, topic):
    alerts = evaluator(monitoring, topic)
    notices: list[IncidentNotice] = []
    for n in range(1, 7):
        serve(monitoring, "shop", "shop-00001", n, HEALTHY)  # stable
        serve(monitoring, "shop", "shop-00002", n, BAD if n <= 3 else HEALTHY)  # canary
        notices.extend(alerts.evaluate(minute(n) + timedelta(seconds=20)))
    assert alerts.errors == []
    assert [(n.state, n.rule, n.revision, n.at) for n in notices] == [
        ("open", "error_rate", "shop-00002", minute(1) + timedelta(seconds=20)),
        ("closed", "error_rate", "shop-00002", minute(4) + timedelta(seconds=20)),
    ]
    opened, closed = notices
    assert opened.observed == pytest.approx(0.06) and opened.threshold == 0.01
    assert (closed.reason, closed.incident_id) == ("no data", opened.incident_id)  # no 5xx: no ratio

    decoded = topic.pull(2)
    assert [d.observation.kind for d in decoded] == [Kind.BREACH, Kind.RECOVERY]
    for notice, alert in zip(notices, decoded, strict=True):
        assert (alert.service_name, alert.revision, alert.observation.rule) == (
            SHOP,
            "shop-00002",
            "error_rate",
        )
        assert (alert.incident_id, alert.observation.event_id) == (notice.incident_id, notice.message_id)
    assert decoded[0].observation.detail["observed_value"] == "0.06"
    assert decoded[0].observation.detail["incident_started_at"] == minute(1)
    assert topic.nothing_more()  # the healthy stable revision raised nothing


@pytest.mark.emulators
def test_latency_and_memory_conditions_read_as_terraform_states_them(monitoring, topic):
    """P95 latency is REDUCE_PERCENTILE_95 of the merged distributions and the 5xx ratio
    ALIGN_RATE: asked as such, and computed the same way from what the stand-in has."""
    alerts = evaluator(monitoring, topic)
    serve(monitoring, "cart", "cart-00002", 1, Minute(requests=200, latency_ms=900, memory=0.93))
    serve(monitoring, "shop", "shop-00002", 1, Minute(requests=200, errors=2))  # 1 %: on the bar
    notices = alerts.evaluate(minute(1) + timedelta(seconds=20))
    assert sorted((n.rule, n.service, n.revision, n.state) for n in notices) == [
        ("latency_p95", CART, "cart-00002", "open"),
        ("memory", CART, "cart-00002", "open"),
    ]
    observed = {n.rule: n.observed for n in notices}
    assert observed["latency_p95"] == pytest.approx(900, rel=0.05)
    assert observed["memory"] == pytest.approx(0.93, abs=0.01)
    assert set(alerts.substitutes) == {("ALIGN_RATE", "REDUCE_SUM"), ("ALIGN_DELTA", "REDUCE_PERCENTILE_95")}
    decoded = topic.pull(2)
    assert sorted(d.observation.rule for d in decoded) == ["latency_p95", "memory"]
    assert {d.service_name for d in decoded} == {CART}


@pytest.mark.emulators
def test_a_failed_publish_leaves_the_series_to_the_next_evaluation(monitoring, topic):
    class FailingOnce:
        def __init__(self) -> None:
            self.failed = False

        def publish(self, topic_path, data):
            if not self.failed:
                self.failed = True
                raise RuntimeError("Pub/Sub is down")
            return topic.publisher.publish(topic_path, data)

    alerts = evaluator(monitoring, topic, publisher=FailingOnce())
    serve(monitoring, "shop", "shop-00002", 1, BAD)
    with pytest.raises(RuntimeError, match="Pub/Sub is down"):
        alerts.evaluate(minute(1) + timedelta(seconds=20))
    (notice,) = alerts.evaluate(minute(1) + timedelta(seconds=40))
    assert (notice.state, notice.revision) == ("open", "shop-00002")
    assert [d.observation.kind for d in topic.pull(1)] == [Kind.BREACH]


class CanaryServer:
    """A canary's /health on a real HTTP server: `status` and `delay_s` say how it answers."""

    def __init__(self) -> None:
        self.status, self.delay_s, self.hits = 200, 0.0, 0
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server_self.hits += 1
                time.sleep(server_self.delay_s)
                status = server_self.status if self.path == POLICY.alerting.uptime_check.path else 404
                with contextlib.suppress(OSError):  # the prober may have given up already
                    self.send_response(status)
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canary_server() -> Iterator[CanaryServer]:
    server = CanaryServer()
    yield server
    server.stop()


@pytest.mark.emulators
def test_canary_down_opens_when_the_uptime_check_fails_and_closes_when_it_passes(
    monitoring, topic, canary_server
):
    urls: Callable[[], dict[str, str]] = lambda: {SHOP: canary_server.url}  # noqa: E731
    alerts = evaluator(monitoring, topic, canary_urls=urls, probe_timeout_s=0.5)
    assert alerts.evaluate(minute(1)) == []
    assert alerts.evaluate(minute(1.5)) == []  # within the check period: no second probe
    assert canary_server.hits == 1

    canary_server.status = 503
    (opened,) = alerts.evaluate(minute(2))
    assert (opened.rule, opened.service, opened.revision, opened.state) == ("canary_down", SHOP, "", "open")
    assert (opened.observed, opened.threshold) == (float(len(CHECKER_REGIONS)), 1.0)

    canary_server.status, canary_server.delay_s = 200, 1.0  # answers, but after the timeout
    assert alerts.evaluate(minute(3)) == []  # still failing: still open

    canary_server.delay_s = 0.0
    (closed,) = alerts.evaluate(minute(4))
    assert (closed.state, closed.reason, closed.incident_id) == ("closed", "recovered", opened.incident_id)
    assert canary_server.hits == 4

    decoded = topic.pull(2)
    assert [(d.service_name, d.revision, d.observation.rule, d.observation.kind) for d in decoded] == [
        ("shop", "", "canary_down", Kind.BREACH),
        ("shop", "", "canary_down", Kind.RECOVERY),
    ]


@pytest.mark.emulators
def test_a_policy_that_cannot_be_read_is_skipped_and_catches_up(monitoring, topic):
    alerts = evaluator(monitoring, topic)
    serve(monitoring, "shop", "shop-00002", 1, BAD)
    monitoring.fail_next("ListTimeSeries", grpc.StatusCode.PERMISSION_DENIED)  # error_rate's first read
    assert alerts.evaluate(minute(1) + timedelta(seconds=20)) == []
    assert len(alerts.errors) == 1 and "error rate" in alerts.errors[0]
    serve(monitoring, "shop", "shop-00002", 2, BAD)
    (opened,) = alerts.evaluate(minute(2) + timedelta(seconds=20))
    assert (opened.rule, opened.state) == ("error_rate", "open")
    assert alerts.errors == []
    assert topic.pull(1)[0].observation.detail["incident_started_at"] == minute(1)  # the missed minute


@pytest.mark.emulators
def test_the_convenience_loop_evaluates_at_the_clock_and_hands_over_what_it_published(monitoring, topic):
    stop = threading.Event()
    handed: list[IncidentNotice] = []

    def received(notices: list[IncidentNotice]) -> None:
        handed.extend(notices)
        stop.set()

    alerts = AlertEvaluator(
        POLICY,
        PROJECT,
        [SHOP],
        metric_service_client(monitoring.target),
        topic.publisher,
        topic.path,
        now=lambda: minute(1) + timedelta(seconds=20),
    )
    serve(monitoring, "shop", "shop-00002", 1, BAD)
    loop = threading.Thread(target=alerts.run_every_minute, args=(stop, received), daemon=True)
    loop.start()
    loop.join(timeout=20)
    assert not loop.is_alive()
    assert [(n.rule, n.state, n.at) for n in handed] == [
        ("error_rate", "open", minute(1) + timedelta(seconds=20))
    ]
