"""terraform/ offline, alerting (tests/tf_checks_alerting.py): alert policy -> notification
channel -> alerts topic -> breach_counter, every rule's policy with renotify and close, the labels
metric incidents keep, thresholds and durations from the policy file, the Monitoring agent's grants
and their wait, the dashboard, and var.services guarded from one service to thirty; each link also
cut in a copy of terraform/ to show the check reports it.
"""

from __future__ import annotations

import re

import pytest
import yaml

from shared.events import REVISION_LABELS
from shared.policy import RULE_NAMES
from tests import terraform_checks as tc
from tests.tf_fixtures import (
    DASHBOARD,
    METRIC_RULE_POLICY,
    MONITORING_AGENT_WAIT_S,
    RUN_IAM,
    assert_cut_is_reported,
    copy_tree,
    cut_link,
    push_entry,
    res,
)

# The shared fixtures, imported as themselves so pytest finds them here.
from tests.tf_fixtures import policy as policy
from tests.tf_fixtures import tf as tf

# --- The real tree is clean ---------------------------------------------------------------


def test_alert_policy_to_channel_to_topic_to_breach_counter(tf):
    assert tc.check_alert_chain(tf) == []


def test_alert_policies_cover_every_rule_with_renotify_and_close(tf):
    assert tc.check_alert_policies(tf, RULE_NAMES) == []


def test_metric_alert_incidents_keep_the_labels_the_decoder_reads(tf):
    # A cross-series reducer aggregates away every resource label not grouped by: an incident
    # without service_name / location could not be mapped to its service in full.
    assert tc.check_alert_group_by(tf, REVISION_LABELS) == []


def test_thresholds_and_durations_come_from_the_policy_file(tf, policy):
    assert tc.check_thresholds_from_policy(tf, policy) == []


def test_monitoring_agent_may_publish_to_the_alerts_topic(tf):
    assert tc.check_monitoring_can_publish(tf) == []


def test_monitoring_agent_grants_wait_for_its_notification_channel(tf):
    assert tc.check_monitoring_agent_exists_first(tf, MONITORING_AGENT_WAIT_S) == []


def test_dashboard_shows_canary_vs_stable(tf):
    dashboard = tc.render_dashboard(tf)  # as terraform renders it for tc.CHECK_SERVICES
    tiles = dashboard["mosaicLayout"]["tiles"]
    filters = [s for s in tc.strings(tiles) if "metric.type=" in s]
    for metric in (
        "run.googleapis.com/request_count",
        "run.googleapis.com/request_latencies",
        "run.googleapis.com/container/memory/utilizations",
        "run.googleapis.com/container/cpu/utilizations",
        "custom.googleapis.com/canary_guard/breaches",
        "custom.googleapis.com/canary_guard/rollbacks",
        "custom.googleapis.com/canary_guard/load_test/",
    ):
        assert any(metric in f for f in filters), f"the dashboard has no chart of {metric}"
    for tile in tiles:
        assert tile["xPos"] + tile["width"] <= dashboard["mosaicLayout"]["columns"]
    # Every template variable the file uses is passed by google_monitoring_dashboard.
    placeholders = set(re.findall(r"\$\{([a-z0-9_]+)\}", DASHBOARD.read_text()))
    passed = tf.resource("google_monitoring_dashboard", "canary")["dashboard_json"]
    for name in placeholders:
        assert f"{name} =" in passed or f"{name}=" in passed, f"templatefile() does not pass {name}"


def test_one_apply_guards_three_services_each_with_its_policies_grants_and_tiles(tf):
    """var.services with three services (one with a canary tag URL, one in another region with
    its own runtime account): each is covered, granted, load tested and listed, and no two
    resources share a name."""
    assert tc.check_services_guarded(tf, tc.CHECK_SERVICES) == []
    dashboard = tc.render_dashboard(tf)
    # Every Cloud Run and canary-guard chart covers all three (the dead-letter charts are per topic).
    filters = [
        s
        for s in tc.strings(dashboard)
        if "metric.type=" in s and ("run.googleapis" in s or "canary_guard/" in s)
    ]
    assert len(filters) >= 8
    for name in tc.CHECK_SERVICES:
        assert all(f'"{name}"' in f for f in filters), name


