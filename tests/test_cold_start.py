"""Each entry point loads only the Google client libraries it uses (cold start matters)."""

from __future__ import annotations

import pytest

from bench.bench_cold_start import probe

EXPECTED = {
    # Monitoring: an alert is judged on the canary's minutes; Cloud Run and Pub/Sub only when needed.
    "breach_counter": ["google.cloud.firestore", "google.cloud.monitoring_v3"],
    "rollback": ["google.cloud.firestore", "google.cloud.run_v2"],
    "emergency_rollback": ["google.cloud.firestore", "google.cloud.run_v2"],
    "checkpoint": ["google.cloud.firestore", "google.cloud.run_v2", "google.cloud.monitoring_v3"],
    "load_test": ["google.cloud.firestore", "google.cloud.run_v2", "google.cloud.monitoring_v3", "httptools"],
}


@pytest.mark.parametrize("entry_point", sorted(EXPECTED))
def test_entry_point_loads_only_its_clients(entry_point):
    assert probe(entry_point)["loaded"] == EXPECTED[entry_point]
