"""The operator CLI (infra/cli.py), every subcommand against the real Firestore and Pub/Sub
emulators, the Cloud Run stand-in and a Monitoring stand-in loaded with Cloud Run-shaped series.

In-process runs use click's CliRunner with the environment passed explicitly. shared.runtime
caches settings and clients per process (right for a one-shot CLI process and for warm
function instances), so `invoke` clears those caches before every run: each invocation then
behaves like a fresh `canary-guard` process reading its own environment. One test also runs
the real entry point as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from google.api import distribution_pb2

from infra.cli import main
from infra.localstack import PROJECT
from infra.monitoring_standin import MonitoringStandin, distribution, start_monitoring_standin
from shared import runtime
from shared.clients.monitoring import CPU_UTILIZATIONS, MEMORY_UTILIZATIONS, REQUEST_COUNT, REQUEST_LATENCIES
from shared.clients.store import RolloutStore, rollout_id
from shared.core.evidence import Evidence, EvidenceKind, whole_minute
from shared.core.ledger import Phase
from shared.handlers.breach import record_evidence
from shared.policy import load_policy
from tests.conftest import LOCATION, SHOP, WATCHED, deploy_canary

pytestmark = pytest.mark.emulators

REPO = Path(__file__).resolve().parents[1]
ROLLOUT = rollout_id(SHOP, "shop-00002")
Buckets = distribution_pb2.Distribution.BucketOptions
LATENCY_BUCKETS = Buckets(explicit_buckets=Buckets.Explicit(bounds=[0, 25, 50, 100, 250, 500, 1000]))
MEMORY_BUCKETS = Buckets(
    exponential_buckets=Buckets.Exponential(num_finite_buckets=5, growth_factor=2, scale=0.0625)
)
CPU_BUCKETS = Buckets(linear_buckets=Buckets.Linear(num_finite_buckets=10, width=0.1, offset=0))

Invoke = Callable[..., Result]


@pytest.fixture(scope="module")
def monitoring() -> MonitoringStandin:
    standin = start_monitoring_standin()
    yield standin
    standin.stop()


@pytest.fixture
def env(emulators, cloudrun, monitoring) -> dict[str, str | None]:
    """What the functions get, plus the operator's $USER; optional knobs unset for isolation."""
    monitoring.reset()
    return {
        **emulators.env(),
        "CANARY_SERVICES": ",".join(WATCHED),
        "CLOUD_RUN_API_ENDPOINT": cloudrun.url,
        "MONITORING_API_ENDPOINT": monitoring.target,
        "USER": "tester",
        "CANARY_POLICY_FILE": None,
        "CHAT_WEBHOOK_URL": None,
    }


def _fresh_runtime() -> None:
    """Forget shared.runtime's per-process settings, policy and clients (every cached builder)."""
    for builder in vars(runtime).values():
        if callable(getattr(builder, "cache_clear", None)):
            builder.cache_clear()


@pytest.fixture
def invoke(env) -> Invoke:
    def run(*args: str, **overrides: str | None) -> Result:
        _fresh_runtime()
        result = CliRunner().invoke(main, list(args), env={**env, **overrides})
        _fresh_runtime()  # nothing built from this run's environment leaks into other tests
        # A crash would be an unmapped exception: always a bug in the CLI or below it.
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    return run


@pytest.fixture
def store(firestore_clean) -> RolloutStore:
    return RolloutStore(PROJECT)


@pytest.fixture
def shop(cloudrun, store):
    """shop-00001 serves everything; shop-00002 and shop-00003 are deployed without traffic."""
    deploy_canary(cloudrun, percent=0)
    return cloudrun


@pytest.fixture
def started(invoke, shop):
    result = invoke("--as", "alice", "start", "shop", "--revision", "shop-00002", "--percent", "5")
    assert result.exit_code == 0, result.output
    return shop


def live(cloudrun, service: str = SHOP) -> dict[str, int]:
    return {t["revision"]: t.get("percent", 0) for t in cloudrun.service(service)["traffic"]}


def tags(cloudrun, service: str = SHOP) -> dict[str, str]:
    return {t["revision"]: t.get("tag", "") for t in cloudrun.service(service)["traffic"]}


def as_json(result: Result) -> dict:
    """stdout must be exactly one JSON document (logs go to stderr)."""
    return json.loads(result.stdout)