def test_thirty_services_share_a_few_alert_policies_and_nothing_collides(tf):
    # Names of the longest kind Cloud Run allows (49 characters): display names stay short.
    services = {f"svc-{index:02d}-" + "x" * 42: {} for index in range(30)}
    assert tc.check_services_guarded(tf, services) == []
    groups = tc.evaluate_services(tf, services)["service_groups"]
    assert [len(g["services"]) for g in groups.values()] == [25, 5]  # two policies per rule
    dashboard = tc.render_dashboard(tf, services)
    alert_tiles = [t for t in dashboard["mosaicLayout"]["tiles"] if "alertChart" in t["widget"]]
    assert len(alert_tiles) == 3 * len(groups)


def test_policy_change_flows_into_the_alert_policies(tmp_path, policy):
    """Change a threshold in the policy file only: the evaluated alert policy follows."""
    copy = copy_tree(tmp_path)
    changed = dict(policy)
    changed["rollback_rules"] = {
        **policy["rollback_rules"],
        "error_rate": {**policy["rollback_rules"]["error_rate"]},
    }
    changed["rollback_rules"]["error_rate"]["threshold"] = 0.042
    (copy / "shared" / "policy.yaml").write_text(yaml.safe_dump(changed))
    t = tc.load(copy / "terraform")
    ev = tc.Evaluator(t)
    body = tc.alert_policies(t)["google_monitoring_alert_policy.metric_rule[error_rate/00]"]
    raw = tc.block(tc.block(body, "conditions"), "condition_threshold")["threshold_value"]
    assert ev.value(raw) == 0.042
    assert tc.check_thresholds_from_policy(t, changed) == []
    assert tc.check_thresholds_from_policy(t, policy) != []  # the old numbers no longer match


# --- Cut one link: the check reports it ------------------------------------------------------


