"""The load_test entry point under functions-framework: a Scheduler-style call runs a bounded
load test and the rate-limit probe against both sides of local targets (found through the Cloud
Run stand-in's tag URLs), and records them in Firestore and in the Monitoring stand-in."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest
import requests
import yaml

from infra.localstack import PROJECT, free_port, serve_function
from infra.monitoring_standin import start_monitoring_standin
from infra.target_server import start_target_server
from shared.clients.cloudrun import CloudRunTraffic
from shared.clients.store import RolloutStore, rollout_id
from shared.config import Settings, load_settings
from shared.core.load_rules import FUNCTION_MARGIN_S
from shared.handlers.loadtest import LoadTestClients, handle_load_test, run_service_tests
from shared.policy import DEFAULT_POLICY_FILE, load_policy
from tests.conftest import API, API_EU, SHOP

pytestmark = pytest.mark.emulators
CANARY = rollout_id(SHOP, "shop-00002")


def small_policy(tmp_dir, probe: dict | None = None, **load_test):
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["load_test"] |= {
        "mode": "closed",
        "requests": 200,
        "concurrency": 4,
        "request_timeout_s": 2,
        **load_test,
    }
    policy["rate_limit_probe"] |= {"requests_per_side": 20, "delay_ms": 20, **(probe or {})}
    path = tmp_dir / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def monitoring():
    standin = start_monitoring_standin()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def targets():
    canary, stable = start_target_server(), start_target_server()
    yield {"canary": canary, "stable": stable}
    canary.stop()
    stable.stop()


@pytest.fixture(scope="module")
def load_test_url(function_env, log_dir, tmp_path_factory, monitoring):
    port = free_port()
    env = {
        **function_env,
        "CANARY_POLICY_FILE": str(small_policy(tmp_path_factory.mktemp("policy"))),
        "MONITORING_API_ENDPOINT": monitoring.target,
        "FUNCTION_TIMEOUT_S": "60",
        "FUNCTION_MEMORY_MB": "512",
    }
    process = serve_function("load_test", port, env, log_dir)
    yield f"http://127.0.0.1:{port}/"
    process.stop()


@pytest.fixture
def shop(cloudrun, targets, firestore_clean, monitoring):
    """shop's canary tag URL and service URL point at the two local targets."""
    monitoring.reset()
    for target in targets.values():
        target.configure(error_share=0, rate_limit_rps=0, latency_ms=0)
    cloudrun.put_service(
        SHOP,
        ["shop-00001", "shop-00002"],
        [
            {"revision": "shop-00001", "percent": 95},
            {"revision": "shop-00002", "percent": 5, "tag": "canary"},
        ],
        uri=targets["stable"].url,
        tag_uris={"canary": targets["canary"].url},
    )
    return cloudrun


def written(monitoring, name: str) -> dict[str, float]:
    """The last value of custom metric `name` per side."""
    values = {}
    for series in monitoring.series(PROJECT):
        if series.metric.type == f"custom.googleapis.com/canary_guard/{name}":
            point = series.points[0].value
            values[series.metric.labels["side"]] = point.double_value or float(point.int64_value)
    return values


