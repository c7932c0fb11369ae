"""The rehearsal's alert policies and their incidents, as values.

What terraform/monitoring.tf and services.tf build from shared/policy.yaml (one metric policy per
rule and group of at most 25 services, the canary tag's uptime check and its canary_down policy),
and the schema 1.2 incident message Cloud Monitoring publishes for them. Pure: the evaluator that
applies them is infra/rehearsal/alerts.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from infra.rehearsal.alert_rules import (
    Change,
    IncidentRules,
    MissingData,
    Transition,
)
from shared.clients.monitoring import RUN_RESOURCE
from shared.policy import Policy

if TYPE_CHECKING:  # the publisher is google-cloud-pubsub's, built by the caller
    pass

log = logging.getLogger(__name__)


# --- What terraform/monitoring.tf and services.tf fix (the rest comes from the policy file) ---

SERVICES_PER_ALERT_POLICY = 25  # services.tf local.services_per_alert_policy
REVISION_GROUP_BY = (  # monitoring.tf local.revision_group_by
    "resource.label.service_name",
    "resource.label.location",
    "resource.label.revision_name",
)
COMPARISON = "COMPARISON_GT"
NOTIFICATION_PROMPTS = ("OPENED", "CLOSED")
UPTIME_METRIC = "monitoring.googleapis.com/uptime_check/check_passed"
UPTIME_GROUP_BY = ("resource.label.project_id", "resource.label.host")
UPTIME_CONDITION = "Canary tag uptime check failing from more checker regions than the policy threshold"
# Where STATIC_IP_CHECKERS run with no selected_regions (UptimeCheckRegion: all regions).
CHECKER_REGIONS = ("USA_OREGON", "USA_IOWA", "USA_VIRGINIA", "EUROPE", "SOUTH_AMERICA", "ASIA_PACIFIC")
SEVERITY_TEXT = {"ERROR": "Error", "CRITICAL": "Critical"}  # as incidents spell it

_RESOURCE_DISPLAY = {RUN_RESOURCE: "Cloud Run Revision", "uptime_url": "Uptime Check URL"}
_METRIC_DISPLAY = {
    "run.googleapis.com/request_count": "Request Count",
    "run.googleapis.com/request_latencies": "Request Latencies",
    "run.googleapis.com/container/memory/utilizations": "Container Memory Utilization",
    UPTIME_METRIC: "Check passed",
}


# --- The alert policies, as Terraform builds them ------------------------------------------


@dataclass(frozen=True)
class AggregationSpec:
    alignment_period_s: int
    per_series_aligner: str
    cross_series_reducer: str
    group_by_fields: tuple[str, ...]

    def as_incident(self) -> dict[str, Any]:
        return {
            "alignmentPeriod": f"{self.alignment_period_s}s",
            "perSeriesAligner": self.per_series_aligner,
            "crossSeriesReducer": self.cross_series_reducer,
            "groupByFields": list(self.group_by_fields),
        }


@dataclass(frozen=True)
class ConditionSpec:
    """A google_monitoring_alert_policy's condition_threshold."""

    display_name: str
    filter: str
    threshold_value: float
    duration_s: int
    aggregation: AggregationSpec
    denominator_filter: str | None = None
    denominator_aggregation: AggregationSpec | None = None
    evaluation_missing_data: MissingData | None = None  # None: not set, i.e. NO_OP
    comparison: str = COMPARISON

    def as_incident(self) -> dict[str, Any]:
        """The incident's `condition.conditionThreshold` (camelCase, as the API writes it)."""
        threshold: dict[str, Any] = {
            "filter": self.filter,
            "comparison": self.comparison,
            "thresholdValue": self.threshold_value,
            "duration": f"{self.duration_s}s",
            "trigger": {"count": 1},
            "aggregations": [self.aggregation.as_incident()],
        }
        if self.denominator_filter is not None and self.denominator_aggregation is not None:
            threshold["denominatorFilter"] = self.denominator_filter
            threshold["denominatorAggregations"] = [self.denominator_aggregation.as_incident()]
        if self.evaluation_missing_data is not None:
            threshold["evaluationMissingData"] = self.evaluation_missing_data.value
        return threshold