def breach(store: RolloutStore, n: int, rule: str = "error_rate") -> None:
    """Record `n` consecutive breach minutes the way checkpoints and alerts do (same transaction)."""
    policy = load_policy()
    first = whole_minute(datetime.now(UTC)) - timedelta(minutes=n)
    for i in range(n):
        rollout = store.get(ROLLOUT)
        assert rollout is not None
        minute = first + timedelta(minutes=i)
        entry = Evidence(rule, minute, EvidenceKind.BREACH, "metrics", 0.05, 0.01, 200)
        record_evidence(
            rollout, [entry], policy=policy, store=store, source="checkpoint", requested_by="test"
        )


def load_canary_series(monitoring: MonitoringStandin, canary: str = "shop-00002") -> None:
    """One point a minute for the last 20 minutes, so the CLI's window (5 min ending 4 min ago)
    holds exactly 5 points whenever within the next few minutes it runs.

    Per minute: 199 x 2xx + 1 x 5xx (0.5 %, exactly on the GO bar); latencies 90 x 20 ms +
    10 x 300 ms (P95 375 ms: over the GO bar, under the rollback bar -> HOLD); memory samples
    0.3/0.4, CPU 0.15/0.45. The stable revision is much worse and must not leak in.
    """
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [now - timedelta(minutes=k) for k in range(20, -1, -1)]

    def add(metric: str, revision: str, value: object, **labels: str) -> None:
        resource = {
            "project_id": PROJECT,
            "location": LOCATION,
            "service_name": "shop",
            "revision_name": revision,
        }
        monitoring.add_points(
            PROJECT,
            metric,
            [(t, value) for t in minutes],
            resource_type="cloud_run_revision",
            resource_labels=resource,
            metric_labels=labels,
        )

    add(REQUEST_COUNT, canary, 199, response_code="200", response_code_class="2xx")
    add(REQUEST_COUNT, canary, 1, response_code="500", response_code_class="5xx")
    add(
        REQUEST_LATENCIES,
        canary,
        distribution([20] * 90 + [300] * 10, LATENCY_BUCKETS),
        response_code_class="2xx",
    )
    add(MEMORY_UTILIZATIONS, canary, distribution([0.3, 0.4], MEMORY_BUCKETS))
    add(CPU_UTILIZATIONS, canary, distribution([0.15, 0.45], CPU_BUCKETS))
    add(REQUEST_COUNT, "shop-00001", 500, response_code="500", response_code_class="5xx")


# --- start ---------------------------------------------------------------------------------


def test_start_tags_the_canary_registers_the_rollout_and_refuses_a_second(invoke, shop, store):
    result = invoke("--as", "alice", "start", "shop", "--revision", "shop-00002", "--percent", "5")

    assert result.exit_code == 0, result.output
    assert "started canary shop-00002 at 5% (stable shop-00001)" in result.stdout
    assert live(shop) == {"shop-00001": 95, "shop-00002": 5}
    assert tags(shop)["shop-00002"] == "canary"
    rollout = store.get(ROLLOUT)
    assert rollout is not None
    assert (rollout.phase, rollout.canary_percent, rollout.stable_revision, rollout.started_by) == (
        Phase.RUNNING,
        5,
        "shop-00001",
        "alice",
    )

    second = invoke("--json", "start", "shop", "--revision", "shop-00003", "--percent", "5")

    assert second.exit_code == 1
    assert second.stdout == ""
    assert "already has an active rollout of shop-00002" in second.stderr
    assert live(shop) == {"shop-00001": 95, "shop-00002": 5}


def test_start_json_has_the_documented_keys(invoke, shop):
    result = invoke("--json", "start", "shop", "--revision", "shop-00002", "--percent", "5")

    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert set(data) == {"rollout", "canary", "stable", "before", "after"}
    assert sorted(data["after"], key=lambda t: t["revision"]) == [
        {"revision": "shop-00001", "percent": 95, "tag": ""},
        {"revision": "shop-00002", "percent": 5, "tag": "canary"},
    ]
    assert data["before"] == [{"revision": "shop-00001", "percent": 100, "tag": ""}]


def test_start_out_of_range_percent_is_refused(invoke, shop, store):
    result = invoke("start", "shop", "--revision", "shop-00002", "--percent", "100")

    assert result.exit_code == 1
    assert "--percent must be between 1 and 99" in result.stderr
    assert store.active(SHOP) is None


# --- status --------------------------------------------------------------------------------