def test_scheduler_call_load_tests_and_probes_both_sides(load_test_url, shop, targets, monitoring):
    targets["canary"].configure(error_share=0.2)  # every 5th canary response is a 500
    answer = requests.post(load_test_url, json={"service": "shop"}, timeout=120)
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["verdicts"] == {"load_canary": "FAIL", "load_stable": "PASS", "probe": "FAIL"}
    load = result["results"]["load_test"]
    assert load["canary"]["requests"] == 200 and load["canary"]["failures"]["5xx"] == 40
    assert load["stable"]["requests"] == 200 and load["stable"]["successes"] == 200
    for side in ("canary", "stable"):
        counted = load[side]
        assert counted["requests"] == counted["successes"] + sum(counted["failures"].values())
    probe = result["results"]["probe"]
    assert probe["canary"]["requests"] == 20 and probe["legacy"]["requests"] == 20
    assert probe["verdict"]["sides"] == {"canary": "FAIL", "legacy": "PASS"}

    history = RolloutStore(PROJECT).history(CANARY)
    recorded = [h for h in history if h["kind"] == "load_test"]
    assert len(recorded) == 1 and recorded[0]["verdict"] == "FAIL"
    assert recorded[0]["load_test"]["canary"]["failures"]["5xx"] == 40
    assert written(monitoring, "load_test/error_rate") == {"canary": 0.2, "stable": 0.0}
    assert written(monitoring, "load_test/probe_success_rate")["legacy"] == 1.0
    # When it hit the canary is kept on the rollout: checkpoints leave those minutes out.
    [synthetic] = RolloutStore(PROJECT).get(CANARY).synthetic_traffic
    assert synthetic.finished  # the entry noted before the run was closed by the same run id
    assert synthetic.started_at < synthetic.ended_at


def test_probe_reports_the_canary_rate_limit(load_test_url, shop, targets, monitoring):
    targets["canary"].configure(rate_limit_rps=5, rate_limit_burst=5)
    answer = requests.post(load_test_url, json={"mode": "probe", "service": "shop"}, timeout=120)
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    probe = result["results"]["probe"]
    assert probe["canary"]["rate_limited_429"] > 0
    assert probe["legacy"]["rate_limited_429"] == 0 and probe["legacy"]["successes"] == 20
    assert result["verdicts"] == {"probe": "FAIL"}
    assert "load_test" not in result["results"]


def test_healthy_sides_pass(load_test_url, shop):
    answer = requests.post(load_test_url, json={"service": "shop"}, timeout=120)
    assert answer.status_code == 200
    assert answer.json()["results"][0]["verdicts"] == {
        "load_canary": "PASS",
        "load_stable": "PASS",
        "probe": "PASS",
    }


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"mode": "soak"}, 400, "mode must be one of"),
        ({"service": "not-watched"}, 403, "not in CANARY_SERVICES"),
        ({"duration": 5}, 400, "unknown key(s) 'duration' in the body; the allowed keys are mode, service"),
    ],
)
def test_bad_bodies_get_4xx(load_test_url, body, status, says):
    answer = requests.post(load_test_url, json=body, timeout=30)
    assert answer.status_code == status and says in answer.json()["message"]


def test_a_config_that_cannot_fit_the_function_is_refused_before_any_request(
    function_env, shop, targets, tmp_path, monitoring
):
    settings = load_settings(
        function_env
        | {"FUNCTION_MEMORY_MB": "128", "CANARY_POLICY_FILE": str(small_policy(tmp_path, concurrency=200))}
    )
    before = targets["canary"].stats()
    with pytest.raises(ValueError, match="memory"):
        run_service_tests(
            settings.resolve_service("shop"),
            mode="load",
            settings=settings,
            policy=load_policy(settings.policy_file),
            store=RolloutStore(PROJECT),
            traffic=CloudRunTraffic(shop.url),
            writer=None,
            now=datetime.now(UTC),
        )
    assert targets["canary"].stats() == before


# --- handle_load_test called directly: the body, and one deadline for all services ------------

# Per service, 2 sides x (0.25 s request timeout + 1 s slack) + the probe's 2 x 0.25 s + 1 s: 4 s.
TIGHT_NEED_S = 4.0


def tight_settings(function_env, tmp_path, services: list[str], timeout_s: float = 60) -> Settings:
    policy = small_policy(
        tmp_path, {"requests_per_side": 2, "delay_ms": 0}, requests=20, concurrency=2, request_timeout_s=0.25
    )
    return load_settings(
        function_env
        | {
            "CANARY_SERVICES": ",".join(services),
            "CANARY_POLICY_FILE": str(policy),
            "FUNCTION_TIMEOUT_S": str(timeout_s),
        }
    )


