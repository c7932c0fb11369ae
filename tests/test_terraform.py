"""Offline checks of terraform/: the wiring, the policy-file thresholds, the functions'
contract, least-privilege IAM, formatting, and (where the provider exists) validate/checkov.

The google provider cannot be downloaded here, so the wiring is proven on the parsed HCL
(tests/terraform_checks.py). Each link is also CUT in a copy of terraform/ to show that the
check would catch it: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.clients.store import (
    APPLIED,
    CHECKPOINT_LEASES,
    DECISIONS,
    EXPIRES_AT,
    MARKER_TTL,
    NOTIFICATIONS,
    ROLLBACK_MESSAGES,
)
from shared.config import ENV_BY_FUNCTION, ENV_DEFAULTS
from shared.events import REVISION_LABELS
from shared.handlers.loadtest import BODY_KEYS as LOAD_TEST_BODY_KEYS
from shared.policy import RULE_NAMES, load_policy

try:
    from tests import terraform_checks as tc
except ImportError:  # tests/ run as plain directory (no package)
    import terraform_checks as tc  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
TF_DIR = ROOT / "terraform"
MAIN_PY = ROOT / "functions" / "main.py"
POLICY_FILE = ROOT / "shared" / "policy.yaml"
DASHBOARD = ROOT / "infra" / "dashboard.json"

# The functions' contract (the issue and shared/config.py): what Terraform must deploy.
EXPECTED_ENTRY_POINTS = (
    "breach_counter",
    "rollback",
    "emergency_rollback",
    "checkpoint",
    "load_test",
    "notify",
    "checkpoint_worker",
)
# job -> entry point: the checkpoint, and one load test per watched service (tc.CHECK_SERVICES).
SCHEDULER_JOBS = {"checkpoint": "checkpoint"} | {
    f"load_test_{name}": "load_test" for name in tc.CHECK_SERVICES
}
# The body keys each scheduled function's handler takes (shared/handlers/checkpoint.py handle_checkpoint,
# shared/handlers/loadtest.py handle_load_test); any other key is answered 400.
SCHEDULER_BODY_KEYS = {"checkpoint": ("service",), "load_test": LOAD_TEST_BODY_KEYS}

# Least privilege, written out: every role canary-guard grants anywhere, and the few that
# exist only at project level (Firestore and Cloud Monitoring have no finer grant).
ALLOWED_ROLES = {
    "roles/datastore.user",
    "roles/monitoring.viewer",
    "roles/monitoring.metricWriter",
    "roles/run.invoker",
    # Custom roles (iam.tf local.custom_roles) of the permissions in CODE_PERMISSIONS only.
    "custom/service_reader",
    "custom/traffic_updater",
    "custom/operation_reader",
    "roles/iam.serviceAccountUser",
    "roles/pubsub.publisher",
    "roles/secretmanager.secretAccessor",
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
    "roles/storage.objectViewer",
    # To the Pub/Sub service agent on the two push subscriptions: forwarding a dead letter acks.
    "roles/pubsub.subscriber",
    # Opt-in, to the Pub/Sub service agent on the two push identities only (old projects).
    "roles/iam.serviceAccountTokenCreator",
}
# The build service account writes build logs and pushes images to the gcf-artifacts
# repository that Cloud Functions creates on the first deploy: no finer grant exists before.
BUILD_PROJECT_ROLES = ["roles/logging.logWriter", "roles/artifactregistry.writer"]
ALLOWED_PROJECT_ROLES = {
    "roles/datastore.user",
    "custom/operation_reader",  # Cloud Run operations are not children of a service
    "roles/monitoring.viewer",
    "roles/monitoring.metricWriter",
    *BUILD_PROJECT_ROLES,
}
# On the project only under a condition naming this (the bucket where Cloud Functions stages
# the source for the build, which exists only after the first deploy).
CONDITIONAL_PROJECT_ROLES = {"roles/storage.objectViewer": "projects/_/buckets/gcf-v2-sources-"}
EXPECTED_PROJECT_ROLES = {
    "breach_counter": ["roles/datastore.user", "roles/monitoring.viewer"],
    "rollback": ["roles/datastore.user", "custom/operation_reader"],
    "emergency_rollback": ["roles/datastore.user", "custom/operation_reader"],
    "checkpoint": [
        "roles/datastore.user",
        "roles/monitoring.viewer",
        "roles/monitoring.metricWriter",
        "custom/operation_reader",
    ],
    "load_test": ["roles/datastore.user", "roles/monitoring.metricWriter"],
    "notify": ["roles/datastore.user"],
    # Judges from its message's metrics, writes the dashboard's custom metrics, steps the ramp.
    "checkpoint_worker": [
        "roles/datastore.user",
        "roles/monitoring.viewer",
        "roles/monitoring.metricWriter",
        "custom/operation_reader",
    ],
}
EXPECTED_TARGET_SERVICE_ROLES = {
    "breach_counter": ["custom/service_reader"],
    "rollback": ["custom/traffic_updater"],
    "emergency_rollback": ["custom/traffic_updater"],
    "checkpoint": ["custom/traffic_updater"],
    "load_test": ["custom/service_reader", "roles/run.invoker"],
    "notify": [],
    "checkpoint_worker": ["custom/traffic_updater"],
}
# The Cloud Run permissions the code uses, and where (terraform/README.md lists the same).
CODE_PERMISSIONS = {
    "run.services.get": "shared/clients/cloudrun.py CloudRunTraffic.get / _fetch",
    "run.services.update": "shared/clients/cloudrun.py CloudRunTraffic.update_traffic (update_service)",
    "run.operations.get": "shared/clients/cloudrun.py CloudRunTraffic.update_traffic (operation.result)",
}
# How long the functions wait after the APIs are enabled: new IAM grants (the build identity's)
# and the service agents' own permissions take minutes to be in force.
FIRST_APPLY_WAIT_S = 120
# How long grants to the Monitoring notification agent wait after its first Pub/Sub channel.
MONITORING_AGENT_WAIT_S = 60

# Entry points announced in the functions' contract that functions/main.py does not define
# yet (other engineers are writing them). Their test below SKIPS, saying so, until main.py
# defines them; delete a name from this set once it does.
PENDING_ENTRY_POINTS: set[str] = set()

# The collection groups whose documents the code gives an expires_at (shared/clients/store.py).
TTL_GROUPS = (APPLIED, ROLLBACK_MESSAGES, DECISIONS, NOTIFICATIONS, CHECKPOINT_LEASES)

VALIDATED_VARIABLES = (
    "decision_retention_days",
    "project_id",
    "region",
    "services",
    "emergency_rollback_members",
    "chat_webhook_secret_id",
    "checkpoint_topic_name",
    "checkpoint_worker_max_instances",
)


def cloud_event_entry_points() -> set[str]:
    """The entry points functions/main.py declares as CloudEvent functions: Pub/Sub delivers them."""
    tree = ast.parse(MAIN_PY.read_text())
    return {
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
        and any(ast.unparse(d) == "functions_framework.cloud_event" for d in n.decorator_list)
    }


def main_py_functions() -> set[str]:
    """Top-level function definitions of functions/main.py."""
    tree = ast.parse(MAIN_PY.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.fixture(scope="module")
def tf() -> tc.Terraform:
    return tc.load(TF_DIR)


@pytest.fixture(scope="module")
def policy() -> dict:
    load_policy(POLICY_FILE)  # the file the functions load must validate too
    return yaml.safe_load(POLICY_FILE.read_text())


def _all_problems(t: tc.Terraform, policy: dict, *, defined: set[str] | None = None) -> dict[str, list[str]]:
    defined = defined if defined is not None else set(EXPECTED_ENTRY_POINTS)
    return {
        "alert_chain": tc.check_alert_chain(t),
        "alert_policies": tc.check_alert_policies(t, RULE_NAMES),
        "alert_group_by": tc.check_alert_group_by(t, REVISION_LABELS),
        "thresholds": tc.check_thresholds_from_policy(t, policy),
        "push_deliveries": tc.check_push_deliveries(t, cloud_event_entry_points()),
        "rollback_chain": tc.check_rollback_chain(t),
        "notification_chain": tc.check_notification_chain(t, ENV_BY_FUNCTION),
        "monitoring_publisher": tc.check_monitoring_can_publish(t),
        "monitoring_agent_first": tc.check_monitoring_agent_exists_first(t, MONITORING_AGENT_WAIT_S),
        "token_creator": tc.check_pubsub_agent_token_creator(t),
        "dead_letters": tc.check_dead_letters(t),
        "scheduler": tc.check_scheduler_jobs(t, SCHEDULER_JOBS),
        "scheduler_bodies": tc.check_scheduler_bodies(t, SCHEDULER_BODY_KEYS),
        "entry_points": tc.check_entry_points(t, defined, EXPECTED_ENTRY_POINTS),
        "environment": tc.check_environment(t, ENV_DEFAULTS, ENV_BY_FUNCTION),
        "load_test_limits": tc.check_load_test_limits(t),
        "provider_pins": tc.check_provider_pins(t),
        "source_lifecycle": tc.check_source_lifecycle(t),
        "oncall_commands": tc.check_oncall_commands(t),
        "expiry": tc.check_expiry(t, TTL_GROUPS, EXPIRES_AT, MARKER_TTL.total_seconds()),
        "source_archive": tc.check_source_archive(t),
        "public": tc.check_no_public_access(t),
        "roles": tc.check_roles(t, ALLOWED_ROLES, ALLOWED_PROJECT_ROLES, CONDITIONAL_PROJECT_ROLES),
        "custom_roles": tc.check_custom_roles(t, CODE_PERMISSIONS),
        "build_identity": tc.check_build_identity(t, BUILD_PROJECT_ROLES),
        "first_apply_waits": tc.check_first_apply_waits(t, FIRST_APPLY_WAIT_S),
        "identities": tc.check_function_identities(t),
        "emergency": tc.check_emergency_access(t),
        "variables": tc.check_variables_documented(t, VALIDATED_VARIABLES),
        "services": tc.check_services_guarded(t, tc.CHECK_SERVICES),
    }


# --- The real tree is clean ---------------------------------------------------------------


def test_alert_policy_to_channel_to_topic_to_breach_counter(tf):
    assert tc.check_alert_chain(tf) == []


def test_alert_policies_cover_every_rule_with_renotify_and_close(tf):
    assert tc.check_alert_policies(tf, RULE_NAMES) == []


def test_metric_alert_incidents_keep_the_labels_the_decoder_reads(tf):
    # A cross-series reducer aggregates away every resource label not grouped by: an incident
    # without service_name / location could not be mapped to its service in full.
    assert tc.check_alert_group_by(tf, REVISION_LABELS) == []


def test_thresholds_and_durations_come_from_the_policy_file(tf, policy):
    assert tc.check_thresholds_from_policy(tf, policy) == []


def test_cloud_event_functions_are_the_pubsub_ones():
    assert cloud_event_entry_points() == {"breach_counter", "rollback", "notify", "checkpoint_worker"}


def test_push_subscriptions_retry_and_invoke_only_their_function(tf):
    assert tc.check_push_deliveries(tf, cloud_event_entry_points()) == []


def test_notifications_reach_notify_from_every_function_that_decides(tf):
    assert tc.check_notification_chain(tf, ENV_BY_FUNCTION) == []


def test_rollback_topic_reaches_rollback(tf):
    assert tc.check_rollback_chain(tf) == []


def test_monitoring_agent_may_publish_to_the_alerts_topic(tf):
    assert tc.check_monitoring_can_publish(tf) == []


def test_monitoring_agent_grants_wait_for_its_notification_channel(tf):
    assert tc.check_monitoring_agent_exists_first(tf, MONITORING_AGENT_WAIT_S) == []


def test_old_projects_can_let_the_pubsub_agent_sign_trigger_pushes(tf):
    assert tc.check_pubsub_agent_token_creator(tf) == []


def test_push_subscriptions_dead_letter(tf):
    assert tc.check_dead_letters(tf) == []


def test_scheduler_jobs_call_their_function_with_an_oidc_invoker(tf):
    assert tc.check_scheduler_jobs(tf, SCHEDULER_JOBS) == []


def test_scheduler_bodies_are_accepted_by_their_function(tf):
    assert tc.check_scheduler_bodies(tf, SCHEDULER_BODY_KEYS) == []


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


def test_no_public_principals(tf):
    assert tc.check_no_public_access(tf) == []


def test_only_allowed_roles_and_never_project_wide_power(tf):
    assert tc.check_roles(tf, ALLOWED_ROLES, ALLOWED_PROJECT_ROLES, CONDITIONAL_PROJECT_ROLES) == []


def test_custom_roles_hold_only_what_the_code_uses(tf):
    assert tc.check_custom_roles(tf, CODE_PERMISSIONS) == []
    permissions = {p for r in tf.locals["custom_roles"].values() for p in r["permissions"]}
    assert permissions == set(CODE_PERMISSIONS)
    readme = (TF_DIR / "README.md").read_text()
    for permission in CODE_PERMISSIONS:
        assert f"`{permission}`" in readme


def test_per_function_roles_are_exactly_the_documented_ones(tf):
    assert tf.locals["function_project_roles"] == EXPECTED_PROJECT_ROLES
    assert tf.locals["function_target_service_roles"] == EXPECTED_TARGET_SERVICE_ROLES
    assert set(tf.locals["function_project_roles"]) == set(EXPECTED_ENTRY_POINTS)
    assert tf.locals["build_project_roles"] == BUILD_PROJECT_ROLES


def test_functions_wait_for_the_service_agents_after_the_apis(tf):
    assert tc.check_first_apply_waits(tf, FIRST_APPLY_WAIT_S) == []


def test_durations_are_read_as_terraform_writes_them():
    assert tc.duration_s("120s") == 120
    assert tc.duration_s("2m30s") == 150
    assert tc.duration_s("1h") == 3600
    assert tc.duration_s("120") is None
    assert tc.duration_s("${var.wait}") is None


def test_functions_are_built_by_their_own_build_service_account(tf):
    # Since July 2024 a new project's default Cloud Build account may lack what a build needs.
    assert tc.check_build_identity(tf, BUILD_PROJECT_ROLES) == []


def test_one_identity_per_function(tf):
    assert tc.check_function_identities(tf) == []


def test_emergency_rollback_is_callable_only_by_the_listed_members(tf):
    assert tc.check_emergency_access(tf) == []


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


def test_dashboard_shows_canary_vs_stable(tf):
    dashboard = tc.render_dashboard(tf)  # as terraform renders it for tc.CHECK_SERVICES
    tiles = dashboard["mosaicLayout"]["tiles"]
    filters = [s for s in tc.strings(tiles) if "metric.type=" in s]
    for metric in (
        "run.googleapis.com/request_count",
        "run.googleapis.com/request_latencies",
        "run.googleapis.com/container/memory/utilizations",
        "run.googleapis.com/container/cpu/utilizations",
        "custom.googleapis.com/canary_guard/breaches",
        "custom.googleapis.com/canary_guard/rollbacks",
        "custom.googleapis.com/canary_guard/load_test/",
    ):
        assert any(metric in f for f in filters), f"the dashboard has no chart of {metric}"
    for tile in tiles:
        assert tile["xPos"] + tile["width"] <= dashboard["mosaicLayout"]["columns"]
    # Every template variable the file uses is passed by google_monitoring_dashboard.
    placeholders = set(re.findall(r"\$\{([a-z0-9_]+)\}", DASHBOARD.read_text()))
    passed = tf.resource("google_monitoring_dashboard", "canary")["dashboard_json"]
    for name in placeholders:
        assert f"{name} =" in passed or f"{name}=" in passed, f"templatefile() does not pass {name}"


def test_one_apply_guards_three_services_each_with_its_policies_grants_and_tiles(tf):
    """var.services with three services (one with a canary tag URL, one in another region with
    its own runtime account): each is covered, granted, load tested and listed, and no two
    resources share a name."""
    assert tc.check_services_guarded(tf, tc.CHECK_SERVICES) == []
    dashboard = tc.render_dashboard(tf)
    # Every Cloud Run and canary-guard chart covers all three (the dead-letter charts are per topic).
    filters = [
        s
        for s in tc.strings(dashboard)
        if "metric.type=" in s and ("run.googleapis" in s or "canary_guard/" in s)
    ]
    assert len(filters) >= 8
    for name in tc.CHECK_SERVICES:
        assert all(f'"{name}"' in f for f in filters), name


def test_thirty_services_share_a_few_alert_policies_and_nothing_collides(tf):
    # Names of the longest kind Cloud Run allows (49 characters): display names stay short.
    services = {f"svc-{index:02d}-" + "x" * 42: {} for index in range(30)}
    assert tc.check_services_guarded(tf, services) == []
    groups = tc.evaluate_services(tf, services)["service_groups"]
    assert [len(g["services"]) for g in groups.values()] == [25, 5]  # two policies per rule
    dashboard = tc.render_dashboard(tf, services)
    alert_tiles = [t for t in dashboard["mosaicLayout"]["tiles"] if "alertChart" in t["widget"]]
    assert len(alert_tiles) == 3 * len(groups)


def test_policy_change_flows_into_the_alert_policies(tmp_path, policy):
    """Change a threshold in the policy file only: the evaluated alert policy follows."""
    copy = _copy_tree(tmp_path)
    changed = dict(policy)
    changed["rollback_rules"] = {
        **policy["rollback_rules"],
        "error_rate": {**policy["rollback_rules"]["error_rate"]},
    }
    changed["rollback_rules"]["error_rate"]["threshold"] = 0.042
    (copy / "shared" / "policy.yaml").write_text(yaml.safe_dump(changed))
    t = tc.load(copy / "terraform")
    ev = tc.Evaluator(t)
    body = tc.alert_policies(t)["google_monitoring_alert_policy.metric_rule[error_rate/00]"]
    raw = tc.block(tc.block(body, "conditions"), "condition_threshold")["threshold_value"]
    assert ev.value(raw) == 0.042
    assert tc.check_thresholds_from_policy(t, changed) == []
    assert tc.check_thresholds_from_policy(t, policy) != []  # the old numbers no longer match


# --- Cut one link: the check reports it ------------------------------------------------------


def _copy_tree(tmp_path: Path) -> Path:
    """A copy of terraform/ with the files it reads (policy, shared/, functions/, dashboard)."""
    dest = tmp_path / "repo"
    shutil.copytree(
        TF_DIR, dest / "terraform", ignore=shutil.ignore_patterns(".terraform", "build", "*.tfstate*")
    )
    shutil.copytree(ROOT / "shared", dest / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "functions", dest / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "infra").mkdir()
    shutil.copy(DASHBOARD, dest / "infra" / "dashboard.json")
    shutil.copy(ROOT / "requirements.txt", dest / "requirements.txt")
    return dest


def _cut(
    tmp_path: Path, filename: str, block: str | tuple[str, str] | None, old: str, new: str
) -> tc.Terraform:
    """Replace `old` (exactly once) inside the top-level block whose header is `block` (e.g.
    'resource "google_monitoring_alert_policy" "memory"'), or inside one entry of a map in a
    `locals` block (`(local name, entry)`, e.g. ("functions", "rollback")), or in the file."""
    copy = _copy_tree(tmp_path)
    path = copy / "terraform" / filename
    text = path.read_text()
    start, end = 0, len(text)
    if isinstance(block, tuple):
        local, entry = block
        start = text.index(f"\n  {local} = {{\n")
        start = text.index(f"\n    {entry} = {{\n", start) + 1
        end = text.index("\n    }\n", start) + 7  # the entry's closing brace
    elif block is not None:
        start = text.index(f"\n{block} {{\n") + 1
        end = text.index("\n}\n", start) + 3  # the block's closing brace, in column 0
    segment = text[start:end]
    assert segment.count(old) == 1, f"mutation target not unique in {filename} {block}: {old!r}"
    path.write_text(text[:start] + segment.replace(old, new) + text[end:])
    return tc.load(copy / "terraform")


def _res(rtype: str, name: str) -> str:
    return f'resource "{rtype}" "{name}"'


POLICY = "google_monitoring_alert_policy"
METRIC_RULE_POLICY = _res(POLICY, "metric_rule")
RUN_IAM = "google_cloud_run_v2_service_iam_member"
FUNCTIONS = _res("google_cloudfunctions2_function", "function")
SCHEDULER_JOBS_RESOURCE = _res("google_cloud_scheduler_job", "job")
EMERGENCY_INVOKERS = _res(RUN_IAM, "oncall_invokes_emergency_rollback")


def _fn(key: str) -> tuple[str, str]:
    """The entry of one function in local.functions (functions.tf)."""
    return ("functions", key)


def _push(key: str) -> tuple[str, str]:
    """The entry of one push delivery in local.push_deliveries (delivery.tf)."""
    return ("push_deliveries", key)


def _caller(key: str) -> tuple[str, str]:
    """The entry of one caller identity in local.callers (iam.tf)."""
    return ("callers", key)


def _job(key: str) -> tuple[str, str]:
    """The entry of one Cloud Scheduler job in local.scheduler_jobs (scheduler.tf)."""
    return ("scheduler_jobs", key)


# (file, block, old, new, check that must report it, words of the report)
CUTS = [
    # Many services, one apply: each watched service is guarded, nothing collides.
    pytest.param(
        "services.tf",
        None,
        "chunklist(sort(keys(local.watched)), local.services_per_alert_policy)",
        "chunklist(slice(sort(keys(local.watched)), 1, length(local.watched)),"
        " local.services_per_alert_policy)",
        "services",
        "service accounts: 0 alert policies of rule error_rate cover it",
        id="a-service-left-out-of-the-alert-policies",
    ),
    pytest.param(
        "services.tf",
        None,
        'uptime_checked = { for name, s in local.watched : name => s if s.canary_tag_url != "" }',
        "uptime_checked = local.watched",
        "services",
        "service search has no canary tag URL but an uptime check",
        id="uptime-check-without-a-tag-url",
    ),
    pytest.param(
        "scheduler.tf",
        _res("google_cloud_scheduler_job", "load_test"),
        "jsonencode({ service = each.value.fullname })",
        "jsonencode({ service = each.value.service })",
        "services",
        "service checkout: not exactly one load test job",
        id="load-test-job-for-a-short-name",
    ),
    pytest.param(
        "scheduler.tf",
        _res("google_cloud_scheduler_job", "load_test"),
        'name        = "${var.prefix}-${replace(each.key, "_", "-")}"',
        'name        = "${var.prefix}-load-test"',
        "services",
        "the same name=cg-load-test",
        id="load-test-jobs-with-one-name",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "  notification_channels = [google_monitoring_notification_channel.alerts.name]\n",
        "",
        "alert_chain",
        "notifies no notification channel",
        id="alert-policy-without-channel",
    ),
    pytest.param(
        "monitoring.tf",
        None,
        "    topic = google_pubsub_topic.alerts.id",
        "    topic = google_pubsub_topic.rollback.id",
        "alert_chain",
        "but breach_counter's push subscription is on topic alerts",
        id="channel-to-wrong-topic",
    ),
    pytest.param(
        "delivery.tf",
        _push("breach_counter"),
        "topic             = google_pubsub_topic.alerts.id",
        "topic             = google_pubsub_topic.rollback.id",
        "alert_chain",
        "breach_counter's push subscription is on topic rollback",
        id="breach-counter-pushed-the-wrong-topic",
    ),
    pytest.param(
        "delivery.tf",
        _push("rollback"),
        "topic             = google_pubsub_topic.rollback.id",
        "topic             = google_pubsub_topic.alerts.id",
        "rollback_chain",
        "rollback's push subscriptions are on ['alerts']",
        id="rollback-pushed-the-wrong-topic",
    ),
    pytest.param(
        "functions.tf",
        _fn("breach_counter"),
        "        ROLLBACK_TOPIC          = google_pubsub_topic.rollback.name\n",
        "",
        "environment",
        "ROLLBACK_TOPIC is read but not set",
        id="breach-counter-without-rollback-topic",
    ),
    pytest.param(
        "pubsub.tf",
        _res("google_pubsub_topic_iam_member", "rollback_publisher_breach_counter"),
        'function["breach_counter"]',
        'function["rollback"]',
        "rollback_chain",
        "breach_counter's service account cannot publish",
        id="breach-counter-cannot-publish-rollback",
    ),
    pytest.param(
        "iam.tf",
        _caller("alerts_trigger"),
        'function    = "breach_counter"',
        'function    = "rollback"',
        "push_deliveries",
        "not exactly ['breach_counter']",
        id="alerts-trigger-invokes-wrong-function",
    ),
    pytest.param(
        "pubsub.tf",
        _res("google_pubsub_topic_iam_member", "alerts_publisher_monitoring"),
        "local.monitoring_notification_agent",
        "local.pubsub_service_agent",
        "monitoring_publisher",
        "has no roles/pubsub.publisher on topic alerts",
        id="monitoring-agent-cannot-publish",
    ),
    pytest.param(
        "iam.tf",
        _res(RUN_IAM, "uptime_check_invokes_target"),
        "\n  depends_on = [time_sleep.monitoring_agent]\n",
        "\n  depends_on = [google_monitoring_notification_channel.alerts]\n",
        "monitoring_agent_first",
        "google_cloud_run_v2_service_iam_member.uptime_check_invokes_target grants to the Monitoring "
        "notification agent without waiting for it",
        id="uptime-invoker-granted-before-the-agent-exists",
    ),
    pytest.param(
        "pubsub.tf",
        _res("google_pubsub_topic_iam_member", "alerts_publisher_monitoring"),
        "\n  depends_on = [time_sleep.monitoring_agent]\n",
        "\n",
        "monitoring_agent_first",
        "google_pubsub_topic_iam_member.alerts_publisher_monitoring grants to the Monitoring "
        "notification agent without waiting for it",
        id="alerts-publisher-granted-before-the-agent-exists",
    ),
    pytest.param(
        "monitoring.tf",
        _res("time_sleep", "monitoring_agent"),
        'create_duration = "60s"',
        'create_duration = "5s"',
        "monitoring_agent_first",
        "time_sleep.monitoring_agent waits '5s' for the Monitoring agent, less than 60s",
        id="monitoring-agent-wait-too-short",
    ),
    pytest.param(
        "monitoring.tf",
        _res("time_sleep", "monitoring_agent"),
        "  depends_on = [google_monitoring_notification_channel.alerts]\n",
        "",
        "monitoring_agent_first",
        "no time_sleep waits for the Monitoring agent after its notification channel",
        id="monitoring-agent-wait-starts-too-early",
    ),
    pytest.param(
        "iam.tf",
        _res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        'toset(["alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"])',
        'toset(["alerts_trigger", "notify_push", "checkpoint_push"])',
        "token_creator",
        "the push identity caller[rollback_trigger] of rollback: the Pub/Sub service agent gets no "
        "Token Creator",
        id="token-creator-missing-on-a-trigger-identity",
    ),
    pytest.param(
        "iam.tf",
        _res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        'toset(["alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"])',
        'toset(["alerts_trigger", "notify_push", "checkpoint_push", "checkpoint_scheduler"])',
        "token_creator",
        "Token Creator on 'caller[checkpoint_scheduler]', not a push identity",
        id="token-creator-on-a-scheduler-identity",
    ),
    pytest.param(
        "iam.tf",
        _res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        ": toset([])",
        ': toset(["alerts_trigger"])',
        "token_creator",
        "pubsub_agent_token_creator[alerts_trigger]: Token Creator granted with "
        "var.grant_pubsub_agent_token_creator = false",
        id="token-creator-granted-when-switched-off",
    ),
    pytest.param(
        "iam.tf",
        _res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        "member             = local.pubsub_service_agent",
        "member             = local.monitoring_notification_agent",
        "roles",
        "serviceAccountTokenCreator for someone other than the Pub/Sub service agent",
        id="token-creator-to-another-agent",
    ),
    pytest.param(
        "variables.tf",
        'variable "grant_pubsub_agent_token_creator"',
        "default     = false",
        "default     = true",
        "token_creator",
        "var.grant_pubsub_agent_token_creator must be a bool defaulting to false",
        id="token-creator-on-by-default",
    ),
    pytest.param(
        "delivery.tf",
        _push("rollback"),
        "dead_letter_topic = google_pubsub_topic.rollback_dead_letter.id",
        "dead_letter_topic = google_pubsub_topic.rollback.id",
        "dead_letters",
        "push[rollback]: dead-letter topic is its own topic",
        id="dead-letter-topic-is-the-source-topic",
    ),
    pytest.param(
        "delivery.tf",
        None,
        '  role         = "roles/pubsub.subscriber"\n',
        '  role         = "roles/pubsub.viewer"\n',
        "dead_letters",
        "Pub/Sub's service agent has no roles/pubsub.subscriber on "
        "google_pubsub_subscription.push[breach_counter]",
        id="pubsub-agent-cannot-forward-dead-letters",
    ),
    pytest.param(
        "pubsub.tf",
        _res("google_pubsub_subscription", "rollback_dead_letter"),
        "google_pubsub_topic.rollback_dead_letter.id",
        "google_pubsub_topic.rollback.id",
        "dead_letters",
        "dead-letter topic rollback_dead_letter has no subscription",
        id="dead-letter-topic-without-subscription",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "    oidc_token {\n"
        "      service_account_email = google_service_account.caller[each.value.caller].email\n"
        "      audience              = google_cloudfunctions2_function.function[each.value.function]"
        ".service_config[0].uri\n"
        "    }\n",
        "",
        "scheduler",
        "job checkpoint sends no OIDC token",
        id="scheduler-without-oidc",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "uri         = google_cloudfunctions2_function.function[each.value.function].",
        'uri         = google_cloudfunctions2_function.function["load_test"].',
        "scheduler",
        "job checkpoint does not call function checkpoint",
        id="scheduler-calls-wrong-function",
    ),
    pytest.param(
        "iam.tf",
        _caller("checkpoint_scheduler"),
        'function    = "checkpoint"',
        'function    = "load_test"',
        "scheduler",
        "job checkpoint (caller[checkpoint_scheduler]) may invoke ['load_test']",
        id="scheduler-identity-invokes-wrong-function",
    ),
    pytest.param(
        "scheduler.tf",
        _res("google_cloud_scheduler_job", "load_test"),
        "local.load_test_cfg.schedule",
        '"0 3 * * *"',
        "thresholds",
        "hard-codes a number the policy file owns",
        id="schedule-typed-twice",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "threshold_value = local.rules[each.value.rule].threshold",
        "threshold_value = 0.85",
        "thresholds",
        "is typed here, not read from the policy file",
        id="threshold-typed-twice",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "threshold_value = local.rules[each.value.rule].threshold",
        "threshold_value = local.rules.error_rate.threshold",
        "thresholds",
        "policy file says 500",
        id="threshold-of-another-rule",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        'notification_prompts = ["OPENED", "CLOSED"]',
        'notification_prompts = ["OPENED"]',
        "alert_policies",
        "must notify OPENED and CLOSED",
        id="close-not-notified",
    ),
    pytest.param(
        "monitoring.tf",
        None,
        '    "resource.label.location",\n',
        "",
        "alert_group_by",
        "alert policy google_monitoring_alert_policy.metric_rule[error_rate/00] denominator_aggregations "
        "aggregates away resource.label.location",
        id="location-aggregated-away",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "        cross_series_reducer = local.alerting.metric_conditions"
        "[each.value.rule].cross_series_reducer\n"
        "        group_by_fields      = local.revision_group_by\n",
        "        cross_series_reducer = local.alerting.metric_conditions"
        "[each.value.rule].cross_series_reducer\n"
        '        group_by_fields      = ["resource.label.revision_name"]\n',
        "alert_group_by",
        "alert policy google_monitoring_alert_policy.metric_rule[memory/00] aggregations aggregates away "
        "resource.label.service_name, resource.label.location",
        id="grouped-by-revision-only",
    ),
    pytest.param(
        "monitoring.tf",
        METRIC_RULE_POLICY,
        "          group_by_fields      = local.revision_group_by\n",
        '          group_by_fields      = ["resource.label.service_name", "resource.label.location", '
        '"resource.label.revision_name", "resource.label.project_id"]\n',
        "alert_group_by",
        "metric_rule[error_rate/00]: numerator and denominator group by different fields",
        id="ratio-denominator-grouped-differently",
    ),
    # The rule set is the policy file's: a metric rule left out of it has no alert policy.
    pytest.param(
        "../shared/policy.yaml",
        None,
        "    memory:\n      # container/memory/utilizations",
        "    memory_old:\n      # container/memory/utilizations",
        "alert_policies",
        "no alert policy for rule(s) ['memory']",
        id="ratio-denominator-grouped-differently",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "jsonencode({})",
        'jsonencode({ trigger = "cloud-scheduler" })',
        "scheduler_bodies",
        "job checkpoint: body key(s) ['trigger'] are refused by checkpoint",
        id="scheduler-body-with-unknown-key",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "jsonencode({})",
        'jsonencode(["checkpoint"])',
        "scheduler_bodies",
        "job checkpoint: body ['checkpoint'] is not a JSON object",
        id="scheduler-body-not-an-object",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        'headers     = { "Content-Type" = "application/json" }',
        'headers     = { "Content-Type" = "text/plain" }',
        "scheduler_bodies",
        "job checkpoint: Content-Type is 'text/plain', not application/json",
        id="scheduler-body-not-json",
    ),
    pytest.param(
        "functions.tf",
        _fn("checkpoint"),
        'entry_point = "checkpoint"',
        'entry_point = "check_point"',
        "entry_points",
        "'check_point' is not a top-level function",
        id="entry-point-typo",
    ),
    pytest.param(
        "functions.tf",
        _fn("load_test"),
        "FUNCTION_TIMEOUT_S      = local.load_test_timeout_s",
        "FUNCTION_TIMEOUT_S      = 300",
        "load_test_limits",
        "FUNCTION_TIMEOUT_S",
        id="load-test-timeout-mismatch",
    ),
    pytest.param(
        "functions.tf",
        _fn("rollback"),
        "        CANARY_SERVICES         = local.canary_services\n",
        "        CANARY_SERVICES         = local.canary_services\n"
        '        CLOUD_RUN_API_ENDPOINT  = "http://127.0.0.1:8090"\n',
        "environment",
        "CLOUD_RUN_API_ENDPOINT is for the local stand-ins only",
        id="local-stand-in-endpoint-set",
    ),
    pytest.param(
        "iam.tf",
        None,
        '    breach_counter     = ["roles/datastore.user", "roles/monitoring.viewer"]\n',
        '    breach_counter     = ["roles/datastore.user", "roles/monitoring.viewer", "roles/editor"]\n',
        "roles",
        "basic role roles/editor",
        id="project-editor-granted",
    ),
    pytest.param(
        "iam.tf",
        None,
        '    rollback           = ["custom/traffic_updater"]\n',
        '    rollback           = ["roles/run.developer"]\n',
        "roles",
        "role roles/run.developer is not in the allowed list",
        id="run-developer-on-the-target",
    ),
    pytest.param(
        "iam.tf",
        None,
        'permissions = ["run.services.get", "run.services.update"]',
        'permissions = ["run.services.get", "run.services.update", "run.services.delete"]',
        "custom_roles",
        "custom role traffic_updater: permission run.services.delete is not one the code uses",
        id="custom-role-may-delete-the-service",
    ),
    pytest.param(
        "iam.tf",
        None,
        '"roles/datastore.user", "custom/operation_reader"]\n    emergency_rollback',
        '"roles/datastore.user", "custom/traffic_updater"]\n    emergency_rollback',
        "roles",
        "custom/traffic_updater granted on the whole project",
        id="traffic-updater-on-the-whole-project",
    ),
    pytest.param(
        "iam.tf",
        _res("google_cloud_run_v2_service_iam_member", "function_on_target"),
        "  role     = startswith(",
        "  role     = each.value.role\n  # startswith(",
        "custom_roles",
        "function_on_target: its role does not turn custom/NAME into the custom role",
        id="custom-role-marker-granted-as-written",
    ),
    pytest.param(
        "iam.tf",
        None,
        '    load_test          = ["custom/service_reader", "roles/run.invoker"]',
        '    load_test          = ["custom/service_writer", "roles/run.invoker"]',
        "custom_roles",
        "custom/service_writer is not in local.custom_roles",
        id="custom-role-that-does-not-exist",
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
        _fn("checkpoint"),
        "        DECISION_RETENTION_DAYS = var.decision_retention_days\n",
        "",
        "environment",
        "function checkpoint: DECISION_RETENTION_DAYS is read but not set",
        id="checkpoint-keeps-decisions-for-ever",
    ),
    pytest.param(
        "iam.tf",
        EMERGENCY_INVOKERS,
        "  member   = each.value\n",
        '  member   = "allAuthenticatedUsers"\n',
        "public",
        "mentions allAuthenticatedUsers",
        id="emergency-rollback-public",
    ),
    pytest.param(
        "iam.tf",
        EMERGENCY_INVOKERS,
        "  member   = each.value\n",
        '  member   = "user:someone@example.com"\n',
        "emergency",
        "not taken from var.emergency_rollback_members",
        id="emergency-invoker-hard-coded",
    ),
    pytest.param(
        "functions.tf",
        FUNCTIONS,
        "google_service_account.function[each.key].email",
        'google_service_account.function["checkpoint"].email',
        "identities",
        "share service account",
        id="functions-share-an-identity",
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
    # The per-function map: one entry wrong is reported for that function.
    pytest.param(
        "functions.tf",
        _fn("checkpoint"),
        'ingress       = "ALLOW_INTERNAL_ONLY"',
        'ingress       = "ALLOW_ALL"',
        "emergency",
        "function checkpoint: ingress_settings 'ALLOW_ALL', expected ALLOW_INTERNAL_ONLY",
        id="second-function-open-to-the-internet",
    ),
    pytest.param(
        "functions.tf",
        _fn("notify"),
        "chat_webhook = true",
        "chat_webhook = false",
        "environment",
        "function notify: CHAT_WEBHOOK_URL is read but no secret_environment_variables provides it",
        id="chat-webhook-secret-dropped",
    ),
    pytest.param(
        "functions.tf",
        _fn("breach_counter"),
        "chat_webhook = false",
        "chat_webhook = true",
        "environment",
        "function breach_counter: sets CHAT_WEBHOOK_URL, which breach_counter does not read",
        id="chat-webhook-secret-for-a-function-that-does-not-read-it",
    ),
    # Notifications: every deciding function publishes to the topic pushed to notify.
    pytest.param(
        "pubsub.tf",
        None,
        '"emergency_rollback", "checkpoint", "checkpoint_worker", "load_test"]',
        '"emergency_rollback", "checkpoint_worker", "load_test"]',
        "notification_chain",
        "checkpoint cannot publish to the notifications topic notifications",
        id="checkpoint-cannot-publish-notifications",
    ),
    pytest.param(
        "delivery.tf",
        _push("notify"),
        "topic             = google_pubsub_topic.notifications.id",
        "topic             = google_pubsub_topic.rollback.id",
        "notification_chain",
        "notify is pushed ['rollback'], notifications go to ['notifications']",
        id="notify-pushed-the-wrong-topic",
    ),
    # Delivery (delivery.tf): push subscriptions declared in Terraform, no provisioner.
    pytest.param(
        "delivery.tf",
        None,
        "    rollback = {\n"
        "      topic             = google_pubsub_topic.rollback.id\n"
        "      dead_letter_topic = google_pubsub_topic.rollback_dead_letter.id\n"
        '      pusher            = "rollback_trigger"\n'
        "    }\n",
        "",
        "rollback_chain",
        "rollback's push subscriptions are on []",
        id="rollback-never-delivered",
    ),
    pytest.param(
        "delivery.tf",
        _push("breach_counter"),
        'pusher            = "alerts_trigger"',
        'pusher            = "rollback_trigger"',
        "push_deliveries",
        "pusher of breach_counter (caller[rollback_trigger]) may invoke ['rollback'], "
        "not exactly ['breach_counter']",
        id="push-signed-by-another-caller",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "      audience = google_cloudfunctions2_function.function[each.key].service_config[0].uri\n",
        "",
        "push_deliveries",
        "the OIDC audience is not the function's URL",
        id="push-token-without-audience",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "  ack_deadline_seconds       = local.functions[each.key].timeout_s\n",
        "  ack_deadline_seconds       = 10\n",
        "push_deliveries",
        "ack_deadline_seconds is 10, not breach_counter's timeout",
        id="push-deadline-shorter-than-the-function",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "  retry_policy {\n"
        "    minimum_backoff = local.push_min_backoff\n"
        "    maximum_backoff = local.push_max_backoff\n"
        "  }\n",
        "",
        "push_deliveries",
        "no retry_policy with minimum and maximum backoff",
        id="push-without-backoff",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "# Forwarding a message",
        'resource "terraform_data" "attach" {\n'
        '  provisioner "local-exec" {\n'
        '    command = "gcloud pubsub subscriptions update x"\n'
        "  }\n"
        "}\n\n# Forwarding a message",
        "push_deliveries",
        "terraform_data.attach runs a provisioner",
        id="provisioner-during-apply",
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
    pytest.param(
        "scheduler.tf",
        _job("checkpoint"),
        'caller      = "checkpoint_scheduler"',
        'caller      = "alerts_trigger"',
        "scheduler",
        "job checkpoint (caller[alerts_trigger]) may invoke ['breach_counter']",
        id="scheduler-job-with-another-callers-identity",
    ),
    # The build identity (iam.tf) and its use by every function (functions.tf).
    pytest.param(
        "functions.tf",
        FUNCTIONS,
        "    service_account = google_service_account.build.id # projects/PROJECT/serviceAccounts/EMAIL\n",
        "",
        "build_identity",
        "function breach_counter builds as Cloud Build's default service account",
        id="functions-built-by-the-default-build-account",
    ),
    pytest.param(
        "functions.tf",
        FUNCTIONS,
        "service_account = google_service_account.build.id",
        "service_account = google_service_account.build.email",
        "build_identity",
        "function rollback: build_config.service_account '${google_service_account.build.email}' is not",
        id="build-account-given-as-an-email",
    ),
    pytest.param(
        "functions.tf",
        FUNCTIONS,
        "    google_project_iam_member.build_reads_staged_source,\n",
        "",
        "build_identity",
        "function checkpoint does not depend on google_project_iam_member.build_reads_staged_source",
        id="functions-built-before-the-build-grants",
    ),
    pytest.param(
        "iam.tf",
        None,
        'build_project_roles = ["roles/logging.logWriter", "roles/artifactregistry.writer"]',
        'build_project_roles = ["roles/artifactregistry.writer"]',
        "build_identity",
        "the build service account lacks roles/logging.logWriter on the project",
        id="build-account-cannot-write-logs",
    ),
    pytest.param(
        "iam.tf",
        _res("google_storage_bucket_iam_member", "build_reads_source"),
        "bucket = google_storage_bucket.source.name",
        'bucket = "some-other-bucket"',
        "build_identity",
        "the build service account cannot read the source bucket",
        id="build-account-cannot-read-the-source-bucket",
    ),
    pytest.param(
        "iam.tf",
        None,
        '"projects/_/buckets/gcf-v2-sources-${local.project_number}-${var.region}/"',
        '"projects/_/buckets/"',
        "build_identity",
        "is not only the objects under projects/_/buckets/gcf-v2-sources-",
        id="staged-source-condition-widened-to-every-bucket",
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
        _res("time_sleep", "propagation"),
        'create_duration = "120s"',
        'create_duration = "10s"',
        "first_apply_waits",
        "time_sleep.propagation waits '10s' after the APIs, less than 120s",
        id="wait-too-short-for-the-build-grants",
    ),
    pytest.param(
        "main.tf",
        _res("time_sleep", "propagation"),
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
    pytest.param(
        "delivery.tf",
        None,
        "  dead_letter_policy {\n"
        "    dead_letter_topic     = each.value.dead_letter_topic\n"
        "    max_delivery_attempts = var.dead_letter_max_delivery_attempts\n"
        "  }\n",
        "",
        "dead_letters",
        "push[breach_counter]: no dead_letter_policy",
        id="push-without-dead-letters",
    ),
]


@pytest.mark.parametrize(("filename", "block", "old", "new", "check", "expected"), CUTS)
def test_cutting_a_link_is_reported(tmp_path, policy, filename, block, old, new, check, expected):
    cut = _cut(tmp_path, filename, block, old, new)
    problems = _all_problems(cut, policy)
    assert any(expected in p for p in problems[check]), (
        f"{check} did not report {expected!r}: {problems[check]}"
    )


def test_scheduler_body_keys_are_those_of_the_called_function(tmp_path, policy):
    # One body for both jobs: "mode" is load_test's alone, so only checkpoint refuses it.
    cut = _cut(
        tmp_path, "scheduler.tf", SCHEDULER_JOBS_RESOURCE, "jsonencode({})", 'jsonencode({ mode = "load" })'
    )
    assert tc.check_scheduler_bodies(cut, SCHEDULER_BODY_KEYS) == [
        "job checkpoint: body key(s) ['mode'] are refused by checkpoint (accepts {} or keys ['service'])"
    ]


def test_staged_source_reader_without_its_condition_is_reported(tmp_path, policy):
    # Without the condition, storage.objectViewer would read every bucket of the project.
    copy = _copy_tree(tmp_path)
    iam = copy / "terraform" / "iam.tf"
    text, cut = re.subn(
        r'(resource "google_project_iam_member" "build_reads_staged_source" \{.*?)'
        r"\n  condition \{.*?\n  \}\n",
        r"\1",
        iam.read_text(),
        count=1,
        flags=re.S,
    )
    assert cut == 1
    iam.write_text(text)
    problems = _all_problems(tc.load(copy / "terraform"), policy)
    assert problems["roles"] == [
        "google_project_iam_member.build_reads_staged_source: "
        "roles/storage.objectViewer granted on the whole project"
    ]
    assert (
        "the build service account holds roles/storage.objectViewer on the whole project"
        in (problems["build_identity"])
    )


def test_optional_features_switch_their_instances_off(tf):
    """The checks expand for_each / dynamic blocks with the optional features on
    (tc.CHECK_VARIABLES); switched off, the same expressions make nothing."""
    on = tc.functions(tf)
    assert {fn for fn, body in on.items() if tc.secret_env_keys(body)} == {"notify"}
    token_creators = {
        i.key
        for i in tc.instances(tf, "google_service_account_iam_member")
        if i.name == "pubsub_agent_token_creator"
    }
    assert token_creators == {"alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"}
    off = {
        "chat_webhook_secret_id": "",
        "grant_pubsub_agent_token_creator": False,
    }
    assert all(not tc.secret_env_keys(body) for body in tc.functions(tf, off).values())
    assert [
        i
        for i in tc.instances(tf, "google_service_account_iam_member", off)
        if i.name == "pubsub_agent_token_creator"
    ] == []


def test_one_function_resource_and_one_entry_per_function(tf):
    assert list(tf.of_type("google_cloudfunctions2_function")) == ["function"]
    assert set(tf.locals["functions"]) == set(EXPECTED_ENTRY_POINTS)
    assert {fn: tc.entry_point(body) for fn, body in tc.functions(tf).items()} == {
        entry: entry for entry in EXPECTED_ENTRY_POINTS
    }


def test_untouched_tree_passes_every_check(policy, tf):
    # The baseline of the cuts above: with no link cut, no check reports anything.
    problems = _all_problems(tf, policy, defined=main_py_functions() | PENDING_ENTRY_POINTS)
    assert {k: v for k, v in problems.items() if v} == {}


# --- Tools: fmt always, validate and checkov where they can run -------------------------------


def test_terraform_fmt(tmp_path):
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH: install Terraform >= 1.5 to run `terraform fmt -check`")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"},
    )
    assert result.returncode == 0, (
        f"terraform fmt -check failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    )


def _google_provider_available() -> bool:
    """The provider is present when `terraform init` already ran here, or a plugin cache or
    filesystem mirror holds it. Nothing is downloaded to find out."""
    candidates = [TF_DIR / ".terraform" / "providers" / "registry.terraform.io" / "hashicorp" / "google"]
    if os.environ.get("TF_PLUGIN_CACHE_DIR"):
        candidates.append(
            Path(os.environ["TF_PLUGIN_CACHE_DIR"]) / "registry.terraform.io" / "hashicorp" / "google"
        )
    home = Path.home()
    candidates += [
        home / ".terraform.d" / "plugins" / "registry.terraform.io" / "hashicorp" / "google",
        home / ".terraform.d" / "plugin-cache" / "registry.terraform.io" / "hashicorp" / "google",
    ]
    return any(c.is_dir() and any(c.rglob("terraform-provider-google*")) for c in candidates)


def test_terraform_validate():
    terraform = shutil.which("terraform")
    if terraform is None or not _google_provider_available():
        pytest.skip(
            "google provider not available offline: run terraform init && terraform validate "
            "where the registry is reachable"
        )
    init = subprocess.run(
        [terraform, "init", "-backend=false", "-input=false", "-get=false"],
        cwd=TF_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    result = subprocess.run(
        [terraform, "validate", "-no-color"], cwd=TF_DIR, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_has_no_unskipped_failure():
    """Runs infra/checkov.sh when its virtualenv exists (the script creates it on first use;
    the suite itself never installs anything)."""
    venv_checkov = ROOT / ".venv-checkov" / "bin" / "checkov"
    if not venv_checkov.exists():
        pytest.skip("checkov is not installed: run `bash infra/checkov.sh` (creates .venv-checkov)")
    result = subprocess.run(
        ["bash", str(ROOT / "infra" / "checkov.sh"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON report (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert failed == [], (
        "checkov failures (fix them or skip in code with #checkov:skip=ID:reason):\n" + "\n".join(failed)
    )
    assert result.returncode == 0


def retry_budget_s(attempts: int, min_backoff_s: float, max_backoff_s: float) -> float:
    """How long a message is redelivered before it is dead-lettered: Pub/Sub's exponential
    backoff doubles the wait between deliveries from the minimum up to the maximum."""
    return sum(min(min_backoff_s * 2**n, max_backoff_s) for n in range(attempts - 1))


def test_the_retry_budget_rides_out_a_half_hour_outage(tf):
    """The README's figure: with the default dead-letter limit and the push subscriptions' retry
    policy, a Cloud Run or Firestore outage of half an hour is ridden out before an alert or a
    rollback request is dead-lettered."""
    attempts = tf.variables["dead_letter_max_delivery_attempts"]["default"]
    budget = retry_budget_s(
        attempts,
        tc.duration_s(tf.locals["push_min_backoff"]),
        tc.duration_s(tf.locals["push_max_backoff"]),
    )
    assert attempts == 10
    assert budget == 2430  # 40.5 min
    assert budget >= 30 * 60
    assert "40 minutes" in (ROOT / "README.md").read_text()


def test_the_source_bucket_deletes_only_noncurrent_versions(tf):
    assert tc.check_source_lifecycle(tf) == []


def test_providers_are_pinned_to_what_the_configuration_needs(tf):
    assert tc.check_provider_pins(tf) == []


def test_the_on_call_commands_need_only_the_invoker_role(tf):
    assert tc.check_oncall_commands(tf) == []


def test_an_alert_policy_name_listing_every_service_is_reported(tmp_path):
    long_names = {f"svc-{index:02d}-" + "x" * 42: {} for index in range(30)}
    cut = _cut(
        tmp_path,
        "services.tf",
        None,
        '${names[0]} … ${names[length(names) - 1]}"',
        '${join(", ", names)}"',
    )
    problems = tc.check_services_guarded(cut, long_names)
    assert any("display_name over the API's 512 characters" in p for p in problems), problems