def test_status_healthy_then_degraded_with_exit_codes(invoke, started, store):
    healthy = invoke("status", "shop")
    assert healthy.exit_code == 0, healthy.output
    print(healthy.stdout)
    assert healthy.stdout.startswith("shop  HEALTHY  no breach seen")
    assert "shop-00002 at 5%, step 1/5" in healthy.stdout
    assert "started by    alice" in healthy.stdout

    every = invoke("status")
    assert every.exit_code == 0, every.output
    print(every.stdout)
    lines = every.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "HEALTH", "STEP", "CANARY", "SHARE", "STABLE", "WHY"]
    assert lines[1].split()[:6] == ["us-central1/shop", "HEALTHY", "1/5", "shop-00002", "5%", "shop-00001"]
    assert [line.split()[:2] for line in lines[2:]] == [
        ["us-central1/api", "NONE"],
        ["europe-west1/api", "NONE"],
    ]

    breach(store, 1)

    degraded = invoke("status", "shop")
    assert degraded.exit_code == 4
    print(degraded.stdout)
    assert degraded.stdout.startswith("shop  DEGRADED  error_rate streak 1/3")
    assert invoke("status").exit_code == 4  # any unhealthy service fails the gate

    data = as_json(invoke("--json", "status", "shop"))
    assert (data["health"], data["streaks"], data["why"]) == (
        "DEGRADED",
        {"error_rate": 1},
        "error_rate streak 1/3",
    )
    assert {
        "service",
        "health",
        "why",
        "rollout",
        "phase",
        "canary_revision",
        "stable_revision",
        "canary_percent",
        "step",
        "step_started_at",
        "paused",
        "streaks",
        "last_verdict",
        "started_by",
    } <= set(data)
    assert datetime.fromisoformat(data["step_started_at"]).tzinfo is not None

    every_json = as_json(invoke("status", "--json"))  # --json after the subcommand works too
    assert [(row["service"], row["health"]) for row in every_json["services"]] == [
        (WATCHED[0], "DEGRADED"),
        (WATCHED[1], "NONE"),
        (WATCHED[2], "NONE"),
    ]


def test_status_rolling_back_once_a_rule_trips(invoke, started, store):
    breach(store, 3)

    result = invoke("--json", "status", "shop")

    assert result.exit_code == 4
    assert as_json(result)["health"] == "ROLLING_BACK"


def test_status_shows_the_last_checkpoint_verdict(invoke, started, store):
    verdict = {"verdict": "HOLD", "reasons": ["latency_p95 375 ms > GO bar 200 ms"], "request_count": 1000}
    store.record_checkpoint(ROLLOUT, verdict, {"action": "hold", "message": "verdict HOLD"})

    result = invoke("status", "shop")

    assert result.exit_code == 4  # a HOLD is DEGRADED: never a pass
    assert result.stdout.startswith("shop  DEGRADED  latency_p95 375 ms > GO bar 200 ms")
    assert "last verdict  HOLD at 20" in result.stdout
    data = as_json(invoke("--json", "status", "shop"))
    assert (data["last_verdict"], data["last_verdict_reasons"]) == ("HOLD", verdict["reasons"])
    assert datetime.fromisoformat(data["last_verdict_at"]).tzinfo is not None


# --- metrics -------------------------------------------------------------------------------


def test_metrics_shows_values_next_to_the_go_and_rollback_bars(invoke, started, monitoring):
    load_canary_series(monitoring)

    human = invoke("metrics", "shop")
    assert human.exit_code == 0, human.output
    print(human.stdout)  # pasted in the docs: `pytest -s -k metrics_shows`
    rows = {line.split()[0]: line for line in human.stdout.splitlines()[1:]}
    assert human.stdout.startswith("shop canary shop-00002: 1000 requests, 5 5xx in (")
    assert rows["MEASURE"].split() == ["MEASURE", "VALUE", "GO", "IF", "<=", "ROLL", "BACK", "IF", ">"]
    assert rows["error_rate"].split() == ["error_rate", "0.50%", "0.50%", "1.00%"]
    assert rows["latency_p95"].split() == ["latency_p95", "375", "ms", "200", "ms", "500", "ms"]
    assert rows["memory"].split() == ["memory", "49.75%", "85.00%", "85.00%"]
    assert rows["cpu"].split() == ["cpu", "49.80%", "80.00%", "-"]
    assert rows["verdict"].split(maxsplit=1)[1] == (
        "HOLD: error_rate 0.50% (upper 95% bound 1.02%) > GO bar 0.50%; latency_p95 375 ms > GO bar 200 ms"
    )

    data = as_json(invoke("--json", "metrics", "shop"))
    assert (data["request_count"], data["error_count"], data["verdict"]) == (1000, 5, "HOLD")
    assert data["measured"]["error_rate"] == {
        "value": 0.005,
        "go_bar": 0.005,
        "rollback_bar": 0.01,
        "upper_bound": pytest.approx(0.0102, abs=5e-5),
        "confidence": 0.95,
    }
    assert data["measured"]["latency_p95"]["value"] == pytest.approx(375)
    start, end = (datetime.fromisoformat(data["window"][k]) for k in ("start", "end"))
    assert end - start == timedelta(minutes=5)
    assert timedelta(minutes=4) <= datetime.now(UTC) - end < timedelta(minutes=5)


