"""Each entry point loads only the Google client libraries it uses (cold start matters).

Measured on the real entry point, not on a copy of its wiring: a fresh interpreter has
functions-framework load functions/main.py and serve ONE request that the entry point must
refuse before any I/O (a Pub/Sub message whose data is not JSON, an HTTP body that is not JSON).
Whatever a call builds before it has read its input (an eager client, an argument evaluated
up front) is loaded by then; the clients a call builds only when it needs them are not.
"""

from __future__ import annotations

import pytest

from bench.bench_cold_start import CLIENT_LIBRARIES, ROOT, run_fresh

# What each entry point has loaded once it has refused a malformed input: the clients every
# call pays for. Monitoring and Pub/Sub are loaded only by a call that uses them (and Cloud Run
# by breach_counter, checkpoint and load_test only then); bench/bench_cold_start.py times a
# first call that builds all of an entry point's clients.
EXPECTED = {
    "breach_counter": ["google.cloud.firestore"],
    "rollback": ["google.cloud.firestore", "google.cloud.run_v2"],
    "emergency_rollback": ["google.cloud.firestore", "google.cloud.run_v2"],
    "checkpoint": ["google.cloud.firestore"],
    "load_test": ["httptools"],
    "notify": ["google.cloud.firestore"],
    "checkpoint_worker": ["google.cloud.firestore"],
}
PUBSUB_DRIVEN = ("breach_counter", "rollback", "notify", "checkpoint_worker")

PUBSUB_PUSH = {
    "message": {"data": "bm90IEpTT04=", "messageId": "cold-start", "publishTime": "2026-12-03T12:00:00Z"},
    "subscription": "projects/cold-start/subscriptions/s",
}


def serve_one_refused_request(entry_point: str) -> dict:
    code = f"""
import json, sys
from functions_framework import create_app
app = create_app({entry_point!r}, {str(ROOT / "functions" / "main.py")!r})
client = app.test_client()
if {entry_point!r} in {PUBSUB_DRIVEN!r}:
    answer = client.post("/", json={PUBSUB_PUSH!r})
else:
    answer = client.post("/", data="not JSON")
loaded = [m for m in {CLIENT_LIBRARIES!r} if m in sys.modules]
print(json.dumps({{"status": answer.status_code, "loaded": loaded}}))
"""
    return run_fresh(code)


@pytest.mark.parametrize("entry_point", sorted(EXPECTED))
def test_entry_point_loads_only_its_clients(entry_point):
    served = serve_one_refused_request(entry_point)
    # Pub/Sub messages are acknowledged (never redelivered), HTTP bodies refused with a 400.
    assert served["status"] == (200 if entry_point in PUBSUB_DRIVEN else 400), served
    assert served["loaded"] == EXPECTED[entry_point]
