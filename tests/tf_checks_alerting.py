"""Checks of the alerting path: alert policies, their channel and grouping, thresholds from the
policy file, the Monitoring agent, and every watched service guarded."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tests.tf_checks_delivery import push_deliveries
from tests.tf_checks_deploy import duration_s
from tests.tf_hcl import Evaluator, Unevaluable, block, blocks, expr, is_expr, references
from tests.tf_model import (
    CHECK_PROJECT,
    CHECK_REGION,
    CHECK_VARIABLES,
    Terraform,
    env_of,
    evaluate_services,
    function_by_entry,
    functions,
    instances,
)

MONITORING_AGENT_RE = re.compile(
    r"^serviceAccount:service-\$\{local\.project_number\}@gcp-sa-monitoring-notification\.iam\.gserviceaccount\.com$"
)

# Attributes of alert policies / uptime checks / scheduler jobs that the policy file owns.
POLICY_OWNED_ATTRIBUTES = (
    "threshold_value",
    "duration",
    "renotify_interval",
    "auto_close",
    "alignment_period",
    "period",
    "timeout",
    "schedule",
    "time_zone",
)


def check_alert_chain(tf: Terraform, *, consumer_entry_point: str = "breach_counter") -> list[str]:
    """Every alert policy -> a pubsub notification channel -> a topic -> the consumer's push subscription."""
    problems: list[str] = []
    channels = tf.of_type("google_monitoring_notification_channel")
    policies = alert_policies(tf)
    if not policies:
        return ["no google_monitoring_alert_policy at all"]
    consumer = function_by_entry(tf).get(consumer_entry_point)
    trigger_topic = None
    if consumer is None:
        problems.append(f"no function with entry point {consumer_entry_point}")
    else:
        subs = [d for d in push_deliveries(tf) if d.function == consumer]
        if len(subs) != 1:
            problems.append(f"{consumer_entry_point} has {len(subs)} push subscriptions, expected 1")
        elif subs[0].topic is None:
            problems.append(f"{subs[0].label}: topic is not one google_pubsub_topic's .id")
        else:
            trigger_topic = subs[0].topic
    for pname, policy in policies.items():
        names = references(policy.get("notification_channels"), "google_monitoring_notification_channel")
        if not names:
            problems.append(f"alert policy {pname} notifies no notification channel")
            continue
        for cname in sorted(names):
            channel = channels.get(cname)
            if channel is None:
                problems.append(f"alert policy {pname} refers to unknown channel {cname}")
                continue
            if channel.get("type") != "pubsub":
                problems.append(f"channel {cname} (used by {pname}) is not of type pubsub")
            topics = references((channel.get("labels") or {}).get("topic"), "google_pubsub_topic")
            if len(topics) != 1 or not expr((channel.get("labels") or {}).get("topic")).endswith(".id"):
                problems.append(f"channel {cname} labels.topic is not one google_pubsub_topic's .id")
                continue
            topic = next(iter(topics))
            if trigger_topic is not None and topic != trigger_topic:
                problems.append(
                    f"alert policy {pname} -> channel {cname} -> topic {topic}, but "
                    f"{consumer_entry_point}'s push subscription is on topic {trigger_topic}"
                )
    return problems


