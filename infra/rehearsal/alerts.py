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

The policies, as Terraform builds them, and their incident messages are
`infra/rehearsal/alert_policies.py`; the condition and incident lifecycle is
`infra/rehearsal/alert_rules.py` (both pure); a condition is read by
`infra/rehearsal/condition_reads.py`; this module evaluates, probes and publishes. The
orchestrator calls `evaluate(at)` once per rehearsal minute (or runs `run_every_minute`). What
differs from GCP, and why:

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

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import requests
from google.api_core import exceptions as api_exceptions
from google.cloud import monitoring_v3

from infra.rehearsal.alert_policies import (
    CHECKER_REGIONS,
    UPTIME_METRIC,
    AlertPolicySpec,
    UptimeCheckSpec,
    canary_down_policy,
    incident_id,
    incident_message,
    metric_alert_policies,
    metric_type_of,
    uptime_check,
)
from infra.rehearsal.alert_rules import (
    SeriesState,
    Transition,
    advance_all,
    floor_to,
    next_older_count_false,
)
from infra.rehearsal.condition_reads import ConditionReader, RevisionSeries, Substitute
from shared import clock
from shared.clients.monitoring import RUN_RESOURCE
from shared.config import ServiceRef
from shared.policy import Policy

if TYPE_CHECKING:  # the publisher is google-cloud-pubsub's, built by the caller
    from google.cloud import pubsub_v1

log = logging.getLogger(__name__)

DEFAULT_DATA_LAG = timedelta(seconds=180)  # Cloud Run metrics are visible up to 180 s late
MIN_LOOKBACK = timedelta(minutes=10)
PUBLISH_TIMEOUT_S = 30.0


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
        refs = [s if isinstance(s, ServiceRef) else ServiceRef.parse(s) for s in services]
        self._services = {ref.service: ref for ref in refs}
        if not refs or len(self._services) != len(refs):
            # Terraform keys var.services by name: one service per name, at least one.
            raise ValueError(f"services must be one or more distinct service names, got {services!r}")
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
        self._reads = ConditionReader(monitoring_client, project, step=self._step, lookback=self._lookback)
        self.errors: list[str] = []  # of the last evaluation: a policy that could not be read

    @property
    def substitutes(self) -> dict[tuple[str, str], Substitute]:
        """(aligner, reducer) the stand-in refused -> what is asked instead (see the module docstring)."""
        return self._reads.substitutes

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
                series, arrived = self._reads.read(spec.condition, at)
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
                        metric_type=metric_type_of(spec.condition.filter),
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