@dataclass(frozen=True)
class AlertPolicySpec:
    """One google_monitoring_alert_policy instance."""

    key: str  # its for_each key: "error_rate/00", or the service for canary_down
    rule: str
    display_name: str
    severity: str
    condition: ConditionSpec
    user_labels: Mapping[str, str]
    documentation_subject: str
    auto_close_s: int
    renotify_interval_s: int
    services: tuple[str, ...]  # the short service names it covers
    notification_prompts: tuple[str, ...] = NOTIFICATION_PROMPTS

    @property
    def policy_id(self) -> str:
        """A stable stand-in for the numeric id GCP gives the policy."""
        return _numeric_id(f"policy {self.rule} {self.key}")

    @property
    def condition_id(self) -> str:
        return _numeric_id(f"condition {self.rule} {self.key}")

    def rules(self, step: timedelta, data_lag: timedelta) -> IncidentRules:
        return IncidentRules(
            threshold=self.condition.threshold_value,
            step=step,
            duration=timedelta(seconds=self.condition.duration_s),
            renotify_interval=timedelta(seconds=self.renotify_interval_s),
            auto_close=timedelta(seconds=self.auto_close_s),
            missing_data=self.condition.evaluation_missing_data or MissingData.NO_OP,
            data_lag=data_lag,
        )


@dataclass(frozen=True)
class UptimeCheckSpec:
    """google_monitoring_uptime_check_config.canary for one service."""

    service: str
    host: str
    path: str
    period_s: int
    timeout_s: int
    request_method: str = "GET"
    accepted_status_class: str = "STATUS_CLASS_2XX"

    @property
    def check_id(self) -> str:
        # GCP derives the id from the display name ("canary-guard <service>: canary tag") plus a suffix.
        return f"canary-guard-{self.service}-canary-tag"


def service_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """services.tf local.service_groups: "00", "01", ... -> up to 25 sorted names each."""
    ordered = sorted(set(names))
    return {
        f"{index:02d}": ordered[start : start + SERVICES_PER_ALERT_POLICY]
        for index, start in enumerate(range(0, len(ordered), SERVICES_PER_ALERT_POLICY))
    }


def _group_filter(names: Sequence[str]) -> str:
    listed = ", ".join(f'"{name}"' for name in names)
    return f'resource.type = "{RUN_RESOURCE}" AND resource.labels.service_name = one_of({listed})'


def metric_alert_policies(policy: Policy, service_names: Sequence[str]) -> list[AlertPolicySpec]:
    """monitoring.tf google_monitoring_alert_policy.metric_rule: one per rule of
    alerting.metric_conditions and group of services."""
    alerting = policy.alerting
    specs = []
    for rule, condition in alerting.metric_conditions.items():
        for group, names in service_groups(service_names).items():
            group_title = f"group {group}: {len(names)} services, {names[0]} … {names[-1]}"
            aggregation = AggregationSpec(
                alerting.alignment_period_s,
                condition.per_series_aligner,
                condition.cross_series_reducer,
                REVISION_GROUP_BY,
            )
            ratio = condition.denominator_filter != ""
            specs.append(
                AlertPolicySpec(
                    key=f"{rule}/{group}",
                    rule=rule,
                    display_name=f"canary-guard {condition.title} ({group_title})",
                    severity="ERROR",
                    condition=ConditionSpec(
                        display_name=f"{condition.title} per revision above the policy threshold",
                        filter=f"{condition.filter} AND {_group_filter(names)}",
                        threshold_value=policy.rollback_rules[rule].threshold,
                        duration_s=alerting.duration_s,
                        aggregation=aggregation,
                        denominator_filter=(
                            f"{condition.denominator_filter} AND {_group_filter(names)}" if ratio else None
                        ),
                        denominator_aggregation=aggregation if ratio else None,
                        evaluation_missing_data=MissingData.INACTIVE,
                    ),
                    user_labels={"app": "canary-guard", "canary_rule": rule},
                    documentation_subject=(
                        f"canary-guard: a canary's {condition.title} above the rollback threshold"
                    ),
                    auto_close_s=alerting.auto_close_s,
                    renotify_interval_s=alerting.renotify_interval_s,
                    services=tuple(names),
                )
            )
    return specs


def uptime_check(policy: Policy, service: str, canary_url: str) -> UptimeCheckSpec:
    """monitoring.tf google_monitoring_uptime_check_config.canary for `service`."""
    check = policy.alerting.uptime_check
    return UptimeCheckSpec(service, urlsplit(canary_url).netloc, check.path, check.period_s, check.timeout_s)


