"""The rehearsal's alert evaluator: Cloud Monitoring's alerting, run locally on the rehearsal clock.

It applies the alert policies terraform/monitoring.tf builds from shared/policy.yaml, to the
metrics in the local Cloud Monitoring stand-in, and publishes their incidents (schema 1.2) to the
alerts topic of the Pub/Sub emulator, where breach_counter is pushed them as in GCP:

- metric rules (`alerting.metric_conditions`): one policy per rule and group of at most 25
  services (services.tf), its filter, aligner, cross-series reducer grouped by service, location
  and revision, ratio denominator, threshold (COMPARISON_GT), duration, renotify interval and
  auto close, read with `MetricServiceClient.list_time_series` exactly as the condition states;
- canary_down: the uptime check on each service's canary tag URL (`alerting.uptime_check`), and
  its policy: ALIGN_NEXT_OLDER over two check periods per checker region, REDUCE_COUNT_FALSE,
  more than `rollback_rules.canary_down.threshold` regions failing.

The condition and incident lifecycle is `infra/rehearsal/alert_rules.py` (pure); this module reads,
probes and publishes. The orchestrator calls `evaluate(at)` once per rehearsal minute (or runs
`run_every_minute`). What differs from GCP, and why:

- The stand-in lacks ALIGN_RATE and the REDUCE_PERCENTILE_* reducers. The exact aggregation is
  asked first; when the stand-in answers UNIMPLEMENTED, the same value is computed from what it
  has: ALIGN_RATE = ALIGN_DELTA / alignment period (a ratio of rates is the ratio of deltas),
  REDUCE_PERCENTILE_q of DELTA distributions = the q-th percentile of their REDUCE_SUM (the merged
  histogram), with the percentile shared/monitoring.py and the stand-in compute too.
- A ratio whose numerator has no point (no 5xx that minute) has no value: no data, which the
  metric policies' EVALUATION_MISSING_DATA_INACTIVE evaluates as false.
- Uptime checks run from six checker regions in GCP; here one probe stands for all of them (they
  would all reach the same local server), so a failed probe counts as six failing regions. The
  probe's timeout is the policy's, in real seconds (shared/clock.py: timeouts are not scaled);
  TLS, port 443 and OIDC are left out (the local canary is plain HTTP); the incident's `host`
  label is the URL's host:port, so services on one local host stay apart.
- Incidents carry what breach_counter and the console read; the `documentation.content` is a
  pointer, not Terraform's text, and `scoping_project_number` is whatever the caller passes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import requests
from google.api_core import exceptions as api_exceptions
from google.cloud import monitoring_v3

from infra.rehearsal.alert_rules import (
    Change,
    IncidentRules,
    MissingData,
    SeriesState,
    Transition,
    advance_all,
    floor_to,
    next_older_count_false,
)
from shared import clock
from shared.clients.monitoring import CALL_TIMEOUT_S, READ_RETRY, RUN_RESOURCE
from shared.config import SERVICE_NAME_RE
from shared.core.distributions import percentile
from shared.policy import Policy

if TYPE_CHECKING:  # the publisher is google-cloud-pubsub's, built by the caller
    from google.cloud import pubsub_v1

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

DEFAULT_DATA_LAG = timedelta(seconds=180)  # Cloud Run metrics are visible up to 180 s late
MIN_LOOKBACK = timedelta(minutes=10)
PUBLISH_TIMEOUT_S = 30.0
_RESOURCE_DISPLAY = {RUN_RESOURCE: "Cloud Run Revision", "uptime_url": "Uptime Check URL"}
_METRIC_DISPLAY = {
    "run.googleapis.com/request_count": "Request Count",
    "run.googleapis.com/request_latencies": "Request Latencies",
    "run.googleapis.com/container/memory/utilizations": "Container Memory Utilization",
    UPTIME_METRIC: "Check passed",
}


@dataclass(frozen=True, order=True)
class ServiceRef:
    """A watched Cloud Run service."""

    project: str
    location: str
    service: str

    @classmethod
    def parse(cls, value: str | ServiceRef) -> ServiceRef:
        """From `projects/P/locations/L/services/S` (CANARY_SERVICES' form) or a ServiceRef."""
        if isinstance(value, ServiceRef):
            return value
        match = SERVICE_NAME_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not projects/PROJECT/locations/LOCATION/services/SERVICE")
        return cls(*match.groups())

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/services/{self.service}"


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


# --- The evaluator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentNotice:
    """One notification published: what the live view and the timeline record."""

    at: datetime  # the evaluation (rehearsal) time it was published at
    service: str  # projects/P/locations/L/services/S
    revision: str  # "" for canary_down (the uptime check names no revision)
    rule: str
    state: Literal["open", "renotify", "closed"]
    observed: float | None
    threshold: float
    incident_id: str
    reason: str
    message_id: str


class RevisionSeries(NamedTuple):
    """One time series of a metric policy: what its group_by_fields keep."""

    service: str
    location: str
    revision: str


@dataclass(frozen=True)
class _Substitute:
    """A stand-in-supported aggregation giving the same aligned value as the one asked for."""

    aligner: str
    reducer: str
    divide_by: float = 1.0  # ALIGN_RATE from ALIGN_DELTA: per second
    percentile: float | None = None  # REDUCE_PERCENTILE_q from REDUCE_SUM of distributions


def standin_substitute(aggregation: AggregationSpec) -> _Substitute | None:
    """What to ask the stand-in instead of an aggregation it does not implement; None: no equivalent."""
    aligner, reducer = aggregation.per_series_aligner, aggregation.cross_series_reducer
    divide_by, quantile = 1.0, None
    if aligner == "ALIGN_RATE":
        aligner, divide_by = "ALIGN_DELTA", float(aggregation.alignment_period_s)
    if reducer.startswith("REDUCE_PERCENTILE_"):
        reducer, quantile = "REDUCE_SUM", float(reducer.removeprefix("REDUCE_PERCENTILE_"))
    if (aligner, reducer) == (aggregation.per_series_aligner, aggregation.cross_series_reducer):
        return None
    return _Substitute(aligner, reducer, divide_by, quantile)


@dataclass
class _Uptime:
    """One service's uptime check: its probe results and the canary_down series."""

    check: UptimeCheckSpec
    results: list[tuple[datetime, bool]] = field(default_factory=list)
    last_probe: datetime | None = None
    state: SeriesState = field(default_factory=SeriesState)


class AlertEvaluator:
    """Cloud Monitoring alerting for the rehearsal: `evaluate(at)` once per rehearsal minute.

    `services`: the watched services (full names or ServiceRef). `monitoring_client`: a
    MetricServiceClient (`shared.clients.monitoring.metric_service_client`). `publisher` / `topic_path`: a
    google-cloud-pubsub PublisherClient and the alerts topic (PUBSUB_EMULATOR_HOST set by the
    caller). `canary_urls`: service (short or full name) -> canary tag base URL, asked at every
    evaluation; None: no uptime checks. `data_lag`: how long after its minute a Cloud Run point
    may still appear in the stand-in (at least the rehearsal's visibility lag).
    """

    def __init__(
        self,
        policy: Policy,
        project: str,
        services: Sequence[str | ServiceRef],
        monitoring_client: monitoring_v3.MetricServiceClient,
        publisher: pubsub_v1.PublisherClient,
        topic_path: str,
        canary_urls: Callable[[], Mapping[str, str]] | None = None,
        *,
        now: Callable[[], datetime] = clock.now,
        data_lag: timedelta = DEFAULT_DATA_LAG,
        project_number: int = 0,
        probe_timeout_s: float | None = None,
    ) -> None:
        self._policy = policy
        self._project = project
        self._project_number = project_number
        refs = [ServiceRef.parse(service) for service in services]
        self._services = {ref.service: ref for ref in refs}
        if not refs or len(self._services) != len(refs):
            # Terraform keys var.services by name: one service per name, at least one.
            raise ValueError(f"services must be one or more distinct service names, got {services!r}")
        self._client = monitoring_client
        self._publisher = publisher
        self._topic = topic_path
        self._canary_urls = canary_urls
        self._now = now
        self._probe_timeout_s = probe_timeout_s or float(policy.alerting.uptime_check.timeout_s)
        self._step = timedelta(seconds=policy.alerting.alignment_period_s)
        self.policies = metric_alert_policies(policy, sorted(self._services))
        duration = timedelta(seconds=policy.alerting.duration_s)
        self._lookback = max(MIN_LOOKBACK, data_lag + duration + 3 * self._step)
        self._rules = {spec.key: spec.rules(self._step, data_lag) for spec in self.policies}
        self._states: dict[str, dict[RevisionSeries, SeriesState]] = {spec.key: {} for spec in self.policies}
        self._uptime: dict[str, _Uptime] = {}
        # (aligner, reducer) the stand-in refused -> what is asked instead (see the module docstring)
        self.substitutes: dict[tuple[str, str], _Substitute] = {}
        self.errors: list[str] = []  # of the last evaluation: a policy that could not be read

    # --- the minute ---

    def evaluate(self, at: datetime | None = None) -> list[IncidentNotice]:
        """Evaluate every policy as of `at` (default: now), publish what it calls for, and return
        what was published. A policy whose read fails is skipped (logged in `errors`) and
        catches up at the next evaluation; a failed publish raises, its series unchanged."""
        at = self._now() if at is None else at
        if at.tzinfo is None:
            raise ValueError("evaluate needs a timezone-aware time")
        self.errors = []
        notices: list[IncidentNotice] = []
        for spec in self.policies:
            try:
                series, arrived = self._read_condition(spec.condition, at)
            except api_exceptions.GoogleAPICallError as exc:
                self.errors.append(f"{spec.display_name}: {exc}")
                log.warning("alert policy %s not evaluated at %s: %s", spec.key, at.isoformat(), exc)
                continue
            notices.extend(self._advance_metric_policy(spec, series, arrived, at))
        notices.extend(self._evaluate_uptime(at))
        return notices

    def run_every_minute(
        self, stop: threading.Event, on_notices: Callable[[list[IncidentNotice]], None] | None = None
    ) -> None:
        """Evaluate at every minute of the clock until `stop` is set (a rehearsal's scaled clock
        sleeps its minutes in real seconds). Failures are logged, never end the loop."""
        while not stop.is_set():
            at = self._now()
            try:
                notices = self.evaluate(at)
                if on_notices and notices:
                    on_notices(notices)
            except Exception:
                log.exception("alert evaluation at %s failed", at.isoformat())
            following = floor_to(self._now(), timedelta(minutes=1)) + timedelta(minutes=1)
            scaled = clock.current()
            span = following - self._now()
            stop.wait(max(0.05, scaled.real_seconds(span) if scaled else span.total_seconds()))

    # --- metric policies ---

    def _read_condition(
        self, condition: ConditionSpec, at: datetime
    ) -> tuple[dict[RevisionSeries, dict[datetime, float]], dict[RevisionSeries, datetime]]:
        """The condition's aligned values per revision series, and per series the newest period
        any of its data (numerator or denominator) has arrived for."""
        end = floor_to(at, self._step)
        start = end - self._lookback
        numerator = self._aligned(condition.filter, condition.aggregation, start, end)
        arrived = {key: max(points) for key, points in numerator.items() if points}
        if condition.denominator_filter is None or condition.denominator_aggregation is None:
            return numerator, arrived
        denominator = self._aligned(
            condition.denominator_filter, condition.denominator_aggregation, start, end
        )
        ratios: dict[RevisionSeries, dict[datetime, float]] = {}
        for key, totals in denominator.items():
            if totals:
                arrived[key] = max(arrived.get(key, max(totals)), max(totals))
            parts = numerator.get(key, {})
            # No numerator point (no 5xx that minute): no ratio, i.e. no data (see the docstring).
            values = {when: parts[when] / total for when, total in totals.items() if total and when in parts}
            if values:
                ratios[key] = values
        return ratios, arrived

    def _aligned(
        self, filter_: str, aggregation: AggregationSpec, start: datetime, end: datetime
    ) -> dict[RevisionSeries, dict[datetime, float]]:
        wanted = (aggregation.per_series_aligner, aggregation.cross_series_reducer)
        substitute = self.substitutes.get(wanted)
        try:
            found = self._list(filter_, aggregation, substitute, start, end)
        except api_exceptions.MethodNotImplemented:
            substitute = None if substitute else standin_substitute(aggregation)
            if substitute is None:
                raise
            log.info("the Monitoring stand-in lacks %s + %s: reading %s", *wanted, substitute)
            self.substitutes[wanted] = substitute
            found = self._list(filter_, aggregation, substitute, start, end)
        series: dict[RevisionSeries, dict[datetime, float]] = {}
        for one in found:
            raw = monitoring_v3.TimeSeries.pb(one)
            labels = raw.resource.labels
            key = RevisionSeries(labels["service_name"], labels["location"], labels["revision_name"])
            points = series.setdefault(key, {})
            for point in raw.points:
                value = _point_value(point.value, substitute)
                if value is not None:
                    points[datetime.fromtimestamp(point.interval.end_time.seconds, UTC)] = value
        return series

    def _list(
        self,
        filter_: str,
        aggregation: AggregationSpec,
        substitute: _Substitute | None,
        start: datetime,
        end: datetime,
    ) -> list[monitoring_v3.TimeSeries]:
        aligner = substitute.aligner if substitute else aggregation.per_series_aligner
        reducer = substitute.reducer if substitute else aggregation.cross_series_reducer
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{self._project}",
            filter=filter_,
            interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
            aggregation=monitoring_v3.Aggregation(
                alignment_period=timedelta(seconds=aggregation.alignment_period_s),
                per_series_aligner=monitoring_v3.Aggregation.Aligner[aligner],
                cross_series_reducer=monitoring_v3.Aggregation.Reducer[reducer],
                group_by_fields=list(aggregation.group_by_fields),
            ),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        return list(self._client.list_time_series(request=request, retry=READ_RETRY, timeout=CALL_TIMEOUT_S))

    def _advance_metric_policy(
        self,
        spec: AlertPolicySpec,
        series: Mapping[RevisionSeries, Mapping[datetime, float]],
        arrived: Mapping[RevisionSeries, datetime],
        at: datetime,
    ) -> list[IncidentNotice]:
        before = self._states[spec.key]
        after, changes = advance_all(
            before,
            series,
            at,
            self._rules[spec.key],
            arrived_through=arrived,
            keep_for=self._lookback + self._step,
        )
        notices = []
        for index, (key, transition) in enumerate(changes):
            labels = {
                "project_id": self._project,
                "service_name": key.service,
                "location": key.location,
                "revision_name": key.revision,
            }
            try:
                notices.append(
                    self._publish(
                        spec,
                        transition,
                        at,
                        series_key=key,
                        service=ServiceRef(self._project, key.location, key.service).name,
                        revision=key.revision,
                        resource_type=RUN_RESOURCE,
                        resource_labels=labels,
                        metric_type=_metric_type(spec.condition.filter),
                    )
                )
            except Exception:
                # Keep the unpublished series as they were: the next evaluation decides again.
                for pending, _ in changes[index:]:
                    if pending in before:
                        after[pending] = before[pending]
                    else:
                        after.pop(pending, None)
                self._states[spec.key] = after
                raise
        self._states[spec.key] = after
        return notices

    # --- canary_down ---

    def _evaluate_uptime(self, at: datetime) -> list[IncidentNotice]:
        if self._canary_urls is None:
            return []
        urls = {name.rstrip("/").rsplit("/", 1)[-1]: url for name, url in self._canary_urls().items()}
        period = timedelta(seconds=self._policy.alerting.uptime_check.period_s)
        due = {}
        for service, url in urls.items():
            if service not in self._services:
                continue  # Terraform checks watched services only
            uptime = self._uptime.get(service)
            check = uptime_check(self._policy, service, url)
            if uptime is None or uptime.check != check:
                uptime = self._uptime[service] = _Uptime(
                    check, state=uptime.state if uptime else SeriesState()
                )
            if uptime.last_probe is None or at - uptime.last_probe >= period:
                due[service] = url
        for service, passed in self._probe_all(due).items():
            uptime = self._uptime[service]
            uptime.results.append((at, passed))
            uptime.last_probe = at

        notices = []
        for service, uptime in sorted(self._uptime.items()):
            spec = canary_down_policy(self._policy, uptime.check)
            window = timedelta(seconds=spec.condition.aggregation.alignment_period_s)
            uptime.results = [
                (when, ok) for when, ok in uptime.results if at - when <= self._lookback + window
            ]
            last = floor_to(at, period)
            ends = [last - k * period for k in range(self._lookback // period, -1, -1)]
            points = next_older_count_false(uptime.results, ends, window=window, regions=len(CHECKER_REGIONS))
            rules = spec.rules(period, timedelta(0))
            state, transitions = advance_all(
                {service: uptime.state}, {service: points}, at, rules, keep_for=self._lookback
            )
            for _, transition in transitions:
                notices.append(
                    self._publish(
                        spec,
                        transition,
                        at,
                        series_key=service,
                        service=self._services[service].name,
                        revision="",
                        resource_type="uptime_url",
                        resource_labels={"project_id": self._project, "host": uptime.check.host},
                        metric_type=UPTIME_METRIC,
                    )
                )
            uptime.state = state.get(service, SeriesState())
        return notices

    def _probe_all(self, urls: Mapping[str, str]) -> dict[str, bool]:
        if not urls:
            return {}
        path = self._policy.alerting.uptime_check.path
        with ThreadPoolExecutor(max_workers=min(8, len(urls)), thread_name_prefix="uptime") as pool:
            futures = {
                service: pool.submit(probe, url.rstrip("/") + path, self._probe_timeout_s)
                for service, url in urls.items()
            }
            return {service: future.result() for service, future in futures.items()}

    # --- publishing ---

    def _publish(
        self,
        spec: AlertPolicySpec,
        transition: Transition,
        at: datetime,
        *,
        series_key: object,
        service: str,
        revision: str,
        resource_type: str,
        resource_labels: Mapping[str, str],
        metric_type: str,
    ) -> IncidentNotice:
        incident = incident_id(spec, series_key, transition.started_at)
        message = incident_message(
            spec,
            transition,
            project=self._project,
            project_number=self._project_number,
            resource_type=resource_type,
            resource_labels=resource_labels,
            metric_type=metric_type,
            incident=incident,
        )
        data = json.dumps(message, separators=(",", ":")).encode()
        message_id = self._publisher.publish(self._topic, data).result(timeout=PUBLISH_TIMEOUT_S)
        notice = IncidentNotice(
            at=at,
            service=service,
            revision=revision,
            rule=spec.rule,
            state=transition.change.value,
            observed=transition.observed,
            threshold=spec.condition.threshold_value,
            incident_id=incident,
            reason=transition.reason,
            message_id=message_id,
        )
        log.info("incident %s %s: %s %s %s", incident, notice.state, spec.rule, service, revision)
        return notice


def probe(url: str, timeout_s: float) -> bool:
    """One uptime check: GET, no redirects followed, passed on a 2xx (STATUS_CLASS_2XX) in time."""
    started = time.monotonic()
    try:
        response = requests.get(url, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException:
        return False
    # requests' timeout bounds each socket wait, not the whole answer: the check's timeout does.
    return 200 <= response.status_code < 300 and time.monotonic() - started <= timeout_s


def _numeric_id(text: str) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest()[:15], 16))


def _metric_type(filter_: str) -> str:
    """The metric.type a condition filter starts with (the policy file's filters always do)."""
    return filter_.split('"', 2)[1]


def _point_value(value: Any, substitute: _Substitute | None) -> float | None:
    """An aligned point's value as a float (None: no value, e.g. an empty distribution)."""
    which = value.WhichOneof("value")
    if which == "distribution_value":
        if substitute is None or substitute.percentile is None:
            raise ValueError("a distribution where the condition needs a number")
        return percentile(value.distribution_value, substitute.percentile)
    number = float(value.double_value if which == "double_value" else value.int64_value)
    return number / substitute.divide_by if substitute else number