def test_metrics_without_data_is_inconclusive_not_zero(invoke, started):
    result = invoke("metrics", "shop")

    assert result.exit_code == 0, result.output
    assert "error_rate   no data" in result.stdout
    assert "INCONCLUSIVE: 0 requests < 100 needed to judge" in result.stdout


def test_monitoring_failure_exits_3(invoke, started, monitoring):
    monitoring.fail_next("ListTimeSeries", grpc.StatusCode.PERMISSION_DENIED)

    result = invoke("metrics", "shop")

    assert result.exit_code == 3
    assert "control-plane failure" in result.stderr and "PERMISSION_DENIED" in result.stderr.upper()


# --- advance, pause, resume ----------------------------------------------------------------


def test_advance_moves_to_the_next_step_and_history_shows_it(invoke, started, store):
    result = invoke("--as", "carol", "advance", "shop", "--reason", "metrics look fine")

    assert result.exit_code == 0, result.output
    assert "canary shop-00002 5% → 10% (metrics look fine)" in result.stdout
    assert "after   shop-00001 90%, shop-00002 10% [canary]" in result.stdout
    assert live(started) == {"shop-00001": 90, "shop-00002": 10}
    assert as_json(invoke("--json", "status", "shop"))["step"] == "2/5"

    steps = [e for e in as_json(invoke("--json", "history", "shop"))["entries"] if e["kind"] == "step"]
    assert [(e["from_percent"], e["to_percent"], e["by"], e["message"]) for e in steps] == [
        (5, 10, "carol", "metrics look fine")
    ]


def test_advance_from_a_share_below_the_first_step_goes_to_the_first_step(invoke, shop):
    assert invoke("start", "shop", "--revision", "shop-00002", "--percent", "1").exit_code == 0

    result = invoke("advance", "shop")

    assert result.exit_code == 0, result.output
    assert live(shop) == {"shop-00001": 95, "shop-00002": 5}  # 5 %, the ramp's first step; not 10 %


def test_advance_output_stays_one_json_document_when_cloud_run_retries(invoke, started):
    started.inject_fault(503, count=1, methods=["PATCH"])

    result = invoke("--json", "advance", "shop")

    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert set(data) == {"rollout", "message", "before", "after"}
    assert "advanced by hand" in data["message"]  # the operation's default reason
    assert "retrying" in result.stderr  # the client's retry log line went to stderr


def test_a_frozen_rollout_blocks_a_new_start_and_resume_unfreezes_it(invoke, started, store, shop):
    assert store.set_phase(ROLLOUT, Phase.FROZEN, "frozen", {"message": "test"}, only_from={Phase.RUNNING})
    frozen_since = store.get(ROLLOUT).step_started_at
    serving = shop.service(SHOP)["traffic"]

    second = invoke("start", "shop", "--revision", "shop-00003", "--percent", "5")
    assert second.exit_code == 1  # a frozen canary still serves its share: still active
    assert "already has an active rollout of shop-00002 (FROZEN)" in second.stderr
    # Refused before any traffic write: the frozen canary keeps its share and its tag.
    assert shop.service(SHOP)["traffic"] == serving
    assert live(shop) == {"shop-00001": 95, "shop-00002": 5}

    assert invoke("pause", "shop").exit_code == 1  # nothing to pause: it is not ramping
    resumed = invoke("--as", "erin", "resume", "shop", "--reason", "fixed the slow query")
    assert resumed.exit_code == 0, resumed.output
    rollout = store.get(ROLLOUT)
    assert rollout.phase is Phase.RUNNING and not rollout.paused
    assert rollout.step_started_at > frozen_since  # a fresh soak and progress deadline
    [unfrozen] = [
        e for e in as_json(invoke("--json", "history", "shop"))["entries"] if e["kind"] == "unfrozen"
    ]
    assert (unfrozen["by"], unfrozen["message"]) == ("erin", "fixed the slow query")