def call(body, settings: Settings, cloudrun) -> tuple[dict, int]:
    clients = LoadTestClients(RolloutStore(PROJECT), CloudRunTraffic(cloudrun.url), writer=None)
    report, status = handle_load_test(
        body, settings=settings, policy=load_policy(settings.policy_file), auth="none", clients=clients
    )
    return report.as_dict(), status


def also_canary(cloudrun, targets, service: str = API) -> None:
    """`service` with a live canary on the same two local targets as shop."""
    name = service.rsplit("/", 1)[-1]
    cloudrun.put_service(
        service,
        [f"{name}-00001", f"{name}-00002"],
        [
            {"revision": f"{name}-00001", "percent": 95},
            {"revision": f"{name}-00002", "percent": 5, "tag": "canary"},
        ],
        uri=targets["stable"].url,
        tag_uris={"canary": targets["canary"].url},
    )


@pytest.mark.parametrize("body", [None, {}], ids=["no body", "empty object"])
def test_no_body_or_an_empty_object_tests_every_watched_service_in_both_modes(
    function_env, shop, targets, tmp_path, body
):
    settings = tight_settings(function_env, tmp_path, [SHOP, API])
    shop.put_service(API, ["api-00001"], [{"revision": "api-00001", "percent": 100}])
    answer, status = call(body, settings, shop)
    assert status == 200, answer
    shop_result, api_result = answer["results"]
    assert shop_result["verdicts"] == {"load_canary": "PASS", "load_stable": "PASS", "probe": "PASS"}
    assert (api_result["service"], api_result["outcome"]) == (API, "no_canary")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "got an array"),
        ([{"service": "shop"}], "got an array"),
        (False, "got a boolean"),
        (True, "got a boolean"),
        (0, "got a number"),
        (1.5, "got a number"),
        ("", "got a string"),
        ("shop", "got a string"),
    ],
)
def test_a_body_that_is_not_an_object_is_refused_before_any_request(
    function_env, shop, targets, tmp_path, body, says
):
    settings = tight_settings(function_env, tmp_path, [SHOP])
    answer, status = call(body, settings, shop)
    assert status == 400
    assert answer["message"] == (
        f"body must be a JSON object, {says}: "
        'send no body, {} or {"mode": "both|load|probe", "service": "name"}'
    )
    assert targets["canary"].stats()["requests"] == 0 and shop.calls() == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"service": "shop", "trigger": "cloud-scheduler"},
            "unknown key(s) 'trigger' in the body; the allowed keys are mode, service",
        ),
        ({"service": ["shop"]}, "service must be a service name (a string)"),
        ({"mode": "soak"}, "mode must be one of both, load, probe, got 'soak'"),
    ],
)
def test_a_body_with_bad_keys_or_values_is_refused_saying_what_is_allowed(
    function_env, shop, targets, tmp_path, body, says
):
    settings = tight_settings(function_env, tmp_path, [SHOP])
    answer, status = call(body, settings, shop)
    assert status == 400 and answer["message"].startswith(says), answer
    assert targets["canary"].stats()["requests"] == 0 and shop.calls() == []


def test_a_service_that_cannot_fit_what_is_left_is_skipped_not_started(function_env, shop, targets, tmp_path):
    """One deadline for the whole call: time the second service lost to Cloud Run retries is not
    given back, so it is reported skipped instead of being run past the function's timeout."""
    timeout_s = FUNCTION_MARGIN_S + 2 * TIGHT_NEED_S + 1  # both services fit, with 1 s to spare
    settings = tight_settings(function_env, tmp_path, [SHOP, API], timeout_s)
    also_canary(shop, targets)
    shop.inject_fault(methods=["GET"])  # shop's read: served as usual
    shop.inject_fault(503, methods=["GET"], delay_s=TIGHT_NEED_S + 2)  # api's: slow, then retried
    started = time.monotonic()
    answer, status = call({}, settings, shop)
    elapsed = time.monotonic() - started

    assert status == 200 and answer["outcome"] == "incomplete", answer
    assert answer["severity"] == "WARNING"
    shop_result, api_result = answer["results"]
    assert shop_result["verdicts"] == {"load_canary": "PASS", "load_stable": "PASS", "probe": "PASS"}
    assert (api_result["service"], api_result["outcome"]) == (API, "skipped")
    assert re.fullmatch(
        r"api: skipped, not enough time left in this run: 4\.0 s needed, \d+\.\d s left",
        api_result["message"],
    )
    assert targets["canary"].stats()["requests"] == 20 + 2  # shop's load test and probe only
    assert elapsed < timeout_s - FUNCTION_MARGIN_S  # all done before the deadline it was given