def canary_down_policy(policy: Policy, check: UptimeCheckSpec) -> AlertPolicySpec:
    """monitoring.tf google_monitoring_alert_policy.canary_down for the check's service."""
    alerting = policy.alerting
    return AlertPolicySpec(
        key=check.service,
        rule="canary_down",
        display_name=f"canary-guard {check.service}: canary down",
        severity="CRITICAL",
        condition=ConditionSpec(
            display_name=UPTIME_CONDITION,
            filter=(
                f'metric.type = "{UPTIME_METRIC}" AND resource.type = "uptime_url"'
                f' AND metric.labels.check_id = "{check.check_id}"'
            ),
            threshold_value=policy.rollback_rules["canary_down"].threshold,
            duration_s=alerting.duration_s,
            aggregation=AggregationSpec(
                check.period_s * 2, "ALIGN_NEXT_OLDER", "REDUCE_COUNT_FALSE", UPTIME_GROUP_BY
            ),
        ),
        user_labels={"app": "canary-guard", "canary_rule": "canary_down", "canary_service": check.service},
        documentation_subject=f"canary-guard: {check.service} canary is not serving",
        auto_close_s=alerting.auto_close_s,
        renotify_interval_s=alerting.renotify_interval_s,
        services=(check.service,),
    )


# --- The incident message (schema 1.2) -------------------------------------------------------


def number_text(value: float) -> str:
    """How an incident writes threshold_value / observed_value: a short decimal string."""
    return f"{value:.6g}"


def incident_id(spec: AlertPolicySpec, series: object, started_at: datetime) -> str:
    """One id per incident: the same for its open, renotifications and close."""
    digest = hashlib.sha256(f"{spec.key}|{series}|{started_at.isoformat()}".encode()).hexdigest()
    return f"0.{digest[:12]}"


def incident_message(
    spec: AlertPolicySpec,
    transition: Transition,
    *,
    project: str,
    project_number: int,
    resource_type: str,
    resource_labels: Mapping[str, str],
    metric_type: str,
    incident: str,
) -> dict[str, Any]:
    """The notification Cloud Monitoring publishes to a Pub/Sub channel: {"version": "1.2", ...}.

    Top level snake_case, `condition` camelCase, threshold and observed values as strings,
    started_at / ended_at unix seconds (ended_at null while open); the resource keeps only the
    labels the policy groups by (and project_id), the metric no labels (the reducer drops them)."""
    state = "closed" if transition.change is Change.CLOSE else "open"
    resource_display = _RESOURCE_DISPLAY.get(resource_type, resource_type)
    labels_text = ", ".join(f"{key}={value}" for key, value in resource_labels.items())
    metric_display = _METRIC_DISPLAY.get(metric_type, metric_type)
    threshold = number_text(spec.condition.threshold_value)
    observed = None if transition.observed is None else number_text(transition.observed)
    subject = f"{metric_display} for {project} {resource_display} labels {{{labels_text}}}"
    if state == "open":
        summary = f"{subject} is above the threshold of {threshold} with a value of {observed}."
    elif observed is None:
        summary = f"{subject} has no data: the incident closed ({transition.reason})."
    else:
        summary = f"{subject} returned to normal with a value of {observed}."
    display = resource_labels.get("revision_name") or resource_labels.get("host", "")
    body = {
        "incident_id": incident,
        "scoping_project_id": project,
        "scoping_project_number": project_number,
        "url": f"https://console.cloud.google.com/monitoring/alerting/incidents/{incident}?project={project}",
        "severity": SEVERITY_TEXT.get(spec.severity, spec.severity.title()),
        "started_at": int(transition.started_at.timestamp()),
        "ended_at": None if transition.ended_at is None else int(transition.ended_at.timestamp()),
        "state": state,
        "summary": summary,
        "apigee_url": "",
        "observed_value": observed,
        "resource": {"type": resource_type, "labels": dict(resource_labels)},
        "resource_type_display_name": resource_display,
        "resource_id": "",
        "resource_display_name": display,
        "resource_name": f"{project} {resource_display} labels {{{labels_text}}}",
        "metric": {"type": metric_type, "displayName": metric_display, "labels": {}},
        "metadata": {"system_labels": {}, "user_labels": {}},
        "policy_name": spec.display_name,
        "policy_user_labels": dict(spec.user_labels),
        "documentation": {
            "content": f"canary-guard alert policy for rule {spec.rule} (terraform/monitoring.tf).",
            "mime_type": "text/markdown",
            "subject": spec.documentation_subject,
        },
        "condition": {
            "name": f"projects/{project}/alertPolicies/{spec.policy_id}/conditions/{spec.condition_id}",
            "displayName": spec.condition.display_name,
            "conditionThreshold": spec.condition.as_incident(),
        },
        "condition_name": spec.condition.display_name,
        "threshold_value": threshold,
    }
    return {"version": "1.2", "incident": body}


def _numeric_id(text: str) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest()[:15], 16))


def metric_type_of(filter_: str) -> str:
    """The metric.type a condition filter starts with (the policy file's filters always do)."""
    return filter_.split('"', 2)[1]
