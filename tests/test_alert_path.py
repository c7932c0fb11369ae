"""The path of one alert through the project's files, measured, not written down by hand.

A fresh interpreter serves an entry point with functions-framework (the deployed code, its real
clients, on the emulators and the stand-ins), warms it with one harmless event, then serves the
traced one with a profiler on: every project function that runs is recorded with its call stack.
The alert is two deliveries: `breach_counter` takes an error_rate incident on three bad minutes
to a published rollback request; `rollback` takes that request to the stable revision at 100 %.

Three measures, each pinned here and told in docs/ARCHITECTURE.md ("One alert, through the
files"), so the page cannot drift from the code:
- the deepest call path: the project files one chain of calls crosses, entry point first;
- the main line: the entry point, the handler, and the files whose functions the handler calls;
- all the files whose functions run.
The setup every call of every function pays (configuration, policy, runtime, logging, clock) is
left out of all three.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.localstack import PROJECT
from infra.metrics_feed import Minute, feed
from shared.clients.store import RolloutStore, rollout_id
from tests.conftest import LOCATION, SHOP, deploy_canary
from tests.payloads import cloudevent_data, cloudevent_headers, incident_message

pytestmark = pytest.mark.emulators

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETUP = ["shared/config.py", "shared/policy.py", "shared/runtime.py", "shared/logs.py", "shared/clock.py"]


@dataclass(frozen=True)
class FilesCrossed:
    deepest: list[str]
    main_line: set[str]
    beneath: set[str]  # what runs below the main line


ALERT = FilesCrossed(
    deepest=[
        "functions/main.py",  # breach_counter: the CloudEvent in, one log line out
        "shared/handlers/breach.py",  # handle_alert: the alert's story
        "shared/clients/store.py",  # apply_evidence: the evidence ledger's transaction
        "shared/clients/store_base.py",  # the transaction runner
        "shared/core/ledger.py",  # ledger → trip
        "shared/core/evidence.py",  # the run of breach minutes
    ],
    main_line={
        "functions/main.py",
        "shared/handlers/breach.py",
        "shared/events.py",  # untrusted JSON → an observation
        "shared/clients/monitoring.py",  # the canary's minutes from Cloud Monitoring
        "shared/core/evidence.py",  # each minute judged against the policy
        "shared/clients/store.py",  # the rollout; the ledger's transaction; publication noted
        "shared/clients/store_docs.py",  # the Rollout it reads (rollout_id, rollback_pending)
        "shared/core/ledger.py",  # the EvidenceDecision it reads
        "shared/clients/pubsub.py",  # the rollback request published
    },
    beneath={
        "shared/core/minutes.py",  # the Monitoring series kept whole, per minute
        "shared/core/distributions.py",  # P95 from the latency distribution's buckets
        "shared/clients/store_base.py",
        "shared/core/notifications.py",  # which decisions the chat channel hears of
        "shared/handlers/notify.py",  # the outbox's sink: the notifications published
        "shared/clients/store_coordination.py",  # ... and marked published
    },
)

ROLLBACK = FilesCrossed(
    deepest=[
        "functions/main.py",  # rollback: the request in
        "shared/handlers/rollback.py",  # execute_rollback
        "shared/clients/store_phases.py",  # set_phase: ROLLED_BACK
        "shared/clients/store_base.py",  # the transaction runner, then the outbox flushed
        "shared/handlers/notify.py",  # the outbox's sink
        "shared/core/notifications.py",  # the chat message of the decision
    ],
    main_line={
        "functions/main.py",
        "shared/handlers/rollback.py",
        "shared/events.py",  # the request decoded
        "shared/clients/store.py",  # the rollout
        "shared/clients/store_docs.py",  # the marker of a request carried out
        "shared/clients/store_coordination.py",  # was this request carried out already?
        "shared/clients/store_phases.py",  # ROLLING_BACK, then ROLLED_BACK
        "shared/clients/cloudrun.py",  # the live traffic, read and written with its etag
        "shared/core/traffic.py",  # decide_rollback and its plan: stable 100 %
    },
    beneath={
        "shared/clients/store_base.py",
        "shared/handlers/notify.py",
        "shared/core/notifications.py",
        "shared/clients/pubsub.py",  # the notifications published
    },
)

# The first alert of a canary never seen also reads the live split and registers the rollout.
FIRST_ALERT = FilesCrossed(
    deepest=[
        "functions/main.py",
        "shared/handlers/breach.py",
        "shared/clients/store.py",  # register: the rollout, in one transaction
        "shared/clients/store_base.py",  # the transaction runner, then the outbox flushed
        "shared/handlers/notify.py",  # the outbox's sink
        "shared/core/notifications.py",  # the chat message of "started"
    ],
    main_line=ALERT.main_line | {"shared/clients/cloudrun.py", "shared/core/traffic.py"},  # discover_canary
    beneath=ALERT.beneath,
)
# The bar docs/ARCHITECTURE.md sets: one chain of calls crosses at most this many project files.
DEEPEST_AT_MOST = 6

TRACE = """
import json, os, sys
from functions_framework import create_app
app = create_app({entry_point!r}, {main!r})
client = app.test_client()
root, handler, setup = {root!r}, {handler!r}, set({setup!r})
crossed, main_line, deepest = set(), set(), []
CO_NEWLOCALS = 0x2  # a function's frame; a module or class body (an import) has none

