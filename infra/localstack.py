"""The local stack: real Pub/Sub and Firestore emulators, the Cloud Run stand-in, and the
functions served by functions-framework, wired with Pub/Sub push subscriptions to each
function's URL as terraform/delivery.tf declares them in GCP. Used by the end-to-end tests and
by the README's demo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "canary-guard-local"
ALERTS_TOPIC = "canary-alerts"
ROLLBACK_TOPIC = "canary-rollback-requests"
NOTIFY_TOPIC = "canary-notifications"
CHECKPOINT_TOPIC = "canary-checkpoints"
# function -> the topic pushed to it
PUSH_TOPICS = {
    "breach_counter": ALERTS_TOPIC,
    "rollback": ROLLBACK_TOPIC,
    "notify": NOTIFY_TOPIC,
    "checkpoint_worker": CHECKPOINT_TOPIC,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll until `url` answers any HTTP status; fail early if `process` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@dataclass
class Process:
    """A child process in its own process group (gcloud starts java underneath)."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("w")
    popen = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        start_new_session=True,
    )
    return Process(name, popen, log_path)


@dataclass
class Emulators:
    pubsub_host: str
    firestore_host: str
    project: str
    processes: list[Process] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def reset_firestore(self) -> None:
        url = (
            f"http://{self.firestore_host}/emulator/v1/projects/{self.project}/databases/(default)/documents"
        )
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).close()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def start_emulators(log_dir: Path, project: str = PROJECT) -> Emulators:
    """Start both emulators on free ports and wait until each answers."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise RuntimeError("gcloud is not on PATH: the Pub/Sub and Firestore emulators come with it")
    pubsub_host = f"127.0.0.1:{free_port()}"
    firestore_host = f"127.0.0.1:{free_port()}"
    emulators = Emulators(pubsub_host, firestore_host, project)
    try:
        emulators.processes.append(
            spawn(
                "pubsub-emulator",
                [
                    gcloud,
                    "beta",
                    "emulators",
                    "pubsub",
                    "start",
                    f"--host-port={pubsub_host}",
                    f"--project={project}",
                ],
                log_dir,
            )
        )
        emulators.processes.append(
            spawn(
                "firestore-emulator",
                [gcloud, "emulators", "firestore", "start", f"--host-port={firestore_host}"],
                log_dir,
            )
        )
        for process, host in zip(emulators.processes, (pubsub_host, firestore_host), strict=True):
            wait_http(f"http://{host}/", timeout_s=90, process=process.popen)
    except BaseException:
        emulators.stop()
        raise
    return emulators


def serve_function(target: str, port: int, env: Mapping[str, str], log_dir: Path) -> Process:
    """functions-framework serving one entry point of functions/main.py, as Cloud Functions would."""
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        str(ROOT / "functions" / "main.py"),
        "--target",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = spawn(f"fn-{target}", argv, log_dir, {**env, "PYTHONUNBUFFERED": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout_s=60, process=process.popen)
    except (RuntimeError, TimeoutError) as exc:
        process.stop()  # never leave a half-started function behind
        raise RuntimeError(f"{target} did not start: {exc}\n{process.log_tail()}") from None
    return process


def push_endpoint(port: int) -> str:
    """The function's own URL, as Terraform's push subscriptions use it (terraform/delivery.tf):
    functions-framework builds the Pub/Sub CloudEvent from the push body."""
    return f"http://127.0.0.1:{port}/"


def ensure_topic(project: str, topic: str) -> None:
    """Create `topic` on the emulator if it is not there (PUBSUB_EMULATOR_HOST must be set)."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    with suppress(gexc.AlreadyExists):
        publisher.create_topic(name=publisher.topic_path(project, topic))


def wire_push(project: str, topic: str, subscription: str, endpoint: str) -> None:
    """Topic + push subscription on the emulator (PUBSUB_EMULATOR_HOST must be set)."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    with suppress(gexc.AlreadyExists):
        publisher.create_topic(name=topic_path)
    sub_path = subscriber.subscription_path(project, subscription)
    with suppress(gexc.NotFound):
        subscriber.delete_subscription(subscription=sub_path)
    subscriber.create_subscription(
        request={
            "name": sub_path,
            "topic": topic_path,
            "push_config": {"push_endpoint": endpoint},
            "ack_deadline_seconds": 30,
            "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 10}},
        }
    )
    subscriber.close()


def _restore_environ(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class Stack:
    emulators: Emulators
    cloudrun: object  # infra.cloudrun_standin.CloudRunStandin
    function_urls: dict[str, str]
    env: dict[str, str]
    log_dir: Path

    def operator_cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """The operator CLI (`canary-guard ARGS`) as a release owner runs it against this stack."""
        env = {**os.environ, **self.env, "USER": "release-owner"}
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


@contextmanager
def local_stack(
    log_dir: Path,
    services: list[str],
    *,
    functions: tuple[str, ...] = ("breach_counter", "rollback", "emergency_rollback"),
    emulators: Emulators | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Everything the pipeline needs, started in order and stopped in reverse."""
    from infra.cloudrun_standin import start_cloudrun_standin

    with ExitStack() as stack:
        if emulators is None:
            emulators = start_emulators(log_dir)
            stack.callback(emulators.stop)
        cloudrun = start_cloudrun_standin()
        stack.callback(cloudrun.stop)
        env = {
            **emulators.env(),
            "CANARY_SERVICES": ",".join(services),
            "ROLLBACK_TOPIC": ROLLBACK_TOPIC,
            "NOTIFY_TOPIC": NOTIFY_TOPIC,
            "CLOUD_RUN_API_ENDPOINT": cloudrun.url,
            # The checkpoint fans out only when a worker is there to take the messages.
            **({"CHECKPOINT_TOPIC": CHECKPOINT_TOPIC} if "checkpoint_worker" in functions else {}),
            **(extra_env or {}),
        }
        # This process publishes and wires subscriptions too; what it pointed at before comes
        # back when the stack stops (a caller's own emulators must not be left on dead ports).
        stack.callback(_restore_environ, {key: os.environ.get(key) for key in emulators.env()})
        os.environ.update(emulators.env())
        ensure_topic(emulators.project, NOTIFY_TOPIC)  # decisions notify even when nobody listens
        urls: dict[str, str] = {}
        for target in functions:
            port = free_port()
            stack.callback(serve_function(target, port, env, log_dir).stop)
            urls[target] = f"http://127.0.0.1:{port}"
            if target in PUSH_TOPICS:  # Pub/Sub-driven: a push subscription, as delivery.tf declares it
                topic = PUSH_TOPICS[target]
                wire_push(emulators.project, topic, f"{target}-push", push_endpoint(port))
        yield Stack(emulators, cloudrun, urls, env, log_dir)