def test_the_plan_check_counts_the_services_of_the_call(function_env, shop, targets, tmp_path):
    """Three services cannot fit where two can: refused (400) before any Cloud Run read or request;
    a call for one of them still runs."""
    timeout_s = FUNCTION_MARGIN_S + 2 * TIGHT_NEED_S + 1
    settings = tight_settings(function_env, tmp_path, [SHOP, API, API_EU], timeout_s)
    answer, status = call({}, settings, shop)
    assert status == 400 and answer["outcome"] == "refused", answer
    assert "12 s for 3 services one after another" in answer["message"]
    assert targets["canary"].stats()["requests"] == 0 and shop.calls() == []

    answer, status = call({"service": "shop"}, settings, shop)
    assert status == 200 and answer["outcome"] == "done", answer


def test_cli_probe_and_load_test_show_and_record_results(function_env, shop, targets, tmp_path, monitoring):
    """`canary-guard probe` / `load-test` run the same engine, print per-side results, exit 4 on
    FAIL, and `status` shows the last result."""
    from click.testing import CliRunner

    from infra.cli import main
    from tests.test_cli import _fresh_runtime

    env = function_env | {
        "CANARY_POLICY_FILE": str(small_policy(tmp_path)),
        "MONITORING_API_ENDPOINT": monitoring.target,
        "FUNCTION_TIMEOUT_S": "60",
        "USER": "tester",  # who runs them: recorded with each result
    }

    def cli(*args: str):
        _fresh_runtime()
        result = CliRunner().invoke(main, list(args), env=env)
        _fresh_runtime()
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    targets["canary"].configure(rate_limit_rps=5, rate_limit_burst=5)
    result = cli("probe", "shop")
    assert result.exit_code == 4, result.output
    lines = result.output.splitlines()
    # Why it failed, per side, in the line itself (not only in --json).
    assert lines[0].startswith("shop: load test FAIL (probe FAIL): probe: canary:"), lines[0]
    canary_row = next(line.split() for line in lines if line.startswith("probe") and " canary " in line)
    assert canary_row[2] == "20" and int(canary_row[6]) > 0  # REQ, 429

    targets["canary"].configure(rate_limit_rps=0)
    result = cli("--json", "load-test", "shop", "--mode", "load")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["verdicts"] == {"load_canary": "PASS", "load_stable": "PASS"}
    status = cli("status", "shop")
    shown = [" ".join(line.split()) for line in status.output.splitlines()]
    expected = "load test shop: load test PASS (load_canary PASS, load_stable PASS)"
    assert any(line.startswith(expected) for line in shown), status.output
    history = json.loads(cli("--json", "history", "shop").output)["entries"]
    assert {e["requested_by"] for e in history if e["kind"] == "load_test"} == {"tester"}


def test_policy_method_and_headers_reach_the_target():
    """The policy's method and headers (plus the auth header) are what the target receives."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from shared.clients.loadgen import run_load_test

    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            seen.append((self.command, self.headers.get("X-Canary-Guard")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = load_policy().load_test.model_copy(
            update={
                "method": "HEAD",
                "headers": {"X-Canary-Guard": "load-test"},
                "requests": 5,
                "concurrency": 1,
            }
        )
        url = f"http://127.0.0.1:{server.server_address[1]}"
        results = run_load_test({"canary": url}, policy, function_timeout_s=60, memory_mb=512)
    finally:
        server.shutdown()
    assert results["canary"].successes == 5
    assert seen == [("HEAD", "load-test")] * 5
