"""The daily load test and the canary-vs-legacy rate-limit probe against a watched service:
targets from the live service (the canary's tag URL; the stable revision's `stable` tag URL,
else the service URL), results judged against the policy, stored as a decision on the rollout
and written as custom metrics for the dashboard and alert policies. One deadline covers the whole
invocation: a service that cannot fit in what is left of it is skipped, not started."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import clock
from shared.clients.loadgen import run_load_test, run_probe
from shared.config import ServiceRef, Settings
from shared.core.judge import SyntheticTraffic
from shared.core.load_rules import (
    FUNCTION_MARGIN_S,
    LoadVerdict,
    TargetResult,
    judge_load,
    judge_probe,
    least_target_s,
    plan_fits,
    probe_deadline,
)
from shared.core.traffic import CANARY_TAG, discover_canary
from shared.logs import Report
from shared.policy import Policy

if TYPE_CHECKING:
    from shared.clients.cloudrun import CloudRunTraffic
    from shared.clients.custom_metrics import MetricWriter
    from shared.clients.store import RolloutStore

MODES = ("both", "load", "probe")
BODY_KEYS = ("mode", "service")
BODY_HELP = 'send no body, {} or {"mode": "both|load|probe", "service": "name"}'
STABLE_TAG = "stable"
SIDES = 2  # canary and stable (the probe calls the stable side "legacy")
_SEVERITY_RANK = ("INFO", "NOTICE", "WARNING", "ERROR")


@dataclass(frozen=True)
class LoadTestClients:
    """What the load test talks to; built lazily by the entry point, passed in by tests."""

    store: RolloutStore
    traffic: CloudRunTraffic
    writer: MetricWriter | None


def _auth_headers(auth: str, audience: str) -> dict[str, str]:
    """An ID token for a service that requires authentication (the function's identity holds
    run.invoker on it); none for a public target."""
    if auth != "id_token":
        return {}
    import google.auth.transport.requests
    import google.oauth2.id_token

    token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    return {"Authorization": f"Bearer {token}"}


def _probe_s(policy: Policy) -> float:
    probe = policy.rate_limit_probe
    return probe_deadline(probe.requests_per_side, probe.delay_ms, policy.load_test.request_timeout_s)


def service_need_s(policy: Policy, mode: str) -> float:
    """The least time one service's tests in `mode` must be given, the probe's slack included."""
    need = 0.0
    if mode in ("load", "both"):
        need += SIDES * least_target_s(policy.load_test)
    if mode in ("probe", "both"):
        need += _probe_s(policy)
    return need


def check_plan(policy: Policy, settings: Settings, mode: str, *, services: int = 1) -> None:
    """Raise ValueError, saying why, when `services` services cannot all be tested in `mode`
    one after another within one invocation (the function's timeout and memory)."""
    timeout_s, memory_mb = settings.function_timeout_s, settings.function_memory_mb
    probe_s = 0.0
    if mode in ("probe", "both"):
        plan_fits(
            policy.rate_limit_probe,
            timeout_s,
            memory_mb,
            targets=SIDES,
            services=services,
            request_timeout_s=policy.load_test.request_timeout_s,
        )
        probe_s = _probe_s(policy)
    if mode in ("load", "both"):
        load = policy.load_test
        plan_fits(
            load,
            timeout_s,
            memory_mb,
            targets=SIDES,
            services=services,
            deadline_s=None if load.mode == "open" else least_target_s(load),
            alongside_s=probe_s,
        )


def _out_of_time(service: ServiceRef, need_s: float, deadline: float) -> Report | None:
    """A report that `service` is skipped when less than `need_s` is left before `deadline`:
    better not started than killed by the platform mid-run with nothing recorded."""
    left_s = deadline - time.monotonic()
    if left_s >= need_s:
        return None
    return Report(
        "WARNING",
        f"{service.service}: skipped, not enough time left in this run: "
        f"{need_s:.1f} s needed, {max(left_s, 0.0):.1f} s left",
        service=service.name,
        outcome="skipped",
    )


def run_service_tests(
    service: ServiceRef,
    *,
    mode: str,
    settings: Settings,
    policy: Policy,
    store: RolloutStore,
    traffic: CloudRunTraffic,
    writer: MetricWriter | None,
    auth: str = "none",
    now: datetime | None = None,
    deadline: float | None = None,
    services_left: int = 1,
    requested_by: str = "canary-guard/load_test",
) -> Report:
    """Load test and/or probe one service's canary and stable sides. Refuses (ValueError) a
    configuration that cannot fit the function's timeout or memory before sending anything.

    `deadline` (time.monotonic()): by when this and the `services_left - 1` services after it
    must be done; default: the function timeout less FUNCTION_MARGIN_S from now. The service
    is skipped when what is left is less than it needs, else it gets an equal share of what
    is left (at least what it needs)."""
    if deadline is None:
        deadline = time.monotonic() + settings.function_timeout_s - FUNCTION_MARGIN_S
    check_plan(policy, settings, mode)
    need_s = service_need_s(policy, mode)
    if skipped := _out_of_time(service, need_s, deadline):  # no Cloud Run read for a service never run
        return skipped
    live = traffic.get(service.name)
    split = discover_canary(live)
    canary_url = live.tag_uris.get(CANARY_TAG)
    if split is None or not canary_url:
        return Report(
            "INFO", f"{service.service}: no live canary to test", service=service.name, outcome="no_canary"
        )
    stable_url = live.tag_uris.get(STABLE_TAG) or live.uri
    sides = {"canary": canary_url, "stable": stable_url}
    headers = _auth_headers(auth, live.uri)
    rollout = store.rollout_of_live_canary(service.name, split, found_by="discovered by load_test")
    # Again after the Cloud Run read (with its retries), the token and Firestore: their time is spent.
    if skipped := _out_of_time(service, need_s, deadline):
        return skipped
    started = time.monotonic()
    started_at = clock.now()
    share_s = max(need_s, (deadline - started) / services_left)
    ends = started + share_s
    # Said before the first request: checkpoints leave this run's minutes out of the canary's
    # request metrics, up to its deadline if it is killed before it can say it ended. (The stable
    # side, when it is the service URL, also reaches the canary: the same minutes cover it.)
    run_id = f"run_{uuid.uuid4().hex}"
    store.note_synthetic_traffic(
        rollout.id,
        run_id,
        SyntheticTraffic(started_at, started_at + timedelta(seconds=share_s), finished=False),
    )

    record: dict[str, Any] = {"mode": mode, "targets": sides}
    verdicts: dict[str, str] = {}
    probe_s = _probe_s(policy) if mode in ("probe", "both") else 0.0
    load: dict[str, TargetResult] = {}
    judged: dict[str, LoadVerdict] = {}
    probe_verdict: LoadVerdict | None = None
    if mode in ("load", "both"):
        load = run_load_test(
            sides,
            policy.load_test,
            headers=headers,
            function_timeout_s=settings.function_timeout_s,
            memory_mb=settings.function_memory_mb,
            budget_s=share_s - probe_s,  # the probe's time is kept for it
        )
        judged = {side: judge_load(result, policy.load_test) for side, result in load.items()}
        record["load_test"] = {
            side: result.as_dict() | {"verdict": judged[side].as_dict()} for side, result in load.items()
        }
        verdicts |= {f"load_{side}": verdict.status for side, verdict in judged.items()}
    probe: dict[str, TargetResult] = {}
    if mode in ("probe", "both"):
        path = policy.load_test.path
        probe = asyncio.run(
            run_probe(
                {"canary": canary_url.rstrip("/") + path, "legacy": stable_url.rstrip("/") + path},
                requests_per_side=policy.rate_limit_probe.requests_per_side,
                delay_ms=policy.rate_limit_probe.delay_ms,
                timeout_s=policy.load_test.request_timeout_s,
                deadline_s=min(probe_s, ends - time.monotonic()),
                method=policy.load_test.method,
                headers={**policy.load_test.headers, **headers},
            )
        )
        probe_verdict = judge_probe(probe, policy.rate_limit_probe)
        record["probe"] = {side: result.as_dict() for side, result in probe.items()} | {
            "verdict": probe_verdict.as_dict()
        }
        verdicts["probe"] = probe_verdict.status

    if "FAIL" in verdicts.values():
        overall = "FAIL"
    elif verdicts and set(verdicts.values()) == {"PASS"}:
        overall = "PASS"
    else:
        overall = "INCONCLUSIVE"
    summary = ", ".join(f"{name} {status}" for name, status in verdicts.items())
    message = f"{service.service}: load test {overall} ({summary})"
    # What failed, and by how much, in the message itself (the CLI and the channel show it).
    failing = [
        f"load {side}: {'; '.join(verdict.reasons)}"
        for side, verdict in judged.items()
        if verdict.status == "FAIL"
    ]
    if probe_verdict is not None and probe_verdict.status == "FAIL":
        failing.append(f"probe: {'; '.join(probe_verdict.reasons)}")
    if failing:
        message += ": " + " | ".join(failing)
    store.record_load_test(
        rollout.id,
        record | {"verdict": overall, "verdicts": verdicts, "message": message, "requested_by": requested_by},
        # A request the client gave up on may still finish on the server up to its timeout later.
        (
            run_id,
            SyntheticTraffic(started_at, clock.now() + timedelta(seconds=policy.load_test.request_timeout_s)),
        ),
    )
    _write_metrics(writer, service, load, probe, now or clock.now())
    return Report(
        "NOTICE" if overall == "FAIL" else "INFO",
        message,
        service=service.name,
        rollout=rollout.id,
        outcome=overall,
        verdicts=verdicts,
        results=record,
    )


def _write_metrics(
    writer: MetricWriter | None,
    service: ServiceRef,
    load: dict[str, TargetResult],
    probe: dict[str, TargetResult],
    at: datetime,
) -> None:
    """custom.googleapis.com/canary_guard/load_test/* per side, for the dashboard and alerts."""
    if writer is None:
        return
    from shared.clients.custom_metrics import CustomPoint

    points = []
    for side, result in load.items():
        labels = {"service": service.service, "side": side}
        failed = result.requests - result.successes
        points.append(
            CustomPoint(
                "load_test/error_rate", failed / result.requests if result.requests else 0.0, labels, at
            )
        )
        points.append(CustomPoint("load_test/requests", float(result.requests), labels, at))
        if result.latency.p95_ms is not None:
            points.append(CustomPoint("load_test/latency_p95", float(result.latency.p95_ms), labels, at))
    for side, result in probe.items():
        labels = {"service": service.service, "side": side}
        rate = result.successes / result.requests if result.requests else 0.0
        points.append(CustomPoint("load_test/probe_success_rate", rate, labels, at))
    if points:
        writer.write(points)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), type(value).__name__)


