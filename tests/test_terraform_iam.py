"""terraform/ offline, least-privilege IAM (tests/tf_checks_iam.py): no public principal, only
the allowed roles and never project-wide power, custom roles of the permissions the code uses, the
per-function roles, the build service account, one identity per function, and emergency_rollback
callable only by the listed members; each link also cut in a copy of terraform/ to show the check
reports it.
"""

from __future__ import annotations

import re

import pytest

from tests import terraform_checks as tc
from tests.tf_fixtures import (
    ALLOWED_PROJECT_ROLES,
    ALLOWED_ROLES,
    BUILD_PROJECT_ROLES,
    CODE_PERMISSIONS,
    CONDITIONAL_PROJECT_ROLES,
    EMERGENCY_INVOKERS,
    EXPECTED_ENTRY_POINTS,
    FUNCTIONS,
    TF_DIR,
    all_problems,
    assert_cut_is_reported,
    copy_tree,
    function_entry,
    res,
)

# The shared fixtures, imported as themselves so pytest finds them here.
from tests.tf_fixtures import policy as policy
from tests.tf_fixtures import tf as tf

# The roles each function is granted on the project and on the watched services (iam.tf locals).
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


# --- The real tree is clean ---------------------------------------------------------------


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


def test_functions_are_built_by_their_own_build_service_account(tf):
    # Since July 2024 a new project's default Cloud Build account may lack what a build needs.
    assert tc.check_build_identity(tf, BUILD_PROJECT_ROLES) == []


def test_one_identity_per_function(tf):
    assert tc.check_function_identities(tf) == []


def test_emergency_rollback_is_callable_only_by_the_listed_members(tf):
    assert tc.check_emergency_access(tf) == []


# --- Cut one link: the check reports it ------------------------------------------------------


# (file, block, old, new, check that must report it, words of the report)
CUTS = [
    pytest.param(
        "iam.tf",
        res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        "member             = local.pubsub_service_agent",
        "member             = local.monitoring_notification_agent",
        "roles",
        "serviceAccountTokenCreator for someone other than the Pub/Sub service agent",
        id="token-creator-to-another-agent",
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
        res("google_cloud_run_v2_service_iam_member", "function_on_target"),
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
    # The per-function map: one entry wrong is reported for that function.
    pytest.param(
        "functions.tf",
        function_entry("checkpoint"),
        'ingress       = "ALLOW_INTERNAL_ONLY"',
        'ingress       = "ALLOW_ALL"',
        "emergency",
        "function checkpoint: ingress_settings 'ALLOW_ALL', expected ALLOW_INTERNAL_ONLY",
        id="second-function-open-to-the-internet",
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
        res("google_storage_bucket_iam_member", "build_reads_source"),
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
]


@pytest.mark.parametrize(("filename", "block", "old", "new", "check", "expected"), CUTS)
def test_cutting_a_link_is_reported(tmp_path, policy, filename, block, old, new, check, expected):
    assert_cut_is_reported(tmp_path, policy, filename, block, old, new, check, expected)


def test_staged_source_reader_without_its_condition_is_reported(tmp_path, policy):
    # Without the condition, storage.objectViewer would read every bucket of the project.
    copy = copy_tree(tmp_path)
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
    problems = all_problems(tc.load(copy / "terraform"), policy)
    assert problems["roles"] == [
        "google_project_iam_member.build_reads_staged_source: "
        "roles/storage.objectViewer granted on the whole project"
    ]
    assert (
        "the build service account holds roles/storage.objectViewer on the whole project"
        in (problems["build_identity"])
    )