def project(code):
    path = code.co_filename
    return path.startswith(root + "/") and "/.venv/" not in path and "/tests/" not in path

def profile(frame, event, arg):
    code = frame.f_code
    if event != "call" or not project(code) or not code.co_flags & CO_NEWLOCALS:
        return
    callee = os.path.relpath(code.co_filename, root)
    if callee in setup or callee.endswith("__init__.py"):
        return
    crossed.add(callee)
    if frame.f_back is not None and os.path.relpath(frame.f_back.f_code.co_filename, root) == handler:
        main_line.add(callee)
    stack, f = [], frame
    while f is not None:
        if project(f.f_code):
            stack.append(os.path.relpath(f.f_code.co_filename, root))
        f = f.f_back
    chain = []  # the distinct project files of this call's stack, entry point first
    for path in reversed(stack):
        if path not in setup and path not in chain:
            chain.append(path)
    if len(chain) > len(deepest):
        deepest[:] = chain

warm = client.post("/", data={warm!r}, headers={warm_headers!r})  # a warm instance: modules imported
sys.setprofile(profile)
answer = client.post("/", data={body!r}, headers={headers!r})
sys.setprofile(None)
print(json.dumps({{
    "warm": warm.status_code,
    "status": answer.status_code,
    "crossed": sorted(crossed),
    "main_line": sorted(main_line | {{{main_file!r}, handler}}),
    "deepest": deepest,
}}))
"""


def pubsub_push(payload: dict, topic: str) -> tuple[str, dict[str, str]]:
    """A Pub/Sub message as Eventarc posts it to a function: a binary-mode CloudEvent."""
    message_id = uuid.uuid4().hex
    data = cloudevent_data(payload, message_id=message_id, publish_time=T0, topic=topic, project=PROJECT)
    headers = cloudevent_headers(message_id=message_id, publish_time=T0, topic=topic, project=PROJECT)
    return json.dumps(data), headers


def incident(state: str) -> dict:
    return incident_message(
        rule="error_rate",
        state=state,
        revision="shop-00002",
        project=PROJECT,
        scoping_project=PROJECT,
        location=LOCATION,
        started_at=int(T0.timestamp()),
    )


def trace(entry_point: str, handler: str, warm: dict, traced: dict, topic: str, env: dict[str, str]) -> dict:
    warm_body, warm_headers = pubsub_push(warm, topic)
    body, headers = pubsub_push(traced, topic)
    code = TRACE.format(
        entry_point=entry_point,
        main=str(ROOT / "functions" / "main.py"),
        main_file="functions/main.py",
        root=str(ROOT),
        handler=handler,
        setup=SETUP,
        warm=warm_body,
        warm_headers=warm_headers,
        body=body,
        headers=headers,
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["warm"], result["status"]) == (200, 200), result
    return result


def three_bad_minutes(monitoring) -> None:
    """The canary's three minutes before T0 at 5 % 5xx: an error_rate trip."""
    feed(
        monitoring,
        project=PROJECT,
        location=LOCATION,
        service="shop",
        revision="shop-00002",
        minutes=[T0 - timedelta(minutes=m) for m in (2, 1, 0)],
        traffic=Minute(requests=200, errors=10),
    )


@pytest.fixture
def env(function_env) -> dict[str, str]:
    # The decision clock a minute after the incident opened: its three minutes have settled.
    clock = f"{(T0 + timedelta(minutes=1)).isoformat()} from {datetime.now(UTC).timestamp()} x1"
    return {**os.environ, **function_env, "CANARY_GUARD_CLOCK": clock}


