"""What the test_terraform_*.py modules share: the paths, the functions' contract that Terraform
must deploy (entry points, scheduler jobs and bodies, the allowed roles and permissions, the waits),
the `tf` and `policy` fixtures, `all_problems` (every check of tests/terraform_checks.py on one
tree), and the means to cut one link in a copy of terraform/ (`copy_tree`, `cut_link`, and the
block headers and local-map entries the cuts name). What a single module needs stays in it.
"""

from __future__ import annotations

import ast
import shutil
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
from tests import terraform_checks as tc

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
# yet (other engineers are writing them). Their test (test_terraform_deploy.py) SKIPS, saying
# so, until main.py defines them; delete a name from this set once it does.
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


def all_problems(t: tc.Terraform, policy: dict, *, defined: set[str] | None = None) -> dict[str, list[str]]:
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


def copy_tree(tmp_path: Path) -> Path:
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


def cut_link(
    tmp_path: Path, filename: str, block: str | tuple[str, str] | None, old: str, new: str
) -> tc.Terraform:
    """Replace `old` (exactly once) inside the top-level block whose header is `block` (e.g.
    'resource "google_monitoring_alert_policy" "memory"'), or inside one entry of a map in a
    `locals` block (`(local name, entry)`, e.g. ("functions", "rollback")), or in the file."""
    copy = copy_tree(tmp_path)
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


def res(rtype: str, name: str) -> str:
    return f'resource "{rtype}" "{name}"'


POLICY = "google_monitoring_alert_policy"
METRIC_RULE_POLICY = res(POLICY, "metric_rule")
RUN_IAM = "google_cloud_run_v2_service_iam_member"
FUNCTIONS = res("google_cloudfunctions2_function", "function")
SCHEDULER_JOBS_RESOURCE = res("google_cloud_scheduler_job", "job")
EMERGENCY_INVOKERS = res(RUN_IAM, "oncall_invokes_emergency_rollback")


def function_entry(key: str) -> tuple[str, str]:
    """The entry of one function in local.functions (functions.tf)."""
    return ("functions", key)


def push_entry(key: str) -> tuple[str, str]:
    """The entry of one push delivery in local.push_deliveries (delivery.tf)."""
    return ("push_deliveries", key)


def caller_entry(key: str) -> tuple[str, str]:
    """The entry of one caller identity in local.callers (iam.tf)."""
    return ("callers", key)


def job_entry(key: str) -> tuple[str, str]:
    """The entry of one Cloud Scheduler job in local.scheduler_jobs (scheduler.tf)."""
    return ("scheduler_jobs", key)


def assert_cut_is_reported(
    tmp_path: Path,
    policy: dict,
    filename: str,
    block: str | None,
    old: str,
    new: str,
    check: str,
    expected: str,
) -> None:
    """Cut one link of a copy of terraform/ (`cut_link`): the check `check` must report `expected`."""
    cut = cut_link(tmp_path, filename, block, old, new)
    problems = all_problems(cut, policy)
    assert any(expected in p for p in problems[check]), (
        f"{check} did not report {expected!r}: {problems[check]}"
    )