# (file, block, old, new, check that must report it, words of the report)
CUTS = [
    # Many services, one apply: each watched service is guarded, nothing collides.
    pytest.param(
        "services.tf",
        None,
        "chunklist(sort(keys(local.watched)), local.services_per_alert_policy)",
        "chunklist(slice(sort(keys(local.watched)), 1, length(local.watched)),"
        " local.services_per_alert_policy)",
        "services",
        "service accounts: 0 alert policies of rule error_rate cover it",
        id="a-service-left-out-of-the-alert-policies",
    ),
    pytest.param(
        "services.tf",
        None,
        'uptime_checked = { for name, s in local.watched : name => s if s.canary_tag_url != "" }',
        "uptime_checked = local.watched",
        "services",
        "service search has no canary tag URL but an uptime check",
        id="uptime-check-without-a-tag-url",
    ),
    pytest.param(
        "scheduler.tf",
        res("google_cloud_scheduler_job", "load_test"),
        "jsonencode({ service = each.value.fullname })",
        "jsonencode({ service = each.value.service })",
        "services",
        "service checkout: not exactly one load test job",
        id="load-test-job-for-a-short-name",
    ),
    pytest.param(
        "scheduler.tf",
        res("google_cloud_scheduler_job", "load_test"),
        'name        = "${var.prefix}-${replace(each.key, "_", "-")}"',
        'name        = "${var.prefix}-load-test"',
        "services",
        "the same name=cg-load-test",
        id="load-test-jobs-with-one-name",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "  notification_channels = [google_monitoring_notification_channel.alerts.name]\n",
        "",
        "alert_chain",
        "notifies no notification channel",
        id="alert-policy-without-channel",
    ),
    pytest.param(
        "monitoring.tf",
        None,
        "    topic = google_pubsub_topic.alerts.id",
        "    topic = google_pubsub_topic.rollback.id",
        "alert_chain",
        "but breach_counter's push subscription is on topic alerts",
        id="channel-to-wrong-topic",
    ),
    pytest.param(
        "delivery.tf",
        push_entry("breach_counter"),
        "topic             = google_pubsub_topic.alerts.id",
        "topic             = google_pubsub_topic.rollback.id",
        "alert_chain",
        "breach_counter's push subscription is on topic rollback",
        id="breach-counter-pushed-the-wrong-topic",
    ),
    pytest.param(
        "pubsub.tf",
        res("google_pubsub_topic_iam_member", "alerts_publisher_monitoring"),
        "local.monitoring_notification_agent",
        "local.pubsub_service_agent",
        "monitoring_publisher",
        "has no roles/pubsub.publisher on topic alerts",
        id="monitoring-agent-cannot-publish",
    ),
    pytest.param(
        "iam.tf",
        res(RUN_IAM, "uptime_check_invokes_target"),
        "\n  depends_on = [time_sleep.monitoring_agent]\n",
        "\n  depends_on = [google_monitoring_notification_channel.alerts]\n",
        "monitoring_agent_first",
        "google_cloud_run_v2_service_iam_member.uptime_check_invokes_target grants to the Monitoring "
        "notification agent without waiting for it",
        id="uptime-invoker-granted-before-the-agent-exists",
    ),
    pytest.param(
        "pubsub.tf",
        res("google_pubsub_topic_iam_member", "alerts_publisher_monitoring"),
        "\n  depends_on = [time_sleep.monitoring_agent]\n",
        "\n",
        "monitoring_agent_first",
        "google_pubsub_topic_iam_member.alerts_publisher_monitoring grants to the Monitoring "
        "notification agent without waiting for it",
        id="alerts-publisher-granted-before-the-agent-exists",
    ),
    pytest.param(
        "monitoring.tf",
        res("time_sleep", "monitoring_agent"),
        'create_duration = "60s"',
        'create_duration = "5s"',
        "monitoring_agent_first",
        "time_sleep.monitoring_agent waits '5s' for the Monitoring agent, less than 60s",
        id="monitoring-agent-wait-too-short",
    ),
    pytest.param(
        "monitoring.tf",
        res("time_sleep", "monitoring_agent"),
        "  depends_on = [google_monitoring_notification_channel.alerts]\n",
        "",
        "monitoring_agent_first",
        "no time_sleep waits for the Monitoring agent after its notification channel",
        id="monitoring-agent-wait-starts-too-early",
    ),
    pytest.param(
        "scheduler.tf",
        res("google_cloud_scheduler_job", "load_test"),
        "local.load_test_cfg.schedule",
        '"0 3 * * *"',
        "thresholds",
        "hard-codes a number the policy file owns",
        id="schedule-typed-twice",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "threshold_value = local.rules[each.value.rule].threshold",
        "threshold_value = 0.85",
        "thresholds",
        "is typed here, not read from the policy file",
        id="threshold-typed-twice",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "threshold_value = local.rules[each.value.rule].threshold",
        "threshold_value = local.rules.error_rate.threshold",
        "thresholds",
        "policy file says 500",
        id="threshold-of-another-rule",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        'notification_prompts = ["OPENED", "CLOSED"]',
        'notification_prompts = ["OPENED"]',
        "alert_policies",
        "must notify OPENED and CLOSED",
        id="close-not-notified",
    ),
    pytest.param(
        "monitoring.tf",
        None,
        '    "resource.label.location",\n',
        "",
        "alert_group_by",
        "alert policy google_monitoring_alert_policy.metric_rule[error_rate/00] denominator_aggregations "
        "aggregates away resource.label.location",
        id="location-aggregated-away",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "        cross_series_reducer = local.alerting.metric_conditions"
        "[each.value.rule].cross_series_reducer\n"
        "        group_by_fields      = local.revision_group_by\n",
        "        cross_series_reducer = local.alerting.metric_conditions"
        "[each.value.rule].cross_series_reducer\n"
        '        group_by_fields      = ["resource.label.revision_name"]\n',
        "alert_group_by",
        "alert policy google_monitoring_alert_policy.metric_rule[memory/00] aggregations aggregates away "
        "resource.label.service_name, resource.label.location",
        id="grouped-by-revision-only",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "          group_by_fields      = local.revision_group_by\n",
        '          group_by_fields      = ["resource.label.service_name", "resource.label.location", '
        '"resource.label.revision_name", "resource.label.project_id"]\n',
        "alert_group_by",
        "metric_rule[error_rate/00]: numerator and denominator group by different fields",
        id="ratio-denominator-grouped-differently",
    ),
    # The rule set is the policy file's: a metric rule left out of it has no alert policy.
    pytest.param(
        "../shared/policy.yaml",
        None,
        "    memory:\n      # container/memory/utilizations",
        "    memory_old:\n      # container/memory/utilizations",
        "alert_policies",
        "no alert policy for rule(s) ['memory']",
        id="ratio-denominator-grouped-differently",
    ),
]


@pytest.mark.parametrize(("filename", "block", "old", "new", "check", "expected"), CUTS)
def test_cutting_a_link_is_reported(tmp_path, policy, filename, block, old, new, check, expected):
    assert_cut_is_reported(tmp_path, policy, filename, block, old, new, check, expected)


def test_an_alert_policy_name_listing_every_service_is_reported(tmp_path):
    long_names = {f"svc-{index:02d}-" + "x" * 42: {} for index in range(30)}
    cut = cut_link(
        tmp_path,
        "services.tf",
        None,
        '${names[0]} … ${names[length(names) - 1]}"',
        '${join(", ", names)}"',
    )
    problems = tc.check_services_guarded(cut, long_names)
    assert any("display_name over the API's 512 characters" in p for p in problems), problems
