"""The rehearsal's data plane with real processes: the sample app's faults, revision processes,
the router splitting real requests by the Cloud Run stand-in's traffic, and what it records."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import requests

from infra.cloudrun_standin import CloudRunStandin, start_cloudrun_standin
from infra.rehearsal.revisions import ResourceSampler, RevisionProcess, RevisionStartError
from infra.rehearsal.router import Router, Routes, routes_of
from infra.rehearsal.traffic_driver import TrafficDriver
from shared.clock import ENV as CLOCK_ENV
from shared.clock import ScaledClock

ROOT = Path(__file__).resolve().parents[1]
PROJECT, LOCATION = "rehearsal", "us-central1"
SAMPLE_APP = f"{sys.executable} -m infra.rehearsal.sample_app"
STABLE, CANARY = "shop-00001", "shop-00002"
T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
MIB = 1024 * 1024


class FakeClock:
    """A `now` the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.at

    def set(self, at: datetime) -> None:
        with self._lock:
            self.at = at


def await_condition(
    condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of process group `pgid`."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and alive(process):
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def scaled_env(speed: float) -> dict[str, str]:
    """The rehearsal clock for a child process: starts now, runs `speed` times as fast."""
    return {CLOCK_ENV: ScaledClock(T0, time.time(), speed).spec()}


@pytest.fixture(scope="module")
def standin() -> Iterator[CloudRunStandin]:
    server = start_cloudrun_standin()
    yield server
    server.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., RevisionProcess]]:
    """Start revision processes (stopped at the end), logging into tmp_path."""
    started: list[RevisionProcess] = []

    def start(
        revision: str, command: str = SAMPLE_APP, *, cwd: Path = ROOT, **kwargs: object
    ) -> RevisionProcess:
        process = RevisionProcess(revision, command, log_path=tmp_path / f"{revision}.log", cwd=cwd, **kwargs)
        started.append(process)
        return process.start(timeout_s=20)

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def routers() -> Iterator[Callable[..., Router]]:
    made: list[Router] = []

    def make(standin: CloudRunStandin, **kwargs: object) -> Router:
        router = Router(standin.url, PROJECT, LOCATION, **kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        router.stop()


def full_name(service: str) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/services/{service}"


def get_many(url: str, count: int) -> list[requests.Response]:
    with requests.Session() as session:
        return [session.get(url, timeout=10) for _ in range(count)]


# -- the sample app ----------------------------------------------------------------------------


def test_sample_app_serves_its_faults_and_switches_them_at_run_time(processes):
    app = processes("app-00001", f"{SAMPLE_APP} --error-share 0.3 --seed 7", service="app")

    responses = get_many(app.url + "/", 400)
    failed = sum(r.status_code == 500 for r in responses)
    assert {r.status_code for r in responses} == {200, 500}
    assert 0.2 <= failed / 400 <= 0.4  # 0.3 ± 4 standard deviations
    ok = next(r for r in responses if r.status_code == 200).json()
    assert ok["revision"] == "app-00001" and ok["service"] == "app"  # K_REVISION / K_SERVICE
    assert requests.get(app.url + "/health", timeout=5).status_code == 200
    assert requests.get(app.url + "/nope", timeout=5).status_code == 404

    # Replaced at run time: added latency only (the error share is off once left out).
    switched = requests.post(app.url + "/_faults", json={"latency_ms": 120}, timeout=5)
    assert switched.status_code == 200 and switched.json()["faults"]["error_share"] == 0
    timings = []
    for response in get_many(app.url + "/", 5):
        assert response.status_code == 200
        timings.append(response.elapsed.total_seconds())
    assert min(timings) >= 0.120 * 0.9 and statistics.median(timings) < 0.5
    assert requests.get(app.url + "/_faults", timeout=5).json()["faults"]["latency_ms"] == 120

    # Every request failing: the uptime check's path fails too.
    requests.post(app.url + "/_faults", json={"error_share": 1}, timeout=5)
    assert {r.status_code for r in get_many(app.url + "/", 20)} == {500}
    assert requests.get(app.url + "/health", timeout=5).status_code == 503

    # Memory held as a level: taken, then given back when the fault is lifted.
    held_mb = lambda: requests.get(app.url + "/_faults", timeout=5).json()["held_mb"]  # noqa: E731
    requests.post(app.url + "/_faults", json={"memory_mb": 30}, timeout=5)
    await_condition(lambda: held_mb() == 30, what="30 MB held")
    requests.post(app.url + "/_faults", json={}, timeout=5)
    await_condition(lambda: held_mb() == 0, what="the memory given back")

    bad = requests.post(app.url + "/_faults", json={"error_rate": 0.5}, timeout=5)
    assert bad.status_code == 400 and "error_rate" in bad.json()["error"]
    assert requests.post(app.url + "/_faults", json={"error_share": 2}, timeout=5).status_code == 400
    requests.post(app.url + "/_faults", json={}, timeout=5)
    assert {r.status_code for r in get_many(app.url + "/", 20)} == {200}


def test_slow_start_faults_from_and_flapping_run_on_the_rehearsal_clock(processes):
    # x60: a rehearsal minute is a real second; the app reads the clock from CANARY_GUARD_CLOCK.
    spawned = time.monotonic()
    app = processes(
        "app-00002",
        f"{SAMPLE_APP} --slow-start-s 30 --faults-from-s 90 --error-share 1",
        env=scaled_env(60),
    )
    assert time.monotonic() - spawned >= 0.5  # 30 rehearsal seconds before the port opened

    assert {r.status_code for r in get_many(app.url + "/", 5)} == {200}  # healthy before the faults
    await_condition(lambda: requests.get(app.url + "/", timeout=5).status_code == 500, what="the faults")
    started_failing = time.monotonic() - spawned
    assert 1.5 <= started_failing < 5  # 90 rehearsal seconds (not 90 real ones)

    # Flapping, 30 rehearsal seconds on, 30 off: seen switching on, off, on.
    requests.post(app.url + "/_faults", json={"error_share": 1, "flap_period_s": 30}, timeout=5)
    seen: list[bool] = []

    def switched_twice() -> bool:
        active = requests.get(app.url + "/_faults", timeout=5).json()["active"]
        if not seen or seen[-1] != active:
            seen.append(active)
        return len(seen) >= 3

    await_condition(switched_twice, timeout_s=5, what="flapping")
    assert seen[:3] == [True, False, True]


def test_revision_process_reports_a_command_that_dies_or_never_listens(tmp_path):
    dies = RevisionProcess("bad-00001", "echo 'no such module' >&2; exit 3", log_path=tmp_path / "dies.log")
    with pytest.raises(RevisionStartError, match=r"(?s)exited with code 3.*no such module"):
        dies.start(timeout_s=5)

    # A command that spawns a child and never listens: the whole group is stopped at the timeout.
    silent = RevisionProcess("mute-00001", "sleep 60 & echo waiting; wait", log_path=tmp_path / "mute.log")
    with pytest.raises(RevisionStartError, match=r"(?s)did not accept connections.*waiting"):
        silent.start(timeout_s=0.5)
    assert silent.returncode is not None
    assert silent.pid is not None
    await_condition(lambda: not group_members(silent.pid), timeout_s=5, what="the group to be gone")


# -- the router --------------------------------------------------------------------------------


def test_router_splits_by_the_served_traffic_and_a_rollback_moves_it(standin, processes, routers):
    stable, canary = processes(STABLE, service="shop"), processes(CANARY, service="shop")
    standin.put_service(
        full_name("shop"),
        [STABLE, CANARY],
        [{"revision": STABLE, "percent": 90}, {"revision": CANARY, "percent": 10, "tag": "canary"}],
    )
    router = routers(standin)
    url = router.add_service(
        "shop", {STABLE: stable.url, full_name("shop") + f"/revisions/{CANARY}": canary.url}
    )
    assert router.traffic("shop") == {STABLE: 90, CANARY: 10}

    # A few hundred requests per second through the router, split 90/10.
    driver = TrafficDriver(url, rps=300, threads=8).start()
    began = time.monotonic()
    await_condition(lambda: driver.sent() >= 1000, timeout_s=15, what="1000 requests")
    outcomes = driver.stop()
    assert time.monotonic() - began < 8
    assert set(outcomes) == {"2xx"}
    served = router.served_counts("shop")
    assert sum(served.values()) == sum(outcomes.values())
    assert 0.06 <= served[CANARY] / sum(served.values()) <= 0.14  # 10 % ± 4 standard deviations

    # The tag URL reaches the canary whatever its percent.
    tagged = get_many(router.tag_url("shop", "canary") + "/", 10)
    assert {r.json()["revision"] for r in tagged} == {CANARY}

    # A rollback written through the Cloud Run API (100 % stable, the canary keeps its tag).
    patched_at = time.monotonic()
    patch = requests.patch(
        f"{standin.url}/v2/{full_name('shop')}",
        json={"traffic": [{"revision": STABLE, "percent": 100}, {"revision": CANARY, "tag": "canary"}]},
        timeout=5,
    )
    assert patch.status_code == 200
    await_condition(lambda: router.traffic("shop") == {STABLE: 100, CANARY: 0}, timeout_s=2, what="rollback")
    assert time.monotonic() - patched_at < 1.0
    before = router.served_counts("shop")
    bodies = [r.json()["revision"] for r in get_many(url + "/", 300)]
    after = router.served_counts("shop")
    assert bodies == [STABLE] * 300
    assert after[CANARY] == before[CANARY]  # not one request more for the canary
    assert after[STABLE] - before[STABLE] == 300
    assert requests.get(router.tag_url("shop", "canary") + "/", timeout=5).json()["revision"] == CANARY


def test_router_splits_by_what_cloud_run_serves_not_by_the_spec(standin, routers):
    standin.put_service(
        full_name("cart"),
        ["cart-00001", "cart-00002"],
        [
            {"revision": "cart-00001", "percent": 90},
            {"revision": "cart-00002", "percent": 10, "tag": "canary"},
        ],
    )
    router = routers(standin)
    router.add_service("cart", {})
    # An update Cloud Run accepts but fails to roll out: the spec says 100/0, the old split is served.
    standin.next_update(reconcile_gets=1, fail_code=9)
    patch = requests.patch(
        f"{standin.url}/v2/{full_name('cart')}",
        json={
            "traffic": [
                {"revision": "cart-00001", "percent": 100},
                {"revision": "cart-00002", "tag": "canary"},
            ]
        },
        timeout=5,
    )
    assert patch.status_code == 200
    polls = len(standin.calls())
    await_condition(lambda: len(standin.calls()) >= polls + 3, what="three polls of the router")
    assert [t.get("percent", 0) for t in standin.service(full_name("cart"))["traffic"]] == [100, 0]
    assert router.traffic("cart") == {"cart-00001": 90, "cart-00002": 10}


def test_routes_of_a_latest_target_without_statuses_is_the_latest_ready_revision():
    service = {
        "latestReadyRevision": "projects/p/locations/l/services/cart/revisions/cart-00003",
        "traffic": [
            {"type": 1, "percent": 60},
            {"type": 2, "revision": "cart-00001", "percent": 40, "tag": "old"},
        ],
    }
    assert routes_of(service) == Routes({"cart-00003": 60, "cart-00001": 40}, {"old": "cart-00001"})


def test_router_records_each_minute_by_the_injected_clock(standin, processes, routers):
    app = processes("api-00001", service="api")
    standin.put_service(full_name("api"), ["api-00001"], [{"percent": 100}])  # a LATEST target
    clock = FakeClock(T0 + timedelta(seconds=30))
    router = routers(standin, now=clock)
    url = router.add_service("api", {"api-00001": app.url})

    assert [r.status_code for r in get_many(url + "/", 5)] == [200] * 5
    assert requests.get(url + "/missing", timeout=5).status_code == 404
    clock.set(T0 + timedelta(minutes=1, seconds=10))
    assert [r.status_code for r in get_many(url + "/", 3)] == [200] * 3

    first = router.take_minutes(T0 + timedelta(minutes=1))  # only the minute that has ended
    assert [(m.service, m.revision, m.start, m.counts) for m in first] == [
        ("api", "api-00001", T0, {"2xx": 5, "4xx": 1})
    ]
    assert len(first[0].latencies_ms) == 6 and all(0 < ms < 1000 for ms in first[0].latencies_ms)
    assert router.take_minutes(T0 + timedelta(minutes=1)) == []  # taken once, then forgotten
    second = router.take_minutes(T0 + timedelta(minutes=2))
    assert [(m.start, m.counts) for m in second] == [(T0 + timedelta(minutes=1), {"2xx": 3})]
    assert router.served_counts() == {"api-00001": 9}


def test_a_crashed_revision_is_a_503_counted_as_its_5xx(standin, processes, routers):
    app = processes("crash-00001")
    standin.put_service(full_name("crash"), ["crash-00001"], [{"revision": "crash-00001", "percent": 100}])
    clock = FakeClock(T0)
    router = routers(standin, now=clock)
    url = router.add_service("crash", {"crash-00001": app.url})
    with requests.Session() as session:
        assert session.get(url + "/", timeout=5).status_code == 200  # keeps the router's connection
        requests.post(app.url + "/_faults", json={"crash_after_s": 0}, timeout=5)  # crash at once
        assert app.wait_exit(timeout_s=10) == 3
        assert session.get(url + "/", timeout=5).status_code == 503
        assert session.get(url + "/", timeout=5).status_code == 503
    [minute] = router.take_minutes(T0 + timedelta(minutes=1))
    assert (minute.revision, minute.counts) == ("crash-00001", {"2xx": 1, "5xx": 2})
    assert "crashing" in app.log_tail()


def test_bring_your_own_commands_are_served_through_the_router(standin, processes, routers, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("static site\n")
    echo = tmp_path / "echo.py"
    echo.write_text(ECHO_SERVER)
    # Any command serving $PORT; this one also leaves a child process running in its group.
    static = processes(
        "byo-00001", f"sleep 300 & exec {sys.executable} -m http.server $PORT --bind 127.0.0.1", cwd=site
    )
    echoing = processes("byo-00002", f"{sys.executable} {echo}", cwd=tmp_path)
    standin.put_service(
        full_name("byo"),
        ["byo-00001", "byo-00002"],
        [{"revision": "byo-00001", "percent": 50}, {"revision": "byo-00002", "percent": 50, "tag": "echo"}],
    )
    router = routers(standin)
    url = router.add_service("byo", {"byo-00001": static.url, "byo-00002": echoing.url})

    responses = get_many(url + "/index.html", 60)
    bodies = Counter("static" if r.text == "static site\n" else "echo" for r in responses)
    assert all(r.status_code == 200 for r in responses)
    assert router.served_counts("byo") == {"byo-00001": bodies["static"], "byo-00002": bodies["echo"]}
    assert bodies["static"] > 5 and bodies["echo"] > 5

    # Method, path, query, body and headers reach the backend; its status and headers come back.
    answer = requests.post(
        router.tag_url("byo", "echo") + "/orders/7?dry_run=1",
        data=b'{"qty": 2}',
        headers={"X-Request-Id": "abc", "Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 201 and answer.headers["X-Echo"] == "yes"
    seen = answer.json()
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/orders/7?dry_run=1", '{"qty": 2}')
    assert seen["headers"]["X-Request-Id"] == "abc"

    leader = psutil.Process(static.pid)
    group = [leader, *leader.children(recursive=True)]
    assert len(group) == 2  # http.server and the sleep it left behind
    static.stop()
    await_condition(lambda: not any(alive(process) for process in group), timeout_s=5, what="the group gone")


ECHO_SERVER = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Echo(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        data = json.dumps({"method": self.command, "path": self.path, "body": body,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(201)
        self.send_header("X-Echo", "yes")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        data = b"echo\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
"""


# -- container resources -----------------------------------------------------------------------


def test_resource_sampler_sees_memory_grow_and_nothing_of_a_dead_process(processes):
    # 1800 MB per (real, unscaled) minute: 30 MB a second.
    leaky = processes("leak-00001", f"{SAMPLE_APP} --memory-growth-mb-per-min 1800", service="leak")
    clock = FakeClock(T0)
    sampler = ResourceSampler([leaky], interval_s=0.05, memory_limit_bytes=512 * MIB, now=clock).start()
    try:
        rounds = sampler.rounds
        await_condition(lambda: sampler.rounds >= rounds + 3, what="samples in the first minute")
        clock.set(T0 + timedelta(minutes=1))
        held_mb = lambda: requests.get(leaky.url + "/_faults", timeout=5).json()["held_mb"]  # noqa: E731
        await_condition(lambda: held_mb() >= 80, what="80 MB held")
        rounds = sampler.rounds
        await_condition(lambda: sampler.rounds >= rounds + 3, what="samples in the second minute")

        leaky.stop()  # no instance from now on
        clock.set(T0 + timedelta(minutes=2))
        rounds = sampler.rounds
        await_condition(lambda: sampler.rounds >= rounds + 3, what="rounds after the stop")
        minutes = sampler.take_minutes(T0 + timedelta(minutes=3))
    finally:
        sampler.stop()

    assert [(m.service, m.revision, m.start) for m in minutes] == [
        ("leak", "leak-00001", T0),
        ("leak", "leak-00001", T0 + timedelta(minutes=1)),
    ]  # the dead process's minute has no samples at all
    first, second = minutes
    assert len(first.memory_utilizations) >= 3 and len(second.memory_utilizations) >= 3
    grown = (max(second.memory_utilizations) - min(first.memory_utilizations)) * 512
    assert grown >= 50  # MB, measured as RSS
    assert all(0 < u < 1 for u in first.memory_utilizations + second.memory_utilizations)
    cpu = first.cpu_utilizations + second.cpu_utilizations
    assert len(cpu) >= 4 and all(0 <= u <= 1.5 for u in cpu)
    assert max(cpu) > 0  # allocating and filling memory is CPU work


def test_take_minutes_keeps_the_minute_still_running(processes):
    app = processes("idle-00001")
    clock = FakeClock(T0 + timedelta(seconds=59))
    sampler = ResourceSampler([app], interval_s=1, now=clock)
    sampler.sample_once()
    sampler.sample_once()
    assert sampler.take_minutes(T0 + timedelta(seconds=59)) == []  # not over yet
    [minute] = sampler.take_minutes(T0 + timedelta(minutes=1))
    assert len(minute.memory_utilizations) == 2 and len(minute.cpu_utilizations) == 1
    assert 0 < minute.memory_utilizations[0] < 0.5  # an idle Python process against 512 MiB
