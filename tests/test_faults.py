"""Faults below the functions: what a failing control plane or an unreachable Firestore does to
an alert in flight. Nothing is lost: a fault is answered with a 5xx (Pub/Sub redelivers) and
one structured ERROR line, and a brief outage is ridden out by the clients' retries."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.localstack import PROJECT, free_port, serve_function
from shared.clients.store import RolloutStore, rollout_id
from tests.conftest import SHOP, ServedFunction, deploy_canary
from tests.outage_proxy import OutageProxy
from tests.test_pipeline import ERRORS, MINUTE, T0, alert, serve

pytestmark = pytest.mark.emulators
CANARY = rollout_id(SHOP, "shop-00002")


def test_a_control_plane_fault_is_one_error_line_and_a_5xx(functions, firestore_clean, cloudrun):
    deploy_canary(cloudrun)
    cloudrun.inject_fault(500, count=50, methods=["GET"])
    message_id, response = alert(functions["breach_counter"])
    assert response.status_code == 500  # Pub/Sub redelivers
    [line] = functions["breach_counter"].logs_for(event_id=message_id)
    assert line["severity"] == "ERROR" and line["outcome"] == "retry"
    assert "breach_counter failed and will be retried" in line["message"]
    assert "500" in line["message"]


@pytest.fixture
def firestore_outage(emulators):
    proxy = OutageProxy(emulators.firestore_host)
    yield proxy
    proxy.stop()


@pytest.fixture
def counter_behind_proxy(function_env, log_dir: Path, firestore_outage):
    """A breach_counter whose Firestore traffic goes through the outage proxy."""
    port = free_port()
    env = {**function_env, "FIRESTORE_EMULATOR_HOST": firestore_outage.host}
    process = serve_function("breach_counter", port, env, log_dir)
    yield ServedFunction("breach_counter", f"http://127.0.0.1:{port}", process.log_path)
    process.stop()


def test_a_brief_firestore_outage_loses_and_doubles_nothing(
    counter_behind_proxy, firestore_outage, firestore_clean, cloudrun, monitoring
):
    deploy_canary(cloudrun)
    serve(monitoring, ERRORS, T0 - MINUTE)
    store = RolloutStore(PROJECT)  # straight to the emulator, not through the proxy
    assert alert(counter_behind_proxy, opened=T0 - MINUTE)[1].status_code == 200
    serve(monitoring, ERRORS, T0)
    firestore_outage.down()
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(alert, counter_behind_proxy, opened=T0)
        deadline = time.monotonic() + 20
        while firestore_outage.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert firestore_outage.refused >= 2, "the alert never reached Firestore during the outage"
        assert not in_flight.done()  # still retrying, not acknowledged
        firestore_outage.up()
        message_id, response = in_flight.result(timeout=120)
    assert response.status_code == 200
    assert store.get(CANARY).streaks["error_rate"].count == 2
    # Pub/Sub may still redeliver it (the ack could have been lost): it counts once.
    assert alert(counter_behind_proxy, opened=T0, message_id=message_id)[1].status_code == 200
    assert store.get(CANARY).streaks["error_rate"].count == 2
    assert counter_behind_proxy.logs_for(event_id=message_id)[-1]["outcome"] == "duplicate"
