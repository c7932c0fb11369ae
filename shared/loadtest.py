"""The daily load test and the canary-vs-legacy rate-limit probe against a watched service:
targets from the live service (the canary's tag URL; the stable revision's `stable` tag URL,
else the service URL), results judged against the policy, stored as a decision on the rollout
and written as custom metrics for the dashboard and alert policies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.config import ServiceRef, Settings
from shared.loadgen import TargetResult, judge_load, judge_probe, plan_fits, run_load_test, run_probe
from shared.logs import Report
from shared.policy import Policy
from shared.store import rollout_id
from shared.traffic import CANARY_TAG, discover_canary

if TYPE_CHECKING:
    from shared.cloudrun import CloudRunTraffic
    from shared.monitoring import MetricWriter
    from shared.store import RolloutStore

MODES = ("both", "load", "probe")
STABLE_TAG = "stable"


def _auth_headers(auth: str, audience: str) -> dict[str, str]:
    """An ID token for a service that requires authentication (the function's identity holds
    run.invoker on it); none for a public target."""
    if auth != "id_token":
        return {}
    import google.auth.transport.requests
    import google.oauth2.id_token

    token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    return {"Authorization": f"Bearer {token}"}


def _probe_bound_s(policy: Policy) -> float:
    probe = policy.rate_limit_probe
    return probe.requests_per_side * (probe.delay_ms / 1000 + policy.load_test.request_timeout_s)


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
) -> Report:
    """Load test and/or probe one service's canary and stable sides. Refuses (ValueError) a
    configuration that cannot fit the function's timeout or memory before sending anything."""
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
    rid = rollout_id(service.name, split.canary_revision)
    rollout = store.get(rid) or store.register(
        service.name,
        split.canary_revision,
        split.stable_revision,
        canary_percent=split.canary_percent,
        started_by="discovered by load_test",
    )

    record: dict[str, Any] = {"mode": mode, "targets": sides}
    verdicts: dict[str, str] = {}
    budget_s = settings.function_timeout_s
    if mode in ("probe", "both"):
        plan_fits(
            policy.rate_limit_probe,
            settings.function_timeout_s,
            settings.function_memory_mb,
            targets=2,
            request_timeout_s=policy.load_test.request_timeout_s,
        )
        budget_s -= _probe_bound_s(policy)
    load: dict[str, TargetResult] = {}
    if mode in ("load", "both"):
        load = run_load_test(
            sides,
            policy.load_test,
            headers=headers,
            function_timeout_s=budget_s,
            memory_mb=settings.function_memory_mb,
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
                method=policy.load_test.method,
                headers={**policy.load_test.headers, **headers},
            )
        )
        verdict = judge_probe(probe, policy.rate_limit_probe)
        record["probe"] = {side: result.as_dict() for side, result in probe.items()} | {
            "verdict": verdict.as_dict()
        }
        verdicts["probe"] = verdict.status

    if "FAIL" in verdicts.values():
        overall = "FAIL"
    elif verdicts and set(verdicts.values()) == {"PASS"}:
        overall = "PASS"
    else:
        overall = "INCONCLUSIVE"
    summary = ", ".join(f"{name} {status}" for name, status in verdicts.items())
    message = f"{service.service}: load test {overall} ({summary})"
    store.record_load_test(
        rollout.id, record | {"verdict": overall, "verdicts": verdicts, "message": message}
    )
    _write_metrics(writer, service, load, probe, now or datetime.now(UTC))
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
    from shared.monitoring import CustomPoint

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


def handle_load_test(body: Any, *, settings: Settings, policy: Policy, auth: str) -> tuple[Report, int]:
    """The HTTP adapter's core. Body (optional): {"mode": "both"|"load"|"probe", "service": name}."""
    from google.api_core import exceptions as gexc

    from shared import runtime
    from shared.cloudrun import ControlPlaneError

    body = body or {}
    if not isinstance(body, dict) or set(body) - {"mode", "service"}:
        return Report("WARNING", 'body must be empty or {"mode": "both|load|probe", "service": "name"}'), 400
    mode = body.get("mode", "both")
    if mode not in MODES:
        return Report("WARNING", f"mode must be one of {', '.join(MODES)}, got {mode!r}"), 400
    try:
        services = (
            [settings.resolve_service(body["service"])] if "service" in body else list(settings.services)
        )
    except LookupError as exc:
        return Report("WARNING", str(exc)), 403
    except (ValueError, AttributeError) as exc:
        return Report("WARNING", str(exc)), 400
    reports = []
    for service in services:
        try:
            reports.append(
                run_service_tests(
                    service,
                    mode=mode,
                    settings=settings,
                    policy=policy,
                    store=runtime.store(),
                    traffic=runtime.traffic(),
                    writer=runtime.writer(),
                    auth=auth,
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
    severity = "NOTICE" if any(report.severity == "NOTICE" for report in reports) else "INFO"
    return Report(severity, summary, results=results, outcome="done"), 200
