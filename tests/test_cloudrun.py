"""shared/clients/cloudrun.py driving the real google-cloud-run REST client against the local stand-in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

import shared.clients.cloudrun
from infra.cloudrun_standin import CloudRunStandin, start_cloudrun_standin
from shared.clients.cloudrun import (
    SETTLE_POLL_S,
    CloudRunTraffic,
    ControlPlaneError,
    ServiceTraffic,
    TrafficSplit,
)

ROOT = Path(__file__).resolve().parents[1]
PERMISSION_DENIED, FAILED_PRECONDITION = 7, 9  # google.rpc.Code
SERVICE = "projects/demo/locations/us-central1/services/shop"
STABLE, CANARY = "shop-00001", "shop-00002"
CANARY_AT_10 = [{"revision": STABLE, "percent": 90}, {"revision": CANARY, "percent": 10, "tag": "canary"}]


def rollback(current: ServiceTraffic) -> list[TrafficSplit]:
    return [TrafficSplit(STABLE, 100), TrafficSplit(CANARY, 0, "canary")]


def calls(standin: CloudRunStandin) -> list[tuple[str, int]]:
    return [(call["method"], call["status"]) for call in standin.calls()]


def served(standin: CloudRunStandin) -> dict[str, int]:
    """Percent per revision that Cloud Run reports as served (trafficStatuses), not the spec."""
    return {s["revision"]: s.get("percent", 0) for s in standin.service(SERVICE)["trafficStatuses"]}


def raw_client(standin: CloudRunStandin) -> run_v2.ServicesClient:
    """The official client itself, to see the LRO and status fields CloudRunTraffic digests."""
    return run_v2.ServicesClient(
        transport="rest", client_options={"api_endpoint": standin.url}, credentials=AnonymousCredentials()
    )


@pytest.fixture(scope="module")
def standin_server() -> Iterator[CloudRunStandin]:
    standin = start_cloudrun_standin()
    yield standin
    standin.stop()


@pytest.fixture
def standin(standin_server: CloudRunStandin) -> CloudRunStandin:
    standin_server.reset()
    standin_server.put_service(SERVICE, [STABLE, CANARY], CANARY_AT_10)
    return standin_server


@pytest.fixture
def delays() -> list[float]:
    return []


@pytest.fixture
def client(standin: CloudRunStandin, delays: list[float]) -> CloudRunTraffic:
    return CloudRunTraffic(standin.url, max_attempts=5, sleep=delays.append)


def test_get_reads_targets_uris_and_latest_short_name(standin, client):
    traffic = client.get(SERVICE)

    assert traffic.service == SERVICE
    assert traffic.targets == (TrafficSplit(STABLE, 90), TrafficSplit(CANARY, 10, "canary"))
    assert traffic.latest_ready_revision == CANARY  # the API sends the full resource name
    assert traffic.tag_uris == {"canary": "https://canary---shop-abc123-uc.a.run.app"}
    assert traffic.uri == "https://shop-abc123-uc.a.run.app"
    assert traffic.etag == standin.service(SERVICE)["etag"]
    assert traffic.percent_of(CANARY) == 10
    assert calls(standin) == [("GET", 200)]


def test_get_resolves_latest_targets_and_custom_tag_uris(standin, client):
    standin.put_service(
        SERVICE,
        [STABLE, CANARY],
        [
            {"percent": 30},
            {"revision": STABLE, "percent": 70},
            {"revision": CANARY, "percent": 0, "tag": "canary"},
        ],
        uri="http://127.0.0.1:8080",
        tag_uris={"canary": "http://127.0.0.1:8081"},
    )

    traffic = client.get(SERVICE)

    assert traffic.targets == (
        TrafficSplit(CANARY, 30),  # LATEST follows latest_ready_revision
        TrafficSplit(STABLE, 70),
        TrafficSplit(CANARY, 0, "canary"),
    )
    assert traffic.percent_of(CANARY) == 30
    assert traffic.tag_uris == {"canary": "http://127.0.0.1:8081"}
    assert traffic.uri == "http://127.0.0.1:8080"


def test_update_traffic_returns_before_and_after(standin, client, delays):
    before, after = client.update_traffic(SERVICE, rollback)

    assert before.targets == (TrafficSplit(STABLE, 90), TrafficSplit(CANARY, 10, "canary"))
    assert after.targets == (TrafficSplit(STABLE, 100), TrafficSplit(CANARY, 0, "canary"))
    assert after.etag != before.etag
    assert after.tag_uris == before.tag_uris  # the tagged canary stays reachable at 0 %
    assert after.as_dicts() == [
        {"revision": STABLE, "percent": 100, "tag": ""},
        {"revision": CANARY, "percent": 0, "tag": "canary"},
    ]
    # The stand-in stored REVISION targets (type 2); proto3 JSON omits the 0 percent.
    assert standin.service(SERVICE)["traffic"] == [
        {"type": 2, "revision": STABLE, "percent": 100},
        {"type": 2, "revision": CANARY, "tag": "canary"},
    ]
    assert standin.service(SERVICE)["generation"] == "2"
    assert calls(standin) == [("GET", 200), ("PATCH", 200)]
    assert delays == []


def test_plan_returning_none_writes_nothing(standin, client):
    seen: list[ServiceTraffic] = []

    def nothing_to_do(current: ServiceTraffic) -> None:
        seen.append(current)

    before, after = client.update_traffic(SERVICE, nothing_to_do)

    assert before is after
    assert seen == [before]
    assert calls(standin) == [("GET", 200)]


@pytest.mark.parametrize(
    ("targets", "reason"),
    [
        ([TrafficSplit(STABLE, 80), TrafficSplit(CANARY, 10)], "add up to 100"),
        ([TrafficSplit("shop-99999", 100)], "does not exist"),
        ([TrafficSplit(STABLE, 50, "x"), TrafficSplit(CANARY, 50, "x")], "tags must be unique"),
    ],
)
def test_invalid_traffic_fails_at_once(standin, client, delays, targets, reason):
    with pytest.raises(ControlPlaneError, match=reason) as failure:
        client.update_traffic(SERVICE, lambda current: targets)

    assert (failure.value.status, failure.value.attempts) == (400, 1)
    assert calls(standin) == [("GET", 200), ("PATCH", 400)]
    assert delays == []
    assert client.get(SERVICE).targets == (TrafficSplit(STABLE, 90), TrafficSplit(CANARY, 10, "canary"))


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_patch_faults_are_retried(standin, client, delays, status):
    standin.inject_fault(status, count=2, methods=["PATCH"])
    plans: list[ServiceTraffic] = []

    def counted_rollback(current: ServiceTraffic) -> list[TrafficSplit]:
        plans.append(current)
        return rollback(current)

    _, after = client.update_traffic(SERVICE, counted_rollback)

    assert after.percent_of(STABLE) == 100
    assert calls(standin) == [("GET", 200), ("PATCH", status)] * 2 + [("GET", 200), ("PATCH", 200)]
    assert len(plans) == 3  # every attempt re-reads and re-plans
    assert len(delays) == 2
    assert delays[0] <= delays[1]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_get_faults_are_retried(standin, client, delays, status):
    standin.inject_fault(status, count=3, methods=["GET"])

    traffic = client.get(SERVICE)

    assert traffic.percent_of(CANARY) == 10
    assert calls(standin) == [("GET", status)] * 3 + [("GET", 200)]
    assert len(delays) == 3
    assert delays == sorted(delays)


def test_faults_outlasting_the_attempts_give_up_and_leave_traffic_unchanged(standin, delays):
    client = CloudRunTraffic(standin.url, max_attempts=3, sleep=delays.append)
    standin.inject_fault(503, count=3, methods=["PATCH"])

    with pytest.raises(ControlPlaneError, match="failed 3 times") as failure:
        client.update_traffic(SERVICE, rollback)

    assert (failure.value.status, failure.value.attempts) == (503, 3)
    assert calls(standin) == [("GET", 200), ("PATCH", 503)] * 3
    assert len(delays) == 2  # no pointless sleep after the last attempt
    assert client.get(SERVICE).targets == (TrafficSplit(STABLE, 90), TrafficSplit(CANARY, 10, "canary"))


def test_backoff_grows_and_is_capped(standin, delays):
    client = CloudRunTraffic(
        standin.url, max_attempts=7, base_delay_s=0.1, max_delay_s=0.5, sleep=delays.append
    )
    standin.inject_fault(429, count=7, methods=["GET"])

    with pytest.raises(ControlPlaneError):
        client.get(SERVICE)

    assert len(delays) == 6
    assert 0.05 <= delays[0] <= 0.1
    assert delays[:3] == sorted(delays[:3])  # 0.1, 0.2, 0.4 caps: each wait at least the last
    assert delays[2] > delays[0]
    assert all(0.25 <= delay <= 0.5 for delay in delays[3:])  # capped at max_delay_s


def test_concurrent_change_conflicts_then_rereads_and_replans(standin, client):
    other_writer = CloudRunTraffic(standin.url)
    plans: list[ServiceTraffic] = []

    def rollback_racing_a_ramp(current: ServiceTraffic) -> list[TrafficSplit]:
        plans.append(current)
        if len(plans) == 1:  # someone ramps the canary between our read and our write
            other_writer.update_traffic(
                SERVICE, lambda _: [TrafficSplit(STABLE, 75), TrafficSplit(CANARY, 25, "canary")]
            )
        return rollback(current)

    before, after = client.update_traffic(SERVICE, rollback_racing_a_ramp)

    assert [plan.percent_of(CANARY) for plan in plans] == [10, 25]  # re-planned on fresh traffic
    assert before == plans[1]
    assert after.percent_of(STABLE) == 100
    assert calls(standin) == [
        ("GET", 200),  # ours
        ("GET", 200),  # the other writer's read-modify-write
        ("PATCH", 200),
        ("PATCH", 409),  # ours, with the stale etag
        ("GET", 200),
        ("PATCH", 200),
    ]


def test_injected_conflict_is_retried(standin, client, delays):
    standin.inject_fault(409, count=1, methods=["PATCH"])

    _, after = client.update_traffic(SERVICE, rollback)

    assert after.percent_of(STABLE) == 100
    assert calls(standin) == [("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200)]
    assert len(delays) == 1


def test_slow_responses_within_the_timeout_succeed(standin, client, delays):
    standin.inject_fault(delay_s=0.3, count=2)

    _, after = client.update_traffic(SERVICE, rollback)

    assert after.percent_of(STABLE) == 100
    assert calls(standin) == [("GET", 200), ("PATCH", 200)]
    assert delays == []


def test_a_response_slower_than_the_call_timeout_is_retried(standin, delays):
    client = CloudRunTraffic(standin.url, call_timeout_s=0.2, sleep=delays.append)
    standin.inject_fault(delay_s=0.6, count=1, methods=["GET"])

    traffic = client.get(SERVICE)

    assert traffic.percent_of(CANARY) == 10
    assert len(delays) == 1  # the timed-out read was retried


def test_unknown_service_is_not_found_at_once(standin, client, delays):
    missing = "projects/demo/locations/us-central1/services/nope"

    with pytest.raises(ControlPlaneError, match="not retryable") as failure:
        client.get(missing)
    assert (failure.value.status, failure.value.attempts) == (404, 1)

    with pytest.raises(ControlPlaneError) as failure:
        client.update_traffic(missing, rollback)
    assert failure.value.status == 404
    assert delays == []


def test_permission_denied_is_not_retried(standin, client, delays):
    standin.inject_fault(403, count=5, methods=["GET"])

    with pytest.raises(ControlPlaneError) as failure:
        client.get(SERVICE)

    assert (failure.value.status, failure.value.attempts) == (403, 1)
    assert delays == []


def test_update_answers_a_done_operation_that_can_be_polled(standin):
    raw = raw_client(standin)
    service = raw.get_service(name=SERVICE)
    service.traffic[0].percent, service.traffic[1].percent = 100, 0

    operation = raw.update_service(service=service)
    polled = raw.get_operation({"name": operation.operation.name})

    assert operation.operation.name.startswith("projects/demo/locations/us-central1/operations/")
    assert polled.done
    assert operation.result().etag == standin.service(SERVICE)["etag"]
    assert calls(standin) == [("GET", 200), ("PATCH", 200), ("GET", 200)]


def test_an_update_whose_operation_is_not_done_at_once_is_polled_to_its_end(standin, client, delays):
    """As Cloud Run answers: the operation is done only at a later GetOperation."""
    standin.pend_operations(2)

    _, after = client.update_traffic(SERVICE, rollback)

    assert after.percent_of(STABLE) == 100
    polls = [c for c in standin.calls() if "/operations/" in c["path"]]
    assert len(polls) >= 2 and all(c["status"] == 200 for c in polls)  # polled until done
    assert calls(standin)[:2] == [("GET", 200), ("PATCH", 200)]


def test_a_reconciling_update_shows_in_the_service_status_until_it_settles(standin):
    raw = raw_client(standin)
    service = raw.get_service(name=SERVICE)
    assert (service.generation, service.observed_generation, service.reconciling) == (1, 1, False)
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    standin.next_update(reconcile_gets=2)
    service.traffic[0].percent, service.traffic[1].percent = 100, 0

    operation = raw.update_service(service=service)

    # Not done, and its metadata is the written Service. (Looking, not polling: polls count.)
    assert not operation.operation.done and operation.metadata.generation == 2
    for _ in range(2):
        reading = raw.get_service(name=SERVICE)
        assert (reading.generation, reading.observed_generation, reading.reconciling) == (2, 1, True)
        assert reading.terminal_condition.state == run_v2.Condition.State.CONDITION_RECONCILING
        assert reading.traffic[0].percent == 100  # the spec is written at once ...
        assert [s.percent for s in reading.traffic_statuses] == [90, 10]  # ... the old split served
    settled = raw.get_service(name=SERVICE)
    assert (settled.observed_generation, settled.reconciling) == (2, False)
    assert settled.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert [s.percent for s in settled.traffic_statuses] == [100, 0]
    assert operation.result().generation == 2


def test_a_refused_operation_poll_waits_until_the_service_serves_the_new_traffic(
    standin, client, delays, capsys
):
    """A grant on the service may not cover run.operations.get: the write was accepted, so the
    caller must hear the new traffic once Cloud Run serves it, not "refused, traffic unchanged"."""
    standin.next_update(reconcile_gets=2)
    standin.inject_fault(403, count=1, methods=["GET"], resource="operations")

    before, after = client.update_traffic(SERVICE, rollback)

    assert before.percent_of(CANARY) == 10 and after.percent_of(STABLE) == 100
    assert after.tag_uris == before.tag_uris
    assert served(standin) == {STABLE: 100, CANARY: 0}
    # The refused poll, then service reads: two while it reconciles, one once it has settled.
    assert calls(standin) == [("GET", 200), ("PATCH", 200), ("GET", 403)] + [("GET", 200)] * 3
    assert all("/services/" in c["path"] for c in standin.calls()[3:])
    assert delays == [SETTLE_POLL_S] * 2  # polling waits only: nothing retried or written twice
    assert "its operation cannot be read" in capsys.readouterr().out


def test_a_refused_poll_of_an_update_cloud_run_fails_to_apply_is_an_error(standin, client, delays, capsys):
    standin.next_update(reconcile_gets=1, fail_code=FAILED_PRECONDITION, fail_message="Revision not ready")
    standin.inject_fault(403, count=1, methods=["GET"], resource="operations")

    with pytest.raises(
        ControlPlaneError, match="accepted but not applied: Ready failed: Revision not ready"
    ) as failure:
        client.update_traffic(SERVICE, rollback)

    assert (failure.value.status, failure.value.attempts) == (None, 1)
    # The spec holds the plan (reading it back would "confirm" it); the old split is still served.
    assert standin.service(SERVICE)["traffic"][0]["percent"] == 100
    assert served(standin) == {STABLE: 90, CANARY: 10}
    assert calls(standin) == [("GET", 200), ("PATCH", 200), ("GET", 403), ("GET", 200), ("GET", 200)]
    assert delays == [SETTLE_POLL_S]
    assert "traffic updated" not in capsys.readouterr().out


def test_a_refused_poll_then_another_writer_is_an_error_not_our_traffic(standin, delays):
    """Settled, but serving someone else's split: what the plan asked for is not what is served."""
    other_writer = CloudRunTraffic(standin.url)

    def ramp_meanwhile(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 1:
            other_writer.update_traffic(
                SERVICE, lambda _: [TrafficSplit(STABLE, 50), TrafficSplit(CANARY, 50, "canary")]
            )

    client = CloudRunTraffic(standin.url, sleep=ramp_meanwhile)
    standin.next_update(reconcile_gets=1)
    standin.inject_fault(403, count=1, methods=["GET"], resource="operations")

    with pytest.raises(ControlPlaneError, match="accepted but not applied: Cloud Run serves") as failure:
        client.update_traffic(SERVICE, rollback)

    assert failure.value.status is None
    assert served(standin) == {STABLE: 50, CANARY: 50}


def test_a_refused_poll_of_an_update_that_never_settles_gives_up(standin, client, delays, monkeypatch):
    monkeypatch.setattr(shared.clients.cloudrun, "OPERATION_TIMEOUT_S", 3 * SETTLE_POLL_S)
    standin.next_update(reconcile_gets=1000)
    standin.inject_fault(403, count=1, methods=["GET"], resource="operations")

    with pytest.raises(ControlPlaneError, match="accepted but not applied within 3 s") as failure:
        client.update_traffic(SERVICE, rollback)

    assert failure.value.status is None
    assert delays == [SETTLE_POLL_S] * 3
    assert [c["method"] for c in standin.calls()].count("PATCH") == 1  # not written again


@pytest.mark.parametrize("polls", [0, 2])
def test_an_operation_that_finishes_with_permission_denied_is_a_failure_not_a_fallback(
    standin, client, delays, capsys, polls
):
    """PERMISSION_DENIED in a finished operation is also a 403 Forbidden (PermissionDenied) in
    google.api_core, but it means the update failed: nothing to confirm from the service."""
    standin.pend_operations(polls)
    standin.next_update(fail_code=PERMISSION_DENIED, fail_message="Permission denied on the service")

    with pytest.raises(ControlPlaneError, match="Permission denied on the service") as failure:
        client.update_traffic(SERVICE, rollback)

    assert (failure.value.status, failure.value.attempts) == (403, 1)
    assert calls(standin) == [("GET", 200), ("PATCH", 200)] + [("GET", 200)] * polls  # operation polls only
    assert all("/operations/" in c["path"] for c in standin.calls()[2:])
    assert served(standin) == {STABLE: 90, CANARY: 10}
    assert delays == []
    assert "cannot be read" not in capsys.readouterr().out


def test_runs_as_a_process_with_http_controls():
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cloudrun_standin", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        spec = {"name": SERVICE, "revisions": [STABLE, CANARY], "traffic": CANARY_AT_10}
        assert requests.post(f"{url}/_standin/services", json=spec, timeout=5).ok
        fault = {"status": 500, "count": 1, "methods": ["GET"]}
        assert requests.post(f"{url}/_standin/faults", json=fault, timeout=5).ok
        assert requests.post(f"{url}/_standin/next_update", json={"reconcile_gets": 2}, timeout=5).ok
        bad_update = requests.post(f"{url}/_standin/next_update", json={"fail": "yes"}, timeout=5)
        assert bad_update.status_code == 400
        bad = requests.post(f"{url}/_standin/services", json={"name": "shop"}, timeout=5)
        assert bad.status_code == 400
        assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"

        assert CloudRunTraffic(url, sleep=lambda _: None).get(SERVICE).percent_of(CANARY) == 10

        logged = requests.get(f"{url}/_standin/calls", timeout=5).json()
        assert [(call["method"], call["status"]) for call in logged] == [("GET", 500), ("GET", 200)]
        assert requests.post(f"{url}/_standin/reset", timeout=5).ok
        assert requests.get(f"{url}/_standin/calls", timeout=5).json() == []
    finally:
        process.terminate()
        process.wait(timeout=5)