@pytest.fixture
def store(firestore_clean, cloudrun) -> RolloutStore:
    deploy_canary(cloudrun)
    store = RolloutStore(PROJECT)
    store.register(SHOP, "shop-00002", "shop-00001", canary_percent=5, started_by="test")
    return store


def test_an_alert_to_its_rollback_request(env, store, monitoring, rollback_requests):
    three_bad_minutes(monitoring)
    # Warmed by a closed incident (acknowledged, nothing judged), traced on the open one.
    path = trace(
        "breach_counter",
        "shared/handlers/breach.py",
        incident("closed"),
        incident("open"),
        "canary-alerts",
        env,
    )
    rollout = store.get(rollout_id(SHOP, "shop-00002"))
    assert rollout is not None and rollout.rollback_requested and rollout.rollback_published
    [request] = rollback_requests(expect_at_least=1)
    assert request["rule"] == "error_rate"
    assert path["deepest"] == ALERT.deepest and len(ALERT.deepest) <= DEEPEST_AT_MOST
    assert set(path["main_line"]) == ALERT.main_line
    assert set(path["crossed"]) == ALERT.main_line | ALERT.beneath


def test_the_rollback_request_to_the_stable_revision(env, store, cloudrun):
    request = {
        "service": SHOP,
        "canary_revision": "shop-00002",
        "reason": "error_rate breached on 3 consecutive minutes",
        "requested_by": "canary-guard/breach_counter",
        "rule": "error_rate",
    }
    # Warmed by a request for a revision that is not the canary (acknowledged, nothing moved).
    stale = request | {"canary_revision": "shop-00000"}
    path = trace("rollback", "shared/handlers/rollback.py", stale, request, "canary-rollback-requests", env)
    live = {t["revision"]: t.get("percent", 0) for t in cloudrun.service(SHOP)["traffic"]}
    assert live == {"shop-00001": 100, "shop-00002": 0}
    assert path["deepest"] == ROLLBACK.deepest and len(ROLLBACK.deepest) <= DEEPEST_AT_MOST
    assert set(path["main_line"]) == ROLLBACK.main_line
    assert set(path["crossed"]) == ROLLBACK.main_line | ROLLBACK.beneath


def test_the_architecture_page_tells_the_path_as_measured():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = " ".join(page.split("## One alert, through the files", 1)[1].split("\n## ", 1)[0].split())
    for measured in (ALERT, FIRST_ALERT, ROLLBACK):
        for path in measured.main_line | measured.beneath:
            assert f"`{path}`" in section, f"{path} is on the alert's path but not on the page"
    deepest = max(len(ALERT.deepest), len(FIRST_ALERT.deepest), len(ROLLBACK.deepest))
    assert f"deepest call path crosses {deepest} project files" in section
    first = FIRST_ALERT.main_line | FIRST_ALERT.beneath
    assert f"a canary's first alert, {len(FIRST_ALERT.main_line)} and {len(first)}" in section
    assert f"{len(ALERT.main_line)} files on the main line" in section
    assert f"{len(ALERT.main_line | ALERT.beneath)} files in all" in section
    assert f"rollback {len(ROLLBACK.main_line)} and {len(ROLLBACK.main_line | ROLLBACK.beneath)}" in section


def test_the_first_alert_of_a_canary_never_seen(
    env, firestore_clean, cloudrun, monitoring, rollback_requests
):
    """No rollout yet (deployed outside the CLI): the alert learns it from Cloud Run and registers it."""
    deploy_canary(cloudrun)
    three_bad_minutes(monitoring)
    foreign = incident_message(rule="error_rate", service="not-watched", project=PROJECT, location=LOCATION)
    path = trace(
        "breach_counter", "shared/handlers/breach.py", foreign, incident("open"), "canary-alerts", env
    )
    rollout = RolloutStore(PROJECT).get(rollout_id(SHOP, "shop-00002"))
    assert rollout is not None and rollout.rollback_requested and rollout.rollback_published
    assert path["deepest"] == FIRST_ALERT.deepest and len(FIRST_ALERT.deepest) <= DEEPEST_AT_MOST
    assert set(path["main_line"]) == FIRST_ALERT.main_line
    assert set(path["crossed"]) == FIRST_ALERT.main_line | FIRST_ALERT.beneath