def test_pause_and_resume_show_in_status_and_history_and_advance_still_works(invoke, started):
    paused = invoke("--as", "dave", "pause", "shop", "--reason", "waiting for the batch job")
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.strip() == f"paused {ROLLOUT}"

    status = invoke("status", "shop")
    assert status.exit_code == 0  # PAUSED is not unhealthy
    assert status.stdout.startswith("shop  PAUSED  paused by hand")
    assert "paused        yes" in status.stdout
    assert "5% (paused)" in invoke("status").stdout

    # Pause only stops the scheduler; the release owner may still step by hand.
    assert invoke("advance", "shop").exit_code == 0
    assert live(started) == {"shop-00001": 90, "shop-00002": 10}

    resumed = invoke("--json", "resume", "shop")
    assert resumed.exit_code == 0, resumed.output
    assert as_json(resumed) == {"rollout": ROLLOUT, "paused": False}
    assert as_json(invoke("--json", "status", "shop"))["paused"] is False

    entries = as_json(invoke("--json", "history", "shop"))["entries"]
    assert [(e["kind"], e.get("by") or e.get("started_by")) for e in entries] == [
        ("started", "alice"),
        ("paused", "dave"),
        ("step", "tester"),  # --as defaults to $USER
        ("resumed", "tester"),
    ]
    assert entries[1]["message"] == "waiting for the batch job"


# --- rollback ------------------------------------------------------------------------------


def test_rollback_dry_run_changes_nothing_then_rollback_moves_traffic_to_stable(invoke, started, store):
    dry = invoke("--as", "erin", "rollback", "shop", "--reason", "checkout errors", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("dry_run: dry run: would move shop to shop-00001 at 100%")
    assert "after   shop-00001 100%, shop-00002 0% [canary]" in dry.stdout
    assert live(started) == {"shop-00001": 95, "shop-00002": 5}
    assert store.get(ROLLOUT).phase is Phase.RUNNING

    real = invoke("--as", "erin", "--json", "rollback", "shop", "--reason", "checkout errors")
    assert real.exit_code == 0, real.output
    data = as_json(real)
    assert (data["status"], data["rollout"], data["stable_revision"]) == (
        "rolled_back",
        ROLLOUT,
        "shop-00001",
    )
    assert live(started) == {"shop-00001": 100, "shop-00002": 0}
    assert tags(started)["shop-00002"] == "canary"  # still reachable for debugging

    status = invoke("status", "shop")
    assert status.exit_code == 4
    assert status.stdout.startswith("shop  ROLLED_BACK  rolled back from 5%")
    assert "shop-00002 at 0%" in status.stdout  # it serves nothing now, whatever it had

    again = invoke("rollback", "shop", "--reason", "again")
    assert again.exit_code == 0
    assert again.stdout.startswith("already_rolled_back:")

    for verb in (["pause", "shop"], ["advance", "shop"]):
        refused = invoke(*verb)
        assert refused.exit_code == 1, verb
        assert "ROLLED_BACK" in refused.stderr

    rolled = [
        e for e in as_json(invoke("--json", "history", "shop"))["entries"] if e["kind"] == "rolled_back"
    ]
    assert [(e["requested_by"], e["reason"], e["mode"]) for e in rolled] == [
        ("erin", "checkout errors", "manual")
    ]


def test_rollback_needs_a_reason(invoke, started):
    result = invoke("rollback", "shop")

    assert result.exit_code == 2  # click's usage error
    assert "Missing option '--reason'" in result.stderr
    assert live(started) == {"shop-00001": 95, "shop-00002": 5}


# --- history -------------------------------------------------------------------------------


def test_history_lists_entries_in_order_with_limit(invoke, started, store):
    breach(store, 1)
    assert invoke("advance", "shop", "--reason", "step one").exit_code == 0
    assert invoke("pause", "shop").exit_code == 0

    human = invoke("history", "shop")
    assert human.exit_code == 0, human.output
    print(human.stdout)
    lines = human.stdout.splitlines()
    assert lines[0] == f"history of {ROLLOUT} (4 entries)"
    assert lines[1].split() == ["AT", "(UTC)", "KIND", "BY", "MESSAGE"]
    assert [line.split()[2:4] for line in lines[2:]] == [
        ["started", "alice"],
        ["evidence", "checkpoint"],
        ["step", "tester"],
        ["paused", "tester"],
    ]
    assert "runs error_rate 1/3" in lines[3]

    data = as_json(invoke("--json", "history", "shop"))
    assert set(data) == {"rollout", "entries"}
    times = [datetime.fromisoformat(e["at"]) for e in data["entries"]]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)

    newest = as_json(invoke("--json", "history", "shop", "--limit", "2"))["entries"]
    assert [e["kind"] for e in newest] == ["step", "paused"]
    assert invoke("history", "shop", "--limit", "0").exit_code == 2


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"CANARY_SERVICES": None}, "CANARY_SERVICES is required"),
        ({"CANARY_SERVICES": "shop"}, "CANARY_SERVICES"),
        ({"CANARY_POLICY_FILE": "/nonexistent/policy.yaml"}, "CANARY_POLICY_FILE"),
    ],
)
def test_configuration_error_exits_2_naming_the_variable(invoke, firestore_clean, overrides, names):
    result = invoke("status", **overrides)

    assert result.exit_code == 2
    assert result.stderr.startswith("configuration error: ")
    assert names in result.stderr


