"""terraform/ offline, deploy (tests/tf_checks_deploy.py): the functions' contract (entry points
in functions/main.py, environment, load_test's limits, the policy file beside the code), the
source archive and bucket, expiry of markers and decisions, the first apply's waits, provider pins,
the documented variables and outputs, and the on-call commands; each link also cut in a copy of
terraform/ to show the check reports it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.clients.store import EXPIRES_AT, MARKER_TTL
from shared.config import ENV_BY_FUNCTION, ENV_DEFAULTS
from tests import terraform_checks as tc
from tests.tf_fixtures import (
    EXPECTED_ENTRY_POINTS,
    FIRST_APPLY_WAIT_S,
    FUNCTIONS,
    MAIN_PY,
    PENDING_ENTRY_POINTS,
    ROOT,
    TF_DIR,
    TTL_GROUPS,
    VALIDATED_VARIABLES,
    assert_cut_is_reported,
    function_entry,
    main_py_functions,
    res,
)

# The shared fixtures, imported as themselves so pytest finds them here.
from tests.tf_fixtures import policy as policy
from tests.tf_fixtures import tf as tf

# --- The real tree is clean ---------------------------------------------------------------


@pytest.mark.parametrize("entry", EXPECTED_ENTRY_POINTS)
def test_entry_point_is_defined_in_functions_main_py(tf, entry):
    assert MAIN_PY.is_file(), "functions/main.py is missing"
    defined = main_py_functions()
    deployed = tc.function_by_entry(tf)
    assert entry in deployed, f"terraform deploys no function with entry point {entry}"
    if entry not in defined and entry in PENDING_ENTRY_POINTS:
        pytest.skip(f"PENDING: functions/main.py does not define {entry} yet (see PENDING_ENTRY_POINTS)")
    assert entry in defined, f"functions/main.py has no top-level function {entry}"


def test_every_deployed_entry_point_exists(tf):
    # Nothing is deployed that main.py lacks (pending names excepted, see above).
    defined = main_py_functions()
    problems = tc.check_entry_points(tf, defined | (PENDING_ENTRY_POINTS - defined), EXPECTED_ENTRY_POINTS)
    assert problems == []


def test_environment_matches_the_functions_contract(tf):
    assert tc.check_environment(tf, ENV_DEFAULTS, ENV_BY_FUNCTION) == []


def test_markers_and_decisions_expire_and_outlive_every_redelivery(tf):
    assert tc.check_expiry(tf, TTL_GROUPS, EXPIRES_AT, MARKER_TTL.total_seconds()) == []


def test_load_test_limits_are_its_service_config(tf):
    assert tc.check_load_test_limits(tf) == []


def test_policy_file_is_found_beside_the_code_not_by_a_deploy_path(tf):
    # The default CANARY_POLICY_FILE is shared/policy.yaml next to shared/policy.py, which the
    # archive keeps together; Terraform must not pin a runtime-specific absolute path.
    assert Path(ENV_DEFAULTS["CANARY_POLICY_FILE"]).relative_to(ROOT).as_posix() == "shared/policy.yaml"
    for name, fn in tc.functions(tf).items():
        assert "CANARY_POLICY_FILE" not in tc.env_of(fn), name


def test_source_archive_layout(tf):
    assert tc.check_source_archive(tf) == []


def test_functions_wait_for_the_service_agents_after_the_apis(tf):
    assert tc.check_first_apply_waits(tf, FIRST_APPLY_WAIT_S) == []


def test_durations_are_read_as_terraform_writes_them():
    assert tc.duration_s("120s") == 120
    assert tc.duration_s("2m30s") == 150
    assert tc.duration_s("1h") == 3600
    assert tc.duration_s("120") is None
    assert tc.duration_s("${var.wait}") is None


def test_variables_and_outputs_are_documented_and_validated(tf):
    assert tc.check_variables_documented(tf, VALIDATED_VARIABLES) == []
    commands = tf.outputs["emergency_rollback_commands"]["value"]
    for needle in (
        "curl",
        "gcloud auth print-identity-token",
        "gcloud pubsub topics publish",
    ):
        assert needle in commands
    assert "gcloud functions call" not in commands  # needs a permission the on-call lacks
    assert "emergency_rollback" in str(tf.outputs["emergency_rollback_url"]["value"])


def test_tfvars_example_sets_every_required_variable(tf):
    example = (TF_DIR / "terraform.tfvars.example").read_text()
    required = [name for name, body in tf.variables.items() if "default" not in body]
    for name in required:
        assert re.search(rf"^{name}\s*=", example, re.M), f"terraform.tfvars.example lacks {name}"


def test_one_function_resource_and_one_entry_per_function(tf):
    assert list(tf.of_type("google_cloudfunctions2_function")) == ["function"]
    assert set(tf.locals["functions"]) == set(EXPECTED_ENTRY_POINTS)
    assert {fn: tc.entry_point(body) for fn, body in tc.functions(tf).items()} == {
        entry: entry for entry in EXPECTED_ENTRY_POINTS
    }


def test_the_source_bucket_deletes_only_noncurrent_versions(tf):
    assert tc.check_source_lifecycle(tf) == []


def test_providers_are_pinned_to_what_the_configuration_needs(tf):
    assert tc.check_provider_pins(tf) == []


def test_the_on_call_commands_need_only_the_invoker_role(tf):
    assert tc.check_oncall_commands(tf) == []


# --- Cut one link: the check reports it ------------------------------------------------------


# (file, block, old, new, check that must report it, words of the report)
CUTS = [
    pytest.param(
        "functions.tf",
        function_entry("breach_counter"),
        "        ROLLBACK_TOPIC          = google_pubsub_topic.rollback.name\n",
        "",
        "environment",
        "ROLLBACK_TOPIC is read but not set",
        id="breach-counter-without-rollback-topic",
    ),
    pytest.param(
        "functions.tf",
        function_entry("checkpoint"),
        'entry_point = "checkpoint"',
        'entry_point = "check_point"',
        "entry_points",
        "'check_point' is not a top-level function",
        id="entry-point-typo",
    ),
    pytest.param(
        "functions.tf",
        function_entry("load_test"),
        "FUNCTION_TIMEOUT_S      = local.load_test_timeout_s",
        "FUNCTION_TIMEOUT_S      = 300",
        "load_test_limits",
        "FUNCTION_TIMEOUT_S",
        id="load-test-timeout-mismatch",
    ),
    pytest.param(
        "functions.tf",
        function_entry("rollback"),
        "        CANARY_SERVICES         = local.canary_services\n",
        "        CANARY_SERVICES         = local.canary_services\n"
        '        CLOUD_RUN_API_ENDPOINT  = "http://127.0.0.1:8090"\n',
        "environment",
        "CLOUD_RUN_API_ENDPOINT is for the local stand-ins only",
        id="local-stand-in-endpoint-set",
    ),
    # Review fixes: each reverted is reported.
    pytest.param(
        "versions.tf",
        None,
        'version = ">= 6.9, < 8.0"',
        'version = ">= 6.0"',
        "provider_pins",
        "provider google: version '>= 6.0' admits versions before 6.9",
        id="google-provider-floor-too-low",
    ),
    pytest.param(
        "versions.tf",
        None,
        'version = ">= 6.9, < 8.0"',
        'version = ">= 6.9"',
        "provider_pins",
        "provider google: version '>= 6.9' is not bounded below and above",
        id="google-provider-without-upper-bound",
    ),
    pytest.param(
        "source.tf",
        None,
        '      with_state                 = "ARCHIVED"\n      days_since_noncurrent_time = 30\n',
        "      age = 30\n",
        "source_lifecycle",
        "a lifecycle rule applies to live objects",
        id="source-bucket-deletes-the-live-source",
    ),
    pytest.param(
        "outputs.tf",
        None,
        "    # Or queue a rollback request",
        "    gcloud functions call ${var.prefix}-emergency-rollback --data='{}'\n"
        "    # Or queue a rollback request",
        "oncall_commands",
        "prints gcloud functions call",
        id="on-call-told-to-run-what-it-may-not",
    ),
    # State expires (firestore.tf): markers outlive every redelivery, decisions their retention.
    pytest.param(
        "firestore.tf",
        None,
        '["applied_events", "canary_rollback_messages", "decisions",',
        '["applied_events", "decisions",',
        "expiry",
        "collection group canary_rollback_messages: 0 TTL fields on expires_at",
        id="rollback-markers-never-expire",
    ),
    pytest.param(
        "firestore.tf",
        None,
        "  ttl_config {}\n",
        "",
        "expiry",
        "no ttl_config block, nothing would expire",
        id="ttl-field-without-ttl-config",
    ),
    pytest.param(
        "delivery.tf",
        None,
        'message_retention_duration = "604800s"',
        'message_retention_duration = "2678400s"',
        "expiry",
        "keeps messages 2678400s, not less than a dedupe marker lives",
        id="subscription-outlives-the-markers",
    ),
    pytest.param(
        "functions.tf",
        function_entry("checkpoint"),
        "        DECISION_RETENTION_DAYS = var.decision_retention_days\n",
        "",
        "environment",
        "function checkpoint: DECISION_RETENTION_DAYS is read but not set",
        id="checkpoint-keeps-decisions-for-ever",
    ),
    pytest.param(
        "source.tf",
        None,
        '    filename = "main.py"',
        '    filename = "functions/main.py"',
        "source_archive",
        "the archive's main.py is not functions/main.py",
        id="main-py-not-at-archive-root",
    ),
    pytest.param(
        "functions.tf",
        function_entry("notify"),
        "chat_webhook = true",
        "chat_webhook = false",
        "environment",
        "function notify: CHAT_WEBHOOK_URL is read but no secret_environment_variables provides it",
        id="chat-webhook-secret-dropped",
    ),
    pytest.param(
        "functions.tf",
        function_entry("breach_counter"),
        "chat_webhook = false",
        "chat_webhook = true",
        "environment",
        "function breach_counter: sets CHAT_WEBHOOK_URL, which breach_counter does not read",
        id="chat-webhook-secret-for-a-function-that-does-not-read-it",
    ),
    pytest.param(
        "functions.tf",
        FUNCTIONS,
        "entry_point     = each.value.entry_point",
        'entry_point     = "rollback"',
        "entry_points",
        "no function deployed for entry point(s) "
        "['breach_counter', 'checkpoint', 'checkpoint_worker', 'emergency_rollback', 'load_test', 'notify']",
        id="every-function-built-with-one-entry-point",
    ),
    # The first apply: the functions wait for the service agents (main.tf, versions.tf).
    pytest.param(
        "functions.tf",
        FUNCTIONS,
        "    time_sleep.propagation,\n",
        "",
        "first_apply_waits",
        "function breach_counter does not wait for time_sleep.propagation",
        id="functions-do-not-wait-after-the-apis",
    ),
    pytest.param(
        "main.tf",
        res("time_sleep", "propagation"),
        'create_duration = "120s"',
        'create_duration = "10s"',
        "first_apply_waits",
        "time_sleep.propagation waits '10s' after the APIs, less than 120s",
        id="wait-too-short-for-the-build-grants",
    ),
    pytest.param(
        "main.tf",
        res("time_sleep", "propagation"),
        "    google_project_service.apis,\n",
        "",
        "first_apply_waits",
        "no time_sleep waits after google_project_service.apis",
        id="wait-not-after-the-apis",
    ),
    pytest.param(
        "versions.tf",
        None,
        '    time = {\n      source  = "hashicorp/time"\n      version = ">= 0.9, < 1.0"\n    }\n',
        "",
        "first_apply_waits",
        "versions.tf does not require the time provider from hashicorp/time",
        id="time-provider-not-required",
    ),
]


@pytest.mark.parametrize(("filename", "block", "old", "new", "check", "expected"), CUTS)
def test_cutting_a_link_is_reported(tmp_path, policy, filename, block, old, new, check, expected):
    assert_cut_is_reported(tmp_path, policy, filename, block, old, new, check, expected)
