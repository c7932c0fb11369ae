"""The rehearsal's own rules, in process: the local Cloud Scheduler (cron on the rehearsal clock,
never backfilling, the bodies Terraform sends), the scripts the sample canaries follow (from the
scenario library), and the compressed policy (only soaks change)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from infra.rehearsal.rehearse import compressed_policy
from infra.rehearsal.scheduler import Job, LocalScheduler, policy_jobs
from infra.rehearsal.scripts import (
    BASE_RSS_MB,
    demo_scripts,
    failing_from,
    from_scenario,
    minute_faults,
    scenario_names,
)
from shared.core.backtest import MinuteMetrics
from shared.policy import DEFAULT_POLICY_FILE, load_policy

T0 = datetime(2026, 12, 4, 2, 58, 30, tzinfo=UTC)


@pytest.fixture
def endpoint():
    """A function URL that records what each call POSTed."""
    calls: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()


def test_jobs_are_the_ones_terraform_declares():
    policy = load_policy()
    urls = {"checkpoint": "http://cp", "load_test": "http://lt", "breach_counter": "http://bc"}
    jobs = policy_jobs(policy, urls, ["projects/p/locations/l/services/shop"])
    assert [(j.name, j.schedule, j.url, j.body) for j in jobs] == [
        ("checkpoint", policy.checkpoint.schedule, "http://cp", {}),
        (
            "load_test_shop",
            policy.load_test.schedule,
            "http://lt",
            {"service": "projects/p/locations/l/services/shop"},
        ),
    ]
    assert policy_jobs(policy, {"breach_counter": "http://bc"}, ["s"]) == []


def test_each_job_fires_on_its_cron_once_per_time_and_never_backfills(endpoint):
    url, calls = endpoint
    fired = []
    every_minute = Job("checkpoint", "* * * * *", "Etc/UTC", url + "/cp")
    nightly = Job("load_test_shop", "0 3 * * *", "Etc/UTC", url + "/lt", {"service": "shop"})
    scheduler = LocalScheduler([every_minute, nightly], on_fired=fired.append)
    scheduler.start(T0)
    assert scheduler.tick(T0 + timedelta(seconds=20)) == []  # 02:58:50: nothing due
    [call] = scheduler.tick(T0 + timedelta(seconds=31))  # 02:59:01
    assert call.result(timeout=10).due == datetime(2026, 12, 4, 2, 59, tzinfo=UTC)
    # Six minutes pass between two ticks: each job fires once, then waits for its next time.
    late = scheduler.tick(T0 + timedelta(minutes=6, seconds=31))  # 03:05:01
    firings = sorted((f.result(timeout=10).job, f.result(timeout=10).due) for f in late)
    assert firings == [
        ("checkpoint", datetime(2026, 12, 4, 3, 0, tzinfo=UTC)),
        ("load_test_shop", datetime(2026, 12, 4, 3, 0, tzinfo=UTC)),
    ]
    assert scheduler.next_fire("checkpoint") == datetime(2026, 12, 4, 3, 6, tzinfo=UTC)
    assert scheduler.next_fire("load_test_shop") == datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    scheduler.stop()
    assert sorted(calls) == [("/cp", {}), ("/cp", {}), ("/lt", {"service": "shop"})]
    assert all(f.status == 200 and f.body == {"ok": True} for f in fired)


def test_a_schedule_in_another_time_zone_fires_at_its_local_time(endpoint):
    url, _ = endpoint
    job = Job("nightly", "0 3 * * *", "Europe/Berlin", url)
    scheduler = LocalScheduler([job])
    scheduler.start(T0)
    assert scheduler.next_fire("nightly") == datetime(2026, 12, 5, 2, 0, tzinfo=UTC)  # 03:00 CET
    scheduler.stop()


def test_an_unreachable_function_is_a_firing_with_its_error():
    fired = []
    scheduler = LocalScheduler(
        [Job("checkpoint", "* * * * *", "Etc/UTC", "http://127.0.0.1:9")], fired.append, 2
    )
    scheduler.start(T0)
    [call] = scheduler.tick(T0 + timedelta(minutes=1))
    firing = call.result(timeout=10)
    assert firing.status is None and "Connection" in firing.error
    scheduler.stop()


def _minute(**values):
    base = {"minute": T0, "requests": 200, "errors": 0, "latency_p95_ms": 80.0, "memory": 0.45, "cpu": 0.3}
    return MinuteMetrics(**{**base, **values})


@pytest.mark.parametrize(
    ("minute", "faults"),
    [
        (_minute(), {"latency_ms": 75.0, "memory_mb": round(0.45 * 512) - BASE_RSS_MB}),
        (_minute(errors=10), {"error_share": 0.05, "latency_ms": 75.0, "memory_mb": 200}),
        (_minute(errors=200), {"crash_after_s": 0}),  # every request failing: the process is down
        (_minute(latency_p95_ms=12.0, memory=None), {}),  # the app's own latency: nothing added
        (_minute(requests=0, errors=0, latency_p95_ms=None, memory=0.01), {"memory_mb": 0}),
    ],
)
def test_a_scenario_minute_becomes_the_sample_apps_faults(minute, faults):
    assert minute_faults(minute, memory_limit_mb=512) == faults


def test_every_scenario_of_the_library_can_be_rehearsed():
    for name in scenario_names():
        script = from_scenario(name)
        assert script.minutes and len(script.canary) == script.minutes
        assert script.expect in ("rollback", "hold")
    crash = from_scenario("crash")
    assert crash.expect == "rollback" and crash.expect_rule == "canary_down"
    assert crash.faults_at("canary", 4) != crash.faults_at("canary", 5) == {"crash_after_s": 0}
    assert from_scenario("cpu_hot").notes  # says what the sample app cannot reproduce
    with pytest.raises(ValueError, match="no scenario 'nope'; the library has: cpu_hot"):
        from_scenario("nope")


def test_the_demo_rehearses_one_promotion_and_one_rollback():
    cart, shop = demo_scripts()
    assert (cart.expect, shop.expect, shop.expect_rule) == ("promote", "rollback", "error_rate")
    assert cart.faults_at("canary", 40) == {}
    failing = failing_from(3, error_share=0.2)
    bad = {"error_share": 0.2}
    assert [failing.faults_at("canary", m) for m in (0, 2, 3, 99)] == [{}, {}, bad, bad]


def test_the_rehearsal_policy_changes_only_the_soaks(tmp_path):
    path = compressed_policy(DEFAULT_POLICY_FILE, 2, tmp_path)
    original, rehearsal = yaml.safe_load(DEFAULT_POLICY_FILE.read_text()), yaml.safe_load(path.read_text())
    assert [s["soak_minutes"] for s in rehearsal["ramp"]] == [
        2 if s["soak_minutes"] else 0 for s in original["ramp"]
    ]
    assert [s["percent"] for s in rehearsal["ramp"]] == [s["percent"] for s in original["ramp"]]
    del original["ramp"], rehearsal["ramp"]
    assert rehearsal == original


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--stable-cmd", "python -m http.server $PORT"], "give both --stable-cmd and --canary-cmd"),
        (
            ["--stable-cmd", "a", "--canary-cmd", "b", "--scenario", "crash"],
            "cannot script your own commands",
        ),
        (["--scenario", "nope"], "no scenario 'nope'; the library has: cpu_hot"),
        (["--speed", "0"], "--speed"),
    ],
)
def test_rehearse_refuses_what_it_cannot_run_and_says_what_to_fix(args, says):
    from click.testing import CliRunner

    from infra.rehearsal.cli import rehearse

    result = CliRunner().invoke(rehearse, args)
    assert result.exit_code == 2 and says in result.output


def test_help_lists_the_scenario_library():
    from infra.rehearsal.cli import SCENARIOS

    assert scenario_names() == SCENARIOS