def test_unknown_service_or_no_rollout_exits_1_with_the_message(invoke, shop):
    unknown = invoke("status", "not-watched")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == "refused: service 'not-watched' is not in CANARY_SERVICES"

    none_yet = invoke("history", "shop")
    assert none_yet.exit_code == 1
    assert "shop has no rollout yet" in none_yet.stderr


def test_cloud_run_fault_exits_3_and_changes_nothing(invoke, started, store):
    started.inject_fault(503, count=100)

    result = invoke("rollback", "shop", "--reason", "cloud run is down")

    assert result.exit_code == 3
    assert "control-plane failure: Cloud Run API: get" in result.stderr
    assert "failed 5 times" in result.stderr and "503" in result.stderr
    assert store.get(ROLLOUT).phase is Phase.RUNNING
    assert live(started) == {"shop-00001": 95, "shop-00002": 5}  # read without the HTTP API


def test_cloud_run_fault_during_start_registers_nothing(invoke, shop, store):
    shop.inject_fault(503, count=100)

    result = invoke("start", "shop", "--revision", "shop-00002", "--percent", "5")

    assert result.exit_code == 3
    assert store.active(SHOP) is None


# --- the real entry point ------------------------------------------------------------------


def _subprocess_env(env: dict[str, str | None]) -> dict[str, str]:
    merged = dict(os.environ)
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def test_python_m_entry_point_as_a_subprocess(env, started):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            cwd=REPO,
            env=_subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = cli("--json", "status", "shop")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["health"], data["rollout"], data["canary_percent"]) == ("HEALTHY", ROLLOUT, 5)

    refused = cli("pause", "nope")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "not in CANARY_SERVICES" in refused.stderr


def test_help_imports_no_google_client():
    """`--help` must stay fast: the Google clients (and shared/) load only when a subcommand runs.
    (The bare `google` / `google.cloud` namespace packages are pre-imported by a .pth file.)"""
    probe = (
        "import sys; from click.testing import CliRunner; from infra.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = ('grpc', 'google.api_core', 'google.protobuf', 'google.cloud.', 'pydantic', 'shared'); "
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# --- bugs found below the CLI (shared/), pinned until fixed --------------------------------


def test_ambiguous_short_name_is_refused_with_the_message(env, started):
    _fresh_runtime()
    result = CliRunner().invoke(main, ["status", "api"], env=env)
    _fresh_runtime()
    assert result.exit_code == 1
    assert "ambiguous" in result.stderr


def test_second_start_of_the_running_canary_is_refused(invoke, started, store):
    result = invoke("start", "shop", "--revision", "shop-00002", "--percent", "50")

    assert live(started) == {"shop-00001": 95, "shop-00002": 5}
    assert result.exit_code == 1


def test_failed_traffic_write_on_start_leaves_no_rollout_behind(invoke, shop, store):
    typo = invoke("start", "shop", "--revision", "shop-0002", "--percent", "5")
    assert typo.exit_code == 3  # Cloud Run: 400, the service has no such revision

    fixed = invoke("start", "shop", "--revision", "shop-00002", "--percent", "5")
    assert fixed.exit_code == 0, fixed.stderr
