"""Shared fixtures: the real Pub/Sub and Firestore emulators (once per session), the Cloud Run
stand-in, and the functions served by functions-framework as separate processes."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from infra.localstack import (
    ALERTS_TOPIC,
    NOTIFY_TOPIC,
    PROJECT,
    ROLLBACK_TOPIC,
    Emulators,
    ensure_topic,
    free_port,
    serve_function,
    start_emulators,
)

LOCATION = "us-central1"
SHOP = f"projects/{PROJECT}/locations/{LOCATION}/services/shop"
API = f"projects/{PROJECT}/locations/{LOCATION}/services/api"
API_EU = f"projects/{PROJECT}/locations/europe-west1/services/api"
WATCHED = [SHOP, API, API_EU]
FOREIGN = f"projects/{PROJECT}/locations/{LOCATION}/services/not-watched"
FUNCTIONS = ("breach_counter", "rollback", "emergency_rollback")


def deploy_canary(
    cloudrun: object,
    service: str = SHOP,
    *,
    stable: str = "shop-00001",
    canary: str = "shop-00002",
    percent: int = 5,
    revisions: tuple[str, ...] = ("shop-00001", "shop-00002", "shop-00003"),
) -> None:
    """Put the service in the stand-in with `canary` tagged at `percent` and `stable` holding the rest."""
    traffic = [{"revision": stable, "percent": 100 - percent}]
    if percent:
        traffic.append({"revision": canary, "percent": percent, "tag": "canary"})
    cloudrun.put_service(service, list(dict.fromkeys((*revisions, stable, canary))), traffic)


# The functions under test keep decision records this long (Terraform's default).
DECISION_RETENTION_DAYS = 400


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
def emulators(log_dir: Path) -> Iterator[Emulators]:
    started = start_emulators(log_dir)
    saved = {key: os.environ.get(key) for key in started.env()}
    os.environ.update(started.env())
    ensure_topic(PROJECT, NOTIFY_TOPIC)  # the functions publish their notifications there
    yield started
    started.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def cloudrun_session() -> Iterator[object]:
    from infra.cloudrun_standin import start_cloudrun_standin

    standin = start_cloudrun_standin()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def monitoring_session() -> Iterator[object]:
    """The Cloud Monitoring stand-in (gRPC) that the served functions read, once per session."""
    from infra.monitoring_standin import start_monitoring_standin

    standin = start_monitoring_standin()
    yield standin
    standin.stop()


@pytest.fixture
def monitoring(monitoring_session: object) -> object:
    monitoring_session.reset()
    return monitoring_session


@pytest.fixture
def cloudrun(cloudrun_session: object) -> object:
    cloudrun_session.reset()
    return cloudrun_session


@pytest.fixture
def firestore_clean(emulators: Emulators) -> Emulators:
    emulators.reset_firestore()
    return emulators


@pytest.fixture(scope="session")
def function_env(
    emulators: Emulators, cloudrun_session: object, monitoring_session: object
) -> dict[str, str]:
    return {
        **emulators.env(),
        "CANARY_SERVICES": ",".join(WATCHED),
        "ROLLBACK_TOPIC": ROLLBACK_TOPIC,
        "CLOUD_RUN_API_ENDPOINT": cloudrun_session.url,
        "MONITORING_API_ENDPOINT": monitoring_session.target,
        "DECISION_RETENTION_DAYS": str(DECISION_RETENTION_DAYS),
        "NOTIFY_TOPIC": NOTIFY_TOPIC,
    }


@pytest.fixture
def rollback_requests(emulators):
    """A pull subscription on the rollback topic: what the breach counter / checkpoint published."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, ROLLBACK_TOPIC)
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(PROJECT, f"test-pull-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=topic)

    def pull(expect_at_least: int = 0, timeout_s: float = 10) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = subscriber.pull(subscription=sub, max_messages=50, timeout=5)
            for received in response.received_messages:
                got.append(json.loads(received.message.data))
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=sub, ack_ids=[r.ack_id for r in response.received_messages]
                )
            if len(got) >= expect_at_least and not response.received_messages:
                break
        return got

    yield pull
    subscriber.delete_subscription(subscription=sub)


class ServedFunction:
    """A function process plus its log, so tests can read the one line each call writes."""

    def __init__(self, name: str, url: str, log_path: Path) -> None:
        self.name = name
        self.url = url
        self.log_path = log_path

    def log_lines(self) -> list[dict]:
        # The process's stderr (gRPC's C-core logging, werkzeug) shares the file: a JSON line
        # may follow another writer's unterminated text, so each line is read from its first "{".
        lines = []
        decoder = json.JSONDecoder()
        for raw in self.log_path.read_text(errors="replace").splitlines():
            start = raw.find('{"severity"')
            if start < 0:
                continue
            try:
                entry, _ = decoder.raw_decode(raw, start)
            except json.JSONDecodeError:
                continue
            lines.append(entry)
        return lines

    def logs_for(self, **match: str) -> list[dict]:
        """The log lines with these fields. The process writes its line before it answers, but the
        file may lag the answer on a loaded machine: an empty result is re-read for up to 3 s."""
        deadline = time.monotonic() + 3
        while True:
            found = [line for line in self.log_lines() if all(line.get(k) == v for k, v in match.items())]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="session")
def functions(function_env: dict[str, str], log_dir: Path) -> Iterator[dict[str, ServedFunction]]:
    served: dict[str, ServedFunction] = {}
    processes = []
    try:
        for target in FUNCTIONS:
            port = free_port()
            process = serve_function(target, port, function_env, log_dir)
            processes.append(process)
            served[target] = ServedFunction(target, f"http://127.0.0.1:{port}", process.log_path)
        yield served
    finally:
        for process in processes:
            process.stop()


__all__ = [
    "ALERTS_TOPIC",
    "API",
    "API_EU",
    "FOREIGN",
    "LOCATION",
    "NOTIFY_TOPIC",
    "PROJECT",
    "ROLLBACK_TOPIC",
    "SHOP",
    "WATCHED",
]