def alert_policies(tf: Terraform, variables: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every alert policy instance (for_each expanded), by its label."""
    return {inst.label: inst.body for inst in instances(tf, "google_monitoring_alert_policy", variables)}


def check_alert_policies(tf: Terraform, rule_names: Iterable[str]) -> list[str]:
    """canary_rule labels, renotify + close notifications (streak semantics), one per rule."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for pname, policy in alert_policies(tf).items():
        rule = (policy.get("user_labels") or {}).get("canary_rule")
        if rule not in set(rule_names):
            problems.append(f"alert policy {pname} has canary_rule={rule!r}, not one of {sorted(rule_names)}")
        elif rule in seen:
            problems.append(f"alert policies {seen[rule]} and {pname} both have canary_rule={rule}")
        else:
            seen[rule] = pname
        strategy = block(policy, "alert_strategy")
        if not strategy:
            problems.append(f"alert policy {pname} has no alert_strategy")
            continue
        prompts = strategy.get("notification_prompts") or []
        if "OPENED" not in prompts or "CLOSED" not in prompts:
            problems.append(f"alert policy {pname} must notify OPENED and CLOSED (a close is a recovery)")
        ncs = block(strategy, "notification_channel_strategy")
        if not ncs or not ncs.get("renotify_interval"):
            problems.append(f"alert policy {pname} has no renotify_interval (renotifications are breaches)")
        elif references(
            ncs.get("notification_channel_names"), "google_monitoring_notification_channel"
        ) != references(policy.get("notification_channels"), "google_monitoring_notification_channel"):
            problems.append(f"alert policy {pname} renotifies other channels than it notifies")
        if not strategy.get("auto_close"):
            problems.append(f"alert policy {pname} has no auto_close")
        for cond in blocks(policy, "conditions"):
            if not block(cond, "condition_threshold"):
                problems.append(f"alert policy {pname} has a condition that is not a condition_threshold")
    missing = set(rule_names) - set(seen)
    if missing:
        problems.append(f"no alert policy for rule(s) {sorted(missing)}")
    return problems


def check_alert_group_by(tf: Terraform, labels: Iterable[str]) -> list[str]:
    """Every aggregation with a cross-series reducer in a Cloud Run metric policy (numerator and
    denominator) groups by at least resource.label.<l> for each of `labels`, the resource labels
    the incident decoder reads. Monitoring aggregates away every resource label not in
    group_by_fields, and the incident carries only the labels that are left."""
    problems: list[str] = []
    needed = [f"resource.label.{label}" for label in labels]
    ev = Evaluator(tf)
    for pname, policy in alert_policies(tf).items():
        for cond in blocks(policy, "conditions"):
            threshold = block(cond, "condition_threshold") or {}
            # Cloud Run metrics are written against cloud_run_revision (the uptime check's are not).
            try:
                metric_filter = str(ev.value(threshold.get("filter", "")))
            except Unevaluable:
                metric_filter = str(threshold.get("filter", ""))
            if "run.googleapis.com/" not in metric_filter:
                continue
            grouped: dict[str, list[str]] = {}
            for agg_name in ("aggregations", "denominator_aggregations"):
                for agg in blocks(threshold, agg_name):
                    if agg.get("cross_series_reducer", "REDUCE_NONE") == "REDUCE_NONE":
                        continue  # no reduction: every label is kept
                    try:
                        fields = ev.value(agg.get("group_by_fields") or [])
                    except Unevaluable as exc:
                        problems.append(
                            f"alert policy {pname} {agg_name}: group_by_fields not evaluated ({exc})"
                        )
                        continue
                    fields = fields if isinstance(fields, list) else []
                    lacking = [f for f in needed if f not in fields]
                    if lacking:
                        problems.append(
                            f"alert policy {pname} {agg_name} aggregates away {', '.join(lacking)} "
                            f"(group_by_fields = {fields})"
                        )
                    grouped.setdefault(agg_name, []).extend(fields)
            if len(grouped) == 2 and set(grouped["aggregations"]) != set(grouped["denominator_aggregations"]):
                problems.append(f"alert policy {pname}: numerator and denominator group by different fields")
    return problems


def check_thresholds_from_policy(
    tf: Terraform, policy: Mapping[str, Any], variables: Mapping[str, Any] | None = None
) -> list[str]:
    """threshold_value = local.rules.<rule>.threshold, local.rules = the policy file's
    rollback_rules, and every policy-owned attribute (durations, intervals, schedules) is an
    expression over the policy file whose value equals the file's."""
    problems: list[str] = []
    ev = Evaluator(tf, variables)
    policy_local = expr(tf.locals.get("policy", ""))
    if not re.fullmatch(r'yamldecode\(file\("\$\{path\.module\}/\.\./shared/policy\.yaml"\)\)', policy_local):
        problems.append('local.policy is not yamldecode(file("${path.module}/../shared/policy.yaml"))')

    alerting = policy["alerting"]
    expected = {
        "duration": f"{alerting['duration_s']}s",
        "renotify_interval": f"{alerting['renotify_interval_s']}s",
        "auto_close": f"{alerting['auto_close_s']}s",
    }
    for pname, body in alert_policies(tf, variables).items():
        rule = (body.get("user_labels") or {}).get("canary_rule")
        for cond in blocks(body, "conditions"):
            threshold = block(cond, "condition_threshold") or {}
            raw = threshold.get("threshold_value")
            if not is_expr(raw) or not re.search(r"\blocal\.", expr(raw)):
                problems.append(
                    f"alert policy {pname}: threshold_value {raw!r} is typed here, "
                    "not read from the policy file"
                )
                continue
            try:
                got = ev.value(raw)
            except Unevaluable as exc:
                problems.append(f"alert policy {pname}: threshold_value cannot be evaluated: {exc}")
                continue
            want = policy["rollback_rules"].get(rule, {}).get("threshold")
            if got != want:
                problems.append(
                    f"alert policy {pname}: threshold_value evaluates to {got!r}, policy file says {want!r}"
                )
            try:
                if ev.value(threshold.get("duration")) != expected["duration"]:
                    problems.append(f"alert policy {pname}: duration is not the policy's alerting.duration_s")
            except Unevaluable as exc:
                problems.append(f"alert policy {pname}: duration cannot be evaluated: {exc}")
        strategy = block(body, "alert_strategy") or {}
        ncs = block(strategy, "notification_channel_strategy") or {}
        for attr, node in (("auto_close", strategy), ("renotify_interval", ncs)):
            try:
                if ev.value(node.get(attr)) != expected[attr]:
                    problems.append(f"alert policy {pname}: {attr} is not the policy's {attr}_s")
            except Unevaluable as exc:
                problems.append(f"alert policy {pname}: {attr} cannot be evaluated: {exc}")
    problems.extend(_hard_coded_numbers(tf))
    return problems


def _hard_coded_numbers(tf: Terraform) -> list[str]:
    """No number literal in a policy-owned attribute of alert policies, uptime checks or jobs."""
    problems: list[str] = []
    owned_types = (
        "google_monitoring_alert_policy",
        "google_monitoring_uptime_check_config",
        "google_cloud_scheduler_job",
    )

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in POLICY_OWNED_ATTRIBUTES and _has_literal_number(v):
                    problems.append(f"{where}.{k} = {v!r} hard-codes a number the policy file owns")
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    for rtype in owned_types:
        for inst in instances(tf, rtype):
            walk(inst.body, inst.label)
    return problems


def _has_literal_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if not isinstance(value, str):
        return False
    # Text outside ${...} (e.g. "60s", "* * * * *") is literal.
    outside = re.sub(r"\$\{[^}]*\}", "", value)
    return bool(re.search(r"\d", outside))


def check_monitoring_can_publish(tf: Terraform) -> list[str]:
    """Cloud Monitoring's notification service agent may publish to the channel's topic."""
    problems: list[str] = []
    agent = tf.locals.get("monitoring_notification_agent", "")
    if not MONITORING_AGENT_RE.match(str(agent)):
        problems.append(
            f"local.monitoring_notification_agent is {agent!r}, not the gcp-sa-monitoring-notification agent"
        )
    channel_topics = set()
    for channel in tf.of_type("google_monitoring_notification_channel").values():
        channel_topics |= references((channel.get("labels") or {}).get("topic"), "google_pubsub_topic")
    for topic in sorted(channel_topics):
        ok = any(
            references(b.get("topic"), "google_pubsub_topic") == {topic}
            and b.get("role") == "roles/pubsub.publisher"
            and b.get("member") == "${local.monitoring_notification_agent}"
            for b in tf.of_type("google_pubsub_topic_iam_member").values()
        )
        if not ok:
            problems.append(
                f"the monitoring notification agent has no roles/pubsub.publisher on topic {topic}"
            )
    if not channel_topics:
        problems.append("no notification channel publishes to a topic")
    return problems


def check_monitoring_agent_exists_first(tf: Terraform, min_wait_s: float) -> list[str]:
    """Every grant to Cloud Monitoring's notification service agent depends on a time_sleep of
    at least min_wait_s that starts after a Pub/Sub notification channel exists: the agent is
    created asynchronously after the project's first such channel, and a grant to a principal
    that does not exist yet is refused."""
    problems: list[str] = []
    channels = {
        f"${{google_monitoring_notification_channel.{name}}}"
        for name, body in tf.of_type("google_monitoring_notification_channel").items()
        if body.get("type") == "pubsub"
    }
    waits = set()
    for name, body in tf.of_type("time_sleep").items():
        if channels & set(body.get("depends_on") or []):
            seconds = duration_s(body.get("create_duration"))
            if seconds is None or seconds < min_wait_s:
                problems.append(
                    f"time_sleep.{name} waits {body.get('create_duration')!r} for the Monitoring agent, "
                    f"less than {min_wait_s:g}s"
                )
            waits.add(f"${{time_sleep.{name}}}")
    if not waits:
        problems.append("no time_sleep waits for the Monitoring agent after its notification channel")
    grants = 0
    for rtype, name, body in tf.all_resources():
        if "_iam_" not in rtype or body.get("member") != "${local.monitoring_notification_agent}":
            continue
        grants += 1
        if not waits & set(body.get("depends_on") or []):
            problems.append(
                f"{rtype}.{name} grants to the Monitoring notification agent without waiting for it "
                "(depends_on a time_sleep after the notification channel)"
            )
    if not grants:
        problems.append("nothing is granted to the Monitoring notification agent")
    return problems


def check_services_guarded(tf: Terraform, services: Mapping[str, Mapping[str, str]]) -> list[str]:
    """With var.services = `services`: each service is in one alert policy of every metric rule,
    gets every function's role on it, an uptime check and canary_down policy when it has a tag
    URL, its own load test job, its place in every function's CANARY_SERVICES; and no two
    instances of a resource type share a name."""
    from dataclasses import replace

    problems: list[str] = []
    tf = replace(tf, evaluated_locals=evaluate_services(tf, services))
    ev = Evaluator(tf, {**CHECK_VARIABLES, "services": dict(services)})

    def value(raw: Any) -> Any:
        try:
            return ev.value(raw)
        except Unevaluable as exc:
            return f"<{exc}>"

    fullnames = {
        name: f"projects/{CHECK_PROJECT}/locations/{s.get('location') or CHECK_REGION}/services/{name}"
        for name, s in services.items()
    }
    rules = sorted(value("${local.alerting.metric_conditions}") or {})
    policies = [inst.body for inst in instances(tf, "google_monitoring_alert_policy", ev.variables)]
    for name in services:
        for rule in rules:
            covering = [
                p
                for p in policies
                if (p.get("user_labels") or {}).get("canary_rule") == rule
                and f'"{name}"'
                in str(value((block(block(p, "conditions"), "condition_threshold") or {}).get("filter")))
            ]
            if len(covering) != 1:
                problems.append(
                    f"service {name}: {len(covering)} alert policies of rule {rule} cover it, not 1"
                )
    grants = [inst.body for inst in instances(tf, "google_cloud_run_v2_service_iam_member", ev.variables)]
    roles = value("${local.function_target_service_roles}")
    for name, s in services.items():
        for fn, fn_roles in (roles or {}).items():
            for role in fn_roles:
                on = [
                    g
                    for g in grants
                    if value(g.get("name")) == name
                    and value(g.get("location")) == (s.get("location") or CHECK_REGION)
                    and fn in str(g.get("member"))
                    and role.split("/")[-1] in str(g.get("role"))
                ]
                if not on:
                    problems.append(f"service {name}: function {fn} lacks {role} on it")
    uptime = {
        value(i.body.get("display_name")): i.body
        for i in instances(tf, "google_monitoring_uptime_check_config", ev.variables)
    }
    down = [
        i.body
        for i in instances(tf, "google_monitoring_alert_policy", ev.variables)
        if (i.body.get("user_labels") or {}).get("canary_rule") == "canary_down"
    ]
    for name, s in services.items():
        wanted = bool(s.get("canary_tag_url"))
        checks = [body for title, body in uptime.items() if str(title).startswith(f"canary-guard {name}:")]
        policies_down = [p for p in down if value((p.get("user_labels") or {}).get("canary_service")) == name]
        if wanted and (len(checks) != 1 or len(policies_down) != 1):
            problems.append(
                f"service {name}: {len(checks)} uptime checks, {len(policies_down)} canary_down policies"
            )
        if not wanted and (checks or policies_down):
            problems.append(f"service {name} has no canary tag URL but an uptime check")
        if wanted and checks:
            host = value((block(checks[0], "monitored_resource") or {}).get("labels", {}).get("host"))
            if host != s["canary_tag_url"].removeprefix("https://").rstrip("/"):
                problems.append(f"service {name}: uptime check on {host!r}, not its canary tag URL")
    bodies = []
    for inst in instances(tf, "google_cloud_scheduler_job", ev.variables):
        target = block(inst.body, "http_target") or {}
        try:
            bodies.append(json.loads(base64.b64decode(ev.value(target.get("body")))))
        except (Unevaluable, ValueError, TypeError):
            continue
    for name, fullname in fullnames.items():
        if sum(body == {"service": fullname} for body in bodies) != 1:
            problems.append(f"service {name}: not exactly one load test job for {fullname}")
    for fid, fn in functions(tf, ev.variables).items():
        listed = str(value(env_of(fn).get("CANARY_SERVICES", ""))).split(",")
        if sorted(listed) != sorted(fullnames.values()):
            problems.append(f"function {fid}: CANARY_SERVICES is {listed}, not the watched services")
    for rtype in sorted(tf.resources):
        seen: dict[str, str] = {}
        for inst in instances(tf, rtype, ev.variables):
            for attr in ("name", "account_id", "role_id", "display_name"):
                if attr in inst.body and not (rtype.endswith("_iam_member") and attr == "name"):
                    label = f"{attr}={value(inst.body[attr])}"
                    if attr == "display_name" and len(label) - len("display_name=") > 512:
                        problems.append(f"{inst.address}: display_name over the API's 512 characters")
                    if label in seen:
                        problems.append(f"{inst.address} and {seen[label]}: the same {label}")
                    seen[label] = inst.address
    return problems