def handle_load_test(
    body: Any,
    *,
    settings: Settings,
    policy: Policy,
    auth: str,
    clients: LoadTestClients | None = None,
) -> tuple[Report, int]:
    """The HTTP adapter's core. Body: None (no body) or a JSON object, empty or with "mode"
    ("both" | "load" | "probe") and "service" (a name); empty means every watched service,
    both modes. 400 for anything else, or when the services cannot all fit one invocation."""
    # One deadline for the whole invocation, set first: every service's Cloud Run reads, token
    # fetch and Firestore writes count against it, not only its load.
    deadline = time.monotonic() + settings.function_timeout_s - FUNCTION_MARGIN_S
    from google.api_core import exceptions as gexc

    from shared.clients.cloudrun import ControlPlaneError

    if body is None:
        body = {}
    if not isinstance(body, dict):  # `[]`, `false`, `0` or `""` must not mean "everything"
        message = f"body must be a JSON object, got {_json_type(body)}: {BODY_HELP}"
        return Report("WARNING", message, outcome="bad_request"), 400
    if unknown := sorted(set(body) - set(BODY_KEYS)):
        return Report(
            "WARNING",
            f"unknown key(s) {', '.join(map(repr, unknown))} in the body; the allowed keys are "
            f"{', '.join(BODY_KEYS)}: {BODY_HELP}",
            outcome="bad_request",
        ), 400
    mode = body.get("mode", "both")
    if mode not in MODES:
        return Report("WARNING", f"mode must be one of {', '.join(MODES)}, got {mode!r}"), 400
    if not isinstance(body.get("service", ""), str):
        return Report("WARNING", f"service must be a service name (a string): {BODY_HELP}"), 400
    try:
        services = (
            [settings.resolve_service(body["service"])] if "service" in body else list(settings.services)
        )
    except LookupError as exc:
        return Report("WARNING", str(exc)), 403
    except ValueError as exc:
        return Report("WARNING", str(exc)), 400
    try:
        check_plan(policy, settings, mode, services=len(services))
    except ValueError as exc:  # the configuration cannot fit this function: fix the policy
        return Report("ERROR", f"load test refused: {exc}", outcome="refused"), 400
    if clients is None:
        from shared import runtime

        clients = LoadTestClients(runtime.store(), runtime.traffic(), runtime.writer())
    reports = []
    for index, service in enumerate(services):
        try:
            reports.append(
                run_service_tests(
                    service,
                    mode=mode,
                    settings=settings,
                    policy=policy,
                    store=clients.store,
                    traffic=clients.traffic,
                    writer=clients.writer,
                    auth=auth,
                    deadline=deadline,
                    services_left=len(services) - index,
                )
            )
        except ValueError as exc:  # the configuration cannot fit this function: fix the policy
            return Report("ERROR", f"load test refused: {exc}", service=service.name, outcome="refused"), 400
        except (ControlPlaneError, gexc.GoogleAPICallError) as exc:  # one service's fault spares the others
            reports.append(
                Report("ERROR", f"{service.service}: load test failed: {exc}", service=service.name)
            )
    results = [report.as_dict() for report in reports]
    summary = "; ".join(r.message for r in reports)
    if any(report.severity == "ERROR" for report in reports):
        return Report("ERROR", summary, results=results, outcome="partial_failure"), 503
    severity = max((report.severity for report in reports), key=_SEVERITY_RANK.index, default="INFO")
    skipped = any(report.fields.get("outcome") == "skipped" for report in reports)
    return Report(severity, summary, results=results, outcome="incomplete" if skipped else "done"), 200
