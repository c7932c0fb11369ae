"""The policy file (shared/policy.py + shared/policy.yaml) and the environment contract
(shared/config.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from shared.config import (
    ENV_BY_FUNCTION,
    ENV_DEFAULTS,
    ConfigError,
    ServiceRef,
    Settings,
    load_settings,
)
from shared.policy import (
    DEFAULT_POLICY_FILE,
    RULE_NAMES,
    Policy,
    PolicyError,
    cached_policy,
    load_policy,
)

RAW: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())


# --------------------------------------------------------------------------- the bundled policy


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def test_rollback_rules_are_the_checklist_defaults(policy):
    rules = policy.rollback_rules
    assert list(rules) == list(RULE_NAMES)
    assert (rules["error_rate"].threshold, rules["error_rate"].consecutive) == (0.01, 3)  # > 1 % on 3
    assert (rules["latency_p95"].threshold, rules["latency_p95"].consecutive) == (500, 3)  # > 500 ms on 3
    assert (rules["memory"].threshold, rules["memory"].consecutive) == (0.85, 2)  # > 85 % on 2
    assert rules["canary_down"].consecutive == 1  # down on 1
    assert all(rule.description for rule in rules.values())


def test_go_bars_are_the_checklist_defaults(policy):
    bars = policy.go_bars
    assert (bars.error_rate, bars.latency_p95, bars.memory, bars.cpu) == (0.005, 200, 0.85, 0.80)
    assert bars.min_requests > 0


def test_ramp_is_5_10_25_50_100_with_an_hour_at_5(policy):
    assert [step.percent for step in policy.ramp] == [5, 10, 25, 50, 100]
    assert policy.ramp[0].soak_minutes == 60
    assert all(step.soak_minutes >= 60 * 24 for step in policy.ramp[1:4])  # "days" at 10/25/50 %


def test_load_test_runs_daily_at_03_utc(policy):
    assert policy.load_test.schedule == "0 3 * * *"
    assert policy.load_test.time_zone == "Etc/UTC"


def test_rate_limit_probe_is_10_per_side_500_ms_above_95_percent(policy):
    probe = policy.rate_limit_probe
    assert (probe.requests_per_side, probe.delay_ms, probe.min_success_rate) == (10, 500, 0.95)


def test_alerting_and_checkpoint_are_consistent(policy):
    assert policy.alerting.alignment_period_s % 60 == 0
    assert policy.alerting.duration_s % 60 == 0
    assert policy.alerting.uptime_check.path.startswith("/")
    assert policy.checkpoint.time_zone == "Etc/UTC"


def test_policy_is_frozen(policy):
    with pytest.raises(pydantic.ValidationError):
        policy.go_bars.error_rate = 0.5  # type: ignore[misc]


def test_cached_policy_loads_once_per_path():
    first = cached_policy(str(DEFAULT_POLICY_FILE))
    assert cached_policy(str(DEFAULT_POLICY_FILE)) is first
    assert first == load_policy()


# --------------------------------------------------------------------------- invalid policies


def write_policy(tmp_path: Path, raw: Any) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


DELETE = object()


def mutated(**paths: Any) -> dict[str, Any]:
    """The bundled policy with `__`-separated paths (go_bars__cpu=...) set; DELETE removes the key."""
    raw = copy.deepcopy(RAW)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return raw


def refused(tmp_path: Path, raw: Any) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(write_policy(tmp_path, raw))
    return str(info.value)


def test_a_written_copy_of_the_bundled_policy_loads(tmp_path):
    assert load_policy(write_policy(tmp_path, RAW)) == load_policy()


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_a_missing_rule_is_refused(tmp_path, rule):
    message = refused(tmp_path, mutated(**{f"rollback_rules__{rule}": DELETE}))
    assert f"rollback_rules is missing ['{rule}']" in message


def test_an_unknown_rule_is_refused(tmp_path):
    raw = mutated(rollback_rules__cpu={"description": "x", "threshold": 0.9, "consecutive": 2})
    assert "rollback_rules.cpu" in refused(tmp_path, raw)


@pytest.mark.parametrize(("rule", "value"), [("error_rate", 0.02), ("latency_p95", 600), ("memory", 0.9)])
def test_a_go_bar_looser_than_its_rollback_bar_is_refused(tmp_path, rule, value):
    message = refused(tmp_path, mutated(**{f"go_bars__{rule}": value}))
    assert f"go_bars.{rule} is looser than rollback_rules.{rule}.threshold" in message


def test_a_go_bar_equal_to_its_rollback_bar_is_allowed(tmp_path):
    raw = mutated(go_bars__error_rate=0.01, go_bars__latency_p95=500)
    assert load_policy(write_policy(tmp_path, raw)).go_bars.error_rate == 0.01


def test_a_rollback_bar_tightened_below_the_go_bar_is_refused(tmp_path):
    message = refused(tmp_path, mutated(rollback_rules__latency_p95__threshold=150))
    assert "go_bars.latency_p95 is looser than rollback_rules.latency_p95.threshold" in message


@pytest.mark.parametrize("percents", [[5, 25, 10, 100], [5, 5, 100], [100, 50, 100], [10, 5, 100]], ids=str)
def test_a_ramp_that_does_not_strictly_increase_is_refused(tmp_path, percents):
    raw = mutated(ramp=[{"percent": p, "soak_minutes": 60} for p in percents])
    assert f"ramp percents must strictly increase, got {percents}" in refused(tmp_path, raw)


@pytest.mark.parametrize("percents", [[5, 10, 50], [5]], ids=str)
def test_a_ramp_that_does_not_end_at_100_is_refused(tmp_path, percents):
    raw = mutated(ramp=[{"percent": p, "soak_minutes": 60} for p in percents])
    assert f"the last ramp step must be 100 percent, got {percents[-1]}" in refused(tmp_path, raw)


def test_a_single_100_percent_step_is_allowed(tmp_path):
    raw = mutated(ramp=[{"percent": 100, "soak_minutes": 0}])
    assert [s.percent for s in load_policy(write_policy(tmp_path, raw)).ramp] == [100]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"surprise": 1}, "surprise"),
        ({"go_bars__p99": 300}, "go_bars.p99"),
        ({"rollback_rules__memory__window": 5}, "rollback_rules.memory.window"),
        ({"ramp": [{"percent": 100, "soak_minutes": 0, "pause": True}]}, "ramp.0.pause"),
    ],
    ids=["top-level", "go_bars", "rule", "ramp-step"],
)
def test_an_unknown_key_is_refused_by_name(tmp_path, change, field):
    message = refused(tmp_path, mutated(**change))
    assert field in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": 2}, "version"),
        ({"go_bars": DELETE}, "go_bars"),
        ({"ramp": []}, "ramp"),
        (
            {"ramp": [{"percent": 0, "soak_minutes": 0}, {"percent": 100, "soak_minutes": 0}]},
            "ramp.0.percent",
        ),
        ({"rollback_rules__error_rate__consecutive": 0}, "rollback_rules.error_rate.consecutive"),
        ({"rollback_rules__memory__threshold": -1}, "rollback_rules.memory.threshold"),
        ({"rollback_rules__memory__threshold": "high"}, "rollback_rules.memory.threshold"),
        ({"go_bars__cpu": 1.5}, "go_bars.cpu"),
        ({"alerting__duration_s": 90}, "alerting.duration_s"),
        ({"alerting__uptime_check__period_s": 120}, "alerting.uptime_check.period_s"),
        ({"alerting__uptime_check__path": "health"}, "alerting.uptime_check.path"),
        ({"load_test__mode": "burst"}, "load_test.mode"),
        ({"rate_limit_probe__min_success_rate": 95}, "rate_limit_probe.min_success_rate"),
        ({"checkpoint__data_lag_minutes": DELETE}, "checkpoint.data_lag_minutes"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_an_invalid_field_is_refused_by_name(tmp_path, change, field):
    message = refused(tmp_path, mutated(**change))
    assert f"{tmp_path / 'policy.yaml'} is invalid" in message
    assert field in message


def test_not_yaml_is_refused(tmp_path):
    message = refused(tmp_path, "version: 1\nrollback_rules: [unclosed\n")
    assert "is not valid YAML" in message


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "42\n"], ids=["empty", "list", "scalar"])
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path, text):
    assert "is invalid" in refused(tmp_path, text)


def test_a_missing_policy_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match=r"cannot read policy file .*nope\.yaml"):
        load_policy(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- load_settings

SHOP = "projects/demo-project/locations/europe-west1/services/shop"
API_US = "projects/demo-project/locations/us-central1/services/api"
API_EU = "projects/other-project/locations/europe-west1/services/api"
ENV = {"GOOGLE_CLOUD_PROJECT": "demo-project", "CANARY_SERVICES": f"{SHOP},{API_US},{API_EU}"}


def settings_with(**changes: str | None) -> Settings:
    env = {**ENV, **changes}
    return load_settings({k: v for k, v in env.items() if v is not None})


def test_defaults():
    s = settings_with()
    assert s.project == "demo-project"
    assert [ref.name for ref in s.services] == [SHOP, API_US, API_EU]
    assert s.rollback_topic == "canary-rollback-requests"
    assert s.policy_file == DEFAULT_POLICY_FILE
    assert s.cloud_run_endpoint is None
    assert s.monitoring_endpoint is None
    assert s.chat_webhook_url is None
    assert s.function_timeout_s == 540.0
    assert s.function_memory_mb == 512


def test_every_variable_is_read(tmp_path):
    policy_file = write_policy(tmp_path, RAW)
    s = settings_with(
        ROLLBACK_TOPIC="my-topic",
        CANARY_POLICY_FILE=str(policy_file),
        CLOUD_RUN_API_ENDPOINT="http://127.0.0.1:9001",
        MONITORING_API_ENDPOINT="127.0.0.1:9002",
        CHAT_WEBHOOK_URL="https://chat.example.com/hook",
        FUNCTION_TIMEOUT_S="60.5",
        FUNCTION_MEMORY_MB="1024",
    )
    assert s.rollback_topic == "my-topic"
    assert s.policy_file == policy_file
    assert s.cloud_run_endpoint == "http://127.0.0.1:9001"
    assert s.monitoring_endpoint == "127.0.0.1:9002"
    assert s.chat_webhook_url == "https://chat.example.com/hook"
    assert s.function_timeout_s == 60.5
    assert s.function_memory_mb == 1024


def test_blank_optional_variables_take_their_defaults():
    s = settings_with(ROLLBACK_TOPIC="  ", CLOUD_RUN_API_ENDPOINT="", FUNCTION_TIMEOUT_S=" ")
    assert s.rollback_topic == "canary-rollback-requests"
    assert s.cloud_run_endpoint is None
    assert s.function_timeout_s == 540.0


def test_load_settings_reads_the_process_environment(monkeypatch):
    for name in ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    monkeypatch.setenv("CANARY_SERVICES", SHOP)
    s = load_settings()
    assert s.project == "env-project"
    assert s.services == (ServiceRef("demo-project", "europe-west1", "shop"),)


@pytest.mark.parametrize("name", ["GOOGLE_CLOUD_PROJECT", "CANARY_SERVICES"])
@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_a_required_variable_missing_is_named(name, value):
    with pytest.raises(ConfigError, match=f"^environment variable {name} is required but not set$"):
        settings_with(**{name: value})


@pytest.mark.parametrize(
    "entry",
    [
        "shop",
        "projects/demo-project/services/shop",
        "projects/Demo_Project/locations/europe-west1/services/shop",
        "projects/demo-project/locations/europe-west1/services/shop/revisions/shop-00001",
        "https://shop-abc-ew.a.run.app",
    ],
)
def test_a_malformed_canary_services_entry_is_named(entry):
    with pytest.raises(ConfigError) as info:
        settings_with(CANARY_SERVICES=f"{SHOP},{entry}")
    message = str(info.value)
    assert message.startswith("environment variable CANARY_SERVICES: ")
    assert repr(entry) in message
    assert "projects/P/locations/L/services/S" in message


def test_canary_services_tolerates_spaces_empty_items_and_duplicates():
    s = settings_with(CANARY_SERVICES=f" {SHOP} ,, {API_US},{SHOP},")
    assert [ref.name for ref in s.services] == [SHOP, API_US]


def test_canary_services_with_only_separators_lists_no_service():
    with pytest.raises(ConfigError, match="CANARY_SERVICES lists no service"):
        settings_with(CANARY_SERVICES=" , ,")


def test_a_missing_policy_file_is_named(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^environment variable CANARY_POLICY_FILE=.*missing\.yaml: no such file$"
    ):
        settings_with(CANARY_POLICY_FILE=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="CANARY_POLICY_FILE"):
        settings_with(CANARY_POLICY_FILE=str(tmp_path))  # a directory


@pytest.mark.parametrize("name", ["FUNCTION_TIMEOUT_S", "FUNCTION_MEMORY_MB"])
@pytest.mark.parametrize(
    ("value", "problem"), [("abc", "is not a number"), ("0", "must be positive"), ("-5", "must be positive")]
)
def test_a_bad_number_is_named(name, value, problem):
    with pytest.raises(ConfigError, match=f"^environment variable {name}='{value}' {problem}$"):
        settings_with(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FUNCTION_TIMEOUT_S", "nan"),
        ("FUNCTION_TIMEOUT_S", "inf"),
        ("FUNCTION_MEMORY_MB", "nan"),
        ("FUNCTION_MEMORY_MB", "inf"),
        ("FUNCTION_MEMORY_MB", "0.5"),
    ],
)
def test_a_non_finite_or_truncated_number_is_refused_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        settings_with(**{name: value})


@pytest.mark.parametrize(("raw", "days"), [(None, 0), ("0", 0), ("400", 400)])
def test_decision_retention_is_whole_days_and_0_keeps_for_ever(raw, days):
    assert settings_with(DECISION_RETENTION_DAYS=raw).decision_retention_days == days


@pytest.mark.parametrize("raw", ["-1", "1.5", "a year", "999999"])
def test_a_malformed_decision_retention_is_refused(raw):
    with pytest.raises(ConfigError, match="DECISION_RETENTION_DAYS"):
        settings_with(DECISION_RETENTION_DAYS=raw)


def test_the_environment_contract():
    assert ENV_DEFAULTS["GOOGLE_CLOUD_PROJECT"] is None
    assert ENV_DEFAULTS["CANARY_SERVICES"] is None
    assert ENV_DEFAULTS["ROLLBACK_TOPIC"] == "canary-rollback-requests"
    assert ENV_DEFAULTS["CANARY_POLICY_FILE"] == str(DEFAULT_POLICY_FILE)
    assert {"CLOUD_RUN_API_ENDPOINT", "MONITORING_API_ENDPOINT"} <= set(ENV_DEFAULTS)
    assert {"breach_counter", "rollback", "emergency_rollback"} <= set(ENV_BY_FUNCTION)
    for function, names in ENV_BY_FUNCTION.items():
        assert set(names) <= set(ENV_DEFAULTS), function
        assert {"GOOGLE_CLOUD_PROJECT", "CANARY_SERVICES", "CANARY_POLICY_FILE"} <= set(names), function
    assert "ROLLBACK_TOPIC" in ENV_BY_FUNCTION["breach_counter"]


# --------------------------------------------------------------------------- services


def test_service_ref_parse_and_name():
    ref = ServiceRef.parse(f"  {SHOP}\n")
    assert ref == ServiceRef("demo-project", "europe-west1", "shop")
    assert ref.name == SHOP
    with pytest.raises(ValueError, match="is not a service name like projects/P/locations/L/services/S"):
        ServiceRef.parse("projects/p/locations/l/services/")


def test_resolve_a_full_name():
    s = settings_with()
    assert s.resolve_service(API_EU) == ServiceRef("other-project", "europe-west1", "api")
    assert s.resolve_service(f" {SHOP} ") == ServiceRef("demo-project", "europe-west1", "shop")


def test_resolve_an_unambiguous_short_name():
    assert settings_with().resolve_service("shop") == ServiceRef("demo-project", "europe-west1", "shop")
    assert settings_with().resolve_service("  shop ").name == SHOP


def test_resolve_an_ambiguous_short_name_is_a_value_error_listing_the_candidates():
    with pytest.raises(ValueError, match="ambiguous") as info:
        settings_with().resolve_service("api")
    assert not isinstance(info.value, LookupError)
    assert API_US in str(info.value) and API_EU in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "checkout",
        "projects/demo-project/locations/europe-west1/services/checkout",
        "projects/demo-project/locations/us-central1/services/shop",  # right name, wrong location
        "projects/other-project/locations/europe-west1/services/shop",  # right name, wrong project
        "Shop",
    ],
)
def test_resolve_an_unwatched_service_is_a_lookup_error(name):
    with pytest.raises(LookupError, match="is not in CANARY_SERVICES"):
        settings_with().resolve_service(name)


def test_resolve_a_malformed_full_name_is_a_value_error():
    with pytest.raises(ValueError, match="is not a service name"):
        settings_with().resolve_service("projects/demo-project/services/shop")


def test_the_alert_conditions_are_the_three_metric_rules(policy):
    conditions = policy.alerting.metric_conditions
    assert set(conditions) == {"error_rate", "latency_p95", "memory"}
    assert conditions["error_rate"].denominator_filter  # a ratio: 5xx / all
    assert not conditions["latency_p95"].denominator_filter


def test_an_alert_condition_for_canary_down_is_refused(tmp_path):
    memory = RAW["alerting"]["metric_conditions"]["memory"]
    raw = mutated(alerting__metric_conditions__canary_down=memory)
    assert "canary_down is observed by the uptime check" in refused(tmp_path, raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("filter", 'resource.type = "cloud_run_revision"'),  # must start with the metric type
        ("per_series_aligner", "RATE"),
        ("cross_series_reducer", "SUM"),
    ],
)
def test_a_malformed_alert_condition_is_refused(tmp_path, field, value):
    raw = mutated(**{f"alerting__metric_conditions__memory__{field}": value})
    assert f"alerting.metric_conditions.memory.{field}" in refused(tmp_path, raw)
